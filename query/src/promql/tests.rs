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
