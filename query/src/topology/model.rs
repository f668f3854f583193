//! The topology answer, and how per-call-path rows (from mesh metrics or
//! from spans) become nodes and edges of one graph type.

use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Which graph to draw (Kiali's graph types).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GraphType {
    Workload,
    App,
    VersionedApp,
    Service,
}

impl GraphType {
    pub fn parse(s: &str) -> Option<GraphType> {
        Some(match s {
            "workload" => GraphType::Workload,
            "app" => GraphType::App,
            "versioned_app" | "versionedApp" => GraphType::VersionedApp,
            "service" => GraphType::Service,
            _ => return None,
        })
    }
}

/// Health thresholds (Kiali's defaults): a node or edge is degraded when
/// its 5xx ratio reaches `degraded_5xx` (or 4xx `degraded_4xx`), failing
/// above `failing_5xx` (4xx: `failing_4xx`).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct HealthThresholds {
    pub degraded_5xx: f64,
    pub failing_5xx: f64,
    pub degraded_4xx: f64,
    pub failing_4xx: f64,
}

impl Default for HealthThresholds {
    fn default() -> Self {
        HealthThresholds {
            degraded_5xx: 0.001,
            failing_5xx: 0.10,
            degraded_4xx: 0.10,
            failing_4xx: 0.20,
        }
    }
}

impl HealthThresholds {
    pub fn classify(&self, rate: f64, r5: f64, r4: f64) -> &'static str {
        if rate <= 0.0 {
            return "idle";
        }
        if r5 > self.failing_5xx || r4 > self.failing_4xx {
            "failing"
        } else if r5 >= self.degraded_5xx || r4 >= self.degraded_4xx {
            "degraded"
        } else {
            "healthy"
        }
    }
}

/// One end of a call as the data names it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ident {
    pub namespace: String,
    pub workload: String,
    pub app: String,
    pub version: String,
    pub service: String,
    /// Traffic from outside the mesh (`unknown`) or an untraced root (`user`).
    pub unknown: bool,
    /// A peer only named by the other side (uninstrumented, database, broker).
    pub virtual_node: bool,
}

fn known(s: &str) -> Option<&str> {
    (!s.is_empty() && s != "unknown").then_some(s)
}

/// A node of the graph an [`Ident`] maps to.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeRef {
    pub id: String,
    pub name: String,
    pub node_type: &'static str,
    pub ident: Ident,
}

impl Ident {
    /// The node this end is in a graph of type `g`. `source_side` matters for
    /// the service graph: a caller is shown as its app's service.
    pub fn node(&self, g: GraphType, source_side: bool) -> NodeRef {
        let ns = self.namespace.as_str();
        // Ids read `<namespace>/<kind>/<name>`; without a namespace `<kind>/<name>`.
        let pre = if ns.is_empty() {
            String::new()
        } else {
            format!("{ns}/")
        };
        let mk = |id: String, name: &str, t: &'static str, ident: Ident| NodeRef {
            id,
            name: name.to_string(),
            node_type: t,
            ident,
        };
        let unknown = || {
            mk(
                "unknown".into(),
                "unknown",
                "unknown",
                Ident {
                    unknown: true,
                    ..Default::default()
                },
            )
        };
        if self.unknown {
            return unknown();
        }
        if self.virtual_node {
            let name = known(&self.service)
                .or(known(&self.app))
                .unwrap_or("unknown");
            return mk(
                format!("virtual/{name}"),
                name,
                "virtual",
                Ident {
                    service: name.into(),
                    virtual_node: true,
                    ..Default::default()
                },
            );
        }
        let service_node = |svc: &str| {
            mk(
                format!("{pre}service/{svc}"),
                svc,
                "service",
                Ident {
                    namespace: ns.into(),
                    service: svc.into(),
                    ..Default::default()
                },
            )
        };
        let app_node = |app: &str, version: Option<&str>| {
            let id = match version {
                Some(v) => format!("{pre}app/{app}/{v}"),
                None => format!("{pre}app/{app}"),
            };
            let t = if version.is_some() {
                "versioned_app"
            } else {
                "app"
            };
            mk(
                id,
                app,
                t,
                Ident {
                    namespace: ns.into(),
                    app: app.into(),
                    version: version.unwrap_or("").into(),
                    ..Default::default()
                },
            )
        };
        let workload_node = |w: &str| {
            mk(
                format!("{pre}workload/{w}"),
                w,
                "workload",
                Ident {
                    namespace: ns.into(),
                    workload: w.into(),
                    app: self.app.clone(),
                    version: self.version.clone(),
                    ..Default::default()
                },
            )
        };
        let fallback = || {
            if let Some(w) = known(&self.workload) {
                workload_node(w)
            } else if let Some(s) = known(&self.service) {
                service_node(s)
            } else if let Some(a) = known(&self.app) {
                app_node(a, None)
            } else {
                unknown()
            }
        };
        match g {
            GraphType::Workload => {
                if known(&self.workload).is_some() {
                    fallback()
                } else if let Some(s) = known(&self.service) {
                    service_node(s)
                } else {
                    fallback()
                }
            }
            // A destination no workload answered (UO, NR) has no app: its service.
            GraphType::App | GraphType::VersionedApp => match known(&self.app) {
                Some(a) => app_node(
                    a,
                    (g == GraphType::VersionedApp)
                        .then(|| known(&self.version))
                        .flatten(),
                ),
                None => match known(&self.service) {
                    Some(s) => service_node(s),
                    None => fallback(),
                },
            },
            GraphType::Service => {
                let svc = if source_side {
                    known(&self.app).or(known(&self.service))
                } else {
                    known(&self.service).or(known(&self.app))
                };
                match svc {
                    Some(s) => service_node(s),
                    None => fallback(),
                }
            }
        }
    }
}

/// One call path with one response code / flags combination.
#[derive(Clone, Debug, Default)]
pub struct Row {
    pub src: Ident,
    pub dst: Ident,
    pub protocol: String,
    pub code: String,
    pub flags: String,
    /// Requests per second over the window (PromQL `rate`).
    pub rate: f64,
    /// Requests in the window (counted from samples, not extrapolated).
    pub requests: f64,
    /// Failed requests per second when the source has its own notion
    /// (spans: error status or tag); else derived from 5xx codes.
    pub failed_rate: Option<f64>,
    /// Rate over the last minute, to tell idle edges.
    pub recent_rate: Option<f64>,
    /// Counts toward the edge's rate and requests.
    pub traffic: bool,
    /// Counts toward the response-code breakdown (codes, flags, 4xx/5xx).
    pub breakdown: bool,
}

impl Row {
    /// A row that is both traffic and breakdown (mesh metrics).
    pub fn full() -> Row {
        Row {
            traffic: true,
            breakdown: true,
            ..Default::default()
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Response {
    pub code: String,
    pub flags: String,
    pub rate: f64,
    pub requests: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct EdgeFlags {
    /// UO seen (circuit breaker / pending overflow).
    pub circuit_breaker: bool,
    /// FI or DI seen (fault injection).
    pub fault_injection: bool,
    /// URX seen, or retries counted.
    pub retries: bool,
    /// UT seen (request timeout).
    pub timeouts: bool,
    /// NR seen (no route).
    pub no_route: bool,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Tcp {
    pub sent_bytes_per_second: f64,
    pub received_bytes_per_second: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Edge {
    pub id: String,
    pub source: String,
    pub target: String,
    pub protocol: String,
    /// Requests per second over the window.
    pub rate: f64,
    /// Requests in the window (from samples, not extrapolated).
    pub requests: f64,
    /// This edge's share of its source node's outgoing requests (0..1).
    pub share: f64,
    /// 5xx (or failed) requests / requests.
    pub error_ratio: f64,
    pub error_ratio_4xx: f64,
    /// Milliseconds.
    pub latency_ms: Latency,
    pub responses: Vec<Response>,
    pub flags: EdgeFlags,
    /// Share of requests over mutual TLS, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtls_share: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp: Option<Tcp>,
    pub health: &'static str,
    /// Traffic earlier in the window but none in its last minute (or none at all).
    pub idle: bool,
    /// Where the figures came from: `mesh` (Istio or Envoy metrics) or `spans`.
    pub figures_from: &'static str,
    /// The PromQL reproducing each figure.
    pub queries: BTreeMap<&'static str, String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Traffic {
    pub rate: f64,
    pub error_ratio: f64,
    pub error_ratio_4xx: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct NodeFlags {
    pub circuit_breaker: bool,
    pub fault_injection: bool,
    pub mtls: bool,
    #[serde(rename = "virtual")]
    pub virtual_node: bool,
    /// No inbound edges: an entry point (ingress gateway, client, root).
    pub root: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Node {
    pub id: String,
    pub name: String,
    pub node_type: &'static str,
    pub namespace: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub app: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub version: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub workload: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub service: String,
    pub inbound: Traffic,
    pub outbound: Traffic,
    pub health: &'static str,
    pub flags: NodeFlags,
    /// `mesh`, `spans` or both.
    pub seen_in: BTreeSet<&'static str>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Topology {
    /// The source asked for.
    pub source: &'static str,
    pub graph: GraphType,
    /// Seconds since the epoch.
    pub start: f64,
    pub end: f64,
    pub window_seconds: f64,
    /// Which mesh metrics were found: `istio`, `envoy` or none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mesh_metrics: Option<&'static str>,
    pub exact: bool,
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
    pub warnings: Vec<String>,
}

/// Per-edge extras a source computes by the edge's node ids.
#[derive(Default)]
pub struct Extras {
    pub latency: HashMap<(String, String), Latency>,
    pub mtls: HashMap<(String, String), f64>,
    pub tcp: HashMap<(String, String), Tcp>,
    /// Flags known from counters rather than response flags.
    pub flags: HashMap<(String, String), EdgeFlags>,
    /// Node ids with fault injection seen on their inbound side.
    pub fault_nodes: BTreeSet<String>,
}

/// A PromQL query text for an edge figure, given the edge's node refs.
pub type QueryFn<'a> = dyn Fn(&NodeRef, &NodeRef) -> BTreeMap<&'static str, String> + 'a;

/// Builds nodes and edges of graph type `g` from rows.
pub fn build(
    rows: &[Row],
    g: GraphType,
    figures_from: &'static str,
    extras: &Extras,
    queries: &QueryFn<'_>,
    th: &HealthThresholds,
) -> (Vec<Node>, Vec<Edge>) {
    struct Acc {
        src: NodeRef,
        dst: NodeRef,
        protocol: BTreeSet<String>,
        rate: f64,
        requests: f64,
        r5: f64,
        r4: f64,
        failed: Option<f64>,
        recent: Option<f64>,
        responses: BTreeMap<(String, String), (f64, f64)>,
        flags: EdgeFlags,
    }
    let mut edges: BTreeMap<(String, String), Acc> = BTreeMap::new();
    let mut nodes: BTreeMap<String, NodeRef> = BTreeMap::new();
    for r in rows {
        let s = r.src.node(g, true);
        let d = r.dst.node(g, false);
        nodes.entry(s.id.clone()).or_insert_with(|| s.clone());
        nodes.entry(d.id.clone()).or_insert_with(|| d.clone());
        let a = edges
            .entry((s.id.clone(), d.id.clone()))
            .or_insert_with(|| Acc {
                src: s.clone(),
                dst: d.clone(),
                protocol: BTreeSet::new(),
                rate: 0.0,
                requests: 0.0,
                r5: 0.0,
                r4: 0.0,
                failed: None,
                recent: None,
                responses: BTreeMap::new(),
                flags: EdgeFlags::default(),
            });
        if !r.protocol.is_empty() {
            a.protocol.insert(r.protocol.clone());
        }
        if let Some(f) = r.failed_rate {
            *a.failed.get_or_insert(0.0) += f;
        }
        if r.traffic {
            a.rate += r.rate;
            a.requests += r.requests;
            if let Some(x) = r.recent_rate {
                *a.recent.get_or_insert(0.0) += x;
            }
        }
        if !r.breakdown {
            continue;
        }
        if r.code.starts_with('5') {
            a.r5 += r.rate;
        } else if r.code.starts_with('4') {
            a.r4 += r.rate;
        }
        let e = a
            .responses
            .entry((r.code.clone(), r.flags.clone()))
            .or_insert((0.0, 0.0));
        e.0 += r.rate;
        e.1 += r.requests;
        for f in r.flags.split(',').map(str::trim) {
            match f {
                "UO" => a.flags.circuit_breaker = true,
                "FI" | "DI" => a.flags.fault_injection = true,
                "URX" => a.flags.retries = true,
                "UT" => a.flags.timeouts = true,
                "NR" => a.flags.no_route = true,
                _ => {}
            }
        }
    }
    // Outgoing totals per source node, for the share.
    let mut out_total: HashMap<String, f64> = HashMap::new();
    for ((s, _), a) in &edges {
        *out_total.entry(s.clone()).or_default() += a.rate;
    }
    let ratio = |num: f64, den: f64| if den > 0.0 { num / den } else { 0.0 };
    let mut out_edges = Vec::new();
    #[derive(Default)]
    struct NodeAcc {
        in_rate: f64,
        in_5: f64,
        in_4: f64,
        out_rate: f64,
        out_5: f64,
        out_4: f64,
        inbound: bool,
        cb: bool,
        fi: bool,
        mtls: bool,
    }
    let mut nacc: HashMap<String, NodeAcc> = HashMap::new();
    for ((s, d), a) in edges {
        let key = (s.clone(), d.clone());
        let err5 = a.failed.unwrap_or(a.r5);
        let mut flags = a.flags;
        if let Some(f) = extras.flags.get(&key) {
            flags.circuit_breaker |= f.circuit_breaker;
            flags.fault_injection |= f.fault_injection;
            flags.retries |= f.retries;
            flags.timeouts |= f.timeouts;
            flags.no_route |= f.no_route;
        }
        if extras.fault_nodes.contains(&d) && err5 > 0.0 {
            flags.fault_injection = true;
        }
        let r5 = ratio(err5, a.rate);
        let r4 = ratio(a.r4, a.rate);
        let idle = a.rate <= 0.0 || a.recent.is_some_and(|x| x <= 0.0);
        let health = if idle {
            "idle"
        } else {
            th.classify(a.rate, r5, r4)
        };
        let mtls = extras.mtls.get(&key).copied();
        {
            let n = nacc.entry(d.clone()).or_default();
            n.in_rate += a.rate;
            n.in_5 += err5;
            n.in_4 += a.r4;
            n.inbound = true;
            n.cb |= flags.circuit_breaker;
            n.fi |= flags.fault_injection;
            n.mtls |= mtls.is_some_and(|m| m > 0.0);
        }
        {
            let n = nacc.entry(s.clone()).or_default();
            n.out_rate += a.rate;
            n.out_5 += err5;
            n.out_4 += a.r4;
        }
        let mut responses: Vec<Response> = a
            .responses
            .into_iter()
            .map(|((code, flags), (rate, requests))| Response {
                code,
                flags,
                rate,
                requests,
            })
            .collect();
        responses.sort_by(|x, y| y.rate.total_cmp(&x.rate).then(x.code.cmp(&y.code)));
        out_edges.push(Edge {
            id: format!("{s}->{d}"),
            share: ratio(a.rate, out_total.get(&s).copied().unwrap_or(0.0)),
            source: s,
            target: d,
            protocol: a.protocol.into_iter().collect::<Vec<_>>().join(","),
            rate: a.rate,
            requests: a.requests,
            error_ratio: r5,
            error_ratio_4xx: r4,
            latency_ms: extras.latency.get(&key).cloned().unwrap_or_default(),
            responses,
            flags,
            mtls_share: mtls,
            tcp: extras.tcp.get(&key).cloned(),
            health,
            idle,
            figures_from,
            queries: queries(&a.src, &a.dst),
        });
    }
    let out_nodes = nodes
        .into_values()
        .map(|n| {
            let a = nacc.remove(&n.id).unwrap_or_default();
            let inbound = Traffic {
                rate: a.in_rate,
                error_ratio: ratio(a.in_5, a.in_rate),
                error_ratio_4xx: ratio(a.in_4, a.in_rate),
            };
            let outbound = Traffic {
                rate: a.out_rate,
                error_ratio: ratio(a.out_5, a.out_rate),
                error_ratio_4xx: ratio(a.out_4, a.out_rate),
            };
            // Health from inbound traffic; an entry point by what it sends.
            let basis = if a.inbound { &inbound } else { &outbound };
            let health = th.classify(basis.rate, basis.error_ratio, basis.error_ratio_4xx);
            Node {
                name: n.name.clone(),
                node_type: n.node_type,
                namespace: n.ident.namespace.clone(),
                app: n.ident.app.clone(),
                version: n.ident.version.clone(),
                workload: n.ident.workload.clone(),
                service: n.ident.service.clone(),
                inbound,
                outbound,
                health,
                flags: NodeFlags {
                    circuit_breaker: a.cb,
                    fault_injection: a.fi || extras.fault_nodes.contains(&n.id),
                    mtls: a.mtls,
                    virtual_node: n.node_type == "virtual",
                    root: !a.inbound,
                },
                seen_in: [figures_from].into_iter().collect(),
                id: n.id,
            }
        })
        .collect();
    (out_nodes, out_edges)
}

/// Merges a spans graph into a mesh graph: edges both describe keep the
/// mesh figures; edges and nodes only spans see are added.
pub fn merge(
    mesh: (Vec<Node>, Vec<Edge>),
    spans: (Vec<Node>, Vec<Edge>),
) -> (Vec<Node>, Vec<Edge>) {
    let (mut nodes, mut edges) = mesh;
    let mut index: HashMap<String, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.clone(), i))
        .collect();
    for n in spans.0 {
        match index.get(&n.id) {
            Some(&i) => {
                nodes[i].seen_in.insert("spans");
            }
            None => {
                index.insert(n.id.clone(), nodes.len());
                nodes.push(n);
            }
        }
    }
    let have: BTreeSet<String> = edges.iter().map(|e| e.id.clone()).collect();
    for e in spans.1 {
        if !have.contains(&e.id) {
            edges.push(e);
        }
    }
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    edges.sort_by(|a, b| a.id.cmp(&b.id));
    (nodes, edges)
}
