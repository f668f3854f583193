//! The real OpenTelemetry Python SDK exports to meshlens over OTLP gRPC,
//! OTLP HTTP (protobuf) and Zipkin JSON; every span reads back.

mod common;

use common::{Server, client, required_tool, temp_dir};
use serde_json::Value;
use std::process::Command;

async fn export_and_check(server: &Server, python: &str, mode: &str, endpoint: String) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/otel_export.py");
    let service = format!("checkout-{mode}");
    let out = Command::new(python)
        .args([script, mode, &endpoint, &service, "5"])
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{mode} exporter failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("exporter report");
    let ids = report["trace_ids"].as_array().expect("ids");
    assert_eq!(ids.len(), 5);
    let http = client();
    for (i, id) in ids.iter().enumerate() {
        let id = id.as_str().expect("id");
        let r = http
            .get(server.url(&format!("/api/v2/trace/{id}")))
            .send()
            .await
            .expect("get");
        assert_eq!(
            r.status().as_u16(),
            200,
            "{mode}: trace {id} not found\n{}",
            server.log()
        );
        let spans: Vec<Value> = r.json().await.expect("json");
        assert_eq!(spans.len(), 2, "{mode}: {spans:?}");
        let root = spans
            .iter()
            .find(|s| {
                s["name"]
                    .as_str()
                    .is_some_and(|n| n.eq_ignore_ascii_case("GET /checkout"))
            })
            .expect("root span");
        let child = spans
            .iter()
            .find(|s| {
                s["name"]
                    .as_str()
                    .is_some_and(|n| n.eq_ignore_ascii_case("SELECT orders"))
            })
            .expect("child span");
        assert_eq!(root["kind"], "SERVER");
        assert_eq!(child["kind"], "CLIENT");
        assert_eq!(root["localEndpoint"]["serviceName"], service.as_str());
        assert_eq!(child["parentId"], root["id"]);
        assert_eq!(root["tags"]["http.response.status_code"], "200");
        assert_eq!(root["tags"]["iteration"], i.to_string());
        assert_eq!(child["tags"]["db.system"], "postgresql");
        assert_eq!(
            child["annotations"][0]["value"]
                .as_str()
                .map(|v| v.contains("rows fetched")),
            Some(true),
            "{child}"
        );
        if i % 2 == 1 {
            assert!(
                child["tags"]["error"].is_string(),
                "{mode}: error status kept: {child}"
            );
        }
        assert!(root["duration"].as_i64().is_some_and(|d| d >= 1));
    }
    let services: Vec<String> = http
        .get(server.url("/api/v2/services"))
        .send()
        .await
        .expect("services")
        .json()
        .await
        .expect("json");
    assert!(services.contains(&service), "{services:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otel_python_sdk_exporters() {
    let Some(python) = required_tool("MESHLENS_TEST_PYTHON") else {
        return;
    };
    let dir = temp_dir("otel-python");
    let server = Server::start(&dir.join("data"), &[]);
    export_and_check(
        &server,
        &python,
        "grpc",
        format!("http://127.0.0.1:{}", server.otlp_grpc_port),
    )
    .await;
    export_and_check(&server, &python, "http", server.otlp_http_url("/v1/traces")).await;
    export_and_check(&server, &python, "zipkin", server.url("/api/v2/spans")).await;
}
