//! The Bookinfo simulator as a load generator: how much of one core it needs
//! to sustain a request rate. The simulator (generation, Zipkin JSON and
//! OTLP encoding, HTTP sends, sidecar stats served to a scraper) runs on the
//! calling thread's single-threaded runtime; a sink that accepts and drops
//! every POST, and scrapes every sidecar each `scrape` interval, runs on
//! another thread (or the spans go to a running meshlens with `--target`).

use axum::Router;
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::routing::post;
use meshlens_sim::{SimConfig, Simulator, Sink};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

/// Runs `fut` on a thread of its own (a single-threaded runtime), so its CPU
/// is not the simulator thread's.
fn on_own_thread<F>(fut: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(fut);
    });
}

fn null_sink() -> anyhow::Result<std::net::SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    on_own_thread(async move {
        let app = Router::new()
            .route(
                "/api/v2/spans",
                post(|_b: Bytes| async { StatusCode::ACCEPTED }),
            )
            .route("/v1/traces", post(|_b: Bytes| async { StatusCode::OK }));
        let l = tokio::net::TcpListener::from_std(listener).expect("listener");
        let _ = axum::serve(l, app).await;
    });
    Ok(addr)
}

/// Scrapes every target each `every`, like meshlens would.
fn scraper(targets: Vec<std::net::SocketAddr>, every: Duration) {
    on_own_thread(async move {
        let c = reqwest::Client::new();
        loop {
            tokio::time::sleep(every).await;
            for t in &targets {
                if let Ok(r) = c.get(format!("http://{t}/stats/prometheus")).send().await {
                    let _ = r.bytes().await;
                }
            }
        }
    });
}

pub async fn run(rate: f64, seconds: u64, target: Option<String>) -> anyhow::Result<()> {
    let (zipkin_url, otlp_url) = match target {
        Some(t) => {
            let (http, otlp) = t.split_once(',').unwrap_or((t.as_str(), "127.0.0.1:4318"));
            (
                format!("http://{http}/api/v2/spans"),
                format!("http://{otlp}/v1/traces"),
            )
        }
        None => {
            let a = null_sink()?;
            (
                format!("http://{a}/api/v2/spans"),
                format!("http://{a}/v1/traces"),
            )
        }
    };
    let sim = Simulator::new(SimConfig {
        rate,
        seed: Some(1),
        ..Default::default()
    });
    let targets = sim.serve_stats(IpAddr::V4(Ipv4Addr::LOCALHOST)).await?;
    scraper(
        targets.iter().map(|t| t.addr).collect(),
        Duration::from_secs(5),
    );
    // Warm up (connections, tables), then measure.
    sim.spawn(Sink {
        zipkin_url,
        otlp_url,
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let count = |s: &serde_json::Value, k: &str| s[k].as_u64().unwrap_or(0);
    let before = sim.status();
    let (cpu0, pcpu0, t0) = (
        crate::thread_cpu_ns(),
        crate::process_cpu_ns(),
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (cpu1, pcpu1, wall) = (
        crate::thread_cpu_ns(),
        crate::process_cpu_ns(),
        t0.elapsed().as_secs_f64(),
    );
    let after = sim.status();
    let requests = (count(&after, "requests") - count(&before, "requests")) as f64 / wall;
    let spans = (count(&after, "spans_sent") - count(&before, "spans_sent")) as f64 / wall;
    let refused = count(&after, "spans_refused") - count(&before, "spans_refused");
    let core = (cpu1 - cpu0) as f64 / 1e9 / wall;
    println!(
        "sim rate={rate} wall={wall:.1}s requests/s={requests:.0} spans/s={spans:.0} refused={refused} \
         sim_thread_cpu={:.1}% of one core (whole process with sink and scraper {:.1}%) => ~{:.0} requests/s per core",
        core * 100.0,
        (pcpu1 - pcpu0) as f64 / 1e9 / wall * 100.0,
        if core > 0.0 { requests / core } else { 0.0 }
    );
    Ok(())
}
