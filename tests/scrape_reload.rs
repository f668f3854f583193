//! The scrape configuration reloads on SIGHUP and `POST /-/reload`; a bad
//! file is reported and the running configuration kept.

mod common;

use common::{Server, client, free_port, temp_dir};
use serde_json::Value;
use std::time::{Duration, Instant};

async fn pools(server: &Server) -> Vec<String> {
    let v: Value = client()
        .get(server.url("/api/v1/targets"))
        .send()
        .await
        .expect("targets")
        .json()
        .await
        .expect("json");
    let mut p: Vec<String> = v["data"]["activeTargets"]
        .as_array()
        .expect("active")
        .iter()
        .map(|t| t["scrapePool"].as_str().unwrap_or_default().to_string())
        .collect();
    p.sort();
    p.dedup();
    p
}

fn job(name: &str, port: u16) -> String {
    format!(
        "scrape_configs:\n  - job_name: {name}\n    scrape_interval: 1s\n    static_configs:\n      - targets: [\"127.0.0.1:{port}\"]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_on_sighup_and_endpoint_keeps_old_config_when_bad() {
    let dir = temp_dir("scrape-reload");
    let cfg = dir.join("scrape.yml");
    let port = free_port();
    std::fs::write(&cfg, job("first", port)).expect("write");
    let server = Server::start_on(
        &dir.join("data"),
        port,
        &[
            "--scrape-config",
            cfg.to_str().expect("path"),
            "--no-self-scrape",
        ],
    );
    assert_eq!(pools(&server).await, vec!["first"]);

    // A broken file: SIGHUP keeps the old configuration and logs why.
    std::fs::write(&cfg, "scrape_configs:\n  - job_name: [unclosed\n").expect("write");
    let _ = std::process::Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.log().contains("not reloaded") {
        assert!(
            Instant::now() < deadline,
            "no reload error logged:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(pools(&server).await, vec!["first"]);
    // The endpoint answers 500 with the reason, as Prometheus does.
    let r = client()
        .post(server.url("/-/reload"))
        .send()
        .await
        .expect("reload");
    assert_eq!(r.status().as_u16(), 500);
    let text = r.text().await.expect("text");
    assert!(text.contains("failed to reload config"), "{text}");
    assert_eq!(pools(&server).await, vec!["first"]);

    // A good file via SIGHUP, then another via the endpoint.
    std::fs::write(&cfg, job("second", port)).expect("write");
    let _ = std::process::Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while pools(&server).await != vec!["second"] {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reload:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    std::fs::write(&cfg, job("third", port)).expect("write");
    let r = client()
        .post(server.url("/-/reload"))
        .send()
        .await
        .expect("reload");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(pools(&server).await, vec!["third"]);
}
