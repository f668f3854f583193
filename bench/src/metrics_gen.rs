//! Istio/Envoy-shaped metric data for the metrics benchmarks: the series
//! (`istio_requests_total` and `istio_request_duration_milliseconds_bucket`
//! with the labels Istio's stats plugin reports plus those Kubernetes pod
//! discovery adds), their counter values at 15 s steps, and the three wire
//! forms the peers take: Prometheus remote write 1.0, OpenMetrics text (for
//! `promtool tsdb create-blocks-from openmetrics`) and Envoy's
//! `/stats/prometheus` text (for the scrape runs).
//!
//! Everything is deterministic: the value of series `i` at step `k` depends
//! only on `(i, k)`, so the same data set can be produced in several runs
//! and in any order (time-major for remote write, series-major for files).

pub use meshlens_ingest::remote_write::{Label, Sample, TimeSeries, WriteRequest};
use prost::Message;
use std::fmt::Write as _;

/// A metric family as the target server renders it: name and its series.
type Family = (String, Vec<(String, u8, u64)>);

/// Labels are UTF-8 here (built from `&str`); the wire type keeps bytes.
pub fn label_str(b: &[u8]) -> &str {
    std::str::from_utf8(b).unwrap_or_default()
}

/// Scrape interval of the data set.
pub const STEP_MS: i64 = 15_000;

/// Istio's default `istio_request_duration_milliseconds` buckets.
pub const BUCKETS: [&str; 20] = [
    "0.5", "1", "5", "10", "25", "50", "100", "250", "500", "1000", "2500", "5000", "10000",
    "30000", "60000", "300000", "600000", "1800000", "3600000", "+Inf",
];
const BUCKET_LE: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

const APPS: [&str; 25] = [
    "productpage",
    "reviews",
    "ratings",
    "details",
    "frontend",
    "cartservice",
    "checkoutservice",
    "currencyservice",
    "emailservice",
    "paymentservice",
    "recommendationservice",
    "shippingservice",
    "adservice",
    "catalog",
    "search",
    "auth",
    "users",
    "orders",
    "inventory",
    "notification",
    "gateway-api",
    "billing",
    "pricing",
    "analytics",
    "media",
];
const NAMESPACES: [&str; 5] = ["default", "shop", "payments", "platform", "media"];
const CODES: [&str; 6] = ["200", "201", "404", "503", "500", "302"];

/// Destinations per source workload (50 workloads x 5 = 250 edges).
const FANOUT: usize = 5;
pub const WORKLOADS: usize = 50;

pub fn mix(mut x: u64) -> u64 {
    // splitmix64 finaliser
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn h2(a: u64, b: u64) -> u64 {
    mix(mix(a) ^ b.wrapping_mul(0x2545_f491_4f6c_dd1d))
}

struct Workload {
    app: &'static str,
    version: &'static str,
    ns: &'static str,
}

fn workload(w: usize) -> Workload {
    let a = w % APPS.len();
    Workload {
        app: APPS[a],
        version: if w < APPS.len() { "v1" } else { "v2" },
        ns: NAMESPACES[a % NAMESPACES.len()],
    }
}

/// The Istio data set: `combos` (source, destination, reporter, response
/// code, pod) combinations, each one `istio_requests_total` series and 20
/// duration buckets. Series are numbered slot-major: first every
/// `istio_requests_total`, then every bucket, so a metric family is
/// contiguous.
pub struct IstioSet {
    pub combos: usize,
    /// Sorted labels (incl. `__name__` and `le`) per series.
    pub labels: Vec<Vec<Label>>,
}

impl IstioSet {
    /// About `series` series (rounded down to a multiple of 21).
    pub fn new(series: usize) -> IstioSet {
        let combos = (series / 21).max(1);
        let base: Vec<Vec<Label>> = (0..combos).map(combo_labels).collect();
        let mut labels = Vec::with_capacity(combos * 21);
        for b in &base {
            let mut l = b.clone();
            l.push(lab("__name__", "istio_requests_total"));
            l.sort_by(|a, b| a.name.cmp(&b.name));
            labels.push(l);
        }
        for b in &base {
            for le in BUCKETS {
                let mut l = b.clone();
                l.push(lab(
                    "__name__",
                    "istio_request_duration_milliseconds_bucket",
                ));
                l.push(lab("le", le));
                l.sort_by(|a, b| a.name.cmp(&b.name));
                labels.push(l);
            }
        }
        IstioSet { combos, labels }
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// (combo, bucket index or None for the request counter)
    fn slot(&self, i: usize) -> (usize, Option<usize>) {
        if i < self.combos {
            (i, None)
        } else {
            let x = i - self.combos;
            (x / 20, Some(x % 20))
        }
    }

    fn cdf(&self, combo: usize, bucket: usize) -> f64 {
        if bucket >= BUCKET_LE.len() {
            return 1.0;
        }
        // Latency ~ exponential with a per-combo mean of 3..300 ms.
        let mean = 3.0 + (mix(combo as u64 ^ 0x77) % 297) as f64;
        1.0 - (-BUCKET_LE[bucket] / mean).exp()
    }

    /// Requests of `combo` during step `k` (k >= 1): small, varying.
    fn requests(combo: usize, k: i64) -> f64 {
        let rate = 1 + mix(combo as u64) % 40;
        (rate / 2 + h2(combo as u64, k as u64) % (rate + 1)) as f64
    }

    /// Counter value at step 0.
    pub fn base(&self, i: usize) -> f64 {
        let (c, b) = self.slot(i);
        let base = (mix(c as u64 ^ 0x5555) % 100_000) as f64;
        match b {
            None => base,
            Some(j) => (base * self.cdf(c, j)).floor(),
        }
    }

    /// Increase of series `i` from step k-1 to step k.
    pub fn inc(&self, i: usize, k: i64) -> f64 {
        let (c, b) = self.slot(i);
        let r = Self::requests(c, k);
        match b {
            None => r,
            Some(j) => {
                // floor(r*cdf + u) with one u per (combo, step): monotone in le.
                let u = (h2(c as u64 ^ 0xabcd, k as u64) >> 11) as f64 / (1u64 << 53) as f64;
                (r * self.cdf(c, j) + u).floor().min(r)
            }
        }
    }
}

fn lab(n: &str, v: &str) -> Label {
    Label {
        name: n.as_bytes().to_vec(),
        value: v.as_bytes().to_vec(),
    }
}

fn pod_name(w: &Workload, widx: usize, replica: usize) -> String {
    const A: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let h = mix((widx * 131 + replica) as u64);
    let mut s = format!("{}-{}-{:x}-", w.app, w.version, (h >> 24) & 0xffff_ffff_u64);
    for i in 0..5 {
        s.push(A[((h >> (i * 5)) % A.len() as u64) as usize] as char);
    }
    s
}

fn combo_labels(c: usize) -> Vec<Label> {
    let edges = WORKLOADS * FANOUT;
    let e = c % edges;
    let src = e / FANOUT;
    let mut dst = (src * 7 + (e % FANOUT) * 11 + 1) % WORKLOADS;
    if dst == src {
        dst = (dst + 1) % WORKLOADS;
    }
    let reporter_dest = (c / edges) % 2 == 1;
    let code = CODES[(c / (2 * edges)) % CODES.len()];
    let replica = c / (2 * edges * CODES.len());
    let (s, d) = (workload(src), workload(dst));
    let (rw, ri) = if reporter_dest { (&d, dst) } else { (&s, src) };
    let grpc = dst % 4 == 3;
    let ip = mix((ri * 131 + replica) as u64);
    let mut v = vec![
        lab(
            "connection_security_policy",
            if reporter_dest {
                "mutual_tls"
            } else {
                "unknown"
            },
        ),
        lab("destination_app", d.app),
        lab("destination_canonical_revision", d.version),
        lab("destination_canonical_service", d.app),
        lab("destination_cluster", "Kubernetes"),
        lab(
            "destination_principal",
            &format!("spiffe://cluster.local/ns/{}/sa/{}", d.ns, d.app),
        ),
        lab(
            "destination_service",
            &format!("{}.{}.svc.cluster.local", d.app, d.ns),
        ),
        lab("destination_service_name", d.app),
        lab("destination_service_namespace", d.ns),
        lab("destination_version", d.version),
        lab("destination_workload", &format!("{}-{}", d.app, d.version)),
        lab("destination_workload_namespace", d.ns),
        lab(
            "instance",
            &format!(
                "10.{}.{}.{}:15020",
                16 + (ip & 15),
                (ip >> 8) & 255,
                (ip >> 16) & 255
            ),
        ),
        lab("job", "kubernetes-pods"),
        lab("namespace", rw.ns),
        lab("pod", &pod_name(rw, ri, replica)),
        lab(
            "reporter",
            if reporter_dest {
                "destination"
            } else {
                "source"
            },
        ),
        lab("request_protocol", if grpc { "grpc" } else { "http" }),
        lab("response_code", code),
        lab("response_flags", if code == "503" { "UF" } else { "-" }),
        lab("source_app", s.app),
        lab("source_canonical_revision", s.version),
        lab("source_canonical_service", s.app),
        lab("source_cluster", "Kubernetes"),
        lab(
            "source_principal",
            &format!("spiffe://cluster.local/ns/{}/sa/{}", s.ns, s.app),
        ),
        lab("source_version", s.version),
        lab("source_workload", &format!("{}-{}", s.app, s.version)),
        lab("source_workload_namespace", s.ns),
    ];
    if grpc {
        v.push(lab("grpc_response_status", "0"));
    }
    v
}

/// Produces remote-write bodies block by block in time order: a block is
/// `spp` consecutive steps; a request is `per_request` consecutive series
/// with their `spp` samples of the block.
pub struct RwGen {
    pub set: IstioSet,
    state: Vec<f64>,
    /// Next step to produce (step 0 is the base value).
    next_step: i64,
    pub start_ms: i64,
    pub per_request: usize,
    pub spp: usize,
    comp: snap::raw::Encoder,
}

impl RwGen {
    pub fn new(set: IstioSet, start_ms: i64, per_request: usize, spp: usize) -> RwGen {
        let state = (0..set.len()).map(|i| set.base(i)).collect();
        RwGen {
            set,
            state,
            next_step: 0,
            start_ms,
            per_request: per_request.max(1),
            spp: spp.max(1),
            comp: snap::raw::Encoder::new(),
        }
    }

    pub fn groups(&self) -> usize {
        self.set.len().div_ceil(self.per_request)
    }

    /// The next block: one snappy-compressed body per group (group g =
    /// series g*per_request..), with the number of samples in each.
    pub fn next_block(&mut self) -> Vec<(Vec<u8>, usize)> {
        let k0 = self.next_step;
        self.next_step += self.spp as i64;
        let n = self.set.len();
        let mut out = Vec::with_capacity(self.groups());
        let mut g0 = 0;
        while g0 < n {
            let g1 = (g0 + self.per_request).min(n);
            let mut req = WriteRequest {
                timeseries: Vec::with_capacity(g1 - g0),
                ..Default::default()
            };
            for i in g0..g1 {
                let mut samples = Vec::with_capacity(self.spp);
                for k in k0..k0 + self.spp as i64 {
                    if k > 0 {
                        self.state[i] += self.set.inc(i, k);
                    }
                    samples.push(Sample {
                        value: self.state[i],
                        timestamp: self.start_ms + k * STEP_MS,
                    });
                }
                req.timeseries.push(TimeSeries {
                    labels: std::mem::take(&mut self.set.labels[i]),
                    samples,
                    ..Default::default()
                });
            }
            let raw = req.encode_to_vec();
            for (j, ts) in req.timeseries.into_iter().enumerate() {
                self.set.labels[g0 + j] = ts.labels;
            }
            let body = self.comp.compress_vec(&raw).unwrap_or_default();
            out.push((body, (g1 - g0) * self.spp));
            g0 = g1;
        }
        out
    }
}

/// Writes series `0..set.len()`, steps `k0..k1` as OpenMetrics text,
/// series-major (one family after the other, each series' samples in time
/// order), advancing `state` (the value at step k0-1, or the base).
pub fn write_openmetrics(
    set: &IstioSet,
    state: &mut [f64],
    start_ms: i64,
    k0: i64,
    k1: i64,
    out: &mut impl std::io::Write,
) -> std::io::Result<u64> {
    let mut line = String::with_capacity(2048);
    let mut n = 0u64;
    for (i, st) in state.iter_mut().enumerate().take(set.len()) {
        let mut prefix = String::with_capacity(1500);
        let ls = &set.labels[i];
        let name = ls
            .iter()
            .find(|l| l.name == b"__name__")
            .map_or("", |l| label_str(&l.value));
        prefix.push_str(name);
        prefix.push('{');
        let mut first = true;
        for l in ls.iter().filter(|l| l.name != b"__name__") {
            if !first {
                prefix.push(',');
            }
            first = false;
            let _ = write!(prefix, "{}=\"{}\"", label_str(&l.name), label_str(&l.value));
        }
        prefix.push_str("} ");
        for k in k0..k1 {
            if k > 0 {
                *st += set.inc(i, k);
            }
            line.clear();
            line.push_str(&prefix);
            let ts = start_ms + k * STEP_MS;
            let _ = writeln!(line, "{} {}.{:03}", *st as i64, ts / 1000, ts % 1000);
            out.write_all(line.as_bytes())?;
            n += 1;
        }
    }
    Ok(n)
}

/// Envoy `/stats/prometheus`-like text of one sidecar: `series` series of
/// cluster counters, gauges and two histograms per upstream cluster; values
/// move with time so every scrape differs.
pub struct EnvoyTarget {
    /// (family header "# TYPE ...", series of the family: (prefix, kind, seed))
    families: Vec<Family>,
}

const ENVOY_COUNTERS: [&str; 12] = [
    "upstream_cx_total",
    "upstream_cx_destroy",
    "upstream_cx_connect_fail",
    "upstream_rq_total",
    "upstream_rq_timeout",
    "upstream_rq_retry",
    "upstream_rq_pending_total",
    "upstream_cx_rx_bytes_total",
    "upstream_cx_tx_bytes_total",
    "lb_healthy_panic",
    "membership_change",
    "update_success",
];
const ENVOY_GAUGES: [&str; 6] = [
    "membership_healthy",
    "membership_total",
    "upstream_cx_active",
    "upstream_rq_active",
    "upstream_rq_pending_active",
    "circuit_breakers_default_cx_open",
];

impl EnvoyTarget {
    pub fn new(target: usize, series: usize) -> EnvoyTarget {
        // Per cluster: 12 counters + 5 rq_xx + 6 gauges + 2 histograms x 22 = 67.
        let clusters = series.div_ceil(67).max(1);
        let cname = |c: usize| {
            let w = workload((target + c) % WORKLOADS);
            format!(
                "outbound|{}||{}-{}.{}.svc.cluster.local",
                9080 + c % 7,
                w.app,
                c,
                w.ns
            )
        };
        let mut fams: Vec<Family> = Vec::new();
        let seed = |a: usize, b: usize, c: usize| {
            h2((target * 1_000_003 + a) as u64, (b * 101 + c) as u64)
        };
        for (fi, n) in ENVOY_COUNTERS.iter().enumerate() {
            let name = format!("envoy_cluster_{n}");
            let s = (0..clusters)
                .map(|c| {
                    (
                        format!("{name}{{cluster_name=\"{}\"}} ", cname(c)),
                        0u8,
                        seed(fi, c, 0),
                    )
                })
                .collect();
            fams.push((format!("# TYPE {name} counter\n"), s));
        }
        {
            let name = "envoy_cluster_upstream_rq_xx";
            let mut s = Vec::new();
            for c in 0..clusters {
                for (x, class) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
                    s.push((
                        format!(
                            "{name}{{response_code_class=\"{class}\",cluster_name=\"{}\"}} ",
                            cname(c)
                        ),
                        0u8,
                        seed(20, c, x),
                    ));
                }
            }
            fams.push((format!("# TYPE {name} counter\n"), s));
        }
        for (fi, n) in ENVOY_GAUGES.iter().enumerate() {
            let name = format!("envoy_cluster_{n}");
            let s = (0..clusters)
                .map(|c| {
                    (
                        format!("{name}{{cluster_name=\"{}\"}} ", cname(c)),
                        1u8,
                        seed(30 + fi, c, 0),
                    )
                })
                .collect();
            fams.push((format!("# TYPE {name} gauge\n"), s));
        }
        for (hi, n) in ["upstream_rq_time", "upstream_cx_connect_ms"]
            .iter()
            .enumerate()
        {
            let name = format!("envoy_cluster_{n}");
            let mut s = Vec::new();
            for c in 0..clusters {
                let cn = cname(c);
                let sd = seed(40 + hi, c, 0);
                for (j, le) in BUCKETS.iter().enumerate() {
                    s.push((
                        format!("{name}_bucket{{cluster_name=\"{cn}\",le=\"{le}\"}} "),
                        10 + j as u8,
                        sd,
                    ));
                }
                s.push((format!("{name}_sum{{cluster_name=\"{cn}\"}} "), 2u8, sd));
                s.push((format!("{name}_count{{cluster_name=\"{cn}\"}} "), 3u8, sd));
            }
            fams.push((format!("# TYPE {name} histogram\n"), s));
        }
        // Trim to exactly `series` (from the end; histograms stay whole where possible).
        let mut total: usize = fams.iter().map(|f| f.1.len()).sum();
        while total > series {
            let Some(last) = fams.iter_mut().rev().find(|f| !f.1.is_empty()) else {
                break;
            };
            last.1.pop();
            total -= 1;
        }
        EnvoyTarget { families: fams }
    }

    /// The exposition at time `t_s` (seconds).
    pub fn render(&self, t_s: f64, out: &mut String) {
        out.clear();
        for (header, series) in &self.families {
            if series.is_empty() {
                continue;
            }
            out.push_str(header);
            for (prefix, kind, seed) in series {
                let (kind, seed) = (*kind, *seed);
                out.push_str(prefix);
                let rate = 1.0 + (seed % 50) as f64;
                let count = ((seed >> 8) % 100_000) as f64 + (rate * t_s / 15.0).floor();
                match kind {
                    0 => {
                        let _ = writeln!(out, "{}", count as u64);
                    }
                    1 => {
                        let v = h2(seed, (t_s / 15.0) as u64) % 64;
                        let _ = writeln!(out, "{v}");
                    }
                    2 => {
                        let mean = 3.0 + (seed % 97) as f64;
                        let _ = writeln!(out, "{:.1}", count * mean);
                    }
                    3 => {
                        let _ = writeln!(out, "{}", count as u64);
                    }
                    b => {
                        let j = (b - 10) as usize;
                        let mean = 3.0 + (seed % 97) as f64;
                        let cdf = if j >= BUCKET_LE.len() {
                            1.0
                        } else {
                            1.0 - (-BUCKET_LE[j] / mean).exp()
                        };
                        let _ = writeln!(out, "{}", (count * cdf).floor() as u64);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn counters_increase_and_buckets_are_cumulative() {
        let set = IstioSet::new(2100);
        assert_eq!(set.len(), 2100);
        for i in 0..set.len() {
            let l = &set.labels[i];
            assert!(l.windows(2).all(|w| w[0].name < w[1].name), "sorted");
            for k in 1..50 {
                assert!(set.inc(i, k) >= 0.0);
            }
        }
        // Buckets of combo 3 at step 7: cumulative in le, +Inf = requests.
        let c = 3;
        let incs: Vec<f64> = (0..20)
            .map(|j| set.inc(set.combos + c * 20 + j, 7))
            .collect();
        assert!(incs.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(incs[19], set.inc(c, 7));
    }

    #[test]
    fn remote_write_round_trip() {
        let set = IstioSet::new(2100);
        let mut g = RwGen::new(set, 1_000_000, 500, 4);
        let b = g.next_block();
        assert_eq!(b.len(), 5);
        let raw = snap::raw::Decoder::new().decompress_vec(&b[0].0).unwrap();
        let req = WriteRequest::decode(raw.as_slice()).unwrap();
        assert_eq!(req.timeseries.len(), 500);
        assert_eq!(req.timeseries[0].samples.len(), 4);
        assert_eq!(req.timeseries[0].samples[1].timestamp, 1_000_000 + STEP_MS);
        assert!(!g.set.labels[0].is_empty(), "labels put back");
        let b2 = g.next_block();
        let raw = snap::raw::Decoder::new().decompress_vec(&b2[0].0).unwrap();
        let req2 = WriteRequest::decode(raw.as_slice()).unwrap();
        assert!(req2.timeseries[0].samples[0].value >= req.timeseries[0].samples[3].value);
    }

    #[test]
    fn envoy_target_has_the_series_asked_for() {
        let t = EnvoyTarget::new(3, 2000);
        let mut s = String::new();
        t.render(1000.0, &mut s);
        let n = s.lines().filter(|l| !l.starts_with('#')).count();
        assert_eq!(n, 2000);
    }
}
