//! The metric data model (Prometheus's): a series is a sorted set of labels
//! including `__name__`; a sample is (timestamp in ms, f64).

use std::fmt;
use std::sync::Arc;

/// Bit pattern of Prometheus's staleness marker, a NaN no arithmetic produces.
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// The staleness marker value.
pub fn stale_nan() -> f64 {
    f64::from_bits(STALE_NAN_BITS)
}

/// True when `v` is the staleness marker (not any other NaN).
pub fn is_stale_nan(v: f64) -> bool {
    v.to_bits() == STALE_NAN_BITS
}

/// The label holding the metric name.
pub const METRIC_NAME: &str = "__name__";

/// One label. Names and values are shared, cheap to clone.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Label {
    pub name: Arc<str>,
    pub value: Arc<str>,
}

/// A label set sorted by name, names unique, no empty values (an empty value
/// means "label absent", as in Prometheus).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Labels(Arc<[Label]>);

/// Why a label set is not a valid series.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    #[error("label name is empty")]
    EmptyName,
    #[error("label {0:?} appears more than once")]
    Duplicate(String),
    #[error("series has no metric name (label __name__)")]
    NoMetricName,
    #[error("label name {0:?} is not valid UTF-8 or contains a control character")]
    BadName(String),
}

impl Labels {
    /// Sorts, drops empty values, rejects empty and duplicate names.
    pub fn new<N, V>(pairs: impl IntoIterator<Item = (N, V)>) -> Result<Labels, LabelError>
    where
        N: AsRef<str>,
        V: AsRef<str>,
    {
        let mut v: Vec<Label> = Vec::new();
        for (n, val) in pairs {
            let (n, val) = (n.as_ref(), val.as_ref());
            if n.is_empty() {
                return Err(LabelError::EmptyName);
            }
            if n.chars().any(|c| c.is_control()) {
                return Err(LabelError::BadName(n.to_string()));
            }
            if val.is_empty() {
                continue;
            }
            v.push(Label {
                name: Arc::from(n),
                value: Arc::from(val),
            });
        }
        v.sort_by(|a, b| a.name.cmp(&b.name));
        for w in v.windows(2) {
            if w[0].name == w[1].name {
                return Err(LabelError::Duplicate(w[0].name.to_string()));
            }
        }
        Ok(Labels(v.into()))
    }

    /// Like [`Labels::new`] and also requires a non-empty `__name__`.
    pub fn series<N, V>(pairs: impl IntoIterator<Item = (N, V)>) -> Result<Labels, LabelError>
    where
        N: AsRef<str>,
        V: AsRef<str>,
    {
        let l = Labels::new(pairs)?;
        if l.metric_name().is_none() {
            return Err(LabelError::NoMetricName);
        }
        Ok(l)
    }

    /// Builds from labels already sorted, unique and non-empty (checked in debug builds).
    pub fn from_sorted(v: Vec<Label>) -> Labels {
        debug_assert!(v.windows(2).all(|w| w[0].name < w[1].name));
        Labels(v.into())
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .binary_search_by(|l| l.name.as_ref().cmp(name))
            .ok()
            .map(|i| self.0[i].value.as_ref())
    }

    /// The values of `names` (sorted, unique) into `out`, "" for a missing
    /// one: one merge pass over the labels instead of a search per name.
    pub fn get_sorted<'a>(&'a self, names: &[&str], out: &mut Vec<&'a str>) {
        debug_assert!(names.windows(2).all(|w| w[0] < w[1]));
        out.clear();
        let mut i = 0;
        for n in names {
            while i < self.0.len() && self.0[i].name.as_ref() < *n {
                i += 1;
            }
            if i < self.0.len() && self.0[i].name.as_ref() == *n {
                out.push(self.0[i].value.as_ref());
                i += 1;
            } else {
                out.push("");
            }
        }
    }

    pub fn metric_name(&self) -> Option<&str> {
        self.get(METRIC_NAME)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Label> {
        self.0.iter()
    }

    pub fn as_slice(&self) -> &[Label] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A copy without the labels for which `drop` is true.
    pub fn without(&self, mut drop: impl FnMut(&str) -> bool) -> Labels {
        Labels(self.0.iter().filter(|l| !drop(&l.name)).cloned().collect())
    }

    /// A copy with `name` set to `value` (removed when `value` is empty).
    pub fn with(&self, name: &str, value: &str) -> Labels {
        let mut v: Vec<Label> = self
            .0
            .iter()
            .filter(|l| &*l.name != name)
            .cloned()
            .collect();
        if !value.is_empty() {
            v.push(Label {
                name: Arc::from(name),
                value: Arc::from(value),
            });
            v.sort_by(|a, b| a.name.cmp(&b.name));
        }
        Labels(v.into())
    }

    /// The stable 64-bit series id: xxh3 of the sorted labels. The same
    /// labels give the same id in every process and version (the id is
    /// stored in Parquet files).
    pub fn series_id(&self) -> u64 {
        let mut h = SeriesIdHasher::default();
        for l in self.0.iter() {
            h.push(l.name.as_bytes(), l.value.as_bytes());
        }
        h.finish()
    }
}

/// [`Labels::series_id`] of labels as a receiver reads them off the wire,
/// without building [`Labels`]: push the labels sorted by name, then
/// [`SeriesIdHasher::finish`]. Labels with an empty value are skipped, as
/// [`Labels::new`] drops them. Reusable (`clear`) to keep its buffer.
#[derive(Default)]
pub struct SeriesIdHasher {
    buf: Vec<u8>,
}

impl SeriesIdHasher {
    pub fn clear(&mut self) {
        self.buf.clear();
    }

    #[inline]
    pub fn push(&mut self, name: &[u8], value: &[u8]) {
        if value.is_empty() {
            return;
        }
        self.buf.extend_from_slice(name);
        self.buf.push(0xff);
        self.buf.extend_from_slice(value);
        self.buf.push(0xfe);
    }

    /// The id: xxh3 of `name 0xff value 0xfe` per label, bytes that never
    /// occur in UTF-8 marking where names and values end.
    pub fn finish(&self) -> u64 {
        xxhash_rust::xxh3::xxh3_64(&self.buf)
    }
}

impl fmt::Display for Labels {
    /// `name{a="1", b="2"}` like Prometheus prints a series.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(n) = self.metric_name() {
            f.write_str(n)?;
        }
        f.write_str("{")?;
        let mut first = true;
        for l in self.0.iter().filter(|l| &*l.name != METRIC_NAME) {
            if !first {
                f.write_str(", ")?;
            }
            first = false;
            write!(f, "{}={:?}", l.name, &*l.value)?;
        }
        f.write_str("}")
    }
}

/// One sample.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    pub timestamp_ms: i64,
    pub value: f64,
}

/// Samples of one series in one write.
#[derive(Clone, Debug, PartialEq)]
pub struct SeriesWrite {
    pub labels: Labels,
    pub samples: Vec<Sample>,
}

/// Metric family type, as in Prometheus metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricType {
    Counter,
    Gauge,
    Histogram,
    Gaugehistogram,
    Summary,
    Info,
    Stateset,
    Unknown,
}

impl MetricType {
    pub fn as_str(&self) -> &'static str {
        match self {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Histogram => "histogram",
            MetricType::Gaugehistogram => "gaugehistogram",
            MetricType::Summary => "summary",
            MetricType::Info => "info",
            MetricType::Stateset => "stateset",
            MetricType::Unknown => "unknown",
        }
    }
}

/// `# HELP` / `# TYPE` / unit of a metric family.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct MetricMetadata {
    pub metric_family: String,
    #[serde(rename = "type")]
    pub kind: MetricType,
    pub help: String,
    pub unit: String,
}

/// One write: samples of many series, and metadata.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SampleBatch {
    pub series: Vec<SeriesWrite>,
    pub metadata: Vec<MetricMetadata>,
    /// Samples of series named by id only; stored after `series`.
    pub known: KnownSeriesSamples,
}

impl SampleBatch {
    pub fn sample_count(&self) -> usize {
        self.series.iter().map(|s| s.samples.len()).sum::<usize>() + self.known.sample_count()
    }
}

/// Samples of series named by their id ([`Labels::series_id`]) instead of
/// their labels: for a receiver that found the series already in the
/// catalog ([`crate::samples::SampleStore::known_series`]) and so need not
/// build its labels again. Series are never removed from the catalog, so a
/// series known once stays known. Flat, a few allocations per write rather
/// than one per series: series `i` is `ids[i]` with the samples
/// `samples[ends[i - 1]..ends[i]]`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KnownSeriesSamples {
    ids: Vec<u64>,
    ends: Vec<u32>,
    samples: Vec<Sample>,
}

impl KnownSeriesSamples {
    pub fn with_capacity(series: usize, samples: usize) -> Self {
        KnownSeriesSamples {
            ids: Vec::with_capacity(series),
            ends: Vec::with_capacity(series),
            samples: Vec::with_capacity(samples),
        }
    }

    /// Adds the samples of one series (none: nothing is added).
    pub fn push(&mut self, id: u64, samples: &[Sample]) {
        self.samples.extend_from_slice(samples);
        self.end_series(id);
    }

    /// Adds one sample to the series being built; [`Self::end_series`] names it.
    pub(crate) fn push_sample(&mut self, s: Sample) {
        self.samples.push(s);
    }

    /// Ends the series being built (the samples added since the last one)
    /// as `id`; false, and nothing added, when it got no samples.
    pub(crate) fn end_series(&mut self, id: u64) -> bool {
        let start = self.ends.last().map_or(0, |&e| e as usize);
        if self.samples.len() == start {
            return false;
        }
        self.ids.push(id);
        self.ends.push(self.samples.len() as u32);
        true
    }

    /// Number of series entries (a series sent twice counts twice).
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn sample_count(&self) -> usize {
        self.samples.len()
    }

    /// `(id, samples)` in the order pushed.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &[Sample])> + '_ {
        let mut start = 0usize;
        self.ids.iter().zip(&self.ends).map(move |(&id, &end)| {
            let s = &self.samples[start..end as usize];
            start = end as usize;
            (id, s)
        })
    }
}

/// Why samples of an append were not stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// Older than the newest sample of its series minus the out-of-order window.
    OutOfOrder,
    /// Older than the retention cutoff.
    TooOld,
    /// More than an hour ahead of this server's clock.
    TooFarInFuture,
    /// The series would be new and the active series limit is reached.
    SeriesLimit,
    /// Too many labels, or a name or value too long.
    LabelLimit,
    /// Sent by id ([`KnownSeriesSamples`]) but not in the catalog: a bug of
    /// the receiver, counted rather than stored under a wrong series.
    UnknownSeries,
}

impl RejectReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            RejectReason::OutOfOrder => "out_of_order",
            RejectReason::TooOld => "too_old",
            RejectReason::TooFarInFuture => "too_far_in_future",
            RejectReason::SeriesLimit => "series_limit",
            RejectReason::LabelLimit => "label_limit",
            RejectReason::UnknownSeries => "unknown_series",
        }
    }
}

/// The outcome of an append: what was stored and, for what was not, how
/// many of each reason plus a few examples a person can act on.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AppendReport {
    pub accepted: u64,
    pub series_created: u64,
    pub rejected: Vec<(RejectReason, u64)>,
    /// Up to 5 examples: `series{...} @ ts: reason detail`.
    pub examples: Vec<String>,
}

impl AppendReport {
    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().map(|(_, n)| n).sum()
    }

    pub(crate) fn reject(
        &mut self,
        reason: RejectReason,
        n: u64,
        example: impl FnOnce() -> String,
    ) {
        if n == 0 {
            return;
        }
        match self.rejected.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, c)) => *c += n,
            None => self.rejected.push((reason, n)),
        }
        if self.examples.len() < 5 {
            self.examples.push(example());
        }
    }

    /// One line for an HTTP 400 body or a log.
    pub fn describe_rejections(&self) -> String {
        let counts: Vec<String> = self
            .rejected
            .iter()
            .map(|(r, n)| format!("{n} {}", r.as_str()))
            .collect();
        format!(
            "{} of {} samples rejected ({}); e.g. {}",
            self.rejected_total(),
            self.rejected_total() + self.accepted,
            counts.join(", "),
            self.examples.join("; ")
        )
    }
}

/// Label matcher operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatchOp {
    Equal,
    NotEqual,
    Regex,
    NotRegex,
}

/// A label matcher; regexes are anchored at both ends, as in Prometheus.
#[derive(Clone, Debug)]
pub struct Matcher {
    pub name: String,
    pub op: MatchOp,
    pub value: String,
    re: Option<regex::Regex>,
    /// Regexes dashboards use most, answered without the regex engine.
    fast: Option<FastRegex>,
}

/// Regex shapes that need no regex engine (as Prometheus's
/// `FastRegexMatcher` does): a literal, `a|b|c`, `.*`, `.+`.
#[derive(Clone, Debug, PartialEq)]
pub enum FastRegex {
    Literals(Vec<String>),
    Any,
    NonEmpty,
}

impl FastRegex {
    fn parse(re: &str) -> Option<FastRegex> {
        match re {
            ".*" => return Some(FastRegex::Any),
            ".+" => return Some(FastRegex::NonEmpty),
            _ => {}
        }
        let meta = |c: char| "\\.+*?()[]{}^$".contains(c);
        if re.chars().any(meta) {
            return None;
        }
        Some(FastRegex::Literals(
            re.split('|').map(str::to_string).collect(),
        ))
    }

    fn matches(&self, v: &str) -> bool {
        match self {
            FastRegex::Any => true,
            FastRegex::NonEmpty => !v.is_empty(),
            FastRegex::Literals(l) => l.iter().any(|x| x == v),
        }
    }
}

impl Matcher {
    pub fn new(
        op: MatchOp,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<Matcher, regex::Error> {
        let value = value.into();
        let regex = matches!(op, MatchOp::Regex | MatchOp::NotRegex);
        let fast = if regex {
            FastRegex::parse(&value)
        } else {
            None
        };
        let re = if regex && fast.is_none() {
            Some(regex::Regex::new(&format!("^(?s:{value})$"))?)
        } else {
            None
        };
        Ok(Matcher {
            name: name.into(),
            op,
            value,
            re,
            fast,
        })
    }

    pub fn equal(name: impl Into<String>, value: impl Into<String>) -> Matcher {
        Matcher {
            name: name.into(),
            op: MatchOp::Equal,
            value: value.into(),
            re: None,
            fast: None,
        }
    }

    /// The literal values a regex matcher stands for, if it is `a|b|c`.
    pub fn regex_literals(&self) -> Option<&[String]> {
        match &self.fast {
            Some(FastRegex::Literals(l)) => Some(l),
            _ => None,
        }
    }

    /// Whether a label value (empty = label absent) matches.
    pub fn matches(&self, v: &str) -> bool {
        match self.op {
            MatchOp::Equal => v == self.value,
            MatchOp::NotEqual => v != self.value,
            MatchOp::Regex => match &self.fast {
                Some(f) => f.matches(v),
                None => self.re.as_ref().is_some_and(|r| r.is_match(v)),
            },
            MatchOp::NotRegex => !match &self.fast {
                Some(f) => f.matches(v),
                None => self.re.as_ref().is_some_and(|r| r.is_match(v)),
            },
        }
    }

    /// True when the empty value matches (then series without the label match too).
    pub fn matches_empty(&self) -> bool {
        self.matches("")
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match self.op {
            MatchOp::Equal => "=",
            MatchOp::NotEqual => "!=",
            MatchOp::Regex => "=~",
            MatchOp::NotRegex => "!~",
        };
        write!(f, "{}{op}{:?}", self.name, self.value)
    }
}

/// The samples of one series in a time range, sorted by time, unique times.
#[derive(Clone, Debug, PartialEq)]
pub struct SeriesData {
    pub labels: Labels,
    pub timestamps: Vec<i64>,
    pub values: Vec<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_id_hasher_gives_the_labels_id() {
        let sets: [&[(&str, &str)]; 4] = [
            &[("__name__", "up")],
            &[
                ("__name__", "x"),
                ("a", ""),
                ("b", "2"),
                ("job", "reviews-v1"),
            ],
            &[("__name__", "\u{e9}t\u{e9}"), ("le", "+Inf")],
            &[],
        ];
        let mut h = SeriesIdHasher::default();
        for pairs in sets {
            h.clear();
            for (n, v) in pairs {
                h.push(n.as_bytes(), v.as_bytes());
            }
            let labels = Labels::new(pairs.iter().copied()).unwrap();
            assert_eq!(h.finish(), labels.series_id(), "{pairs:?}");
        }
        // The id depends on every byte and on where names end.
        let id = |pairs: &[(&str, &str)]| Labels::new(pairs.iter().copied()).unwrap().series_id();
        assert_ne!(id(&[("ab", "c")]), id(&[("a", "bc")]));
        assert_ne!(id(&[("a", "1")]), id(&[("a", "2")]));
    }

    /// The fast paths answer exactly as the anchored regex does.
    #[test]
    fn fast_regex_agrees_with_the_regex_engine() {
        let values = [
            "",
            "a",
            "b",
            "ab",
            "a|b",
            "reviews-v1",
            "reviews-v10",
            "x.y",
            "\n",
        ];
        for pat in [
            "a",
            "a|b",
            "reviews-v1",
            ".*",
            ".+",
            "",
            "a|",
            "x.y",
            "a.*",
            "(a|b)",
            "[ab]",
        ] {
            for op in [MatchOp::Regex, MatchOp::NotRegex] {
                let m = Matcher::new(op, "l", pat).expect("valid");
                let re = regex::Regex::new(&format!("^(?s:{pat})$")).expect("valid");
                for v in values {
                    let want = re.is_match(v) == (op == MatchOp::Regex);
                    assert_eq!(m.matches(v), want, "{op:?} {pat:?} on {v:?}");
                }
            }
        }
        assert!(
            Matcher::new(MatchOp::Regex, "l", "a|b")
                .expect("valid")
                .regex_literals()
                .is_some()
        );
        assert!(
            Matcher::new(MatchOp::Regex, "l", "a.*")
                .expect("valid")
                .regex_literals()
                .is_none()
        );
    }
}
