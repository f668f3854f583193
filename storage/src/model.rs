//! The one span model every receiver decodes into and every API encodes from.
//!
//! It is a superset of Zipkin v2 and OTLP: a Zipkin span posted and read back
//! must be equal to what was sent, and an OTLP span keeps its typed
//! attributes, events, links and resource.

use std::collections::BTreeMap;
use std::fmt;

/// A 128-bit trace id. 64-bit ids are stored left-padded with zeros; whether
/// the sender used the short form is kept in [`Span::trace_id_64`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct TraceId(pub [u8; 16]);

/// A 64-bit span id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct SpanId(pub [u8; 8]);

/// Nanoseconds since the Unix epoch. Zipkin speaks microseconds, Prometheus
/// milliseconds: conversions go through the named constructors only.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Debug)]
pub struct UnixNanos(pub i64);

impl UnixNanos {
    pub fn from_micros(us: i64) -> Self {
        UnixNanos(us.saturating_mul(1_000))
    }
    pub fn from_millis(ms: i64) -> Self {
        UnixNanos(ms.saturating_mul(1_000_000))
    }
    pub fn as_micros(self) -> i64 {
        self.0.div_euclid(1_000)
    }
    pub fn as_millis(self) -> i64 {
        self.0.div_euclid(1_000_000)
    }
    pub fn now() -> Self {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        UnixNanos(d.as_nanos() as i64)
    }
}

/// Why an id in text form could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error("{what} must be {expected} hex characters, got {got}")]
    Length {
        what: &'static str,
        expected: &'static str,
        got: usize,
    },
    #[error("{what} must be hex, found {found:?} at position {pos}")]
    NotHex {
        what: &'static str,
        found: char,
        pos: usize,
    },
    #[error("{what} must not be all zeros")]
    Zero { what: &'static str },
}

fn parse_hex_into(what: &'static str, s: &str, out: &mut [u8]) -> Result<(), IdError> {
    // `s` has an even length no larger than 2*out.len(); right-align it.
    let bytes = s.as_bytes();
    let offset = out.len() - bytes.len() / 2;
    for (i, pair) in bytes.chunks(2).enumerate() {
        let mut v = 0u8;
        for (j, &c) in pair.iter().enumerate() {
            let d = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                b'A'..=b'F' => c - b'A' + 10,
                _ => {
                    let pos = i * 2 + j;
                    let found = s[pos..].chars().next().unwrap_or('?');
                    return Err(IdError::NotHex { what, found, pos });
                }
            };
            v = (v << 4) | d;
        }
        out[offset + i] = v;
    }
    Ok(())
}

impl TraceId {
    /// Parses 16 or 32 hex characters (Zipkin also accepts shorter ids and
    /// left-pads them; so do we, up to 32). Returns the id and whether the
    /// sender used the 64-bit form.
    pub fn parse_hex(s: &str) -> Result<(TraceId, bool), IdError> {
        let n = s.len();
        if n == 0 || n > 32 {
            return Err(IdError::Length {
                what: "trace id",
                expected: "16 or 32",
                got: n,
            });
        }
        let padded;
        let s = if n % 2 == 1 {
            padded = format!("0{s}");
            padded.as_str()
        } else {
            s
        };
        let mut out = [0u8; 16];
        parse_hex_into("trace id", s, &mut out)?;
        if out == [0u8; 16] {
            return Err(IdError::Zero { what: "trace id" });
        }
        Ok((TraceId(out), n <= 16))
    }
    pub fn from_u64s(high: u64, low: u64) -> Self {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&high.to_be_bytes());
        out[8..].copy_from_slice(&low.to_be_bytes());
        TraceId(out)
    }
    pub fn high(&self) -> u64 {
        u64::from_be_bytes(self.0[..8].try_into().unwrap_or_default())
    }
    pub fn low(&self) -> u64 {
        u64::from_be_bytes(self.0[8..].try_into().unwrap_or_default())
    }
    /// Hex at the width the sender used.
    pub fn to_hex(&self, as_64: bool) -> String {
        if as_64 && self.high() == 0 {
            hex::encode(&self.0[8..])
        } else {
            hex::encode(self.0)
        }
    }
}

impl SpanId {
    pub fn parse_hex(what: &'static str, s: &str) -> Result<SpanId, IdError> {
        let n = s.len();
        if n == 0 || n > 16 {
            return Err(IdError::Length {
                what,
                expected: "16",
                got: n,
            });
        }
        let padded;
        let s = if n % 2 == 1 {
            padded = format!("0{s}");
            padded.as_str()
        } else {
            s
        };
        let mut out = [0u8; 8];
        parse_hex_into(what, s, &mut out)?;
        if out == [0u8; 8] {
            return Err(IdError::Zero { what });
        }
        Ok(SpanId(out))
    }
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({})", hex::encode(self.0))
    }
}
impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}
impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpanId({})", hex::encode(self.0))
    }
}
impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// Span kind, numbered as OTLP numbers it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
#[repr(u8)]
pub enum SpanKind {
    #[default]
    Unspecified = 0,
    Internal = 1,
    Server = 2,
    Client = 3,
    Producer = 4,
    Consumer = 5,
}

impl SpanKind {
    pub fn from_u8(v: u8) -> SpanKind {
        match v {
            1 => SpanKind::Internal,
            2 => SpanKind::Server,
            3 => SpanKind::Client,
            4 => SpanKind::Producer,
            5 => SpanKind::Consumer,
            _ => SpanKind::Unspecified,
        }
    }
    /// The Zipkin spelling; `None` for kinds Zipkin has no word for.
    pub fn zipkin_name(self) -> Option<&'static str> {
        match self {
            SpanKind::Server => Some("SERVER"),
            SpanKind::Client => Some("CLIENT"),
            SpanKind::Producer => Some("PRODUCER"),
            SpanKind::Consumer => Some("CONSUMER"),
            _ => None,
        }
    }
    pub fn from_zipkin_name(s: &str) -> Option<SpanKind> {
        match s {
            "SERVER" => Some(SpanKind::Server),
            "CLIENT" => Some(SpanKind::Client),
            "PRODUCER" => Some(SpanKind::Producer),
            "CONSUMER" => Some(SpanKind::Consumer),
            _ => None,
        }
    }
    /// OTLP enum name, as Tempo and span metrics spell it.
    pub fn otel_name(self) -> &'static str {
        match self {
            SpanKind::Unspecified => "SPAN_KIND_UNSPECIFIED",
            SpanKind::Internal => "SPAN_KIND_INTERNAL",
            SpanKind::Server => "SPAN_KIND_SERVER",
            SpanKind::Client => "SPAN_KIND_CLIENT",
            SpanKind::Producer => "SPAN_KIND_PRODUCER",
            SpanKind::Consumer => "SPAN_KIND_CONSUMER",
        }
    }
}

/// OTLP status code (0 unset, 1 ok, 2 error).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
#[repr(u8)]
pub enum StatusCode {
    #[default]
    Unset = 0,
    Ok = 1,
    Error = 2,
}

impl StatusCode {
    pub fn from_u8(v: u8) -> StatusCode {
        match v {
            1 => StatusCode::Ok,
            2 => StatusCode::Error,
            _ => StatusCode::Unset,
        }
    }
}

/// The host of an Istio outbound cluster name, as Envoy's `upstream_cluster`
/// tag and cluster stats carry it:
/// `outbound|9080|v1|reviews.default.svc.cluster.local` -> the host part.
pub fn istio_cluster_host(cluster: &str) -> Option<&str> {
    let mut parts = cluster.split('|');
    if parts.next()? != "outbound" {
        return None;
    }
    let host = parts.nth(2)?;
    (!host.is_empty()).then_some(host)
}

/// A network endpoint as Zipkin models it. All fields optional.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Endpoint {
    pub service_name: Option<String>,
    pub ipv4: Option<String>,
    pub ipv6: Option<String>,
    pub port: Option<i32>,
}

impl Endpoint {
    pub fn is_empty(&self) -> bool {
        self.service_name.is_none()
            && self.ipv4.is_none()
            && self.ipv6.is_none()
            && self.port.is_none()
    }
}

/// A timestamped event: a Zipkin annotation or an OTLP span event.
#[derive(Clone, PartialEq, Debug, Default)]
pub struct Event {
    pub time: UnixNanos,
    pub name: String,
    /// OTLP event attributes, as OTLP JSON key-values; empty for Zipkin.
    pub attributes_json: Option<String>,
}

/// An OTLP span link.
#[derive(Clone, PartialEq, Debug, Default)]
pub struct Link {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub trace_state: Option<String>,
    /// OTLP JSON key-values.
    pub attributes_json: Option<String>,
}

/// A span attribute value. Zipkin tags are always strings; OTLP values keep
/// their type. Arrays, maps and bytes are kept as their OTLP JSON form.
#[derive(Clone, PartialEq, Debug)]
pub enum AttrValue {
    Str(String),
    Bool(bool),
    Int(i64),
    Double(f64),
    /// OTLP JSON of an AnyValue (`{"arrayValue":...}`, `{"kvlistValue":...}`,
    /// `{"bytesValue":...}`).
    Json(String),
}

impl AttrValue {
    /// The value as a Zipkin tag string (how the OTel Zipkin exporter renders it).
    pub fn to_tag_string(&self) -> String {
        crate::span_builder::AttrRef::from_value(self).to_tag_string()
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            AttrValue::Str(s) => Some(s),
            _ => None,
        }
    }
}

pub type Attributes = BTreeMap<String, AttrValue>;

/// One span, whatever its source.
#[derive(Clone, PartialEq, Debug, Default)]
pub struct Span {
    pub trace_id: TraceId,
    /// The sender used a 64-bit trace id (Zipkin answers at that width).
    pub trace_id_64: bool,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    pub name: String,
    pub kind: SpanKind,
    /// Start time; `None` when the sender sent none (Zipkin allows it).
    pub start: Option<UnixNanos>,
    /// Duration in nanoseconds; `None` when the sender sent none.
    pub duration_nanos: Option<i64>,
    pub local: Endpoint,
    pub remote: Endpoint,
    pub shared: bool,
    pub debug: bool,
    pub status_code: StatusCode,
    pub status_message: Option<String>,
    /// Span attributes (Zipkin tags).
    pub attributes: Attributes,
    /// Resource attributes (OTLP); `service.name` is also in `local.service_name`.
    pub resource: Attributes,
    pub events: Vec<Event>,
    pub links: Vec<Link>,
    pub trace_state: Option<String>,
    pub flags: Option<u32>,
    pub scope_name: Option<String>,
    pub scope_version: Option<String>,
    /// Rare OTLP fields kept verbatim as a JSON object (dropped counts,
    /// schema urls, scope attributes).
    pub extra_json: Option<String>,
}

impl Span {
    pub fn service_name(&self) -> &str {
        self.local.service_name.as_deref().unwrap_or("")
    }
    /// The end of the span, or its start when it has no duration.
    pub fn end(&self) -> Option<UnixNanos> {
        self.start
            .map(|s| UnixNanos(s.0.saturating_add(self.duration_nanos.unwrap_or(0))))
    }
    pub fn attr_str(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).and_then(|v| v.as_str())
    }
}
