//! `meshlens demo` end to end: the real binary with its simulated Bookinfo
//! mesh (Envoy-style Zipkin spans, ratings' OTLP spans, sidecar metrics
//! scraped through the scrape manager). It must answer on its APIs within
//! 60 s; every scenario must visibly change what the topology reports, from
//! spans and from mesh metrics; every PromQL expression of dashboards/ must
//! evaluate against it.

mod common;

use common::{Server, client, temp_dir};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

const FLAGS: &[&str] = &[
    "--rate",
    "40",
    "--derive-interval",
    "1s",
    "--scrape-interval",
    "1s",
    "--service-graph-wait",
    "2s",
];

async fn get_json(s: &Server, path: &str) -> Value {
    let resp = client().get(s.url(path)).send().await.expect("GET");
    let status = resp.status();
    let text = resp.text().await.expect("body");
    assert!(status.is_success(), "GET {path}: {status} {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {path}: {e}: {text}"))
}

async fn promql(s: &Server, q: &str) -> Result<Value, String> {
    let url = format!(
        "{}?{}",
        s.url("/api/v1/query"),
        form_urlencoded::Serializer::new(String::new())
            .append_pair("query", q)
            .finish()
    );
    let resp = client().get(url).send().await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body: Value = resp.json().await.map_err(|e| e.to_string())?;
    if !status.is_success() || body["status"] != "success" {
        return Err(format!("{status}: {body}"));
    }
    Ok(body["data"].clone())
}

/// Switches the scenario; returns the unix second from which its traffic
/// alone is in the window (the switch, plus a margin for in-flight ticks).
async fn switch(s: &Server, scenario: &str) -> f64 {
    let resp = client()
        .post(s.url("/api/demo/scenario"))
        .json(&json!({ "scenario": scenario }))
        .send()
        .await
        .expect("POST scenario");
    assert_eq!(resp.status(), 200, "POST /api/demo/scenario {scenario}");
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["scenario"], scenario);
    body["since"].as_f64().expect("since") / 1000.0 + 2.0
}

/// Edges of the versioned-app graph from `source` since `start`.
async fn edges(s: &Server, source: &str, start: f64) -> BTreeMap<String, Value> {
    let t = get_json(
        s,
        &format!("/api/topology?graph=versionedApp&source={source}&start={start:.3}"),
    )
    .await;
    t["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .map(|e| (e["id"].as_str().expect("id").to_string(), e.clone()))
        .collect()
}

fn rate(e: &BTreeMap<String, Value>, id: &str) -> f64 {
    e.get(id).and_then(|e| e["rate"].as_f64()).unwrap_or(0.0)
}

/// Share of productpage's calls to reviews that went to each version.
fn reviews_shares(e: &BTreeMap<String, Value>) -> [f64; 3] {
    let r = ["v1", "v2", "v3"].map(|v| {
        rate(
            e,
            &format!("default/app/productpage/v1->default/app/reviews/{v}"),
        )
    });
    let total: f64 = r.iter().sum();
    assert!(total > 0.0, "no productpage -> reviews traffic: {e:#?}");
    r.map(|x| x / total)
}

fn has_response(e: &Value, code: &str, flag: &str) -> bool {
    e["responses"].as_array().is_some_and(|rs| {
        rs.iter().any(|r| {
            r["code"] == code
                && r["flags"]
                    .as_str()
                    .is_some_and(|f| f.split(',').any(|x| x == flag))
                && r["requests"].as_f64().unwrap_or(0.0) > 0.0
        })
    })
}

fn edge<'a>(e: &'a BTreeMap<String, Value>, id: &str, what: &str) -> &'a Value {
    e.get(id).unwrap_or_else(|| {
        panic!(
            "{what}: no edge {id}; edges: {:?}",
            e.keys().collect::<Vec<_>>()
        )
    })
}

async fn wait_for<F, Fut>(what: &str, deadline: Instant, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let mut last = String::new();
    while Instant::now() < deadline {
        match check().await {
            Ok(()) => return,
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("{what}: not within the deadline; last: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_answers_within_a_minute_and_every_scenario_shows_in_the_apis() {
    let dir = temp_dir("demo");
    let started = Instant::now();
    let s = Server::start_demo(&dir.join("data"), FLAGS);
    let deadline = started + Duration::from_secs(60);

    // 1. Within 60 s: the web page, Zipkin API (both span paths), Prometheus API (scraped
    //    sidecar metrics and derived series), topology.
    wait_for("the web page", deadline, || async {
        let resp = client()
            .get(s.url("/"))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let ok = resp.status().is_success();
        let text = resp.text().await.map_err(|e| e.to_string())?;
        if ok && text.contains("/ui/js/app.js") {
            Ok(())
        } else {
            Err(text.chars().take(200).collect())
        }
    })
    .await;
    let js = client()
        .get(s.url("/ui/js/app.js"))
        .send()
        .await
        .expect("app.js");
    assert_eq!(js.status(), 200);
    wait_for("Zipkin services", deadline, || async {
        let v = get_json(&s, "/api/v2/services").await;
        let names: Vec<&str> = v
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        // Envoy's `<app>.<namespace>` over Zipkin; ratings' SDK over OTLP.
        for want in [
            "istio-ingressgateway.istio-system",
            "productpage.default",
            "reviews.default",
            "ratings",
            "httpbin.default",
        ] {
            if !names.contains(&want) {
                return Err(format!("{want} not in {names:?}"));
            }
        }
        Ok(())
    })
    .await;
    wait_for("Istio metrics scraped", deadline, || async {
        let d = promql(&s, r#"sum by (reporter) (istio_requests_total{destination_service="reviews.default.svc.cluster.local"})"#).await?;
        let n = d["result"].as_array().map_or(0, Vec::len);
        if n == 2 { Ok(()) } else { Err(format!("want both reporters: {d}")) }
    })
    .await;
    wait_for(
        "topology from spans and from mesh metrics",
        deadline,
        || async {
            for source in ["spans", "mesh"] {
                let e = edges(&s, source, started_unix() - 30.0).await;
                for id in [
                    "istio-system/app/istio-ingressgateway/latest->default/app/productpage/v1",
                    "default/app/productpage/v1->default/app/details/v1",
                    "default/app/reviews/v2->default/app/ratings/v1",
                    "default/app/fortio/latest->default/app/httpbin/v1",
                ] {
                    if rate(&e, id) <= 0.0 {
                        return Err(format!(
                            "{source}: no traffic on {id}: {:?}",
                            e.keys().collect::<Vec<_>>()
                        ));
                    }
                }
            }
            Ok(())
        },
    )
    .await;
    eprintln!("demo answered with data after {:?}", started.elapsed());
    // ratings' SDK spans came over OTLP: its MongoDB calls are a database node.
    wait_for(
        "ratings -> mongodb from OTLP spans",
        deadline + Duration::from_secs(10),
        || async {
            let e = edges(&s, "spans", started_unix() - 60.0).await;
            if rate(&e, "default/app/ratings/v1->virtual/mongodb") > 0.0 {
                Ok(())
            } else {
                Err(format!("{:?}", e.keys()))
            }
        },
    )
    .await;

    // 2. Bad scenario requests: 400 with a message that lists the choices.
    for body in [json!({"scenario": "chaos-monkey"}), json!({})] {
        let resp = client()
            .post(s.url("/api/demo/scenario"))
            .json(&body)
            .send()
            .await
            .expect("POST");
        assert_eq!(resp.status(), 400, "{body}");
        let text = resp.text().await.expect("body");
        assert!(text.contains("fault-abort"), "{text}");
    }
    let resp = client()
        .post(s.url("/api/demo/scenario"))
        .body("{not json")
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status(), 400);

    // 3. Dashboards: every expression evaluates; under the retries scenario
    //    (5xx present) every panel that the demo feeds has data.
    let since = switch(&s, "retries").await;
    wait_secs(since + 6.0).await;
    check_dashboards(&s).await;

    // Retries: details fails 60 % of attempts; some requests exhaust retries.
    let e = edges(&s, "spans", since).await;
    let d = edge(
        &e,
        "default/app/productpage/v1->default/app/details/v1",
        "retries",
    );
    assert!(has_response(d, "503", "URX"), "retries: {d}");
    assert_eq!(d["flags"]["retries"], true, "{d}");
    let m = edges(&s, "mesh", since).await;
    let d = edge(
        &m,
        "default/app/productpage/v1->default/app/details/v1",
        "retries (mesh)",
    );
    assert!(has_response(d, "503", "URX"), "retries (mesh): {d}");
    // The destination sidecars report mutual TLS for every request.
    assert_eq!(d["mtls_share"], 1.0, "{d}");

    // 4. Baseline latency, then the 7 s delay for jason: productpage's p99
    //    climbs past its 2 x 3 s timeouts to reviews.
    let since = switch(&s, "round-robin").await;
    wait_secs(since + 6.0).await;
    let gw = "istio-system/app/istio-ingressgateway/latest->default/app/productpage/v1";
    let base = edges(&s, "spans", since).await;
    let base_p99 = edge(&base, gw, "baseline")["latency_ms"]["p99"]
        .as_f64()
        .expect("p99");
    let [v1, v2, v3] = reviews_shares(&base);
    for x in [v1, v2, v3] {
        assert!(
            (0.25..0.42).contains(&x),
            "round robin shares {v1} {v2} {v3}"
        );
    }
    let since = switch(&s, "fault-delay").await;
    wait_secs(since + 8.0).await;
    let e = edges(&s, "spans", since).await;
    let p99 = edge(&e, gw, "fault-delay")["latency_ms"]["p99"]
        .as_f64()
        .expect("p99");
    assert!(
        base_p99 < 500.0 && p99 > 3000.0,
        "productpage p99 {base_p99} ms -> {p99} ms"
    );
    let m = edges(&s, "mesh", since).await;
    let p99 = edge(&m, gw, "fault-delay (mesh)")["latency_ms"]["p99"]
        .as_f64()
        .expect("p99");
    assert!(p99 > 3000.0, "productpage p99 from mesh metrics {p99} ms");

    // 5. Traffic shifting: 50/50 v1/v3, then 100 % v3.
    let since = switch(&s, "shift-50-v3").await;
    wait_secs(since + 6.0).await;
    for source in ["spans", "mesh"] {
        let [v1, v2, v3] = reviews_shares(&edges(&s, source, since).await);
        assert!(
            (0.35..0.65).contains(&v1) && (0.35..0.65).contains(&v3) && v2 < 0.03,
            "{source}: 50/50 shift gave v1 {v1}, v2 {v2}, v3 {v3}"
        );
    }
    let since = switch(&s, "shift-100-v3").await;
    wait_secs(since + 6.0).await;
    for source in ["spans", "mesh"] {
        let [v1, v2, v3] = reviews_shares(&edges(&s, source, since).await);
        assert!(
            v3 > 0.97,
            "{source}: 100% v3 gave v1 {v1}, v2 {v2}, v3 {v3}"
        );
    }

    // 6. Fault abort: ratings answers jason with 500 FI from reviews-v2's
    //    sidecar; the request never reaches a ratings pod (service node).
    let since = switch(&s, "fault-abort").await;
    wait_secs(since + 7.0).await;
    for source in ["spans", "mesh"] {
        let e = edges(&s, source, since).await;
        let f = edge(
            &e,
            "default/app/reviews/v2->default/service/ratings",
            source,
        );
        assert!(
            f["error_ratio"].as_f64().expect("error_ratio") > 0.99,
            "{source}: {f}"
        );
        assert!(has_response(f, "500", "FI"), "{source}: {f}");
        assert_eq!(f["flags"]["fault_injection"], true, "{source}: {f}");
        assert_eq!(f["health"], "failing", "{source}: {f}");
    }

    // 7. Circuit breaking: fortio's sidecar rejects with 503 UO.
    let since = switch(&s, "circuit-breaking").await;
    wait_secs(since + 7.0).await;
    for source in ["spans", "mesh"] {
        let e = edges(&s, source, since).await;
        let f = edge(
            &e,
            "default/app/fortio/latest->default/service/httpbin",
            source,
        );
        assert!(has_response(f, "503", "UO"), "{source}: {f}");
        assert_eq!(f["flags"]["circuit_breaker"], true, "{source}: {f}");
    }
    let overflow = promql(&s, r#"sum(envoy_cluster_upstream_rq_pending_overflow{cluster_name="outbound|8000||httpbin.default.svc.cluster.local"})"#).await.expect("overflow");
    let v: f64 = overflow["result"][0]["value"][1]
        .as_str()
        .and_then(|x| x.parse().ok())
        .unwrap_or(0.0);
    assert!(v > 0.0, "{overflow}");

    // 8. Request timeout: productpage -> reviews 504 UT after 0.5 s.
    let since = switch(&s, "timeout").await;
    wait_secs(since + 7.0).await;
    for source in ["spans", "mesh"] {
        let e = edges(&s, source, since).await;
        let f = edge(
            &e,
            "default/app/productpage/v1->default/app/reviews/v2",
            source,
        );
        assert!(has_response(f, "504", "UT"), "{source}: {f}");
        assert_eq!(f["flags"]["timeouts"], true, "{source}: {f}");
    }

    // Nothing the simulator sent was refused.
    let st = get_json(&s, "/api/demo/scenario").await;
    assert_eq!(st["spans_refused"], 0, "{st}");
    assert!(st["spans_sent"].as_u64().unwrap_or(0) > 10_000, "{st}");
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}

fn started_unix() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

async fn wait_secs(until_unix: f64) {
    let d = until_unix - started_unix();
    if d > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(d)).await;
    }
}

/// Grafana's variables, with values the demo has: each expression must
/// return data for at least one choice of `$service` / `$workload` (HTTP
/// panels from reviews or details, outbound ones from productpage, TCP
/// panels from mongodb). The traces
/// dashboard's `service` is a span service name; the others' an Istio
/// service FQDN.
fn substitutions(expr: &str, dashboard: &str) -> Vec<String> {
    let choices: &[(&str, &str)] = if dashboard.contains("traces") {
        &[("reviews.default", ""), ("ratings", "")]
    } else {
        &[
            ("reviews.default.svc.cluster.local", "reviews-v2"),
            ("details.default.svc.cluster.local", "details-v1"),
            ("mongodb.default.svc.cluster.local", "mongodb-v1"),
            ("ratings.default.svc.cluster.local", "ratings-v1"),
            ("productpage.default.svc.cluster.local", "productpage-v1"),
        ]
    };
    let mut all = Vec::new();
    for (service, workload) in choices {
        let mut out = expr.to_string();
        for (k, v) in [
            ("__rate_interval", "1m"),
            ("__range", "5m"),
            ("__interval", "15s"),
            ("namespace", "default"),
            ("service", service),
            ("workload", workload),
        ] {
            out = out
                .replace(&format!("${{{k}}}"), v)
                .replace(&format!("[[{k}]]"), v)
                .replace(&format!("${k}"), v);
        }
        if !all.contains(&out) {
            all.push(out);
        }
    }
    all
}

fn collect(v: &Value, exprs: &mut Vec<String>, vars: &mut Vec<String>, in_templating: bool) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr", Value::String(e)) if !e.trim().is_empty() => exprs.push(e.clone()),
                    ("query", Value::String(q)) if in_templating => vars.push(q.clone()),
                    ("query", Value::Object(o)) if in_templating => {
                        if let Some(Value::String(q)) = o.get("query") {
                            vars.push(q.clone());
                        }
                    }
                    ("templating", _) => collect(x, exprs, vars, true),
                    _ => collect(x, exprs, vars, in_templating),
                }
            }
        }
        Value::Array(a) => a
            .iter()
            .for_each(|x| collect(x, exprs, vars, in_templating)),
        _ => {}
    }
}

async fn check_dashboards(s: &Server) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("dashboards/")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "dashboards: {files:?}");
    let (mut n, mut empty, mut errors) = (0, Vec::new(), Vec::new());
    for f in &files {
        let d: Value = serde_json::from_str(&std::fs::read_to_string(f).expect("read"))
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let (mut exprs, mut vars) = (Vec::new(), Vec::new());
        collect(&d, &mut exprs, &mut vars, false);
        let name = f
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        for e in exprs {
            n += 1;
            let mut has_data = false;
            for q in substitutions(&e, &name) {
                match promql(s, &q).await {
                    Err(err) => errors.push(format!("{name}: {q}: {err}")),
                    Ok(d) => has_data |= d["result"].as_array().is_none_or(|r| !r.is_empty()),
                }
            }
            if !has_data {
                empty.push(format!("{name}: {e}"));
            }
        }
        for v in vars {
            // label_values(selector, label) -> /api/v1/series + the label.
            let Some(inner) = v
                .trim()
                .strip_prefix("label_values(")
                .and_then(|x| x.strip_suffix(')'))
            else {
                continue;
            };
            n += 1;
            let (sel, label) = inner.rsplit_once(',').unwrap_or(("", inner));
            let label = label.trim();
            let sel = substitutions(sel.trim(), &name).remove(0);
            let path = if sel.is_empty() {
                format!("/api/v1/label/{label}/values")
            } else {
                format!(
                    "/api/v1/series?{}",
                    form_urlencoded::Serializer::new(String::new())
                        .append_pair("match[]", &sel)
                        .finish()
                )
            };
            let resp = client().get(s.url(&path)).send().await.expect("GET");
            let ok = resp.status().is_success();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            let has = body["data"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x.is_string() || x.get(label).is_some()));
            if !ok {
                errors.push(format!("{name}: variable {v}: {body}"));
            } else if !has {
                empty.push(format!("{name}: variable {v}"));
            }
        }
    }
    assert!(
        errors.is_empty(),
        "dashboard expressions that fail:\n{}",
        errors.join("\n")
    );
    assert!(n >= 30, "only {n} expressions found in dashboards/");
    assert!(
        empty.is_empty(),
        "of {n} dashboard expressions, these return no data from the demo:\n{}",
        empty.join("\n")
    );
    eprintln!("dashboards: {n} expressions and variable queries evaluated, all with data");
}
