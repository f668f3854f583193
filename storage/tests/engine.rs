//! The engine end to end, in process: append, query, flush, reopen, compact.

use datafusion::common::ScalarValue;
use datafusion::prelude::{col, lit};
use meshlens_storage::model::{AttrValue, Endpoint, Span, SpanId, SpanKind, TraceId, UnixNanos};
use meshlens_storage::schema::batch_to_spans;
use meshlens_storage::{Storage, StorageConfig, Telemetry};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("meshlens-engine-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn span(trace: u64, i: u64, start: UnixNanos) -> Span {
    let mut s = Span {
        trace_id: TraceId::from_u64s(0, trace),
        trace_id_64: true,
        span_id: SpanId((trace * 100 + i + 1).to_be_bytes()),
        name: format!("op-{i}"),
        kind: SpanKind::Server,
        start: Some(start),
        duration_nanos: Some(1_000 * (i as i64 + 1)),
        local: Endpoint {
            service_name: Some(format!("svc-{}", trace % 3)),
            ..Default::default()
        },
        ..Default::default()
    };
    s.attributes
        .insert("http.status_code".into(), AttrValue::Str("200".into()));
    s.attributes
        .insert("k".into(), AttrValue::Str(format!("v{trace}")));
    s
}

async fn lookup(storage: &Storage, trace: u64) -> Vec<Span> {
    let id = TraceId::from_u64s(0, trace);
    let df = storage
        .session()
        .table("spans")
        .await
        .expect("table")
        .filter(col("trace_id").eq(lit(ScalarValue::FixedSizeBinary(16, Some(id.0.to_vec())))))
        .expect("filter");
    let mut out = Vec::new();
    for b in df.collect().await.expect("collect") {
        out.extend(batch_to_spans(&b).expect("spans"));
    }
    out.sort_by_key(|s| s.span_id);
    out
}

fn config(d: &std::path::Path) -> StorageConfig {
    let mut cfg = StorageConfig::new(d);
    cfg.maintenance_interval = Duration::from_secs(3600);
    cfg.flush_age = Duration::from_secs(3600);
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_flush_reopen_compact() {
    let d = dir("cycle");
    // Two hours ago, in one closed hour.
    let base = UnixNanos(UnixNanos::now().0 - 2 * 3_600_000_000_000);
    let base = UnixNanos(base.0 - base.0.rem_euclid(3_600_000_000_000) + 1_000);
    let storage = Storage::open(config(&d), Telemetry::new())
        .await
        .expect("open");
    let mut expected = Vec::new();
    for round in 0..3u64 {
        let spans: Vec<Span> = (round * 100..round * 100 + 100)
            .flat_map(|t| (0..3).map(move |i| span(t + 1, i, UnixNanos(base.0 + t as i64))))
            .collect();
        expected.extend(spans.clone());
        storage.append_spans(spans).await.expect("append");
        // Visible at once, from the buffer.
        assert_eq!(lookup(&storage, round * 100 + 5).await.len(), 3);
        storage.flush().await.expect("flush");
    }
    assert_eq!(storage.snapshot().files.len(), 3);
    assert!(storage.snapshot().batches.is_empty());
    let want: Vec<Span> = {
        let mut w: Vec<Span> = expected
            .iter()
            .filter(|s| s.trace_id == TraceId::from_u64s(0, 150))
            .cloned()
            .collect();
        w.sort_by_key(|s| s.span_id);
        w
    };
    assert_eq!(
        lookup(&storage, 150).await,
        want,
        "from Parquet, equal to what was appended"
    );

    // Compaction merges the closed hour's three files into one.
    assert_eq!(storage.compact().await.expect("compact"), 1);
    assert_eq!(storage.snapshot().files.len(), 1);
    assert_eq!(storage.snapshot().files[0].rows, 900);
    assert_eq!(lookup(&storage, 150).await, want, "after compaction");

    // Unflushed data is replayed from the WAL on reopen.
    storage
        .append_spans(vec![span(9_999, 0, base)])
        .await
        .expect("append");
    drop(storage);
    let storage: Arc<Storage> = Storage::open(config(&d), Telemetry::new())
        .await
        .expect("reopen");
    assert_eq!(
        lookup(&storage, 9_999).await.len(),
        1,
        "replayed from the WAL"
    );
    assert_eq!(lookup(&storage, 150).await, want, "after reopen");
    storage.shutdown().await.expect("shutdown");
    drop(storage);
    let storage = Storage::open(config(&d), Telemetry::new())
        .await
        .expect("reopen 2");
    assert!(
        storage.snapshot().batches.is_empty(),
        "shutdown flushed the buffer"
    );
    assert_eq!(lookup(&storage, 9_999).await.len(), 1);
    storage.shutdown().await.expect("shutdown");
    let _ = std::fs::remove_dir_all(&d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_expired_files_only() {
    let d = dir("retention");
    let mut cfg = config(&d);
    cfg.retention = Duration::from_secs(24 * 3600);
    let storage = Storage::open(cfg, Telemetry::new()).await.expect("open");
    let old = UnixNanos(UnixNanos::now().0 - 3 * 86_400_000_000_000);
    let recent = UnixNanos(UnixNanos::now().0 - 60_000_000_000);
    storage
        .append_spans(vec![span(1, 0, old), span(2, 0, recent)])
        .await
        .expect("append");
    storage.flush().await.expect("flush");
    assert_eq!(storage.snapshot().files.len(), 2);
    assert_eq!(storage.enforce_retention().await.expect("retention"), 1);
    assert!(lookup(&storage, 1).await.is_empty());
    assert_eq!(lookup(&storage, 2).await.len(), 1);
    storage.shutdown().await.expect("shutdown");
    let _ = std::fs::remove_dir_all(&d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_budget_appends_are_refused_with_retry_later() {
    let d = dir("budget");
    let mut cfg = config(&d);
    cfg.buffer_budget_bytes = 1;
    cfg.flush_rows = usize::MAX;
    let storage = Storage::open(cfg, Telemetry::new()).await.expect("open");
    storage
        .append_spans(vec![span(1, 0, UnixNanos::now())])
        .await
        .expect("first append fits");
    // A background flush may empty the buffer between two appends; the
    // next append then fills it again, so one of a few must be refused.
    let mut refused = false;
    for t in 2..100 {
        match storage
            .append_spans(vec![span(t, 0, UnixNanos::now())])
            .await
        {
            Err(meshlens_storage::StorageError::Backpressure { retry_after, .. }) => {
                assert!(retry_after.as_secs() >= 1);
                refused = true;
                break;
            }
            Ok(()) => {}
            Err(e) => panic!("expected backpressure, got {e}"),
        }
    }
    assert!(refused, "an over-budget buffer refuses appends");
    storage.shutdown().await.expect("shutdown");
    let _ = std::fs::remove_dir_all(&d);
}

/// `find_traces` (no query plan: trace-id filters, row-group statistics and
/// the page index pick what is read) returns exactly the rows appended for
/// the ids asked, from files with many pages and from the buffer, for one id
/// or several, present or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_traces_returns_exactly_the_appended_rows() {
    let d = dir("find");
    let storage = Storage::open(config(&d), Telemetry::new())
        .await
        .expect("open");
    let base = UnixNanos(UnixNanos::now().0 - 3_600_000_000_000);
    // Pseudo-random 64-bit trace ids, so every file's pages each hold a
    // slice of the id range; traces 0..40 have spans in every file and in
    // the buffer.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let shared: Vec<u64> = (0..40).map(|_| next()).collect();
    let mut appended: Vec<Span> = Vec::new();
    for round in 0..4u64 {
        let mut spans: Vec<Span> = (0..20_000u64)
            .map(|i| span(next() >> 8, i % 5, UnixNanos(base.0 + i as i64)))
            .collect();
        spans.extend(
            shared
                .iter()
                .map(|&t| span(t >> 8, 10 + round, UnixNanos(base.0 + round as i64))),
        );
        appended.extend(spans.clone());
        storage.append_spans(spans).await.expect("append");
        if round < 3 {
            storage.flush().await.expect("flush");
        }
    }
    assert_eq!(storage.snapshot().files.len(), 3);
    assert!(!storage.snapshot().batches.is_empty());

    let sorted = |mut v: Vec<Span>| {
        v.sort_by_key(|s| (s.trace_id, s.span_id));
        v
    };
    let want = |ids: &[TraceId]| {
        sorted(
            appended
                .iter()
                .filter(|s| ids.contains(&s.trace_id))
                .cloned()
                .collect(),
        )
    };
    let got = |ids: Vec<TraceId>| {
        let storage = storage.clone();
        async move {
            let raw: Vec<[u8; 16]> = ids.iter().map(|i| i.0).collect();
            let mut out = Vec::new();
            for b in storage.find_traces(&raw).await.expect("find") {
                out.extend(batch_to_spans(&b).expect("spans"));
            }
            sorted(out)
        }
    };
    let mut asked = 0;
    for (k, s) in appended.iter().enumerate().step_by(997) {
        let ids = vec![s.trace_id];
        let w = want(&ids);
        assert!(!w.is_empty());
        assert_eq!(got(ids).await, w, "span #{k}");
        asked += 1;
    }
    assert!(asked > 50);
    for &t in shared.iter().take(5) {
        let ids = vec![TraceId::from_u64s(0, t >> 8)];
        let w = want(&ids);
        assert_eq!(
            w.len(),
            4,
            "one span in each of the three files and the buffer"
        );
        assert_eq!(got(ids).await, w);
    }
    // Several at once, with an id nobody sent and a duplicate.
    let ids = vec![
        appended[5].trace_id,
        appended[70_000].trace_id,
        TraceId::from_u64s(7, 7),
        appended[5].trace_id,
        TraceId::from_u64s(0, shared[9] >> 8),
    ];
    assert_eq!(got(ids.clone()).await, want(&ids));
    assert!(got(vec![TraceId::from_u64s(7, 7)]).await.is_empty());
    assert!(got(vec![]).await.is_empty());
    storage.shutdown().await.expect("shutdown");
    let _ = std::fs::remove_dir_all(&d);
}
