#![allow(clippy::unwrap_used)]

use super::params::{parse_time, unescape_label_name};
use crate::QueryState;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use meshlens_storage::samples::{Labels, Sample, SampleBatch, SeriesWrite};
use meshlens_storage::{Storage, StorageConfig, Telemetry};
use serde_json::{Value, json};
use tower::ServiceExt;

async fn state(name: &str) -> QueryState {
    let d = std::env::temp_dir().join(format!("meshlens-prom-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    let s = Storage::open(StorageConfig::new(d), Telemetry::new())
        .await
        .unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    let w = |pairs: &[(&str, &str)], t: i64| SeriesWrite {
        labels: Labels::series(pairs.iter().copied()).unwrap(),
        samples: vec![Sample {
            timestamp_ms: t,
            value: 1.0,
        }],
    };
    s.samples()
        .append(SampleBatch {
            series: vec![
                w(
                    &[("__name__", "up"), ("job", "a"), ("instance", "x:1")],
                    now,
                ),
                w(
                    &[("__name__", "up"), ("job", "b"), ("instance", "y:1")],
                    now,
                ),
                w(
                    &[
                        ("__name__", "istio_requests_total"),
                        ("response_code", "503"),
                        ("http.method", "GET"),
                    ],
                    now,
                ),
                w(&[("__name__", "old"), ("job", "a")], now - 5 * 86_400_000),
            ],
            metadata: vec![meshlens_storage::samples::MetricMetadata {
                metric_family: "up".into(),
                kind: meshlens_storage::samples::MetricType::Gauge,
                help: "1 if the target is up".into(),
                unit: String::new(),
            }],
        })
        .await
        .unwrap();
    QueryState::new(s)
}

async fn call(st: &QueryState, req: Request<Body>) -> (StatusCode, Value) {
    let resp = super::router(st.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

async fn get(st: &QueryState, uri: &str) -> (StatusCode, Value) {
    call(st, Request::get(uri).body(Body::empty()).unwrap()).await
}

#[tokio::test]
async fn series_labels_values_metadata() {
    let st = state("basic").await;
    let (s, v) = get(&st, "/api/v1/series?match[]=up").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["status"], "success");
    assert_eq!(
        v["data"],
        json!([
            {"__name__": "up", "instance": "x:1", "job": "a"},
            {"__name__": "up", "instance": "y:1", "job": "b"}
        ])
    );
    // Several match[] are a union; `or` inside braces too.
    let (_, v) = get(
        &st,
        "/api/v1/series?match[]=up{job=%22a%22}&match[]={response_code=~%225..%22}",
    )
    .await;
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    let (_, v) = get(
        &st,
        "/api/v1/series?match[]=up{job=%22a%22%20or%20job=%22b%22}",
    )
    .await;
    assert_eq!(v["data"].as_array().unwrap().len(), 2);

    // Form-encoded POST works like GET.
    let req = Request::post("/api/v1/series")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from("match[]=up&limit=1"))
        .unwrap();
    let (s, v) = call(&st, req).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["data"].as_array().unwrap().len(), 1);
    assert_eq!(v["warnings"], json!(["results truncated due to limit"]));

    let (_, v) = get(&st, "/api/v1/labels").await;
    assert_eq!(
        v["data"],
        json!([
            "__name__",
            "http.method",
            "instance",
            "job",
            "response_code"
        ])
    );
    // start/end: the 5-day-old series is outside the last hour.
    let now = chrono::Utc::now().timestamp();
    let (_, v) = get(
        &st,
        &format!(
            "/api/v1/label/__name__/values?start={}&end={}",
            now - 3600,
            now + 60
        ),
    )
    .await;
    assert_eq!(v["data"], json!(["istio_requests_total", "up"]));
    let (_, v) = get(&st, "/api/v1/label/__name__/values").await;
    assert_eq!(v["data"], json!(["istio_requests_total", "old", "up"]));
    let (_, v) = get(&st, "/api/v1/label/job/values?match[]=up").await;
    assert_eq!(v["data"], json!(["a", "b"]));
    let (_, v) = get(&st, "/api/v1/label/U__http_2e_method/values").await;
    assert_eq!(v["data"], json!(["GET"]));

    let (_, v) = get(&st, "/api/v1/metadata").await;
    assert_eq!(
        v["data"]["up"],
        json!([{"type": "gauge", "help": "1 if the target is up", "unit": ""}])
    );

    let (s, v) = get(&st, "/api/v1/status/buildinfo").await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        v["data"].get("features").is_none(),
        "a features map makes Grafana think this is Mimir"
    );
}

#[tokio::test]
async fn bad_requests_get_prometheus_errors() {
    let st = state("errors").await;
    for uri in [
        "/api/v1/series",
        "/api/v1/series?match[]=up{",
        "/api/v1/series?match[]={job=~%22.*%22}",
        "/api/v1/series?match[]=rate(up[5m])",
        "/api/v1/series?match[]=up&start=yesterday",
        "/api/v1/series?match[]=up&start=10&end=5",
        "/api/v1/labels?limit=-1",
        "/api/v1/series?match[]={job=~%22(%22}",
    ] {
        let (s, v) = get(&st, uri).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{uri}: {v}");
        assert_eq!(v["status"], "error", "{uri}");
        assert_eq!(v["errorType"], "bad_data", "{uri}");
        assert!(!v["error"].as_str().unwrap().is_empty(), "{uri}");
    }
    let req = Request::post("/api/v1/series")
        .header("content-type", "application/json")
        .body(Body::from("{}"))
        .unwrap();
    let (s, v) = call(&st, req).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("x-www-form-urlencoded")
    );
}

#[test]
fn times_and_names() {
    assert_eq!(parse_time("1.5").unwrap(), 1500);
    assert_eq!(
        parse_time("2026-11-26T00:00:00Z").unwrap(),
        1_795_651_200_000
    );
    assert_eq!(
        parse_time("2026-11-26T01:00:00+01:00").unwrap(),
        1_795_651_200_000
    );
    assert!(parse_time("NaN").is_err());
    assert!(parse_time("soon").is_err());
    assert_eq!(unescape_label_name("U__http_2e_method"), "http.method");
    assert_eq!(unescape_label_name("job"), "job");
    assert_eq!(unescape_label_name("U__a__b"), "a_b");
}
