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

/// One remote-write request: 20 series labelled with the request number,
/// one sample each.
fn rw_body(req: u64, now_ms: i64) -> Vec<u8> {
    use meshlens_ingest::remote_write::{Label, Sample, TimeSeries, WriteRequest};
    use prost::Message;
    let lab = |n: &str, v: &str| Label {
        name: n.as_bytes().to_vec(),
        value: v.as_bytes().to_vec(),
    };
    let timeseries = (0..20)
        .map(|i| TimeSeries {
            labels: vec![
                lab("__name__", "durable_samples"),
                lab("i", &i.to_string()),
                lab("req", &req.to_string()),
            ],
            samples: vec![Sample {
                value: req as f64,
                timestamp: now_ms,
            }],
            ..Default::default()
        })
        .collect();
    let body = WriteRequest {
        timeseries,
        metadata: vec![],
    }
    .encode_to_vec();
    snap::raw::Encoder::new()
        .compress_vec(&body)
        .expect("snappy")
}

async fn remote_write_until(url: String, stop: Arc<AtomicBool>, next: Arc<AtomicU64>) -> Vec<u64> {
    let http = client();
    let mut acked = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let req = next.fetch_add(1, Ordering::Relaxed);
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as i64;
        match http
            .post(&url)
            .header("content-type", "application/x-protobuf")
            .header("content-encoding", "snappy")
            .header("x-prometheus-remote-write-version", "0.1.0")
            .body(rw_body(req, now_ms))
            .send()
            .await
        {
            Ok(r) if r.status().as_u16() == 204 => acked.push(req),
            _ => {}
        }
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_samples_survive_kill_9() {
    let dir = temp_dir("durability-samples");
    // Flush every second so some acknowledged samples are in Parquet, some
    // only in the WAL, some in a segment being flushed at the kill.
    let mut server = Server::start(
        &dir.join("data"),
        &["--samples-flush-interval", "1s", "--no-self-scrape"],
    );
    let next = Arc::new(AtomicU64::new(1));
    let mut all_acked: Vec<u64> = Vec::new();
    for round in 0..2 {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                tokio::spawn(remote_write_until(
                    server.url("/api/v1/write"),
                    stop.clone(),
                    next.clone(),
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_secs(3)).await;
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
        let v: Value = client()
            .get(server.url("/api/v1/label/req/values?match[]=durable_samples"))
            .send()
            .await
            .expect("label values")
            .json()
            .await
            .expect("json");
        let found: std::collections::BTreeSet<u64> = v["data"]
            .as_array()
            .expect("data")
            .iter()
            .filter_map(|x| x.as_str()?.parse().ok())
            .collect();
        let lost: Vec<u64> = all_acked
            .iter()
            .copied()
            .filter(|r| !found.contains(r))
            .take(10)
            .collect();
        assert!(
            lost.is_empty(),
            "round {round}: acknowledged requests lost after kill -9: {lost:?} (of {})",
            all_acked.len()
        );
        let series: Value = client()
            .get(server.url("/api/v1/series?match[]=durable_samples"))
            .send()
            .await
            .expect("series")
            .json()
            .await
            .expect("json");
        assert!(
            series["data"].as_array().expect("data").len() >= all_acked.len() * 20,
            "round {round}: every series of every acknowledged request is back"
        );
    }
    server.stop();
}
