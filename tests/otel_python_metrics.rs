//! The real OpenTelemetry Python SDK exports metrics over OTLP gRPC and
//! HTTP; names, labels and values come out as Prometheus's OTLP
//! translation rules say (`.` -> `_`, unit suffixes, `_total` on monotonic
//! sums, `service.namespace/service.name` -> `job`, `service.instance.id`
//! -> `instance`, the rest of the resource in `target_info`).

mod common;

use common::{Server, required_tool, temp_dir};
use meshlens_storage::samples::{Matcher, SeriesData};
use meshlens_storage::{Storage, StorageConfig, Telemetry};
use std::process::Command;

fn export(server: &Server, python: &str, mode: &str, endpoint: String, service: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/otel_metrics.py");
    let out = Command::new(python)
        .args([script, mode, &endpoint, service])
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{mode} metric exporter failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
}

fn find<'a>(all: &'a [SeriesData], name: &str, pairs: &[(&str, &str)]) -> &'a SeriesData {
    all.iter()
        .find(|s| {
            s.labels.metric_name() == Some(name)
                && pairs.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })
        .unwrap_or_else(|| {
            let names: Vec<String> = all.iter().map(|s| s.labels.to_string()).collect();
            panic!("no {name}{pairs:?} among:\n{}", names.join("\n"))
        })
}

fn last(s: &SeriesData) -> f64 {
    *s.values.last().expect("a sample")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otel_sdk_metrics_follow_prometheus_naming() {
    let Some(python) = required_tool("MESHLENS_TEST_PYTHON") else {
        return;
    };
    let data = temp_dir("otel-metrics");
    let mut server = Server::start(&data, &[]);
    export(
        &server,
        &python,
        "grpc",
        format!("http://127.0.0.1:{}", server.otlp_grpc_port),
        "cart-grpc",
    );
    export(
        &server,
        &python,
        "http",
        server.otlp_http_url("/v1/metrics"),
        "cart-http",
    );
    server.stop();

    let storage = Storage::open(StorageConfig::new(&data), Telemetry::new())
        .await
        .expect("open");
    let all = storage
        .samples()
        .select(
            &[
                Matcher::new(meshlens_storage::samples::MatchOp::Regex, "__name__", ".+")
                    .expect("re"),
            ],
            i64::MIN / 2,
            i64::MAX / 2,
        )
        .await
        .expect("select");
    storage.shutdown().await.expect("shutdown");

    for svc in ["cart-grpc", "cart-http"] {
        let job = format!("shop/{svc}");
        let base = [("job", job.as_str()), ("instance", "pod-1")];
        let with = |extra: &[(&'static str, &'static str)]| -> Vec<(&str, &str)> {
            base.iter().copied().chain(extra.iter().copied()).collect()
        };
        // Monotonic sum: `_total`, the `{request}` annotation unit dropped.
        let s = find(
            &all,
            "http_server_requests_total",
            &with(&[
                ("http_request_method", "GET"),
                ("http_response_status_code", "200"),
            ]),
        );
        assert_eq!(last(s), 3.0);
        assert_eq!(s.labels.get("otel_scope_name"), Some("meshlens-test"));
        let s = find(
            &all,
            "http_server_requests_total",
            &with(&[("http_request_method", "POST")]),
        );
        assert_eq!(last(s), 2.0);
        // Non-monotonic sum: a gauge, no suffix.
        let s = find(
            &all,
            "http_server_active_requests",
            &with(&[("http_request_method", "GET")]),
        );
        assert_eq!(last(s), 3.0);
        // Histogram in seconds: _bucket{le} cumulative, _sum, _count.
        let b = |le: &'static str| {
            last(find(
                &all,
                "http_server_request_duration_seconds_bucket",
                &with(&[("le", le)]),
            ))
        };
        assert_eq!(
            (b("0.1"), b("0.5"), b("1"), b("+Inf")),
            (1.0, 3.0, 4.0, 5.0)
        );
        let s = find(
            &all,
            "http_server_request_duration_seconds_count",
            &with(&[]),
        );
        assert_eq!(last(s), 5.0);
        let s = find(&all, "http_server_request_duration_seconds_sum", &with(&[]));
        assert!((last(s) - 3.25).abs() < 1e-9, "{}", last(s));
        // Gauge with unit By -> _bytes.
        let s = find(
            &all,
            "process_memory_usage_bytes",
            &with(&[("kind", "rss")]),
        );
        assert_eq!(last(s), 1024.0);
        // The rest of the resource goes to target_info.
        let s = find(
            &all,
            "target_info",
            &with(&[("deployment_environment", "test")]),
        );
        assert_eq!(last(s), 1.0);
    }
}
