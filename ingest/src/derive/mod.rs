//! Signals derived from spans as they arrive: span metrics and service-graph
//! edges, written into the sample store as Prometheus series with the names
//! Grafana's Tempo data source queries (see ../shared/DESIGN.md section 4),
//! with exemplars pointing at sampled traces.
//!
//! - **Span metrics**: `traces_spanmetrics_calls_total` and
//!   `traces_spanmetrics_latency_{bucket,sum,count}` by `service`,
//!   `span_name`, `span_kind`, `status_code` and the configured dimensions.
//! - **Service graph**: a client (or producer) half with span id X pairs with
//!   the server (or consumer) half whose parent is X (OpenTelemetry, Tempo),
//!   or whose own id is X when it is a Zipkin `shared` span (Envoy). A half
//!   waits `wait` for the other; then it becomes an edge to or from a virtual
//!   node when the span names its peer, else it is counted in
//!   `traces_service_graph_unpaired_spans_total`. A root server span is an
//!   edge from `user`. When `max_pending` halves wait, new ones are dropped
//!   and counted in `traces_service_graph_dropped_spans_total`.
//! - `meshlens_service_graph_responses_total` adds, per edge, the response
//!   code and Envoy response flags (both halves' flags) that the topology
//!   needs and Tempo's series do not carry.
//!
//! Counts are multiplied by the span's sampling multiplier (see
//! [`span_info::multiplier`]). Series carry the time of the tick that wrote
//! them (like a scrape), not the spans' times; spans that ended more than
//! `max_span_age` before they arrived are not derived (backfills and WAL
//! replays would otherwise count as current traffic). Counters live in
//! memory: a restart resets them, which `rate()` handles as a counter reset.

pub mod series;
pub mod span_info;
#[cfg(test)]
mod tests;

use meshlens_storage::Telemetry;
use meshlens_storage::model::{Span, SpanId, SpanKind, StatusCode, TraceId};
use meshlens_storage::samples::{
    Exemplar, Labels, MetricMetadata, MetricType, SampleBatch, SampleStore,
};
use meshlens_storage::span_view::{SpanColumns, SpanView};
use parking_lot::Mutex;
use series::{Counter, Emitted, Histogram, RawExemplar, Table};
use std::collections::{HashMap, VecDeque};
use std::fmt::Write;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Tempo's default span-metrics latency buckets (seconds).
pub const SPAN_BUCKETS: &[f64] = &[
    0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096, 8.192,
    16.384,
];
/// Service-graph latency buckets (seconds): Istio's request-duration
/// buckets. Tempo's default (0.1 .. 12.8 s) puts every sub-100 ms mesh call
/// in its first bucket, so its p50 of a 1 ms call reads 50 ms.
pub const GRAPH_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// An extra label taken from the first of several span (then resource)
/// attributes, e.g. `version=istio.canonical_revision|service.version`.
#[derive(Clone, Debug, PartialEq)]
pub struct Dimension {
    pub label: String,
    pub keys: Vec<String>,
}

impl Dimension {
    /// Parses `label=key1|key2` (or just `key`, labelled with `.` -> `_`).
    pub fn parse(s: &str) -> Result<Dimension, String> {
        let (label, keys) = match s.split_once('=') {
            Some((l, k)) => (l.trim().to_string(), k),
            None => (s.trim().replace(['.', '-', '/'], "_"), s),
        };
        let keys: Vec<String> = keys
            .split('|')
            .map(|k| k.trim().to_string())
            .filter(|k| !k.is_empty())
            .collect();
        let valid = !label.is_empty()
            && label
                .chars()
                .enumerate()
                .all(|(i, c)| c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()));
        if !valid || keys.is_empty() {
            return Err(format!(
                "dimension {s:?}: expected LABEL=ATTRIBUTE[|ATTRIBUTE...] with a Prometheus label name"
            ));
        }
        if matches!(
            label.as_str(),
            "service"
                | "span_name"
                | "span_kind"
                | "status_code"
                | "client"
                | "server"
                | "connection_type"
                | "le"
        ) {
            return Err(format!(
                "dimension {s:?}: label {label:?} is already used by the derived series"
            ));
        }
        Ok(Dimension { label, keys })
    }
}

/// Derivation settings; the binary fills them from flags.
#[derive(Clone, Debug)]
pub struct DeriveConfig {
    /// How often the series are written (a scrape interval).
    pub interval: Duration,
    /// How long a half of a call waits for the other half.
    pub wait: Duration,
    /// Most halves waiting at once; more are dropped (and counted).
    pub max_pending: usize,
    /// Series not updated for this long get a stale marker and are dropped.
    pub stale_after: Duration,
    /// Spans that ended longer ago than this when they arrived are not derived.
    pub max_span_age: Duration,
    /// Extra labels on span metrics (`<label>`) and edges (`client_<label>`,
    /// `server_<label>`).
    pub dimensions: Vec<Dimension>,
    pub span_buckets: Arc<[f64]>,
    pub graph_buckets: Arc<[f64]>,
    /// Sampling probability per service name (0 < p <= 1).
    pub sampling: HashMap<String, f64>,
}

impl Default for DeriveConfig {
    fn default() -> Self {
        DeriveConfig {
            interval: Duration::from_secs(15),
            wait: Duration::from_secs(10),
            max_pending: 100_000,
            stale_after: Duration::from_secs(15 * 60),
            max_span_age: Duration::from_secs(5 * 60),
            dimensions: default_dimensions(),
            span_buckets: Arc::from(SPAN_BUCKETS),
            graph_buckets: Arc::from(GRAPH_BUCKETS),
            sampling: HashMap::new(),
        }
    }
}

/// `version` (Istio's canonical revision, or the OTel service version) and
/// `namespace` (Istio's, or the OTel service/Kubernetes namespace).
pub fn default_dimensions() -> Vec<Dimension> {
    vec![
        Dimension {
            label: "version".into(),
            keys: vec!["istio.canonical_revision".into(), "service.version".into()],
        },
        Dimension {
            label: "namespace".into(),
            keys: vec![
                "istio.namespace".into(),
                "service.namespace".into(),
                "k8s.namespace.name".into(),
            ],
        },
    ]
}

pub const CALLS: &str = "traces_spanmetrics_calls_total";
pub const LATENCY: &str = "traces_spanmetrics_latency";
pub const EDGE_TOTAL: &str = "traces_service_graph_request_total";
pub const EDGE_FAILED: &str = "traces_service_graph_request_failed_total";
pub const EDGE_SERVER: &str = "traces_service_graph_request_server_seconds";
pub const EDGE_CLIENT: &str = "traces_service_graph_request_client_seconds";
pub const EDGE_UNPAIRED: &str = "traces_service_graph_unpaired_spans_total";
pub const EDGE_DROPPED: &str = "traces_service_graph_dropped_spans_total";
pub const EDGE_RESPONSES: &str = "meshlens_service_graph_responses_total";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One half of a call, what an edge needs of it.
#[derive(Clone, Debug)]
struct Half {
    service: String,
    dims: Vec<String>,
    seconds: Option<f64>,
    failed: bool,
    code: Option<u16>,
    flags: Option<String>,
    peer: Option<(String, &'static str)>,
    messaging: bool,
    ids: SpanIds,
    mult: f64,
}

/// What an exemplar names of a span.
#[derive(Clone, Copy, Debug)]
struct SpanIds {
    trace_id: TraceId,
    trace_64: bool,
    span_id: SpanId,
}

impl SpanIds {
    fn of(s: &impl SpanView) -> SpanIds {
        SpanIds {
            trace_id: s.trace_id(),
            trace_64: s.trace_id_64(),
            span_id: s.span_id(),
        }
    }
}

/// What both derivations read from a span, computed once.
struct Facts {
    failed: bool,
    mult: f64,
    dims: Vec<String>,
}

struct Pending {
    client: Option<Half>,
    server: Option<Half>,
    deadline_ms: i64,
}

struct SpanSeries {
    calls: Counter,
    latency: Histogram,
}

impl series::Emit for SpanSeries {
    fn emit(&mut self, ts: i64, zero_at: Option<i64>, out: &mut Emitted) {
        self.calls.emit(ts, zero_at, out);
        self.latency.emit(ts, zero_at, out);
    }
    fn emit_stale(&self, ts: i64, out: &mut Emitted) {
        self.calls.emit_stale(ts, out);
        self.latency.emit_stale(ts, out);
    }
}

struct EdgeSeries {
    total: Counter,
    failed: Counter,
    server: Histogram,
    client: Histogram,
}

impl series::Emit for EdgeSeries {
    fn emit(&mut self, ts: i64, zero_at: Option<i64>, out: &mut Emitted) {
        self.total.emit(ts, zero_at, out);
        self.failed.emit(ts, zero_at, out);
        self.server.emit(ts, zero_at, out);
        self.client.emit(ts, zero_at, out);
    }
    fn emit_stale(&self, ts: i64, out: &mut Emitted) {
        self.total.emit_stale(ts, out);
        self.failed.emit_stale(ts, out);
        self.server.emit_stale(ts, out);
        self.client.emit_stale(ts, out);
    }
}

#[derive(Default)]
struct State {
    spans: Table<SpanSeries>,
    edges: Table<EdgeSeries>,
    responses: Table<Counter>,
    losses: Table<Counter>,
    pending: HashMap<(TraceId, SpanId), Pending, foldhash::fast::RandomState>,
    queue: VecDeque<(i64, (TraceId, SpanId))>,
    prev_tick: Option<i64>,
    key: String,
}

/// Derives span metrics and service-graph edges. Cheap to share.
pub struct Deriver {
    cfg: DeriveConfig,
    state: Mutex<State>,
    telemetry: Option<Telemetry>,
}

fn exemplar(ids: &SpanIds, value: f64, ts: i64) -> RawExemplar {
    RawExemplar {
        trace_id: ids.trace_id,
        trace_64: ids.trace_64,
        span_id: ids.span_id,
        value,
        timestamp_ms: ts,
    }
}

fn kind_label(k: SpanKind) -> &'static str {
    k.otel_name()
}

fn status_label(s: &impl SpanView, failed: bool) -> &'static str {
    if failed {
        "STATUS_CODE_ERROR"
    } else if s.status_code() == StatusCode::Ok {
        "STATUS_CODE_OK"
    } else {
        "STATUS_CODE_UNSET"
    }
}

impl Deriver {
    pub fn new(cfg: DeriveConfig, telemetry: Option<Telemetry>) -> Arc<Deriver> {
        if let Some(t) = &telemetry {
            t.describe(
                "meshlens_derive_spans_total",
                "counter",
                "Spans seen by span-metrics and service-graph derivation, by outcome (derived, too_old).",
            );
            t.describe(
                "meshlens_derive_pending_halves",
                "gauge",
                "Halves of calls waiting for their other half.",
            );
        }
        Arc::new(Deriver {
            cfg,
            state: Mutex::new(State::default()),
            telemetry,
        })
    }

    pub fn config(&self) -> &DeriveConfig {
        &self.cfg
    }

    /// Derives from spans that were just stored.
    pub fn observe(&self, spans: &[Span]) {
        self.observe_at(spans, now_ms());
    }

    /// [`Deriver::observe`] for spans appended as a batch of the `spans`
    /// table, read in place ([`SpanColumns`]).
    pub fn observe_batch(&self, batch: &arrow::record_batch::RecordBatch) {
        self.observe_batch_at(batch, now_ms());
    }

    /// [`Deriver::observe_batch`] at a given wall-clock time (tests).
    pub fn observe_batch_at(&self, batch: &arrow::record_batch::RecordBatch, now: i64) {
        match SpanColumns::new(batch) {
            Ok(cols) => self.observe_views(cols.rows(), now),
            Err(e) => tracing::error!(error = %e, "derivation could not read a span batch"),
        }
    }

    /// [`Deriver::observe`] at a given wall-clock time (tests).
    pub fn observe_at(&self, spans: &[Span], now: i64) {
        self.observe_views(spans.iter(), now)
    }

    fn observe_views<S: SpanView>(&self, spans: impl Iterator<Item = S>, now: i64) {
        let max_age_ns = self.cfg.max_span_age.as_nanos() as i64;
        let now_ns = now.saturating_mul(1_000_000);
        let (mut seen, mut too_old) = (0usize, 0usize);
        let mut st = self.state.lock();
        let st = &mut *st;
        self.expire(st, now);
        for s in spans {
            seen += 1;
            if let Some(end) = s.end()
                && now_ns.saturating_sub(end.0) > max_age_ns
            {
                too_old += 1;
                continue;
            }
            let facts = Facts {
                failed: span_info::failed(&s),
                mult: span_info::multiplier(&s, &self.cfg),
                dims: self.dims(&s),
            };
            self.span_metrics(st, &s, &facts, now);
            self.service_graph(st, &s, facts, now);
        }
        if let Some(t) = &self.telemetry {
            t.inc(
                "meshlens_derive_spans_total",
                &[("outcome", "derived")],
                (seen - too_old) as f64,
            );
            if too_old > 0 {
                t.inc(
                    "meshlens_derive_spans_total",
                    &[("outcome", "too_old")],
                    too_old as f64,
                );
            }
        }
    }

    fn dims(&self, s: &impl SpanView) -> Vec<String> {
        self.cfg
            .dimensions
            .iter()
            .map(|d| {
                d.keys
                    .iter()
                    .find_map(|k| span_info::attr(s, k))
                    .unwrap_or_default()
            })
            .collect()
    }

    fn span_metrics(&self, st: &mut State, s: &impl SpanView, facts: &Facts, now: i64) {
        let (failed, mult, dims) = (facts.failed, facts.mult, facts.dims.as_slice());
        let service = s.service_name();
        let kind = kind_label(s.kind());
        let status = status_label(s, failed);
        st.key.clear();
        let _ = write!(st.key, "{service}\0{}\0{kind}\0{status}", s.name());
        for d in dims {
            st.key.push('\0');
            st.key.push_str(d);
        }
        let cfg = &self.cfg;
        let entry = st.spans.get_or_insert(&st.key, now, || {
            let mut base: Vec<(String, String)> = vec![
                ("service".into(), service.to_string()),
                ("span_name".into(), s.name().to_string()),
                ("span_kind".into(), kind.into()),
                ("status_code".into(), status.into()),
            ];
            for (d, v) in cfg.dimensions.iter().zip(dims) {
                base.push((d.label.clone(), v.clone()));
            }
            let mut calls = base.clone();
            calls.push(("__name__".into(), CALLS.into()));
            SpanSeries {
                calls: Counter::new(Labels::new(calls).unwrap_or_default()),
                latency: Histogram::new(LATENCY, &base, cfg.span_buckets.clone()),
            }
        });
        let ids = SpanIds::of(s);
        entry.calls.add(mult, Some(exemplar(&ids, mult, now)));
        if let Some(d) = s.duration_nanos() {
            let secs = d as f64 / 1e9;
            entry
                .latency
                .observe(secs, mult, Some(exemplar(&ids, secs, now)));
        }
    }

    /// `with_peer`: also find the peer an unpaired half would be an edge to.
    fn half(&self, s: &impl SpanView, facts: Facts, with_peer: bool) -> Half {
        Half {
            service: s.service_name().to_string(),
            dims: facts.dims,
            seconds: s.duration_nanos().map(|d| d as f64 / 1e9),
            failed: facts.failed,
            code: span_info::http_status(s),
            flags: span_info::response_flags(s).map(str::to_string),
            peer: match s.kind() {
                _ if !with_peer => None,
                SpanKind::Client | SpanKind::Producer => span_info::client_peer(s),
                _ => span_info::server_peer(s),
            },
            messaging: matches!(s.kind(), SpanKind::Producer | SpanKind::Consumer),
            ids: SpanIds::of(s),
            mult: facts.mult,
        }
    }

    fn service_graph(&self, st: &mut State, s: &impl SpanView, facts: Facts, now: i64) {
        if s.service_name().is_empty() {
            return;
        }
        let (is_client, key) = match s.kind() {
            SpanKind::Client | SpanKind::Producer => (true, (s.trace_id(), s.span_id())),
            SpanKind::Server | SpanKind::Consumer => {
                if s.shared() {
                    (false, (s.trace_id(), s.span_id()))
                } else if let Some(p) = s.parent_span_id() {
                    (false, (s.trace_id(), p))
                } else {
                    // A root server span: nobody instrumented called it.
                    let h = self.half(s, facts, true);
                    let (peer, conn) = h
                        .peer
                        .clone()
                        .unwrap_or_else(|| ("user".to_string(), "virtual_node"));
                    self.edge(st, None, Some(&h), Some((&peer, conn)), now);
                    return;
                }
            }
            _ => return,
        };
        if let Some(p) = st.pending.get_mut(&key) {
            let slot = if is_client {
                &mut p.client
            } else {
                &mut p.server
            };
            if slot.is_some() {
                // The same half reported twice: counted once.
                return;
            }
            // Completes the pair: no peer needed.
            *slot = Some(self.half(s, facts, false));
            if p.client.is_some()
                && p.server.is_some()
                && let Some(p) = st.pending.remove(&key)
            {
                let (c, sv) = (p.client, p.server);
                self.edge(st, c.as_ref(), sv.as_ref(), None, now);
            }
            return;
        }
        if st.pending.len() >= self.cfg.max_pending {
            let side = if is_client { "client" } else { "server" };
            self.loss(st, EDGE_DROPPED, side, s.service_name(), 1.0, now);
            return;
        }
        let h = self.half(s, facts, true);
        let deadline = now + self.cfg.wait.as_millis() as i64;
        let (client, server) = if is_client {
            (Some(h), None)
        } else {
            (None, Some(h))
        };
        st.pending.insert(
            key,
            Pending {
                client,
                server,
                deadline_ms: deadline,
            },
        );
        st.queue.push_back((deadline, key));
    }

    /// Halves whose wait is over become virtual-node edges or unpaired counts.
    fn expire(&self, st: &mut State, now: i64) {
        while let Some(&(deadline, key)) = st.queue.front() {
            if deadline > now {
                break;
            }
            st.queue.pop_front();
            let due = st.pending.get(&key).is_some_and(|p| p.deadline_ms <= now);
            if !due {
                continue;
            }
            let Some(p) = st.pending.remove(&key) else {
                continue;
            };
            match (p.client, p.server) {
                (Some(c), None) => match c.peer.clone() {
                    Some((peer, conn)) => self.edge(st, Some(&c), None, Some((&peer, conn)), now),
                    None => self.loss(st, EDGE_UNPAIRED, "client", &c.service, 1.0, now),
                },
                (None, Some(sv)) => match sv.peer.clone() {
                    Some((peer, conn)) => self.edge(st, None, Some(&sv), Some((&peer, conn)), now),
                    None => self.loss(st, EDGE_UNPAIRED, "server", &sv.service, 1.0, now),
                },
                _ => {}
            }
        }
        if let Some(t) = &self.telemetry {
            t.set(
                "meshlens_derive_pending_halves",
                &[],
                st.pending.len() as f64,
            );
        }
    }

    fn loss(
        &self,
        st: &mut State,
        name: &'static str,
        side: &'static str,
        service: &str,
        n: f64,
        now: i64,
    ) {
        st.key.clear();
        let _ = write!(st.key, "{name}\0{side}\0{service}");
        st.losses
            .get_or_insert(&st.key, now, || {
                Counter::new(Labels::new([("__name__", name), (side, service)]).unwrap_or_default())
            })
            .add(n, None);
    }

    /// Counts one call on an edge. `virtual_peer` names the side that is
    /// missing (`client` or `server` is `None`).
    fn edge(
        &self,
        st: &mut State,
        client: Option<&Half>,
        server: Option<&Half>,
        virtual_peer: Option<(&str, &'static str)>,
        now: i64,
    ) {
        let Some(any) = client.or(server) else {
            return;
        };
        // A virtual side has no dimensions (their labels are left out).
        let empty: &[String] = &[];
        let (cname, cdims) = match client {
            Some(c) => (c.service.as_str(), c.dims.as_slice()),
            None => (virtual_peer.map(|p| p.0).unwrap_or(""), empty),
        };
        let (sname, sdims) = match server {
            Some(s) => (s.service.as_str(), s.dims.as_slice()),
            None => (virtual_peer.map(|p| p.0).unwrap_or(""), empty),
        };
        let conn = match (client, server, virtual_peer) {
            (_, _, Some((_, c))) => c,
            _ if any.messaging => "messaging_system",
            _ => "",
        };
        let failed = client.is_some_and(|c| c.failed) || server.is_some_and(|s| s.failed);
        // The multiplier of the client (it decided to sample), else the server's.
        let mult = any.mult;
        st.key.clear();
        let _ = write!(st.key, "{cname}\0{sname}\0{conn}");
        for d in cdims.iter().chain(sdims.iter()) {
            st.key.push('\0');
            st.key.push_str(d);
        }
        let cfg = &self.cfg;
        let labels = || {
            let mut base: Vec<(String, String)> = vec![
                ("client".into(), cname.to_string()),
                ("server".into(), sname.to_string()),
                ("connection_type".into(), conn.to_string()),
            ];
            for (d, v) in cfg.dimensions.iter().zip(cdims) {
                base.push((format!("client_{}", d.label), v.clone()));
            }
            for (d, v) in cfg.dimensions.iter().zip(sdims) {
                base.push((format!("server_{}", d.label), v.clone()));
            }
            base
        };
        let entry = st.edges.get_or_insert(&st.key, now, || {
            let base = labels();
            let named = |n: &str| {
                let mut v = base.clone();
                v.push(("__name__".into(), n.to_string()));
                Labels::new(v).unwrap_or_default()
            };
            EdgeSeries {
                total: Counter::new(named(EDGE_TOTAL)),
                failed: Counter::new(named(EDGE_FAILED)),
                server: Histogram::new(EDGE_SERVER, &base, cfg.graph_buckets.clone()),
                client: Histogram::new(EDGE_CLIENT, &base, cfg.graph_buckets.clone()),
            }
        });
        let ex_half = server.or(client).unwrap_or(any);
        entry
            .total
            .add(mult, Some(exemplar(&ex_half.ids, mult, now)));
        if failed {
            entry
                .failed
                .add(mult, Some(exemplar(&ex_half.ids, mult, now)));
        }
        if let Some(s) = server
            && let Some(secs) = s.seconds
        {
            entry
                .server
                .observe(secs, mult, Some(exemplar(&s.ids, secs, now)));
        }
        if let Some(c) = client
            && let Some(secs) = c.seconds
        {
            entry
                .client
                .observe(secs, mult, Some(exemplar(&c.ids, secs, now)));
        }

        // Response code (what the client saw, else the server) and the
        // Envoy flags of both halves.
        let code_num = client
            .and_then(|c| c.code)
            .or_else(|| server.and_then(|s| s.code));
        let mut flags: Vec<&str> = client
            .and_then(|c| c.flags.as_deref())
            .into_iter()
            .chain(server.and_then(|s| s.flags.as_deref()))
            .flat_map(|f| f.split(','))
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .collect();
        flags.sort_unstable();
        flags.dedup();
        let flags = flags.join(",");
        match code_num {
            Some(c) => {
                let _ = write!(st.key, "\0{c}\0{flags}");
            }
            None => {
                let _ = write!(st.key, "\0\0{flags}");
            }
        }
        let counter = st.responses.get_or_insert(&st.key, now, || {
            let mut v = labels();
            v.push(("__name__".into(), EDGE_RESPONSES.into()));
            v.push((
                "response_code".into(),
                code_num.map(|c| c.to_string()).unwrap_or_default(),
            ));
            v.push(("response_flags".into(), flags.clone()));
            Counter::new(Labels::new(v).unwrap_or_default())
        });
        counter.add(mult, None);
    }

    /// Writes every derived series as of `now` (ms) and expires halves.
    pub fn tick_at(&self, now: i64) -> (SampleBatch, Vec<(Labels, Exemplar)>) {
        let mut st = self.state.lock();
        let st = &mut *st;
        self.expire(st, now);
        let stale_ms = self.cfg.stale_after.as_millis() as i64;
        let prev = st.prev_tick;
        let mut out = Emitted::default();
        st.spans.emit(now, prev, stale_ms, &mut out);
        st.edges.emit(now, prev, stale_ms, &mut out);
        st.responses.emit(now, prev, stale_ms, &mut out);
        st.losses.emit(now, prev, stale_ms, &mut out);
        st.prev_tick = Some(now);
        let batch = SampleBatch {
            known: Default::default(),
            series: out.series,
            metadata: if prev.is_none() { metadata() } else { vec![] },
        };
        (batch, out.exemplars)
    }

    /// Writes the derived series into the sample store every `interval`
    /// until the store stops.
    pub fn spawn(self: &Arc<Self>, store: Arc<SampleStore>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut iv = tokio::time::interval(me.cfg.interval);
            iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            iv.tick().await;
            loop {
                iv.tick().await;
                if me.write_to(&store).await.is_err() {
                    return;
                }
            }
        })
    }

    /// One tick into the store (also called on shutdown). Errors only when
    /// the store is shutting down.
    pub async fn write_to(&self, store: &SampleStore) -> Result<(), ()> {
        let (batch, exemplars) = self.tick_at(now_ms());
        if batch.series.is_empty() {
            return Ok(());
        }
        match store.append(batch).await {
            Ok(report) => {
                if report.rejected_total() > 0 {
                    tracing::warn!(
                        rejected = report.rejected_total(),
                        "derived span metrics partly refused: {}",
                        report.describe_rejections()
                    );
                }
                store.exemplars().add(exemplars);
                Ok(())
            }
            Err(meshlens_storage::StorageError::ShuttingDown) => Err(()),
            Err(e) => {
                tracing::warn!(error = %e, "derived span metrics not stored this tick");
                Ok(())
            }
        }
    }
}

fn metadata() -> Vec<MetricMetadata> {
    let m = |family: &str, kind, help: &str| MetricMetadata {
        metric_family: family.into(),
        kind,
        help: help.into(),
        unit: String::new(),
    };
    vec![
        m(
            CALLS,
            MetricType::Counter,
            "Spans, by service, span name, kind and status (derived from spans).",
        ),
        m(
            LATENCY,
            MetricType::Histogram,
            "Span durations in seconds (derived from spans).",
        ),
        m(
            EDGE_TOTAL,
            MetricType::Counter,
            "Requests between two services (derived from paired spans).",
        ),
        m(
            EDGE_FAILED,
            MetricType::Counter,
            "Failed requests between two services (derived from paired spans).",
        ),
        m(
            EDGE_SERVER,
            MetricType::Histogram,
            "Server-side duration of requests between two services, seconds.",
        ),
        m(
            EDGE_CLIENT,
            MetricType::Histogram,
            "Client-side duration of requests between two services, seconds.",
        ),
        m(
            EDGE_UNPAIRED,
            MetricType::Counter,
            "Halves of calls whose other half never arrived in time and that name no peer.",
        ),
        m(
            EDGE_DROPPED,
            MetricType::Counter,
            "Halves of calls dropped because too many were waiting.",
        ),
        m(
            EDGE_RESPONSES,
            MetricType::Counter,
            "Requests between two services by response code and Envoy response flags.",
        ),
    ]
}
