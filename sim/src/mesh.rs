//! The simulated mesh: Istio's Bookinfo (plus `fortio` -> `httpbin` and a
//! `mongodb` behind ratings), its workloads, services and sidecars.

/// Index of a workload in [`WORKLOADS`].
pub type W = usize;

pub const GATEWAY: W = 0;
pub const PRODUCTPAGE: W = 1;
pub const DETAILS: W = 2;
pub const REVIEWS_V1: W = 3;
pub const REVIEWS_V2: W = 4;
pub const REVIEWS_V3: W = 5;
pub const RATINGS: W = 6;
pub const FORTIO: W = 7;
pub const HTTPBIN: W = 8;
pub const MONGODB: W = 9;

/// A Kubernetes service (what a client calls).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Service {
    pub name: &'static str,
    pub namespace: &'static str,
    pub port: u16,
}

impl Service {
    /// `reviews.default.svc.cluster.local`.
    pub fn fqdn(&self) -> String {
        format!("{}.{}.svc.cluster.local", self.name, self.namespace)
    }
}

const fn svc(name: &'static str, namespace: &'static str, port: u16) -> Service {
    Service {
        name,
        namespace,
        port,
    }
}

pub const SVC_PRODUCTPAGE: Service = svc("productpage", "default", 9080);
pub const SVC_DETAILS: Service = svc("details", "default", 9080);
pub const SVC_REVIEWS: Service = svc("reviews", "default", 9080);
pub const SVC_RATINGS: Service = svc("ratings", "default", 9080);
pub const SVC_HTTPBIN: Service = svc("httpbin", "default", 8000);
pub const SVC_MONGODB: Service = svc("mongodb", "default", 27017);
pub const SVC_GATEWAY: Service = svc("istio-ingressgateway", "istio-system", 80);

/// One workload (a Deployment with one pod and its sidecar).
#[derive(Debug, Clone)]
pub struct Workload {
    /// Deployment name: `reviews-v2`.
    pub name: &'static str,
    pub app: &'static str,
    /// The `version` label; Istio reports `unknown` when a pod has none.
    pub version: &'static str,
    pub namespace: &'static str,
    pub service_account: &'static str,
    /// The service in front of it.
    pub service: Service,
    /// Median time the application itself spends on a request (µs), and the
    /// spread (sigma of the log-normal).
    pub self_time_us: f64,
    pub sigma: f64,
    /// Response body size (bytes).
    pub response_bytes: u32,
    /// The pod's name and IP.
    pub pod: String,
    pub ip: String,
    /// Istio's proxy node id: `sidecar~IP~POD.NS~NS.svc.cluster.local`
    /// (`router~…` for the gateway).
    pub node_id: String,
}

impl Workload {
    /// Istio's canonical revision: the version, or `latest`.
    pub fn revision(&self) -> &'static str {
        if self.version == "unknown" {
            "latest"
        } else {
            self.version
        }
    }

    pub fn principal(&self) -> String {
        format!(
            "spiffe://cluster.local/ns/{}/sa/{}",
            self.namespace, self.service_account
        )
    }
}

#[allow(clippy::too_many_arguments)]
fn w(
    i: usize,
    name: &'static str,
    app: &'static str,
    version: &'static str,
    sa: &'static str,
    service: Service,
    self_ms: f64,
    sigma: f64,
    response_bytes: u32,
) -> Workload {
    // Stable, plausible pod names and IPs.
    const HASHES: [&str; 10] = [
        "6d8f6c9b7-k2x4p",
        "7d7f9c6f5-x9zrw",
        "5b6f8b9c4-mq7tn",
        "68c9b7d7c-4hbrk",
        "7c7f8cd9b-pw2lq",
        "5c8b6f7d9-vz8xm",
        "7b8c9d6f4-j5n2s",
        "6b9f7c8d5-rt4kq",
        "74c8d9b6f-hx7mw",
        "8d7c6b9f5-lp3zv",
    ];
    let pod = format!("{name}-{}", HASHES[i]);
    let ip = format!("10.244.0.{}", 11 + i);
    let kind = if app == "istio-ingressgateway" {
        "router"
    } else {
        "sidecar"
    };
    let ns = service.namespace;
    Workload {
        name,
        app,
        version,
        namespace: ns,
        service_account: sa,
        service,
        self_time_us: self_ms * 1000.0,
        sigma,
        response_bytes,
        node_id: format!("{kind}~{ip}~{pod}.{ns}~{ns}.svc.cluster.local"),
        pod,
        ip,
    }
}

/// Every workload, indexed by the constants above.
pub fn workloads() -> Vec<Workload> {
    vec![
        w(
            GATEWAY,
            "istio-ingressgateway",
            "istio-ingressgateway",
            "unknown",
            "istio-ingressgateway-service-account",
            SVC_GATEWAY,
            0.3,
            0.3,
            0,
        ),
        w(
            PRODUCTPAGE,
            "productpage-v1",
            "productpage",
            "v1",
            "bookinfo-productpage",
            SVC_PRODUCTPAGE,
            9.0,
            0.45,
            5183,
        ),
        w(
            DETAILS,
            "details-v1",
            "details",
            "v1",
            "bookinfo-details",
            SVC_DETAILS,
            1.6,
            0.4,
            178,
        ),
        w(
            REVIEWS_V1,
            "reviews-v1",
            "reviews",
            "v1",
            "bookinfo-reviews",
            SVC_REVIEWS,
            3.2,
            0.4,
            295,
        ),
        w(
            REVIEWS_V2,
            "reviews-v2",
            "reviews",
            "v2",
            "bookinfo-reviews",
            SVC_REVIEWS,
            6.5,
            0.45,
            358,
        ),
        w(
            REVIEWS_V3,
            "reviews-v3",
            "reviews",
            "v3",
            "bookinfo-reviews",
            SVC_REVIEWS,
            8.0,
            0.5,
            358,
        ),
        w(
            RATINGS,
            "ratings-v1",
            "ratings",
            "v1",
            "bookinfo-ratings",
            SVC_RATINGS,
            1.4,
            0.4,
            48,
        ),
        w(
            FORTIO,
            "fortio-deploy",
            "fortio",
            "unknown",
            "default",
            svc("fortio", "default", 8080),
            0.1,
            0.2,
            0,
        ),
        w(
            HTTPBIN,
            "httpbin",
            "httpbin",
            "v1",
            "httpbin",
            SVC_HTTPBIN,
            0.9,
            0.35,
            240,
        ),
        w(
            MONGODB,
            "mongodb-v1",
            "mongodb",
            "v1",
            "default",
            SVC_MONGODB,
            0.6,
            0.4,
            0,
        ),
    ]
}
