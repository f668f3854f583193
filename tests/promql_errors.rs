//! Bad PromQL against the real binary: malformed queries, unknown
//! functions, wrong argument types, huge ranges, too many points, too many
//! samples, queries past their deadline — each gets Prometheus's error type
//! and status with a message, and the server keeps answering.

mod common;

use common::{Server, client, temp_dir};
use serde_json::Value;

async fn get(server: &Server, path_and_query: &str) -> (u16, Value) {
    let r = client()
        .get(server.url(path_and_query))
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    (status, v)
}

fn enc(q: &str) -> String {
    form_urlencoded::byte_serialize(q.as_bytes()).collect()
}

#[tokio::test]
async fn bad_queries_get_prometheus_errors_and_the_server_stays_up() {
    let dir = temp_dir("promql-errors");
    let server = Server::start(&dir, &["--no-self-scrape", "--query-max-samples", "100000"]);
    let now = chrono::Utc::now().timestamp();
    let cases: Vec<(String, u16, &str, &str)> = vec![
        (
            format!("/api/v1/query?query={}", enc("sum(")),
            400,
            "bad_data",
            "parenthesis",
        ),
        (
            format!("/api/v1/query?query={}", enc("up{job=")),
            400,
            "bad_data",
            "",
        ),
        (
            format!("/api/v1/query?query={}", enc("nosuchfunction(up)")),
            400,
            "bad_data",
            "nosuchfunction",
        ),
        // Wrong argument types.
        (
            format!("/api/v1/query?query={}", enc("rate(up)")),
            400,
            "bad_data",
            "rate",
        ),
        (
            format!("/api/v1/query?query={}", enc("abs(\"text\")")),
            400,
            "bad_data",
            "",
        ),
        (
            format!("/api/v1/query?query={}", enc("sum(up[5m])")),
            400,
            "bad_data",
            "",
        ),
        // A range query over a range vector.
        (
            format!(
                "/api/v1/query_range?query={}&start={}&end={}&step=60",
                enc("up[5m]"),
                now - 600,
                now
            ),
            400,
            "bad_data",
            "range query",
        ),
        // More than 11,000 points per series.
        (
            format!(
                "/api/v1/query_range?query=up&start={}&end={}&step=1",
                now - 86_400,
                now
            ),
            400,
            "bad_data",
            "11,000 points",
        ),
        (
            format!(
                "/api/v1/query_range?query=up&start={now}&end={}&step=15s",
                now - 60
            ),
            400,
            "bad_data",
            "end",
        ),
        (
            format!(
                "/api/v1/query_range?query=up&start={}&end={now}&step=-1",
                now - 60
            ),
            400,
            "bad_data",
            "step",
        ),
        (
            "/api/v1/query?query=up&time=notatime".to_string(),
            400,
            "bad_data",
            "time",
        ),
        // Evaluation errors: 422.
        (
            format!(
                "/api/v1/query?query={}",
                enc("label_replace(vector(1), \"dst\", \"x\", \"src\", \"(.*\")")
            ),
            422,
            "execution",
            "regular expression",
        ),
        (
            format!(
                "/api/v1/query?query={}",
                enc(
                    "vector(3) + on() group_left() (vector(1) or label_replace(vector(2), \"a\", \"b\", \"\", \"\"))"
                )
            ),
            422,
            "execution",
            "many-to-many",
        ),
        // More samples than --query-max-samples.
        (
            format!(
                "/api/v1/query?query={}",
                enc("count_over_time(vector(1)[30h:1s])")
            ),
            422,
            "execution",
            "too many samples",
        ),
        // Past the request's deadline.
        (
            format!(
                "/api/v1/query_range?query={}&start={}&end={now}&step=10&timeout=20ms",
                enc("max_over_time(vector(1)[3h:1s])"),
                now - 86_400
            ),
            503,
            "timeout",
            "timed out",
        ),
    ];
    let mut wrong = Vec::new();
    for (uri, status, kind, needle) in &cases {
        let (s, v) = get(&server, uri).await;
        let msg = v["error"].as_str().unwrap_or_default();
        if s != *status
            || v["status"] != "error"
            || v["errorType"] != *kind
            || msg.is_empty()
            || !msg.to_lowercase().contains(&needle.to_lowercase())
        {
            wrong.push(format!(
                "{uri}: want {status} {kind} mentioning {needle:?}, got {s} {v}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // Hostile depth: refused before it can exhaust a stack.
    for (q, needle) in [
        (
            format!("{}1{}", "(".repeat(20_000), ")".repeat(20_000)),
            "levels of brackets",
        ),
        (vec!["1"; 100_000].join("+"), "operators"),
        (format!("{}1", "-".repeat(100_000)), "operators"),
    ] {
        for path in ["/api/v1/query", "/api/v1/format_query"] {
            let r = client()
                .post(server.url(path))
                .form(&[("query", q.as_str())])
                .send()
                .await
                .expect("request");
            let status = r.status().as_u16();
            let v: Value = r.json().await.unwrap_or(Value::Null);
            assert_eq!(status, 400, "{path}: {v}");
            assert_eq!(v["errorType"], "bad_data", "{path}: {v}");
            let msg = v["error"].as_str().unwrap_or_default();
            assert!(msg.contains(needle), "{path}: {msg}");
        }
    }
    // A huge range over nothing is fine (and quick).
    let (s, v) = get(
        &server,
        &format!(
            "/api/v1/query?query={}",
            enc("rate(nonexistent_total[100y])")
        ),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"]["result"], serde_json::json!([]));
    // Still healthy: Grafana's "Save & test".
    let (s, v) = get(&server, &format!("/api/v1/query?query={}", enc("1+1"))).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"]["result"][1], "2");
    let (s, v) = get(&server, "/api/v1/status/buildinfo").await;
    assert_eq!(s, 200, "{v}");
    assert!(v["data"].get("features").is_none());
}
