//! Error types of the receivers. Every message says what is wrong and where
//! (`span[3].traceId: ...`), so the person reading a sender's log can fix it.

use crate::body::BodyError;
use crate::validate::MAX_ATTRIBUTES;
use meshlens_storage::StorageError;
use meshlens_storage::model::IdError;
use std::fmt;
use std::time::Duration;

/// What is wrong with one span (or one of its fields).
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum Problem {
    #[error("{0}")]
    Id(#[from] IdError),
    #[error("{what} must be {expected} bytes, got {got}")]
    IdBytes {
        what: &'static str,
        expected: &'static str,
        got: usize,
    },
    #[error("is required")]
    Missing,
    #[error("must not be negative, got {value} {unit}")]
    NegativeDuration { value: i64, unit: &'static str },
    #[error(
        "{value} {unit} is {ahead} ahead of this server's clock; at most 1 hour is accepted \
         (check the sender's clock and that the value is in {unit_name})"
    )]
    TooFarInFuture {
        value: i128,
        unit: &'static str,
        unit_name: &'static str,
        ahead: String,
    },
    #[error(
        "{value} {unit} is before 1990-01-01; is it in the wrong unit? This field is in {unit_name} \
         since the Unix epoch"
    )]
    TooOld {
        value: i128,
        unit: &'static str,
        unit_name: &'static str,
    },
    #[error("{value} {unit} does not fit a 64-bit nanosecond timestamp")]
    OutOfRange { value: i128, unit: &'static str },
    #[error("is {len} bytes long; at most {max} are accepted")]
    TooLong { len: usize, max: usize },
    /// Rendered by [`InvalidSpan`] as "span[0] has 1000000 tags; ...".
    #[error("has {count} {noun}; at most {max} are accepted", max = MAX_ATTRIBUTES)]
    TooManyAttributes { count: usize, noun: &'static str },
    #[error("must be one of CLIENT, SERVER, PRODUCER, CONSUMER, got {0:?}")]
    BadKind(String),
    #[error("port must be between 0 and 65535, got {0}")]
    BadPort(i64),
    #[error("{0}")]
    Other(String),
}

/// One rejected span: where it is in the request, which field, and why.
#[derive(Debug, PartialEq)]
pub struct InvalidSpan {
    /// `span[3]` (Zipkin) or `resourceSpans[0].scopeSpans[1].spans[3]` (OTLP).
    pub location: String,
    /// The field as the wire format spells it: `traceId`, `tags["http.url"]`.
    pub field: Option<String>,
    pub problem: Problem,
}

impl fmt::Display for InvalidSpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.problem, &self.field) {
            (Problem::TooManyAttributes { .. }, _) | (_, None) => {
                let sep = if matches!(self.problem, Problem::TooManyAttributes { .. }) {
                    " "
                } else {
                    ": "
                };
                write!(f, "{}{sep}{}", self.location, self.problem)
            }
            (_, Some(field)) => write!(f, "{}.{field}: {}", self.location, self.problem),
        }
    }
}

impl std::error::Error for InvalidSpan {}

/// Which part of the JSON grammar failed; decides the wording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonErrorKind {
    /// Not JSON at all (bad token).
    Syntax,
    /// Valid JSON of the wrong shape (a number where a string belongs...).
    Data,
    /// The body ends in the middle of a value.
    Truncated,
}

/// Why a request body could not be turned into spans.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("request body is not valid UTF-8: invalid byte sequence at byte offset {offset}")]
    InvalidUtf8 { offset: usize },
    #[error("{}", fmt_json(*.kind, *.span_index, *.line, *.column, .message))]
    Json {
        kind: JsonErrorKind,
        /// The index of the span being read when the error happened.
        span_index: Option<usize>,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("request body is not a valid protobuf {message_name}: {detail}")]
    Protobuf {
        message_name: &'static str,
        detail: String,
    },
    /// Metric samples with bad labels or unsupported shapes (remote write,
    /// OTLP metrics). Only the strict decoders return this; the receivers
    /// store the good samples and report these.
    #[error("{}", .0.describe("samples"))]
    InvalidSamples(Rejections),
    /// The decoded spans could not be made into a batch: a bug of ours,
    /// not of the sender (answered 500).
    #[error("could not build the batch of spans: {0}")]
    Batch(String),
    /// Zipkin rejects a request whole when one span is invalid.
    #[error("{}", fmt_invalid(.first, *.invalid, *.total))]
    InvalidSpans {
        first: Box<InvalidSpan>,
        invalid: usize,
        total: usize,
    },
}

fn fmt_json(
    kind: JsonErrorKind,
    span: Option<usize>,
    line: usize,
    column: usize,
    message: &str,
) -> String {
    let within = span.map(|i| format!(" (in span[{i}])")).unwrap_or_default();
    match kind {
        JsonErrorKind::Truncated => format!(
            "JSON ends unexpectedly at line {line} column {column}{within}: the body looks truncated"
        ),
        JsonErrorKind::Syntax => {
            format!("malformed JSON at line {line} column {column}{within}: {message}")
        }
        JsonErrorKind::Data => {
            format!("unexpected JSON at line {line} column {column}{within}: {message}")
        }
    }
}

fn fmt_invalid(first: &InvalidSpan, invalid: usize, total: usize) -> String {
    if invalid > 1 {
        format!(
            "{first} (and {} more invalid spans; all {total} spans of the request were rejected)",
            invalid - 1
        )
    } else {
        first.to_string()
    }
}

/// How many examples a [`Rejections`] keeps.
const MAX_EXAMPLES: usize = 5;

/// Samples (remote write) or data points (OTLP metrics) refused while
/// decoding, counted by reason, with the first few problems located in the
/// request (`timeseries[3] (up{job="x"}): ...`).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Rejections {
    /// Refused samples or data points, per `reason` label value.
    pub by_reason: Vec<(&'static str, usize)>,
    /// Problems seen (series, metrics or points); a problem may cover
    /// zero samples (an empty series with bad labels is still reported).
    pub problems: usize,
    /// The first few problems, each with its location.
    pub examples: Vec<String>,
}

impl Rejections {
    /// Records one problem covering `count` samples or points.
    pub fn add(&mut self, reason: &'static str, count: usize, describe: impl FnOnce() -> String) {
        self.add_many(&[(reason, count)], describe);
    }

    /// Records one problem covering samples of several reasons.
    pub fn add_many(
        &mut self,
        counts: &[(&'static str, usize)],
        describe: impl FnOnce() -> String,
    ) {
        self.problems += 1;
        for &(reason, count) in counts.iter().filter(|(_, n)| *n > 0) {
            match self.by_reason.iter_mut().find(|(r, _)| *r == reason) {
                Some((_, n)) => *n += count,
                None => self.by_reason.push((reason, count)),
            }
        }
        if self.examples.len() < MAX_EXAMPLES {
            self.examples.push(describe());
        }
    }

    pub fn is_empty(&self) -> bool {
        self.problems == 0
    }

    /// Refused samples or points, all reasons.
    pub fn count(&self) -> usize {
        self.by_reason.iter().map(|(_, n)| n).sum()
    }

    /// One line: `3 samples rejected: <problem>; <problem> (and 2 more problems)`.
    pub fn describe(&self, noun: &str) -> String {
        let mut msg = format!(
            "{} {noun} rejected: {}",
            self.count(),
            self.examples.join("; ")
        );
        if self.problems > self.examples.len() {
            msg.push_str(&format!(
                " (and {} more problems)",
                self.problems - self.examples.len()
            ));
        }
        msg
    }
}

impl DecodeError {
    /// Wraps a serde_json error; `span_index` is the span being read, if known.
    pub fn from_json(e: &serde_json::Error, span_index: Option<usize>) -> Self {
        use serde_json::error::Category;
        let kind = match e.classify() {
            Category::Eof => JsonErrorKind::Truncated,
            Category::Data => JsonErrorKind::Data,
            Category::Syntax | Category::Io => JsonErrorKind::Syntax,
        };
        // serde_json appends " at line L column C"; we say where ourselves.
        let full = e.to_string();
        let message = match full.rfind(" at line ") {
            Some(i) => full[..i].to_string(),
            None => full,
        };
        DecodeError::Json {
            kind,
            span_index,
            line: e.line(),
            column: e.column(),
            message,
        }
    }

    /// Checks UTF-8 once up front so the error can name the byte offset.
    pub fn check_utf8(bytes: &[u8]) -> Result<&str, DecodeError> {
        std::str::from_utf8(bytes).map_err(|e| DecodeError::InvalidUtf8 {
            offset: e.valid_up_to(),
        })
    }

    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::InvalidSpans { .. } => "invalid_span",
            DecodeError::InvalidSamples(_) => "invalid_sample",
            DecodeError::InvalidUtf8 { .. } => "invalid_utf8",
            DecodeError::Batch(_) => "internal",
            _ => "malformed",
        }
    }
}

/// Everything that can go wrong while serving one ingest request, with the
/// HTTP status and telemetry reason it maps to.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Body(#[from] BodyError),
    #[error("unsupported Content-Type {0:?}; send application/x-protobuf or application/json")]
    UnsupportedMediaType(String),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("cannot store spans: {0}")]
    Storage(#[from] StorageError),
    #[error("internal error: {0}")]
    Internal(String),
    /// A metric receiver's header check failed (`Content-Type`,
    /// `Content-Encoding`, protocol version): HTTP 415.
    #[error("{message}")]
    Unsupported {
        reason: &'static str,
        message: String,
    },
    #[error("cannot store samples: {0}")]
    SampleStorage(StorageError),
    /// Some samples of a metrics write were refused (bad data, or storage
    /// rules such as out of order): HTTP 400, which senders never retry.
    /// The good samples of the request were stored.
    #[error("{0}")]
    SamplesRejected(String),
}

impl IngestError {
    pub fn status(&self) -> axum::http::StatusCode {
        use axum::http::StatusCode as S;
        match self {
            IngestError::Body(b) => b.status(),
            IngestError::UnsupportedMediaType(_) => S::UNSUPPORTED_MEDIA_TYPE,
            IngestError::Decode(DecodeError::Batch(_)) => S::INTERNAL_SERVER_ERROR,
            IngestError::Decode(_) => S::BAD_REQUEST,
            IngestError::Storage(StorageError::Backpressure { .. })
            | IngestError::SampleStorage(StorageError::Backpressure { .. }) => S::TOO_MANY_REQUESTS,
            IngestError::Storage(StorageError::ShuttingDown)
            | IngestError::SampleStorage(StorageError::ShuttingDown) => S::SERVICE_UNAVAILABLE,
            IngestError::Storage(_) | IngestError::SampleStorage(_) | IngestError::Internal(_) => {
                S::INTERNAL_SERVER_ERROR
            }
            IngestError::Unsupported { .. } => S::UNSUPPORTED_MEDIA_TYPE,
            IngestError::SamplesRejected(_) => S::BAD_REQUEST,
        }
    }

    /// `Retry-After` for answers that mean "try again later".
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            IngestError::Storage(StorageError::Backpressure { retry_after, .. })
            | IngestError::SampleStorage(StorageError::Backpressure { retry_after, .. }) => {
                Some(*retry_after)
            }
            IngestError::Storage(StorageError::ShuttingDown)
            | IngestError::SampleStorage(StorageError::ShuttingDown) => {
                Some(Duration::from_secs(5))
            }
            _ => None,
        }
    }

    /// The `reason` label of the rejection counters.
    pub fn reason(&self) -> &'static str {
        match self {
            IngestError::Body(b) => b.reason(),
            IngestError::UnsupportedMediaType(_) => "unsupported_media_type",
            IngestError::Decode(d) => d.reason(),
            IngestError::Storage(StorageError::Backpressure { .. })
            | IngestError::SampleStorage(StorageError::Backpressure { .. }) => "backpressure",
            IngestError::Storage(StorageError::ShuttingDown)
            | IngestError::SampleStorage(StorageError::ShuttingDown) => "shutting_down",
            IngestError::Storage(_) | IngestError::SampleStorage(_) => "storage_error",
            IngestError::Internal(_) => "internal",
            IngestError::Unsupported { reason, .. } => reason,
            IngestError::SamplesRejected(_) => "rejected_samples",
        }
    }

    /// The gRPC status for this error.
    pub fn grpc_code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            IngestError::Decode(DecodeError::Batch(_)) => Code::Internal,
            IngestError::Body(_)
            | IngestError::UnsupportedMediaType(_)
            | IngestError::Unsupported { .. }
            | IngestError::SamplesRejected(_)
            | IngestError::Decode(_) => Code::InvalidArgument,
            IngestError::Storage(StorageError::Backpressure { .. })
            | IngestError::SampleStorage(StorageError::Backpressure { .. }) => {
                Code::ResourceExhausted
            }
            IngestError::Storage(StorageError::ShuttingDown)
            | IngestError::SampleStorage(StorageError::ShuttingDown) => Code::Unavailable,
            IngestError::Storage(_) | IngestError::SampleStorage(_) | IngestError::Internal(_) => {
                Code::Internal
            }
        }
    }
}
