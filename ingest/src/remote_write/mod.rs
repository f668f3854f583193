//! Prometheus remote write 1.0: `POST /api/v1/write`, a snappy *block*
//! compressed protobuf `prometheus.WriteRequest`.
//!
//! Answers, as Prometheus does:
//! - 204 when every sample was stored;
//! - 400 with a text message for bad data (senders never retry 4xx); the
//!   good samples of a request that mixes good and bad ones are stored and
//!   the message names the bad ones (like Prometheus 3's handler does for
//!   remote write 2.0 partial writes);
//! - 413 for a body (compressed or decompressed) over the limit;
//! - 415 for another `Content-Encoding` than snappy, another media type than
//!   `application/x-protobuf`, or the 2.0 message (`proto=io.prometheus.write.v2.Request`);
//! - 503 with `Retry-After` when the storage is over its budget or shutting
//!   down (Prometheus senders retry 5xx, and 429 only when configured to).
//!
//! Series validation is strict, with the location of each bad series
//! (`timeseries[3]`): empty label names, names or values that are not UTF-8,
//! duplicate names, names not sorted in byte order, missing or empty
//! `__name__`. Prometheus 3's 1.0 handler sorts unsorted labels and drops
//! invalid series with only a log line (still 204); we follow the 1.0 spec
//! ("label names MUST be sorted", "MUST be unique") and Prometheus 3's 2.0
//! handler instead: the series is refused and the request answered 400, so
//! the sender's operator sees the problem. NaN (including the staleness
//! marker) and ±Inf are valid sample values. Native histograms are not
//! supported yet: they are refused (400, counted); exemplars are dropped
//! silently (counted under reason `exemplar`).

#[cfg(test)]
mod tests;
mod wire;

pub use wire::decode_with_known;

use crate::body::{self, BodyError};
use crate::error::{DecodeError, IngestError, Rejections};
use crate::metrics::{self, receiver::REMOTE_WRITE};
use crate::{IngestState, pipeline};
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use meshlens_storage::samples::{
    AppendReport, Labels, METRIC_NAME, MetricMetadata as StoreMetadata, MetricType,
    Sample as StoreSample, SampleBatch, SeriesWrite,
};

/// `prometheus.WriteRequest` (prompb/remote.proto). Field 2 is reserved.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
    #[prost(message, repeated, tag = "3")]
    pub metadata: Vec<MetricMetadata>,
}

/// `prometheus.TimeSeries` (prompb/types.proto).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
    #[prost(message, repeated, tag = "3")]
    pub exemplars: Vec<Exemplar>,
    #[prost(message, repeated, tag = "4")]
    pub histograms: Vec<Histogram>,
}

/// `prometheus.Label`. Declared as bytes (the proto says string) so that a
/// label that is not UTF-8 fails its own series, with its location, rather
/// than the whole request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Label {
    #[prost(bytes = "vec", tag = "1")]
    pub name: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// `prometheus.Sample`.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    /// Milliseconds since the Unix epoch.
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// `prometheus.Exemplar`: read only to be counted.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Exemplar {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(double, tag = "2")]
    pub value: f64,
    #[prost(int64, tag = "3")]
    pub timestamp: i64,
}

/// `prometheus.Histogram` (a native histogram): only its timestamp is read,
/// to count and refuse it; the other fields are skipped by the decoder.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct Histogram {
    #[prost(int64, tag = "15")]
    pub timestamp: i64,
}

/// `prometheus.MetricMetadata`. Field 3 is unused upstream.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MetricMetadata {
    /// UNKNOWN=0 COUNTER=1 GAUGE=2 HISTOGRAM=3 GAUGEHISTOGRAM=4 SUMMARY=5 INFO=6 STATESET=7.
    #[prost(int32, tag = "1")]
    pub r#type: i32,
    #[prost(bytes = "vec", tag = "2")]
    pub metric_family_name: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    pub help: Vec<u8>,
    #[prost(bytes = "vec", tag = "5")]
    pub unit: Vec<u8>,
}

/// The `MetricMetadata.type` enum to the store's type (unknown values: Unknown).
pub fn metric_type(t: i32) -> MetricType {
    match t {
        1 => MetricType::Counter,
        2 => MetricType::Gauge,
        3 => MetricType::Histogram,
        4 => MetricType::Gaugehistogram,
        5 => MetricType::Summary,
        6 => MetricType::Info,
        7 => MetricType::Stateset,
        _ => MetricType::Unknown,
    }
}

/// A decoded request: the valid samples, what was refused and why, and the
/// number of exemplars dropped.
#[derive(Debug, Default, PartialEq)]
pub struct Decoded {
    pub batch: SampleBatch,
    pub rejected: Rejections,
    pub exemplars_dropped: usize,
}

impl Decoded {
    /// Equality that also holds for NaN samples (`PartialEq` says
    /// NaN != NaN): the whole value as printed, and every sample value's
    /// bits. For comparing decoders (tests, the fuzz target).
    pub fn same_as(&self, other: &Decoded) -> bool {
        let bits = |d: &Decoded| -> Vec<u64> {
            let by_labels = d.batch.series.iter().flat_map(|s| s.samples.iter());
            let by_id = d.batch.known.iter().flat_map(|(_, s)| s.iter());
            by_labels.chain(by_id).map(|s| s.value.to_bits()).collect()
        };
        format!("{self:?}") == format!("{other:?}") && bits(self) == bits(other)
    }
}

/// `reason` label values of refused samples.
pub mod reason {
    pub const INVALID_LABELS: &str = "invalid_labels";
    pub const NATIVE_HISTOGRAM: &str = "native_histogram";
    pub const INVALID_METADATA: &str = "invalid_metadata";
    pub const EXEMPLAR: &str = "exemplar";
}

/// The snappy stream (framed) format's first chunk; remote write uses the
/// block format, and this is the commonest mistake.
const SNAPPY_STREAM_MAGIC: &[u8] = b"\xff\x06\x00\x00sNaPpY";

/// Decompresses a snappy *block*, refusing (before allocating) an output
/// larger than `limit` bytes as the header announces it.
pub fn decompress_snappy(raw: &[u8], limit: usize) -> Result<Vec<u8>, BodyError> {
    const ENC: &str = "snappy";
    let corrupt = |detail: String| BodyError::Corrupt {
        encoding: ENC,
        detail,
    };
    if raw.is_empty() {
        return Err(corrupt(
            "the body is empty; remote write sends a snappy-compressed WriteRequest".into(),
        ));
    }
    if raw.starts_with(SNAPPY_STREAM_MAGIC) {
        return Err(corrupt(
            "this is the snappy framed (stream) format; remote write uses the snappy block format"
                .into(),
        ));
    }
    let len = snap::raw::decompress_len(raw).map_err(|e| corrupt(e.to_string()))?;
    if len > limit {
        return Err(BodyError::DecompressedTooLarge {
            encoding: ENC,
            limit,
            compressed: raw.len(),
        });
    }
    let mut out = vec![0u8; len];
    match snap::raw::Decoder::new().decompress(raw, &mut out) {
        Ok(n) => {
            out.truncate(n);
            Ok(out)
        }
        Err(
            snap::Error::HeaderMismatch { .. }
            | snap::Error::CopyRead { .. }
            | snap::Error::Literal { .. },
        ) => Err(BodyError::Truncated { encoding: ENC }),
        Err(e) => Err(corrupt(e.to_string())),
    }
}

/// Decodes a (decompressed) `WriteRequest` strictly: any invalid series or
/// metadata fails the whole request. For fuzzing and for callers that want
/// all or nothing; the HTTP receiver uses [`decode_partial`].
pub fn decode(bytes: &[u8]) -> Result<SampleBatch, DecodeError> {
    let d = decode_partial(bytes)?;
    if d.rejected.is_empty() {
        Ok(d.batch)
    } else {
        Err(DecodeError::InvalidSamples(d.rejected))
    }
}

/// Decodes a (decompressed) `WriteRequest`, keeping the valid series and
/// describing the invalid ones. Fails only when the body is not a
/// `WriteRequest` at all. Every series comes back with its labels; the
/// receiver uses [`decode_with_known`] to name series the store knows by id.
pub fn decode_partial(bytes: &[u8]) -> Result<Decoded, DecodeError> {
    decode_with_known(bytes, |_, _| {})
}

/// The same as [`decode_partial`] through prost's generated decoder: the
/// reference the in-place decoder is tested (and fuzzed) against.
pub fn decode_partial_prost(bytes: &[u8]) -> Result<Decoded, DecodeError> {
    let req =
        <WriteRequest as prost::Message>::decode(bytes).map_err(|e| DecodeError::Protobuf {
            message_name: "prometheus.WriteRequest",
            detail: e.to_string(),
        })?;
    Ok(convert(req))
}

/// Converts a request decoded by prost; see the module doc for the rules.
pub fn convert(req: WriteRequest) -> Decoded {
    let mut out = Decoded::default();
    out.batch.series.reserve(req.timeseries.len());
    for (i, ts) in req.timeseries.into_iter().enumerate() {
        out.exemplars_dropped += ts.exemplars.len();
        let raw: Vec<(&[u8], &[u8])> = ts
            .labels
            .iter()
            .map(|l| (l.name.as_slice(), l.value.as_slice()))
            .collect();
        let samples: Vec<StoreSample> = ts
            .samples
            .iter()
            .map(|s| StoreSample {
                timestamp_ms: s.timestamp,
                value: s.value,
            })
            .collect();
        if let Some(w) = series_write(&mut out, i, &raw, &samples, ts.histograms.len()) {
            out.batch.series.push(w);
        }
    }
    for (i, m) in req.metadata.into_iter().enumerate() {
        match metadata(m.r#type, &m.metric_family_name, &m.help, &m.unit) {
            Ok(md) => out.batch.metadata.push(md),
            Err(problem) => out.rejected.add(reason::INVALID_METADATA, 0, || {
                format!("metadata[{i}]: {problem}")
            }),
        }
    }
    out
}

/// One series sent by labels (`timeseries[i]`): validates them, refuses
/// native histograms; `None` when nothing of it is to be stored.
fn series_write(
    out: &mut Decoded,
    i: usize,
    raw: &[(&[u8], &[u8])],
    samples: &[StoreSample],
    histograms: usize,
) -> Option<SeriesWrite> {
    let labels = match series_labels(raw) {
        Ok(l) => l,
        Err(problem) => {
            out.rejected
                .add(reason::INVALID_LABELS, samples.len() + histograms, || {
                    format!("timeseries[{i}] {}: {problem}", describe_raw(raw))
                });
            return None;
        }
    };
    if histograms > 0 {
        out.rejected.add(reason::NATIVE_HISTOGRAM, histograms, || {
            format!(
                "timeseries[{i}] {labels}: {histograms} native histogram samples refused; native \
                 histograms are not supported yet (send classic _bucket series)"
            )
        });
    }
    if samples.is_empty() {
        return None;
    }
    Some(SeriesWrite {
        labels,
        samples: samples.to_vec(),
    })
}

/// Validates the labels of one series as sent and builds the label set.
fn series_labels(raw: &[(&[u8], &[u8])]) -> Result<Labels, String> {
    let mut pairs: Vec<(&str, &str)> = Vec::with_capacity(raw.len());
    for (j, (raw_name, raw_value)) in raw.iter().enumerate() {
        let name = std::str::from_utf8(raw_name).map_err(|e| {
            format!(
                "labels[{j}] name is not valid UTF-8 (invalid byte at offset {})",
                e.valid_up_to()
            )
        })?;
        if name.is_empty() {
            return Err(format!("labels[{j}] has an empty name"));
        }
        let value = std::str::from_utf8(raw_value).map_err(|e| {
            format!(
                "labels[{j}] ({name:?}) value is not valid UTF-8 (invalid byte at offset {})",
                e.valid_up_to()
            )
        })?;
        if let Some((prev, _)) = pairs.last() {
            if *prev == name {
                return Err(format!("label name {name:?} appears more than once"));
            }
            if *prev > name {
                return Err(format!(
                    "labels are not sorted by name: {name:?} comes after {prev:?} \
                     (remote write requires label names in byte order)"
                ));
            }
        }
        pairs.push((name, value));
    }
    if !pairs
        .iter()
        .any(|(n, v)| *n == METRIC_NAME && !v.is_empty())
    {
        return Err("has no metric name (label __name__ is missing or empty)".into());
    }
    Labels::series(pairs).map_err(|e| e.to_string())
}

/// `{a="1", b="2"}` of labels as sent (lossy UTF-8), at most ~200 chars.
fn describe_raw(raw: &[(&[u8], &[u8])]) -> String {
    let mut s = String::from("{");
    for (j, (name, value)) in raw.iter().enumerate() {
        if j > 0 {
            s.push_str(", ");
        }
        s.push_str(&String::from_utf8_lossy(name));
        s.push('=');
        s.push_str(&format!("{:?}", String::from_utf8_lossy(value)));
        if s.len() > 200 {
            s.push_str(", ...");
            break;
        }
    }
    s.push('}');
    s
}

fn metadata(kind: i32, family: &[u8], help: &[u8], unit: &[u8]) -> Result<StoreMetadata, String> {
    let text = |what: &str, b: &[u8]| {
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| format!("{what} is not valid UTF-8"))
    };
    let family = text("metric_family_name", family)?;
    if family.is_empty() {
        return Err("metric_family_name is empty".into());
    }
    Ok(StoreMetadata {
        metric_family: family,
        kind: metric_type(kind),
        help: text("help", help)?,
        unit: text("unit", unit)?,
    })
}

pub fn router(state: IngestState) -> Router {
    Router::new()
        .route("/api/v1/write", post(post_write))
        .with_state(state)
}

/// Checks `Content-Encoding` (snappy or absent) and `Content-Type`
/// (`application/x-protobuf`, absent, or with `proto=prometheus.WriteRequest`).
pub fn check_headers(headers: &HeaderMap) -> Result<(), IngestError> {
    if let Some(v) = headers.get(header::CONTENT_ENCODING) {
        let enc = String::from_utf8_lossy(v.as_bytes()).trim().to_string();
        if !enc.is_empty() && !enc.eq_ignore_ascii_case("snappy") {
            return Err(IngestError::Unsupported {
                reason: "unsupported_encoding",
                message: format!(
                    "unsupported Content-Encoding {enc:?}; remote write bodies must be snappy \
                     block compressed (Content-Encoding: snappy)"
                ),
            });
        }
    }
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        // Prometheus assumes 1.0 when the header is absent.
        return Ok(());
    };
    let ct = String::from_utf8_lossy(ct.as_bytes()).into_owned();
    let mut parts = ct.split(';');
    let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    if media != "application/x-protobuf" {
        return Err(IngestError::Unsupported {
            reason: "unsupported_media_type",
            message: format!(
                "unsupported Content-Type {ct:?}; remote write expects application/x-protobuf"
            ),
        });
    }
    for p in parts {
        let Some((k, v)) = p.split_once('=') else {
            continue;
        };
        if !k.trim().eq_ignore_ascii_case("proto") {
            continue;
        }
        let v = v.trim().trim_matches('"');
        match v {
            "prometheus.WriteRequest" => {}
            "io.prometheus.write.v2.Request" => {
                return Err(IngestError::Unsupported {
                    reason: "unsupported_protocol",
                    message: "remote write 2.0 (proto=io.prometheus.write.v2.Request) is not \
                              supported; only remote write 1.0 (prometheus.WriteRequest) is: \
                              set protobuf_message: prometheus.WriteRequest in the sender's \
                              remote_write config"
                        .into(),
                });
            }
            other => {
                return Err(IngestError::Unsupported {
                    reason: "unsupported_protocol",
                    message: format!(
                        "unknown remote write message proto={other:?}; only \
                         prometheus.WriteRequest (remote write 1.0) is supported"
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Compressed bodies larger than this are decompressed and decoded on the
/// blocking pool.
const INLINE_DECODE_BYTES: usize = 64 * 1024;

async fn post_write(State(state): State<IngestState>, headers: HeaderMap, body: Body) -> Response {
    match receive(&state, &headers, body).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => {
            count_rejection(&state, REMOTE_WRITE, &e);
            error_response(&e)
        }
    }
}

async fn receive(state: &IngestState, headers: &HeaderMap, body: Body) -> Result<(), IngestError> {
    check_headers(headers)?;
    let limit = state.config.max_body_bytes;
    let raw = body::read_limited(headers, body, limit).await?;
    let storage = state.storage.clone();
    let work = move |raw: Vec<u8>| -> Result<Decoded, IngestError> {
        let bytes = decompress_snappy(&raw, limit)?;
        drop(raw);
        Ok(decode_with_known(&bytes, |ids, known| {
            storage.samples().known_series(ids, known)
        })?)
    };
    let decoded = if raw.len() <= INLINE_DECODE_BYTES {
        work(raw)?
    } else {
        tokio::task::spawn_blocking(move || work(raw))
            .await
            .map_err(|e| IngestError::Internal(format!("decoder task failed: {e}")))??
    };
    let Decoded {
        batch,
        rejected,
        exemplars_dropped,
    } = decoded;
    let t = state.storage.telemetry();
    metrics::samples_rejected(t, REMOTE_WRITE, reason::EXEMPLAR, exemplars_dropped as u64);
    count_decode_rejections(state, REMOTE_WRITE, &rejected);
    let total = batch.sample_count() + rejected.count();
    let report = store_samples(state, REMOTE_WRITE, batch).await?;
    if rejected.is_empty() && report.rejected_total() == 0 {
        return Ok(());
    }
    let mut problems = Vec::new();
    if !rejected.is_empty() {
        problems.push(rejected.describe("samples"));
    }
    if report.rejected_total() > 0 {
        problems.push(format!("storage: {}", report.describe_rejections()));
    }
    Err(IngestError::SamplesRejected(format!(
        "{} of {total} samples stored; {}",
        report.accepted,
        problems.join("; ")
    )))
}

/// Appends a batch and counts it: accepted samples as received, the
/// storage's refusals per reason, a failed append under the error's reason.
/// Shared by the metric receivers (remote write, OTLP metrics).
pub(crate) async fn store_samples(
    state: &IngestState,
    receiver: &'static str,
    batch: SampleBatch,
) -> Result<AppendReport, IngestError> {
    let n = batch.sample_count();
    if n == 0 && batch.metadata.is_empty() {
        return Ok(AppendReport::default());
    }
    let t = state.storage.telemetry();
    match state.storage.samples().append(batch).await {
        Ok(report) => {
            metrics::samples_received(t, receiver, report.accepted);
            for (r, k) in &report.rejected {
                metrics::samples_rejected(t, receiver, r.as_str(), *k);
            }
            Ok(report)
        }
        Err(e) => {
            let e = IngestError::SampleStorage(e);
            metrics::samples_rejected(t, receiver, e.reason(), n as u64);
            Err(e)
        }
    }
}

/// Counts samples refused while decoding, per reason.
pub(crate) fn count_decode_rejections(
    state: &IngestState,
    receiver: &'static str,
    rejected: &Rejections,
) {
    let t = state.storage.telemetry();
    for (r, n) in &rejected.by_reason {
        metrics::samples_rejected(t, receiver, r, *n as u64);
    }
}

/// Counts a failed request and logs it (5xx/429 as warnings).
pub(crate) fn count_rejection(state: &IngestState, receiver: &'static str, err: &IngestError) {
    // Decode rejections and storage failures counted their samples already;
    // `pipeline::count_rejection` adds the request counter and the log line.
    pipeline::count_rejection(state, receiver, err);
}

/// The HTTP status remote-write senders expect: "retry later" is 503
/// (Prometheus retries 5xx; 429 only when `retry_on_http_429` is set).
pub fn status(err: &IngestError) -> StatusCode {
    match err.status() {
        StatusCode::TOO_MANY_REQUESTS => StatusCode::SERVICE_UNAVAILABLE,
        s => s,
    }
}

/// A plain-text error answer, with `Retry-After` when retrying makes sense.
fn error_response(err: &IngestError) -> Response {
    let resp = (
        status(err),
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{err}\n"),
    )
        .into_response();
    pipeline::with_retry_after(resp, err)
}
