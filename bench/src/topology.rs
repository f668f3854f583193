//! `topology-mesh`: the latency of `GET /api/topology` over one hour of a
//! mesh of N services at R requests/s. The hour is built in simulated time
//! into an in-process store: Istio standard metrics as a scrape every 15 s
//! would store them (both reporters, response codes, the 20 duration
//! buckets), and the series meshlens derives from the Envoy-style spans of
//! every call (fed through the real derivation at 15 s ticks). Then the
//! topology is computed the way the HTTP handler does, for each source.

use meshlens_ingest::derive::{DeriveConfig, Deriver};
use meshlens_query::QueryState;
use meshlens_storage::model::{AttrValue, Endpoint, Span, SpanId, SpanKind, TraceId, UnixNanos};
use meshlens_storage::samples::{Labels, Sample, SampleBatch, SeriesWrite};
use meshlens_storage::{Storage, StorageConfig, Telemetry};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const STEP_MS: i64 = 15_000;
const NAMESPACES: [&str; 5] = ["default", "shop", "payments", "platform", "media"];
const BUCKETS: [&str; 20] = [
    "0.5", "1", "5", "10", "25", "50", "100", "250", "500", "1000", "2500", "5000", "10000",
    "30000", "60000", "300000", "600000", "1800000", "3600000", "+Inf",
];
const LE: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

struct Svc {
    name: String,
    ns: &'static str,
    versions: Vec<&'static str>,
}

/// (source service, source version, destination service) edges: 10 layers,
/// each service calls 3 of the next layer; the gateway calls layer 0.
fn mesh(n: usize) -> (Vec<Svc>, Vec<(usize, usize, usize)>) {
    let svcs: Vec<Svc> = (0..n)
        .map(|i| Svc {
            name: format!("svc-{i:03}"),
            ns: NAMESPACES[i % NAMESPACES.len()],
            versions: if i % 3 == 0 {
                vec!["v1", "v2"]
            } else {
                vec!["v1"]
            },
        })
        .collect();
    let layer = (n / 10).max(1);
    let mut edges = Vec::new();
    for (i, s) in svcs.iter().enumerate() {
        let next = (i / layer + 1) * layer;
        if next >= n {
            continue;
        }
        for k in 0..3 {
            let d = next + (i * 7 + k * 3) % layer.min(n - next);
            for v in 0..s.versions.len() {
                if !edges.contains(&(i, v, d)) {
                    edges.push((i, v, d));
                }
            }
        }
    }
    (svcs, edges)
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    Labels::new(pairs.iter().copied()).unwrap_or_default()
}

pub async fn run(dir: PathBuf, services: usize, rps: f64, runs: usize) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(&dir);
    let mut cfg = StorageConfig::new(&dir);
    cfg.maintenance_interval = Duration::from_secs(24 * 3600);
    cfg.samples.ooo_window = Duration::from_secs(2 * 3600);
    let storage = Storage::open(cfg, Telemetry::new()).await?;
    let (svcs, edges) = mesh(services);
    let now = UnixNanos::now().as_millis();
    let steps = 240i64; // one hour of 15 s steps
    let start = (now - steps * STEP_MS).div_euclid(STEP_MS) * STEP_MS;
    let per_edge = rps / edges.len() as f64; // requests/s per edge
    println!(
        "mesh: {} services, {} edges (incl. versions), {rps} req/s; one hour of 15 s steps",
        svcs.len(),
        edges.len()
    );

    // Istio series: per edge, reporter, code: a counter and 20 buckets.
    let codes = [("200", 0.97), ("404", 0.02), ("503", 0.01)];
    let mut series: Vec<(Labels, f64, usize, usize)> = Vec::new(); // labels, share, edge, bucket(20 = counter)
    for (e, &(s, v, d)) in edges.iter().enumerate() {
        let (src, dst) = (&svcs[s], &svcs[d]);
        let sv = src.versions[v];
        let dv = dst.versions[e % dst.versions.len()];
        let swl = format!("{}-{sv}", src.name);
        let dwl = format!("{}-{dv}", dst.name);
        let dsvc = format!("{}.{}.svc.cluster.local", dst.name, dst.ns);
        for reporter in ["source", "destination"] {
            for (code, share) in codes {
                let base: Vec<(&str, &str)> = vec![
                    ("reporter", reporter),
                    ("source_workload", &swl),
                    ("source_workload_namespace", src.ns),
                    ("source_canonical_service", &src.name),
                    ("source_canonical_revision", sv),
                    ("source_app", &src.name),
                    ("source_version", sv),
                    ("destination_workload", &dwl),
                    ("destination_workload_namespace", dst.ns),
                    ("destination_service", &dsvc),
                    ("destination_service_name", &dst.name),
                    ("destination_service_namespace", dst.ns),
                    ("destination_canonical_service", &dst.name),
                    ("destination_canonical_revision", dv),
                    ("destination_app", &dst.name),
                    ("destination_version", dv),
                    ("request_protocol", "http"),
                    ("response_code", code),
                    ("response_flags", if code == "503" { "UO" } else { "-" }),
                    (
                        "connection_security_policy",
                        if reporter == "destination" {
                            "mutual_tls"
                        } else {
                            "unknown"
                        },
                    ),
                    ("job", "kubernetes-pods"),
                ];
                let mut l = base.clone();
                l.push(("__name__", "istio_requests_total"));
                series.push((labels(&l), share, e, 20));
                for (b, le) in BUCKETS.iter().enumerate() {
                    let mut l = base.clone();
                    l.push(("__name__", "istio_request_duration_milliseconds_bucket"));
                    l.push(("le", le));
                    series.push((labels(&l), share, e, b));
                }
            }
        }
    }
    println!("istio series: {}", series.len());
    let mean_ms: Vec<f64> = (0..edges.len())
        .map(|e| 5.0 + (e * 37 % 200) as f64)
        .collect();
    let cdf = |e: usize, b: usize| {
        if b >= LE.len() {
            1.0
        } else {
            1.0 - (-LE[b] / mean_ms[e]).exp()
        }
    };

    let deriver = Deriver::new(
        DeriveConfig {
            wait: Duration::from_secs(1),
            max_span_age: Duration::from_secs(24 * 3600),
            ..Default::default()
        },
        None,
    );
    let t0 = Instant::now();
    let mut counts = vec![0.0f64; series.len()];
    let mut sid: u64 = 1;
    let mut spans_total = 0usize;
    let mut rng: u64 = 0x1234_5678;
    for k in 0..=steps {
        let ts = start + k * STEP_MS;
        // Metrics: this step's requests.
        let writes: Vec<SeriesWrite> = series
            .iter()
            .enumerate()
            .map(|(i, (l, share, e, b))| {
                if k > 0 {
                    let n = (per_edge * 15.0 * share).round();
                    counts[i] += if *b == 20 {
                        n
                    } else {
                        (n * cdf(*e, *b)).round()
                    };
                }
                SeriesWrite {
                    labels: l.clone(),
                    samples: vec![Sample {
                        timestamp_ms: ts,
                        value: counts[i],
                    }],
                }
            })
            .collect();
        let r = storage
            .samples()
            .append(SampleBatch {
                known: Default::default(),
                series: writes,
                metadata: vec![],
            })
            .await?;
        anyhow::ensure!(
            r.rejected_total() == 0,
            "refused: {}",
            r.describe_rejections()
        );
        if k == 0 {
            deriver.tick_at(ts - 1);
            continue;
        }
        // Spans of this step's calls (Envoy style: shared ids), derived.
        let mut batch = Vec::new();
        for (e, &(s, v, d)) in edges.iter().enumerate() {
            let n = (per_edge * 15.0).round() as usize;
            let (src, dst) = (&svcs[s], &svcs[d]);
            let dv = dst.versions[e % dst.versions.len()];
            for c in 0..n {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                sid += 1;
                let code = if c % 100 == 0 { "503" } else { "200" };
                let mk = |kind, svc: &Svc, ver: &str, shared: bool| {
                    let mut attrs = std::collections::BTreeMap::new();
                    attrs.insert(
                        "istio.canonical_revision".to_string(),
                        AttrValue::Str(ver.to_string()),
                    );
                    attrs.insert(
                        "istio.namespace".to_string(),
                        AttrValue::Str(svc.ns.to_string()),
                    );
                    attrs.insert(
                        "http.status_code".to_string(),
                        AttrValue::Str(code.to_string()),
                    );
                    Span {
                        trace_id: TraceId::from_u64s(0, rng),
                        trace_id_64: true,
                        span_id: SpanId(sid.to_be_bytes()),
                        kind,
                        shared,
                        name: "call".into(),
                        start: Some(UnixNanos::from_millis(ts - 1000)),
                        duration_nanos: Some(((mean_ms[e] * 1e6) as i64).max(1)),
                        local: Endpoint {
                            service_name: Some(format!("{}.{}", svc.name, svc.ns)),
                            ..Default::default()
                        },
                        attributes: attrs,
                        ..Default::default()
                    }
                };
                batch.push(mk(SpanKind::Client, src, src.versions[v], false));
                batch.push(mk(SpanKind::Server, dst, dv, true));
            }
        }
        spans_total += batch.len();
        deriver.observe_at(&batch, ts - 500);
        let (b, _) = deriver.tick_at(ts);
        let r = storage.samples().append(b).await?;
        anyhow::ensure!(
            r.rejected_total() == 0,
            "refused: {}",
            r.describe_rejections()
        );
    }
    storage.samples().flush().await?;
    let stats = storage.samples().stats();
    println!(
        "built in {:.1} s: {} series, {} samples in Parquet; {spans_total} spans derived",
        t0.elapsed().as_secs_f64(),
        stats.series,
        stats.file_samples
    );

    let st = QueryState::new(storage.clone());
    let end = start + steps * STEP_MS;
    for (source, graph) in [
        ("mesh", "versioned_app"),
        ("mesh", "workload"),
        ("spans", "versioned_app"),
        ("auto", "versioned_app"),
    ] {
        let p: HashMap<String, String> = [
            ("source", source.to_string()),
            ("graph", graph.to_string()),
            ("start", format!("{}", (end - 3_600_000) as f64 / 1000.0)),
            ("end", format!("{}", end as f64 / 1000.0)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let mut times = Vec::new();
        let mut shape = String::new();
        for run in 0..=runs {
            let t = Instant::now();
            let topo = meshlens_query::topology::topology(st.clone(), &p)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            if run == 0 {
                shape = format!("{} nodes, {} edges", topo.nodes.len(), topo.edges.len());
                continue;
            }
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(|a, b| a.total_cmp(b));
        let c = |r: &str| {
            storage
                .telemetry()
                .counter("meshlens_samples_summarized_series_total", &[("read", r)])
        };
        println!(
            "  series summarised so far: {} from per-minute summaries, {} raw; summaries in memory: {:.0} MB",
            c("summaries"),
            c("raw"),
            storage
                .telemetry()
                .gauge("meshlens_samples_rollup_cache_bytes", &[])
                / 1e6
        );
        println!(
            "topology source={source} graph={graph} window=1h: median {:.0} ms, min {:.0} ms, max {:.0} ms ({runs} runs; {shape})",
            times[times.len() / 2],
            times[0],
            times[times.len() - 1]
        );
    }
    storage.shutdown().await?;
    Ok(())
}
