//! The manifest: which Parquet files make up the table, with what they hold.
//!
//! One JSON document (`manifest.json` at the store's root), replaced whole
//! through `object_store` (atomic on a local directory and on S3). It also
//! records the highest WAL sequence number whose data is in Parquet, so that
//! replay skips what was already flushed.

use crate::error::Result;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};

pub const MANIFEST_PATH: &str = "manifest.json";

/// One Parquet file of spans.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FileEntry {
    /// Path inside the object store.
    pub path: String,
    /// Start of the hour this file's spans start in (ns since epoch).
    pub partition: i64,
    /// Smallest and largest span start time (ns).
    pub min_time: i64,
    pub max_time: i64,
    /// Largest span end time (ns): searches by time window use it.
    pub max_end_time: i64,
    pub rows: u64,
    pub bytes: u64,
    /// Distinct local service names in the file.
    pub services: Vec<String>,
    /// Smallest and largest trace id (hex, 32 chars).
    pub min_trace_id: String,
    pub max_trace_id: String,
    /// 0 for a flushed file, n+1 for a file compacted from level-n files.
    #[serde(default)]
    pub level: u32,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    /// Every WAL record with seq <= this is in the files below.
    pub flushed_seq: u64,
    pub next_file_id: u64,
    pub files: Vec<FileEntry>,
}

impl Manifest {
    pub async fn load(store: &dyn ObjectStore) -> Result<Manifest> {
        match store.get(&ObjectPath::from(MANIFEST_PATH)).await {
            Ok(r) => {
                let bytes = r.bytes().await?;
                Ok(serde_json::from_slice(&bytes)?)
            }
            Err(object_store::Error::NotFound { .. }) => Ok(Manifest {
                version: 1,
                flushed_seq: 0,
                next_file_id: 1,
                files: vec![],
            }),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn store(&self, store: &dyn ObjectStore) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self)?;
        store
            .put(&ObjectPath::from(MANIFEST_PATH), bytes.into())
            .await?;
        Ok(())
    }
}

/// Deletes data files under `prefix` that no manifest lists: inputs of a
/// compaction whose delayed deletion did not run before the process ended,
/// or the output of a flush that crashed before its manifest was stored.
/// Only files ending in one of `suffixes` are considered. Returns how many
/// were deleted.
pub(crate) async fn delete_unlisted(
    store: &dyn ObjectStore,
    prefix: &str,
    suffixes: &[&str],
    keep: &std::collections::HashSet<String>,
) -> Result<usize> {
    use futures::TryStreamExt;
    let listed: Vec<object_store::ObjectMeta> = store
        .list(Some(&ObjectPath::from(prefix)))
        .try_collect()
        .await?;
    let mut deleted = 0;
    for meta in listed {
        let p = meta.location.to_string();
        if !suffixes.iter().any(|s| p.ends_with(s)) || keep.contains(&p) {
            continue;
        }
        match store.delete(&meta.location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => deleted += 1,
            Err(e) => tracing::warn!(path = %p, error = %e, "could not delete an unlisted file"),
        }
    }
    if deleted > 0 {
        tracing::info!(
            prefix,
            files = deleted,
            "deleted data files no manifest lists"
        );
    }
    Ok(deleted)
}
