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
