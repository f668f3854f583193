//! Differential PromQL test: the same Istio-like data goes to meshlens and to
//! a real Prometheus (Debian `prometheus`, 2.42) by remote write, then every
//! query of `tests/data/promql/istio_queries.txt` (Istio's Grafana
//! dashboards), `tests/data/promql/kiali_queries.txt` (what Kiali asks) and
//! [`EXTRA_QUERIES`] runs against both through `/api/v1/query` (GET) and
//! `/api/v1/query_range` (form POST); the answers must agree: same status
//! (and `errorType` on errors), same `resultType`, the same series (compared
//! as sets keyed by label set; in order only for a top-level `sort`/
//! `sort_desc`), the same timestamps, values equal within a relative 1e-6
//! (absolute 1e-12 near zero; NaN equals NaN; "+Inf"/"-Inf" exactly). Every
//! difference is collected; the test fails at the end with all of them and
//! "N of M queries agree". The full list also goes to
//! `<tmp>/promql-differential-report.txt`.
//!
//! # The data
//!
//! Bookinfo, generated with a seeded PRNG (splitmix64; nothing depends on the
//! wall clock except the timestamps): istio-ingressgateway (istio-system) ->
//! productpage-v1 -> details-v1 and reviews-v1/v2/v3 -> ratings-v1 (reviews-v3
//! also -> ratings-v2); TCP from ratings-v2 and reviews-v1 to mongodb-v1 and
//! from productpage-v1 to reviews-v1; traffic from outside the mesh
//! (source_workload="unknown", reported by the destination only: HTTP to
//! productpage-v1 and reviews-v1, TCP to reviews-v1) and requests the gateway
//! could not route (destination_workload="unknown", 503 UH, reported by the
//! source only). Both reporters for in-mesh calls. connection_security_policy
//! is "mutual_tls", except for HTTP calls from outside the mesh and, until
//! -30m, to and from reviews-v1 ("none", principals "unknown"; from -30m
//! those calls are mTLS: new series) and what the gateway reports as source
//! ("unknown"). (Real sidecars report "unknown" as source too, and
//! Bookinfo has no TCP into reviews; both are changed so that the dashboards'
//! mTLS/plain-text and TCP panels have data.) Some 404/500/503 series, some appearing
//! only after the start (reviews-v3's 503s from -40m), one counter reset
//! (every destination-reported series of details-v1 restarts at -20m).
//! Series that exist from the start carry a day of history (their first
//! sample is large: the proxies have been up for a while); series born later
//! have 0 as their first sample (see the extrapolation point below).
//! Metrics: `istio_requests_total`, `istio_request_duration_milliseconds_*`
//! (Istio's buckets 1 .. 3600000, +Inf), `istio_request_bytes_*`,
//! `istio_response_bytes_*`, `istio_tcp_{sent,received}_bytes_total`,
//! `istio_tcp_connections_{opened,closed}_total`, `istio_build`, `up`,
//! `pilot_k8s_cfg_events`, `pilot_proxy_convergence_time_{sum,count}`, istiod's
//! `container_cpu_usage_seconds_total`, `process_cpu_seconds_total`,
//! `container_memory_working_set_bytes`, `process_resident_memory_bytes`.
//! Target labels as Prometheus's kubernetes-pods job gives them (`job`,
//! `instance`, `namespace`, `pod`, `app`, `version`). 241 sample times, one
//! hour, 15 s apart; requests go out in time order (every series at t1, then
//! every series at t2, ...), so Prometheus never sees an out-of-order sample.
//!
//! # Prometheus 2.42 (the reference we can run) versus 3.x (what meshlens targets)
//!
//! - Range selectors, subquery ranges and the 5m lookback of instant selectors
//!   are left-open `(t-r, t]` in 3.x and closed `[t-r, t]` in 2.x. They only
//!   differ when a sample (or a subquery step) lies exactly on `t-r`, so no
//!   sample or subquery step ever does here: samples are at `B + 7s + k*15s`
//!   (B a multiple of 15 s), every evaluation time is `B + 11s + j*15s` (so
//!   `t - r` is ≡ 11 s mod 15 s for every range `r` that is a whole multiple
//!   of 15 s: all ranges and offsets in the corpus are), and subquery steps
//!   (multiples of their step from the epoch, 1m here) are ≡ 0 s mod 15 s.
//!   One more instant, `end - 10m - 250ms` (≡ 10.75 s mod 15 s), checks
//!   fractional times.
//!   Queries with ranges or offsets that are not a multiple of 15 s, or with
//!   `@`, would need the same care; there are none.
//! - `rate`/`increase` extrapolation at the start of a series: since
//!   prometheus/prometheus#13725 (2024, before 3.0) the "first sample is more than
//!   1.1 average intervals from the window start" test comes first (then half
//!   an interval), and the counter zero point only shortens that; 2.42 clamps
//!   to the zero point first and then applies the test. They differ when the
//!   zero point lies between 0.5 and 1.1 average intervals before the first
//!   sample, i.e. a window that starts before a series' first sample whose
//!   value is small but not 0. Hence the data above: a series' first sample is
//!   either huge (zero point far away: both give half an interval) or exactly
//!   0 (zero point at the first sample: both give 0). A real Istio series is
//!   born at its first request's count (1, 2, ...), which often falls into
//!   the gap.
//! - `sum`/`avg` (and `*_over_time`) use Kahan-compensated summation in 3.x,
//!   plain summation in 2.42: last-bit differences, far inside the 1e-6
//!   tolerance, except when `round(x, step)` lands on a tie and the last bit
//!   decides. Values that differ by exactly one rounding step of a query with
//!   `round(` are reported as "tolerated: round() tie" and do not fail.
//! - `holt_winters` is `double_exponential_smoothing` in 3.x (behind a
//!   feature flag); functions newer than 2.42 (`sort_by_label`, `limitk`,
//!   `mad_over_time`, `info`, ...) and UTF-8 quoted names do not exist in
//!   2.42: none are used.
//! - Regex `.` matches a newline in 3.x only: no label value here has one.
//! - `histogram_quantile` in 3.x also treats bucket counts that differ by a
//!   relative 1e-12 as equal; only matters when a quantile's rank falls into
//!   such float noise, which this data does not produce in practice.
//! - 3.x scrapes normalise `le`/`quantile` values ("1" -> "1.0"); remote write
//!   stores them verbatim in both, and this data uses Istio's own spelling.
//! - Annotations (`warnings`, `infos`) are not compared.
//!
//! Debugging: `MESHLENS_PROMDIFF_FILTER=<substring>` runs only the queries
//! whose text or origin (`kiali_queries.txt:78`, `extra#3`) contains it;
//! `MESHLENS_PROMDIFF_HOLD=<seconds>` keeps both servers up that long after
//! the run and prints their API URLs and the evaluation end time.
//!
//! If Prometheus is not installed (`MESHLENS_TEST_PROMETHEUS`, set by
//! scripts/test.sh) the test prints a SKIPPED line and passes (fails in CI).
//! If meshlens answers 404 on `/api/v1/query`, the corpus is still checked
//! against Prometheus and the test fails saying so.

mod common;

use common::{Prometheus, Server, client, required_tool, temp_dir};
use meshlens_ingest::remote_write::{Label, Sample, TimeSeries, WriteRequest};
use prost::Message;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Targeted queries beyond the dashboards: functions and operators the
/// corpus does not reach (or reaches only inside something bigger).
/// `topk`/`bottomk`/`sort` rank float sums, not request rates: request rates
/// of similar workloads tie exactly now and then (integer counts over the
/// same window), and which of two tied series Prometheus keeps or puts first
/// is unspecified (in a range query it follows Go map order, so it changes
/// from run to run).
const EXTRA_QUERIES: &[&str] = &[
    // `or on () vector(1)`, as the service dashboard divides by it.
    r#"sum(rate(istio_requests_total{reporter="destination",destination_workload="no-such-workload"}[1m])) or on () vector(1)"#,
    r#"sum(rate(istio_requests_total{reporter="destination",response_code=~"5.."}[1m])) / (sum(rate(istio_requests_total{reporter="destination"}[1m])) or on () vector(1))"#,
    r#"label_join(istio_build, "component_tag", "-", "component", "tag")"#,
    r#"label_replace(sum by (destination_service) (rate(istio_requests_total{reporter="destination"}[5m])), "svc", "$1", "destination_service", "([^.]+)\\..*")"#,
    r#"round(sum by (destination_workload) (rate(istio_requests_total{reporter="destination"}[5m])))"#,
    r#"round(sum by (destination_workload) (rate(istio_requests_total{reporter="destination"}[5m])), 0.1)"#,
    r#"topk(3, sum by (destination_workload) (rate(istio_requests_total{reporter="destination"}[5m])))"#,
    r#"bottomk(2, sum by (destination_workload) (rate(istio_request_duration_milliseconds_sum{reporter="destination"}[5m])))"#,
    r#"count by (destination_service) (istio_requests_total)"#,
    r#"count(count by (destination_workload) (istio_requests_total))"#,
    r#"count_values("tag", istio_build)"#,
    r#"sum by (destination_workload) (rate(istio_requests_total{reporter="destination"}[5m] offset 10m))"#,
    r#"sum by (destination_workload) (rate(istio_requests_total{reporter="destination"}[5m])) - sum by (destination_workload) (rate(istio_requests_total{reporter="destination"}[5m] offset 15m))"#,
    r#"irate(istio_requests_total{reporter="source",source_workload="productpage-v1",response_code="200"}[1m])"#,
    r#"increase(istio_requests_total{reporter="destination",destination_workload="details-v1"}[10m])"#,
    r#"resets(istio_requests_total{reporter="destination",destination_workload="details-v1"}[30m])"#,
    r#"changes(pilot_k8s_cfg_events[60m])"#,
    r#"histogram_quantile(0.99, sum by (le, destination_workload) (rate(istio_request_duration_milliseconds_bucket{reporter="destination"}[1m])))"#,
    r#"histogram_quantile(0.5, sum by (le) (rate(istio_response_bytes_bucket[5m])))"#,
    r#"absent(istio_requests_total{destination_workload="nonexistent"})"#,
    r#"absent(istio_requests_total)"#,
    r#"absent(nonexistent_metric{job="x",instance=~"y"})"#,
    r#"sort_desc(sum by (destination_workload) (rate(istio_request_duration_milliseconds_sum{reporter="destination"}[5m])))"#,
    r#"sort(sum by (source_workload) (rate(istio_response_bytes_sum{reporter="source"}[5m])))"#,
    r#"max_over_time(rate(istio_requests_total{reporter="destination",destination_workload="reviews-v3",response_code="503"}[1m])[10m:1m])"#,
    r#"max_over_time(sum(rate(istio_requests_total{reporter="destination"}[1m]))[10m:1m])"#,
    r#"avg_over_time(container_memory_working_set_bytes[10m])"#,
    r#"quantile_over_time(0.9, process_resident_memory_bytes[15m])"#,
    r#"deriv(process_resident_memory_bytes[10m])"#,
    r#"predict_linear(container_memory_working_set_bytes[10m], 3600)"#,
    r#"delta(container_memory_working_set_bytes[5m])"#,
    r#"last_over_time(istio_build{component="pilot"}[5m])"#,
    r#"present_over_time(istio_requests_total{response_code="503",response_flags="UH"}[5m])"#,
    r#"quantile(0.5, sum by (destination_workload) (rate(istio_requests_total{reporter="destination"}[5m])))"#,
    r#"stddev(sum by (destination_workload) (rate(istio_requests_total{reporter="destination"}[5m])))"#,
    r#"sum without (instance, pod, job) (rate(istio_tcp_sent_bytes_total[5m]))"#,
    r#"sum by (destination_workload) (rate(istio_requests_total{reporter="destination",response_code=~"5.."}[5m])) / on (destination_workload) group_left sum by (destination_workload) (rate(istio_requests_total{reporter="destination"}[5m]))"#,
    r#"rate(istio_requests_total{reporter="source",response_code="200"}[1m]) > bool 1"#,
    r#"istio_build unless on (pod) up{app="productpage"}"#,
    r#"istio_build and on (pod) up{app=~"reviews|ratings"}"#,
    r#"clamp_min(sum(rate(istio_requests_total{response_code=~"5.."}[1m])), 0.5)"#,
    r#"scalar(sum(rate(istio_requests_total{reporter="destination"}[1m])))"#,
    r#"timestamp(istio_build{component="pilot"})"#,
    r#"time() - timestamp(up)"#,
    r#"1 + 1"#,
    r#"vector(1)"#,
    r#""meshlens""#,
    r#"istio_requests_total{reporter="destination",destination_workload="details-v1",response_code="200"}[2m]"#,
    r#"sum(rate(istio_requests_total[1m])) by ("#,
];

type Key = Vec<(String, String)>;

// ---------------------------------------------------------------------------
// Deterministic data.

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let u1 = self.unit().max(1e-12);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
    /// A count with mean `mean` (jittered, integral).
    fn count(&mut self, mean: f64) -> u64 {
        (mean * (0.75 + 0.5 * self.unit()) + self.unit()).floor() as u64
    }
}

const DURATION_BUCKETS: &[&str] = &[
    "1", "5", "10", "25", "50", "100", "250", "500", "1000", "2500", "5000", "10000", "30000",
    "60000", "300000", "600000", "1800000", "3600000", "+Inf",
];
const BYTES_BUCKETS: &[&str] = &[
    "1", "10", "100", "1000", "10000", "100000", "1000000", "10000000", "+Inf",
];
const CLUSTER: &str = "Kubernetes";
const STEP_MS: i64 = 15_000;
const STEPS: i64 = 241;
/// Samples at `base + SAMPLE_PHASE_MS + k*STEP_MS`.
const SAMPLE_PHASE_MS: i64 = 7_000;
/// Evaluations at `base + EVAL_PHASE_MS + j*STEP_MS`.
const EVAL_PHASE_MS: i64 = 11_000;

#[derive(Clone, Copy)]
struct Wl {
    name: &'static str,
    app: &'static str,
    version: &'static str,
    ns: &'static str,
    sa: &'static str,
    pod: &'static str,
    ip: &'static str,
}

const INGRESS: Wl = Wl {
    name: "istio-ingressgateway",
    app: "istio-ingressgateway",
    version: "unknown",
    ns: "istio-system",
    sa: "istio-ingressgateway-service-account",
    pod: "istio-ingressgateway-5b8f9c7d6-q9wzt",
    ip: "10.244.0.7",
};
const PRODUCTPAGE: Wl = Wl {
    name: "productpage-v1",
    app: "productpage",
    version: "v1",
    ns: "default",
    sa: "bookinfo-productpage",
    pod: "productpage-v1-7d6cfb7dfd-4kx8q",
    ip: "10.244.0.11",
};
const DETAILS: Wl = Wl {
    name: "details-v1",
    app: "details",
    version: "v1",
    ns: "default",
    sa: "bookinfo-details",
    pod: "details-v1-6997d94bb9-6vs6c",
    ip: "10.244.0.12",
};
const REVIEWS_V1: Wl = Wl {
    name: "reviews-v1",
    app: "reviews",
    version: "v1",
    ns: "default",
    sa: "bookinfo-reviews",
    pod: "reviews-v1-5fd6d4f8f8-8jxm2",
    ip: "10.244.0.13",
};
const REVIEWS_V2: Wl = Wl {
    name: "reviews-v2",
    app: "reviews",
    version: "v2",
    ns: "default",
    sa: "bookinfo-reviews",
    pod: "reviews-v2-6f9b55c5db-kq7p9",
    ip: "10.244.0.14",
};
const REVIEWS_V3: Wl = Wl {
    name: "reviews-v3",
    app: "reviews",
    version: "v3",
    ns: "default",
    sa: "bookinfo-reviews",
    pod: "reviews-v3-7d99fd7f58-z5h6d",
    ip: "10.244.0.15",
};
const RATINGS_V1: Wl = Wl {
    name: "ratings-v1",
    app: "ratings",
    version: "v1",
    ns: "default",
    sa: "bookinfo-ratings",
    pod: "ratings-v1-b8f8fcf49-2xgnd",
    ip: "10.244.0.16",
};
const RATINGS_V2: Wl = Wl {
    name: "ratings-v2",
    app: "ratings",
    version: "v2",
    ns: "default",
    sa: "bookinfo-ratings-v2",
    pod: "ratings-v2-6c8d7f9b4-m4k2r",
    ip: "10.244.0.17",
};
const MONGODB: Wl = Wl {
    name: "mongodb-v1",
    app: "mongodb",
    version: "v1",
    ns: "default",
    sa: "default",
    pod: "mongodb-v1-5d8c9b7f6-t8v3n",
    ip: "10.244.0.18",
};
const ISTIOD: Wl = Wl {
    name: "istiod",
    app: "istiod",
    version: "",
    ns: "istio-system",
    sa: "istiod",
    pod: "istiod-7c9d8b6f5-x2k4q",
    ip: "10.244.0.5",
};
const PODS: &[Wl] = &[
    INGRESS,
    PRODUCTPAGE,
    DETAILS,
    REVIEWS_V1,
    REVIEWS_V2,
    REVIEWS_V3,
    RATINGS_V1,
    RATINGS_V2,
    MONGODB,
];

/// One response code of an edge: its share of the edge's requests, active
/// between two times given in minutes relative to the end (-60 .. 0).
struct Code {
    code: &'static str,
    flags: &'static str,
    share: f64,
    from: f64,
    to: f64,
}

const fn code(code: &'static str, flags: &'static str, share: f64) -> Code {
    Code {
        code,
        flags,
        share,
        from: -61.0,
        to: 1.0,
    }
}

struct HttpEdge {
    /// None: a client outside the mesh.
    src: Option<Wl>,
    /// None: no upstream (the call failed in the source proxy).
    dst: Option<Wl>,
    service: &'static str,
    rps: f64,
    mtls: bool,
    median_ms: f64,
    resp_bytes: f64,
    codes: Vec<Code>,
}

fn http_edges() -> Vec<HttpEdge> {
    let e = |src, dst, service, rps, median_ms, resp_bytes, codes| HttpEdge {
        src,
        dst,
        service,
        rps,
        mtls: true,
        median_ms,
        resp_bytes,
        codes,
    };
    vec![
        e(
            Some(INGRESS),
            Some(PRODUCTPAGE),
            "productpage",
            8.0,
            35.0,
            5200.0,
            vec![
                code("200", "-", 0.97),
                code("404", "-", 0.02),
                Code {
                    from: -45.0,
                    to: -15.0,
                    ..code("503", "UF", 0.01)
                },
            ],
        ),
        HttpEdge {
            mtls: false,
            ..e(
                None,
                Some(PRODUCTPAGE),
                "productpage",
                0.5,
                30.0,
                5100.0,
                vec![code("200", "-", 1.0)],
            )
        },
        HttpEdge {
            mtls: false,
            ..e(
                None,
                Some(REVIEWS_V1),
                "reviews",
                0.2,
                5.0,
                295.0,
                vec![code("200", "-", 0.95), code("404", "-", 0.05)],
            )
        },
        e(
            Some(INGRESS),
            None,
            "productpage",
            0.3,
            0.4,
            91.0,
            vec![Code {
                from: -40.0,
                to: -20.0,
                ..code("503", "UH", 1.0)
            }],
        ),
        e(
            Some(PRODUCTPAGE),
            Some(DETAILS),
            "details",
            8.0,
            3.0,
            178.0,
            vec![code("200", "-", 0.99), code("500", "-", 0.01)],
        ),
        // reviews-v1 talks plain text until -30m, mTLS after (its
        // DestinationRule's `tls: DISABLE` removed).
        HttpEdge {
            mtls: false,
            ..e(
                Some(PRODUCTPAGE),
                Some(REVIEWS_V1),
                "reviews",
                2.7,
                6.0,
                295.0,
                vec![Code {
                    to: -30.0,
                    ..code("200", "-", 1.0)
                }],
            )
        },
        e(
            Some(PRODUCTPAGE),
            Some(REVIEWS_V1),
            "reviews",
            2.7,
            6.0,
            295.0,
            vec![Code {
                from: -30.0,
                ..code("200", "-", 1.0)
            }],
        ),
        e(
            Some(PRODUCTPAGE),
            Some(REVIEWS_V2),
            "reviews",
            2.7,
            14.0,
            358.0,
            vec![code("200", "-", 1.0)],
        ),
        e(
            Some(PRODUCTPAGE),
            Some(REVIEWS_V3),
            "reviews",
            2.6,
            18.0,
            358.0,
            vec![
                code("200", "-", 0.9),
                Code {
                    from: -40.0,
                    ..code("503", "URX", 0.1)
                },
            ],
        ),
        HttpEdge {
            mtls: false,
            ..e(
                Some(REVIEWS_V1),
                Some(RATINGS_V1),
                "ratings",
                2.7,
                2.0,
                48.0,
                vec![Code {
                    to: -30.0,
                    ..code("200", "-", 1.0)
                }],
            )
        },
        e(
            Some(REVIEWS_V1),
            Some(RATINGS_V1),
            "ratings",
            2.7,
            2.0,
            48.0,
            vec![Code {
                from: -30.0,
                ..code("200", "-", 1.0)
            }],
        ),
        e(
            Some(REVIEWS_V2),
            Some(RATINGS_V1),
            "ratings",
            2.7,
            2.5,
            48.0,
            vec![code("200", "-", 1.0)],
        ),
        e(
            Some(REVIEWS_V3),
            Some(RATINGS_V1),
            "ratings",
            1.8,
            2.5,
            48.0,
            vec![code("200", "-", 1.0)],
        ),
        e(
            Some(REVIEWS_V3),
            Some(RATINGS_V2),
            "ratings",
            0.8,
            9.0,
            48.0,
            vec![code("200", "-", 0.95), code("500", "-", 0.05)],
        ),
    ]
}

/// One request on `e`: (latency at the destination in ms, extra latency seen
/// by the source, request bytes, response bytes).
fn draw(rng: &mut Rng, e: &HttpEdge, errored: bool) -> (f64, f64, f64, f64) {
    let median = if errored {
        e.median_ms * 0.4
    } else {
        e.median_ms
    };
    let lat = median * (0.55 * rng.normal()).exp();
    let overhead = 0.3 + 0.6 * rng.unit();
    let req = (180.0 * (0.3 * rng.normal()).exp()).round();
    let resp = if errored {
        (19.0 + 80.0 * rng.unit()).round()
    } else {
        (e.resp_bytes * (0.25 * rng.normal()).exp()).round()
    };
    (lat, overhead, req, resp)
}

/// Applies `obs` (each `weight` times) to one group's series.
fn record(st: &mut Store, g: &HttpGroup, obs: &[(f64, f64, f64, f64)], weight: f64) {
    st.values[g.requests] += obs.len() as f64 * weight;
    for (lat, overhead, req, resp) in obs {
        let lat = if g.reporter == "source" {
            lat + overhead
        } else {
            *lat
        };
        g.duration.observe(st, lat, weight);
        g.req_bytes.observe(st, *req, weight);
        g.resp_bytes.observe(st, *resp, weight);
    }
}

/// Weighted observations standing for the day of traffic before the data.
const WARMUP_OBS: usize = 200;

struct TcpEdge {
    /// None: a client outside the mesh (only the destination reports).
    src: Option<Wl>,
    dst: Wl,
    service: &'static str,
    mtls: bool,
    /// Connections per 15 s.
    conns: f64,
    /// Bytes per connection, client to server.
    sent: f64,
    /// Bytes per connection, server to client.
    received: f64,
}

fn tcp_edges() -> Vec<TcpEdge> {
    let t = |src, dst, service, mtls, conns, sent, received| TcpEdge {
        src,
        dst,
        service,
        mtls,
        conns,
        sent,
        received,
    };
    vec![
        t(
            Some(RATINGS_V2),
            MONGODB,
            "mongodb",
            true,
            3.0,
            2400.0,
            9100.0,
        ),
        t(
            Some(REVIEWS_V1),
            MONGODB,
            "mongodb",
            true,
            1.5,
            1800.0,
            5200.0,
        ),
        t(
            Some(PRODUCTPAGE),
            REVIEWS_V1,
            "reviews",
            true,
            1.0,
            700.0,
            1500.0,
        ),
        t(None, REVIEWS_V1, "reviews", false, 0.6, 90.0, 40.0),
    ]
}

/// The series catalog and the current value of every series.
#[derive(Default)]
struct Store {
    labels: Vec<Key>,
    values: Vec<f64>,
    live: Vec<bool>,
    index: HashMap<Key, usize>,
}

impl Store {
    fn series(&mut self, name: &str, base: &[(String, String)], extra: &[(&str, &str)]) -> usize {
        let mut l: Key = base.to_vec();
        l.push(("__name__".into(), name.into()));
        l.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        l.sort();
        if let Some(&i) = self.index.get(&l) {
            return i;
        }
        self.labels.push(l.clone());
        self.values.push(0.0);
        self.live.push(false);
        self.index.insert(l, self.labels.len() - 1);
        self.labels.len() - 1
    }
    fn live_series(
        &mut self,
        name: &str,
        base: &[(String, String)],
        extra: &[(&str, &str)],
    ) -> usize {
        let i = self.series(name, base, extra);
        self.live[i] = true;
        i
    }
}

struct Hist {
    buckets: Vec<(f64, usize)>,
    sum: usize,
    count: usize,
}

impl Hist {
    fn new(store: &mut Store, name: &str, base: &[(String, String)], les: &[&str]) -> Hist {
        let buckets = les
            .iter()
            .map(|le| {
                let bound = if *le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().expect("bucket bound")
                };
                (
                    bound,
                    store.series(&format!("{name}_bucket"), base, &[("le", le)]),
                )
            })
            .collect();
        Hist {
            buckets,
            sum: store.series(&format!("{name}_sum"), base, &[]),
            count: store.series(&format!("{name}_count"), base, &[]),
        }
    }
    /// `n` observations of `v`.
    fn observe(&self, store: &mut Store, v: f64, n: f64) {
        for (bound, i) in &self.buckets {
            if v <= *bound {
                store.values[*i] += n;
            }
        }
        store.values[self.sum] += v * n;
        store.values[self.count] += n;
    }
    fn all(&self) -> Vec<usize> {
        let mut v: Vec<usize> = self.buckets.iter().map(|b| b.1).collect();
        v.push(self.sum);
        v.push(self.count);
        v
    }
}

/// The labels Prometheus's kubernetes-pods job puts on a pod's series.
fn target_labels(w: &Wl, port: u16) -> Vec<(String, String)> {
    let mut l = vec![
        ("job".to_string(), "kubernetes-pods".to_string()),
        ("instance".to_string(), format!("{}:{port}", w.ip)),
        ("namespace".to_string(), w.ns.to_string()),
        ("pod".to_string(), w.pod.to_string()),
        ("app".to_string(), w.app.to_string()),
    ];
    if !w.version.is_empty() && w.version != "unknown" {
        l.push(("version".to_string(), w.version.to_string()));
    }
    l
}

fn principal(w: &Wl) -> String {
    format!("spiffe://cluster.local/ns/{}/sa/{}", w.ns, w.sa)
}

/// Istio's standard labels for one (edge, reporter), without response code.
fn istio_labels(
    src: Option<Wl>,
    dst: Option<Wl>,
    service: &str,
    service_ns: &str,
    reporter: &str,
    mtls: bool,
    protocol: &str,
) -> Vec<(String, String)> {
    let reporter_pod = if reporter == "source" { src } else { dst }.expect("a reporting proxy");
    let mut l = target_labels(&reporter_pod, 15020);
    let mut add = |k: &str, v: &str| l.push((k.to_string(), v.to_string()));
    add("reporter", reporter);
    match src {
        Some(s) => {
            add("source_workload", s.name);
            add("source_workload_namespace", s.ns);
            add("source_app", s.app);
            add("source_version", s.version);
            add("source_canonical_service", s.app);
            add(
                "source_canonical_revision",
                if s.version == "unknown" {
                    "latest"
                } else {
                    s.version
                },
            );
            add("source_cluster", CLUSTER);
            add(
                "source_principal",
                &if mtls {
                    principal(&s)
                } else {
                    "unknown".into()
                },
            );
        }
        None => {
            for k in [
                "source_workload",
                "source_workload_namespace",
                "source_app",
                "source_version",
                "source_canonical_service",
                "source_cluster",
                "source_principal",
            ] {
                add(k, "unknown");
            }
            add("source_canonical_revision", "latest");
        }
    }
    match dst {
        Some(d) => {
            add("destination_workload", d.name);
            add("destination_workload_namespace", d.ns);
            add("destination_app", d.app);
            add("destination_version", d.version);
            add("destination_canonical_service", d.app);
            add("destination_canonical_revision", d.version);
            add("destination_cluster", CLUSTER);
            add(
                "destination_principal",
                &if mtls {
                    principal(&d)
                } else {
                    "unknown".into()
                },
            );
        }
        None => {
            for k in [
                "destination_workload",
                "destination_workload_namespace",
                "destination_app",
                "destination_version",
                "destination_canonical_service",
                "destination_cluster",
                "destination_principal",
            ] {
                add(k, "unknown");
            }
            add("destination_canonical_revision", "latest");
        }
    }
    add(
        "destination_service",
        &format!("{service}.{service_ns}.svc.cluster.local"),
    );
    add("destination_service_name", service);
    add("destination_service_namespace", service_ns);
    add("request_protocol", protocol);
    add(
        "connection_security_policy",
        if reporter == "source" && src.is_some_and(|s| s.name == INGRESS.name) {
            "unknown"
        } else if mtls {
            "mutual_tls"
        } else {
            "none"
        },
    );
    l
}

struct HttpGroup {
    edge: usize,
    code: usize,
    reporter: &'static str,
    requests: usize,
    duration: Hist,
    req_bytes: Hist,
    resp_bytes: Hist,
}

impl HttpGroup {
    fn all(&self) -> Vec<usize> {
        let mut v = vec![self.requests];
        v.extend(self.duration.all());
        v.extend(self.req_bytes.all());
        v.extend(self.resp_bytes.all());
        v
    }
}

/// Every remote-write request, in the order to send them.
struct DataSet {
    requests: Vec<WriteRequest>,
    series: usize,
    samples: usize,
    istio_requests_series: usize,
}

fn generate(base_ms: i64) -> DataSet {
    let mut rng = Rng(0x6d65_7368_6c65_6e73); // "meshlens"
    let mut st = Store::default();
    let edges = http_edges();

    // HTTP series groups: (edge, code, reporter).
    let mut groups = Vec::new();
    for (ei, e) in edges.iter().enumerate() {
        let mut reporters = Vec::new();
        if e.src.is_some() {
            reporters.push("source");
        }
        if e.dst.is_some() {
            reporters.push("destination");
        }
        for (ci, c) in e.codes.iter().enumerate() {
            for r in &reporters {
                let mut l = istio_labels(e.src, e.dst, e.service, "default", r, e.mtls, "http");
                l.push(("response_code".into(), c.code.into()));
                l.push(("response_flags".into(), c.flags.into()));
                groups.push(HttpGroup {
                    edge: ei,
                    code: ci,
                    reporter: r,
                    requests: st.series("istio_requests_total", &l, &[]),
                    duration: Hist::new(
                        &mut st,
                        "istio_request_duration_milliseconds",
                        &l,
                        DURATION_BUCKETS,
                    ),
                    req_bytes: Hist::new(&mut st, "istio_request_bytes", &l, BYTES_BUCKETS),
                    resp_bytes: Hist::new(&mut st, "istio_response_bytes", &l, BYTES_BUCKETS),
                });
            }
        }
    }

    // Codes seen since before the data start with a day of history.
    for (ei, e) in edges.iter().enumerate() {
        for (ci, c) in e.codes.iter().enumerate() {
            if c.from > -60.0 {
                continue;
            }
            let total = e.rps * c.share * 86_400.0 * (0.8 + 0.4 * rng.unit());
            let weight = (total / WARMUP_OBS as f64).round().max(1.0);
            let errored = !c.code.starts_with('2');
            let obs: Vec<_> = (0..WARMUP_OBS)
                .map(|_| draw(&mut rng, e, errored))
                .collect();
            for g in groups.iter().filter(|g| g.edge == ei && g.code == ci) {
                for i in g.all() {
                    st.live[i] = true;
                }
                record(&mut st, g, &obs, weight);
            }
        }
    }

    // TCP: (edge, reporter) -> [opened, closed, sent, received], each
    // starting with a day of history.
    let tcp_edges = tcp_edges();
    let mut tcp: Vec<(usize, [usize; 4])> = Vec::new();
    for (ti, t) in tcp_edges.iter().enumerate() {
        let reporters: &[&str] = if t.src.is_some() {
            &["source", "destination"]
        } else {
            &["destination"]
        };
        for r in reporters {
            let mut l = istio_labels(t.src, Some(t.dst), t.service, "default", r, t.mtls, "tcp");
            l.push(("response_flags".into(), "-".into()));
            let ids = [
                st.live_series("istio_tcp_connections_opened_total", &l, &[]),
                st.live_series("istio_tcp_connections_closed_total", &l, &[]),
                st.live_series("istio_tcp_sent_bytes_total", &l, &[]),
                st.live_series("istio_tcp_received_bytes_total", &l, &[]),
            ];
            let day = t.conns * 5_760.0;
            st.values[ids[0]] = day.round();
            st.values[ids[1]] = day.round() - 3.0;
            st.values[ids[2]] = (day * t.sent).round();
            st.values[ids[3]] = (day * t.received).round();
            tcp.push((ti, ids));
        }
    }

    // Control plane and per-pod series.
    let istiod = target_labels(&ISTIOD, 15014);
    for p in PODS.iter().chain([&ISTIOD]) {
        let port = if p.name == "istiod" { 15014 } else { 15020 };
        let i = st.live_series("up", &target_labels(p, port), &[]);
        st.values[i] = 1.0;
        let component = if p.name == "istiod" { "pilot" } else { "proxy" };
        let i = st.live_series(
            "istio_build",
            &target_labels(p, port),
            &[("component", component), ("tag", "1.22.3")],
        );
        st.values[i] = 1.0;
    }
    for (kind, event, v) in [
        ("VirtualService", "add", 4.0),
        ("VirtualService", "update", 2.0),
        ("VirtualService", "delete", 1.0),
        ("DestinationRule", "add", 4.0),
        ("Gateway", "add", 1.0),
        ("ServiceEntry", "add", 2.0),
        ("ServiceEntry", "delete", 1.0),
        ("PeerAuthentication", "add", 1.0),
        ("AuthorizationPolicy", "add", 2.0),
    ] {
        let i = st.live_series(
            "pilot_k8s_cfg_events",
            &istiod,
            &[("type", kind), ("event", event)],
        );
        st.values[i] = v;
    }
    let vs_add = st.series(
        "pilot_k8s_cfg_events",
        &istiod,
        &[("type", "VirtualService"), ("event", "add")],
    );
    let conv_sum = st.live_series("pilot_proxy_convergence_time_sum", &istiod, &[]);
    let conv_count = st.live_series("pilot_proxy_convergence_time_count", &istiod, &[]);
    let cadvisor: Vec<(String, String)> = [
        ("job", "kubernetes-cadvisor"),
        ("instance", "kind-control-plane"),
        ("namespace", ISTIOD.ns),
        ("pod", ISTIOD.pod),
        ("container", "discovery"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let cpu = st.live_series("container_cpu_usage_seconds_total", &cadvisor, &[]);
    let mem = st.live_series("container_memory_working_set_bytes", &cadvisor, &[]);
    let pcpu = st.live_series("process_cpu_seconds_total", &istiod, &[]);
    let rss = st.live_series("process_resident_memory_bytes", &istiod, &[]);
    st.values[mem] = 118_000_000.0;
    st.values[rss] = 97_000_000.0;
    // A day of history for the counters.
    st.values[cpu] = 1_728.4;
    st.values[pcpu] = 1_555.1;
    st.values[conv_count] = 11_520.0;
    st.values[conv_sum] = 288.7;

    // details-v1's pod restarts 20 minutes before the end.
    let reset_step = STEPS - 1 - 80;
    let mut requests = Vec::with_capacity(STEPS as usize);
    let mut samples = 0;
    for k in 0..STEPS {
        let ts = base_ms + SAMPLE_PHASE_MS + k * STEP_MS;
        let minute = (k * STEP_MS - 3_600_000) as f64 / 60_000.0;
        if k == reset_step {
            for g in &groups {
                if g.reporter == "destination"
                    && edges[g.edge].dst.map(|d| d.name) == Some("details-v1")
                {
                    for i in g.all() {
                        st.values[i] = 0.0;
                    }
                }
            }
        }
        for (ei, e) in edges.iter().enumerate() {
            for (ci, c) in e.codes.iter().enumerate() {
                if minute < c.from || minute >= c.to {
                    continue;
                }
                let n = rng.count(e.rps * c.share * 15.0);
                let errored = !c.code.starts_with('2');
                let obs: Vec<_> = (0..n).map(|_| draw(&mut rng, e, errored)).collect();
                for g in groups.iter().filter(|g| g.edge == ei && g.code == ci) {
                    if !st.live[g.requests] {
                        // A new series: its first sample is 0 (see the top of the file).
                        for i in g.all() {
                            st.live[i] = true;
                        }
                        continue;
                    }
                    record(&mut st, g, &obs, 1.0);
                }
            }
        }
        // TCP: the same connections and bytes seen by both proxies.
        for (ti, t) in tcp_edges.iter().enumerate() {
            let opened = rng.count(t.conns) as f64;
            let closed = rng.count(t.conns) as f64;
            let sent = rng.count(opened * t.sent + 0.3 * t.sent) as f64;
            let received = rng.count(opened * t.received + 0.1 * t.received) as f64;
            for (_, ids) in tcp.iter().filter(|(i, _)| *i == ti) {
                st.values[ids[0]] += opened;
                st.values[ids[1]] += closed.min(st.values[ids[0]] - st.values[ids[1]]);
                st.values[ids[2]] += sent;
                st.values[ids[3]] += received;
            }
        }
        if k == 120 {
            st.values[vs_add] += 1.0;
        }
        if rng.unit() < 0.3 {
            let pushes = 1.0 + (rng.unit() * 3.0).floor();
            st.values[conv_count] += pushes;
            st.values[conv_sum] += pushes * 0.05 * rng.unit();
        }
        st.values[cpu] += 15.0 * 0.02 * (0.5 + rng.unit());
        st.values[pcpu] += 15.0 * 0.018 * (0.5 + rng.unit());
        st.values[mem] += ((rng.unit() - 0.45) * 400_000.0).round();
        st.values[rss] += ((rng.unit() - 0.45) * 300_000.0).round();

        let timeseries: Vec<TimeSeries> = (0..st.labels.len())
            .filter(|i| st.live[*i])
            .map(|i| TimeSeries {
                labels: st.labels[i]
                    .iter()
                    .map(|(k, v)| Label {
                        name: k.clone().into_bytes(),
                        value: v.clone().into_bytes(),
                    })
                    .collect(),
                samples: vec![Sample {
                    value: st.values[i],
                    timestamp: ts,
                }],
                ..Default::default()
            })
            .collect();
        samples += timeseries.len();
        requests.push(WriteRequest {
            timeseries,
            ..Default::default()
        });
    }
    let live = (0..st.labels.len()).filter(|i| st.live[*i]);
    let istio_requests_series = live
        .clone()
        .filter(|i| {
            st.labels[*i]
                .iter()
                .any(|(k, v)| k == "__name__" && v == "istio_requests_total")
        })
        .count();
    DataSet {
        requests,
        series: live.count(),
        samples,
        istio_requests_series,
    }
}

// ---------------------------------------------------------------------------
// Running the two servers.

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

async fn remote_write(http: &reqwest::Client, url: &str, body: Vec<u8>) -> Result<(), String> {
    let resp = http
        .post(url)
        .header("Content-Encoding", "snappy")
        .header("Content-Type", "application/x-protobuf")
        .header("X-Prometheus-Remote-Write-Version", "0.1.0")
        .body(body)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = resp.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!(
            "{url}: {status}: {}",
            resp.text().await.unwrap_or_default()
        ))
    }
}

/// One evaluation of a query.
#[derive(Clone)]
enum Eval {
    Instant {
        name: &'static str,
        t_ms: i64,
    },
    Range {
        name: &'static str,
        start_ms: i64,
        end_ms: i64,
        step_s: i64,
    },
}

impl Eval {
    fn name(&self) -> &'static str {
        match self {
            Eval::Instant { name, .. } | Eval::Range { name, .. } => name,
        }
    }
}

fn secs(ms: i64) -> String {
    format!("{}.{:03}", ms.div_euclid(1000), ms.rem_euclid(1000))
}

fn form_encode(pairs: &[(&str, String)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        for (j, s) in [k.to_string(), v.clone()].iter().enumerate() {
            if j > 0 {
                out.push('=');
            }
            for b in s.bytes() {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    out.push(b as char);
                } else {
                    let _ = write!(out, "%{b:02X}");
                }
            }
        }
    }
    out
}

/// Runs one evaluation; the answer's JSON, or a synthetic error for an answer
/// that is not JSON (`errorType` "http <status>").
async fn evaluate(http: &reqwest::Client, api: &str, eval: &Eval, query: &str) -> Value {
    let resp = match eval {
        Eval::Instant { t_ms, .. } => {
            http.get(format!("{api}/query"))
                .query(&[("query", query.to_string()), ("time", secs(*t_ms))])
                .send()
                .await
        }
        Eval::Range {
            start_ms,
            end_ms,
            step_s,
            ..
        } => {
            http.post(format!("{api}/query_range"))
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(form_encode(&[
                    ("query", query.to_string()),
                    ("start", secs(*start_ms)),
                    ("end", secs(*end_ms)),
                    ("step", step_s.to_string()),
                ]))
                .send()
                .await
        }
    };
    let resp = match resp {
        Ok(r) => r,
        Err(e) => {
            return serde_json::json!({"status": "error", "errorType": "transport", "error": e.to_string()});
        }
    };
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    match serde_json::from_str::<Value>(&text) {
        Ok(v) if v.get("status").is_some() => v,
        _ => serde_json::json!({
            "status": "error",
            "errorType": format!("http {}", status.as_u16()),
            "error": text.chars().take(300).collect::<String>(),
        }),
    }
}

// ---------------------------------------------------------------------------
// Comparing answers.

#[derive(Debug, Clone)]
struct Point {
    ts_ms: i64,
    raw: String,
}

enum Answer {
    Error { etype: String, msg: String },
    Scalar(Point),
    Str(Point),
    Vector(Vec<(Key, Point)>),
    Matrix(Vec<(Key, Vec<Point>)>),
    Malformed(String),
}

fn point(v: &Value) -> Option<Point> {
    let a = v.as_array()?;
    let ts = a.first()?.as_f64()?;
    let raw = a.get(1)?.as_str()?.to_string();
    Some(Point {
        ts_ms: (ts * 1000.0).round() as i64,
        raw,
    })
}

fn key_of(m: &Value) -> Option<Key> {
    let mut k: Key = m
        .as_object()?
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
        .collect();
    k.sort();
    Some(k)
}

fn parse_answer(v: &Value) -> Answer {
    if v["status"] != "success" {
        return Answer::Error {
            etype: v["errorType"].as_str().unwrap_or("?").to_string(),
            msg: v["error"].as_str().unwrap_or("").to_string(),
        };
    }
    let data = &v["data"];
    let bad = || Answer::Malformed(format!("{}", data).chars().take(300).collect());
    let result = &data["result"];
    match data["resultType"].as_str() {
        Some("scalar") => point(result).map(Answer::Scalar).unwrap_or_else(bad),
        Some("string") => point(result).map(Answer::Str).unwrap_or_else(bad),
        Some("vector") => {
            let Some(items) = result.as_array() else {
                return bad();
            };
            let mut out = Vec::new();
            for it in items {
                match (key_of(&it["metric"]), point(&it["value"])) {
                    (Some(k), Some(p)) => out.push((k, p)),
                    _ => return bad(),
                }
            }
            Answer::Vector(out)
        }
        Some("matrix") => {
            let Some(items) = result.as_array() else {
                return bad();
            };
            let mut out = Vec::new();
            for it in items {
                let Some(k) = key_of(&it["metric"]) else {
                    return bad();
                };
                let Some(pts) = it["values"]
                    .as_array()
                    .and_then(|a| a.iter().map(point).collect::<Option<Vec<_>>>())
                else {
                    return bad();
                };
                out.push((k, pts));
            }
            Answer::Matrix(out)
        }
        _ => bad(),
    }
}

fn kind(a: &Answer) -> &'static str {
    match a {
        Answer::Error { .. } => "error",
        Answer::Scalar(_) => "scalar",
        Answer::Str(_) => "string",
        Answer::Vector(_) => "vector",
        Answer::Matrix(_) => "matrix",
        Answer::Malformed(_) => "malformed",
    }
}

fn num(s: &str) -> Option<f64> {
    match s {
        "NaN" => Some(f64::NAN),
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => s.parse().ok(),
    }
}

fn same_value(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    match (num(a), num(b)) {
        (Some(x), Some(y)) if x.is_nan() || y.is_nan() => x.is_nan() && y.is_nan(),
        (Some(x), Some(y)) if x.is_infinite() || y.is_infinite() => x == y,
        (Some(x), Some(y)) => {
            let d = (x - y).abs();
            d <= 1e-6 * x.abs().max(y.abs()) || d <= 1e-12
        }
        _ => false,
    }
}

const ROUND_TIE: &str = "tolerated: round() tie";

/// Values that differ by exactly one rounding step of a `round(x, step)` in
/// the query: `x` was (within float noise) on a tie, and a last-bit difference
/// in `x` (Prometheus 3.x and meshlens sum with Kahan compensation, 2.42 does
/// not) flips the rounding.
fn round_tie(query: &str, a: &str, b: &str) -> bool {
    let (Some(x), Some(y)) = (num(a), num(b)) else {
        return false;
    };
    let d = (x - y).abs();
    query.contains("round(")
        && [1.0, 0.1, 0.01, 0.001]
            .iter()
            .any(|step: &f64| (d - step).abs() <= 1e-6 * step)
}

/// The category of two values that are not [`same_value`].
fn value_diff(query: &str, a: &str, b: &str) -> &'static str {
    if round_tie(query, a, b) {
        ROUND_TIE
    } else {
        "value"
    }
}

fn fmt_key(k: &Key) -> String {
    let name = k
        .iter()
        .find(|(n, _)| n == "__name__")
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    let rest: Vec<String> = k
        .iter()
        .filter(|(n, _)| n != "__name__")
        .map(|(n, v)| format!("{n}={v:?}"))
        .collect();
    format!("{name}{{{}}}", rest.join(", "))
}

/// One difference: a category and a one-line description.
type Diff = (&'static str, String);

fn compare(query: &str, prom: &Answer, mesh: &Answer) -> Vec<Diff> {
    let mut diffs = Vec::new();
    match (prom, mesh) {
        (Answer::Error { etype: a, .. }, Answer::Error { etype: b, msg }) => {
            if a != b {
                diffs.push((
                    "errorType",
                    format!("prometheus errorType {a}, meshlens {b} ({msg})"),
                ));
            }
        }
        (Answer::Error { etype, msg }, m) => diffs.push((
            "meshlens answers where prometheus errs",
            format!(
                "prometheus {etype}: {msg}; meshlens {}",
                match m {
                    Answer::Malformed(s) => format!("malformed: {s}"),
                    m => kind(m).to_string(),
                }
            ),
        )),
        (p, Answer::Error { etype, msg }) => diffs.push((
            "meshlens errs",
            format!("prometheus {}; meshlens {etype}: {msg}", kind(p)),
        )),
        (_, Answer::Malformed(s)) => diffs.push(("malformed answer", s.clone())),
        (Answer::Scalar(a), Answer::Scalar(b)) | (Answer::Str(a), Answer::Str(b)) => {
            let equal = if matches!(prom, Answer::Str(_)) {
                a.raw == b.raw
            } else {
                same_value(&a.raw, &b.raw)
            };
            if a.ts_ms != b.ts_ms {
                diffs.push((
                    "timestamps",
                    format!("prometheus @{} meshlens @{}", a.ts_ms, b.ts_ms),
                ));
            } else if !equal {
                diffs.push((
                    value_diff(query, &a.raw, &b.raw),
                    format!("prometheus {} meshlens {}", a.raw, b.raw),
                ));
            }
        }
        (Answer::Vector(a), Answer::Vector(b)) => {
            let am: BTreeMap<&Key, &Point> = a.iter().map(|(k, p)| (k, p)).collect();
            let bm: BTreeMap<&Key, &Point> = b.iter().map(|(k, p)| (k, p)).collect();
            if bm.len() != b.len() {
                diffs.push((
                    "duplicate series",
                    format!(
                        "meshlens returned {} series, {} distinct",
                        b.len(),
                        bm.len()
                    ),
                ));
            }
            series_sets(&am, &bm, &mut diffs);
            for (k, pa) in &am {
                if let Some(pb) = bm.get(k) {
                    if pa.ts_ms != pb.ts_ms {
                        diffs.push((
                            "timestamps",
                            format!(
                                "{}: prometheus @{} meshlens @{}",
                                fmt_key(k),
                                pa.ts_ms,
                                pb.ts_ms
                            ),
                        ));
                    } else if !same_value(&pa.raw, &pb.raw) {
                        diffs.push((
                            value_diff(query, &pa.raw, &pb.raw),
                            format!("{}: prometheus {} meshlens {}", fmt_key(k), pa.raw, pb.raw),
                        ));
                    }
                }
            }
            let q = query.trim_start();
            if (q.starts_with("sort(") || q.starts_with("sort_desc(")) && diffs.is_empty() {
                let ka: Vec<&Key> = a.iter().map(|(k, _)| k).collect();
                let kb: Vec<&Key> = b.iter().map(|(k, _)| k).collect();
                if ka != kb {
                    diffs.push((
                        "order",
                        format!(
                            "prometheus [{}] meshlens [{}]",
                            ka.iter().map(|k| fmt_key(k)).collect::<Vec<_>>().join(" "),
                            kb.iter().map(|k| fmt_key(k)).collect::<Vec<_>>().join(" ")
                        ),
                    ));
                }
            }
        }
        (Answer::Matrix(a), Answer::Matrix(b)) => {
            let am: BTreeMap<&Key, &Vec<Point>> = a.iter().map(|(k, p)| (k, p)).collect();
            let bm: BTreeMap<&Key, &Vec<Point>> = b.iter().map(|(k, p)| (k, p)).collect();
            if bm.len() != b.len() {
                diffs.push((
                    "duplicate series",
                    format!(
                        "meshlens returned {} series, {} distinct",
                        b.len(),
                        bm.len()
                    ),
                ));
            }
            series_sets(&am, &bm, &mut diffs);
            for (k, pa) in &am {
                let Some(pb) = bm.get(k) else { continue };
                let ta: Vec<i64> = pa.iter().map(|p| p.ts_ms).collect();
                let tb: Vec<i64> = pb.iter().map(|p| p.ts_ms).collect();
                if ta != tb {
                    let only_p: Vec<i64> = ta.iter().filter(|t| !tb.contains(t)).copied().collect();
                    let only_m: Vec<i64> = tb.iter().filter(|t| !ta.contains(t)).copied().collect();
                    diffs.push((
                        "timestamps",
                        format!(
                            "{}: {} points vs {}; only prometheus {:?}; only meshlens {:?}",
                            fmt_key(k),
                            ta.len(),
                            tb.len(),
                            &only_p[..only_p.len().min(4)],
                            &only_m[..only_m.len().min(4)]
                        ),
                    ));
                }
                let bt: BTreeMap<i64, &str> =
                    pb.iter().map(|p| (p.ts_ms, p.raw.as_str())).collect();
                let mut bad: BTreeMap<&str, Vec<String>> = BTreeMap::new();
                for p in pa.iter() {
                    if let Some(v) = bt.get(&p.ts_ms)
                        && !same_value(&p.raw, v)
                    {
                        bad.entry(value_diff(query, &p.raw, v))
                            .or_default()
                            .push(format!("@{}: {} vs {}", p.ts_ms, p.raw, v));
                    }
                }
                for (cat, bad) in bad {
                    diffs.push((
                        if cat == ROUND_TIE { ROUND_TIE } else { "value" },
                        format!(
                            "{}: {} of {} points differ (prometheus vs meshlens), e.g. {}",
                            fmt_key(k),
                            bad.len(),
                            pa.len(),
                            bad[..bad.len().min(3)].join(", ")
                        ),
                    ));
                }
            }
        }
        (p, m) => diffs.push((
            "resultType",
            format!("prometheus {} meshlens {}", kind(p), kind(m)),
        )),
    }
    diffs
}

fn series_sets<T>(a: &BTreeMap<&Key, T>, b: &BTreeMap<&Key, T>, diffs: &mut Vec<Diff>) {
    for k in a.keys().filter(|k| !b.contains_key(*k)) {
        diffs.push(("series missing in meshlens", fmt_key(k)));
    }
    for k in b.keys().filter(|k| !a.contains_key(*k)) {
        diffs.push(("extra series in meshlens", fmt_key(k)));
    }
}

// ---------------------------------------------------------------------------

struct Query {
    /// `file:line` or `extra#n`.
    origin: String,
    source: &'static str,
    text: String,
}

fn load_corpus() -> Vec<Query> {
    let mut out = Vec::new();
    for (source, file) in [
        ("istio", "istio_queries.txt"),
        ("kiali", "kiali_queries.txt"),
    ] {
        let path = format!("{}/tests/data/promql/{file}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            out.push(Query {
                origin: format!("{file}:{}", i + 1),
                source,
                text: line.to_string(),
            });
        }
    }
    for (i, q) in EXTRA_QUERIES.iter().enumerate() {
        out.push(Query {
            origin: format!("extra#{i}"),
            source: "extra",
            text: q.to_string(),
        });
    }
    out
}

struct Outcome {
    query: usize,
    /// (evaluation, category, detail)
    diffs: Vec<(&'static str, &'static str, String)>,
    /// Prometheus's own errors (a corpus problem for dashboard/Kiali queries).
    prom_errors: Vec<(&'static str, String)>,
    /// Prometheus answered with data (a non-empty vector or matrix, a scalar,
    /// a string) at least once.
    has_data: bool,
}

impl Outcome {
    /// No differences but tolerated ones.
    fn agrees(&self) -> bool {
        self.diffs.iter().all(|d| d.1.starts_with("tolerated"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promql_agrees_with_prometheus() {
    let Some(prom_bin) = required_tool("MESHLENS_TEST_PROMETHEUS") else {
        return;
    };
    let dir = temp_dir("promql-diff");
    let started = Instant::now();

    // Times: everything is on a 15 s grid phase-shifted from the range edges.
    let end_grid = (now_ms() / STEP_MS) * STEP_MS - STEP_MS;
    let base = end_grid - 3_600_000;
    let data = generate(base);
    println!(
        "data: {} series, {} samples, {} requests; samples at base+7s+k*15s, base={} ({}s)",
        data.series,
        data.samples,
        data.requests.len(),
        base,
        secs(base)
    );

    // Prometheus with the remote-write receiver and no scrape jobs.
    let prom = Prometheus::start(
        &prom_bin,
        &dir,
        "global:\n  scrape_interval: 15s\n  evaluation_interval: 15s\n",
        &["--web.enable-remote-write-receiver"],
    );
    let prom_port = prom.port;
    let log_path = prom.log_path.clone();
    let server = Server::start(&dir.join("meshlens"), &["--no-self-scrape"]);
    let http = client();
    let papi = format!("http://127.0.0.1:{prom_port}/api/v1");
    let mapi = server.url("/api/v1");
    let ready = Instant::now() + Duration::from_secs(60);
    loop {
        let ok = http
            .get(format!("http://127.0.0.1:{prom_port}/-/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok {
            break;
        }
        assert!(
            Instant::now() < ready,
            "prometheus did not start:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The same requests to both, in time order.
    let prom_write = format!("http://127.0.0.1:{prom_port}/api/v1/write");
    let mesh_write = server.url("/api/v1/write");
    for req in &data.requests {
        let body = snap::raw::Encoder::new()
            .compress_vec(&req.encode_to_vec())
            .expect("snappy");
        let (a, b) = tokio::join!(
            remote_write(&http, &prom_write, body.clone()),
            remote_write(&http, &mesh_write, body)
        );
        a.unwrap_or_else(|e| panic!("prometheus refused the data: {e}"));
        b.unwrap_or_else(|e| panic!("meshlens refused the data: {e}\n{}", server.log()));
    }
    println!("ingested into both in {:?}", started.elapsed());

    let end = end_grid + EVAL_PHASE_MS;
    assert_eq!(
        (end - base - SAMPLE_PHASE_MS) % STEP_MS,
        EVAL_PHASE_MS - SAMPLE_PHASE_MS
    );
    let evals = vec![
        Eval::Instant {
            name: "instant@end",
            t_ms: end,
        },
        Eval::Instant {
            name: "instant@end-10m",
            t_ms: end - 600_000,
        },
        Eval::Instant {
            name: "instant@end-10m-250ms",
            t_ms: end - 600_250,
        },
        Eval::Instant {
            name: "instant@end-30m",
            t_ms: end - 1_800_000,
        },
        Eval::Range {
            name: "range[end-30m,end] step 15s",
            start_ms: end - 1_800_000,
            end_ms: end,
            step_s: 15,
        },
        Eval::Range {
            name: "range[end-60m,end] step 60s",
            start_ms: end - 3_600_000,
            end_ms: end,
            step_s: 60,
        },
    ];

    // Prometheus holds what we sent.
    let check = evaluate(
        &http,
        &papi,
        &Eval::Instant {
            name: "check",
            t_ms: end,
        },
        "count(istio_requests_total)",
    )
    .await;
    assert_eq!(
        check["data"]["result"][0]["value"][1].as_str(),
        Some(data.istio_requests_series.to_string().as_str()),
        "prometheus does not hold the data sent: {check}"
    );

    // Is meshlens's PromQL there yet?
    let probe = http
        .get(format!("{mapi}/query"))
        .query(&[("query", "1")])
        .send()
        .await
        .expect("meshlens");
    let mesh_missing = probe.status() == reqwest::StatusCode::NOT_FOUND;
    if mesh_missing {
        eprintln!(
            "\n!!!!! meshlens answers 404 on /api/v1/query: only checking the corpus against Prometheus !!!!!\n"
        );
    }

    let mut corpus = load_corpus();
    if let Ok(f) = std::env::var("MESHLENS_PROMDIFF_FILTER") {
        corpus.retain(|q| q.text.contains(&f) || q.origin.contains(&f));
    }
    let queries = Arc::new(corpus);
    let evals = Arc::new(evals);
    let limit = Arc::new(tokio::sync::Semaphore::new(4));
    let mut tasks = tokio::task::JoinSet::new();
    for qi in 0..queries.len() {
        let (queries, evals, limit, http) =
            (queries.clone(), evals.clone(), limit.clone(), http.clone());
        let (papi, mapi) = (papi.clone(), mapi.clone());
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await.expect("semaphore");
            let q = &queries[qi];
            let mut out = Outcome {
                query: qi,
                diffs: Vec::new(),
                prom_errors: Vec::new(),
                has_data: false,
            };
            for ev in evals.iter() {
                let p = parse_answer(&evaluate(&http, &papi, ev, &q.text).await);
                out.has_data |= match &p {
                    Answer::Vector(v) => !v.is_empty(),
                    Answer::Matrix(m) => !m.is_empty(),
                    Answer::Scalar(_) | Answer::Str(_) => true,
                    Answer::Error { .. } | Answer::Malformed(_) => false,
                };
                if let Answer::Error { etype, msg } = &p {
                    out.prom_errors.push((ev.name(), format!("{etype}: {msg}")));
                }
                if mesh_missing {
                    continue;
                }
                let m = parse_answer(&evaluate(&http, &mapi, ev, &q.text).await);
                for (cat, d) in compare(&q.text, &p, &m) {
                    out.diffs.push((ev.name(), cat, d));
                }
            }
            out
        });
    }
    let mut outcomes = Vec::new();
    while let Some(r) = tasks.join_next().await {
        outcomes.push(r.expect("query task"));
    }
    outcomes.sort_by_key(|o| o.query);
    println!(
        "ran {} queries x {} evaluations in {:?}",
        queries.len(),
        evals.len(),
        started.elapsed()
    );

    // Report.
    let mut report = String::new();
    let corpus_errors: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| queries[o.query].source != "extra" && !o.prom_errors.is_empty())
        .collect();
    if !corpus_errors.is_empty() {
        let _ = writeln!(
            report,
            "== {} corpus queries that Prometheus 2.42 rejects (fix the corpus):",
            corpus_errors.len()
        );
        for o in &corpus_errors {
            let q = &queries[o.query];
            let _ = writeln!(
                report,
                "{}: {}\n    {}: {}",
                q.origin, q.text, o.prom_errors[0].0, o.prom_errors[0].1
            );
        }
    }
    let mut by_cat: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for o in &outcomes {
        let mut cats: Vec<&str> = o.diffs.iter().map(|d| d.1).collect();
        cats.sort();
        cats.dedup();
        for c in cats {
            by_cat.entry(c).or_default().0 += 1;
        }
        for d in &o.diffs {
            by_cat.entry(d.1).or_default().1 += 1;
        }
    }
    let mut per_source: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for o in &outcomes {
        let e = per_source.entry(queries[o.query].source).or_default();
        e.1 += 1;
        if o.agrees() {
            e.0 += 1;
        }
    }
    let agree = outcomes.iter().filter(|o| o.agrees()).count();
    let mut full = report.clone();
    for o in outcomes.iter().filter(|o| !o.diffs.is_empty()) {
        let q = &queries[o.query];
        let head = format!("\n-- {} [{}]\n   {}\n", q.origin, q.source, q.text);
        report.push_str(&head);
        full.push_str(&head);
        // In the short report: at most 3 lines per (evaluation, category).
        let mut shown: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        for (ev, cat, d) in &o.diffs {
            let line = format!("   {ev} | {cat} | {d}\n");
            full.push_str(&line);
            let n = shown.entry((ev, cat)).or_default();
            *n += 1;
            if *n <= 3 {
                report.push_str(&line);
            } else if *n == 4 {
                let total = o.diffs.iter().filter(|x| x.0 == *ev && x.1 == *cat).count();
                let _ = writeln!(report, "   {ev} | {cat} | ... {} more", total - 3);
            }
        }
    }
    let mut summary = String::new();
    let _ = writeln!(
        summary,
        "\n== PromQL differential: meshlens vs Prometheus 2.42"
    );
    if mesh_missing {
        let _ = writeln!(
            summary,
            "meshlens has no /api/v1/query (404): nothing compared; {} of {} queries ran on Prometheus without error",
            outcomes.iter().filter(|o| o.prom_errors.is_empty()).count(),
            outcomes.len()
        );
    } else {
        let _ = writeln!(
            summary,
            "{agree} of {} queries agree ({} of them return data on Prometheus, the rest only empty results or errors)",
            outcomes.len(),
            outcomes.iter().filter(|o| o.has_data).count()
        );
        for (s, (a, n)) in &per_source {
            let _ = writeln!(summary, "  {s}: {a} of {n}");
        }
        for (c, (nq, nd)) in &by_cat {
            let _ = writeln!(summary, "  {c}: {nq} queries, {nd} differences");
        }
    }
    let _ = writeln!(
        full,
        "\n== queries with no data on Prometheus at any evaluation (empty or error):"
    );
    for o in outcomes.iter().filter(|o| !o.has_data) {
        let q = &queries[o.query];
        let _ = writeln!(full, "{}: {}", q.origin, q.text);
    }
    let report_path = dir.join("promql-differential-report.txt");
    let _ = std::fs::write(&report_path, format!("{summary}\n{full}"));
    let _ = writeln!(summary, "full report: {}", report_path.display());
    println!("{report}{summary}");
    if let Some(hold) = std::env::var("MESHLENS_PROMDIFF_HOLD")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        println!(
            "holding both servers for {hold}s: prometheus {papi}, meshlens {mapi}, evaluation end {}",
            secs(end)
        );
        tokio::time::sleep(Duration::from_secs(hold)).await;
    }
    assert!(
        corpus_errors.is_empty(),
        "{} corpus queries are rejected by Prometheus (see above)",
        corpus_errors.len()
    );
    assert!(
        !mesh_missing,
        "meshlens answers 404 on /api/v1/query: the PromQL endpoints are missing"
    );
    assert!(
        agree == outcomes.len(),
        "{agree} of {} queries agree (see above)",
        outcomes.len()
    );
}

/// The comparison itself: it must see what it is there to see.
#[test]
fn compare_reports_differences() {
    let vector = |items: &[(&str, &str)]| {
        let result: Vec<Value> = items
            .iter()
            .map(|(w, v)| serde_json::json!({"metric": {"w": w}, "value": [1.5, v]}))
            .collect();
        parse_answer(&serde_json::json!({
            "status": "success",
            "data": {"resultType": "vector", "result": result}
        }))
    };
    let cats = |q: &str, a: &Answer, b: &Answer| -> Vec<&'static str> {
        compare(q, a, b).into_iter().map(|d| d.0).collect()
    };
    let a = vector(&[("x", "1"), ("y", "NaN"), ("z", "+Inf")]);
    assert!(
        cats(
            "q",
            &a,
            &vector(&[("x", "1.0000000001"), ("y", "NaN"), ("z", "+Inf")])
        )
        .is_empty()
    );
    assert_eq!(
        cats(
            "q",
            &a,
            &vector(&[("x", "1.001"), ("y", "NaN"), ("z", "+Inf")])
        ),
        ["value"]
    );
    assert_eq!(
        cats("q", &a, &vector(&[("x", "1"), ("y", "0"), ("z", "+Inf")])),
        ["value"]
    );
    assert_eq!(
        cats("q", &a, &vector(&[("x", "1"), ("z", "+Inf"), ("v", "2")])),
        ["series missing in meshlens", "extra series in meshlens"]
    );
    assert_eq!(
        cats(
            "round(q, 0.001)",
            &vector(&[("x", "96.437")]),
            &vector(&[("x", "96.438")])
        ),
        [ROUND_TIE]
    );
    assert_eq!(
        cats(
            "sort(q)",
            &vector(&[("x", "1"), ("y", "2")]),
            &vector(&[("y", "2"), ("x", "1")])
        ),
        ["order"]
    );
    let err = parse_answer(
        &serde_json::json!({"status": "error", "errorType": "bad_data", "error": "parse error"}),
    );
    assert_eq!(
        cats("q", &err, &a),
        ["meshlens answers where prometheus errs"]
    );
    assert_eq!(cats("q", &a, &err), ["meshlens errs"]);
    assert!(cats("q", &err, &err).is_empty());
    let matrix = |pts: &[(f64, &str)]| {
        let values: Vec<Value> = pts.iter().map(|(t, v)| serde_json::json!([t, v])).collect();
        parse_answer(&serde_json::json!({
            "status": "success",
            "data": {"resultType": "matrix", "result": [{"metric": {}, "values": values}]}
        }))
    };
    let m = matrix(&[(1.0, "1"), (2.0, "2")]);
    assert!(cats("q", &m, &matrix(&[(1.0, "1"), (2.0, "2")])).is_empty());
    assert_eq!(
        cats("q", &m, &matrix(&[(1.0, "1"), (3.0, "2")])),
        ["timestamps"]
    );
    assert_eq!(cats("q", &m, &matrix(&[(1.0, "1"), (2.0, "3")])), ["value"]);
    assert_eq!(cats("q", &m, &a), ["resultType"]);
}
