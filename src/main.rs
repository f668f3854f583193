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

/// How long freed memory stays with the process before mimalloc gives it
/// back to the OS: 5 minutes rather than mimalloc's 1 s.
///
/// A flush frees the buffered spans at once (~1 GB per million) and the
/// requests of the next seconds fill the buffer again. mimalloc purges an
/// arena at one deadline set by the first free after its last purge, so
/// every page free at that moment goes, including those about to be
/// reused: with 1 s (and with 10 s) each flush cycle faulted the buffer's
/// pages in again, at 200 k spans/s ~15 % of one core in the kernel. With
/// 5 minutes a sustained run faults the peak in once and then reuses it
/// (16 M spans: 1.53 M page faults -> 0.41 M, kernel time 12.7 s -> 7.2 s);
/// an idle server still returns its memory within 5 minutes, and the peak
/// is unchanged (docs/BENCHMARKS.md, "Ingest"). `MIMALLOC_PURGE_DELAY` in
/// the environment, if set, wins.
const PURGE_DELAY_MS: std::os::raw::c_long = 300_000;

#[allow(unsafe_code)]
fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one integer option; mimalloc reads options atomically.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) }
    }
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
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            // The environment's value wins: left as mimalloc read it.
            let before = get();
            super::tune_allocator();
            assert_eq!(get(), before);
            return;
        }
        assert_eq!(get(), 1000);
        super::tune_allocator();
        assert_eq!(get(), super::PURGE_DELAY_MS);
    }
}
