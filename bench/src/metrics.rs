//! The metrics benchmarks (issue 3): remote-write load against meshlens and
//! its peers, the disk data set in the three formats, and the scrape targets.
//! See docs/BENCHMARKS.md, "Metrics (issue 3)", and bench/metrics_peers.sh.

use crate::metrics_gen::{IstioSet, RwGen, STEP_MS, label_str, write_openmetrics};
use anyhow::Context;
use meshlens_storage::samples::{Labels, Sample as StoreSample, SampleBatch, SeriesWrite};
use meshlens_storage::{Storage, StorageConfig, Telemetry};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

const HOUR_MS: i64 = 3_600_000;

/// Posts one pre-encoded remote-write body; Ok(true) when answered 2xx.
async fn post(client: &reqwest::Client, url: &str, body: Vec<u8>) -> anyhow::Result<bool> {
    let r = client
        .post(url)
        .header("content-type", "application/x-protobuf")
        .header("content-encoding", "snappy")
        .header("x-prometheus-remote-write-version", "0.1.0")
        .body(body)
        .send()
        .await?;
    let status = r.status();
    if status.is_success() {
        return Ok(true);
    }
    let text = r.text().await.unwrap_or_default();
    eprintln!(
        "remote write answered {status}: {}",
        text.chars().take(300).collect::<String>()
    );
    Ok(false)
}

/// Sends per connection, in order; returns (samples acknowledged, failed requests).
async fn send_queues(
    client: &reqwest::Client,
    url: &str,
    queues: Vec<Vec<(Vec<u8>, usize)>>,
) -> anyhow::Result<(u64, u64)> {
    let mut tasks = Vec::new();
    for q in queues {
        let (client, url) = (client.clone(), url.to_string());
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut bad) = (0u64, 0u64);
            for (body, n) in q {
                match post(&client, &url, body).await {
                    Ok(true) => ok += n as u64,
                    Ok(false) => bad += 1,
                    Err(e) => {
                        eprintln!("request failed: {e}");
                        bad += 1;
                    }
                }
            }
            (ok, bad)
        }));
    }
    let (mut ok, mut bad) = (0, 0);
    for t in tasks {
        let (o, b) = t.await?;
        ok += o;
        bad += b;
    }
    Ok((ok, bad))
}

fn split(block: Vec<(Vec<u8>, usize)>, queues: &mut [Vec<(Vec<u8>, usize)>]) {
    let n = queues.len();
    for (g, item) in block.into_iter().enumerate() {
        queues[g % n].push(item);
    }
}

pub struct LoadArgs {
    pub url: String,
    pub series: usize,
    pub samples_per_series: usize,
    pub series_per_request: usize,
    pub steps_per_run: usize,
    pub runs: usize,
    pub concurrency: usize,
}

/// Remote-write ingest throughput: pre-encodes a warm-up block (creates
/// every series) and `runs` runs of `steps_per_run` steps, ending now, then
/// posts each run with `concurrency` connections and reports samples/s.
pub async fn load(a: LoadArgs) -> anyhow::Result<()> {
    let set = IstioSet::new(a.series);
    let n_series = set.len();
    let spp = a.samples_per_series.max(1);
    let blocks_per_run = (a.steps_per_run / spp).max(1);
    let total_steps = (spp * (1 + a.runs * blocks_per_run)) as i64;
    let start = now_ms() / STEP_MS * STEP_MS - (total_steps - 1) * STEP_MS;
    let mut g = RwGen::new(set, start, a.series_per_request, spp);
    let t = Instant::now();
    let conc = a.concurrency.max(1);
    let mut warm = vec![Vec::new(); conc];
    split(g.next_block(), &mut warm);
    let mut runs = Vec::new();
    let (mut bytes, mut reqs) = (0usize, 0usize);
    for _ in 0..a.runs {
        let mut q = vec![Vec::new(); conc];
        for _ in 0..blocks_per_run {
            let b = g.next_block();
            bytes += b.iter().map(|x| x.0.len()).sum::<usize>();
            reqs += b.len();
            split(b, &mut q);
        }
        runs.push(q);
    }
    let per_run = (n_series * spp * blocks_per_run) as u64;
    println!(
        "{n_series} series (istio_requests_total + 20 duration buckets per combination), \
         {} series x {spp} samples per request ({} samples), {} bytes per request (snappy), \
         {per_run} samples per run, {conc} connections; pre-encoded in {:.1}s",
        a.series_per_request,
        a.series_per_request * spp,
        bytes / reqs.max(1),
        t.elapsed().as_secs_f64()
    );
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(conc * 2)
        .build()?;
    let t = Instant::now();
    let (ok, bad) = send_queues(&client, &a.url, warm).await?;
    println!(
        "warm-up (creates the series): {ok} samples in {:.2}s = {:.0} samples/s, {bad} failed requests",
        t.elapsed().as_secs_f64(),
        ok as f64 / t.elapsed().as_secs_f64()
    );
    let mut rates = Vec::new();
    for (r, q) in runs.into_iter().enumerate() {
        let t = Instant::now();
        let (ok, bad) = send_queues(&client, &a.url, q).await?;
        let secs = t.elapsed().as_secs_f64();
        let rate = ok as f64 / secs;
        println!(
            "run {}: {ok} samples acknowledged in {secs:.2}s = {rate:.0} samples/s, {bad} failed requests",
            r + 1
        );
        rates.push(rate);
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "median: {:.0} samples/s",
        rates.get(rates.len() / 2).copied().unwrap_or(0.0)
    );
    Ok(())
}

pub struct WriteArgs {
    pub url: Option<String>,
    pub store: Option<PathBuf>,
    pub openmetrics: Option<PathBuf>,
    pub series: usize,
    pub steps: usize,
    pub start_ms: Option<i64>,
    pub end_now: bool,
    pub samples_per_series: usize,
    pub series_per_request: usize,
    pub concurrency: usize,
}

/// Start of the data set: ending now, or (default) ending on a 2-hour
/// boundary at least 3 hours ago so that every partition / block is closed.
fn start_of(a: &WriteArgs) -> i64 {
    let len = a.steps as i64 * STEP_MS;
    if let Some(s) = a.start_ms {
        s
    } else if a.end_now {
        now_ms() / STEP_MS * STEP_MS - len + STEP_MS
    } else {
        (now_ms() - 3 * HOUR_MS).div_euclid(2 * HOUR_MS) * 2 * HOUR_MS - len
    }
}

/// Writes the same deterministic data set to a remote-write URL, to an
/// in-process meshlens store, and/or as OpenMetrics files (one per 2 h).
pub async fn write(a: WriteArgs) -> anyhow::Result<()> {
    let start = start_of(&a);
    let spp = a.samples_per_series.max(1);
    let blocks = a.steps.div_ceil(spp);
    let n_series = IstioSet::new(a.series).len();
    println!(
        "data set: {n_series} series x {} steps of 15 s = {} samples, start_ms={start} end_ms={}",
        blocks * spp,
        n_series * blocks * spp,
        start + (blocks * spp) as i64 * STEP_MS - STEP_MS
    );
    if let Some(url) = &a.url {
        let mut g = RwGen::new(IstioSet::new(a.series), start, a.series_per_request, spp);
        let client = reqwest::Client::new();
        let conc = a.concurrency.max(1);
        let t = Instant::now();
        let (mut ok, mut bad) = (0, 0);
        for _ in 0..blocks {
            let mut q = vec![Vec::new(); conc];
            split(g.next_block(), &mut q);
            let (o, b) = send_queues(&client, url, q).await?;
            ok += o;
            bad += b;
        }
        println!(
            "remote write to {url}: {ok} samples acknowledged in {:.1}s, {bad} failed requests",
            t.elapsed().as_secs_f64()
        );
    }
    if let Some(dir) = &a.store {
        store_inprocess(&a, dir, start, blocks, spp).await?;
    }
    if let Some(dir) = &a.openmetrics {
        std::fs::create_dir_all(dir)?;
        let set = IstioSet::new(a.series);
        let mut state: Vec<f64> = (0..set.len()).map(|i| set.base(i)).collect();
        let total = (blocks * spp) as i64;
        let mut k = 0i64;
        while k < total {
            let ts = start + k * STEP_MS;
            let part = ts.div_euclid(2 * HOUR_MS) * 2 * HOUR_MS;
            let k1 = (((part + 2 * HOUR_MS) - start) / STEP_MS).min(total);
            let path = dir.join(format!("part-{part}.om"));
            let f = std::fs::File::create(&path)?;
            let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
            let n = write_openmetrics(&set, &mut state, start, k, k1, &mut w)?;
            w.write_all(b"# EOF\n")?;
            w.flush()?;
            println!("{}: {n} samples", path.display());
            k = k1;
        }
    }
    Ok(())
}

async fn store_inprocess(
    a: &WriteArgs,
    dir: &std::path::Path,
    start: i64,
    blocks: usize,
    spp: usize,
) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    let mut cfg = StorageConfig::new(dir);
    // Maintenance is run by hand below, after the last write.
    cfg.maintenance_interval = Duration::from_secs(24 * 3600);
    let storage = Storage::open(cfg, Telemetry::new()).await?;
    let set = IstioSet::new(a.series);
    let labels: Vec<Labels> = set
        .labels
        .iter()
        .map(|l| Labels::series(l.iter().map(|x| (label_str(&x.name), label_str(&x.value)))))
        .collect::<Result<_, _>>()?;
    let mut state: Vec<f64> = (0..set.len()).map(|i| set.base(i)).collect();
    let t = Instant::now();
    let (mut accepted, mut rejected) = (0u64, 0u64);
    for b in 0..blocks {
        let k0 = (b * spp) as i64;
        let series = labels
            .iter()
            .enumerate()
            .map(|(i, l)| SeriesWrite {
                labels: l.clone(),
                samples: (k0..k0 + spp as i64)
                    .map(|k| {
                        if k > 0 {
                            state[i] += set.inc(i, k);
                        }
                        StoreSample {
                            timestamp_ms: start + k * STEP_MS,
                            value: state[i],
                        }
                    })
                    .collect(),
            })
            .collect();
        let rep = storage
            .samples()
            .append(SampleBatch {
                known: Default::default(),
                series,
                metadata: vec![],
            })
            .await?;
        accepted += rep.accepted;
        rejected += rep.rejected_total();
    }
    storage.samples().flush().await?;
    let mut merges = 0;
    loop {
        let m = storage.samples().compact().await?;
        if m == 0 {
            break;
        }
        merges += m;
    }
    let st = storage.samples().stats();
    println!(
        "in-process store {}: {accepted} samples accepted, {rejected} rejected in {:.1}s; \
         {merges} compactions; {} files, {} samples, {} Parquet bytes = {:.3} bytes/sample (Parquet only)",
        dir.display(),
        t.elapsed().as_secs_f64(),
        st.files,
        st.file_samples,
        st.file_bytes,
        st.file_bytes as f64 / st.file_samples.max(1) as f64
    );
    storage.shutdown().await?;
    Ok(())
}

/// `count` Envoy-like targets on ports `port_base..port_base+count`, each
/// serving `series` series on `/metrics` and `/stats/prometheus`.
pub async fn serve_targets(count: usize, series: usize, port_base: u16) -> anyhow::Result<()> {
    use axum::extract::State;
    use axum::routing::get;
    async fn metrics(
        State(t): State<Arc<crate::metrics_gen::EnvoyTarget>>,
    ) -> ([(&'static str, &'static str); 1], String) {
        let mut s = String::with_capacity(256 * 1024);
        t.render(now_ms() as f64 / 1000.0, &mut s);
        (
            [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
            s,
        )
    }
    let mut tasks = Vec::new();
    for i in 0..count {
        let t = Arc::new(crate::metrics_gen::EnvoyTarget::new(i, series));
        let app = axum::Router::new()
            .route("/metrics", get(metrics))
            .route("/stats/prometheus", get(metrics))
            .with_state(t);
        let port = port_base + i as u16;
        let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .with_context(|| format!("bind 127.0.0.1:{port}"))?;
        tasks.push(tokio::spawn(async move { axum::serve(l, app).await }));
    }
    println!(
        "serving {count} targets x {series} series on 127.0.0.1:{port_base}..{}",
        port_base as usize + count - 1
    );
    for t in tasks {
        t.await??;
    }
    Ok(())
}
