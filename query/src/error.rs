use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// Why a query could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The request itself is wrong (bad parameter): 400.
    #[error("{0}")]
    BadRequest(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("query failed: {0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error("query failed: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("storage: {0}")]
    Storage(#[from] meshlens_storage::StorageError),
}

impl IntoResponse for QueryError {
    fn into_response(self) -> Response {
        let status = match &self {
            QueryError::BadRequest(_) => StatusCode::BAD_REQUEST,
            QueryError::NotFound(_) => StatusCode::NOT_FOUND,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            tracing::error!(error = %self, "query failed");
        }
        (status, self.to_string()).into_response()
    }
}
