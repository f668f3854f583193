//! What meshlens acknowledged survives `kill -9`.

mod common;

use common::{Server, client, temp_dir};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn batch(first_trace: u64, n: u64, now_us: i64) -> Value {
    let spans: Vec<Value> = (first_trace..first_trace + n)
        .map(|t| {
            json!({
                "traceId": format!("{:016x}{:016x}", 0xfeed_u64, t),
                "id": format!("{:016x}", t + 1),
                "kind": "SERVER",
                "name": "get /durable",
                "timestamp": now_us,
                "duration": 1234,
                "localEndpoint": {"serviceName": "durable", "ipv4": "10.1.2.3"},
                "tags": {"http.status_code": "200", "n": t.to_string()}
            })
        })
        .collect();
    Value::Array(spans)
}

/// Posts batches from several tasks until `stop`; returns the acknowledged
/// trace numbers.
async fn ingest_until(server_url: String, stop: Arc<AtomicBool>, next: Arc<AtomicU64>) -> Vec<u64> {
    let http = client();
    let mut acked = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let first = next.fetch_add(50, Ordering::Relaxed);
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_micros() as i64;
        match http
            .post(&server_url)
            .json(&batch(first, 50, now_us))
            .send()
            .await
        {
            Ok(r) if r.status().as_u16() == 202 => acked.extend(first..first + 50),
            _ => {}
        }
    }
    acked
}

async fn find_all(server: &Server, acked: &[u64]) -> usize {
    let http = client();
    let mut found = 0;
    for chunk in acked.chunks(200) {
        let ids: Vec<String> = chunk
            .iter()
            .map(|t| format!("{:016x}{:016x}", 0xfeed_u64, t))
            .collect();
        let url = server.url(&format!("/api/v2/traceMany?traceIds={}", ids.join(",")));
        let r = http.get(url).send().await.expect("traceMany");
        assert_eq!(r.status().as_u16(), 200);
        let traces: Vec<Vec<Value>> = r.json().await.expect("json");
        found += traces.len();
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_spans_survive_kill_9() {
    let dir = temp_dir("durability");
    // Small flushes so that some acknowledged data is in Parquet, some in
    // the WAL only, and some in a WAL segment being flushed at the kill.
    let mut server = Server::start(
        &dir.join("data"),
        &["--flush-rows", "3000", "--flush-interval", "1s"],
    );
    let next = Arc::new(AtomicU64::new(1));
    let mut all_acked = Vec::new();

    for round in 0..2 {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                tokio::spawn(ingest_until(
                    server.url("/api/v2/spans"),
                    stop.clone(),
                    next.clone(),
                ))
            })
            .collect();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(3) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Kill while the senders are still sending.
        server.kill9();
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            all_acked.extend(t.await.expect("task"));
        }
        assert!(
            !all_acked.is_empty(),
            "round {round}: nothing was acknowledged"
        );
        server.restart_after_kill9();
        let found = find_all(&server, &all_acked).await;
        assert_eq!(
            found,
            all_acked.len(),
            "round {round}: every acknowledged trace is found after kill -9 ({} acknowledged)",
            all_acked.len()
        );
    }
    server.stop();
}
