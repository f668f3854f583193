//! Engine unit tests on small hand-made data (the conformance runner in
//! `promqltest` covers the language at large).
#![allow(clippy::unwrap_used, clippy::panic)]

use super::*;
use meshlens_storage::samples::Labels;

fn l(pairs: &[(&str, &str)]) -> Labels {
    Labels::new(pairs.iter().copied()).unwrap()
}

/// http_requests{job, instance}: 0, 10, 20, ... every 30 s for 10 min.
fn engine() -> Engine {
    let mut src = MemSource::new();
    for (job, inst, mult) in [("api", "a", 1.0), ("api", "b", 2.0), ("db", "a", 3.0)] {
        src.add(
            l(&[
                ("__name__", "http_requests_total"),
                ("job", job),
                ("instance", inst),
            ]),
            (0..=20).map(|k| (k * 30_000, k as f64 * 10.0 * mult)),
        );
    }
    Engine::new(Arc::new(src), EngineOptions::default())
}

fn vector(r: QueryResult) -> Vec<(String, f64)> {
    match r.value {
        Value::Vector(v) => {
            let mut out: Vec<(String, f64)> = v
                .into_iter()
                .map(|s| (s.labels.to_string(), s.value))
                .collect();
            out.sort_by(|a, b| a.0.cmp(&b.0));
            out
        }
        other => panic!("not a vector: {other:?}"),
    }
}

#[test]
fn rate_and_sum_by() {
    let e = engine();
    let r = e
        .instant_query("sum by (job) (rate(http_requests_total[5m]))", 600_000)
        .unwrap();
    let v = vector(r);
    assert_eq!(v.len(), 2);
    assert_eq!(v[0].0, "{job=\"api\"}");
    // 10/30s + 20/30s = 1.0 per second
    assert!((v[0].1 - 1.0).abs() < 1e-9, "{v:?}");
    assert!((v[1].1 - 1.0).abs() < 1e-9, "{v:?}");
}

#[test]
fn binary_matching_and_scalars() {
    let e = engine();
    let v = vector(
        e.instant_query(
            "http_requests_total{job=\"api\"} / on(instance) http_requests_total{job=\"db\"}",
            300_000,
        )
        .unwrap(),
    );
    assert_eq!(v, vec![("{instance=\"a\"}".to_string(), 1.0 / 3.0)]);
    match e.instant_query("1 + 2 * 3", 0).unwrap().value {
        Value::Scalar { value, .. } => assert_eq!(value, 7.0),
        other => panic!("{other:?}"),
    }
    let err = e
        .instant_query(
            "http_requests_total + on(instance) http_requests_total",
            300_000,
        )
        .unwrap_err();
    assert_eq!(err.kind, QueryErrorKind::Execution, "{err:?}");
}

#[test]
fn range_query_grid_and_lookback() {
    let e = engine();
    let r = e
        .range_query("http_requests_total{instance=\"b\"}", 0, 1_200_000, 300_000)
        .unwrap();
    let Value::Matrix(m) = r.value else { panic!() };
    assert_eq!(m.len(), 1);
    // Last sample at 600 s; lookback 5 m keeps it visible at 900 s (not at
    // 900 s exactly: the window is left-open), gone at 1200 s.
    let ts: Vec<i64> = m[0].points.iter().map(|p| p.0).collect();
    assert_eq!(ts, vec![0, 300_000, 600_000]);
}

#[test]
fn errors_have_prometheus_types() {
    let e = engine();
    assert_eq!(
        e.instant_query("sum(", 0).unwrap_err().kind,
        QueryErrorKind::BadData
    );
    assert_eq!(
        e.instant_query("nosuchfn(x)", 0).unwrap_err().kind,
        QueryErrorKind::BadData
    );
    assert_eq!(
        e.instant_query("rate(http_requests_total)", 0)
            .unwrap_err()
            .kind,
        QueryErrorKind::BadData
    );
    let err = e.range_query("up", 0, 86_400_000, 1).unwrap_err();
    assert!(err.msg.contains("11,000 points"), "{err:?}");
    let limited = Engine::new(
        Arc::new(MemSource::new()),
        EngineOptions {
            max_samples: 10,
            ..Default::default()
        },
    );
    assert!(limited.instant_query("up", 0).is_ok());
    let e2 = Engine::new(
        e.source.clone(),
        EngineOptions {
            max_samples: 10,
            ..Default::default()
        },
    );
    let err = e2
        .instant_query("http_requests_total[10m]", 600_000)
        .unwrap_err();
    assert_eq!(err.kind, QueryErrorKind::Execution);
    assert!(err.msg.contains("too many samples"), "{err:?}");
    let e3 = Engine::new(
        e.source.clone(),
        EngineOptions {
            timeout: std::time::Duration::ZERO,
            ..Default::default()
        },
    );
    assert_eq!(
        e3.instant_query("http_requests_total", 0).unwrap_err().kind,
        QueryErrorKind::Timeout
    );
}

/// Deeply nested or very long queries are refused before they can exhaust
/// the stack; the largest accepted ones evaluate.
#[test]
fn deep_queries_are_refused_not_fatal() {
    let e = engine();
    let deep = format!("{}1{}", "(".repeat(10_000), ")".repeat(10_000));
    let err = e.instant_query(&deep, 0).unwrap_err();
    assert_eq!(err.kind, QueryErrorKind::BadData);
    assert!(err.msg.contains("levels of brackets"), "{err:?}");
    let chain = vec!["1"; 100_000].join("+");
    let err = e.instant_query(&chain, 0).unwrap_err();
    assert!(err.msg.contains("operators"), "{err:?}");
    let unary = format!("{}1", "-".repeat(100_000));
    assert_eq!(
        e.instant_query(&unary, 0).unwrap_err().kind,
        QueryErrorKind::BadData
    );
    // At the limits: evaluated normally (on a thread with the stack the
    // server gives query threads).
    let ok_deep = format!(
        "{}http_requests_total{{job=\"api\"}}{}",
        "(".repeat(MAX_NESTING - 1),
        ")".repeat(MAX_NESTING - 1)
    );
    let ok_chain = vec!["1"; MAX_OPERATORS + 1].join("+");
    let e2 = e.clone();
    std::thread::Builder::new()
        .stack_size(QUERY_STACK_BYTES)
        .spawn(move || {
            assert!(e2.instant_query(&ok_deep, 300_000).is_ok());
            match e2.instant_query(&ok_chain, 0).unwrap().value {
                Value::Scalar { value, .. } => assert_eq!(value, (MAX_OPERATORS + 1) as f64),
                other => panic!("{other:?}"),
            }
        })
        .unwrap()
        .join()
        .unwrap();
}

/// Over the sample store, long-window functions read through per-minute
/// summaries answer exactly what the raw samples answer (resets, staleness
/// markers, a flushed file plus the head, windows on and off whole minutes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn summaries_answer_like_raw_samples() {
    use meshlens_storage::samples::{Sample, SampleBatch, SeriesWrite, stale_nan};
    use meshlens_storage::{Storage, StorageConfig, Telemetry};
    let d = std::env::temp_dir().join(format!("meshlens-promql-sum-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    let s = Storage::open(StorageConfig::new(&d), Telemetry::new())
        .await
        .unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    let t0 = (now - 5 * 3_600_000) / 60_000 * 60_000;
    // Two flushed files of 90 minutes each, then 90 minutes in the head.
    for half in 0..3i64 {
        let series = (0..30)
            .map(|i: i64| SeriesWrite {
                labels: Labels::series([
                    ("__name__", "req_total"),
                    ("pod", &format!("p{i}")),
                    ("code", if i % 4 == 0 { "500" } else { "200" }),
                ])
                .unwrap(),
                samples: (0..360)
                    .map(|k| {
                        let t = t0 + half * 5_400_000 + k * 15_000 + 1 + i * 311;
                        let mut v = ((k + 1) * (i + 3) % 1000) as f64 + half as f64 * 3.0;
                        if (k + i) % 97 == 0 {
                            v = stale_nan();
                        }
                        Sample {
                            timestamp_ms: t,
                            value: v,
                        }
                    })
                    .collect(),
            })
            .collect();
        s.samples()
            .append(SampleBatch {
                known: Default::default(),
                series,
                metadata: vec![],
            })
            .await
            .unwrap();
        if half < 2 {
            s.samples().flush().await.unwrap();
        }
    }
    let src: Arc<dyn SeriesSource> = Arc::new(crate::promql::StoreSource {
        store: s.samples().clone(),
        handle: tokio::runtime::Handle::current(),
    });
    let fast = Engine::new(src.clone(), EngineOptions::default());
    let slow = Engine::new(
        src,
        EngineOptions {
            summaries: false,
            ..Default::default()
        },
    );
    let at = [
        t0 + 3 * 3_600_000,
        t0 + 4 * 3_600_000 + 60_000,
        t0 + 2 * 3_600_000 + 7_123,
        t0 + 90 * 60_000,
        t0 + 95 * 60_000 + 59_999,
    ];
    let qs = [
        "rate(req_total[1h])",
        "sum by (code) (increase(req_total[30m]))",
        "delta(req_total[45m])",
        "last_over_time(req_total[1h])",
        "count_over_time(req_total[20m])",
        "present_over_time(req_total{code=\"500\"}[2h])",
        "rate(req_total[3645123ms])",
        "rate(req_total[1h] offset 10m)",
    ];
    let tel = s.telemetry().clone();
    let read =
        move |r: &str| tel.counter("meshlens_samples_summarized_series_total", &[("read", r)]);
    tokio::task::spawn_blocking(move || {
        for q in qs {
            for &t in &at {
                let a = fast.instant_query(q, t).unwrap();
                let b = slow.instant_query(q, t).unwrap();
                let (Value::Vector(a), Value::Vector(b)) = (a.value, b.value) else {
                    panic!("{q}: not vectors")
                };
                assert!(!b.is_empty(), "{q} at {t}: no data");
                assert_eq!(a.len(), b.len(), "{q} at {t}");
                let mut a = a;
                let mut b = b;
                a.sort_by(|x, y| x.labels.cmp(&y.labels));
                b.sort_by(|x, y| x.labels.cmp(&y.labels));
                for (x, y) in a.iter().zip(&b) {
                    assert_eq!(x.labels, y.labels, "{q}");
                    assert!(
                        (x.value - y.value).abs() <= 1e-9 * y.value.abs().max(1.0),
                        "{q} at {t}: {} vs {}",
                        x.value,
                        y.value
                    );
                }
            }
        }
    })
    .await
    .unwrap();
    // Windows on whole minutes were answered from summaries.
    assert!(read("summaries") > 0.0, "summaries never used");
    assert!(read("raw") > 0.0, "windows off whole minutes read raw");
    s.shutdown().await.unwrap();
}
