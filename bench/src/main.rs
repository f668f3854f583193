//! `meshlens-bench`: the load runs behind docs/BENCHMARKS.md.
//!
//!   meshlens-bench ingest --format otlp|zipkin   decode + validate + append (WAL fsync) throughput
//!   meshlens-bench decode --keep 2000            OTLP decode alone vs a bare prost decode, interleaved slices
//!   meshlens-bench flush --spans 1000000         CPU time of one flush (sort, gather, Parquet) of N buffered spans
//!   meshlens-bench lookup --spans 10000000       disk bytes/span, trace-by-id and search latency
//!   meshlens-bench send --url URL                HTTP load against a running meshlens (RSS runs)
//!   meshlens-bench metrics-load --url URL        remote-write ingest samples/s (any receiver)
//!   meshlens-bench metrics-write ...             the metrics data set via remote write, in process, or as OpenMetrics
//!   meshlens-bench serve-targets                 Envoy-like scrape targets
//!   meshlens-bench promql-query --target ...     PromQL query_range latency against several servers

mod metrics;
mod metrics_gen;
mod otlp;
mod promql;
mod sim;
mod spangen;
mod topology;

use anyhow::Context;
use clap::{Parser, Subcommand};
use meshlens_query::traces::{TraceQuery, TraceStore};
use meshlens_storage::model::{Span, TraceId, UnixNanos};
use meshlens_storage::{Storage, StorageConfig, Telemetry};
use prost::Message;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The allocator of the `meshlens` binary, so figures match it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The allocator settings of the `meshlens` binary (src/main.rs,
/// `tune_allocator`): freed memory kept 5 minutes before it goes back to
/// the OS, unless `MIMALLOC_PURGE_DELAY` says otherwise.
#[allow(unsafe_code)]
fn tune_allocator() {
    /// mimalloc v3's `mi_option_purge_delay` (see src/main.rs).
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one integer option.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 300_000) }
    }
}

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// `meshlens-bench ingest`.
#[derive(clap::Args)]
struct IngestArgs {
    #[arg(long, default_value = "otlp")]
    format: String,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Spans per request.
    #[arg(long, default_value_t = 512)]
    batch: usize,
    #[arg(long)]
    dir: PathBuf,
    /// Also derive span metrics and service-graph edges from every
    /// stored batch (what `meshlens serve` does), series written every 15 s.
    #[arg(long)]
    derive: bool,
    /// Pin the ingest path (the runtime's thread and the WAL thread it
    /// starts) to `--core` and the flush (tokio's blocking pool, where
    /// sorting and Parquet encoding run) to this core. Without it the
    /// whole process runs where `taskset` puts it.
    #[arg(long)]
    flush_core: Option<usize>,
    #[arg(long, default_value_t = 0)]
    core: usize,
    /// Ingest this many spans, then flush them all to Parquet and stop;
    /// the rate counts the time until the last file is written (a fixed
    /// amount of work, also for `valgrind --tool=callgrind`).
    #[arg(long)]
    count: Option<u64>,
}

#[derive(Subcommand)]
enum Cmd {
    /// PromQL latency: every query of a file as query_range against each target, interleaved.
    PromqlQuery {
        /// `name=http://host:port[=pid]`; the first is the one ratios are about.
        #[arg(long = "target", required = true)]
        targets: Vec<String>,
        #[arg(long)]
        queries: PathBuf,
        #[arg(long)]
        start_ms: i64,
        #[arg(long)]
        end_ms: i64,
        #[arg(long, default_value = "15s")]
        step: String,
        /// Measured runs per query and target (after one warm-up run).
        #[arg(long, default_value_t = 7)]
        runs: usize,
    },
    /// Ingest throughput on the calling thread: decode, validate, append (acknowledged after WAL fsync).
    Ingest(IngestArgs),
    /// Decode alone (no WAL, no flush) against a bare prost decode of the
    /// same payloads, in alternating slices so that both see the same
    /// machine; `--keep N` holds the last N batches, as the memtable does.
    Decode {
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        #[arg(long, default_value_t = 512)]
        batch: usize,
        #[arg(long, default_value_t = 0)]
        keep: usize,
        /// Decode this many requests with our decoder alone, untimed (for
        /// instruction counts under valgrind), instead of the timed run.
        #[arg(long)]
        count: Option<usize>,
    },
    /// Buffers N Envoy-like spans (as 512-span OTLP requests decode them),
    /// then times one flush to Parquet; repeated, medians printed.
    Flush {
        #[arg(long, default_value_t = 1_000_000)]
        spans: usize,
        #[arg(long, default_value_t = 5)]
        runs: usize,
        #[arg(long)]
        dir: PathBuf,
    },
    /// Stores N Envoy-like spans in one hour, then measures disk use, trace-by-id and search.
    Lookup {
        #[arg(long, default_value_t = 10_000_000)]
        spans: u64,
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 1000)]
        queries: usize,
        /// Query the data set a previous run left in DIR instead of writing a new one.
        #[arg(long)]
        reuse: bool,
    },
    /// The exact service-graph recompute (`/api/topology?source=spans&exact=true`)
    /// over every span stored in DIR (e.g. the data set `lookup` leaves):
    /// median wall time of `runs` runs; writes DIR/topology-files.txt for
    /// `duckdb_topology.py`.
    TopologyExact {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// `GET /api/topology` latency over one hour of an N-service mesh at R
    /// requests/s (Istio metrics and span-derived series built in simulated
    /// time into a fresh store in DIR), per source; median of `runs`.
    TopologyMesh {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 100)]
        services: usize,
        #[arg(long, default_value_t = 2000.0)]
        rps: f64,
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// The Bookinfo simulator as a load generator: requests/s sustained and
    /// the share of one core it takes (to a null sink, or `--target
    /// HTTP_ADDR[,OTLP_HTTP_ADDR]` of a running meshlens).
    Sim {
        #[arg(long, default_value_t = 5000.0)]
        rate: f64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long)]
        target: Option<String>,
    },
    /// Posts Zipkin JSON to a running meshlens for a while.
    Send {
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        #[arg(long, default_value_t = 512)]
        batch: usize,
        /// Target spans per second over all senders (0 = as fast as possible).
        #[arg(long, default_value_t = 0)]
        rate: u64,
    },
    /// Remote-write ingest throughput against URL (meshlens, Prometheus, VictoriaMetrics):
    /// pre-encoded Istio series, a warm-up block, then `runs` timed runs; median samples/s.
    MetricsLoad {
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 100_000)]
        series: usize,
        /// Consecutive 15 s samples of each series in one request.
        #[arg(long, default_value_t = 4)]
        samples_per_series: usize,
        #[arg(long, default_value_t = 500)]
        series_per_request: usize,
        #[arg(long, default_value_t = 40)]
        steps_per_run: usize,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
    },
    /// Writes the deterministic Istio data set to a remote-write URL, an in-process
    /// meshlens store (then flush + compact + shutdown) and/or OpenMetrics files.
    MetricsWrite {
        #[arg(long)]
        url: Option<String>,
        #[arg(long)]
        store: Option<PathBuf>,
        #[arg(long)]
        openmetrics: Option<PathBuf>,
        #[arg(long, default_value_t = 10_000)]
        series: usize,
        /// 15 s steps (1440 = 6 h).
        #[arg(long, default_value_t = 1440)]
        steps: usize,
        /// Default: ends on a 2 h boundary >= 3 h ago (all partitions closed).
        #[arg(long, allow_hyphen_values = true)]
        start_ms: Option<i64>,
        /// Make the data set end now instead.
        #[arg(long)]
        end_now: bool,
        #[arg(long, default_value_t = 4)]
        samples_per_series: usize,
        #[arg(long, default_value_t = 500)]
        series_per_request: usize,
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
    },
    /// Envoy-like scrape targets on consecutive ports (`/metrics`, `/stats/prometheus`).
    ServeTargets {
        #[arg(long, default_value_t = 200)]
        count: usize,
        #[arg(long, default_value_t = 2000)]
        series: usize,
        #[arg(long, default_value_t = 21000)]
        port_base: u16,
    },
}

fn spans(rng: &mut spangen::Rng, n: usize, start: UnixNanos) -> Vec<Span> {
    let mut out = Vec::with_capacity(n + 8);
    let mut t = start.0;
    while out.len() < n {
        out.extend(spangen::bookinfo_trace(rng, UnixNanos(t)));
        t += 1_000_000;
    }
    out.truncate(n);
    out
}

fn zipkin_json(spans: &[Span]) -> Vec<u8> {
    let z: Vec<_> = spans
        .iter()
        .map(meshlens_query::zipkin::encode::to_zipkin)
        .collect();
    serde_json::to_vec(&z).unwrap_or_default()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn ingest(args: IngestArgs) -> anyhow::Result<()> {
    let IngestArgs {
        format,
        seconds,
        concurrency,
        batch,
        dir,
        derive,
        count: fixed,
        ..
    } = args;
    let _ = std::fs::remove_dir_all(&dir);
    let storage = Storage::open(StorageConfig::new(&dir), Telemetry::new()).await?;
    let deriver = derive.then(|| {
        let d = meshlens_ingest::derive::Deriver::new(
            Default::default(),
            Some(storage.telemetry().clone()),
        );
        d.spawn(storage.samples().clone());
        d
    });
    let payloads: Arc<Vec<Vec<u8>>> = Arc::new(payloads(&format, batch));
    let avg_bytes = payloads.iter().map(Vec::len).sum::<usize>() / payloads.len();
    println!(
        "format={format} batch={batch} spans/request, {avg_bytes} bytes/request, concurrency={concurrency}"
    );

    let count = Arc::new(AtomicU64::new(0));
    // How long each append waited for its acknowledgement (WAL fsync),
    // in microseconds.
    let waits = Arc::new(std::sync::Mutex::new(Vec::<u32>::new()));
    let derive_ns = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let cpu_start = process_cpu_ns();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let derive_ns = derive_ns.clone();
        let waits = waits.clone();
        let (storage, payloads, count, stop, format, deriver) = (
            storage.clone(),
            payloads.clone(),
            count.clone(),
            stop.clone(),
            format.clone(),
            deriver.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while !stop.load(Ordering::Relaxed)
                && fixed.is_none_or(|n| count.load(Ordering::Relaxed) < n)
            {
                let p = &payloads[i % payloads.len()];
                i += 1;
                let batch = match format.as_str() {
                    "otlp" => meshlens_ingest::otlp::decode_otlp_proto(p)
                        .map(|b| b.batch)
                        .expect("decode"),
                    _ => meshlens_ingest::zipkin::json_v2::decode_json_v2_batch(p).expect("decode"),
                };
                let n = batch.num_rows() as u64;
                let asked = Instant::now();
                storage.append_batch(batch.clone()).await.expect("append");
                let waited = asked.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                waits.lock().expect("waits").push(waited);
                if let Some(d) = &deriver {
                    let t = thread_cpu_ns();
                    d.observe_batch(&batch);
                    derive_ns.fetch_add(thread_cpu_ns().saturating_sub(t), Ordering::Relaxed);
                }
                count.fetch_add(n, Ordering::Relaxed);
            }
        }));
    }
    if fixed.is_some() {
        for t in tasks {
            t.await?;
        }
        let acked = started.elapsed().as_secs_f64();
        storage.flush().await?;
        let elapsed = started.elapsed().as_secs_f64();
        let n = count.load(Ordering::Relaxed);
        println!(
            "ingest: {n} spans acknowledged in {acked:.1}s ({:.0} spans/s) and all flushed to Parquet \
             in {elapsed:.1}s: {:.0} spans/s sustained (acknowledged, sorted, written to Parquet)",
            n as f64 / acked,
            n as f64 / elapsed
        );
        print_waits(&waits.lock().expect("waits"));
        storage.shutdown().await?;
        return Ok(());
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let rate = count.load(Ordering::Relaxed) as f64 / elapsed;
    println!(
        "ingest{}: {:.0} spans/s acknowledged after WAL fsync ({} spans in {elapsed:.1}s)",
        if derive {
            format!(
                " + derive (derivation: {:.1}% of the process's CPU time, {:.2} us CPU/span)",
                derive_ns.load(Ordering::Relaxed) as f64
                    / process_cpu_ns().saturating_sub(cpu_start).max(1) as f64
                    * 100.0,
                derive_ns.load(Ordering::Relaxed) as f64
                    / 1e3
                    / count.load(Ordering::Relaxed).max(1) as f64
            )
        } else {
            String::new()
        },
        rate,
        count.load(Ordering::Relaxed)
    );

    // The same payloads through a bare decode, same thread, same time.
    let started = Instant::now();
    let mut decoded = 0u64;
    let mut i = 0;
    while started.elapsed() < Duration::from_secs(seconds.min(5)) {
        let p = &payloads[i % payloads.len()];
        i += 1;
        decoded += match format.as_str() {
            "otlp" => prost_decode(p)?,
            _ => serde_json::from_slice::<serde_json::Value>(p)?
                .as_array()
                .map_or(0, |a| a.len() as u64),
        };
    }
    let base = decoded as f64 / started.elapsed().as_secs_f64();
    let what = if format == "otlp" {
        "bare prost decode"
    } else {
        "serde_json::Value parse"
    };
    println!(
        "baseline ({what}): {base:.0} spans/s; ratio ingest/baseline = {:.2}",
        rate / base
    );
    storage.shutdown().await?;
    Ok(())
}

/// 64 requests of `batch` Envoy-like spans each, as OTLP protobuf
/// (`format` "otlp") or Zipkin JSON v2 (anything else).
fn payloads(format: &str, batch: usize) -> Vec<Vec<u8>> {
    let mut rng = spangen::Rng::new(42);
    (0..64)
        .map(|_| {
            let s = spans(&mut rng, batch, UnixNanos::now());
            match format {
                "otlp" => otlp::request(&s).encode_to_vec(),
                _ => zipkin_json(&s),
            }
        })
        .collect()
}

/// The baseline: `body` decoded by prost into its own types; the span count.
fn prost_decode(body: &[u8]) -> anyhow::Result<u64> {
    let r =
        opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::decode(body)?;
    Ok(r.resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len() as u64)
        .sum())
}

/// Pins the calling thread (and threads it starts later) to `core`.
fn pin_to(core: usize) -> anyhow::Result<()> {
    if core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
        Ok(())
    } else {
        anyhow::bail!("could not pin a thread to core {core}")
    }
}

fn decode(seconds: u64, batch: usize, keep: usize, count: Option<usize>) -> anyhow::Result<()> {
    let payloads = payloads("otlp", batch);
    if let Some(count) = count {
        let mut spans = 0;
        for i in 0..count {
            spans += meshlens_ingest::otlp::decode_otlp_proto(&payloads[i % payloads.len()])?
                .batch
                .num_rows();
        }
        println!("decoded {count} requests, {spans} spans");
        return Ok(());
    }
    let mut kept = std::collections::VecDeque::with_capacity(keep + 1);
    // Per slice pair: (ours spans/s, prost spans/s).
    let mut pairs = Vec::new();
    let slice = Duration::from_millis(500);
    let started = Instant::now();
    let mut i = 0usize;
    while started.elapsed() < Duration::from_secs(seconds) {
        let mut rates = [0f64; 2];
        for (which, rate) in rates.iter_mut().enumerate() {
            let t = Instant::now();
            let mut n = 0u64;
            while t.elapsed() < slice {
                let p = &payloads[i % payloads.len()];
                i += 1;
                if which == 0 {
                    let b = meshlens_ingest::otlp::decode_otlp_proto(p)?.batch;
                    n += b.num_rows() as u64;
                    if keep > 0 {
                        kept.push_back(b);
                        if kept.len() > keep {
                            kept.pop_front();
                        }
                    }
                } else {
                    n += prost_decode(p)?;
                }
            }
            *rate = n as f64 / t.elapsed().as_secs_f64();
        }
        pairs.push((rates[0], rates[1]));
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "decode ({} slice pairs of {slice:?}, keep={keep}): ours {:.0} spans/s, bare prost {:.0} spans/s; median per-pair ratio {:.3}",
        pairs.len(),
        median(pairs.iter().map(|p| p.0).collect()),
        median(pairs.iter().map(|p| p.1).collect()),
        median(pairs.iter().map(|p| p.0 / p.1).collect()),
    );
    Ok(())
}

async fn flush(n: usize, runs: usize, dir: PathBuf) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(&dir);
    let mut cfg = StorageConfig::new(&dir);
    cfg.flush_rows = usize::MAX;
    cfg.flush_age = Duration::from_secs(3600);
    let storage = Storage::open(cfg, Telemetry::new()).await?;
    let mut rng = spangen::Rng::new(42);
    let batches: Vec<_> = (0..n.div_ceil(512))
        .map(|_| {
            let s = spans(&mut rng, 512, UnixNanos::now());
            let body = otlp::request(&s).encode_to_vec();
            meshlens_ingest::otlp::decode_otlp_proto(&body)
                .map(|b| b.batch)
                .expect("decode")
        })
        .collect();
    let mut cpu = Vec::new();
    let mut wall = Vec::new();
    for _ in 0..runs {
        for b in &batches {
            storage.append_batch(b.clone()).await?;
        }
        let (t, c) = (Instant::now(), process_cpu_ns());
        storage.flush().await?;
        cpu.push(process_cpu_ns().saturating_sub(c) as f64 / 1e9);
        wall.push(t.elapsed().as_secs_f64());
    }
    cpu.sort_by(f64::total_cmp);
    wall.sort_by(f64::total_cmp);
    let rows = batches.iter().map(|b| b.num_rows()).sum::<usize>();
    println!(
        "flush of {rows} buffered spans ({} batches): CPU median {:.3} s (runs {cpu:.3?}), wall median {:.3} s; {:.2} us CPU/span",
        batches.len(),
        cpu[cpu.len() / 2],
        wall[wall.len() / 2],
        cpu[cpu.len() / 2] * 1e6 / rows as f64
    );
    storage.shutdown().await?;
    Ok(())
}

/// CPU time of the calling thread, ns (Linux `/proc/thread-self/schedstat`).
/// The appends' waits for their acknowledgement: median, p99, worst.
/// With 16 appends in flight on one thread, a wait includes decoding the
/// requests queued before it; a stall of the WAL thread shows as the worst.
fn print_waits(waits: &[u32]) {
    if waits.is_empty() {
        return;
    }
    let mut w = waits.to_vec();
    w.sort_unstable();
    let at = |q: f64| f64::from(w[((w.len() - 1) as f64 * q) as usize]) / 1e3;
    println!(
        "acknowledgement waits over {} appends: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        w.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    );
}

fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// CPU time of the whole process (all threads), ns, from `/proc/self/stat`.
fn process_cpu_ns() -> u64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/stat") else {
        return 0;
    };
    // Fields after the ")" of the command name: utime is the 12th, stime the 13th.
    let rest = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (ticks(11) + ticks(12)) * 10_000_000 // USER_HZ = 100
}

async fn topology_exact(dir: PathBuf, runs: usize) -> anyhow::Result<()> {
    let mut cfg = StorageConfig::new(&dir);
    cfg.maintenance_interval = Duration::from_secs(24 * 3600);
    cfg.flush_age = Duration::from_secs(24 * 3600);
    let storage = Storage::open(cfg, Telemetry::new()).await?;
    let snap = storage.snapshot();
    let files = snap.files.clone();
    anyhow::ensure!(
        !files.is_empty(),
        "no span files in {}: run `lookup` first",
        dir.display()
    );
    let start = files.iter().map(|f| f.min_time).min().unwrap_or(0);
    let end = files.iter().map(|f| f.max_time).max().unwrap_or(0);
    let rows: u64 = files.iter().map(|f| f.rows).sum();
    let list: Vec<String> = files
        .iter()
        .map(|f| dir.join(&f.path).display().to_string())
        .collect();
    std::fs::write(
        dir.join("topology-files.txt"),
        format!("{start} {end}\n{}\n", list.join("\n")),
    )?;
    let mut times = Vec::new();
    let mut summary = String::new();
    for run in 0..=runs {
        let t = Instant::now();
        let edges = meshlens_query::topology::exact::edges_in(
            &storage.session(),
            start.div_euclid(1_000_000),
            end.div_euclid(1_000_000) + 1,
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let el = t.elapsed();
        if run == 0 {
            let calls: i64 = edges.iter().map(|e| e.requests).sum();
            summary = format!("{} (edge, code, flags) groups, {calls} calls", edges.len());
            continue; // warm-up
        }
        times.push(el.as_secs_f64());
    }
    times.sort_by(|a, b| a.total_cmp(b));
    println!(
        "exact recompute over {rows} spans in {} files: median {:.3} s, min {:.3} s, max {:.3} s ({runs} runs after a warm-up; {summary})",
        files.len(),
        times[times.len() / 2],
        times[0],
        times[times.len() - 1]
    );
    storage.shutdown().await?;
    Ok(())
}

/// Writes `n` spans over one hour two hours ago into DIR, flushed and
/// compacted; returns the storage, the sampled trace ids and the hour.
async fn write_lookup_set(
    n: u64,
    dir: &std::path::Path,
    queries: usize,
) -> anyhow::Result<(Arc<Storage>, Vec<TraceId>, i64)> {
    let _ = std::fs::remove_dir_all(dir);
    let mut cfg = StorageConfig::new(dir);
    cfg.maintenance_interval = Duration::from_secs(24 * 3600);
    cfg.flush_age = Duration::from_secs(24 * 3600);
    let storage = Storage::open(cfg, Telemetry::new()).await?;
    // A closed hour two hours ago, so compaction may merge it.
    let now = UnixNanos::now().0;
    let hour = 3_600_000_000_000i64;
    let hour_start = (now - 2 * hour).div_euclid(hour) * hour;
    let traces = n / 8;
    let step = hour / traces.max(1) as i64;
    let mut rng = spangen::Rng::new(7);
    let mut sample: Vec<TraceId> = Vec::new();
    let mut otlp_bytes = 0usize;
    let mut otlp_spans = 0usize;
    let started = Instant::now();
    let mut pending = Vec::new();
    let mut batch = Vec::with_capacity(8_000);
    for t in 0..traces {
        let trace = spangen::bookinfo_trace(&mut rng, UnixNanos(hour_start + t as i64 * step));
        if t % (traces / queries as u64).max(1) == 0 {
            sample.push(trace[0].trace_id);
        }
        if t < 2_000 {
            otlp_bytes += otlp::request(&trace).encoded_len();
            otlp_spans += trace.len();
        }
        batch.extend(trace);
        if batch.len() >= 8_000 {
            let s = storage.clone();
            let b = std::mem::take(&mut batch);
            pending.push(tokio::spawn(async move { s.append_spans(b).await }));
            if pending.len() >= 4 {
                for p in pending.drain(..) {
                    p.await??;
                }
            }
        }
    }
    for p in pending.drain(..) {
        p.await??;
    }
    storage.append_spans(batch).await?;
    storage.flush().await?;
    println!(
        "stored {} spans in {:.1}s",
        traces * 8,
        started.elapsed().as_secs_f64()
    );
    while storage.compact().await? > 0 {}
    let files = storage.snapshot().files;
    let rows: u64 = files.iter().map(|f| f.rows).sum();
    let bytes: u64 = files.iter().map(|f| f.bytes).sum();
    println!(
        "disk: {} files, {rows} spans, {bytes} bytes = {:.1} bytes/span (OTLP protobuf of the same spans: {:.1} bytes/span)",
        files.len(),
        bytes as f64 / rows as f64,
        otlp_bytes as f64 / otlp_spans as f64
    );
    std::fs::write(
        dir.join("lookup-ids.txt"),
        sample
            .iter()
            .map(|id| format!("{}\n", id))
            .collect::<String>(),
    )?;
    Ok((storage, sample, hour_start))
}

async fn lookup(n: u64, dir: PathBuf, queries: usize, reuse: bool) -> anyhow::Result<()> {
    let hour = 3_600_000_000_000i64;
    let ids_path = dir.join("lookup-ids.txt");
    let (storage, sample, hour_start) = if reuse {
        let mut cfg = StorageConfig::new(&dir);
        cfg.maintenance_interval = Duration::from_secs(24 * 3600);
        cfg.flush_age = Duration::from_secs(24 * 3600);
        let storage = Storage::open(cfg, Telemetry::new()).await?;
        let sample = std::fs::read_to_string(&ids_path)
            .context("--reuse needs the lookup-ids.txt of an earlier run")?
            .lines()
            .map(|l| TraceId::parse_hex(l).map(|(id, _)| id))
            .collect::<Result<Vec<_>, _>>()?;
        let files = storage.snapshot().files;
        let hour_start = files.iter().map(|f| f.partition).min().unwrap_or_default();
        println!("reusing {} files in {}", files.len(), dir.display());
        (storage, sample, hour_start)
    } else {
        write_lookup_set(n, &dir, queries).await?
    };
    let rows: u64 = storage.snapshot().files.iter().map(|f| f.rows).sum();
    let store = TraceStore::new(storage.clone());
    // Warm up (footers into the metadata cache, pages into the OS cache).
    for id in sample.iter().take(20) {
        store.traces(&[*id]).await?;
    }
    let mut lat = Vec::new();
    for id in &sample {
        let t = Instant::now();
        let found = store.traces(&[*id]).await?;
        lat.push(t.elapsed());
        anyhow::ensure!(
            found.first().is_some_and(|s| s.len() == 8),
            "trace {id} not found whole"
        );
    }
    lat.sort();
    println!(
        "trace by id over {rows} spans: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} lookups)",
        percentile(&lat, 0.5).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
        lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        lat.len()
    );
    let q = TraceQuery {
        service: Some("reviews.default".into()),
        min_duration_nanos: Some(17_000_000),
        start: UnixNanos(hour_start),
        end: UnixNanos(hour_start + hour),
        limit: 10,
        ..Default::default()
    };
    let mut search = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let found = store.search(&q).await?;
        search.push(t.elapsed());
        anyhow::ensure!(found.len() == 10, "search found {}", found.len());
    }
    search.sort();
    println!(
        "search serviceName+minDuration over 1 h ({rows} spans), limit 10: median {:.1} ms, max {:.1} ms",
        percentile(&search, 0.5).as_secs_f64() * 1e3,
        search.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
    // The worst case: no match, and nothing the statistics can prune (the
    // name sorts between names that exist), so the narrowed windows all
    // come up short and the whole hour is read at the end.
    let rare = TraceQuery {
        span_name: Some("productpage.default.svc.cluster.local:9080/none".into()),
        ..q.clone()
    };
    let mut search = Vec::new();
    let mut found = 0;
    for _ in 0..10 {
        let t = Instant::now();
        found = store.search(&rare).await?.len();
        search.push(t.elapsed());
    }
    search.sort();
    println!(
        "search serviceName+minDuration+spanName matching nothing (the whole hour is read), limit 10: {found} found, median {:.1} ms, max {:.1} ms",
        percentile(&search, 0.5).as_secs_f64() * 1e3,
        search.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
    println!("ids for the DuckDB comparison: {}", ids_path.display());
    storage.shutdown().await?;
    Ok(())
}

async fn send(
    url: String,
    seconds: u64,
    concurrency: usize,
    batch: usize,
    rate: u64,
) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let count = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let (client, url, count) = (client.clone(), url.clone(), count.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = spangen::Rng::new(1000 + w as u64);
            let per_task = rate as f64 / concurrency as f64;
            let t0 = Instant::now();
            let mut sent = 0u64;
            while Instant::now() < deadline {
                if per_task > 0.0 {
                    let due = Duration::from_secs_f64(sent as f64 / per_task);
                    if let Some(wait) = due.checked_sub(t0.elapsed()) {
                        tokio::time::sleep(wait).await;
                    }
                }
                let body = zipkin_json(&spans(&mut rng, batch, UnixNanos::now()));
                let r = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                if let Ok(r) = r
                    && r.status().as_u16() == 202
                {
                    count.fetch_add(batch as u64, Ordering::Relaxed);
                }
                sent += batch as u64;
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let n = count.load(Ordering::Relaxed);
    println!(
        "sent {n} spans acknowledged in {seconds}s = {:.0} spans/s",
        n as f64 / started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    tune_allocator();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Ingest(args) => {
            let mut rt = tokio::runtime::Builder::new_current_thread();
            rt.enable_all();
            if let Some(flush_core) = args.flush_core {
                let core = args.core;
                pin_to(core)?;
                rt.on_thread_start(move || {
                    if let Err(e) = pin_to(flush_core) {
                        eprintln!("{e}");
                    }
                });
                println!("ingest path on core {core}, flush on core {flush_core}");
            }
            rt.build()?.block_on(ingest(args))
        }
        Cmd::Decode {
            seconds,
            batch,
            keep,
            count,
        } => decode(seconds, batch, keep, count),
        Cmd::Flush { spans, runs, dir } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(flush(spans, runs, dir)),
        Cmd::Sim {
            rate,
            seconds,
            target,
        } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(sim::run(rate, seconds, target)),
        Cmd::TopologyMesh {
            dir,
            services,
            rps,
            runs,
        } => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(topology::run(dir, services, rps, runs))
            .context("topology-mesh benchmark"),
        Cmd::TopologyExact { dir, runs } => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(topology_exact(dir, runs))
            .context("topology-exact benchmark"),
        Cmd::Lookup {
            spans,
            dir,
            queries,
            reuse,
        } => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(lookup(spans, dir, queries, reuse))
            .context("lookup benchmark"),
        Cmd::Send {
            url,
            seconds,
            concurrency,
            batch,
            rate,
        } => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(send(url, seconds, concurrency, batch, rate)),
        Cmd::MetricsLoad {
            url,
            series,
            samples_per_series,
            series_per_request,
            steps_per_run,
            runs,
            concurrency,
        } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(metrics::load(metrics::LoadArgs {
                url,
                series,
                samples_per_series,
                series_per_request,
                steps_per_run,
                runs,
                concurrency,
            })),
        Cmd::MetricsWrite {
            url,
            store,
            openmetrics,
            series,
            steps,
            start_ms,
            end_now,
            samples_per_series,
            series_per_request,
            concurrency,
        } => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(metrics::write(metrics::WriteArgs {
                url,
                store,
                openmetrics,
                series,
                steps,
                start_ms,
                end_now,
                samples_per_series,
                series_per_request,
                concurrency,
            })),
        Cmd::PromqlQuery {
            targets,
            queries,
            start_ms,
            end_ms,
            step,
            runs,
        } => {
            let targets = targets
                .iter()
                .map(|t| promql::parse_target(t))
                .collect::<anyhow::Result<Vec<_>>>()?;
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(promql::run(targets, queries, start_ms, end_ms, step, runs))
        }
        Cmd::ServeTargets {
            count,
            series,
            port_base,
        } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(metrics::serve_targets(count, series, port_base)),
    }
}
