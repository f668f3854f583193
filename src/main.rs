//! The `meshlens` binary: parses the command line and hands over to `serve`
//! or `demo`.

mod demo;
mod serve;

use clap::{Parser, Subcommand};

/// mimalloc instead of glibc's malloc: decoding a request allocates tens of
/// small strings per span, and under glibc that alone held the bare OTLP
/// decode of Envoy-shaped spans to ~31 k spans/s on one core (~250 k with
/// mimalloc; docs/BENCHMARKS.md, "Ingest"). Built without transparent huge
/// pages (`no_thp`): with them, a quarter of ingest time went to the kernel
/// zeroing 2 MiB pages that mimalloc had just been given.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `purge_delay` option: its place in v3's `mi_option_e` (the
/// Rust bindings name only v2's options; a test checks its default).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Freed memory goes back to the OS 10 s after it is freed rather than 1 s.
/// A flush frees the buffered spans at once (~1 GB per million), and the
/// requests of the next seconds fault every page of it in again: at 200 k
/// spans/s that was ~20 % of one core's time in the kernel. With 10 s the
/// refill reuses the freed pages: page faults -40 %, kernel time -1.3 s per
/// 4 M spans, sustained ingest +8 % (median of 4 alternating pairs), peak
/// resident memory +5 % (docs/BENCHMARKS.md, "Ingest").
#[allow(unsafe_code)]
fn tune_allocator() {
    // SAFETY: sets one integer option; mimalloc reads options atomically.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 10_000) }
}

/// meshlens — one observability backend for a service mesh.
///
/// Point Envoy/Istio sidecars and OpenTelemetry SDKs at it (Zipkin on :9411,
/// OTLP on :4317 gRPC and :4318 HTTP); read traces back through the Zipkin
/// API on :9411 (Grafana's Zipkin data source works as is).
#[derive(Parser, Debug)]
#[command(name = "meshlens", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server: receivers, storage and query APIs.
    Serve(serve::ServeArgs),
    /// Run the server fed by a simulated Istio Bookinfo mesh (spans, sidecar
    /// metrics, switchable scenarios): everything meshlens does, in one command.
    Demo(demo::DemoArgs),
}

fn main() -> anyhow::Result<()> {
    tune_allocator();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MESHLENS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve::run(args)),
        Command::Demo(args) => runtime.block_on(demo::run(args)),
    }
}

#[cfg(test)]
mod tests {
    /// The option index is v3's purge delay: unset, it holds mimalloc's
    /// default for it, 1000 ms (its neighbours default to 1 and 0).
    #[test]
    #[allow(unsafe_code)]
    fn the_allocator_option_set_is_the_purge_delay() {
        // SAFETY: reads one integer option.
        let get = || unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(get(), 1000);
        }
        super::tune_allocator();
        assert_eq!(get(), 10_000);
    }
}
