//! Pairing and span-metrics cases written from the rules in
//! ../shared/DESIGN.md section 4 (and the module docs): each builds spans,
//! feeds them (possibly across batches and ticks) and checks the series.

use super::*;
use meshlens_storage::model::{AttrValue, Endpoint, UnixNanos};

const T0: i64 = 1_700_000_000_000; // ms

thread_local! {
    /// Feed spans as record batches (`observe_batch_at`) instead of `Span`s.
    static VIA_BATCH: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn observe(d: &Deriver, spans: &[Span], now: i64) {
    if VIA_BATCH.with(|v| v.get()) {
        let batch = meshlens_storage::schema::spans_to_batch(spans).expect("batch");
        d.observe_batch_at(&batch, now);
    } else {
        d.observe_at(spans, now);
    }
}

/// Derivation reads a batch's rows in place ([`SpanColumns`]) as the
/// receivers append them: every scenario below, fed that way, must give
/// the same series.
#[test]
fn every_scenario_gives_the_same_series_from_record_batches() {
    VIA_BATCH.with(|v| v.set(true));
    envoy_shared_spans_pair_by_span_id();
    otel_client_pairs_with_server_whose_parent_it_is();
    uninstrumented_leaf_clients_become_virtual_nodes_after_the_wait();
    missing_root_span_leaves_an_unpaired_server();
    messaging_with_and_without_broker();
    errors_on_either_half_fail_the_call();
    loopback_calls_are_edges_to_self();
    halves_pair_across_batches_in_any_order_within_the_wait();
    late_halves_are_counted_unpaired_not_paired();
    duplicate_reports_count_once();
    sampling_multiplier_scales_counts();
    full_pending_store_drops_and_counts();
    spans_that_ended_long_before_arrival_are_not_derived();
    span_metrics_labels_dimensions_and_buckets();
    responses_carry_code_and_both_halves_flags();
    VIA_BATCH.with(|v| v.set(false));
}

fn tid(n: u64) -> TraceId {
    TraceId::from_u64s(0, n)
}

fn sid(n: u64) -> SpanId {
    SpanId(n.to_be_bytes())
}

fn span(trace: u64, id: u64, parent: Option<u64>, kind: SpanKind, service: &str) -> Span {
    Span {
        trace_id: tid(trace),
        trace_id_64: true,
        span_id: sid(id),
        parent_span_id: parent.map(sid),
        name: "get".into(),
        kind,
        start: Some(UnixNanos::from_millis(T0 - 50)),
        duration_nanos: Some(20_000_000),
        local: Endpoint {
            service_name: Some(service.into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn shared(mut s: Span) -> Span {
    s.shared = true;
    s
}

fn tag(mut s: Span, k: &str, v: &str) -> Span {
    s.attributes.insert(k.into(), AttrValue::Str(v.into()));
    s
}

fn remote(mut s: Span, name: &str) -> Span {
    s.remote.service_name = Some(name.into());
    s
}

fn deriver() -> Arc<Deriver> {
    Deriver::new(
        DeriveConfig {
            wait: Duration::from_secs(10),
            ..Default::default()
        },
        None,
    )
}

/// Series values after a tick: (rendered labels without dims) -> value.
fn tick(d: &Deriver, now: i64) -> Vec<(Labels, f64)> {
    let (batch, _) = d.tick_at(now);
    batch
        .series
        .into_iter()
        .map(|s| {
            (
                s.labels,
                s.samples.last().map(|x| x.value).unwrap_or(f64::NAN),
            )
        })
        .collect()
}

fn value(series: &[(Labels, f64)], name: &str, want: &[(&str, &str)]) -> Option<f64> {
    series
        .iter()
        .find(|(l, _)| {
            l.metric_name() == Some(name) && want.iter().all(|(k, v)| l.get(k).unwrap_or("") == *v)
        })
        .map(|(_, v)| *v)
}

/// (client, server, connection_type) -> requests, failed.
fn edges(series: &[(Labels, f64)]) -> Vec<(String, String, String, f64, f64)> {
    let mut out = vec![];
    for (l, v) in series {
        if l.metric_name() != Some(EDGE_TOTAL) {
            continue;
        }
        let g = |k| l.get(k).unwrap_or("").to_string();
        let failed = value(
            series,
            EDGE_FAILED,
            &[
                ("client", &g("client")),
                ("server", &g("server")),
                ("connection_type", &g("connection_type")),
            ],
        )
        .unwrap_or(f64::NAN);
        out.push((g("client"), g("server"), g("connection_type"), *v, failed));
    }
    out.sort_by(|a, b| a.partial_cmp(b).unwrap());
    out
}

fn e(c: &str, s: &str, conn: &str, n: f64, failed: f64) -> (String, String, String, f64, f64) {
    (c.into(), s.into(), conn.into(), n, failed)
}

#[test]
fn envoy_shared_spans_pair_by_span_id() {
    let d = deriver();
    // gateway client A -> productpage server (shared A) -> client B -> reviews server (shared B)
    observe(
        &d,
        &[
            span(1, 0xA, None, SpanKind::Client, "istio-ingressgateway"),
            shared(span(1, 0xA, None, SpanKind::Server, "productpage.default")),
            span(1, 0xB, Some(0xA), SpanKind::Client, "productpage.default"),
            shared(span(1, 0xB, Some(0xA), SpanKind::Server, "reviews.default")),
        ],
        T0,
    );
    let s = tick(&d, T0 + 1000);
    assert_eq!(
        edges(&s),
        vec![
            e("istio-ingressgateway", "productpage.default", "", 1.0, 0.0),
            e("productpage.default", "reviews.default", "", 1.0, 0.0),
        ]
    );
    assert_eq!(d.state.lock().pending.len(), 0, "all halves paired");
}

#[test]
fn otel_client_pairs_with_server_whose_parent_it_is() {
    let d = deriver();
    observe(
        &d,
        &[
            span(2, 1, None, SpanKind::Server, "frontend"),
            span(2, 2, Some(1), SpanKind::Client, "frontend"),
            span(2, 3, Some(2), SpanKind::Server, "cart"),
        ],
        T0,
    );
    let s = tick(&d, T0 + 1000);
    assert_eq!(
        edges(&s),
        vec![
            e("frontend", "cart", "", 1.0, 0.0),
            e("user", "frontend", "virtual_node", 1.0, 0.0),
        ]
    );
    // Durations: server 20 ms in the 0.1 bucket of both histograms.
    let sb = value(
        &s,
        "traces_service_graph_request_server_seconds_bucket",
        &[("server", "cart"), ("le", "0.1")],
    );
    assert_eq!(sb, Some(1.0));
    let cc = value(
        &s,
        "traces_service_graph_request_client_seconds_count",
        &[("server", "cart")],
    );
    assert_eq!(cc, Some(1.0));
}

#[test]
fn uninstrumented_leaf_clients_become_virtual_nodes_after_the_wait() {
    let d = deriver();
    observe(
        &d,
        &[
            tag(
                span(3, 1, Some(9), SpanKind::Client, "cart"),
                "db.system",
                "redis",
            ),
            tag(
                span(3, 2, Some(9), SpanKind::Client, "cart"),
                "peer.service",
                "payments-api",
            ),
            remote(span(3, 3, Some(9), SpanKind::Client, "cart"), "legacy"),
            tag(
                span(3, 4, Some(9), SpanKind::Client, "reviews.default"),
                "upstream_cluster",
                "outbound|443||api.example.com",
            ),
            span(3, 5, Some(9), SpanKind::Client, "cart"),
        ],
        T0,
    );
    let s = tick(&d, T0 + 5_000);
    assert!(edges(&s).is_empty(), "still waiting for the server halves");
    let s = tick(&d, T0 + 10_000);
    assert_eq!(
        edges(&s),
        vec![
            e("cart", "legacy", "virtual_node", 1.0, 0.0),
            e("cart", "payments-api", "virtual_node", 1.0, 0.0),
            e("cart", "redis", "database", 1.0, 0.0),
            e(
                "reviews.default",
                "api.example.com",
                "virtual_node",
                1.0,
                0.0
            ),
        ]
    );
    assert_eq!(
        value(&s, EDGE_UNPAIRED, &[("client", "cart")]),
        Some(1.0),
        "no peer named"
    );
}

#[test]
fn missing_root_span_leaves_an_unpaired_server() {
    let d = deriver();
    // The server's parent (a client span) never arrives.
    observe(&d, &[span(4, 2, Some(1), SpanKind::Server, "api")], T0);
    let s = tick(&d, T0 + 11_000);
    assert!(edges(&s).is_empty());
    assert_eq!(value(&s, EDGE_UNPAIRED, &[("server", "api")]), Some(1.0));
    // A Zipkin server span that names its caller becomes an edge from it.
    observe(
        &d,
        &[remote(
            span(5, 2, Some(1), SpanKind::Server, "api"),
            "batch-job",
        )],
        T0 + 11_000,
    );
    let s = tick(&d, T0 + 22_000);
    assert_eq!(
        edges(&s),
        vec![e("batch-job", "api", "virtual_node", 1.0, 0.0)]
    );
}

#[test]
fn messaging_with_and_without_broker() {
    let d = deriver();
    observe(
        &d,
        &[
            // producer -> consumer (consumer's parent is the producer span)
            remote(span(6, 1, None, SpanKind::Producer, "orders"), "kafka"),
            remote(span(6, 2, Some(1), SpanKind::Consumer, "billing"), "kafka"),
            // a producer nobody consumed in time: edge to the broker
            remote(span(7, 1, None, SpanKind::Producer, "orders"), "kafka"),
            // a consumer whose producer was not traced: edge from the broker
            remote(span(8, 2, Some(1), SpanKind::Consumer, "audit"), "kafka"),
            // no broker named anywhere, but messaging.system
            tag(
                span(9, 1, None, SpanKind::Producer, "orders"),
                "messaging.system",
                "rabbitmq",
            ),
        ],
        T0,
    );
    let s = tick(&d, T0 + 10_000);
    assert_eq!(
        edges(&s),
        vec![
            e("kafka", "audit", "messaging_system", 1.0, 0.0),
            e("orders", "billing", "messaging_system", 1.0, 0.0),
            e("orders", "kafka", "messaging_system", 1.0, 0.0),
            e("orders", "rabbitmq", "messaging_system", 1.0, 0.0),
        ]
    );
}

#[test]
fn errors_on_either_half_fail_the_call() {
    let d = deriver();
    let mut client_err = span(10, 1, None, SpanKind::Client, "web");
    client_err.status_code = StatusCode::Error;
    let server_500 = tag(
        shared(span(11, 1, None, SpanKind::Server, "api")),
        "http.status_code",
        "503",
    );
    observe(
        &d,
        &[
            client_err,
            span(10, 2, Some(1), SpanKind::Server, "api"),
            span(11, 1, None, SpanKind::Client, "web"),
            server_500,
            tag(span(12, 1, None, SpanKind::Client, "web"), "error", "true"),
            shared(span(12, 1, None, SpanKind::Server, "api")),
            span(13, 1, None, SpanKind::Client, "web"),
            shared(span(13, 1, None, SpanKind::Server, "api")),
        ],
        T0,
    );
    let s = tick(&d, T0 + 1000);
    assert_eq!(edges(&s), vec![e("web", "api", "", 4.0, 3.0)]);
    // Span metrics: the error-tagged client and the 503 server are errors.
    let errs: f64 = s
        .iter()
        .filter(|(l, _)| {
            l.metric_name() == Some(CALLS) && l.get("status_code") == Some("STATUS_CODE_ERROR")
        })
        .map(|(_, v)| v)
        .sum();
    assert_eq!(errs, 3.0);
}

#[test]
fn loopback_calls_are_edges_to_self() {
    let d = deriver();
    observe(
        &d,
        &[
            span(14, 1, None, SpanKind::Client, "svc"),
            span(14, 2, Some(1), SpanKind::Server, "svc"),
        ],
        T0,
    );
    assert_eq!(
        edges(&tick(&d, T0 + 1)),
        vec![e("svc", "svc", "", 1.0, 0.0)]
    );
}

#[test]
fn halves_pair_across_batches_in_any_order_within_the_wait() {
    let d = deriver();
    observe(&d, &[shared(span(15, 7, None, SpanKind::Server, "b"))], T0);
    assert!(edges(&tick(&d, T0 + 3000)).is_empty());
    observe(&d, &[span(15, 7, None, SpanKind::Client, "a")], T0 + 9_000);
    let s = tick(&d, T0 + 9_500);
    assert_eq!(edges(&s), vec![e("a", "b", "", 1.0, 0.0)]);
    assert_eq!(value(&s, EDGE_UNPAIRED, &[]), None);
}

#[test]
fn late_halves_are_counted_unpaired_not_paired() {
    let d = deriver();
    observe(&d, &[span(16, 7, None, SpanKind::Client, "a")], T0);
    let s = tick(&d, T0 + 10_000);
    assert_eq!(value(&s, EDGE_UNPAIRED, &[("client", "a")]), Some(1.0));
    observe(
        &d,
        &[shared(span(16, 7, None, SpanKind::Server, "b"))],
        T0 + 12_000,
    );
    let s = tick(&d, T0 + 30_000);
    assert!(edges(&s).is_empty());
    assert_eq!(value(&s, EDGE_UNPAIRED, &[("server", "b")]), Some(1.0));
}

#[test]
fn duplicate_reports_count_once() {
    let d = deriver();
    let c = span(17, 1, None, SpanKind::Client, "a");
    let sv = shared(span(17, 1, None, SpanKind::Server, "b"));
    observe(&d, &[c.clone(), c.clone()], T0);
    observe(&d, &[sv], T0 + 1);
    assert_eq!(edges(&tick(&d, T0 + 2)), vec![e("a", "b", "", 1.0, 0.0)]);
}

#[test]
fn sampling_multiplier_scales_counts() {
    let d = Deriver::new(
        DeriveConfig {
            sampling: [("sampled-svc".to_string(), 0.01)].into_iter().collect(),
            ..Default::default()
        },
        None,
    );
    let mut c = span(18, 1, None, SpanKind::Client, "a");
    c.trace_state = Some("ot=th:c".into()); // p = 0.25
    observe(
        &d,
        &[c, shared(span(18, 1, None, SpanKind::Server, "b"))],
        T0,
    );
    observe(
        &d,
        &[span(19, 1, None, SpanKind::Server, "sampled-svc")],
        T0,
    );
    let s = tick(&d, T0 + 1);
    assert_eq!(
        value(&s, EDGE_TOTAL, &[("client", "a"), ("server", "b")]),
        Some(4.0)
    );
    assert_eq!(value(&s, CALLS, &[("service", "sampled-svc")]), Some(100.0));
}

#[test]
fn full_pending_store_drops_and_counts() {
    let d = Deriver::new(
        DeriveConfig {
            max_pending: 2,
            ..Default::default()
        },
        None,
    );
    observe(
        &d,
        &[
            span(20, 1, None, SpanKind::Client, "a"),
            span(21, 1, None, SpanKind::Client, "a"),
            span(22, 1, None, SpanKind::Client, "a"),
        ],
        T0,
    );
    let s = tick(&d, T0 + 1);
    assert_eq!(value(&s, EDGE_DROPPED, &[("client", "a")]), Some(1.0));
}

#[test]
fn spans_that_ended_long_before_arrival_are_not_derived() {
    let d = deriver();
    let mut old = span(23, 1, None, SpanKind::Server, "a");
    old.start = Some(UnixNanos::from_millis(T0 - 3_600_000));
    observe(&d, &[old], T0);
    assert!(tick(&d, T0 + 1).is_empty());
}

#[test]
fn span_metrics_labels_dimensions_and_buckets() {
    let d = deriver();
    let s1 = tag(
        tag(
            span(24, 1, None, SpanKind::Server, "reviews.default"),
            "istio.canonical_revision",
            "v2",
        ),
        "istio.namespace",
        "default",
    );
    let mut s2 = s1.clone();
    s2.span_id = sid(2);
    s2.duration_nanos = Some(3_000_000_000);
    observe(&d, &[s1, s2], T0);
    let (batch, exemplars) = d.tick_at(T0 + 1);
    let s: Vec<(Labels, f64)> = batch
        .series
        .iter()
        .map(|w| (w.labels.clone(), w.samples.last().unwrap().value))
        .collect();
    let want = [
        ("service", "reviews.default"),
        ("span_kind", "SPAN_KIND_SERVER"),
        ("status_code", "STATUS_CODE_UNSET"),
        ("span_name", "get"),
        ("version", "v2"),
        ("namespace", "default"),
    ];
    assert_eq!(value(&s, CALLS, &want), Some(2.0));
    let mut b = want.to_vec();
    b.push(("le", "0.032"));
    assert_eq!(
        value(&s, "traces_spanmetrics_latency_bucket", &b),
        Some(1.0)
    );
    b.pop();
    b.push(("le", "4.096"));
    assert_eq!(
        value(&s, "traces_spanmetrics_latency_bucket", &b),
        Some(2.0)
    );
    assert_eq!(
        value(&s, "traces_spanmetrics_latency_sum", &want),
        Some(3.02)
    );
    // First write of a series: a 0 just before, for rate().
    let first = batch
        .series
        .iter()
        .find(|w| w.labels.metric_name() == Some(CALLS))
        .unwrap();
    assert_eq!(first.samples[0].value, 0.0);
    assert!(!batch.metadata.is_empty());
    // Exemplars carry the trace id at its sent width.
    let ex = exemplars
        .iter()
        .find(|(l, _)| l.metric_name() == Some(CALLS))
        .unwrap();
    assert_eq!(
        ex.1.labels[0],
        ("trace_id".to_string(), "0000000000000018".to_string())
    );
}

#[test]
fn responses_carry_code_and_both_halves_flags() {
    let d = deriver();
    observe(
        &d,
        &[
            tag(
                tag(
                    span(25, 1, None, SpanKind::Client, "reviews"),
                    "http.status_code",
                    "500",
                ),
                "response_flags",
                "-",
            ),
            tag(
                tag(
                    shared(span(25, 1, None, SpanKind::Server, "ratings")),
                    "http.status_code",
                    "500",
                ),
                "response_flags",
                "FI",
            ),
            tag(
                tag(
                    span(26, 1, None, SpanKind::Client, "reviews"),
                    "http.status_code",
                    "503",
                ),
                "response_flags",
                "UO",
            ),
        ],
        T0,
    );
    let s = tick(&d, T0 + 10_001);
    let fi = value(
        &s,
        EDGE_RESPONSES,
        &[
            ("client", "reviews"),
            ("server", "ratings"),
            ("response_code", "500"),
            ("response_flags", "FI"),
        ],
    );
    assert_eq!(fi, Some(1.0));
    // The UO call never reached a server: unpaired, no peer => no edge.
    assert_eq!(
        value(&s, EDGE_UNPAIRED, &[("client", "reviews")]),
        Some(1.0)
    );
}

#[test]
fn dimension_flags_parse() {
    assert_eq!(
        Dimension::parse("version=istio.canonical_revision|service.version").unwrap(),
        Dimension {
            label: "version".into(),
            keys: vec!["istio.canonical_revision".into(), "service.version".into()]
        }
    );
    assert_eq!(
        Dimension::parse("http.method").unwrap().label,
        "http_method"
    );
    assert!(Dimension::parse("service=foo").is_err());
    assert!(Dimension::parse("9x=foo").is_err());
}
