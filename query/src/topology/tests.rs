//! The topology over an hour held in flushed files and the head: figures
//! read through per-minute summaries equal what the raw samples give.
#![allow(clippy::unwrap_used, clippy::panic)]

use super::topology;
use crate::QueryState;
use crate::promql::{Engine, EngineOptions, StoreSource, Value};
use meshlens_storage::samples::{Labels, Sample, SampleBatch, SeriesWrite};
use meshlens_storage::{Storage, StorageConfig, Telemetry};
use std::collections::HashMap;
use std::sync::Arc;

const STEP: i64 = 15_000;

fn istio(dst: &str, code: &str, name: &str, le: Option<&str>) -> Labels {
    let mut v = vec![
        ("__name__", name),
        ("reporter", "source"),
        ("source_workload", "productpage-v1"),
        ("source_workload_namespace", "default"),
        ("source_canonical_service", "productpage"),
        ("source_canonical_revision", "v1"),
        ("destination_workload", dst),
        ("destination_workload_namespace", "default"),
        ("destination_service_name", "reviews"),
        ("destination_service_namespace", "default"),
        ("destination_canonical_service", "reviews"),
        (
            "destination_canonical_revision",
            if dst.ends_with("v1") { "v1" } else { "v2" },
        ),
        ("request_protocol", "http"),
        ("response_code", code),
        ("response_flags", "-"),
    ];
    if let Some(le) = le {
        v.push(("le", le));
    }
    Labels::series(v).unwrap()
}

/// Requests in `(start, end]` as the topology counts them: every increase
/// of a series from its last sample at or before `start` (a drop is a
/// reset: the new value counts; no earlier sample: from 0).
fn exact(pts: &[(i64, f64)], start: i64, end: i64) -> f64 {
    let mut prev: Option<f64> = None;
    let mut inc = 0.0;
    for &(t, v) in pts {
        if t <= start {
            prev = Some(v);
        } else if t <= end {
            let p = prev.unwrap_or(0.0);
            inc += if v >= p { v - p } else { v };
            prev = Some(v);
        }
    }
    inc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hour_in_files_reads_summaries_and_matches_raw_samples() {
    let d = std::env::temp_dir().join(format!("meshlens-topo-sum-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    let s = Storage::open(StorageConfig::new(&d), Telemetry::new())
        .await
        .unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    // 80 minutes of 15 s scrapes, 7 s past whole minutes.
    let t0 = (now - 85 * 60_000) / 60_000 * 60_000 + 7_000;
    let steps = 80 * 4;
    let mut all: Vec<(Labels, Vec<(i64, f64)>)> = Vec::new();
    for (d_i, dst) in ["reviews-v1", "reviews-v2"].iter().enumerate() {
        for (c_i, code) in ["200", "503"].iter().enumerate() {
            let per_step = [20.0, 1.0][c_i] * (d_i + 1) as f64;
            let mut total = 0.0;
            let mut counter = Vec::new();
            let mut buckets: Vec<Vec<(i64, f64)>> = vec![Vec::new(); 4];
            let mut cum = [0.0f64; 4];
            for k in 0..steps {
                let t = t0 + k * STEP;
                let n = per_step + (k % 3) as f64;
                total += n;
                // A restarted proxy: the counter starts again.
                if d_i == 1 && c_i == 0 && k == 150 {
                    total = n;
                    cum = [0.0; 4];
                }
                counter.push((t, total));
                // le 10, 100, 1000, +Inf: shares 0.5, 0.3, 0.15, 0.05.
                for (b, share) in [0.5, 0.3, 0.15, 0.05].iter().enumerate() {
                    cum[b] += n * share;
                    let v: f64 = cum[..=b].iter().sum();
                    buckets[b].push((t, v.round()));
                }
            }
            all.push((istio(dst, code, "istio_requests_total", None), counter));
            for (b, le) in ["10", "100", "1000", "+Inf"].iter().enumerate() {
                all.push((
                    istio(
                        dst,
                        code,
                        "istio_request_duration_milliseconds_bucket",
                        Some(le),
                    ),
                    buckets[b].clone(),
                ));
            }
        }
    }
    // Written in three parts: two flushed files, then the head.
    for (a, b, flush) in [
        (0, 150, true),
        (150, 260, true),
        (260, steps as usize, false),
    ] {
        let series = all
            .iter()
            .map(|(l, pts)| SeriesWrite {
                labels: l.clone(),
                samples: pts[a..b]
                    .iter()
                    .map(|&(t, v)| Sample {
                        timestamp_ms: t,
                        value: v,
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
        if flush {
            s.samples().flush().await.unwrap();
        }
    }
    let end = t0 + (steps - 1) * STEP + 4_321;
    let st = QueryState::new(s.clone());
    let p: HashMap<String, String> = [
        ("source", "mesh".to_string()),
        ("graph", "versioned_app".to_string()),
        ("window", "1h".to_string()),
        ("end", format!("{}", end as f64 / 1000.0)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let topo = topology(st, &p).await.unwrap();
    let start = (topo.start * 1000.0).round() as i64;
    assert_eq!(start % 60_000, 0, "the window starts on a whole minute");
    assert!(end - start >= 3_600_000 && end - start < 3_660_000);
    assert_eq!(topo.edges.len(), 2, "{:?}", topo.edges);
    let read = |r: &str| {
        s.telemetry()
            .counter("meshlens_samples_summarized_series_total", &[("read", r)])
    };
    assert!(read("summaries") > 0.0);
    assert_eq!(read("raw"), 0.0, "whole-minute windows never read raw");
    // The raw path: the engine without summaries, and counts by hand.
    let slow = Engine::new(
        Arc::new(StoreSource {
            store: s.samples().clone(),
            handle: tokio::runtime::Handle::current(),
        }),
        EngineOptions {
            summaries: false,
            ..Default::default()
        },
    );
    for e in &topo.edges {
        let dst = if e.target.contains("v1") {
            "reviews-v1"
        } else {
            "reviews-v2"
        };
        let want: f64 = all
            .iter()
            .filter(|(l, _)| {
                l.metric_name() == Some("istio_requests_total")
                    && l.get("destination_workload") == Some(dst)
            })
            .map(|(_, pts)| exact(pts, start, end))
            .sum();
        assert!(
            (e.requests - want).abs() < 1e-6,
            "{}: {} requests, raw samples say {want}",
            e.id,
            e.requests
        );
        let errors: f64 = all
            .iter()
            .filter(|(l, _)| {
                l.metric_name() == Some("istio_requests_total")
                    && l.get("destination_workload") == Some(dst)
                    && l.get("response_code") == Some("503")
            })
            .map(|(_, pts)| exact(pts, start, end))
            .sum();
        assert!(e.requests > 0.0 && errors > 0.0);
        for (k, got) in [
            ("p50", e.latency_ms.p50),
            ("p95", e.latency_ms.p95),
            ("p99", e.latency_ms.p99),
        ] {
            let q = e.queries[k].clone();
            assert!(
                q.contains(&format!("[{}ms]", end - start))
                    || q.contains(&format!("[{}s]", (end - start) / 1000)),
                "{q}"
            );
            let slow = slow.clone();
            let r = tokio::task::spawn_blocking(move || slow.instant_query(&q, end))
                .await
                .unwrap()
                .unwrap();
            let Value::Vector(v) = r.value else {
                panic!("{k}: not a vector")
            };
            assert_eq!(v.len(), 1, "{k}");
            let got = got.unwrap();
            assert!(
                (got - v[0].value).abs() <= 1e-9 * v[0].value.abs().max(1.0),
                "{} {k}: {got} vs raw {}",
                e.id,
                v[0].value
            );
        }
    }
    s.shutdown().await.unwrap();
}
