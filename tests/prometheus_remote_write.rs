//! A real Prometheus (Debian `prometheus`) scrapes itself every second and
//! remote-writes to meshlens; afterwards every series and sample that
//! Prometheus holds for a closed time window is in meshlens, equal.

mod common;

use common::{Prometheus, Server, client, required_tool, temp_dir};
use meshlens_storage::samples::{MatchOp, Matcher, is_stale_nan};
use meshlens_storage::{Storage, StorageConfig, Telemetry};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

type Series = BTreeMap<Vec<(String, String)>, Vec<(i64, f64)>>;

fn labels_of(m: &Value) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = m
        .as_object()
        .expect("metric object")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_remote_write_lands_equal() {
    let Some(prom_bin) = required_tool("MESHLENS_TEST_PROMETHEUS") else {
        return;
    };
    let dir = temp_dir("prom-rw");
    let data = dir.join("meshlens");
    // Only what Prometheus sends: meshlens's own scrape of itself would add
    // series (job "meshlens") to the compared window.
    let mut server = Server::start(&data, &["--no-self-scrape"]);
    let prom = Prometheus::start(
        &prom_bin,
        &dir,
        &format!(
            r#"
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: prometheus
    static_configs:
      - targets: ["127.0.0.1:{{port}}"]
        labels: {{team: "mesh"}}
remote_write:
  - url: "http://127.0.0.1:{}/api/v1/write"
    queue_config: {{batch_send_deadline: 500ms, max_backoff: 1s}}
    metadata_config: {{send_interval: 2s}}
"#,
            server.http_port
        ),
        &[],
    );
    let http = client();
    let papi = prom.url("/api/v1");
    // Let Prometheus scrape ~8 times and ship the samples.
    let ready = Instant::now() + Duration::from_secs(60);
    loop {
        let ok = http
            .get(format!("{papi}/query?query=up"))
            .send()
            .await
            .ok()
            .filter(|r| r.status().is_success());
        if let Some(r) = ok {
            let v: Value = r.json().await.expect("json");
            if v["data"]["result"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
            {
                break;
            }
        }
        assert!(
            Instant::now() < ready,
            "prometheus did not start:\n{}",
            prom.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(8)).await;
    // A closed window: everything in (t-6s, t] was scraped before now.
    let t = (chrono_now_ms() - 2_000) as f64 / 1000.0;
    let sel = r#"{__name__=~"up|scrape_.*|prometheus_tsdb_head_series|prometheus_http_requests_total|go_goroutines|prometheus_engine_query_duration_seconds"}"#;
    let resp: Value = http
        .get(format!("{papi}/query"))
        .query(&[("query", format!("{sel}[6s]")), ("time", t.to_string())])
        .send()
        .await
        .expect("prometheus query")
        .json()
        .await
        .expect("json");
    assert_eq!(resp["status"], "success", "{resp}");
    let mut want: Series = BTreeMap::new();
    for r in resp["data"]["result"].as_array().expect("result") {
        let pts = r["values"]
            .as_array()
            .expect("values")
            .iter()
            .map(|p| {
                let ts = (p[0].as_f64().expect("ts") * 1000.0).round() as i64;
                let v: f64 = p[1].as_str().expect("value").parse().expect("float");
                (ts, v)
            })
            .collect();
        want.insert(labels_of(&r["metric"]), pts);
    }
    assert!(
        want.len() > 20,
        "too few series from Prometheus: {}",
        want.len()
    );

    // Give remote write time to deliver the window, then read meshlens's store.
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Prometheus's metadata reached the metadata API.
    let md: Value = http
        .get(server.url("/api/v1/metadata?metric=prometheus_http_requests_total"))
        .send()
        .await
        .expect("metadata")
        .json()
        .await
        .expect("json");
    assert_eq!(
        md["data"]["prometheus_http_requests_total"][0]["type"], "counter",
        "{md}"
    );
    server.stop();

    let end_ms = (t * 1000.0).round() as i64;
    let storage = Storage::open(StorageConfig::new(&data), Telemetry::new())
        .await
        .expect("open");
    let m = [Matcher::new(
        MatchOp::Regex,
        "__name__",
        "up|scrape_.*|prometheus_tsdb_head_series|prometheus_http_requests_total|go_goroutines|prometheus_engine_query_duration_seconds",
    )
    .expect("regex")];
    let mut got: Series = BTreeMap::new();
    for sd in storage
        .samples()
        .select(&m, end_ms - 6_000 + 1, end_ms)
        .await
        .expect("select")
    {
        let pts: Vec<(i64, f64)> = sd
            .timestamps
            .iter()
            .zip(&sd.values)
            .filter(|(_, v)| !is_stale_nan(**v))
            .map(|(t, v)| (*t, *v))
            .collect();
        if pts.is_empty() {
            continue;
        }
        let l = sd
            .labels
            .iter()
            .map(|l| (l.name.to_string(), l.value.to_string()))
            .collect();
        got.insert(l, pts);
    }
    storage.shutdown().await.expect("shutdown");
    let missing: Vec<_> = want
        .keys()
        .filter(|k| !got.contains_key(*k))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "series Prometheus has and meshlens lacks: {missing:?}"
    );
    let extra: Vec<_> = got
        .keys()
        .filter(|k| !want.contains_key(*k))
        .take(5)
        .collect();
    assert!(
        extra.is_empty(),
        "series meshlens has and Prometheus lacks: {extra:?}"
    );
    for (k, w) in &want {
        let g = &got[k];
        assert_eq!(
            g.len(),
            w.len(),
            "{k:?}: sample counts differ\nprometheus {w:?}\nmeshlens   {g:?}"
        );
        for (a, b) in g.iter().zip(w) {
            assert_eq!(a.0, b.0, "{k:?}: timestamps differ");
            assert!(
                a.1 == b.1 || (a.1.is_nan() && b.1.is_nan()),
                "{k:?} @ {}: meshlens {} vs prometheus {}",
                a.0,
                a.1,
                b.1
            );
        }
    }
}

fn chrono_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
