//! What derivation reads from a span: failure, response code and flags,
//! dimensions, the peer of an unpaired half, and the sampling multiplier.

use super::DeriveConfig;
pub use meshlens_storage::model::istio_cluster_host;
use meshlens_storage::model::{SpanKind, StatusCode};
use meshlens_storage::span_builder::AttrRef;
use meshlens_storage::span_view::SpanView;

/// A span attribute as a string, falling back to the resource.
pub fn attr(span: &impl SpanView, key: &str) -> Option<String> {
    let v = attr_ref(span, key)?;
    let s = v.to_tag_string();
    (!s.is_empty()).then_some(s)
}

fn attr_ref<'a>(span: &'a impl SpanView, key: &str) -> Option<AttrRef<'a>> {
    span.attr(key).or_else(|| span.resource_attr(key))
}

/// The HTTP status code the span reports (`http.status_code` as Zipkin
/// and Envoy send it, or `http.response.status_code` of current OTel).
pub fn http_status(span: &impl SpanView) -> Option<u16> {
    let v = span
        .attr("http.status_code")
        .or_else(|| span.attr("http.response.status_code"))?;
    match v {
        AttrRef::Int(i) => u16::try_from(i).ok(),
        AttrRef::Str(s) => s.trim().parse().ok(),
        AttrRef::Double(d) => Some(d as u16),
        _ => None,
    }
}

/// Failed: OTLP status ERROR, a Zipkin `error` tag, or an HTTP 5xx.
pub fn failed(span: &impl SpanView) -> bool {
    span.status_code() == StatusCode::Error
        || span.attr("error").is_some()
        || http_status(span).is_some_and(|c| c >= 500)
}

/// Envoy's `response_flags` tag, without the "no flags" dash.
pub fn response_flags(span: &impl SpanView) -> Option<&str> {
    span.attr("response_flags")
        .and_then(|v| v.as_str())
        .map(str::trim)
        .filter(|f| !f.is_empty() && *f != "-")
}

/// The virtual node an unpaired client (or producer) half calls, and the
/// connection type: `peer.service`, the Zipkin remote endpoint, `db.name` /
/// `db.system` (database), `messaging.destination(.name)`/`messaging.system`
/// (messaging), `server.address` / `net.peer.name`, then Envoy's
/// `upstream_cluster` host.
pub fn client_peer(span: &impl SpanView) -> Option<(String, &'static str)> {
    let messaging = matches!(span.kind(), SpanKind::Producer);
    let other = if messaging {
        "messaging_system"
    } else {
        "virtual_node"
    };
    if let Some(p) = attr(span, "peer.service") {
        return Some((p, other));
    }
    if let Some(p) = span.remote_service_name().filter(|s| !s.is_empty()) {
        return Some((p.to_string(), other));
    }
    if let Some(db) = attr(span, "db.name").or_else(|| attr(span, "db.system")) {
        return Some((db, "database"));
    }
    if messaging
        && let Some(m) = attr(span, "messaging.system")
            .or_else(|| attr(span, "messaging.destination.name"))
            .or_else(|| attr(span, "messaging.destination"))
    {
        return Some((m, "messaging_system"));
    }
    for k in ["server.address", "net.peer.name"] {
        if let Some(p) = attr(span, k) {
            return Some((p, other));
        }
    }
    span.attr("upstream_cluster")
        .and_then(|v| v.as_str())
        .and_then(istio_cluster_host)
        .map(|h| (h.to_string(), other))
}

/// The caller of an unpaired server (or consumer) half, when the span
/// names it (a Zipkin remote endpoint; for a consumer, the broker).
pub fn server_peer(span: &impl SpanView) -> Option<(String, &'static str)> {
    let conn = if span.kind() == SpanKind::Consumer {
        "messaging_system"
    } else {
        "virtual_node"
    };
    if let Some(p) = span.remote_service_name().filter(|s| !s.is_empty()) {
        return Some((p.to_string(), conn));
    }
    if span.kind() == SpanKind::Consumer
        && let Some(m) = attr(span, "messaging.system")
    {
        return Some((m, conn));
    }
    None
}

/// How many requests this span stands for: the inverse of its sampling
/// probability when known (OTel `tracestate` `ot=th:` or `ot=p:`, an
/// `X-SampleRatio` multiplier attribute as Tempo reads it, a
/// `sampling.probability` attribute, or the per-service rate configured),
/// else 1.
pub fn multiplier(span: &impl SpanView, cfg: &DeriveConfig) -> f64 {
    let clamp = |m: f64| {
        if m.is_finite() && m >= 1.0 {
            m.min(1e9)
        } else {
            1.0
        }
    };
    if let Some(ts) = span.trace_state()
        && let Some(p) = tracestate_probability(ts)
    {
        return clamp(1.0 / p);
    }
    if let Some(v) = attr_ref(span, "X-SampleRatio").and_then(|v| as_f64(&v)) {
        return clamp(v);
    }
    if let Some(p) = attr_ref(span, "sampling.probability").and_then(|v| as_f64(&v))
        && p > 0.0
    {
        return clamp(1.0 / p);
    }
    if let Some(p) = cfg.sampling.get(span.service_name())
        && *p > 0.0
    {
        return clamp(1.0 / p);
    }
    1.0
}

fn as_f64(v: &AttrRef<'_>) -> Option<f64> {
    match v {
        AttrRef::Double(d) => Some(*d),
        AttrRef::Int(i) => Some(*i as f64),
        AttrRef::Str(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The sampling probability an OTel `tracestate` carries: `ot=th:T`
/// (rejection threshold, up to 14 hex digits: p = 1 - T/2^56) or the older
/// `ot=p:N` (p = 2^-N).
pub fn tracestate_probability(ts: &str) -> Option<f64> {
    let ot = ts
        .split(',')
        .map(str::trim)
        .find_map(|m| m.strip_prefix("ot="))?;
    for kv in ot.split(';') {
        if let Some(th) = kv.strip_prefix("th:") {
            if th.is_empty() || th.len() > 14 || !th.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            let padded = format!("{th:0<14}");
            let t = u64::from_str_radix(&padded, 16).ok()?;
            let p = 1.0 - (t as f64) / ((1u64 << 56) as f64);
            return (p > 0.0).then_some(p);
        }
        if let Some(pv) = kv.strip_prefix("p:") {
            let n: u32 = pv.parse().ok()?;
            return (n <= 62).then(|| 0.5f64.powi(n as i32));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracestate_values() {
        assert_eq!(tracestate_probability("ot=th:8"), Some(0.5));
        assert_eq!(
            tracestate_probability("foo=bar,ot=th:c;rv:1234"),
            Some(0.25)
        );
        assert_eq!(tracestate_probability("ot=th:0"), Some(1.0));
        assert_eq!(tracestate_probability("ot=p:3"), Some(0.125));
        assert_eq!(tracestate_probability("ot=th:zz"), None);
        assert_eq!(tracestate_probability("vendor=x"), None);
    }

    #[test]
    fn istio_cluster_names() {
        assert_eq!(
            istio_cluster_host("outbound|9080|v1|reviews.default.svc.cluster.local"),
            Some("reviews.default.svc.cluster.local")
        );
        assert_eq!(
            istio_cluster_host("outbound|443||api.github.com"),
            Some("api.github.com")
        );
        assert_eq!(istio_cluster_host("inbound|9080||"), None);
        assert_eq!(istio_cluster_host("backend"), None);
    }
}
