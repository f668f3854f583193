//! What each simulated sidecar exposes on `/stats/prometheus`: Istio's
//! standard metrics (both reporters) and a few raw Envoy cluster stats, in
//! the Prometheus text format, with the labels an Istio proxy gives them.

use crate::mesh::{Service, W, Workload};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

/// `istio_request_duration_milliseconds` buckets (Istio's defaults).
pub const DURATION_BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];
/// `istio_request_bytes` / `istio_response_bytes` buckets (Istio's defaults).
pub const BYTES_BUCKETS: [f64; 9] = [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reporter {
    Source,
    Destination,
}

impl Reporter {
    fn as_str(self) -> &'static str {
        match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        }
    }
}

/// One `istio_requests_total` series (per sidecar).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HttpKey {
    pub reporter: Reporter,
    pub src: W,
    /// `None`: the request never reached a workload (fault abort, circuit
    /// breaker): Istio reports the destination workload as `unknown`.
    pub dst: Option<W>,
    pub service: &'static str,
    pub code: u16,
    pub flags: &'static str,
}

#[derive(Debug, Clone, Default)]
struct Hist {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Hist {
    fn observe(&mut self, bounds: &[f64], v: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; bounds.len()];
        }
        if let Some(i) = bounds.iter().position(|b| v <= *b) {
            self.counts[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str, bounds: &[f64]) {
        let mut cum = 0;
        for (i, b) in bounds.iter().enumerate() {
            cum += self.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {cum}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

#[derive(Debug, Clone, Default)]
struct HttpSeries {
    requests: u64,
    duration: Hist,
    request_bytes: Hist,
    response_bytes: Hist,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TcpKey {
    pub reporter: Reporter,
    pub src: W,
    pub dst: W,
    pub service: &'static str,
}

#[derive(Debug, Clone, Default)]
struct TcpSeries {
    sent: u64,
    received: u64,
    opened: u64,
    closed: u64,
}

/// Envoy's per-cluster upstream stats under Istio's stat tags.
#[derive(Debug, Clone, Default)]
struct ClusterStats {
    rq_total: u64,
    by_code: BTreeMap<u16, u64>,
    retry: u64,
    timeout: u64,
    pending_overflow: u64,
}

/// One HTTP request as one reporter saw it.
#[derive(Debug, Clone, Copy)]
pub struct Observation {
    pub key: HttpKey,
    pub duration_ms: f64,
    pub request_bytes: u32,
    pub response_bytes: u32,
}

/// The counters of one sidecar.
#[derive(Debug, Default)]
pub struct SidecarStats {
    http: HashMap<HttpKey, HttpSeries>,
    tcp: HashMap<TcpKey, TcpSeries>,
    clusters: HashMap<String, ClusterStats>,
}

impl SidecarStats {
    pub fn observe(&mut self, o: Observation) {
        let s = self.http.entry(o.key).or_default();
        s.requests += 1;
        s.duration.observe(&DURATION_BUCKETS_MS, o.duration_ms);
        s.request_bytes
            .observe(&BYTES_BUCKETS, f64::from(o.request_bytes));
        s.response_bytes
            .observe(&BYTES_BUCKETS, f64::from(o.response_bytes));
    }

    pub fn tcp(&mut self, key: TcpKey, sent: u64, received: u64) {
        let s = self.tcp.entry(key).or_default();
        s.sent += sent;
        s.received += received;
        s.opened += 1;
        s.closed += 1;
    }

    /// An outbound request through `cluster` (`outbound|9080||svc...`):
    /// `attempts` upstream tries, the final code, and what went wrong.
    pub fn upstream(
        &mut self,
        cluster: &str,
        attempts: u32,
        code: u16,
        timed_out: bool,
        overflow: bool,
    ) {
        let c = match self.clusters.get_mut(cluster) {
            Some(c) => c,
            None => self.clusters.entry(cluster.to_string()).or_default(),
        };
        if overflow {
            c.pending_overflow += 1;
            return;
        }
        c.rq_total += u64::from(attempts);
        *c.by_code.entry(code).or_default() += 1;
        c.retry += u64::from(attempts.saturating_sub(1));
        if timed_out {
            c.timeout += 1;
        }
    }

    /// The `/stats/prometheus` text.
    pub fn render(&self, mesh: &[Workload]) -> String {
        let mut out = String::with_capacity(64 * 1024);
        let mut http: Vec<_> = self.http.iter().collect();
        http.sort_by_key(|(k, _)| **k);
        let labels: Vec<(String, &HttpSeries)> = http
            .into_iter()
            .map(|(k, s)| (http_labels(mesh, k), s))
            .collect();

        out.push_str("# TYPE istio_requests_total counter\n");
        for (l, s) in &labels {
            let _ = writeln!(out, "istio_requests_total{{{l}}} {}", s.requests);
        }
        for (name, pick, bounds) in [
            (
                "istio_request_duration_milliseconds",
                (|s: &HttpSeries| &s.duration) as fn(&HttpSeries) -> &Hist,
                &DURATION_BUCKETS_MS[..],
            ),
            (
                "istio_request_bytes",
                |s| &s.request_bytes,
                &BYTES_BUCKETS[..],
            ),
            (
                "istio_response_bytes",
                |s| &s.response_bytes,
                &BYTES_BUCKETS[..],
            ),
        ] {
            let _ = writeln!(out, "# TYPE {name} histogram");
            for (l, s) in &labels {
                pick(s).render(&mut out, name, l, bounds);
            }
        }

        let mut tcp: Vec<_> = self.tcp.iter().collect();
        tcp.sort_by_key(|(k, _)| **k);
        for (name, pick) in [
            (
                "istio_tcp_sent_bytes_total",
                (|s: &TcpSeries| s.sent) as fn(&TcpSeries) -> u64,
            ),
            ("istio_tcp_received_bytes_total", |s| s.received),
            ("istio_tcp_connections_opened_total", |s| s.opened),
            ("istio_tcp_connections_closed_total", |s| s.closed),
        ] {
            let _ = writeln!(out, "# TYPE {name} counter");
            for (k, s) in &tcp {
                let l = tcp_labels(mesh, k);
                let _ = writeln!(out, "{name}{{{l}}} {}", pick(s));
            }
        }

        let mut clusters: Vec<_> = self.clusters.iter().collect();
        clusters.sort_by(|a, b| a.0.cmp(b.0));
        for (name, pick) in [
            (
                "envoy_cluster_upstream_rq_total",
                (|c: &ClusterStats| c.rq_total) as fn(&ClusterStats) -> u64,
            ),
            ("envoy_cluster_upstream_rq_retry", |c| c.retry),
            ("envoy_cluster_upstream_rq_timeout", |c| c.timeout),
            ("envoy_cluster_upstream_rq_pending_overflow", |c| {
                c.pending_overflow
            }),
        ] {
            let _ = writeln!(out, "# TYPE {name} counter");
            for (cluster, c) in &clusters {
                let _ = writeln!(out, "{name}{{cluster_name=\"{cluster}\"}} {}", pick(c));
            }
        }
        out.push_str("# TYPE envoy_cluster_upstream_rq counter\n");
        for (cluster, c) in &clusters {
            for (code, n) in &c.by_code {
                let class = if *code == 0 {
                    "0xx".to_string()
                } else {
                    format!("{}xx", code / 100)
                };
                let _ = writeln!(
                    out,
                    "envoy_cluster_upstream_rq{{response_code_class=\"{class}\",response_code=\"{code}\",cluster_name=\"{cluster}\"}} {n}"
                );
            }
        }
        out
    }
}

fn peer_labels(out: &mut String, side: &str, w: &Workload) {
    let _ = write!(
        out,
        "{side}_workload=\"{}\",{side}_workload_namespace=\"{}\",{side}_principal=\"{}\",{side}_app=\"{}\",{side}_version=\"{}\",{side}_canonical_service=\"{}\",{side}_canonical_revision=\"{}\",{side}_cluster=\"Kubernetes\"",
        w.name,
        w.namespace,
        w.principal(),
        w.app,
        w.version,
        w.app,
        w.revision()
    );
}

fn unknown_peer(out: &mut String, side: &str) {
    let _ = write!(
        out,
        "{side}_workload=\"unknown\",{side}_workload_namespace=\"unknown\",{side}_principal=\"unknown\",{side}_app=\"unknown\",{side}_version=\"unknown\",{side}_canonical_service=\"unknown\",{side}_canonical_revision=\"latest\",{side}_cluster=\"unknown\""
    );
}

fn service_labels(out: &mut String, mesh: &[Workload], service: &'static str) {
    let svc: Service = mesh
        .iter()
        .map(|w| w.service)
        .find(|s| s.name == service)
        .unwrap_or(Service {
            name: service,
            namespace: "default",
            port: 80,
        });
    let _ = write!(
        out,
        ",destination_service=\"{}\",destination_service_name=\"{}\",destination_service_namespace=\"{}\"",
        svc.fqdn(),
        svc.name,
        svc.namespace
    );
}

fn http_labels(mesh: &[Workload], k: &HttpKey) -> String {
    let mut l = String::with_capacity(1024);
    let _ = write!(l, "reporter=\"{}\",", k.reporter.as_str());
    peer_labels(&mut l, "source", &mesh[k.src]);
    l.push(',');
    match k.dst {
        Some(d) => peer_labels(&mut l, "destination", &mesh[d]),
        None => unknown_peer(&mut l, "destination"),
    }
    service_labels(&mut l, mesh, k.service);
    // Istio: the destination proxy knows the connection was mTLS; the
    // source reports "unknown".
    let security = match k.reporter {
        Reporter::Destination => "mutual_tls",
        Reporter::Source => "unknown",
    };
    let _ = write!(
        l,
        ",request_protocol=\"http\",response_code=\"{}\",grpc_response_status=\"\",response_flags=\"{}\",connection_security_policy=\"{security}\"",
        k.code, k.flags
    );
    l
}

fn tcp_labels(mesh: &[Workload], k: &TcpKey) -> String {
    let mut l = String::with_capacity(1024);
    let _ = write!(l, "reporter=\"{}\",", k.reporter.as_str());
    peer_labels(&mut l, "source", &mesh[k.src]);
    l.push(',');
    peer_labels(&mut l, "destination", &mesh[k.dst]);
    service_labels(&mut l, mesh, k.service);
    let security = match k.reporter {
        Reporter::Destination => "mutual_tls",
        Reporter::Source => "unknown",
    };
    let _ = write!(
        l,
        ",request_protocol=\"tcp\",response_flags=\"-\",connection_security_policy=\"{security}\""
    );
    l
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::{DETAILS, PRODUCTPAGE, workloads};

    #[test]
    fn renders_istio_series_that_prometheus_parse_accepts_shape() {
        let mesh = workloads();
        let mut s = SidecarStats::default();
        let key = HttpKey {
            reporter: Reporter::Source,
            src: PRODUCTPAGE,
            dst: Some(DETAILS),
            service: "details",
            code: 200,
            flags: "-",
        };
        for d in [0.7, 3.0, 12.0] {
            s.observe(Observation {
                key,
                duration_ms: d,
                request_bytes: 0,
                response_bytes: 178,
            });
        }
        s.upstream(
            "outbound|9080||details.default.svc.cluster.local",
            2,
            200,
            false,
            false,
        );
        let text = s.render(&mesh);
        assert!(
            text.contains(
                "istio_requests_total{reporter=\"source\",source_workload=\"productpage-v1\""
            ),
            "{text}"
        );
        assert!(text.contains("destination_service=\"details.default.svc.cluster.local\""));
        // Cumulative buckets: 0.7 <= 1, 3 <= 5, 12 <= 25.
        assert!(text.contains("le=\"1\"} 1\n"), "{text}");
        assert!(text.contains("le=\"5\"} 2\n"));
        assert!(text.contains("le=\"25\"} 3\n"));
        assert!(text.contains("le=\"+Inf\"} 3\n"));
        assert!(text.contains(
            "envoy_cluster_upstream_rq_retry{cluster_name=\"outbound|9080||details.default.svc.cluster.local\"} 1"
        ));
        assert!(text.contains("envoy_cluster_upstream_rq_total{cluster_name=\"outbound|9080||details.default.svc.cluster.local\"} 2"));
    }
}
