//! The steps every receiver shares after reading a body: decode (off the
//! async workers when the body is big), hand spans to storage, count, and
//! turn errors into responses.

use crate::error::{DecodeError, IngestError};
use crate::{IngestState, metrics};
use arrow::record_batch::RecordBatch;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Bodies larger than this are decoded on the blocking pool so a 16 MiB
/// batch does not stall other requests on the same worker.
const INLINE_DECODE_BYTES: usize = 256 * 1024;

pub(crate) async fn decode<B, T, F>(bytes: B, f: F) -> Result<T, IngestError>
where
    B: AsRef<[u8]> + Send + 'static,
    T: Send + 'static,
    F: FnOnce(&[u8]) -> Result<T, DecodeError> + Send + 'static,
{
    if bytes.as_ref().len() <= INLINE_DECODE_BYTES {
        return Ok(f(bytes.as_ref())?);
    }
    tokio::task::spawn_blocking(move || f(bytes.as_ref()))
        .await
        .map_err(|e| IngestError::Internal(format!("decoder task failed: {e}")))?
        .map_err(IngestError::from)
}

/// Appends a batch of the `spans` table (from a decoder that builds one)
/// and counts its spans as received (or rejected, with the reason).
pub(crate) async fn store_batch(
    state: &IngestState,
    receiver: &'static str,
    batch: RecordBatch,
) -> Result<(), IngestError> {
    let n = batch.num_rows();
    if n == 0 {
        return Ok(());
    }
    let t = state.storage.telemetry();
    match state.storage.append_batch(batch.clone()).await {
        Ok(()) => {
            metrics::spans_received(t, receiver, n);
            if let Some(d) = &state.deriver {
                d.observe_batch(&batch);
            }
            Ok(())
        }
        Err(e) => {
            let e = IngestError::Storage(e);
            metrics::spans_rejected(t, receiver, e.reason(), n);
            Err(e)
        }
    }
}

/// Counts a failed request. Storage failures counted their spans already.
pub(crate) fn count_rejection(state: &IngestState, receiver: &'static str, err: &IngestError) {
    let t = state.storage.telemetry();
    metrics::request_rejected(t, receiver, err.reason());
    if let IngestError::Decode(DecodeError::InvalidSpans { total, .. }) = err {
        metrics::spans_rejected(t, receiver, err.reason(), *total);
    }
    match err.status() {
        s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
            tracing::warn!(receiver, error = %err, "ingest request failed")
        }
        _ => tracing::debug!(receiver, error = %err, "ingest request rejected"),
    }
}

/// Adds `Retry-After` (whole seconds, at least 1) when the error asks for it.
pub(crate) fn with_retry_after(mut resp: Response, err: &IngestError) -> Response {
    if let Some(d) = err.retry_after() {
        let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
        if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    resp
}

/// A plain-text error response (Zipkin answers errors in plain text).
pub(crate) fn text_error(err: &IngestError) -> Response {
    let resp = (
        err.status(),
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{err}\n"),
    )
        .into_response();
    with_retry_after(resp, err)
}
