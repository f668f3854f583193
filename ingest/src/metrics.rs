//! Names and labels of the receivers' own metrics.
//!
//! `reason` label values are short stable words; dashboards and alerts key
//! on them, so never rename one.

use meshlens_storage::Telemetry;

pub const SPANS_RECEIVED: &str = "meshlens_spans_received_total";
pub const SPANS_REJECTED: &str = "meshlens_spans_rejected_total";
pub const REQUESTS_REJECTED: &str = "meshlens_requests_rejected_total";
pub const SAMPLES_RECEIVED: &str = "meshlens_samples_received_total";
pub const SAMPLES_REJECTED: &str = "meshlens_samples_rejected_total";

/// Values of the `receiver` label.
pub mod receiver {
    pub const ZIPKIN_V2_JSON: &str = "zipkin_v2_json";
    pub const ZIPKIN_V2_PROTO: &str = "zipkin_v2_proto";
    pub const ZIPKIN_V1_JSON: &str = "zipkin_v1_json";
    pub const OTLP_GRPC: &str = "otlp_grpc";
    pub const OTLP_HTTP_PROTO: &str = "otlp_http_proto";
    pub const OTLP_HTTP_JSON: &str = "otlp_http_json";
    pub const REMOTE_WRITE: &str = "remote_write";
    pub const OTLP_METRICS_GRPC: &str = "otlp_metrics_grpc";
    pub const OTLP_METRICS_HTTP_PROTO: &str = "otlp_metrics_http_proto";
    pub const OTLP_METRICS_HTTP_JSON: &str = "otlp_metrics_http_json";
}

pub fn describe(t: &Telemetry) {
    t.describe(
        SPANS_RECEIVED,
        "counter",
        "Spans accepted by a receiver and handed to storage.",
    );
    t.describe(
        SPANS_REJECTED,
        "counter",
        "Spans a receiver refused, by reason (invalid_span, backpressure, ...).",
    );
    t.describe(
        REQUESTS_REJECTED,
        "counter",
        "Requests a receiver answered with an error, by reason (malformed, too_large, ...).",
    );
    t.describe(
        SAMPLES_RECEIVED,
        "counter",
        "Metric samples accepted by a receiver and stored.",
    );
    t.describe(
        SAMPLES_REJECTED,
        "counter",
        "Metric samples (OTLP: data points) a receiver or the storage refused, by reason \
         (invalid_labels, delta_temporality, out_of_order, backpressure, ...).",
    );
}

pub fn spans_received(t: &Telemetry, receiver: &'static str, n: usize) {
    if n > 0 {
        t.inc(SPANS_RECEIVED, &[("receiver", receiver)], n as f64);
    }
}

pub fn spans_rejected(t: &Telemetry, receiver: &'static str, reason: &'static str, n: usize) {
    if n > 0 {
        t.inc(
            SPANS_REJECTED,
            &[("receiver", receiver), ("reason", reason)],
            n as f64,
        );
    }
}

pub fn request_rejected(t: &Telemetry, receiver: &'static str, reason: &'static str) {
    t.inc(
        REQUESTS_REJECTED,
        &[("receiver", receiver), ("reason", reason)],
        1.0,
    );
}

pub fn samples_received(t: &Telemetry, receiver: &'static str, n: u64) {
    if n > 0 {
        t.inc(SAMPLES_RECEIVED, &[("receiver", receiver)], n as f64);
    }
}

pub fn samples_rejected(t: &Telemetry, receiver: &'static str, reason: &'static str, n: u64) {
    if n > 0 {
        t.inc(
            SAMPLES_REJECTED,
            &[("receiver", receiver), ("reason", reason)],
            n as f64,
        );
    }
}
