//! Where scraped samples go.

use futures::future::BoxFuture;
use meshlens_storage::samples::{AppendReport, SampleBatch};

/// The future of one append.
pub type SinkFuture = BoxFuture<'static, Result<AppendReport, String>>;

/// A destination for scraped samples: the sample store in production, a
/// collector in tests. One call per scrape (all series of the scrape, the
/// stale markers, the synthetic series, changed metadata). An `Err` (e.g.
/// storage backpressure) is counted and logged; the samples are not retried.
pub trait SampleSink: Send + Sync + 'static {
    fn append(&self, batch: SampleBatch) -> SinkFuture;
}

impl SampleSink for std::sync::Arc<meshlens_storage::SampleStore> {
    fn append(&self, batch: SampleBatch) -> SinkFuture {
        let store = self.clone();
        Box::pin(async move {
            meshlens_storage::SampleStore::append(&store, batch)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

impl SampleSink for std::sync::Arc<meshlens_storage::Storage> {
    fn append(&self, batch: SampleBatch) -> SinkFuture {
        SampleSink::append(self.samples(), batch)
    }
}
