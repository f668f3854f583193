//! Spans in, topology and Tempo service-graph series out, over real
//! sockets: Envoy-style Zipkin spans of a Bookinfo mesh (shared span ids,
//! Istio tags) plus an OpenTelemetry-style service over OTLP/HTTP JSON; the
//! derived series, `/api/topology?source=spans`, the queries Grafana's
//! Tempo "Service Graph" tab sends, exemplars leading to stored traces, and
//! the per-service RED API.

mod common;

use common::{Server, client, temp_dir, topology_edges};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

struct Ids(u64);
impl Ids {
    fn next(&mut self) -> String {
        // xorshift: distinct, reproducible ids
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        format!("{:016x}", self.0)
    }
}

#[allow(clippy::too_many_arguments)]
fn envoy_span(
    trace: &str,
    id: &str,
    parent: Option<&str>,
    kind: &str,
    app: &str,
    ns: &str,
    version: &str,
    shared: bool,
    code: u16,
    flags: &str,
    dur_us: i64,
) -> Value {
    let mut tags = json!({
        "component": "proxy",
        "node_id": format!("sidecar~10.0.0.1~{app}-{version}.{ns}~{ns}.svc.cluster.local"),
        "http.status_code": code.to_string(),
        "response_flags": flags,
        "istio.canonical_service": app,
        "istio.canonical_revision": version,
        "istio.namespace": ns,
    });
    if code >= 500 {
        tags["error"] = json!("true");
    }
    let mut s = json!({
        "traceId": trace, "id": id, "kind": kind, "name": format!("{app}.{ns}.svc.cluster.local:9080/*"),
        "timestamp": now_us() - dur_us, "duration": dur_us,
        "localEndpoint": {"serviceName": format!("{app}.{ns}")},
        "tags": tags,
    });
    if let Some(p) = parent {
        s["parentId"] = json!(p);
    }
    if shared {
        s["shared"] = json!(true);
    }
    s
}

/// The Bookinfo call tree of one request as Envoy sidecars report it.
/// Returns the spans; `jason` requests get a 500 (FI) from ratings.
fn bookinfo_request(ids: &mut Ids, i: usize, jason: bool) -> Vec<Value> {
    let t = ids.next();
    let (g, d, r, ra) = (ids.next(), ids.next(), ids.next(), ids.next());
    let v = ["v1", "v2", "v3"][i % 3];
    let mut out = vec![
        envoy_span(
            &t,
            &g,
            None,
            "CLIENT",
            "istio-ingressgateway",
            "istio-system",
            "latest",
            false,
            200,
            "-",
            30_000,
        ),
        envoy_span(
            &t,
            &g,
            None,
            "SERVER",
            "productpage",
            "default",
            "v1",
            true,
            200,
            "-",
            28_000,
        ),
        envoy_span(
            &t,
            &d,
            Some(&g),
            "CLIENT",
            "productpage",
            "default",
            "v1",
            false,
            200,
            "-",
            4_000,
        ),
        envoy_span(
            &t,
            &d,
            Some(&g),
            "SERVER",
            "details",
            "default",
            "v1",
            true,
            200,
            "-",
            3_000,
        ),
        envoy_span(
            &t,
            &r,
            Some(&g),
            "CLIENT",
            "productpage",
            "default",
            "v1",
            false,
            200,
            "-",
            15_000,
        ),
        envoy_span(
            &t,
            &r,
            Some(&g),
            "SERVER",
            "reviews",
            "default",
            v,
            true,
            200,
            "-",
            14_000,
        ),
    ];
    if v != "v1" {
        let (code, flags) = if jason { (500, "FI") } else { (200, "-") };
        out.push(envoy_span(
            &t,
            &ra,
            Some(&r),
            "CLIENT",
            "reviews",
            "default",
            v,
            false,
            code,
            "-",
            2_000,
        ));
        out.push(envoy_span(
            &t,
            &ra,
            Some(&r),
            "SERVER",
            "ratings",
            "default",
            "v1",
            true,
            code,
            flags,
            1_000,
        ));
    }
    out
}

/// An OTel SDK service pair over OTLP/HTTP JSON: `frontend` calls `cart`
/// (client span id = server parent id), one in five failing.
fn otlp_pairs(ids: &mut Ids, n: usize) -> Value {
    let now = now_us() * 1000;
    let mut fe = vec![];
    let mut cart = vec![];
    for i in 0..n {
        let t = format!("{}{}", ids.next(), ids.next());
        let (root, c, s) = (ids.next(), ids.next(), ids.next());
        let status = if i % 5 == 0 {
            json!({"code": 2})
        } else {
            json!({})
        };
        fe.push(json!({"traceId": t, "spanId": root, "name": "GET /", "kind": 2,
            "startTimeUnixNano": (now - 9_000_000).to_string(), "endTimeUnixNano": now.to_string()}));
        fe.push(json!({"traceId": t, "spanId": c, "parentSpanId": root, "name": "GET /cart", "kind": 3,
            "startTimeUnixNano": (now - 8_000_000).to_string(), "endTimeUnixNano": (now - 1_000_000).to_string(), "status": status}));
        cart.push(json!({"traceId": t, "spanId": s, "parentSpanId": c, "name": "GET /cart", "kind": 2,
            "startTimeUnixNano": (now - 7_000_000).to_string(), "endTimeUnixNano": (now - 2_000_000).to_string(), "status": status}));
    }
    let rs = |svc: &str, spans: Vec<Value>| {
        json!({"resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": svc}},
            {"key": "service.version", "value": {"stringValue": "1.2.0"}}]},
          "scopeSpans": [{"scope": {"name": "test"}, "spans": spans}]})
    };
    json!({"resourceSpans": [rs("frontend", fe), rs("cart", cart)]})
}

async fn get_json(srv: &Server, path: &str) -> Value {
    let r = client().get(srv.url(path)).send().await.unwrap();
    let status = r.status();
    let body = r.text().await.unwrap();
    assert!(status.is_success(), "GET {path}: {status}: {body}");
    serde_json::from_str(&body).unwrap()
}

async fn promql(srv: &Server, q: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    let v = get_json(srv, &format!("/api/v1/query?query={}", urlencode(q))).await;
    v["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let m: BTreeMap<String, String> = serde_json::from_value(r["metric"].clone()).unwrap();
            (m, r["value"][1].as_str().unwrap().parse().unwrap())
        })
        .collect()
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_become_service_graph_series_topology_and_red() {
    let dir = temp_dir("topology-spans");
    let srv = Server::start(
        &dir,
        &[
            "--no-self-scrape",
            "--derive-interval",
            "1s",
            "--service-graph-wait",
            "2s",
        ],
    );
    let c = client();
    let mut ids = Ids(0x9e3779b97f4a7c15);
    // 30 requests, 6 of them (on reviews v2/v3) from jason: 500 + FI from ratings.
    let mut spans = vec![];
    let mut jason_on_ratings = 0;
    for i in 0..30 {
        let jason = i % 5 == 1;
        if jason && i % 3 != 0 {
            jason_on_ratings += 1;
        }
        spans.extend(bookinfo_request(&mut ids, i, jason));
    }
    // Two batches, the second half first: pairing must not care.
    let (a, b) = spans.split_at(spans.len() / 2);
    for batch in [b, a] {
        let r = c
            .post(srv.url("/api/v2/spans"))
            .json(&batch)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    }
    let r = c
        .post(format!("http://127.0.0.1:{}/v1/traces", srv.otlp_http_port))
        .json(&otlp_pairs(&mut ids, 10))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());

    // Wait for the derived series (tick 1 s, pairing wait 2 s: the root spans are paired at once).
    let want_edges: BTreeMap<(&str, &str), (f64, f64)> = [
        (
            ("istio-ingressgateway.istio-system", "productpage.default"),
            (30.0, 0.0),
        ),
        (("productpage.default", "details.default"), (30.0, 0.0)),
        (("productpage.default", "reviews.default"), (30.0, 0.0)),
        (
            ("reviews.default", "ratings.default"),
            (20.0, jason_on_ratings as f64),
        ),
        (("frontend", "cart"), (10.0, 2.0)),
        (("user", "frontend"), (10.0, 0.0)),
    ]
    .into_iter()
    .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let got = loop {
        let total = promql(
            &srv,
            "sum by (client, server) (traces_service_graph_request_total)",
        )
        .await;
        let failed = promql(
            &srv,
            "sum by (client, server) (traces_service_graph_request_failed_total)",
        )
        .await;
        let got: BTreeMap<(String, String), (f64, f64)> = total
            .iter()
            .map(|(m, v)| {
                let k = (m["client"].clone(), m["server"].clone());
                let f = failed
                    .iter()
                    .find(|(fm, _)| fm["client"] == k.0 && fm["server"] == k.1)
                    .map(|x| x.1)
                    .unwrap_or(f64::NAN);
                (k, (*v, f))
            })
            .collect();
        let as_ref: BTreeMap<(&str, &str), (f64, f64)> = got
            .iter()
            .map(|((a, b), v)| ((a.as_str(), b.as_str()), *v))
            .collect();
        if as_ref == want_edges || Instant::now() > deadline {
            break as_ref
                .into_iter()
                .map(|((a, b), v)| ((a.to_string(), b.to_string()), v))
                .collect::<BTreeMap<_, _>>();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let got_ref: BTreeMap<(&str, &str), (f64, f64)> = got
        .iter()
        .map(|((a, b), v)| ((a.as_str(), b.as_str()), *v))
        .collect();
    assert_eq!(
        got_ref,
        want_edges,
        "derived edges (requests, failed)\n{}",
        srv.log()
    );
    let unpaired = promql(&srv, "sum(traces_service_graph_unpaired_spans_total)").await;
    assert!(
        unpaired.is_empty() || unpaired[0].1 == 0.0,
        "no unpaired halves: {unpaired:?}"
    );

    // Span metrics: server spans of reviews by version.
    let calls = promql(
        &srv,
        r#"sum by (version) (traces_spanmetrics_calls_total{service="reviews.default",span_kind="SPAN_KIND_SERVER"})"#,
    )
    .await;
    let by_version: BTreeMap<String, f64> = calls
        .into_iter()
        .map(|(m, v)| (m["version"].clone(), v))
        .collect();
    assert_eq!(
        by_version,
        [
            ("v1".into(), 10.0),
            ("v2".into(), 10.0),
            ("v3".into(), 10.0)
        ]
        .into_iter()
        .collect()
    );

    // The queries Grafana's Tempo "Service Graph" tab sends.
    for q in [
        "sum by (client, server) (rate(traces_service_graph_request_total[5m]))",
        "sum by (client, server) (rate(traces_service_graph_request_failed_total[5m]))",
        "histogram_quantile(0.9, sum by (le, client, server) (rate(traces_service_graph_request_server_seconds_bucket[5m])))",
        "sum by (client, server) (rate(traces_service_graph_request_server_seconds_sum[5m]))",
    ] {
        let r = promql(&srv, q).await;
        assert!(
            r.iter().any(|(m, v)| m.contains_key("client")
                && m.contains_key("server")
                && v.is_finite()
                && *v > 0.0),
            "{q}: {r:?}"
        );
    }

    // Topology from spans, app graph: exact request counts per edge.
    let t = get_json(&srv, "/api/topology?source=spans&graph=app&window=10m").await;
    let edges = topology_edges(&t);
    let r5 = jason_on_ratings as f64 / 20.0;
    let want: BTreeMap<String, (f64, f64, bool)> = [
        (
            "istio-system/app/istio-ingressgateway->default/app/productpage",
            (30.0, 0.0, false),
        ),
        (
            "default/app/productpage->default/app/details",
            (30.0, 0.0, false),
        ),
        (
            "default/app/productpage->default/app/reviews",
            (30.0, 0.0, false),
        ),
        ("default/app/reviews->default/app/ratings", (20.0, r5, true)),
        ("app/frontend->app/cart", (10.0, 0.2, false)),
        ("unknown->app/frontend", (10.0, 0.0, false)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let close = |a: &BTreeMap<String, (f64, f64, bool)>| {
        a.len() == want.len()
            && a.iter().zip(&want).all(|((ka, va), (kb, vb))| {
                ka == kb && va.0 == vb.0 && (va.1 - vb.1).abs() < 1e-9 && va.2 == vb.2
            })
    };
    assert!(
        close(&edges),
        "topology edges\n got {edges:#?}\nwant {want:#?}"
    );
    // Every edge names the PromQL of its figures. The figures count the
    // stored samples (a series born inside the window counts from 0);
    // PromQL's `rate()` extrapolates to the window's edges, so for these
    // seconds-old counters (which start with a 0 sample) it can only be
    // higher than the counted rate.
    for e in t["edges"].as_array().unwrap() {
        let end = t["end"].as_f64().unwrap();
        for fig in ["rate", "error_ratio", "p50", "p95", "p99", "requests"] {
            let q = e["queries"][fig].as_str().unwrap();
            let v = get_json(
                &srv,
                &format!("/api/v1/query?query={}&time={end}", urlencode(q)),
            )
            .await;
            assert_eq!(
                v["data"]["result"].as_array().unwrap().len(),
                1,
                "{fig}: {q}: {v}"
            );
        }
        let q = e["queries"]["rate"].as_str().unwrap();
        let v = get_json(
            &srv,
            &format!("/api/v1/query?query={}&time={end}", urlencode(q)),
        )
        .await;
        let got: f64 = v["data"]["result"][0]["value"][1]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let want = e["rate"].as_f64().unwrap();
        assert!(
            want > 0.0 && got >= want * (1.0 - 1e-9),
            "{q}: {got} vs {want}"
        );
    }
    // The exact recompute from the stored spans agrees with the derived series.
    let ex = get_json(
        &srv,
        "/api/topology?source=spans&exact=true&graph=app&window=10m",
    )
    .await;
    assert_eq!(ex["exact"], true);
    let exact_edges = topology_edges(&ex);
    assert!(
        close(&exact_edges),
        "exact recompute\n got {exact_edges:#?}\nwant {want:#?}"
    );
    // Exact per-version counts too.
    let exv = get_json(
        &srv,
        "/api/topology?source=spans&exact=true&graph=versioned_app&window=10m",
    )
    .await;
    let derv = get_json(
        &srv,
        "/api/topology?source=spans&graph=versioned_app&window=10m",
    )
    .await;
    let counts = |t: &Value| -> BTreeMap<String, f64> {
        t["edges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["id"].as_str().unwrap().to_string(),
                    e["requests"].as_f64().unwrap(),
                )
            })
            .collect()
    };
    assert_eq!(counts(&exv), counts(&derv), "exact vs derived, versioned");
    let r = c
        .get(srv.url("/api/topology?source=mesh&exact=true"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // The ratings node carries the fault-injection badge and is failing or degraded.
    let ratings = t["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "default/app/ratings")
        .unwrap();
    assert_eq!(ratings["flags"]["fault_injection"], true);
    assert_ne!(ratings["health"], "healthy");

    // Versioned graph: reviews split by version, v1 has no ratings edge.
    let t = get_json(
        &srv,
        "/api/topology?source=spans&graph=versioned_app&window=10m",
    )
    .await;
    let ids: Vec<&str> = t["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    for want in [
        "default/app/productpage/v1->default/app/reviews/v1",
        "default/app/reviews/v2->default/app/ratings/v1",
        "default/app/reviews/v3->default/app/ratings/v1",
    ] {
        assert!(ids.contains(&want), "{want} in {ids:?}");
    }
    assert!(
        !ids.iter()
            .any(|i| i.starts_with("default/app/reviews/v1->")),
        "{ids:?}"
    );

    // Node Graph frames.
    let ng = get_json(
        &srv,
        "/api/topology?source=spans&graph=app&window=10m&format=nodegraph",
    )
    .await;
    for n in ng["nodes"].as_array().unwrap() {
        let arcs: f64 = ["arc__success", "arc__errors", "arc__idle"]
            .iter()
            .map(|k| n[k].as_f64().unwrap())
            .sum();
        assert!((arcs - 1.0).abs() < 1e-9, "arcs sum to 1: {n}");
        assert!(n["title"].is_string() && n["mainstat"].is_number());
    }
    assert!(
        ng["edges"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["source"].is_string() && e["target"].is_string())
    );

    // Exemplars lead to stored traces.
    let ex = get_json(
        &srv,
        &format!(
            "/api/v1/query_exemplars?query={}",
            urlencode(r#"traces_service_graph_request_total{server="ratings.default"}"#)
        ),
    )
    .await;
    let trace_id = ex["data"][0]["exemplars"][0]["labels"]["trace_id"]
        .as_str()
        .unwrap()
        .to_string();
    let trace = get_json(&srv, &format!("/api/v2/trace/{trace_id}")).await;
    assert!(
        trace
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["localEndpoint"]["serviceName"] == "ratings.default"),
        "exemplar trace {trace_id} holds the ratings span"
    );

    // Services and RED.
    let s = get_json(&srv, "/api/services").await;
    let reviews = s["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "reviews")
        .unwrap();
    assert_eq!(reviews["versions"], json!(["v1", "v2", "v3"]));
    let d = get_json(&srv, "/api/services/reviews").await;
    assert_eq!(d["inbound"][0]["name"], "productpage");
    assert_eq!(d["outbound"][0]["name"], "ratings");
    let red = get_json(&srv, "/api/services/ratings/red?window=10m&step=30s").await;
    assert_eq!(red["source"], "spans");
    let errs = red["series"]["error_ratio"].as_array().unwrap();
    let last = errs[0]["values"].as_array().unwrap().last().unwrap()[1]
        .as_f64()
        .unwrap();
    assert!(
        (last - r5).abs() < 1e-9,
        "ratings error ratio {last} vs {r5}"
    );
    // The figure is what the query gives through the Prometheus API.
    let q = red["queries"]["error_ratio"].as_str().unwrap();
    let end = red["end"].as_f64().unwrap();
    let v = get_json(
        &srv,
        &format!("/api/v1/query?query={}&time={end}", urlencode(q)),
    )
    .await;
    let via_api: f64 = v["data"]["result"][0]["value"][1]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((via_api - last).abs() < 1e-9);

    // Bad parameters: a clear 400.
    for bad in [
        "/api/topology?graph=bogus",
        "/api/topology?source=x",
        "/api/topology?window=nope",
        "/api/services/reviews/red?direction=up",
    ] {
        let r = c.get(srv.url(bad)).send().await.unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        let body: Value = r.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().len() > 10, "{bad}: {body}");
    }
    let r = c.get(srv.url("/api/services/nosuch")).send().await.unwrap();
    assert_eq!(r.status(), 404);
}
