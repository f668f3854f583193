//! Checks shared by every receiver: id parsing (strict widths), time windows,
//! size limits. Decoders parse ids with the helpers here and run
//! [`check_span`] on every finished span.

use crate::error::Problem;
use meshlens_storage::model::{IdError, Span, SpanId, TraceId, UnixNanos};
use meshlens_storage::span_builder::{AttrRef, SpanParts, SpanRef};

/// Most attributes (tags) accepted on one span.
pub const MAX_ATTRIBUTES: usize = 10_000;
/// Longest accepted span name, attribute key or value, annotation, in bytes.
pub const MAX_STRING_BYTES: usize = 64 * 1024;
/// How far ahead of our clock a timestamp may be.
pub const MAX_FUTURE_NANOS: i64 = 3_600 * 1_000_000_000;
/// 1990-01-01T00:00:00Z: anything older is almost surely a unit mistake.
pub const MIN_TIME: UnixNanos = UnixNanos(631_152_000 * 1_000_000_000);

/// Parses a hex trace id of exactly 16 or 32 characters. Zipkin itself
/// left-pads shorter ids; we refuse them, since they are nearly always a bug
/// in the sender (a stripped leading zero, a decimal id).
pub fn trace_id_hex(s: &str) -> Result<(TraceId, bool), Problem> {
    if s.len() != 16 && s.len() != 32 {
        return Err(IdError::Length {
            what: "trace id",
            expected: "16 or 32",
            got: s.len(),
        }
        .into());
    }
    Ok(TraceId::parse_hex(s)?)
}

/// Parses a hex span id of exactly 16 characters, not all zeros.
pub fn span_id_hex(what: &'static str, s: &str) -> Result<SpanId, Problem> {
    if s.len() != 16 {
        return Err(IdError::Length {
            what,
            expected: "16",
            got: s.len(),
        }
        .into());
    }
    Ok(SpanId::parse_hex(what, s)?)
}

/// A parent id: empty or all zeros mean "root span" (as in Zipkin).
pub fn parent_id_hex(s: &str) -> Result<Option<SpanId>, Problem> {
    if s.is_empty() {
        return Ok(None);
    }
    match span_id_hex("parent id", s) {
        Err(Problem::Id(IdError::Zero { .. })) => Ok(None),
        other => other.map(Some),
    }
}

/// A binary trace id: 16 bytes, or 8 when `allow_64` (Zipkin proto3).
pub fn trace_id_bytes(b: &[u8], allow_64: bool) -> Result<(TraceId, bool), Problem> {
    let mut out = [0u8; 16];
    match b.len() {
        16 => out.copy_from_slice(b),
        8 if allow_64 => out[8..].copy_from_slice(b),
        n => {
            return Err(Problem::IdBytes {
                what: "trace id",
                expected: if allow_64 { "8 or 16" } else { "16" },
                got: n,
            });
        }
    }
    if out == [0u8; 16] {
        return Err(IdError::Zero { what: "trace id" }.into());
    }
    Ok((TraceId(out), b.len() == 8))
}

pub fn span_id_bytes(what: &'static str, b: &[u8]) -> Result<SpanId, Problem> {
    let arr: [u8; 8] = b.try_into().map_err(|_| Problem::IdBytes {
        what,
        expected: "8",
        got: b.len(),
    })?;
    if arr == [0u8; 8] {
        return Err(IdError::Zero { what }.into());
    }
    Ok(SpanId(arr))
}

/// A binary parent id: empty or all zeros mean "root span".
pub fn parent_id_bytes(b: &[u8]) -> Result<Option<SpanId>, Problem> {
    if b.is_empty() {
        return Ok(None);
    }
    match span_id_bytes("parent id", b) {
        Err(Problem::Id(IdError::Zero { .. })) => Ok(None),
        other => other.map(Some),
    }
}

/// Microseconds (Zipkin) to nanoseconds, refusing values that overflow.
pub fn micros_to_nanos(us: i64) -> Result<i64, Problem> {
    us.checked_mul(1_000).ok_or(Problem::OutOfRange {
        value: us as i128,
        unit: "µs",
    })
}

/// How a wire format names the fields [`check_span`] looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Zipkin,
    Otlp,
}

impl Format {
    fn unit(self) -> (&'static str, &'static str) {
        match self {
            Format::Zipkin => ("µs", "microseconds"),
            Format::Otlp => ("ns", "nanoseconds"),
        }
    }
    /// Nanoseconds back to the unit the sender used, for messages.
    fn shown(self, nanos: i64) -> i128 {
        match self {
            Format::Zipkin => (nanos / 1_000) as i128,
            Format::Otlp => nanos as i128,
        }
    }
    fn start_field(self) -> &'static str {
        match self {
            Format::Zipkin => "timestamp",
            Format::Otlp => "startTimeUnixNano",
        }
    }
    fn duration_field(self) -> &'static str {
        match self {
            Format::Zipkin => "duration",
            Format::Otlp => "endTimeUnixNano",
        }
    }
    fn attributes_noun(self) -> &'static str {
        match self {
            Format::Zipkin => "tags",
            Format::Otlp => "attributes",
        }
    }
    fn event_path(self, i: usize, field: &str) -> String {
        match (self, field) {
            (Format::Zipkin, "time") => format!("annotations[{i}].timestamp"),
            (Format::Zipkin, _) => format!("annotations[{i}].value"),
            (Format::Otlp, "time") => format!("events[{i}].timeUnixNano"),
            (Format::Otlp, _) => format!("events[{i}].name"),
        }
    }
}

/// A field name and what is wrong with it; `None` means the span as a whole.
pub type FieldProblem = (Option<String>, Problem);

fn check_time(t: UnixNanos, now: UnixNanos, fmt: Format) -> Result<(), Problem> {
    let (unit, unit_name) = fmt.unit();
    if t < MIN_TIME {
        return Err(Problem::TooOld {
            value: fmt.shown(t.0),
            unit,
            unit_name,
        });
    }
    let ahead = t.0.saturating_sub(now.0);
    if ahead > MAX_FUTURE_NANOS {
        return Err(Problem::TooFarInFuture {
            value: fmt.shown(t.0),
            unit,
            unit_name,
            ahead: human_duration(ahead),
        });
    }
    Ok(())
}

fn human_duration(nanos: i64) -> String {
    let secs = nanos / 1_000_000_000;
    // Rounded to the nearest unit: "3 days", not "2 days" for 2.99.
    match secs {
        s if s >= 2 * 86_400 => format!("{} days", (s + 43_200) / 86_400),
        s if s >= 2 * 3_600 => format!("{} hours", (s + 1_800) / 3_600),
        s => format!("{} minutes", (s + 30) / 60),
    }
}

fn check_len(field: impl FnOnce() -> String, s: &str) -> Result<(), FieldProblem> {
    if s.len() > MAX_STRING_BYTES {
        return Err((
            Some(field()),
            Problem::TooLong {
                len: s.len(),
                max: MAX_STRING_BYTES,
            },
        ));
    }
    Ok(())
}

/// Abbreviates a key for a field path so a huge key does not flood the message.
fn short_key(k: &str) -> String {
    let mut end = k.len().min(40);
    while !k.is_char_boundary(end) {
        end -= 1;
    }
    if end < k.len() {
        format!("{:?}...", &k[..end])
    } else {
        format!("{k:?}")
    }
}

/// Semantic checks on a decoded span. `attribute_count` is the number of
/// attributes the sender sent (may exceed `span.attributes.len()` when the
/// decoder stopped collecting past [`MAX_ATTRIBUTES`]).
pub fn check_span(
    span: &Span,
    attribute_count: usize,
    now: UnixNanos,
    fmt: Format,
) -> Result<(), FieldProblem> {
    check_span_ref(&SpanParts::default().of(span), attribute_count, now, fmt)
}

/// [`check_span`] on a borrowed span, before it is appended to a batch.
pub fn check_span_ref(
    span: &SpanRef<'_>,
    attribute_count: usize,
    now: UnixNanos,
    fmt: Format,
) -> Result<(), FieldProblem> {
    if attribute_count > MAX_ATTRIBUTES {
        return Err((
            None,
            Problem::TooManyAttributes {
                count: attribute_count,
                noun: fmt.attributes_noun(),
            },
        ));
    }
    if let Some(d) = span.duration_nanos
        && d < 0
    {
        let (unit, _) = fmt.unit();
        return Err((
            Some(fmt.duration_field().to_string()),
            Problem::NegativeDuration {
                value: fmt.shown(d) as i64,
                unit,
            },
        ));
    }
    if let Some(start) = span.start {
        check_time(UnixNanos(start), now, fmt)
            .map_err(|p| (Some(fmt.start_field().to_string()), p))?;
    }
    check_len(|| "name".to_string(), &span.name)?;
    for (side, e) in [
        ("localEndpoint", &span.local),
        ("remoteEndpoint", &span.remote),
    ] {
        if let Some(s) = e.service_name {
            check_len(|| format!("{side}.serviceName"), s)?;
        }
    }
    let tag = fmt.attributes_noun();
    for (k, v) in span.attributes.iter() {
        check_len(|| format!("{tag} key {}", short_key(k)), k)?;
        match v {
            AttrRef::Str(s) => check_len(|| format!("{tag}[{}]", short_key(k)), s)?,
            AttrRef::Json(s) => check_len(|| format!("{tag}[{}]", short_key(k)), s)?,
            _ => {}
        }
    }
    for (i, ev) in span.events.iter().enumerate() {
        check_time(UnixNanos(ev.time), now, fmt)
            .map_err(|p| (Some(fmt.event_path(i, "time")), p))?;
        check_len(|| fmt.event_path(i, "name"), &ev.name)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::InvalidSpan;

    #[test]
    fn trace_id_widths() {
        let e = trace_id_hex("abcdef1").unwrap_err();
        assert_eq!(
            e.to_string(),
            "trace id must be 16 or 32 hex characters, got 7"
        );
        let (id, short) = trace_id_hex("00000000000000AB").unwrap();
        assert!(short);
        assert_eq!(id.to_hex(true), "00000000000000ab");
        let (_, short) = trace_id_hex("5b8efff798038103d269b633813fc60c").unwrap();
        assert!(!short);
        assert!(
            trace_id_hex("0000000000000000")
                .unwrap_err()
                .to_string()
                .contains("zeros")
        );
        assert!(
            trace_id_hex("000000000000000g")
                .unwrap_err()
                .to_string()
                .contains("hex")
        );
    }

    #[test]
    fn span_ids() {
        assert_eq!(
            span_id_hex("span id", "123").unwrap_err().to_string(),
            "span id must be 16 hex characters, got 3"
        );
        assert_eq!(parent_id_hex("").unwrap(), None);
        assert_eq!(parent_id_hex("0000000000000000").unwrap(), None);
        assert!(parent_id_hex("00000000000000zz").is_err());
        assert!(span_id_bytes("span id", &[1; 7]).is_err());
        assert_eq!(parent_id_bytes(&[0; 8]).unwrap(), None);
        assert!(trace_id_bytes(&[1; 8], false).is_err());
        assert!(trace_id_bytes(&[1; 8], true).unwrap().1);
    }

    fn span_at(start_us: i64) -> Span {
        Span {
            start: Some(UnixNanos::from_micros(start_us)),
            ..Default::default()
        }
    }

    #[test]
    fn time_window() {
        let now = UnixNanos::now();
        let ok = span_at(now.as_micros());
        assert!(check_span(&ok, 0, now, Format::Zipkin).is_ok());
        let future = span_at(now.as_micros() + 3 * 86_400 * 1_000_000);
        let (field, p) = check_span(&future, 0, now, Format::Zipkin).unwrap_err();
        assert_eq!(field.as_deref(), Some("timestamp"));
        assert!(p.to_string().contains("3 days ahead"), "{p}");
        // Milliseconds sent where microseconds belong: looks like 1970.
        let (_, p) = check_span(&span_at(now.as_millis()), 0, now, Format::Zipkin).unwrap_err();
        assert!(p.to_string().contains("before 1990"), "{p}");
    }

    #[test]
    fn negative_duration_and_limits() {
        let now = UnixNanos::now();
        let mut s = span_at(now.as_micros());
        s.duration_nanos = Some(-5_000);
        let (f, p) = check_span(&s, 0, now, Format::Zipkin).unwrap_err();
        assert_eq!(f.as_deref(), Some("duration"));
        assert_eq!(p.to_string(), "must not be negative, got -5 µs");
        s.duration_nanos = None;
        let (f, p) = check_span(&s, 1_000_000, now, Format::Zipkin).unwrap_err();
        let inv = InvalidSpan {
            location: "span[0]".into(),
            field: f,
            problem: p,
        };
        assert_eq!(
            inv.to_string(),
            "span[0] has 1000000 tags; at most 10000 are accepted"
        );
        s.name = "x".repeat(MAX_STRING_BYTES + 1);
        let (f, _) = check_span(&s, 0, now, Format::Zipkin).unwrap_err();
        assert_eq!(f.as_deref(), Some("name"));
    }

    /// A key or string value over the limit, among short ones: the first
    /// (in key order) is named; exactly at the limit passes.
    #[test]
    fn long_attribute_keys_and_values_are_named() {
        use meshlens_storage::model::AttrValue;
        let now = UnixNanos::now();
        let long = "y".repeat(MAX_STRING_BYTES + 1);
        let mut s = span_at(now.as_micros());
        for k in ["a", "b", "z"] {
            s.attributes
                .insert(k.into(), AttrValue::Str("short".into()));
        }
        s.attributes.insert("n".into(), AttrValue::Int(7));
        s.attributes
            .insert("m".into(), AttrValue::Str("y".repeat(MAX_STRING_BYTES)));
        assert!(check_span(&s, 5, now, Format::Zipkin).is_ok());
        s.attributes
            .insert("q".into(), AttrValue::Json(long.clone()));
        s.attributes
            .insert("p".into(), AttrValue::Str(long.clone()));
        let (f, p) = check_span(&s, 7, now, Format::Otlp).unwrap_err();
        assert_eq!(f.as_deref(), Some("attributes[\"p\"]"));
        assert!(matches!(p, Problem::TooLong { len, .. } if len == MAX_STRING_BYTES + 1));
        s.attributes
            .insert(format!("c{long}"), AttrValue::Bool(true));
        let (f, _) = check_span(&s, 8, now, Format::Zipkin).unwrap_err();
        let f = f.expect("field");
        assert!(f.starts_with("tags key \"cyyy"), "{f}");
        s.attributes.clear();
        s.attributes.insert("j".into(), AttrValue::Json(long));
        let (f, _) = check_span(&s, 1, now, Format::Zipkin).unwrap_err();
        assert_eq!(f.as_deref(), Some("tags[\"j\"]"));
    }
}
