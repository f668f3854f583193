//! Router-level tests of the Zipkin receivers (status codes, messages,
//! counters, compression) and a throughput check.

use super::tests::proto_span;
use super::*;
use crate::test_util::{now_us, state, state_with};
use crate::{IngestConfig, metrics};
use axum::http::Request;
use std::io::Write;
use tower::ServiceExt;

fn post(uri: &str, headers: &[(&str, &str)], body: impl Into<Body>) -> Request<Body> {
    let mut b = Request::builder().method("POST").uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(body.into()).unwrap()
}

async fn text(resp: Response) -> String {
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn gz(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn valid_body(n: usize) -> String {
    let spans: Vec<String> = (1..=n)
        .map(|i| {
            format!(
                r#"{{"traceId":"000000000000000a","id":"{i:016x}","timestamp":{},"duration":3}}"#,
                now_us()
            )
        })
        .collect();
    format!("[{}]", spans.join(","))
}

fn received(state: &IngestState, receiver: &'static str) -> f64 {
    state
        .storage
        .telemetry()
        .counter(metrics::SPANS_RECEIVED, &[("receiver", receiver)])
}

#[tokio::test]
async fn router_accepts_json_gzip_chunked_and_proto() {
    let st = state().await;
    let app = router(st.clone());
    let resp = app
        .clone()
        .oneshot(post("/api/v2/spans", &[], valid_body(3)))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert!(text(resp).await.is_empty());
    assert_eq!(received(&st, receiver::ZIPKIN_V2_JSON), 3.0);

    // Envoy style: chunked (no Content-Length) and gzip.
    let zipped = gz(valid_body(2).as_bytes());
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = zipped
        .chunks(7)
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    let body = Body::from_stream(futures::stream::iter(chunks));
    let req = post(
        "/api/v2/spans",
        &[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ],
        body,
    );
    assert_eq!(
        app.clone().oneshot(req).await.unwrap().status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(received(&st, receiver::ZIPKIN_V2_JSON), 5.0);

    use prost::Message;
    let mut span = proto_span();
    span.timestamp = now_us() as u64;
    span.annotations.clear();
    let body = proto3::ListOfSpans { spans: vec![span] }.encode_to_vec();
    let req = post(
        "/api/v2/spans",
        &[("content-type", "application/x-protobuf")],
        body,
    );
    assert_eq!(
        app.clone().oneshot(req).await.unwrap().status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(received(&st, receiver::ZIPKIN_V2_PROTO), 1.0);

    let resp = app
        .clone()
        .oneshot(post("/api/v2/spans", &[], "[]"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let v1 = format!(
        r#"[{{"traceId":"000000000000000a","id":"000000000000000b","timestamp":{},"duration":1}}]"#,
        now_us()
    );
    let resp = app.oneshot(post("/api/v1/spans", &[], v1)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert_eq!(received(&st, receiver::ZIPKIN_V1_JSON), 1.0);
}

#[tokio::test]
async fn router_rejections_have_status_message_and_counters() {
    let st = state_with(IngestConfig {
        max_body_bytes: 4096,
    })
    .await;
    let app = router(st.clone());
    let t = st.storage.telemetry().clone();
    let rejected = |reason: &'static str| {
        t.counter(
            metrics::REQUESTS_REJECTED,
            &[("receiver", receiver::ZIPKIN_V2_JSON), ("reason", reason)],
        )
    };

    let resp = app
        .clone()
        .oneshot(post("/api/v2/spans", &[], "[{"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(text(resp).await.contains("truncated"));
    assert_eq!(rejected("malformed"), 1.0);

    let body = r#"[{"traceId":"abcdef1","id":"000000000000000b"}]"#;
    let resp = app
        .clone()
        .oneshot(post("/api/v2/spans", &[], body))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        text(resp).await.trim(),
        "span[0].traceId: trace id must be 16 or 32 hex characters, got 7"
    );
    assert_eq!(rejected("invalid_span"), 1.0);
    let spans_rejected = t.counter(
        metrics::SPANS_REJECTED,
        &[
            ("receiver", receiver::ZIPKIN_V2_JSON),
            ("reason", "invalid_span"),
        ],
    );
    assert_eq!(spans_rejected, 1.0);

    let resp = app
        .clone()
        .oneshot(post("/api/v2/spans", &[], valid_body(100)))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(rejected("too_large"), 1.0);

    let bomb = gz(&vec![b' '; 1 << 20]);
    let req = post("/api/v2/spans", &[("content-encoding", "gzip")], bomb);
    let resp = app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(text(resp).await.contains("compression bomb"));

    let mut truncated = gz(valid_body(1).as_bytes());
    truncated.truncate(truncated.len() - 10);
    let req = post("/api/v2/spans", &[("content-encoding", "gzip")], truncated);
    let resp = app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(text(resp).await.contains("truncated"));
    assert_eq!(rejected("bad_encoding"), 1.0);

    let req = post("/api/v2/spans", &[("content-encoding", "br")], "[]");
    assert_eq!(
        app.clone().oneshot(req).await.unwrap().status(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    let req = post(
        "/api/v1/spans",
        &[("content-type", "application/x-thrift")],
        "x",
    );
    assert_eq!(
        app.oneshot(req).await.unwrap().status(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
}

#[tokio::test]
async fn router_merges_with_a_get_route_on_the_same_path() {
    let st = state().await;
    let query = Router::new().route("/api/v2/spans", axum::routing::get(|| async { "names" }));
    let app = router(st).merge(query);
    let get = Request::builder()
        .uri("/api/v2/spans?serviceName=x")
        .body(Body::empty())
        .unwrap();
    let resp = app.clone().oneshot(get).await.unwrap();
    assert_eq!(text(resp).await, "names");
    let resp = app.oneshot(post("/api/v2/spans", &[], "[]")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
}

#[test]
fn storage_errors_map_to_retry_later() {
    use meshlens_storage::StorageError;
    let e = IngestError::Storage(StorageError::Backpressure {
        what: "WAL",
        used: 10,
        limit: 5,
        retry_after: std::time::Duration::from_millis(1500),
    });
    assert_eq!(e.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(e.reason(), "backpressure");
    assert_eq!(e.grpc_code(), tonic::Code::ResourceExhausted);
    let resp = pipeline::text_error(&e);
    assert_eq!(resp.headers()[header::RETRY_AFTER], "2");
    let e = IngestError::Storage(StorageError::ShuttingDown);
    assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(e.grpc_code(), tonic::Code::Unavailable);
    assert!(
        pipeline::text_error(&e)
            .headers()
            .contains_key(header::RETRY_AFTER)
    );
}

/// Throughput check (run with optimizations: it prints spans/s):
/// `cargo test -p meshlens-ingest --release -- --ignored decode_throughput --nocapture`
#[test]
#[ignore]
fn decode_throughput() {
    let ts = now_us();
    let spans: Vec<String> = (1..=20_000u64)
        .map(|i| {
            format!(
                r#"{{"traceId":"{i:016x}","parentId":"{p:016x}","id":"{i:016x}","kind":"CLIENT","name":"reviews.default.svc.cluster.local:9080/*","timestamp":{ts},"duration":2207,"localEndpoint":{{"serviceName":"productpage.default","ipv4":"10.244.0.12"}},"remoteEndpoint":{{"serviceName":"reviews","ipv4":"10.244.0.15","port":9080}},"tags":{{"component":"proxy","downstream_cluster":"-","guid:x-request-id":"3b8f8a3e-4d0e-9a2c-8c1e-5f0d3c2b1a09","http.method":"GET","http.protocol":"HTTP/1.1","http.status_code":"200","http.url":"http://reviews:9080/reviews/0","istio.canonical_revision":"v1","istio.canonical_service":"productpage","istio.mesh_id":"cluster.local","istio.namespace":"default","node_id":"sidecar~10.244.0.12~productpage-v1-6b746f74dc-9stfs.default~default.svc.cluster.local","peer.address":"10.244.0.12","request_size":"0","response_flags":"-","response_size":"375","upstream_cluster":"outbound|9080||reviews.default.svc.cluster.local","upstream_cluster.name":"outbound|9080||reviews.default.svc.cluster.local","user_agent":"python-requests/2.31.0"}},"shared":false}}"#,
                p = i + 1_000_000
            )
        })
        .collect();
    let body = format!("[{}]", spans.join(","));
    let start = std::time::Instant::now();
    let rounds = 5;
    for _ in 0..rounds {
        assert_eq!(decode_json_v2(body.as_bytes()).unwrap().len(), 20_000);
    }
    let secs = start.elapsed().as_secs_f64();
    let n = 20_000.0 * rounds as f64;
    let t = std::time::Instant::now();
    for _ in 0..rounds {
        let _: serde::de::IgnoredAny = serde_json::from_str(&body).unwrap();
    }
    eprintln!(
        "baseline (parse only, no allocation): {:.0} spans/s",
        n / t.elapsed().as_secs_f64()
    );
    eprintln!(
        "decode_json_v2: {:.0} spans/s, {:.0} MB/s ({} bytes per span)",
        n / secs,
        body.len() as f64 * rounds as f64 / secs / 1e6,
        body.len() / 20_000
    );
}
