//! Tests of the remote write decoder, snappy handling, header checks and
//! router (status codes, messages, what is stored, counters).

use super::*;
use crate::IngestConfig;
use crate::test_util::{now_us, state, state_with};
use axum::http::Request;
use meshlens_storage::samples::{Matcher, is_stale_nan, stale_nan};
use proptest::prelude::*;
use prost::Message;
use tower::ServiceExt;

fn label(n: &str, v: &str) -> Label {
    Label {
        name: n.as_bytes().to_vec(),
        value: v.as_bytes().to_vec(),
    }
}

fn series(labels: &[(&str, &str)], samples: &[(i64, f64)]) -> TimeSeries {
    TimeSeries {
        labels: labels.iter().map(|(n, v)| label(n, v)).collect(),
        samples: samples
            .iter()
            .map(|&(timestamp, value)| Sample { value, timestamp })
            .collect(),
        exemplars: vec![],
        histograms: vec![],
    }
}

fn request(ts: Vec<TimeSeries>) -> WriteRequest {
    WriteRequest {
        timeseries: ts,
        metadata: vec![],
    }
}

fn snappy(data: &[u8]) -> Vec<u8> {
    snap::raw::Encoder::new().compress_vec(data).unwrap()
}

fn now_ms() -> i64 {
    now_us() / 1000
}

// ------------------------------------------------------------- snappy

#[test]
fn snappy_round_trip_and_empty_message() {
    let body = request(vec![series(&[("__name__", "up")], &[(1, 1.0)])]).encode_to_vec();
    assert_eq!(decompress_snappy(&snappy(&body), 1 << 20).unwrap(), body);
    // An empty WriteRequest compresses to one byte (length 0): valid, no samples.
    let empty = decompress_snappy(&snappy(&[]), 1 << 20).unwrap();
    assert!(empty.is_empty());
    assert_eq!(decode(&empty).unwrap(), SampleBatch::default());
}

#[test]
fn snappy_truncated_corrupt_empty_and_framed_are_clear_errors() {
    let data = b"some label values repeat, some label values repeat".repeat(40);
    let c = snappy(&data);
    let err = decompress_snappy(&c[..c.len() / 2], 1 << 20).unwrap_err();
    assert_eq!(err, BodyError::Truncated { encoding: "snappy" });
    assert!(err.to_string().contains("truncated"), "{err}");
    assert_eq!(err.status(), StatusCode::BAD_REQUEST);

    let err = decompress_snappy(&[], 1 << 20).unwrap_err();
    assert!(err.to_string().contains("body is empty"), "{err}");

    // 0xff.. is not a valid varint header.
    let err = decompress_snappy(&[0xff; 12], 1 << 20).unwrap_err();
    assert!(matches!(err, BodyError::Corrupt { .. }), "{err}");

    let mut framed = Vec::new();
    {
        use std::io::Write;
        let mut w = snap::write::FrameEncoder::new(&mut framed);
        w.write_all(&data).unwrap();
    }
    let err = decompress_snappy(&framed, 1 << 20).unwrap_err();
    assert!(err.to_string().contains("framed (stream) format"), "{err}");
}

#[test]
fn snappy_bomb_is_refused_before_allocating() {
    // A header claiming 4 GiB - 1 followed by garbage: refused on the header.
    let mut claim = vec![0xff, 0xff, 0xff, 0xff, 0x0f];
    claim.extend_from_slice(&[0u8; 16]);
    assert_eq!(
        snap::raw::decompress_len(&claim).unwrap(),
        u32::MAX as usize
    );
    let err = decompress_snappy(&claim, 16 << 20).unwrap_err();
    assert_eq!(
        err,
        BodyError::DecompressedTooLarge {
            encoding: "snappy",
            limit: 16 << 20,
            compressed: claim.len()
        }
    );
    assert_eq!(err.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(err.to_string().contains("compression bomb"), "{err}");

    // A real one: 20 MiB of zeros is ~1 MiB compressed.
    let bomb = snappy(&vec![0u8; 20 << 20]);
    assert!(bomb.len() < 2 << 20);
    let err = decompress_snappy(&bomb, 16 << 20).unwrap_err();
    assert!(
        matches!(err, BodyError::DecompressedTooLarge { .. }),
        "{err}"
    );
    // Exactly at the limit is fine.
    assert_eq!(decompress_snappy(&bomb, 20 << 20).unwrap().len(), 20 << 20);
}

// ------------------------------------------------------------- decoding

#[test]
fn valid_request_decodes_with_nan_inf_and_stale_markers() {
    let req = WriteRequest {
        timeseries: vec![
            series(
                &[("__name__", "up"), ("instance", "a:9090"), ("job", "api")],
                &[(1000, 1.0), (2000, f64::NAN), (3000, stale_nan())],
            ),
            series(
                &[("__name__", "temp"), ("empty", "")],
                &[(1000, f64::INFINITY), (2000, f64::NEG_INFINITY)],
            ),
        ],
        metadata: vec![MetricMetadata {
            r#type: 1,
            metric_family_name: b"http_requests_total".to_vec(),
            help: b"Requests.".to_vec(),
            unit: b"".to_vec(),
        }],
    };
    let b = decode(&req.encode_to_vec()).unwrap();
    assert_eq!(b.series.len(), 2);
    let up = &b.series[0];
    assert_eq!(up.labels.metric_name(), Some("up"));
    assert_eq!(up.labels.get("job"), Some("api"));
    assert_eq!(up.samples[0].value, 1.0);
    assert!(up.samples[1].value.is_nan() && !is_stale_nan(up.samples[1].value));
    assert!(is_stale_nan(up.samples[2].value), "stale marker bits kept");
    assert_eq!(up.samples[2].timestamp_ms, 3000);
    let temp = &b.series[1];
    assert_eq!(temp.labels.len(), 1, "empty label values mean absent");
    assert_eq!(temp.samples[0].value, f64::INFINITY);
    assert_eq!(temp.samples[1].value, f64::NEG_INFINITY);
    assert_eq!(
        b.metadata,
        vec![StoreMetadata {
            metric_family: "http_requests_total".into(),
            kind: MetricType::Counter,
            help: "Requests.".into(),
            unit: String::new(),
        }]
    );
}

#[test]
fn invalid_series_are_located_and_the_rest_kept() {
    let bad_utf8 = TimeSeries {
        labels: vec![
            label("__name__", "x"),
            Label {
                name: b"job".to_vec(),
                value: vec![b'a', 0xc3, 0x28],
            },
        ],
        samples: vec![Sample {
            value: 1.0,
            timestamp: 1,
        }],
        exemplars: vec![],
        histograms: vec![],
    };
    let bad_name_utf8 = TimeSeries {
        labels: vec![
            label("__name__", "x"),
            Label {
                name: vec![0xff],
                value: b"v".to_vec(),
            },
        ],
        ..bad_utf8.clone()
    };
    let cases: Vec<(TimeSeries, &str)> = vec![
        (
            series(&[("", "v"), ("__name__", "x")], &[(1, 1.0)]),
            "labels[0] has an empty name",
        ),
        (
            series(&[("__name__", "x"), ("a", "1"), ("a", "2")], &[(1, 1.0)]),
            "label name \"a\" appears more than once",
        ),
        (
            series(
                &[("__name__", "x"), ("job", "a"), ("instance", "b")],
                &[(1, 1.0)],
            ),
            "labels are not sorted by name: \"instance\" comes after \"job\"",
        ),
        (
            series(&[("job", "a")], &[(1, 1.0)]),
            "has no metric name (label __name__ is missing or empty)",
        ),
        (
            series(&[("__name__", ""), ("job", "a")], &[(1, 1.0)]),
            "has no metric name",
        ),
        (bad_utf8, "labels[1] (\"job\") value is not valid UTF-8"),
        (bad_name_utf8, "labels[1] name is not valid UTF-8"),
        (
            series(&[("__name__", "x"), ("a\u{7}b", "1")], &[(1, 1.0)]),
            "control character",
        ),
    ];
    for (bad, expected) in cases {
        let good = series(&[("__name__", "ok")], &[(5, 2.0), (6, 3.0)]);
        let req = request(vec![
            good,
            bad.clone(),
            series(&[("__name__", "ok2")], &[(5, 1.0)]),
        ]);
        let d = decode_partial(&req.encode_to_vec()).unwrap();
        assert_eq!(d.batch.series.len(), 2, "{expected}");
        assert_eq!(d.batch.sample_count(), 3);
        assert_eq!(d.rejected.count(), 1, "{expected}");
        assert_eq!(d.rejected.by_reason, vec![(reason::INVALID_LABELS, 1)]);
        let msg = d.rejected.describe("samples");
        assert!(
            msg.starts_with("1 samples rejected: timeseries[1] {"),
            "{msg}"
        );
        assert!(msg.contains(expected), "{msg} should contain {expected}");
        // The strict decoder refuses the request.
        let err = decode(&req.encode_to_vec()).unwrap_err();
        assert_eq!(err.reason(), "invalid_sample");
        assert!(err.to_string().contains(expected), "{err}");
    }
}

#[test]
fn many_bad_series_are_summarized() {
    let ts: Vec<TimeSeries> = (0..8)
        .map(|i| series(&[("job", &format!("j{i}"))], &[(1, 1.0), (2, 2.0)]))
        .collect();
    let d = decode_partial(&request(ts).encode_to_vec()).unwrap();
    assert_eq!(d.rejected.count(), 16);
    assert_eq!(d.rejected.problems, 8);
    let msg = d.rejected.describe("samples");
    assert!(msg.contains("timeseries[4]"), "{msg}");
    assert!(!msg.contains("timeseries[5]"), "{msg}");
    assert!(msg.ends_with("(and 3 more problems)"), "{msg}");
}

#[test]
fn native_histograms_refused_exemplars_counted_metadata_checked() {
    let mut ts = series(&[("__name__", "lat")], &[(1, 1.0)]);
    ts.histograms = vec![Histogram { timestamp: 1 }, Histogram { timestamp: 2 }];
    ts.exemplars = vec![Exemplar {
        labels: vec![label("trace_id", "abc")],
        value: 1.0,
        timestamp: 1,
    }];
    let req = WriteRequest {
        timeseries: vec![ts],
        metadata: vec![
            MetricMetadata {
                r#type: 99,
                metric_family_name: b"odd".to_vec(),
                help: vec![],
                unit: vec![],
            },
            MetricMetadata {
                r#type: 2,
                metric_family_name: vec![],
                help: vec![],
                unit: vec![],
            },
        ],
    };
    let d = decode_partial(&req.encode_to_vec()).unwrap();
    assert_eq!(d.batch.sample_count(), 1);
    assert_eq!(d.exemplars_dropped, 1);
    assert_eq!(d.rejected.by_reason, vec![(reason::NATIVE_HISTOGRAM, 2)]);
    assert_eq!(d.rejected.problems, 2);
    let msg = d.rejected.describe("samples");
    assert!(msg.contains("2 native histogram samples refused"), "{msg}");
    assert!(
        msg.contains("metadata[1]: metric_family_name is empty"),
        "{msg}"
    );
    assert_eq!(d.batch.metadata.len(), 1);
    assert_eq!(d.batch.metadata[0].kind, MetricType::Unknown);
}

#[test]
fn bad_protobuf_is_a_decode_error() {
    let err = decode(&[0x0a, 0xff, 0xff, 0xff]).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("request body is not a valid protobuf prometheus.WriteRequest"),
        "{err}"
    );
    assert_eq!(err.reason(), "malformed");
    // A field of the wrong wire type.
    assert!(decode(&[0x08, 0x01]).is_err());
}

#[test]
fn header_checks() {
    let h = |pairs: &[(&str, &str)]| {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    };
    assert!(check_headers(&h(&[])).is_ok());
    assert!(
        check_headers(&h(&[
            ("content-encoding", "snappy"),
            ("content-type", "application/x-protobuf"),
        ]))
        .is_ok()
    );
    assert!(
        check_headers(&h(&[(
            "content-type",
            "application/x-protobuf;proto=prometheus.WriteRequest"
        )]))
        .is_ok()
    );
    let e = check_headers(&h(&[("content-encoding", "gzip")])).unwrap_err();
    assert_eq!(e.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(e.to_string().contains("snappy"), "{e}");
    assert_eq!(e.reason(), "unsupported_encoding");
    let e = check_headers(&h(&[(
        "content-type",
        "application/x-protobuf; proto=io.prometheus.write.v2.Request",
    )]))
    .unwrap_err();
    assert_eq!(e.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(e.to_string().contains("only remote write 1.0"), "{e}");
    let e = check_headers(&h(&[("content-type", "application/json")])).unwrap_err();
    assert!(e.to_string().contains("application/x-protobuf"), "{e}");
    assert_eq!(e.reason(), "unsupported_media_type");
}

// ------------------------------------------------------------- router

fn post(body: impl Into<Body>, headers: &[(&str, &str)]) -> Request<Body> {
    let mut b = Request::builder()
        .method("POST")
        .uri("/api/v1/write")
        .header("content-encoding", "snappy")
        .header("content-type", "application/x-protobuf")
        .header("x-prometheus-remote-write-version", "0.1.0");
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

async fn stored(st: &IngestState, name: &str) -> Vec<(i64, f64)> {
    let now = now_ms();
    st.storage
        .samples()
        .select(&[Matcher::equal(METRIC_NAME, name)], 0, now + 3_600_000)
        .await
        .unwrap()
        .into_iter()
        .flat_map(|s| s.timestamps.into_iter().zip(s.values))
        .collect()
}

fn counter(st: &IngestState, name: &'static str, labels: &[(&'static str, &str)]) -> f64 {
    st.storage.telemetry().counter(name, labels)
}

#[tokio::test]
async fn router_stores_a_good_request_and_answers_204() {
    let st = state().await;
    let app = router(st.clone());
    let t = now_ms();
    let req = request(vec![
        series(
            &[("__name__", "rw_up"), ("job", "api")],
            &[(t - 2000, 1.0), (t - 1000, f64::NAN), (t, stale_nan())],
        ),
        series(&[("__name__", "rw_inf")], &[(t, f64::INFINITY)]),
    ]);
    let body = snappy(&req.encode_to_vec());
    let resp = app.clone().oneshot(post(body, &[])).await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(text(resp).await.is_empty());
    let up = stored(&st, "rw_up").await;
    assert_eq!(up.len(), 3);
    assert_eq!(up[0], (t - 2000, 1.0));
    assert!(up[1].1.is_nan());
    assert!(is_stale_nan(up[2].1));
    assert_eq!(stored(&st, "rw_inf").await, vec![(t, f64::INFINITY)]);
    assert_eq!(
        counter(
            &st,
            metrics::SAMPLES_RECEIVED,
            &[("receiver", REMOTE_WRITE)]
        ),
        4.0
    );

    // No Content-Encoding / Content-Type headers: still snappy 1.0, as Prometheus assumes.
    let req = request(vec![series(&[("__name__", "rw_bare")], &[(t, 7.0)])]);
    let r = Request::builder()
        .method("POST")
        .uri("/api/v1/write")
        .body(Body::from(snappy(&req.encode_to_vec())))
        .unwrap();
    assert_eq!(
        app.oneshot(r).await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(stored(&st, "rw_bare").await, vec![(t, 7.0)]);
}

#[tokio::test]
async fn router_mixed_request_stores_the_good_and_names_the_bad() {
    let st = state().await;
    let app = router(st.clone());
    let t = now_ms();
    let req = request(vec![
        series(&[("__name__", "rw_good"), ("a", "1")], &[(t, 1.0)]),
        series(
            &[("__name__", "rw_bad"), ("z", "1"), ("b", "2")],
            &[(t, 2.0)],
        ),
        series(
            &[("__name__", "rw_dup"), ("a", "1"), ("a", "1")],
            &[(t, 2.0)],
        ),
        series(&[("__name__", "rw_good2")], &[(t, 3.0), (t + 1, 4.0)]),
    ]);
    let resp = app
        .oneshot(post(snappy(&req.encode_to_vec()), &[]))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let msg = text(resp).await;
    assert!(
        msg.starts_with("3 of 5 samples stored; 2 samples rejected"),
        "{msg}"
    );
    assert!(msg.contains("timeseries[1] {__name__=\"rw_bad\""), "{msg}");
    assert!(msg.contains("not sorted"), "{msg}");
    assert!(msg.contains("timeseries[2]"), "{msg}");
    assert!(msg.contains("appears more than once"), "{msg}");
    assert_eq!(stored(&st, "rw_good").await, vec![(t, 1.0)]);
    assert_eq!(stored(&st, "rw_good2").await.len(), 2);
    assert!(stored(&st, "rw_bad").await.is_empty());
    assert_eq!(
        counter(
            &st,
            metrics::SAMPLES_REJECTED,
            &[("receiver", REMOTE_WRITE), ("reason", "invalid_labels")]
        ),
        2.0
    );
    assert_eq!(
        counter(
            &st,
            metrics::REQUESTS_REJECTED,
            &[("receiver", REMOTE_WRITE), ("reason", "rejected_samples")]
        ),
        1.0
    );
}

#[tokio::test]
async fn router_storage_rejections_are_400_with_the_storage_words() {
    let st = state().await;
    let app = router(st.clone());
    let t = now_ms();
    let first = request(vec![series(&[("__name__", "rw_ooo")], &[(t, 1.0)])]);
    let resp = app
        .clone()
        .oneshot(post(snappy(&first.encode_to_vec()), &[]))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    // An hour back is beyond the out-of-order window; 1970 is beyond retention.
    let second = request(vec![
        series(
            &[("__name__", "rw_ooo")],
            &[(t - 3_600_000, 2.0), (t + 1000, 3.0)],
        ),
        series(&[("__name__", "rw_old")], &[(1000, 1.0)]),
    ]);
    let resp = app
        .oneshot(post(snappy(&second.encode_to_vec()), &[]))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let msg = text(resp).await;
    assert!(
        msg.starts_with("1 of 3 samples stored; storage: 2 of 3 samples rejected"),
        "{msg}"
    );
    assert!(msg.contains("out_of_order"), "{msg}");
    assert!(msg.contains("too_old"), "{msg}");
    assert_eq!(stored(&st, "rw_ooo").await, vec![(t, 1.0), (t + 1000, 3.0)]);
    assert_eq!(
        counter(
            &st,
            metrics::SAMPLES_REJECTED,
            &[("receiver", REMOTE_WRITE), ("reason", "out_of_order")]
        ),
        1.0
    );
}

#[tokio::test]
async fn router_bad_bodies_and_headers_are_clear_4xx() {
    let st = state_with(IngestConfig {
        max_body_bytes: 64 * 1024,
    })
    .await;
    let app = router(st.clone());
    let good =
        snappy(&request(vec![series(&[("__name__", "x")], &[(now_ms(), 1.0)])]).encode_to_vec());
    let big_raw = snappy(&vec![7u8; 100 * 1024]); // compresses well: a bomb for this limit
    let incompressible: Vec<u8> = (0..100_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let cases: Vec<(Request<Body>, StatusCode, &str)> = vec![
        (
            post(good[..good.len() - 3].to_vec(), &[]),
            StatusCode::BAD_REQUEST,
            "truncated",
        ),
        (
            post(snappy(b"\x0a\xff\xff\xff"), &[]),
            StatusCode::BAD_REQUEST,
            "not a valid protobuf prometheus.WriteRequest",
        ),
        (
            post(b"definitely not snappy".to_vec(), &[]),
            StatusCode::BAD_REQUEST,
            "snappy",
        ),
        (post(Vec::new(), &[]), StatusCode::BAD_REQUEST, "empty"),
        (
            post(big_raw, &[]),
            StatusCode::PAYLOAD_TOO_LARGE,
            "compression bomb",
        ),
        (
            post(incompressible, &[]),
            StatusCode::PAYLOAD_TOO_LARGE,
            "larger than the limit",
        ),
        (
            post(good.clone(), &[("content-encoding", "gzip")]),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Encoding \"gzip\"",
        ),
        (
            post(
                good.clone(),
                &[(
                    "content-type",
                    "application/x-protobuf;proto=io.prometheus.write.v2.Request",
                )],
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "only remote write 1.0",
        ),
        (
            post(good.clone(), &[("content-type", "text/plain")]),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type",
        ),
    ];
    for (req, status, needle) in cases {
        // `post` sets the defaults first; a later header of the same name wins.
        let mut req = req;
        for name in ["content-encoding", "content-type"] {
            let all: Vec<_> = req.headers().get_all(name).iter().cloned().collect();
            if all.len() > 1 {
                req.headers_mut().insert(name, all[all.len() - 1].clone());
            }
        }
        let resp = app.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), status, "{needle}");
        assert_eq!(
            resp.headers()[header::CONTENT_TYPE],
            "text/plain; charset=utf-8"
        );
        let msg = text(resp).await;
        assert!(msg.contains(needle), "{msg:?} should contain {needle:?}");
    }
    assert_eq!(
        counter(
            &st,
            metrics::REQUESTS_REJECTED,
            &[("receiver", REMOTE_WRITE), ("reason", "too_large")]
        ),
        2.0
    );
    // And the good body still works on the same router.
    let resp = app.oneshot(post(good, &[])).await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
}

#[test]
fn backpressure_is_503_with_retry_after() {
    let e = IngestError::SampleStorage(meshlens_storage::StorageError::Backpressure {
        what: "sample buffer",
        used: 2,
        limit: 1,
        retry_after: std::time::Duration::from_millis(1500),
    });
    let resp = error_response(&e);
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()[header::RETRY_AFTER], "2");
    assert!(e.to_string().starts_with("cannot store samples:"), "{e}");
    let e = IngestError::SampleStorage(meshlens_storage::StorageError::ShuttingDown);
    let resp = error_response(&e);
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(resp.headers().contains_key(header::RETRY_AFTER));
    // Bad data is never "retry later".
    let e = IngestError::SamplesRejected("x".into());
    let resp = error_response(&e);
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(!resp.headers().contains_key(header::RETRY_AFTER));
}

// ------------------------------------------------------------- properties

fn label_name_strategy() -> impl Strategy<Value = String> {
    "[a-z_][a-z0-9_]{0,8}"
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = decode(&bytes);
        let _ = decode_partial(&bytes);
        if let Ok(raw) = decompress_snappy(&bytes, 1 << 16) {
            let _ = decode_partial(&raw);
        }
    }

    #[test]
    fn mutated_requests_never_panic(
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)
    ) {
        let req = request(vec![
            series(&[("__name__", "a"), ("job", "b")], &[(1, 1.0), (2, f64::NAN)]),
            series(&[("__name__", "c")], &[(3, 2.0)]),
        ]);
        let mut bytes = req.encode_to_vec();
        let mut compressed = snappy(&bytes);
        for (i, b) in &flips {
            let n = bytes.len();
            bytes[i % n] ^= b;
            let n = compressed.len();
            compressed[i % n] ^= b;
        }
        let _ = decode_partial(&bytes);
        if let Ok(raw) = decompress_snappy(&compressed, 1 << 16) {
            let _ = decode_partial(&raw);
        }
    }

    #[test]
    fn sorted_unique_series_round_trip(
        names in proptest::collection::btree_set(label_name_strategy(), 0..6),
        values in proptest::collection::vec("[ -~]{1,10}", 6),
        samples in proptest::collection::vec((any::<i64>(), any::<f64>()), 1..5),
    ) {
        let mut pairs: Vec<(String, String)> = names
            .into_iter()
            .filter(|n| n != METRIC_NAME)
            .zip(values)
            .collect();
        pairs.push((METRIC_NAME.to_string(), "m".to_string()));
        pairs.sort();
        let refs: Vec<(&str, &str)> = pairs.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        let req = request(vec![series(&refs, &samples)]);
        let b = decode(&req.encode_to_vec()).unwrap();
        prop_assert_eq!(b.series.len(), 1);
        prop_assert_eq!(b.series[0].labels.len(), pairs.len());
        for (n, v) in &pairs {
            prop_assert_eq!(b.series[0].labels.get(n), Some(v.as_str()));
        }
        prop_assert_eq!(b.series[0].samples.len(), samples.len());
        for (got, want) in b.series[0].samples.iter().zip(&samples) {
            prop_assert_eq!(got.timestamp_ms, want.0);
            // prost's encoder (not ours) writes -0.0 as the default, i.e. not at all.
            let want = if want.1 == 0.0 { 0.0 } else { want.1 };
            prop_assert_eq!(got.value.to_bits(), want.to_bits());
        }
    }
}

// ------------------------------------- in-place decoder against prost

/// Both decoders accept the same bodies and give the same result.
fn same_as_prost(bytes: &[u8]) -> Result<(), TestCaseError> {
    let ours = decode_partial(bytes);
    let reference = decode_partial_prost(bytes);
    match (&ours, &reference) {
        (Ok(a), Ok(b)) => prop_assert!(a.same_as(b), "{a:?} != {b:?}"),
        (Err(a), Err(_)) => prop_assert!(
            a.to_string()
                .starts_with("request body is not a valid protobuf prometheus.WriteRequest: "),
            "{a}"
        ),
        _ => prop_assert!(
            false,
            "decoders disagree on {bytes:02x?}: ours {ours:?}, prost {reference:?}"
        ),
    }
    Ok(())
}

/// Field key bytes.
fn key(tag: u32, wt: u8) -> Vec<u8> {
    let mut out = Vec::new();
    prost::encoding::encode_varint((u64::from(tag) << 3) | u64::from(wt), &mut out);
    out
}

fn len_field(tag: u32, body: &[u8]) -> Vec<u8> {
    let mut out = key(tag, 2);
    prost::encoding::encode_varint(body.len() as u64, &mut out);
    out.extend_from_slice(body);
    out
}

#[test]
fn unknown_fields_and_groups_are_skipped_like_prost() {
    // A label with an unknown 32-bit field and its name sent twice (last wins).
    let mut lab = len_field(1, b"__nameX__");
    lab.extend(key(7, 5));
    lab.extend([1, 2, 3, 4]);
    lab.extend(len_field(1, b"__name__"));
    lab.extend(len_field(2, b"up"));
    // A sample with an unknown varint and a group holding a group.
    let mut smp = key(1, 1);
    smp.extend(2.5f64.to_le_bytes());
    smp.extend(key(9, 0));
    smp.push(0x7f);
    smp.extend(key(10, 3));
    smp.extend(key(11, 3));
    smp.extend(key(12, 0));
    smp.push(1);
    smp.extend(key(11, 4));
    smp.extend(key(10, 4));
    smp.extend(key(2, 0));
    smp.push(42);
    let mut ts = len_field(1, &lab);
    ts.extend(len_field(2, &smp));
    ts.extend(len_field(15, b"anything"));
    let mut body = len_field(1, &ts);
    body.extend(key(2, 1)); // the reserved field 2, as a 64-bit value
    body.extend([0; 8]);
    same_as_prost(&body).unwrap();
    let d = decode_partial(&body).unwrap();
    assert_eq!(d.batch.series.len(), 1);
    assert_eq!(d.batch.series[0].labels.get("__name__"), Some("up"));
    assert_eq!(d.batch.series[0].samples[0].timestamp_ms, 42);
    assert_eq!(d.batch.series[0].samples[0].value, 2.5);

    // Groups nested past prost's recursion limit, an unclosed group, an end
    // group that closes nothing, a group closed by another tag.
    let mut deep = Vec::new();
    for _ in 0..101 {
        deep.extend(key(5, 3));
    }
    for _ in 0..101 {
        deep.extend(key(5, 4));
    }
    let mut shallow = Vec::new();
    for _ in 0..99 {
        shallow.extend(key(5, 3));
    }
    for _ in 0..99 {
        shallow.extend(key(5, 4));
    }
    for bad in [
        deep,
        shallow,
        key(5, 3),
        key(5, 4),
        [key(5, 3), key(6, 4)].concat(),
        key(0, 0),
        vec![0x08],
        vec![0x0a, 0x05, 0x0a],
        len_field(1, &len_field(2, &key(1, 0))),
        len_field(1, &len_field(1, &key(1, 0))),
        len_field(3, &key(2, 0)),
        vec![0xff; 11],
        [key(9, 0), vec![0xff; 9], vec![0x02]].concat(),
        [key(9, 0), vec![0xff; 9], vec![0x01]].concat(),
    ] {
        same_as_prost(&bad).unwrap();
    }
}

#[test]
fn errors_say_where() {
    // The second series' first sample has a value of the wrong wire type.
    let good = request(vec![series(&[("__name__", "a")], &[(1, 1.0)])]).encode_to_vec();
    let bad_sample = [key(1, 0), vec![1]].concat();
    let bad = [good, len_field(1, &len_field(2, &bad_sample))].concat();
    let err = decode_partial(&bad).unwrap_err().to_string();
    assert_eq!(
        err,
        "request body is not a valid protobuf prometheus.WriteRequest: timeseries[1].samples[0]: \
         field value has wire type varint (0), expected 64-bit (1)"
    );
    let err = decode_partial(&[0x0a, 0x10, 0x0a]).unwrap_err().to_string();
    assert!(
        err.ends_with(
            "timeseries[0]: an embedded message of 16 bytes at byte 2 runs past the end of its \
             message (1 bytes left)"
        ),
        "{err}"
    );
}

/// Series the store knows are sent by id, the rest by labels; validation
/// is never skipped for a series whose id is not known.
#[test]
fn known_series_are_sent_by_id() {
    let known_sets: [&[(&str, &str)]; 2] = [
        &[("__name__", "up"), ("job", "a")],
        &[("__name__", "x"), ("le", "1")],
    ];
    let ids: Vec<u64> = known_sets
        .iter()
        .map(|p| Labels::series(p.iter().copied()).unwrap().series_id())
        .collect();
    let req = request(vec![
        series(known_sets[0], &[(1, 1.0), (2, 2.0)]),
        series(&[("__name__", "new")], &[(3, 3.0)]),
        // Known labels plus an empty-valued label: the same series, valid,
        // sent by labels (the id does not see the empty label's name).
        series(&[("__name__", "x"), ("a", ""), ("le", "1")], &[(4, 4.0)]),
        // The known labels with a duplicate empty-valued name: invalid.
        series(
            &[("__name__", "up"), ("job", ""), ("job", "a")],
            &[(5, 5.0)],
        ),
        // An empty name with an empty value: invalid.
        series(&[("", ""), ("__name__", "up"), ("job", "a")], &[(6, 6.0)]),
        // Unsorted: invalid.
        series(&[("job", "a"), ("__name__", "up")], &[(7, 7.0)]),
        // Known but no samples: nothing.
        series(known_sets[1], &[]),
    ]);
    // One label whose name holds the id's separators, spelling the bytes
    // of the known {__name__="up", job="a"}: not UTF-8, so refused.
    let mut alias = series(&[], &[(8, 8.0)]);
    alias.labels = vec![Label {
        name: b"__name__\xffup\xfejob".to_vec(),
        value: b"a".to_vec(),
    }];
    let mut req = req;
    req.timeseries.push(alias);
    let mut asked = Vec::new();
    let d = decode_with_known(&req.encode_to_vec(), |q, out| {
        asked = q.to_vec();
        out.extend(q.iter().map(|id| ids.contains(id)));
    })
    .unwrap();
    // Every series that passed the cheap checks was asked about, once.
    assert_eq!(asked.len(), 3, "{asked:x?}");
    let known: Vec<(u64, Vec<(i64, f64)>)> = d
        .batch
        .known
        .iter()
        .map(|(id, s)| (id, s.iter().map(|s| (s.timestamp_ms, s.value)).collect()))
        .collect();
    assert_eq!(known, vec![(ids[0], vec![(1, 1.0), (2, 2.0)])]);
    assert_eq!(d.batch.series.len(), 2);
    assert_eq!(d.batch.series[0].labels.metric_name(), Some("new"));
    assert_eq!(d.batch.series[1].labels.series_id(), ids[1]);
    assert_eq!(d.rejected.by_reason, vec![(reason::INVALID_LABELS, 4)]);
    let msg = d.rejected.describe("samples");
    for i in [3, 4, 5, 7] {
        assert!(msg.contains(&format!("timeseries[{i}]")), "{msg}");
    }
}

fn raw_name() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"__name__".to_vec()),
        Just(b"".to_vec()),
        Just(vec![0xff, b'a']),
        "[a-c]{1,2}".prop_map(String::into_bytes),
    ]
}

fn raw_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"".to_vec()),
        Just(vec![b'v', 0xc3]),
        "[a-c]{1,3}".prop_map(String::into_bytes),
    ]
}

prop_compose! {
    fn arb_series()(
        labels in proptest::collection::vec((raw_name(), raw_value()), 0..5),
        sort in any::<bool>(),
        samples in proptest::collection::vec(
            (any::<i64>(), prop_oneof![any::<f64>(), Just(f64::NAN), Just(f64::from_bits(0x7ff0_0000_0000_0002))]),
            0..3,
        ),
        exemplars in 0..2usize,
        histograms in proptest::collection::vec(any::<i64>(), 0..2),
    ) -> TimeSeries {
        let mut labels: Vec<Label> =
            labels.into_iter().map(|(name, value)| Label { name, value }).collect();
        if sort {
            labels.sort_by(|a, b| a.name.cmp(&b.name));
        }
        TimeSeries {
            labels,
            samples: samples.into_iter().map(|(timestamp, value)| Sample { value, timestamp }).collect(),
            exemplars: (0..exemplars)
                .map(|_| Exemplar { labels: vec![label("trace_id", "1")], value: 1.0, timestamp: 1 })
                .collect(),
            histograms: histograms.into_iter().map(|timestamp| Histogram { timestamp }).collect(),
        }
    }
}

prop_compose! {
    fn arb_request()(
        timeseries in proptest::collection::vec(arb_series(), 0..6),
        metadata in proptest::collection::vec((any::<i32>(), raw_value(), raw_value()), 0..3),
    ) -> WriteRequest {
        WriteRequest {
            timeseries,
            metadata: metadata
                .into_iter()
                .map(|(t, family, help)| MetricMetadata {
                    r#type: t,
                    metric_family_name: family,
                    help,
                    unit: vec![],
                })
                .collect(),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn in_place_decoder_equals_prost_on_requests(req in arb_request()) {
        same_as_prost(&req.encode_to_vec())?;
    }

    #[test]
    fn in_place_decoder_equals_prost_on_mutated_requests(
        req in arb_request(),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        cut in any::<usize>(),
    ) {
        let mut bytes = req.encode_to_vec();
        if bytes.is_empty() {
            return Ok(());
        }
        for (i, b) in &flips {
            let n = bytes.len();
            bytes[i % n] ^= b;
        }
        same_as_prost(&bytes)?;
        let n = bytes.len();
        same_as_prost(&bytes[..cut % n])?;
    }

    #[test]
    fn in_place_decoder_equals_prost_on_random_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..256)
    ) {
        same_as_prost(&bytes)?;
    }

    /// Naming some valid series as known moves exactly those to `known`,
    /// samples unchanged, and leaves everything else as prost decodes it.
    #[test]
    fn known_series_split_equals_prost(req in arb_request(), pick in any::<u64>()) {
        // Add near-aliases of every valid series: invalid series whose
        // bytes differ only where an id could overlook them.
        let mut req = req;
        let valid = decode_partial_prost(&req.encode_to_vec()).unwrap();
        for s in &valid.batch.series {
            let pairs: Vec<(Vec<u8>, Vec<u8>)> = s
                .labels
                .iter()
                .map(|l| (l.name.as_bytes().to_vec(), l.value.as_bytes().to_vec()))
                .collect();
            let ts = |labels: Vec<(Vec<u8>, Vec<u8>)>| TimeSeries {
                labels: labels.into_iter().map(|(name, value)| Label { name, value }).collect(),
                samples: vec![Sample { value: 9.0, timestamp: 9 }],
                exemplars: vec![],
                histograms: vec![],
            };
            // An empty-valued label whose name is not UTF-8.
            let mut a = pairs.clone();
            a.push((vec![b'~', 0xc3], vec![]));
            // An empty name with an empty value.
            let mut b = pairs.clone();
            b.insert(0, (vec![], vec![]));
            // The first two labels folded into one name holding the separators.
            let mut c = pairs.clone();
            if c.len() >= 2 {
                let (n2, v2) = c.remove(1);
                let (n1, v1) = c.remove(0);
                c.insert(0, ([n1, vec![0xff], v1, vec![0xfe], n2].concat(), v2));
            }
            req.timeseries.extend([ts(a), ts(b), ts(c)]);
        }
        let bytes = req.encode_to_vec();
        let reference = decode_partial_prost(&bytes).unwrap();
        let has_histograms: Vec<bool> = req.timeseries.iter().map(|t| !t.histograms.is_empty()).collect();
        // Valid series (prost kept them) without histograms, some of them "known".
        let mut known_ids = Vec::new();
        for (k, s) in reference.batch.series.iter().enumerate() {
            if pick >> (k % 64) & 1 == 1 {
                known_ids.push(s.labels.series_id());
            }
        }
        let d = decode_with_known(&bytes, |q, out| {
            out.extend(q.iter().map(|id| known_ids.contains(id)));
        })
        .unwrap();
        // Expected: prost's series in order, known ones moved (unless the
        // request sent that series with histograms somewhere: those always
        // go by labels, so compare sample totals only then).
        if has_histograms.iter().any(|&h| h) {
            prop_assert_eq!(d.batch.sample_count(), reference.batch.sample_count());
            prop_assert_eq!(d.rejected, reference.rejected);
            return Ok(());
        }
        // A kept series goes by id when it is known and its labels as sent
        // pass the documented cheap checks; otherwise by labels.
        let cheap_ok = |raw: &[Label]| {
            raw.iter().all(|l| {
                !l.name.is_empty()
                    && !l.value.is_empty()
                    && !l.name.iter().chain(&l.value).any(|&b| b >= 0xfe)
            }) && raw.windows(2).all(|w| w[0].name < w[1].name)
        };
        let mut expected = reference;
        let mut kept = std::mem::take(&mut expected.batch.series).into_iter();
        for ts in &req.timeseries {
            let raw: Vec<(&[u8], &[u8])> =
                ts.labels.iter().map(|l| (l.name.as_slice(), l.value.as_slice())).collect();
            if series_labels(&raw).is_err() || ts.samples.is_empty() {
                continue;
            }
            let s = kept.next().expect("prost kept this series");
            let id = s.labels.series_id();
            if cheap_ok(&ts.labels) && known_ids.contains(&id) {
                expected.batch.known.push(id, &s.samples);
            } else {
                expected.batch.series.push(s);
            }
        }
        prop_assert!(kept.next().is_none());
        prop_assert!(d.same_as(&expected), "{d:?} != {expected:?}");
    }
}
