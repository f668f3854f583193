//! Envoy/Istio-like spans: Bookinfo requests as Envoy's Zipkin tracer
//! reports them (shared client/server span ids, 64-bit trace ids, Istio tags).

use meshlens_storage::model::{
    AttrValue, Attributes, Endpoint, Span, SpanId, SpanKind, TraceId, UnixNanos,
};

/// xorshift64*: deterministic and dependency-free.
pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const HOPS: &[(&str, &str, &str, &str, u64)] = &[
    // (caller, callee, callee version, url path, mean latency µs)
    (
        "istio-ingressgateway",
        "productpage",
        "v1",
        "/productpage",
        30_000,
    ),
    ("productpage", "details", "v1", "/details/0", 3_000),
    ("productpage", "reviews", "v2", "/reviews/0", 12_000),
    ("reviews", "ratings", "v1", "/ratings/0", 2_000),
];

fn tag(a: &mut Attributes, k: &str, v: String) {
    a.insert(k.to_string(), AttrValue::Str(v));
}

/// One Bookinfo request: 4 hops, each a client and a shared server span.
pub fn bookinfo_trace(rng: &mut Rng, start: UnixNanos) -> Vec<Span> {
    let trace_id = TraceId::from_u64s(0, rng.next() | 1);
    let request_id = format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        rng.next() as u32,
        rng.next() as u16,
        rng.next() as u16,
        rng.next() as u16,
        rng.next() & 0xffff_ffff_ffff
    );
    let mut out = Vec::with_capacity(8);
    let mut parent_of: Vec<(&str, SpanId)> = Vec::new();
    let mut t = start.0;
    for (caller, callee, version, path, mean) in HOPS {
        let id = SpanId(rng.next().to_be_bytes());
        let parent = parent_of
            .iter()
            .rev()
            .find(|(svc, _)| svc == caller)
            .map(|(_, id)| *id);
        let dur = (*mean as i64 / 2 + rng.below(*mean) as i64) * 1_000;
        let status = if rng.below(100) == 0 { "503" } else { "200" };
        let flags = if status == "503" { "UO" } else { "-" };
        let caller_ip = format!("10.1.{}.{}", rng.below(4), 10 + rng.below(20));
        let callee_ip = format!("10.1.{}.{}", rng.below(4), 10 + rng.below(20));
        for (kind, svc, ip, peer_ip, shared, d) in [
            (
                SpanKind::Client,
                *caller,
                &caller_ip,
                &callee_ip,
                false,
                dur + 400_000,
            ),
            (SpanKind::Server, *callee, &callee_ip, &caller_ip, true, dur),
        ] {
            let mut a = Attributes::new();
            tag(&mut a, "component", "proxy".into());
            tag(
                &mut a,
                "node_id",
                format!("sidecar~{ip}~{svc}-{version}-7d9f8.default~default.svc.cluster.local"),
            );
            tag(&mut a, "guid:x-request-id", request_id.clone());
            tag(&mut a, "http.method", "GET".into());
            tag(&mut a, "http.protocol", "HTTP/1.1".into());
            tag(&mut a, "http.status_code", status.into());
            tag(&mut a, "http.url", format!("http://{callee}:9080{path}"));
            tag(&mut a, "downstream_cluster", "-".into());
            tag(&mut a, "peer.address", peer_ip.clone());
            tag(&mut a, "request_size", "0".into());
            tag(&mut a, "response_size", (200 + rng.below(5000)).to_string());
            tag(&mut a, "response_flags", flags.into());
            tag(
                &mut a,
                "upstream_cluster",
                format!("outbound|9080||{callee}.default.svc.cluster.local"),
            );
            tag(
                &mut a,
                "user_agent",
                "Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0".into(),
            );
            tag(&mut a, "istio.canonical_service", svc.to_string());
            tag(
                &mut a,
                "istio.canonical_revision",
                if shared {
                    version.to_string()
                } else {
                    "v1".into()
                },
            );
            tag(&mut a, "istio.namespace", "default".into());
            tag(&mut a, "istio.mesh_id", "cluster.local".into());
            out.push(Span {
                trace_id,
                trace_id_64: true,
                span_id: id,
                parent_span_id: parent,
                name: format!("{callee}.default.svc.cluster.local:9080/*"),
                kind,
                start: Some(UnixNanos(t + if shared { 200_000 } else { 0 })),
                duration_nanos: Some(d),
                local: Endpoint {
                    service_name: Some(format!("{svc}.default")),
                    ipv4: Some(ip.clone()),
                    ..Default::default()
                },
                shared,
                attributes: a,
                ..Default::default()
            });
        }
        parent_of.push((callee, id));
        t += 500_000;
    }
    out
}
