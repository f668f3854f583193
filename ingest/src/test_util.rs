//! Helpers for the router tests: a storage on a fresh temp dir.

use crate::{IngestConfig, IngestState};
use meshlens_storage::{Storage, StorageConfig, Telemetry};
use std::sync::atomic::{AtomicUsize, Ordering};

static N: AtomicUsize = AtomicUsize::new(0);

pub(crate) async fn state_with(config: IngestConfig) -> IngestState {
    let root = std::env::temp_dir().join("meshlens-ingest-tests");
    // Data of earlier runs is useless: clear it once per test process.
    static CLEAN: std::sync::Once = std::sync::Once::new();
    CLEAN.call_once(|| {
        let _ = std::fs::remove_dir_all(&root);
    });
    let dir = root.join(format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let cfg = StorageConfig::new(dir);
    let storage = Storage::open(cfg, Telemetry::new())
        .await
        .expect("open storage");
    IngestState::new(storage, config)
}

pub(crate) async fn state() -> IngestState {
    state_with(IngestConfig::default()).await
}

/// Microseconds "now", for spans that must pass the time-window check.
pub(crate) fn now_us() -> i64 {
    meshlens_storage::model::UnixNanos::now().as_micros()
}
