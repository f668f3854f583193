use std::time::Duration;

/// Why the storage could not accept or serve data.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// Over the buffer or WAL budget: the sender should retry later.
    #[error("{what} is over its budget ({used} of {limit} bytes); retry after {retry_after:?}")]
    Backpressure {
        what: &'static str,
        used: u64,
        limit: u64,
        retry_after: Duration,
    },
    #[error("storage is shutting down")]
    ShuttingDown,
    #[error("WAL I/O failed: {0}")]
    Wal(#[from] std::io::Error),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("object store: {0}")]
    ObjectStore(#[from] object_store::Error),
    #[error("query: {0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error("corrupt {what}: {detail}")]
    Corrupt { what: &'static str, detail: String },
    #[error("manifest: {0}")]
    Manifest(#[from] serde_json::Error),
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;
