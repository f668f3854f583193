//! Request generation: one user request walks the mesh as Bookinfo's apps
//! and their Envoy sidecars would handle it, under the current scenario. It
//! yields the spans each sidecar (and ratings' OpenTelemetry SDK) reports
//! and moves the counters each sidecar exposes.

use crate::mesh::*;
use crate::scenario::Scenario;
use crate::stats::{HttpKey, Observation, Reporter, SidecarStats, TcpKey};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{Span as OSpan, Status, span, status};
use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::fmt::Write;
use std::sync::Arc;

const MS: i64 = 1000;
const SEC: i64 = 1_000_000;

/// What one call looked like from its caller.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    pub dur: i64,
    pub code: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Client,
    Server,
}

/// One Envoy span, before it is written (times relative to the request).
#[derive(Debug, Clone)]
struct SpanRec {
    sidecar: W,
    kind: Kind,
    id: u64,
    parent: Option<u64>,
    service: Service,
    path: &'static str,
    start: i64,
    dur: i64,
    code: u16,
    flags: &'static str,
    /// The workload on the other side (None: never reached).
    peer: Option<W>,
    response_bytes: u32,
}

/// ratings' own spans from its OpenTelemetry SDK (times relative).
#[derive(Debug, Clone)]
struct SdkRec {
    id: u64,
    parent: u64,
    db: bool,
    start: i64,
    dur: i64,
}

/// Most spans in one Zipkin POST (a proxy flushes its buffer in pieces).
pub const MAX_SPANS_PER_POST: usize = 500;

/// One Zipkin JSON v2 POST body from one sidecar.
#[derive(Debug)]
pub struct ZipkinPost {
    pub sidecar: W,
    pub body: String,
    pub spans: usize,
}

/// What a batch of requests produced, ready to send.
#[derive(Debug, Default)]
pub struct Batch {
    pub zipkin: Vec<ZipkinPost>,
    /// ratings' SDK spans (OTLP).
    pub otlp: Vec<OSpan>,
    pub requests: u64,
}

impl Batch {
    pub fn spans(&self) -> usize {
        self.zipkin.iter().map(|p| p.spans).sum::<usize>() + self.otlp.len()
    }
}

/// What both halves of one call share.
struct Call {
    from: W,
    /// None: answered by the caller's sidecar (fault abort, overflow).
    dst: Option<W>,
    id: u64,
    parent: Option<u64>,
    svc: Service,
    path: &'static str,
}

struct Req {
    trace: u64,
    jason: bool,
    request_id: (u64, u64),
}

/// Generates requests; owned by one task.
pub struct Generator {
    mesh: Arc<Vec<Workload>>,
    stats: Arc<Vec<Mutex<SidecarStats>>>,
    rng: SmallRng,
    scenario: Scenario,
    round_robin: u64,
    spans: Vec<SpanRec>,
    sdk: Vec<SdkRec>,
    /// Share of requests from the logged-in user `jason`.
    pub jason_share: f64,
    /// fortio -> httpbin requests per Bookinfo request.
    pub fortio_share: f64,
    batch: Batch,
    /// Per sidecar: the Zipkin body being filled and its span count.
    open: Vec<(String, usize)>,
    /// Per-service strings used for every span.
    names: Vec<SvcStrings>,
}

struct SvcStrings {
    service: Service,
    span_name: String,
    cluster: String,
}

impl Generator {
    pub fn new(
        mesh: Arc<Vec<Workload>>,
        stats: Arc<Vec<Mutex<SidecarStats>>>,
        seed: Option<u64>,
    ) -> Generator {
        let rng = match seed {
            Some(s) => SmallRng::seed_from_u64(s),
            None => SmallRng::from_os_rng(),
        };
        let names = [
            SVC_PRODUCTPAGE,
            SVC_DETAILS,
            SVC_REVIEWS,
            SVC_RATINGS,
            SVC_HTTPBIN,
            SVC_MONGODB,
        ]
        .into_iter()
        .map(|s| SvcStrings {
            service: s,
            span_name: format!("{}:{}/*", s.fqdn(), s.port),
            cluster: format!("outbound|{}||{}", s.port, s.fqdn()),
        })
        .collect();
        let n = mesh.len();
        Generator {
            mesh,
            stats,
            rng,
            scenario: Scenario::RoundRobin,
            round_robin: 0,
            spans: Vec::with_capacity(16),
            sdk: Vec::with_capacity(4),
            jason_share: 0.25,
            fortio_share: 0.25,
            batch: Batch::default(),
            open: vec![(String::new(), 0); n],
            names,
        }
    }

    pub fn set_scenario(&mut self, s: Scenario) {
        self.scenario = s;
    }

    /// `n` Bookinfo requests (and the matching fortio share) that completed
    /// at `now_us` (µs since the epoch), spread over the `spread_us` before it.
    pub fn generate(&mut self, n: usize, now_us: i64, spread_us: i64) -> Batch {
        let fortio = self.fortio_share * n as f64;
        let mut fortio_n = fortio as usize;
        if self.rng.random::<f64>() < fortio.fract() {
            fortio_n += 1;
        }
        for _ in 0..n {
            let end = now_us - self.rng.random_range(0..spread_us.max(1));
            let r = self.request();
            // Browsers also ask for /favicon.ico: productpage answers 404.
            let path = if self.rng.random::<f64>() < 0.015 {
                "/favicon.ico"
            } else {
                "/productpage"
            };
            let o = self.call(&r, GATEWAY, SVC_PRODUCTPAGE, path, None, 0, None);
            self.finish(&r, end - o.dur);
        }
        for _ in 0..fortio_n {
            let end = now_us - self.rng.random_range(0..spread_us.max(1));
            let r = self.request();
            let o = self.call(&r, FORTIO, SVC_HTTPBIN, "/get", None, 0, None);
            self.finish(&r, end - o.dur);
        }
        self.batch.requests = (n + fortio_n) as u64;
        for w in 0..self.open.len() {
            self.seal(w);
        }
        std::mem::take(&mut self.batch)
    }

    /// Closes sidecar `w`'s open body into a POST.
    fn seal(&mut self, w: W) {
        let (mut body, spans) = std::mem::take(&mut self.open[w]);
        if spans > 0 {
            body.push(']');
            self.batch.zipkin.push(ZipkinPost {
                sidecar: w,
                body,
                spans,
            });
        }
    }

    fn request(&mut self) -> Req {
        Req {
            trace: self.rng.random::<u64>() | 1,
            jason: self.rng.random::<f64>() < self.jason_share,
            request_id: (self.rng.random(), self.rng.random()),
        }
    }

    fn lognormal(&mut self, median: f64, sigma: f64) -> i64 {
        // Box-Muller.
        let u1: f64 = self.rng.random::<f64>().max(1e-12);
        let u2: f64 = self.rng.random();
        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        (median * (sigma * z).exp()).max(20.0) as i64
    }

    /// One network hop between sidecars (µs).
    fn hop(&mut self) -> i64 {
        self.rng.random_range(120..400)
    }

    fn names(&self, svc: Service) -> &SvcStrings {
        &self.names[self.name_index(svc)]
    }

    fn name_index(&self, svc: Service) -> usize {
        self.names
            .iter()
            .position(|n| n.service == svc)
            .unwrap_or(0)
    }

    /// Which workload the caller's sidecar routes `svc` to.
    fn route(&mut self, r: &Req, svc: Service) -> W {
        match svc.name {
            "productpage" => PRODUCTPAGE,
            "details" => DETAILS,
            "ratings" => RATINGS,
            "httpbin" => HTTPBIN,
            "mongodb" => MONGODB,
            _ => match self.scenario {
                Scenario::RoundRobin | Scenario::CircuitBreaking | Scenario::Retries => {
                    self.round_robin += 1;
                    [REVIEWS_V1, REVIEWS_V2, REVIEWS_V3][(self.round_robin % 3) as usize]
                }
                Scenario::AllV1 => REVIEWS_V1,
                Scenario::JasonV2 | Scenario::FaultDelay | Scenario::FaultAbort => {
                    if r.jason {
                        REVIEWS_V2
                    } else {
                        REVIEWS_V1
                    }
                }
                Scenario::Shift50V3 => {
                    if self.rng.random::<bool>() {
                        REVIEWS_V1
                    } else {
                        REVIEWS_V3
                    }
                }
                Scenario::Shift100V3 => REVIEWS_V3,
                Scenario::Timeout => REVIEWS_V2,
            },
        }
    }

    /// `from`'s app calls `svc`: the client sidecar routes it (faults,
    /// circuit breaker, retries, route timeout), the server sidecar and app
    /// handle it. `app_timeout`: when the calling app gives up (µs).
    #[allow(clippy::too_many_arguments)]
    fn call(
        &mut self,
        r: &Req,
        from: W,
        svc: Service,
        path: &'static str,
        parent: Option<u64>,
        start: i64,
        app_timeout: Option<i64>,
    ) -> Outcome {
        let sc = self.scenario;
        let dst = self.route(r, svc);
        let mut c = Call {
            from,
            dst: Some(dst),
            id: self.rng.random::<u64>() | 1,
            parent,
            svc,
            path,
        };

        // Local replies from the client sidecar: the request never leaves.
        let abort = svc == SVC_RATINGS && sc == Scenario::FaultAbort && r.jason;
        let overflow = svc == SVC_HTTPBIN
            && sc == Scenario::CircuitBreaking
            && self.rng.random::<f64>() < 0.35;
        if abort || overflow {
            c.dst = None;
            let dur = self.rng.random_range(60..250);
            let (code, flags, bytes) = if abort {
                (500, "FI", 18)
            } else {
                (503, "UO", 81)
            };
            self.half(&c, Kind::Client, start, dur, code, flags, bytes);
            self.upstream(&c, 0, code, overflow);
            return Outcome { dur, code };
        }

        let delay = match (svc.name, sc) {
            ("ratings", Scenario::FaultDelay) if r.jason => 7 * SEC,
            ("ratings", Scenario::Timeout) => 2 * SEC,
            _ => 0,
        };
        let route_timeout = (svc == SVC_REVIEWS && sc == Scenario::Timeout).then_some(500 * MS);
        let cut = match (route_timeout, app_timeout) {
            (Some(rt), Some(at)) if at < rt => Some((start + at, 0, "DC")),
            (Some(rt), _) => Some((start + rt, 504, "UT")),
            (None, Some(at)) => Some((start + at, 0, "DC")),
            (None, None) => None,
        };
        const MAX_ATTEMPTS: u32 = 3;
        let mut t = start + delay;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let server_start = t + self.hop();
            let (sdur, scode) = self.serve(r, dst, c.id, path, server_start);
            let natural_end = server_start + sdur + self.hop();
            if let Some((cut_at, code, flags)) = cut.filter(|c| natural_end > c.0) {
                // The caller gave up: the reset reaches the server half too.
                if server_start < cut_at {
                    self.half(
                        &c,
                        Kind::Server,
                        server_start,
                        cut_at - server_start,
                        0,
                        "DC",
                        0,
                    );
                }
                let flags = if delay > 0 && flags == "UT" {
                    "DI,UT"
                } else {
                    flags
                };
                let dur = cut_at - start;
                self.half(&c, Kind::Client, start, dur, code, flags, 0);
                self.upstream(&c, attempts, code, false);
                return Outcome { dur, code };
            }
            let bytes = if scode == 200 {
                self.mesh[dst].response_bytes
            } else {
                95
            };
            self.half(&c, Kind::Server, server_start, sdur, scode, "-", bytes);
            if scode == 503 && attempts < MAX_ATTEMPTS {
                // Envoy's retry back-off: 25 ms base, jittered.
                t = natural_end + self.rng.random_range(5 * MS..50 * MS);
                continue;
            }
            let flags = if scode == 503 && attempts > 1 {
                "URX"
            } else if delay > 0 {
                "DI"
            } else {
                "-"
            };
            let dur = natural_end - start;
            self.half(&c, Kind::Client, start, dur, scode, flags, bytes);
            self.upstream(&c, attempts, scode, false);
            return Outcome { dur, code: scode };
        }
    }

    /// One half of a call: the span its sidecar reports and the Istio
    /// metric it moves (source reporter for the client half, destination
    /// for the server half).
    #[allow(clippy::too_many_arguments)]
    fn half(
        &mut self,
        c: &Call,
        kind: Kind,
        start: i64,
        dur: i64,
        code: u16,
        flags: &'static str,
        response_bytes: u32,
    ) {
        let (sidecar, peer, reporter) = match (kind, c.dst) {
            (Kind::Client, _) => (c.from, c.dst, Reporter::Source),
            (Kind::Server, Some(d)) => (d, Some(c.from), Reporter::Destination),
            (Kind::Server, None) => return,
        };
        self.spans.push(SpanRec {
            sidecar,
            kind,
            id: c.id,
            parent: c.parent,
            service: c.svc,
            path: c.path,
            start,
            dur,
            code,
            flags,
            peer,
            response_bytes,
        });
        self.stats[sidecar].lock().observe(Observation {
            key: HttpKey {
                reporter,
                src: c.from,
                dst: c.dst,
                service: c.svc.name,
                code,
                flags,
            },
            duration_ms: dur as f64 / 1000.0,
            request_bytes: 0,
            response_bytes,
        });
    }

    /// The caller's Envoy cluster stats for a finished call.
    fn upstream(&self, c: &Call, attempts: u32, code: u16, overflow: bool) {
        let cluster = &self.names(c.svc).cluster;
        self.stats[c.from]
            .lock()
            .upstream(cluster, attempts, code, code == 504, overflow);
    }

    /// The app `w` handles a request (span id `id` from its sidecar):
    /// returns how long it took and its status.
    #[allow(clippy::too_many_arguments)]
    fn serve(&mut self, r: &Req, w: W, id: u64, path: &'static str, start: i64) -> (i64, u16) {
        let (median, sigma) = (self.mesh[w].self_time_us, self.mesh[w].sigma);
        let own = self.lognormal(median, sigma);
        match w {
            PRODUCTPAGE if path == "/favicon.ico" => (own / 4, 404),
            PRODUCTPAGE => {
                // details, then reviews (productpage tries reviews twice),
                // each with productpage's 3 s timeout.
                let mut t = start + own * 2 / 5;
                let d = self.call(r, w, SVC_DETAILS, "/details/0", Some(id), t, Some(3 * SEC));
                t += d.dur + self.rng.random_range(50..300);
                for _ in 0..2 {
                    let o = self.call(r, w, SVC_REVIEWS, "/reviews/0", Some(id), t, Some(3 * SEC));
                    t += o.dur;
                    if o.code == 200 {
                        break;
                    }
                }
                t += own * 3 / 5;
                (t - start, 200)
            }
            REVIEWS_V2 | REVIEWS_V3 => {
                let mut t = start + own / 2;
                let o = self.call(r, w, SVC_RATINGS, "/ratings/0", Some(id), t, Some(10 * SEC));
                t += o.dur + own / 2;
                (t - start, 200)
            }
            DETAILS if self.scenario == Scenario::Retries && self.rng.random::<f64>() < 0.6 => {
                (own / 3 + 20, 503)
            }
            RATINGS => {
                // The app's SDK: its handler span and a MongoDB query.
                let handler = self.rng.random::<u64>() | 1;
                let db = self.rng.random::<u64>() | 1;
                let db_start = start + 60 + own / 4;
                let db_dur = self.lognormal(450.0, 0.5);
                let total = own + db_dur + 120;
                self.sdk.push(SdkRec {
                    id: handler,
                    parent: id,
                    db: false,
                    start: start + 40,
                    dur: total - 80,
                });
                self.sdk.push(SdkRec {
                    id: db,
                    parent: handler,
                    db: true,
                    start: db_start,
                    dur: db_dur,
                });
                // The MongoDB connection is TCP: Istio's TCP metrics on both
                // sidecars.
                let (sent, recv) = (
                    self.rng.random_range(90..140),
                    self.rng.random_range(180..320),
                );
                for (reporter, sidecar) in [
                    (Reporter::Source, RATINGS),
                    (Reporter::Destination, MONGODB),
                ] {
                    let key = TcpKey {
                        reporter,
                        src: RATINGS,
                        dst: MONGODB,
                        service: "mongodb",
                    };
                    self.stats[sidecar].lock().tcp(key, sent, recv);
                }
                (total, 200)
            }
            _ => (own, 200),
        }
    }

    /// Writes the request's spans, shifted so it started at `base` (µs).
    fn finish(&mut self, r: &Req, base: i64) {
        let spans = std::mem::take(&mut self.spans);
        for s in &spans {
            self.write_zipkin(r, s, base);
        }
        self.spans = spans;
        self.spans.clear();
        let sdk = std::mem::take(&mut self.sdk);
        for s in &sdk {
            let o = self.otlp_span(r, s, base);
            self.batch.otlp.push(o);
        }
        self.sdk = sdk;
        self.sdk.clear();
    }

    fn write_zipkin(&mut self, r: &Req, s: &SpanRec, base: i64) {
        let mesh = Arc::clone(&self.mesh);
        let w = &mesh[s.sidecar];
        let names = &self.names[self.name_index(s.service)];
        let (span_name, cluster) = (names.span_name.as_str(), names.cluster.as_str());
        let out = &mut self.open[s.sidecar].0;
        out.push(if out.is_empty() { '[' } else { ',' });
        let _ = write!(
            out,
            "{{\"traceId\":\"{:016x}\",\"id\":\"{:016x}\"",
            r.trace, s.id
        );
        if let Some(p) = s.parent {
            let _ = write!(out, ",\"parentId\":\"{p:016x}\"");
        }
        let (kind, name) = match (s.kind, s.sidecar) {
            (Kind::Client, GATEWAY) => ("CLIENT", None),
            (Kind::Client, _) => ("CLIENT", Some(span_name)),
            (Kind::Server, _) => ("SERVER", Some(span_name)),
        };
        let _ = write!(out, ",\"kind\":\"{kind}\",\"name\":\"");
        match name {
            Some(n) => out.push_str(n),
            // Istio's gateway route decorator: host:port/path.
            None => {
                let _ = write!(out, "{}:{}{}", s.service.fqdn(), s.service.port, s.path);
            }
        }
        let _ = write!(
            out,
            "\",\"timestamp\":{},\"duration\":{},\"localEndpoint\":{{\"serviceName\":\"{}.{}\",\"ipv4\":\"{}\"}}",
            base + s.start,
            s.dur.max(1),
            w.app,
            w.namespace,
            w.ip
        );
        if s.kind == Kind::Server {
            out.push_str(",\"shared\":true");
        }
        let (a, b) = r.request_id;
        let _ = write!(
            out,
            ",\"tags\":{{\"component\":\"proxy\",\"node_id\":\"{}\",\"zone\":\"\",\"guid:x-request-id\":\"{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}\"",
            w.node_id,
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            b >> 52,
            b & 0xffff_ffff_ffff
        );
        let _ = write!(
            out,
            ",\"http.url\":\"http://{}:{}{}\",\"http.method\":\"GET\",\"http.protocol\":\"HTTP/1.1\",\"downstream_cluster\":\"-\",\"user_agent\":\"{}\"",
            s.service.name,
            s.service.port,
            s.path,
            user_agent(s)
        );
        let peer_ip = match (s.kind, s.peer) {
            (Kind::Server, Some(p)) => mesh[p].ip.as_str(),
            _ => w.ip.as_str(),
        };
        let _ = write!(
            out,
            ",\"peer.address\":\"{peer_ip}\",\"request_size\":\"0\",\"response_size\":\"{}\",\"response_flags\":\"{}\",\"http.status_code\":\"{}\"",
            s.response_bytes, s.flags, s.code
        );
        match s.kind {
            Kind::Client => {
                let _ = write!(
                    out,
                    ",\"upstream_cluster\":\"{cluster}\",\"upstream_cluster.name\":\"{cluster}\""
                );
                if let Some(p) = s.peer {
                    let _ = write!(
                        out,
                        ",\"upstream_address\":\"{}:{}\"",
                        mesh[p].ip, s.service.port
                    );
                }
            }
            Kind::Server => {
                let _ = write!(
                    out,
                    ",\"upstream_cluster\":\"inbound|{0}||\",\"upstream_cluster.name\":\"inbound|{0}||\",\"upstream_address\":\"{1}:{0}\"",
                    s.service.port, w.ip
                );
            }
        }
        if s.code == 0 || s.code >= 500 {
            out.push_str(",\"error\":\"true\"");
        }
        let _ = write!(
            out,
            ",\"istio.canonical_service\":\"{}\",\"istio.canonical_revision\":\"{}\",\"istio.namespace\":\"{}\",\"istio.mesh_id\":\"cluster.local\",\"istio.cluster_id\":\"Kubernetes\"}}}}",
            w.app,
            w.revision(),
            w.namespace
        );
        self.open[s.sidecar].1 += 1;
        if self.open[s.sidecar].1 >= MAX_SPANS_PER_POST {
            self.seal(s.sidecar);
        }
    }

    fn otlp_span(&self, r: &Req, s: &SdkRec, base: i64) -> OSpan {
        let start_ns = ((base + s.start) * 1000) as u64;
        let mut trace_id = vec![0u8; 8];
        trace_id.extend_from_slice(&r.trace.to_be_bytes());
        let (name, kind, attributes) = if s.db {
            (
                "find ratings".to_string(),
                span::SpanKind::Client,
                vec![
                    kv("db.system", "mongodb"),
                    kv("peer.service", "mongodb"),
                    kv("db.namespace", "ratings"),
                    kv("db.operation.name", "find"),
                    kv("db.collection.name", "ratings"),
                    kv("server.address", "mongodb.default.svc.cluster.local"),
                    kv_int("server.port", 27017),
                ],
            )
        } else {
            (
                "GET /ratings/{id}".to_string(),
                span::SpanKind::Server,
                vec![
                    kv("http.request.method", "GET"),
                    kv("http.route", "/ratings/{id}"),
                    kv("url.path", "/ratings/0"),
                    kv("url.scheme", "http"),
                    kv("server.address", "ratings"),
                    kv_int("server.port", 9080),
                    kv_int("http.response.status_code", 200),
                    kv("network.protocol.version", "1.1"),
                ],
            )
        };
        OSpan {
            trace_id,
            span_id: s.id.to_be_bytes().to_vec(),
            parent_span_id: s.parent.to_be_bytes().to_vec(),
            name,
            kind: kind as i32,
            start_time_unix_nano: start_ns,
            end_time_unix_nano: start_ns + (s.dur.max(1) as u64) * 1000,
            attributes,
            status: Some(Status {
                code: status::StatusCode::Unset as i32,
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

fn user_agent(s: &SpanRec) -> &'static str {
    match s.sidecar {
        GATEWAY if s.kind == Kind::Client => "Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0",
        PRODUCTPAGE if s.kind == Kind::Server => "Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0",
        PRODUCTPAGE => "python-requests/2.31.0",
        FORTIO | HTTPBIN => "fortio.org/fortio-1.60.3",
        REVIEWS_V1 | REVIEWS_V2 | REVIEWS_V3 if s.kind == Kind::Client => "Java/17.0.9",
        DETAILS | REVIEWS_V1 | REVIEWS_V2 | REVIEWS_V3 => "python-requests/2.31.0",
        _ => "Java/17.0.9",
    }
}

pub(crate) fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.to_string())),
        }),
        ..Default::default()
    }
}

fn kv_int(k: &str, v: i64) -> KeyValue {
    KeyValue {
        key: k.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(v)),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    type Stats = Arc<Vec<Mutex<SidecarStats>>>;

    fn run(scenario: Scenario, n: usize) -> (Vec<Vec<Value>>, Batch, Stats) {
        let mesh = Arc::new(workloads());
        let stats: Arc<Vec<Mutex<SidecarStats>>> = Arc::new(
            (0..mesh.len())
                .map(|_| Mutex::new(SidecarStats::default()))
                .collect(),
        );
        let mut g = Generator::new(mesh, Arc::clone(&stats), Some(7));
        g.set_scenario(scenario);
        let b = g.generate(n, 1_800_000_000_000_000, 200_000);
        let mut spans = vec![Vec::new(); workloads().len()];
        for p in &b.zipkin {
            assert!(p.spans <= MAX_SPANS_PER_POST);
            let v: Vec<Value> = serde_json::from_str(&p.body).expect("valid Zipkin JSON");
            assert_eq!(v.len(), p.spans);
            spans[p.sidecar].extend(v);
        }
        (spans, b, stats)
    }

    fn tag<'a>(s: &'a Value, k: &str) -> &'a str {
        s["tags"][k].as_str().unwrap_or("")
    }

    #[test]
    fn every_server_half_shares_its_client_half_id_and_batches_are_valid_json() {
        let (spans, b, _) = run(Scenario::RoundRobin, 300);
        assert_eq!(b.requests, 300 + 75);
        let all: Vec<&Value> = spans.iter().flatten().collect();
        assert_eq!(all.len() + b.otlp.len(), b.spans());
        let clients: std::collections::HashSet<(&str, &str)> = all
            .iter()
            .filter(|s| s["kind"] == "CLIENT")
            .map(|s| {
                (
                    s["traceId"].as_str().unwrap_or(""),
                    s["id"].as_str().unwrap_or(""),
                )
            })
            .collect();
        for s in all.iter().filter(|s| s["kind"] == "SERVER") {
            assert_eq!(s["shared"], true);
            let key = (
                s["traceId"].as_str().unwrap_or(""),
                s["id"].as_str().unwrap_or(""),
            );
            assert!(
                clients.contains(&key),
                "server half without its client: {s}"
            );
        }
        // Round robin: each reviews version serves a third.
        for w in [REVIEWS_V1, REVIEWS_V2, REVIEWS_V3] {
            let served = spans[w].iter().filter(|s| s["kind"] == "SERVER").count();
            assert!((95..=105).contains(&served), "{w}: {served}");
        }
        // ratings' SDK: a handler span and a MongoDB client span per call.
        let ratings_calls = spans[RATINGS]
            .iter()
            .filter(|s| s["kind"] == "SERVER")
            .count();
        assert_eq!(b.otlp.len(), 2 * ratings_calls);
    }

    #[test]
    fn fault_abort_answers_jason_from_the_callers_sidecar() {
        let (spans, _, stats) = run(Scenario::FaultAbort, 400);
        let aborted: Vec<&Value> = spans[REVIEWS_V2]
            .iter()
            .filter(|s| s["kind"] == "CLIENT" && tag(s, "response_flags") == "FI")
            .collect();
        assert!(!aborted.is_empty());
        for s in &aborted {
            assert_eq!(tag(s, "http.status_code"), "500");
            assert_eq!(tag(s, "error"), "true");
            // Never reached ratings: no server half with that id.
            assert!(!spans[RATINGS].iter().any(|r| r["id"] == s["id"]));
        }
        // Everyone but jason is on v1, which does not call ratings.
        assert!(spans[REVIEWS_V1].iter().all(|s| s["kind"] == "SERVER"));
        let text = stats[REVIEWS_V2].lock().render(&workloads());
        assert!(
            text.contains(r#"destination_workload="unknown""#)
                && text.contains(r#"response_code="500""#)
                && text.contains(r#"response_flags="FI""#),
            "{text}"
        );
    }

    #[test]
    fn retries_count_every_attempt_at_the_destination_and_urx_when_exhausted() {
        let (spans, _, stats) = run(Scenario::Retries, 500);
        let client = spans[PRODUCTPAGE]
            .iter()
            .filter(|s| s["kind"] == "CLIENT" && tag(s, "upstream_cluster").contains("details"))
            .count();
        let attempts = spans[DETAILS]
            .iter()
            .filter(|s| s["kind"] == "SERVER")
            .count();
        // One details call per page view (browsers' favicon requests make none).
        let pages = spans[GATEWAY]
            .iter()
            .filter(|s| tag(s, "http.url").ends_with("/productpage"))
            .count();
        assert!(pages > 480);
        assert_eq!(client, pages);
        // 60 % fail, up to 3 attempts: about 1 + 0.6 + 0.36 = 1.96 per call.
        assert!((850..1100).contains(&attempts), "{attempts}");
        let urx = spans[PRODUCTPAGE]
            .iter()
            .filter(|s| tag(s, "response_flags") == "URX")
            .count();
        // 0.6^3 = 21.6 %.
        assert!((70..150).contains(&urx), "{urx}");
        let text = stats[PRODUCTPAGE].lock().render(&workloads());
        assert!(text.contains("envoy_cluster_upstream_rq_retry{cluster_name=\"outbound|9080||details.default.svc.cluster.local\"}"));
    }

    #[test]
    fn timeouts_and_delays_cut_both_halves_where_the_caller_gives_up() {
        let (spans, _, _) = run(Scenario::Timeout, 100);
        for s in spans[PRODUCTPAGE]
            .iter()
            .filter(|s| tag(s, "upstream_cluster").contains("reviews"))
        {
            assert_eq!(tag(s, "http.status_code"), "504");
            assert_eq!(tag(s, "response_flags"), "UT");
            assert_eq!(s["duration"], 500_000);
        }
        for s in spans[REVIEWS_V2].iter().filter(|s| s["kind"] == "SERVER") {
            assert_eq!(tag(s, "response_flags"), "DC");
        }
        let (spans, _, _) = run(Scenario::FaultDelay, 200);
        let slow = spans[GATEWAY]
            .iter()
            .filter(|s| s["duration"].as_i64().unwrap_or(0) > 6_000_000)
            .count();
        assert!(slow > 20, "jason's requests wait 2 x 3 s: {slow}");
    }

    #[test]
    fn circuit_breaker_rejects_a_share_of_fortio_calls_locally() {
        let (spans, _, stats) = run(Scenario::CircuitBreaking, 800);
        let f = &spans[FORTIO];
        let uo = f
            .iter()
            .filter(|s| tag(s, "response_flags") == "UO")
            .count();
        assert!(
            uo > 0 && (uo as f64 / f.len() as f64) < 0.5,
            "{uo} of {}",
            f.len()
        );
        assert!(
            f.iter()
                .filter(|s| tag(s, "response_flags") == "UO")
                .all(|s| tag(s, "http.status_code") == "503")
        );
        let text = stats[FORTIO].lock().render(&workloads());
        assert!(text.contains("envoy_cluster_upstream_rq_pending_overflow{cluster_name=\"outbound|8000||httpbin.default.svc.cluster.local\"} "));
    }
}
