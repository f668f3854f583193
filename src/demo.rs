//! `meshlens demo`: a meshlens server fed by a simulated Istio Bookinfo mesh
//! (meshlens-sim) through its real receivers and its real scrape manager.

use crate::serve::{self, Extension, Ready, ServeArgs};
use anyhow::Context;
use clap::Args;
use meshlens_sim::{Scenario, SimConfig, Simulator, Sink};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Simulated requests per second through Bookinfo's ingress gateway
    /// (fortio adds a quarter as many to httpbin).
    #[arg(long, env = "MESHLENS_DEMO_RATE", default_value_t = 20.0)]
    pub rate: f64,
    /// Scenario to start with (switch at run time with POST /api/demo/scenario):
    /// round-robin, all-v1, jason-v2, shift-50-v3, shift-100-v3, fault-delay,
    /// fault-abort, circuit-breaking, timeout, retries.
    #[arg(long, env = "MESHLENS_DEMO_SCENARIO", default_value = "round-robin")]
    pub scenario: Scenario,
    /// How often meshlens scrapes the simulated sidecars' /stats/prometheus.
    #[arg(long, env = "MESHLENS_DEMO_SCRAPE_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub scrape_interval: Duration,
}

fn local(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
    } else {
        addr
    }
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let mut serve_args = args.serve.clone();
    if !(args.rate.is_finite() && (0.0..=100_000.0).contains(&args.rate)) {
        anyhow::bail!("--rate {}: requests per second from 0 to 100000", args.rate);
    }
    if serve_args.scrape_config.is_some() {
        anyhow::bail!(
            "--scrape-config is not used by `meshlens demo`: the demo scrapes its simulated sidecars; run `meshlens serve` for your own targets"
        );
    }
    let data_dir = serve_args
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("./meshlens-demo-data"));
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    serve_args.data_dir = Some(data_dir.clone());

    let sim = Simulator::new(SimConfig {
        rate: args.rate,
        scenario: args.scenario,
        ..Default::default()
    });
    // The sidecars' stats ports are bound after meshlens's own (prepare),
    // so an ephemeral port can never take one the user asked for.
    let prepare_sim = sim.clone();
    let prepare_dir = data_dir.clone();
    let scrape_interval = args.scrape_interval;
    let prepare: serve::Prepare = Box::new(move || {
        Box::pin(async move {
            let targets = prepare_sim
                .serve_stats(IpAddr::V4(Ipv4Addr::LOCALHOST))
                .await
                .context("cannot open the simulated sidecars' stats ports")?;
            let scrape_file = prepare_dir.join("demo-scrape.yml");
            std::fs::write(
                &scrape_file,
                meshlens_sim::scrape_config_yaml(&targets, scrape_interval),
            )
            .with_context(|| format!("cannot write {}", scrape_file.display()))?;
            Ok(Some(scrape_file))
        })
    });
    let on_ready_sim = sim.clone();
    let scenario = args.scenario;
    let extension = Extension {
        router: sim.router(),
        prepare,
        on_ready: Box::new(move |ready: Ready| {
            let http = local(ready.http);
            let otlp = local(ready.otlp_http);
            let sender = on_ready_sim.spawn(Sink {
                zipkin_url: format!("http://{http}/api/v2/spans"),
                otlp_url: format!("http://{otlp}/v1/traces"),
            });
            print_banner(
                http,
                ready.otlp_grpc.port(),
                otlp.port(),
                scenario,
                &data_dir,
            );
            // The simulated mesh stops first, so nothing is sent to closed ports.
            let stop: Box<dyn FnOnce() + Send> = Box::new(move || sender.abort());
            stop
        }),
    };
    serve::run_with(serve_args, Some(extension)).await
}

fn print_banner(
    http: SocketAddr,
    grpc_port: u16,
    otlp_port: u16,
    scenario: Scenario,
    dir: &std::path::Path,
) {
    let host = if http.ip().is_loopback() {
        "localhost".to_string()
    } else {
        http.ip().to_string()
    };
    let base = format!("http://{host}:{}", http.port());
    let lines = [
        String::new(),
        "meshlens demo: a simulated Istio Bookinfo mesh (ingress gateway, productpage,".into(),
        "details, reviews v1/v2/v3, ratings; fortio -> httpbin) reports to this meshlens:".into(),
        format!(
            "Envoy Zipkin spans to {base}/api/v2/spans, ratings' SDK spans over OTLP to :{otlp_port},"
        ),
        format!(
            "sidecar metrics scraped from /stats/prometheus. Data in {}.",
            dir.display()
        ),
        String::new(),
        format!("  Web page               {base}/"),
        format!("  Topology (JSON)        {base}/api/topology?graph=versionedApp"),
        format!("  Services and RED       {base}/api/services"),
        format!("  Traces (Zipkin API)    {base}/api/v2/traces?serviceName=productpage.default"),
        format!(
            "  PromQL                 {base}/api/v1/query?query=sum(rate(istio_requests_total[1m]))"
        ),
        String::new(),
        format!("  Grafana data sources   Prometheus, Zipkin and Tempo (service graph): {base}"),
        "                         dashboards and provisioning: dashboards/README.md".into(),
        format!(
            "  Send your own spans    Zipkin {base}/api/v2/spans, OTLP gRPC :{grpc_port}, OTLP HTTP :{otlp_port}"
        ),
        String::new(),
        format!("  Scenario now: {scenario} ({}).", scenario.description()),
        "  Switch on the web page, or:".into(),
        format!("    curl -X POST {base}/api/demo/scenario -d '{{\"scenario\":\"fault-abort\"}}'"),
        format!("  one of: {}", Scenario::names()),
        String::new(),
        "Ctrl-C stops it.".into(),
    ];
    println!("{}", lines.join("\n"));
}
