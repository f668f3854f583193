//! Tests of the OTLP metrics translation (naming tables, every metric kind),
//! the HTTP router and the gRPC service.

use super::metrics_convert::*;
use super::metrics_grpc::OtlpMetricsService;
use super::*;
use crate::metrics::{self, receiver};
use crate::test_util::{now_us, state};
use crate::{IngestState, otlp_metrics_grpc_service, otlp_metrics_http_router};
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use meshlens_storage::samples::{
    Labels, METRIC_NAME, Matcher, MetricType, SampleBatch, is_stale_nan,
};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::MetricsService;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList, any_value,
};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Histogram,
    HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, Summary,
    SummaryDataPoint, metric::Data, number_data_point, summary_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use proptest::prelude::*;
use prost::Message;
use tower::ServiceExt;

// ---------------------------------------------------------------- naming

#[test]
fn metric_names_follow_prometheus_underscore_escaping_with_suffixes() {
    use NameType::*;
    let cases: &[(&str, &str, NameType, Option<&str>)] = &[
        (
            "http.server.duration",
            "s",
            Histogram,
            Some("http_server_duration_seconds"),
        ),
        (
            "http.server.request.duration",
            "ms",
            Histogram,
            Some("http_server_request_duration_milliseconds"),
        ),
        (
            "system.network.io",
            "By",
            MonotonicCounter,
            Some("system_network_io_bytes_total"),
        ),
        (
            "requests.count",
            "1",
            MonotonicCounter,
            Some("requests_count_total"),
        ),
        ("memory.usage", "By", Gauge, Some("memory_usage_bytes")),
        ("cpu.utilization", "1", Gauge, Some("cpu_utilization_ratio")),
        (
            "cpu.utilization",
            "1",
            NonMonotonicCounter,
            Some("cpu_utilization"),
        ),
        ("ratio.of.things", "1", Gauge, Some("of_things_ratio")),
        (
            "http.requests",
            "{requests}",
            MonotonicCounter,
            Some("http_requests_total"),
        ),
        (
            "throughput",
            "By/s",
            Gauge,
            Some("throughput_bytes_per_second"),
        ),
        ("rate", "{req}/s", Gauge, Some("rate_per_second")),
        ("speed", "m/s", Gauge, Some("speed_meters_per_second")),
        ("events", "1/s", Gauge, Some("events_per_second")),
        ("weird", "s/", Gauge, Some("weird_seconds")),
        ("monthly", "By/mo", Gauge, Some("monthly_bytes_per_month")),
        ("foo_total", "", MonotonicCounter, Some("foo_total")),
        ("total.foo", "", MonotonicCounter, Some("foo_total")),
        ("latency_seconds", "s", Histogram, Some("latency_seconds")),
        ("seconds.latency", "s", Summary, Some("seconds_latency")),
        ("2xx.count", "", Gauge, Some("_2xx_count")),
        ("foo__bar...baz", "", Gauge, Some("foo_bar_baz")),
        ("ns:metric.name", "", Gauge, Some("ns:metric_name")),
        ("queue", "%", Gauge, Some("queue_percent")),
        ("mem", "KiBy", Gauge, Some("mem_kibibytes")),
        ("temp", "Cel", Gauge, Some("temp_celsius")),
        ("x", "custom.unit", Gauge, Some("x_custom_unit")),
        ("x", " s ", Gauge, Some("x_seconds")),
        ("métrique.ñ", "", Gauge, Some("m_trique")),
        ("up", "", Gauge, Some("up")),
        ("...", "", Gauge, None),
        ("", "", Gauge, None),
        ("_", "", Gauge, None),
    ];
    for (name, unit, kind, want) in cases {
        assert_eq!(
            metric_name(name, unit, *kind).as_deref(),
            *want,
            "{name:?} unit {unit:?} {kind:?}"
        );
    }
}

#[test]
fn unit_label_and_float_names() {
    for (unit, want) in [
        ("s", "seconds"),
        ("ms", "milliseconds"),
        ("By/s", "bytes_per_second"),
        ("1", ""),
        ("{requests}", ""),
        ("{req}/s", "per_second"),
        ("%", "percent"),
        ("foo.bar", "foo_bar"),
        ("", ""),
    ] {
        assert_eq!(unit_name(unit), want, "{unit:?}");
    }
    for (key, want) in [
        ("http.method", Some("http_method")),
        ("service.instance.id", Some("service_instance_id")),
        ("123invalid", Some("key_123invalid")),
        ("_private", Some("key_private")),
        ("__reserved__", Some("__reserved__")),
        ("__", Some("__")),
        ("a-b c/d", Some("a_b_c_d")),
        ("ü", Some("key_")),
        ("..", None),
        ("", None),
    ] {
        assert_eq!(label_name(key).as_deref(), want, "{key:?}");
    }
    for (f, want) in [
        (0.005, "0.005"),
        (1.0, "1"),
        (250.0, "250"),
        (2.5e-7, "0.00000025"),
        (1e21, "1000000000000000000000"),
        (f64::INFINITY, "+Inf"),
        (f64::NEG_INFINITY, "-Inf"),
        (-0.5, "-0.5"),
    ] {
        assert_eq!(format_le(f), want, "{f}");
    }
}

fn sv(s: &str) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::StringValue(s.into())),
    }
}

fn kv(k: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

fn skv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(sv(v)),
        ..Default::default()
    }
}

#[test]
fn attribute_values_as_text_like_pdata() {
    use any_value::Value as V;
    let cases: Vec<(V, &str)> = vec![
        (V::StringValue("x".into()), "x"),
        (V::BoolValue(true), "true"),
        (V::IntValue(-42), "-42"),
        (V::DoubleValue(1.0), "1"),
        (V::DoubleValue(0.25), "0.25"),
        (V::DoubleValue(1e21), "1e+21"),
        (V::DoubleValue(1e-7), "1e-7"),
        (V::BytesValue(vec![1, 2, 3]), "AQID"),
        (V::BytesValue(vec![0xff, 0xfe]), "//4="),
        (V::BytesValue(vec![b'a']), "YQ=="),
        (
            V::ArrayValue(ArrayValue {
                values: vec![
                    sv("x"),
                    AnyValue {
                        value: Some(V::IntValue(7)),
                    },
                ],
            }),
            r#"["x",7]"#,
        ),
        (
            V::KvlistValue(KeyValueList {
                values: vec![
                    kv("b", V::BoolValue(false)),
                    skv("a", "q\"uote"),
                    kv("c", V::DoubleValue(1.5)),
                ],
            }),
            r#"{"a":"q\"uote","b":false,"c":1.5}"#,
        ),
    ];
    for (v, want) in cases {
        let v = AnyValue { value: Some(v) };
        assert_eq!(any_value_string(Some(&v)), want);
    }
    assert_eq!(any_value_string(None), "");
}

// ------------------------------------------------------------ conversion

const T0: u64 = 1_700_000_000_123_456_789; // ns; ms = 1_700_000_000_123

fn number(attrs: Vec<KeyValue>, t: u64, v: number_data_point::Value) -> NumberDataPoint {
    NumberDataPoint {
        attributes: attrs,
        time_unix_nano: t,
        value: Some(v),
        ..Default::default()
    }
}

fn metric(name: &str, unit: &str, data: Data) -> Metric {
    Metric {
        name: name.into(),
        description: format!("{name} help"),
        unit: unit.into(),
        data: Some(data),
        ..Default::default()
    }
}

fn cumulative() -> i32 {
    AggregationTemporality::Cumulative as i32
}

fn request(resource: Vec<KeyValue>, metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: resource,
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "io.meshlens.test".into(),
                    version: "1.2.3".into(),
                    ..Default::default()
                }),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn find<'a>(
    b: &'a SampleBatch,
    name: &str,
    extra: &[(&str, &str)],
) -> &'a [meshlens_storage::samples::Sample] {
    b.series
        .iter()
        .find(|s| {
            s.labels.metric_name() == Some(name)
                && extra.iter().all(|(k, v)| s.labels.get(k) == Some(v))
        })
        .map(|s| s.samples.as_slice())
        .unwrap_or_else(|| panic!("no series {name} {extra:?} in {:#?}", b.series))
}

fn labels_of<'a>(b: &'a SampleBatch, name: &str) -> &'a Labels {
    &b.series
        .iter()
        .find(|s| s.labels.metric_name() == Some(name))
        .unwrap()
        .labels
}

fn full_request() -> ExportMetricsServiceRequest {
    use number_data_point::Value::{AsDouble, AsInt};
    let resource = vec![
        skv("service.name", "cart"),
        skv("service.namespace", "shop"),
        skv("service.instance.id", "i-1"),
        skv("host.name", "node-7"),
        kv("k8s.pod.restarts", any_value::Value::IntValue(3)),
    ];
    let mut stale = number(vec![], T0, AsDouble(5.0));
    stale.flags = 1;
    let mut no_value = number(vec![], T0, AsDouble(0.0));
    no_value.value = None;
    let metrics = vec![
        metric(
            "process.memory.usage",
            "By",
            Data::Gauge(Gauge {
                data_points: vec![
                    number(
                        vec![
                            skv("pool.name", "heap"),
                            skv("pool_name", "x"),
                            skv("job", "mine"),
                        ],
                        T0,
                        AsDouble(1024.5),
                    ),
                    stale,
                    no_value,
                ],
            }),
        ),
        metric(
            "http.requests",
            "{requests}",
            Data::Sum(Sum {
                data_points: vec![number(vec![skv("http.method", "GET")], T0, AsInt(42))],
                aggregation_temporality: cumulative(),
                is_monotonic: true,
            }),
        ),
        metric(
            "queue.size",
            "1",
            Data::Sum(Sum {
                data_points: vec![number(vec![], T0, AsInt(-3))],
                aggregation_temporality: cumulative(),
                is_monotonic: false,
            }),
        ),
        metric(
            "delta.requests",
            "",
            Data::Sum(Sum {
                data_points: vec![
                    number(vec![], T0, AsInt(1)),
                    number(vec![], T0 + 1, AsInt(2)),
                ],
                aggregation_temporality: AggregationTemporality::Delta as i32,
                is_monotonic: true,
            }),
        ),
        metric(
            "unspecified.sum",
            "",
            Data::Sum(Sum {
                data_points: vec![number(vec![], T0, AsInt(1))],
                aggregation_temporality: 0,
                is_monotonic: true,
            }),
        ),
        metric(
            "http.server.duration",
            "s",
            Data::Histogram(Histogram {
                data_points: vec![HistogramDataPoint {
                    attributes: vec![skv("http.route", "/cart")],
                    time_unix_nano: T0,
                    count: 6,
                    sum: Some(2.5),
                    bucket_counts: vec![2, 3, 1],
                    explicit_bounds: vec![0.1, 1.0],
                    ..Default::default()
                }],
                aggregation_temporality: cumulative(),
            }),
        ),
        metric(
            "rpc.latency",
            "ms",
            Data::Summary(Summary {
                data_points: vec![SummaryDataPoint {
                    time_unix_nano: T0,
                    count: 10,
                    sum: 55.0,
                    quantile_values: vec![
                        summary_data_point::ValueAtQuantile {
                            quantile: 0.5,
                            value: 4.0,
                        },
                        summary_data_point::ValueAtQuantile {
                            quantile: 0.99,
                            value: 9.5,
                        },
                    ],
                    ..Default::default()
                }],
            }),
        ),
        metric(
            "exp.hist",
            "s",
            Data::ExponentialHistogram(ExponentialHistogram {
                data_points: vec![ExponentialHistogramDataPoint {
                    time_unix_nano: T0,
                    count: 1,
                    ..Default::default()
                }],
                aggregation_temporality: cumulative(),
            }),
        ),
        Metric {
            name: "empty".into(),
            ..Default::default()
        },
    ];
    request(resource, metrics)
}

#[test]
fn every_metric_kind_translates_like_prometheus() {
    let out = convert_metrics_request(full_request());
    let b = &out.batch;
    let t = 1_700_000_000_123i64;

    // Gauge: unit suffix, colliding attributes joined in key order, job and
    // instance from the resource override a `job` attribute, scope labels.
    let mem = labels_of(b, "process_memory_usage_bytes");
    assert_eq!(mem.get("pool_name"), Some("heap;x"));
    assert_eq!(mem.get("job"), Some("shop/cart"));
    assert_eq!(mem.get("instance"), Some("i-1"));
    assert_eq!(mem.get("otel_scope_name"), Some("io.meshlens.test"));
    assert_eq!(mem.get("otel_scope_version"), Some("1.2.3"));
    assert_eq!(
        mem.get("host_name"),
        None,
        "resource attributes go to target_info"
    );
    let s = find(b, "process_memory_usage_bytes", &[("pool_name", "heap;x")]);
    assert_eq!((s[0].timestamp_ms, s[0].value), (t, 1024.5));
    // The flagged point: same series labels without attributes -> stale marker.
    let stale = b
        .series
        .iter()
        .find(|s| {
            s.labels.metric_name() == Some("process_memory_usage_bytes")
                && s.labels.get("pool_name").is_none()
        })
        .unwrap();
    assert!(is_stale_nan(stale.samples[0].value));
    assert_eq!(
        stale.samples.len(),
        1,
        "the point without a value is refused"
    );

    // Sums.
    let s = find(b, "http_requests_total", &[("http_method", "GET")]);
    assert_eq!(s[0].value, 42.0);
    assert_eq!(find(b, "queue_size", &[])[0].value, -3.0);

    // Histogram.
    let route = [("http_route", "/cart")];
    let name = "http_server_duration_seconds";
    assert_eq!(find(b, &format!("{name}_sum"), &route)[0].value, 2.5);
    assert_eq!(find(b, &format!("{name}_count"), &route)[0].value, 6.0);
    let bucket = format!("{name}_bucket");
    assert_eq!(find(b, &bucket, &[("le", "0.1")])[0].value, 2.0);
    assert_eq!(find(b, &bucket, &[("le", "1")])[0].value, 5.0);
    assert_eq!(find(b, &bucket, &[("le", "+Inf")])[0].value, 6.0);

    // Summary.
    assert_eq!(
        find(b, "rpc_latency_milliseconds", &[("quantile", "0.5")])[0].value,
        4.0
    );
    assert_eq!(
        find(b, "rpc_latency_milliseconds", &[("quantile", "0.99")])[0].value,
        9.5
    );
    assert_eq!(find(b, "rpc_latency_milliseconds_sum", &[])[0].value, 55.0);
    assert_eq!(
        find(b, "rpc_latency_milliseconds_count", &[])[0].value,
        10.0
    );

    // target_info: the non-identifying resource attributes, job/instance, value 1.
    let ti = labels_of(b, "target_info");
    assert_eq!(ti.get("host_name"), Some("node-7"));
    assert_eq!(ti.get("k8s_pod_restarts"), Some("3"));
    assert_eq!(ti.get("job"), Some("shop/cart"));
    assert_eq!(ti.get("instance"), Some("i-1"));
    assert_eq!(ti.get("service_name"), None);
    assert_eq!(ti.get("otel_scope_name"), None);
    assert_eq!(find(b, "target_info", &[])[0].value, 1.0);

    // Nothing from refused metrics.
    for s in &b.series {
        let n = s.labels.metric_name().unwrap();
        assert!(
            !n.starts_with("delta") && !n.starts_with("exp") && !n.starts_with("unspecified"),
            "{n}"
        );
    }

    // Metadata.
    let md = |f: &str| b.metadata.iter().find(|m| m.metric_family == f).unwrap();
    assert_eq!(md("process_memory_usage_bytes").kind, MetricType::Gauge);
    assert_eq!(md("process_memory_usage_bytes").unit, "bytes");
    assert_eq!(
        md("process_memory_usage_bytes").help,
        "process.memory.usage help"
    );
    assert_eq!(md("http_requests_total").kind, MetricType::Counter);
    assert_eq!(md("http_requests_total").unit, "");
    assert_eq!(md("queue_size").kind, MetricType::Gauge);
    assert_eq!(
        md("http_server_duration_seconds").kind,
        MetricType::Histogram
    );
    assert_eq!(md("http_server_duration_seconds").unit, "seconds");
    assert_eq!(md("rpc_latency_milliseconds").kind, MetricType::Summary);
    assert!(
        !b.metadata
            .iter()
            .any(|m| m.metric_family.starts_with("delta"))
    );

    // Refusals: 1 point without value, 2 delta, 1 unspecified, 1 exponential,
    // and the metric without data (no points).
    let r = &out.rejected;
    assert_eq!(r.count(), 5, "{r:?}");
    assert_eq!(r.problems, 5);
    let by = |reason: &str| r.by_reason.iter().find(|(x, _)| *x == reason).map(|x| x.1);
    assert_eq!(by(reason::DELTA_TEMPORALITY), Some(2));
    assert_eq!(by(reason::EXPONENTIAL_HISTOGRAM), Some(1));
    assert_eq!(by(reason::INVALID_POINT), Some(2));
    let msg = out.error_message();
    assert!(msg.starts_with("5 data points rejected: "), "{msg}");
    assert!(
        msg.contains(r#"metric "process.memory.usage" (resourceMetrics[0].scopeMetrics[0].metrics[0]) dataPoints[2]: has no value"#),
        "{msg}"
    );
    assert!(msg.contains(r#"metric "delta.requests""#), "{msg}");
    assert!(msg.contains("delta temporality is not supported"), "{msg}");
    assert!(msg.contains("(2 data points refused)"), "{msg}");
    assert!(msg.contains("AGGREGATION_TEMPORALITY_UNSPECIFIED"), "{msg}");
    assert!(
        msg.contains("exponential histograms are not supported yet"),
        "{msg}"
    );
    assert!(
        msg.contains(
            r#"metric "empty" (resourceMetrics[0].scopeMetrics[0].metrics[8]): has no data"#
        ),
        "{msg}"
    );
    assert!(!msg.contains("more problems"), "{msg}");
}

#[test]
fn same_series_points_merge_and_target_info_spans_the_batch() {
    use number_data_point::Value::AsDouble;
    let ten_min = 600_000_000_000u64;
    let req = request(
        vec![skv("service.name", "a"), skv("region", "eu")],
        vec![metric(
            "g",
            "",
            Data::Gauge(Gauge {
                data_points: vec![
                    number(vec![], T0, AsDouble(1.0)),
                    number(vec![], T0 + ten_min, AsDouble(2.0)),
                ],
            }),
        )],
    );
    let out = convert_metrics_request(req);
    let g = find(&out.batch, "g", &[]);
    assert_eq!(g.len(), 2);
    assert_eq!(g[1].timestamp_ms - g[0].timestamp_ms, 600_000);
    let ti: Vec<i64> = find(&out.batch, "target_info", &[])
        .iter()
        .map(|s| s.timestamp_ms)
        .collect();
    let t = 1_700_000_000_123i64;
    assert_eq!(
        ti,
        vec![t, t + 150_000, t + 300_000, t + 450_000, t + 600_000]
    );
    assert!(out.rejected.is_empty());

    // Only identifying attributes: no target_info. No service.name: no job.
    let req = request(
        vec![skv("service.instance.id", "x")],
        vec![metric(
            "g",
            "",
            Data::Gauge(Gauge {
                data_points: vec![number(vec![], T0, AsDouble(1.0))],
            }),
        )],
    );
    let out = convert_metrics_request(req);
    assert_eq!(out.batch.series.len(), 1);
    assert_eq!(out.batch.series[0].labels.get("instance"), Some("x"));
    assert_eq!(out.batch.series[0].labels.get("job"), None);
}

#[test]
fn bad_attribute_keys_refuse_the_point() {
    use number_data_point::Value::AsDouble;
    let req = request(
        vec![],
        vec![metric(
            "g",
            "",
            Data::Gauge(Gauge {
                data_points: vec![
                    number(vec![skv("..", "x")], T0, AsDouble(1.0)),
                    number(vec![skv("ok", "x")], T0, AsDouble(1.0)),
                ],
            }),
        )],
    );
    let out = convert_metrics_request(req);
    assert_eq!(out.batch.sample_count(), 1);
    assert_eq!(out.rejected.count(), 1);
    assert!(
        out.error_message()
            .contains("dataPoints[0]: attribute \"..\" does not normalize to a valid label name"),
        "{}",
        out.error_message()
    );
}

const SPEC_JSON: &str = r#"{"resourceMetrics":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"my.service"}}]},
"scopeMetrics":[{"scope":{"name":"my.library","version":"1.0.0"},"metrics":[
{"name":"my.counter","unit":"1","description":"I am a Counter","sum":{"aggregationTemporality":2,"isMonotonic":true,
  "dataPoints":[{"asDouble":5,"startTimeUnixNano":"1544712660300000000","timeUnixNano":"TIME","attributes":[{"key":"my.counter.attr","value":{"stringValue":"some value"}}]}]}},
{"name":"my.gauge","unit":"1","description":"I am a Gauge","gauge":{"dataPoints":[{"asInt":"10","timeUnixNano":"TIME"}]}},
{"name":"my.histogram","unit":"1","description":"I am a Histogram","histogram":{"aggregationTemporality":2,
  "dataPoints":[{"startTimeUnixNano":"1544712660300000000","timeUnixNano":"TIME","count":"2","sum":2,"bucketCounts":["1","1"],"explicitBounds":[1],"min":0,"max":2}]}}
]}]}]}"#;

#[test]
fn otlp_json_decodes() {
    let json = SPEC_JSON.replace("TIME", "1544712660300000000");
    let out = decode_otlp_metrics_json(json.as_bytes()).unwrap();
    assert!(out.rejected.is_empty(), "{}", out.error_message());
    let b = &out.batch;
    let c = find(b, "my_counter_total", &[("my_counter_attr", "some value")]);
    assert_eq!((c[0].timestamp_ms, c[0].value), (1_544_712_660_300, 5.0));
    assert_eq!(
        labels_of(b, "my_counter_total").get("job"),
        Some("my.service")
    );
    assert_eq!(find(b, "my_gauge_ratio", &[])[0].value, 10.0);
    assert_eq!(find(b, "my_histogram_bucket", &[("le", "1")])[0].value, 1.0);
    assert_eq!(
        find(b, "my_histogram_bucket", &[("le", "+Inf")])[0].value,
        2.0
    );
    // No target_info: service.name is the only resource attribute.
    assert!(
        b.series
            .iter()
            .all(|s| s.labels.metric_name() != Some("target_info"))
    );

    let e = decode_otlp_metrics_json(br#"{"resourceMetrics":["#).unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");
    let e = decode_otlp_metrics_proto(&[0xff, 0xff]).unwrap_err();
    assert!(e.to_string().contains("ExportMetricsServiceRequest"), "{e}");
    assert!(
        decode_otlp_metrics_json(b"{}")
            .unwrap()
            .batch
            .series
            .is_empty()
    );
}

// ------------------------------------------------------------ HTTP, gRPC

fn now_ns() -> u64 {
    now_us() as u64 * 1000
}

fn post(ct: &str, body: impl Into<Body>) -> Request<Body> {
    Request::builder()
        .method("POST")
        .uri("/v1/metrics")
        .header(header::CONTENT_TYPE, ct)
        .body(body.into())
        .unwrap()
}

async fn bytes(resp: axum::response::Response) -> Vec<u8> {
    axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap()
        .to_vec()
}

async fn stored(st: &IngestState, name: &str) -> Vec<(i64, f64)> {
    let end = now_us() / 1000 + 3_600_000;
    st.storage
        .samples()
        .select(&[Matcher::equal(METRIC_NAME, name)], 0, end)
        .await
        .unwrap()
        .into_iter()
        .flat_map(|s| s.timestamps.into_iter().zip(s.values))
        .collect()
}

fn received(st: &IngestState, r: &'static str) -> f64 {
    st.storage
        .telemetry()
        .counter(metrics::SAMPLES_RECEIVED, &[("receiver", r)])
}

fn gauge_req(name: &str, t: u64, v: f64) -> ExportMetricsServiceRequest {
    request(
        vec![skv("service.name", "svc")],
        vec![metric(
            name,
            "",
            Data::Gauge(Gauge {
                data_points: vec![number(vec![], t, number_data_point::Value::AsDouble(v))],
            }),
        )],
    )
}

#[tokio::test]
async fn http_protobuf_and_json_answer_in_kind() {
    let st = state().await;
    let app = otlp_metrics_http_router(st.clone());
    let t = now_ns();
    let mut req = gauge_req("http.proto.gauge", t, 1.5);
    req.resource_metrics[0].scope_metrics[0]
        .metrics
        .push(metric(
            "delta",
            "",
            Data::Sum(Sum {
                data_points: vec![number(vec![], t, number_data_point::Value::AsInt(1))],
                aggregation_temporality: AggregationTemporality::Delta as i32,
                is_monotonic: true,
            }),
        ));
    let resp = app
        .clone()
        .oneshot(post("application/x-protobuf", req.encode_to_vec()))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()[header::CONTENT_TYPE],
        "application/x-protobuf"
    );
    let r = ExportMetricsServiceResponse::decode(bytes(resp).await.as_slice()).unwrap();
    let ps = r.partial_success.unwrap();
    assert_eq!(ps.rejected_data_points, 1);
    assert!(
        ps.error_message.contains("delta temporality"),
        "{}",
        ps.error_message
    );
    let ms = (t / 1_000_000) as i64;
    assert_eq!(stored(&st, "http_proto_gauge").await, vec![(ms, 1.5)]);
    assert_eq!(received(&st, receiver::OTLP_METRICS_HTTP_PROTO), 1.0);
    let t_ = st.storage.telemetry();
    assert_eq!(
        t_.counter(
            metrics::SAMPLES_REJECTED,
            &[
                ("receiver", receiver::OTLP_METRICS_HTTP_PROTO),
                ("reason", "delta_temporality")
            ]
        ),
        1.0
    );

    let json = SPEC_JSON.replace("TIME", &t.to_string());
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, json.as_bytes()).unwrap();
    let mut req = post("application/json; charset=utf-8", gz.finish().unwrap());
    req.headers_mut()
        .insert(header::CONTENT_ENCODING, "gzip".parse().unwrap());
    let resp = app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
    let v: serde_json::Value = serde_json::from_slice(&bytes(resp).await).unwrap();
    assert!(v.get("partialSuccess").is_none_or(|p| p.is_null()), "{v}");
    assert_eq!(stored(&st, "my_counter_total").await, vec![(ms, 5.0)]);
    // counter 1 + gauge 1 + histogram (sum, count, 2 buckets) 4
    assert_eq!(received(&st, receiver::OTLP_METRICS_HTTP_JSON), 6.0);
}

#[tokio::test]
async fn http_errors_are_rpc_status_and_415() {
    let st = state().await;
    let app = otlp_metrics_http_router(st.clone());
    let resp = app
        .clone()
        .oneshot(post("application/json", "{\"resourceMetrics\":"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let v: serde_json::Value = serde_json::from_slice(&bytes(resp).await).unwrap();
    assert_eq!(v["code"], 3);
    assert!(v["message"].as_str().unwrap().contains("truncated"), "{v}");

    let resp = app
        .clone()
        .oneshot(post("application/x-protobuf", vec![0xffu8, 0xff]))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let s = RpcStatus::decode(bytes(resp).await.as_slice()).unwrap();
    assert_eq!(s.code, 3);
    assert!(
        s.message
            .contains("not a valid protobuf ExportMetricsServiceRequest"),
        "{}",
        s.message
    );

    let resp = app.clone().oneshot(post("text/plain", "x")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let n = st.storage.telemetry().counter(
        metrics::REQUESTS_REJECTED,
        &[
            ("receiver", receiver::OTLP_METRICS_HTTP_PROTO),
            ("reason", "unsupported_media_type"),
        ],
    );
    assert_eq!(n, 1.0);
}

#[tokio::test]
async fn grpc_export_reports_conversion_and_storage_refusals() {
    let st = state().await;
    let _server = otlp_metrics_grpc_service(st.clone());
    let svc = OtlpMetricsService::new(st.clone());
    let t = now_ns();
    let ok = svc
        .export(tonic::Request::new(gauge_req("grpc.gauge", t, 1.0)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.partial_success, None);
    let ms = (t / 1_000_000) as i64;
    assert_eq!(stored(&st, "grpc_gauge").await, vec![(ms, 1.0)]);
    assert_eq!(received(&st, receiver::OTLP_METRICS_GRPC), 1.0);

    // An hour back is out of order for that series now; the exponential
    // histogram is refused by the conversion.
    let mut req = gauge_req("grpc.gauge", t - 3_600_000_000_000, 2.0);
    req.resource_metrics[0].scope_metrics[0]
        .metrics
        .push(metric(
            "exp",
            "",
            Data::ExponentialHistogram(ExponentialHistogram {
                data_points: vec![Default::default(), Default::default()],
                aggregation_temporality: cumulative(),
            }),
        ));
    let resp = svc
        .export(tonic::Request::new(req))
        .await
        .unwrap()
        .into_inner();
    let ps = resp.partial_success.unwrap();
    assert_eq!(ps.rejected_data_points, 3);
    assert!(
        ps.error_message.contains("exponential histograms"),
        "{}",
        ps.error_message
    );
    assert!(
        ps.error_message
            .contains("storage: 1 of 1 samples rejected (1 out_of_order)"),
        "{}",
        ps.error_message
    );
    assert_eq!(stored(&st, "grpc_gauge").await, vec![(ms, 1.0)]);
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = decode_otlp_metrics_proto(&bytes);
        let _ = decode_otlp_metrics_json(&bytes);
    }

    #[test]
    fn mutated_requests_never_panic(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let mut bytes = full_request().encode_to_vec();
        for (i, b) in &flips {
            let n = bytes.len();
            bytes[i % n] ^= b;
        }
        let _ = decode_otlp_metrics_proto(&bytes);
    }

    #[test]
    fn any_name_and_unit_give_a_valid_name_or_none(name in "\\PC{0,20}", unit in "\\PC{0,8}") {
        for kind in [NameType::Gauge, NameType::MonotonicCounter, NameType::Histogram] {
            if let Some(n) = metric_name(&name, &unit, kind) {
                prop_assert!(!n.is_empty());
                prop_assert!(n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'), "{}", n);
                prop_assert!(!n.starts_with(|c: char| c.is_ascii_digit()), "{}", n);
            }
        }
        if let Some(l) = label_name(&name) {
            prop_assert!(l.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{}", l);
            prop_assert!(!l.starts_with(|c: char| c.is_ascii_digit()), "{}", l);
        }
    }
}
