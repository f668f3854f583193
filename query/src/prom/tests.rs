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
            known: Default::default(),
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

#[tokio::test]
async fn query_and_query_range() {
    let st = state("query").await;
    // Grafana's "Save & test".
    let (s, v) = get(&st, "/api/v1/query?query=1%2B1&time=1700000000.5").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v["data"],
        json!({"resultType": "scalar", "result": [1700000000.5, "2"]})
    );
    // An instant vector, now.
    let (s, v) = get(&st, "/api/v1/query?query=sum%20by%20(job)%20(up)").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["data"]["resultType"], "vector");
    let mut jobs: Vec<String> = v["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["metric"]["job"].as_str().unwrap().to_string())
        .collect();
    jobs.sort();
    assert_eq!(jobs, vec!["a", "b"]);
    // A range query by form POST with a float step.
    let now = chrono::Utc::now().timestamp();
    let body = format!(
        "query=up%7Bjob%3D%22a%22%7D&start={}&end={}&step=60",
        now - 120,
        now + 60
    );
    let (s, v) = call(
        &st,
        Request::post("/api/v1/query_range")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::from(body))
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["data"]["resultType"], "matrix");
    let r = &v["data"]["result"][0];
    assert_eq!(r["metric"]["instance"], "x:1");
    assert!(!r["values"].as_array().unwrap().is_empty());
    // format_query
    let (s, v) = get(&st, "/api/v1/format_query?query=sum(up)by(job)").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["data"], "sum by (job) (up)");
}

#[tokio::test]
async fn query_errors_have_prometheus_types() {
    let st = state("qerr").await;
    for (uri, status, kind) in [
        (
            "/api/v1/query?query=sum(",
            StatusCode::BAD_REQUEST,
            "bad_data",
        ),
        ("/api/v1/query", StatusCode::BAD_REQUEST, "bad_data"),
        (
            "/api/v1/query?query=nosuchfn(up)",
            StatusCode::BAD_REQUEST,
            "bad_data",
        ),
        (
            "/api/v1/query?query=up&time=yesterday",
            StatusCode::BAD_REQUEST,
            "bad_data",
        ),
        (
            "/api/v1/query_range?query=up&start=0&end=100000&step=1",
            StatusCode::BAD_REQUEST,
            "bad_data",
        ),
        (
            "/api/v1/query_range?query=up&start=0&end=100&step=0",
            StatusCode::BAD_REQUEST,
            "bad_data",
        ),
        (
            "/api/v1/query_range?query=up%5B5m%5D&start=0&end=100&step=10",
            StatusCode::BAD_REQUEST,
            "bad_data",
        ),
        // Many-to-many matching is an evaluation error.
        (
            "/api/v1/query?query=up%20%2B%20on()%20up",
            StatusCode::UNPROCESSABLE_ENTITY,
            "execution",
        ),
    ] {
        let (s, v) = get(&st, uri).await;
        assert_eq!(s, status, "{uri}: {v}");
        assert_eq!(v["status"], "error", "{uri}");
        assert_eq!(v["errorType"], kind, "{uri}: {v}");
        assert!(!v["error"].as_str().unwrap().is_empty());
    }
    // The server answers normally afterwards.
    let (s, _) = get(&st, "/api/v1/query?query=up").await;
    assert_eq!(s, StatusCode::OK);
}
