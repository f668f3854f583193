//! Restart, compaction and retention keep query results identical.

mod common;

use common::{Server, client, temp_dir};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const FLUSHES: &str = "meshlens_flushes_total{outcome=\"ok\"}";

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_micros() as i64
}

/// A three-span trace: frontend -> backend (shared span) + a db call.
fn trace(n: u64, ts: i64) -> Vec<Value> {
    let tid = format!("{:016x}", 0xabc0_0000_u64 + n);
    let root = format!("{:016x}", n * 10 + 1);
    let call = format!("{:016x}", n * 10 + 2);
    let db = format!("{:016x}", n * 10 + 3);
    vec![
        json!({"traceId": tid, "id": root, "kind": "SERVER", "name": "get /", "timestamp": ts, "duration": 5000 + n as i64,
               "localEndpoint": {"serviceName": "frontend"}, "tags": {"http.method": "GET"}}),
        json!({"traceId": tid, "parentId": root, "id": call, "kind": "CLIENT", "name": "get /api", "timestamp": ts + 10, "duration": 3000,
               "localEndpoint": {"serviceName": "frontend"}}),
        json!({"traceId": tid, "parentId": root, "id": call, "kind": "SERVER", "name": "get /api", "timestamp": ts + 20, "duration": 2000,
               "localEndpoint": {"serviceName": "backend"}, "shared": true,
               "tags": if n.is_multiple_of(3) { json!({"error": "boom"}) } else { json!({}) }}),
        json!({"traceId": tid, "parentId": call, "id": db, "kind": "CLIENT", "name": "select", "timestamp": ts + 30, "duration": 900,
               "localEndpoint": {"serviceName": "backend"}, "remoteEndpoint": {"serviceName": "postgres", "port": 5432}}),
    ]
}

async fn post(server: &Server, spans: &[Value]) {
    let r = client()
        .post(server.url("/api/v2/spans"))
        .json(&spans)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 202);
}

async fn get(server: &Server, path: &str) -> Value {
    let r = client().get(server.url(path)).send().await.expect("get");
    assert_eq!(r.status().as_u16(), 200, "{path}");
    r.json().await.expect("json")
}

async fn metric(server: &Server, name: &str) -> f64 {
    let text = server.metrics_text().await;
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0.0)
}

/// The answers we compare across restart/compaction/retention.
async fn answers(server: &Server, ts_old: i64, ts_new: i64) -> Vec<Value> {
    let mut out = Vec::new();
    for (ts, first) in [(ts_old, 0u64), (ts_new, 100)] {
        let end = ts / 1000 + 60_000;
        out.push(
            get(
                server,
                &format!(
                    "/api/v2/traces?serviceName=backend&endTs={end}&lookback=3600000&limit=100"
                ),
            )
            .await,
        );
        out.push(get(server, &format!("/api/v2/traces?serviceName=frontend&minDuration=5005&endTs={end}&lookback=3600000&limit=100")).await);
        out.push(
            get(
                server,
                &format!("/api/v2/dependencies?endTs={end}&lookback=3600000"),
            )
            .await,
        );
        // 404 (an empty answer) once retention removed the trace.
        let r = client()
            .get(server.url(&format!(
                "/api/v2/trace/{:016x}",
                0xabc0_0000_u64 + first + 1
            )))
            .send()
            .await
            .expect("get");
        out.push(if r.status().as_u16() == 404 {
            json!([])
        } else {
            r.json().await.expect("json")
        });
    }
    out.push(get(server, "/api/v2/services").await);
    out
}

fn canonical(v: &[Value]) -> Vec<String> {
    v.iter()
        .map(|x| {
            // Search results are lists of traces; order within is by time, but
            // ties may come back in any order: compare as sorted strings.
            let mut parts: Vec<String> = match x {
                Value::Array(a) => a.iter().map(|e| e.to_string()).collect(),
                other => vec![other.to_string()],
            };
            parts.sort();
            parts.join("\n")
        })
        .collect()
}

async fn wait_for(server: &Server, what: &str, cond: impl Fn(f64) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = metric(server, what).await;
        if cond(v) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} = {v} never met the condition"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_compaction_and_retention_keep_answers() {
    let dir = temp_dir("lifecycle").join("data");
    let flags = ["--flush-interval", "1s", "--maintenance-interval", "1s"];
    let mut server = Server::start(&dir, &flags);
    let ts_old = now_us() - 2 * 86_400_000_000; // two days ago: a closed hour
    let ts_new = now_us() - 600_000_000; // ten minutes ago

    // Old traces in three posts, each flushed to its own file before the next.
    for part in 0..3u64 {
        let mut spans = Vec::new();
        for n in part * 10 + 1..=part * 10 + 10 {
            spans.extend(trace(n, ts_old + n as i64 * 1000));
        }
        let flushed = metric(&server, FLUSHES).await;
        post(&server, &spans).await;
        wait_for(&server, FLUSHES, |v| v > flushed).await;
    }
    let mut spans = Vec::new();
    for n in 101..=110 {
        spans.extend(trace(n, ts_new + n as i64 * 1000));
    }
    post(&server, &spans).await;
    let before = answers(&server, ts_old, ts_new).await;
    assert_eq!(
        before[0].as_array().map(Vec::len),
        Some(30),
        "30 old traces found"
    );
    let deps = &before[2];
    assert!(
        deps.as_array().is_some_and(|d| d.len() == 2),
        "frontend->backend and backend->postgres: {deps}"
    );

    // Compaction merges the old hour's three files into one.
    wait_for(&server, "meshlens_compactions_total", |v| v >= 1.0).await;
    wait_for(&server, "meshlens_buffer_rows", |v| v == 0.0).await;
    assert_eq!(
        canonical(&answers(&server, ts_old, ts_new).await),
        canonical(&before),
        "after compaction"
    );

    server.restart();
    assert_eq!(
        canonical(&answers(&server, ts_old, ts_new).await),
        canonical(&before),
        "after restart"
    );

    // Retention of one day drops the old hour entirely, and nothing else.
    server.stop();
    drop(server);
    let mut server = Server::start(
        &dir,
        &[
            "--flush-interval",
            "1s",
            "--maintenance-interval",
            "1s",
            "--retention",
            "1d",
        ],
    );
    wait_for(&server, "meshlens_retention_deleted_files_total", |v| {
        v >= 1.0
    })
    .await;
    let after = answers(&server, ts_old, ts_new).await;
    assert_eq!(after[0], json!([]), "old traces are gone");
    assert_eq!(
        canonical(&after[4..8]),
        canonical(&before[4..8]),
        "recent answers unchanged by retention"
    );
    let r = client()
        .get(server.url(&format!("/api/v2/trace/{:016x}", 0xabc0_0001_u64)))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 404);
    server.stop();
}
