//! Real Zipkin traces (../shared/conformance/zipkin/traces) posted to a real
//! meshlens and read back through the Zipkin v2 API.
#![allow(clippy::type_complexity)]

mod common;

use common::{Server, client, shared_dir, temp_dir};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// Drops what Zipkin itself treats as absent (empty objects/lists, false flags).
fn normalize(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| match v {
                    Value::Object(o) => !o.is_empty(),
                    Value::Array(a) => !a.is_empty(),
                    Value::Bool(b) => *b,
                    Value::Null => false,
                    _ => true,
                })
                .map(|(k, v)| (k.clone(), normalize(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(normalize).collect()),
        _ => v.clone(),
    }
}

fn sorted(spans: &[Value]) -> Vec<String> {
    let mut v: Vec<String> = spans.iter().map(|s| normalize(s).to_string()).collect();
    v.sort();
    v
}

fn load_files() -> Option<Vec<(String, Vec<Value>)>> {
    let Some(shared) = shared_dir() else {
        eprintln!(
            "SKIPPED: ../shared/conformance/zipkin is absent; the Zipkin conformance test did not run"
        );
        return None;
    };
    let dir = shared.join("conformance/zipkin/traces");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("traces dir") {
        let path = entry.expect("entry").path();
        let v: Value = serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
        let spans = match v {
            Value::Array(a) => a,
            obj => vec![obj],
        };
        out.push((
            path.file_name().unwrap().to_string_lossy().to_string(),
            spans,
        ));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Some(out)
}

fn ts(s: &Value) -> Option<i64> {
    s.get("timestamp").and_then(Value::as_i64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_traces_round_trip_and_are_found() {
    let Some(files) = load_files() else { return };
    let dir = temp_dir("zipkin-conformance");
    let mut server = Server::start(&dir.join("data"), &[]);
    let http = client();

    let mut by_trace: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (name, spans) in &files {
        let r = http
            .post(server.url("/api/v2/spans"))
            .json(spans)
            .send()
            .await
            .expect("post");
        assert_eq!(
            r.status().as_u16(),
            202,
            "{name}: {}",
            r.text().await.unwrap_or_default()
        );
        for s in spans {
            by_trace
                .entry(s["traceId"].as_str().expect("traceId").to_string())
                .or_default()
                .push(s.clone());
        }
    }

    let check = |server: &Server| {
        let http = http.clone();
        let by_trace = by_trace.clone();
        let files = files.clone();
        let base = server.url("");
        async move {
            let mut checked = 0;
            for (id, expected) in &by_trace {
                let r = http
                    .get(format!("{base}/api/v2/trace/{id}"))
                    .send()
                    .await
                    .expect("get");
                assert_eq!(r.status().as_u16(), 200, "trace {id}");
                let got: Vec<Value> = r.json().await.expect("json");
                assert_eq!(
                    sorted(&got),
                    sorted(expected),
                    "trace {id} reads back as posted"
                );
                checked += 1;

                // Found by a search on each of its services.
                let max_ts = expected.iter().filter_map(ts).max().unwrap_or(0);
                let min_ts = expected.iter().filter_map(ts).min().unwrap_or(0);
                let services: BTreeSet<&str> = expected
                    .iter()
                    .filter_map(|s| {
                        s.pointer("/localEndpoint/serviceName")
                            .and_then(Value::as_str)
                    })
                    .collect();
                for svc in &services {
                    let url = format!(
                        "{base}/api/v2/traces?serviceName={}&endTs={}&lookback={}&limit=100",
                        urlencode(svc),
                        max_ts / 1000 + 1,
                        (max_ts - min_ts) / 1000 + 10
                    );
                    let found: Vec<Vec<Value>> = http
                        .get(url)
                        .send()
                        .await
                        .expect("search")
                        .json()
                        .await
                        .expect("json");
                    assert!(
                        found
                            .iter()
                            .any(|t| t.iter().any(|s| s["traceId"] == id.as_str())),
                        "trace {id} found by serviceName={svc}"
                    );
                    let names: Vec<String> = http
                        .get(format!(
                            "{base}/api/v2/spans?serviceName={}",
                            urlencode(svc)
                        ))
                        .send()
                        .await
                        .expect("spans")
                        .json()
                        .await
                        .expect("json");
                    for s in expected.iter().filter(|s| {
                        s.pointer("/localEndpoint/serviceName")
                            .and_then(Value::as_str)
                            == Some(svc)
                    }) {
                        if let Some(n) = s.get("name").and_then(Value::as_str) {
                            assert!(
                                names.iter().any(|x| x == n),
                                "span name {n} listed for {svc}"
                            );
                        }
                    }
                }
            }
            let services: Vec<String> = http
                .get(format!("{base}/api/v2/services"))
                .send()
                .await
                .expect("services")
                .json()
                .await
                .expect("json");
            for (_, spans) in &files {
                for s in spans {
                    if let Some(svc) = s
                        .pointer("/localEndpoint/serviceName")
                        .and_then(Value::as_str)
                    {
                        assert!(services.iter().any(|x| x == svc), "service {svc} listed");
                    }
                }
            }
            checked
        }
    };
    assert_eq!(check(&server).await, by_trace.len());

    // Durable and identical after a clean restart (buffer flushed to Parquet).
    server.restart();
    assert_eq!(check(&server).await, by_trace.len());

    // Dependencies, derived by hand from Zipkin's linker rules:
    // skew.json: root servicea SERVER has no remote (no link); the servicea
    //   CLIENT has a child (its shared server) so it is skipped; the shared
    //   serviceb SERVER takes its parent from the nearest remote ancestor
    //   (the servicea client): servicea -> serviceb once. The local span
    //   "async" has no kind and no remote: skipped.
    // messaging.json: PRODUCER frontend -> rabbitmq, CONSUMER
    //   rabbitmq -> backend; the root server and the local span: nothing.
    // simple-db-p6.json: four leaf CLIENT spans bootifulmeters -> app_db.
    // envoy.json: one root SERVER span without service names: nothing.
    let expectations: &[(&str, &[(&str, &str, u64, u64)])] = &[
        ("skew.json", &[("servicea", "serviceb", 1, 0)]),
        (
            "messaging.json",
            &[
                ("frontend", "rabbitmq", 1, 0),
                ("rabbitmq", "backend", 1, 0),
            ],
        ),
        ("simple-db-p6.json", &[("bootifulmeters", "app_db", 4, 0)]),
        ("envoy.json", &[]),
    ];
    for (file, want) in expectations {
        let spans = &files.iter().find(|(n, _)| n == file).expect("file").1;
        let max_ts = spans.iter().filter_map(ts).max().unwrap_or(0);
        let min_ts = spans.iter().filter_map(ts).min().unwrap_or(0);
        let url = server.url(&format!(
            "/api/v2/dependencies?endTs={}&lookback={}",
            max_ts / 1000 + 1,
            (max_ts - min_ts) / 1000 + 10
        ));
        let got: Vec<Value> = http
            .get(url)
            .send()
            .await
            .expect("deps")
            .json()
            .await
            .expect("json");
        let got: BTreeSet<(String, String, u64, u64)> = got
            .iter()
            .map(|l| {
                (
                    l["parent"].as_str().unwrap_or_default().to_string(),
                    l["child"].as_str().unwrap_or_default().to_string(),
                    l["callCount"].as_u64().unwrap_or(0),
                    l.get("errorCount").and_then(Value::as_u64).unwrap_or(0),
                )
            })
            .collect();
        let want: BTreeSet<(String, String, u64, u64)> = want
            .iter()
            .map(|(p, c, n, e)| (p.to_string(), c.to_string(), *n, *e))
            .collect();
        assert_eq!(got, want, "dependencies of {file}");
    }
    server.stop();
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
