//! OTLP `ExportMetricsServiceRequest` to Prometheus samples, translated the
//! way Prometheus 3's OTLP receiver does with its default translation
//! strategy `UnderscoreEscapingWithSuffixes` (github.com/prometheus/otlptranslator):
//!
//! - metric names: characters other than `[a-zA-Z0-9:]` split the name into
//!   tokens joined by `_` (so `.` and runs of `_` become one `_`); the unit
//!   adds a suffix (`s` -> `_seconds`, `By` -> `_bytes`, `By/s` ->
//!   `_bytes_per_second`, `{requests}` annotations nothing, `1` nothing)
//!   unless the name already has that token; monotonic cumulative sums end
//!   in `_total`, gauges with unit `1` in `_ratio`; a leading digit gets `_`;
//! - label names: characters other than `[a-zA-Z0-9_]` become `_`; a leading
//!   digit gets `key_`, a single leading `_` gets `key`; attributes that
//!   collide after that have their values joined with `;` (sorted by
//!   original key);
//! - `service.namespace`/`service.name` -> `job`, `service.instance.id` ->
//!   `instance`; the other resource attributes go to a `target_info` gauge
//!   (value 1, with job/instance) at the resource's data point times,
//!   repeated every 2.5 minutes (half the lookback) between the earliest
//!   and the latest;
//! - scope name/version -> `otel_scope_name`/`otel_scope_version` labels
//!   (Prometheus 3's `promote_scope_metadata`; we always promote);
//! - gauges and non-monotonic sums -> one series; histograms ->
//!   `_bucket{le}` (cumulative counts, `le="+Inf"` = count), `_sum` (when
//!   set), `_count`; summaries -> `{quantile}`, `_sum`, `_count`;
//! - timestamps ns -> ms (truncated); points flagged
//!   `FLAG_NO_RECORDED_VALUE` -> the staleness marker;
//! - metadata (type, help = description, unit as a Prometheus unit) per family.
//!
//! Refused, per metric, with a counted message (OTLP partial success):
//! sums and histograms whose temporality is not cumulative (Prometheus 3
//! refuses delta by default), exponential histograms (no native histograms
//! yet), metrics without data, names that normalize to nothing. Refused per
//! data point: a number point without a value (Prometheus would store 0; the
//! OTLP spec calls such a point invalid), attribute keys that normalize to
//! an invalid label name.

use crate::error::Rejections;
use meshlens_storage::samples::{
    Labels, METRIC_NAME, MetricMetadata, MetricType, Sample, SampleBatch, SeriesWrite, stale_nan,
};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, HistogramDataPoint, Metric, NumberDataPoint, SummaryDataPoint,
    metric::Data, number_data_point,
};
use std::collections::{BTreeMap, HashMap, HashSet};

/// `reason` label values of refused data points.
pub mod reason {
    pub const DELTA_TEMPORALITY: &str = "delta_temporality";
    pub const EXPONENTIAL_HISTOGRAM: &str = "exponential_histogram";
    pub const INVALID_METRIC: &str = "invalid_metric";
    pub const INVALID_POINT: &str = "invalid_point";
}

/// `DataPointFlags.FLAG_NO_RECORDED_VALUE`.
const FLAG_NO_RECORDED_VALUE: u32 = 1;

/// Half of Prometheus's default 5 minute lookback: the spacing of
/// `target_info` samples.
const TARGET_INFO_INTERVAL_MS: i64 = 150_000;

/// At most this many `target_info` samples per resource and request (a
/// sender with a point at time 0 would otherwise ask for millions).
const MAX_TARGET_INFO_SAMPLES: i64 = 1_000;

/// Resource attributes that identify the target (job/instance) rather than
/// describe it.
const IDENTIFYING: [&str; 3] = ["service.name", "service.namespace", "service.instance.id"];

/// The result of converting one request: the samples and metadata, and the
/// refused data points.
#[derive(Debug, Default, PartialEq)]
pub struct MetricsBatch {
    pub batch: SampleBatch,
    pub rejected: Rejections,
}

impl MetricsBatch {
    /// The `partial_success.error_message`, empty when nothing was refused.
    pub fn error_message(&self) -> String {
        if self.rejected.is_empty() {
            String::new()
        } else {
            self.rejected.describe("data points")
        }
    }
}

/// The kind of a metric as far as naming is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameType {
    Gauge,
    MonotonicCounter,
    NonMonotonicCounter,
    Histogram,
    ExponentialHistogram,
    Summary,
}

// ---------------------------------------------------------------- naming

fn unit_map(unit: &str) -> &str {
    match unit {
        "d" => "days",
        "h" => "hours",
        "min" => "minutes",
        "s" => "seconds",
        "ms" => "milliseconds",
        "us" => "microseconds",
        "ns" => "nanoseconds",
        "By" => "bytes",
        "KiBy" => "kibibytes",
        "MiBy" => "mebibytes",
        "GiBy" => "gibibytes",
        "TiBy" => "tibibytes",
        "KBy" => "kilobytes",
        "MBy" => "megabytes",
        "GBy" => "gigabytes",
        "TBy" => "terabytes",
        "m" => "meters",
        "V" => "volts",
        "A" => "amperes",
        "J" => "joules",
        "W" => "watts",
        "g" => "grams",
        "Cel" => "celsius",
        "Hz" => "hertz",
        "1" => "",
        "%" => "percent",
        other => other,
    }
}

fn per_unit_map(unit: &str) -> &str {
    match unit {
        "s" => "second",
        "m" => "minute",
        "h" => "hour",
        "d" => "day",
        "w" => "week",
        "mo" => "month",
        "y" => "year",
        other => other,
    }
}

fn is_metric_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == ':'
}

/// The main and "per" unit suffixes before clean-up: `By/s` -> (`bytes`, `per_second`).
fn unit_suffixes(unit: &str) -> (String, String) {
    let mut parts = unit.splitn(2, '/');
    let main = parts.next().unwrap_or("").trim();
    let main = if !main.is_empty() && !main.contains(['{', '}']) {
        unit_map(main).to_string()
    } else {
        String::new()
    };
    let mut per = String::new();
    if let Some(p) = parts.next().filter(|p| !p.is_empty()) {
        let p = p.trim();
        if !p.is_empty() && !p.contains(['{', '}']) {
            per = per_unit_map(p).to_string();
        }
        if !per.is_empty() {
            per = format!("per_{per}");
        }
    }
    (main, per)
}

/// Invalid characters to `_`, runs of `_` to one, no leading `_`.
fn clean_up_unit(unit: &str) -> String {
    let mut out = String::with_capacity(unit.len());
    for c in unit.chars() {
        let c = if is_metric_char(c) { c } else { '_' };
        if c == '_' && out.ends_with('_') {
            continue;
        }
        out.push(c);
    }
    match out.strip_prefix('_') {
        Some(rest) => rest.to_string(),
        None => out,
    }
}

/// The Prometheus unit of an OTLP unit, for metadata: `By/s` -> `bytes_per_second`.
pub fn unit_name(unit: &str) -> String {
    let (main, per) = unit_suffixes(unit);
    let (main, per) = (clean_up_unit(&main), clean_up_unit(&per));
    let mut u = match (main.is_empty(), per.is_empty()) {
        (false, false) => format!("{main}_{per}"),
        (false, true) => main,
        _ => per,
    };
    if u.starts_with('_') {
        u.remove(0);
    }
    if u.ends_with('_') {
        u.pop();
    }
    u
}

/// The Prometheus metric name of an OTLP metric, or `None` when it
/// normalizes to nothing (or only underscores).
pub fn metric_name(name: &str, unit: &str, kind: NameType) -> Option<String> {
    let mut tokens: Vec<String> = name
        .split(|c: char| !is_metric_char(c))
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect();
    let (main, per) = unit_suffixes(unit);
    let (mut main, mut per) = (clean_up_unit(&main), clean_up_unit(&per));
    if tokens.contains(&main) {
        main.clear();
    }
    if per == "per_" {
        per.clear();
    } else {
        if per.ends_with('_') {
            per.pop();
        }
        if tokens.contains(&per) {
            per.clear();
        }
    }
    if !per.is_empty() && main.ends_with('_') {
        main.pop();
    }
    if !main.is_empty() {
        tokens.push(main);
    }
    if !per.is_empty() {
        tokens.push(per);
    }
    if kind == NameType::MonotonicCounter {
        tokens.retain(|t| t != "total");
        tokens.push("total".into());
    }
    if unit == "1" && kind == NameType::Gauge {
        tokens.retain(|t| t != "ratio");
        tokens.push("ratio".into());
    }
    let mut out = tokens.join("_");
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    if out.is_empty() || (out != name && out.chars().all(|c| c == '_')) {
        return None;
    }
    Some(out)
}

/// The Prometheus label name of an attribute key, or `None` when it
/// normalizes to an invalid name (empty, only underscores).
pub fn label_name(key: &str) -> Option<String> {
    if key.is_empty() {
        return None;
    }
    let mut out: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert_str(0, "key_");
    } else if out.starts_with('_') && !out.starts_with("__") {
        out.insert_str(0, "key");
    }
    if out != key && out.chars().all(|c| c == '_') {
        return None;
    }
    Some(out)
}

/// A float as Go's `strconv.FormatFloat(f, 'f', -1, 64)` writes it, which
/// Prometheus uses for `le` and `quantile` values.
pub fn format_le(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f == f64::INFINITY {
        "+Inf".into()
    } else if f == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        // Rust's Display is the shortest round-trip form, never exponential.
        format!("{f}")
    }
}

// ------------------------------------------------ attribute values as text

/// An attribute value as pdata's `Value.AsString` writes it (what
/// Prometheus uses as the label value).
pub fn any_value_string(v: Option<&AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        None => String::new(),
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => json_number(*d),
        Some(Value::BytesValue(b)) => base64(b),
        Some(Value::StringValueStrindex(_)) => String::new(),
        Some(other) => {
            let mut s = String::new();
            json_value(Some(other), &mut s);
            s
        }
    }
}

/// A double the way Go's encoding/json (ES6 rules) writes it.
fn json_number(d: f64) -> String {
    if !d.is_finite() {
        return format_le(d);
    }
    let abs = d.abs();
    if abs != 0.0 && !(1e-6..1e21).contains(&abs) {
        // Go: 1e+21, 1e-07 -> 1e-7.
        let s = format!("{d:e}");
        match s.split_once('e') {
            Some((m, e)) if !e.starts_with('-') => format!("{m}e+{e}"),
            _ => s,
        }
    } else {
        format!("{d}")
    }
}

fn json_value(v: Option<&Value>, out: &mut String) {
    match v {
        None => out.push_str("null"),
        Some(Value::StringValue(s)) => out.push_str(&json_string(s)),
        Some(Value::BoolValue(b)) => out.push_str(if *b { "true" } else { "false" }),
        Some(Value::IntValue(i)) => out.push_str(&i.to_string()),
        Some(Value::DoubleValue(d)) if d.is_finite() => out.push_str(&json_number(*d)),
        Some(Value::DoubleValue(_)) => out.push_str("null"),
        Some(Value::BytesValue(b)) => out.push_str(&json_string(&base64(b))),
        // A profiles-only reference into a string table: no text here.
        Some(Value::StringValueStrindex(_)) => out.push_str("null"),
        Some(Value::ArrayValue(a)) => {
            out.push('[');
            for (i, x) in a.values.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                json_value(x.value.as_ref(), out);
            }
            out.push(']');
        }
        Some(Value::KvlistValue(kv)) => {
            // Go marshals a map: keys sorted, the last of duplicates wins.
            let mut m: BTreeMap<&str, Option<&Value>> = BTreeMap::new();
            for e in &kv.values {
                m.insert(&e.key, e.value.as_ref().and_then(|v| v.value.as_ref()));
            }
            out.push('{');
            for (i, (k, x)) in m.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&json_string(k));
                out.push(':');
                json_value(x, out);
            }
            out.push('}');
        }
    }
}

fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

fn base64(b: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(b.len().div_ceil(3) * 4);
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        let idx = [n >> 18, n >> 12, n >> 6, n];
        for (i, x) in idx.iter().enumerate() {
            if i <= c.len() {
                out.push(T[(*x & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

// ------------------------------------------------------------ conversion

/// Label pairs (sanitized names) of a set of attributes; colliding names
/// get their values joined with `;` in the order of the original keys.
fn attribute_labels(
    attrs: &[KeyValue],
    skip: &[&str],
    out: &mut BTreeMap<String, String>,
) -> Result<(), String> {
    let mut pairs: Vec<(&str, String)> = attrs
        .iter()
        .filter(|kv| !skip.contains(&kv.key.as_str()))
        .map(|kv| (kv.key.as_str(), any_value_string(kv.value.as_ref())))
        .collect();
    pairs.sort_by(|a, b| a.0.cmp(b.0));
    for (k, v) in pairs {
        let name = label_name(k)
            .ok_or_else(|| format!("attribute {k:?} does not normalize to a valid label name"))?;
        match out.get_mut(&name) {
            Some(existing) => {
                existing.push(';');
                existing.push_str(&v);
            }
            None => {
                out.insert(name, v);
            }
        }
    }
    Ok(())
}

fn ms(nanos: u64) -> i64 {
    (nanos / 1_000_000) as i64
}

fn temporality_name(t: i32) -> &'static str {
    match AggregationTemporality::try_from(t) {
        Ok(a) => a.as_str_name(),
        Err(_) => "an unknown value",
    }
}

/// Builds a request's samples; one instance per request.
struct Converter {
    out: MetricsBatch,
    /// Series index in `out.batch.series` by labels, to merge points.
    index: HashMap<Labels, usize>,
    families: HashSet<String>,
}

/// What every point of one metric shares.
struct MetricCtx<'a> {
    /// `resourceMetrics[0].scopeMetrics[1].metrics[2]`.
    loc: String,
    otlp_name: &'a str,
    /// Scope labels then job/instance, applied over the point attributes.
    common: &'a [(String, String)],
}

impl MetricCtx<'_> {
    fn describe(&self) -> String {
        format!("metric {:?} ({})", self.otlp_name, self.loc)
    }
}

impl Converter {
    fn push(&mut self, labels: Labels, timestamp_ms: i64, value: f64) {
        let sample = Sample {
            timestamp_ms,
            value,
        };
        match self.index.get(&labels) {
            Some(&i) => self.out.batch.series[i].samples.push(sample),
            None => {
                self.index
                    .insert(labels.clone(), self.out.batch.series.len());
                self.out.batch.series.push(SeriesWrite {
                    labels,
                    samples: vec![sample],
                });
            }
        }
    }

    fn metadata(&mut self, family: &str, kind: MetricType, help: &str, unit: &str) {
        if self.families.insert(family.to_string()) {
            self.out.batch.metadata.push(MetricMetadata {
                metric_family: family.to_string(),
                kind,
                help: help.to_string(),
                unit: unit.to_string(),
            });
        }
    }

    fn reject_point(&mut self, ctx: &MetricCtx<'_>, pi: usize, problem: &str) {
        self.out.rejected.add(reason::INVALID_POINT, 1, || {
            format!("{} dataPoints[{pi}]: {problem}", ctx.describe())
        });
    }

    /// The labels of a point, without `__name__`.
    fn base_labels(
        &self,
        ctx: &MetricCtx<'_>,
        attrs: &[KeyValue],
    ) -> Result<BTreeMap<String, String>, String> {
        let mut m = BTreeMap::new();
        attribute_labels(attrs, &[], &mut m)?;
        for (k, v) in ctx.common {
            m.insert(k.clone(), v.clone());
        }
        Ok(m)
    }

    /// Adds one sample of `name` (plus an `le`/`quantile` label).
    fn emit(
        &mut self,
        base: &BTreeMap<String, String>,
        name: &str,
        extra: Option<(&str, String)>,
        ts: i64,
        value: f64,
    ) -> Result<(), String> {
        let mut m = base.clone();
        m.insert(METRIC_NAME.to_string(), name.to_string());
        if let Some((k, v)) = extra {
            m.insert(k.to_string(), v);
        }
        let labels = Labels::series(m).map_err(|e| e.to_string())?;
        self.push(labels, ts, value);
        Ok(())
    }

    fn numbers(&mut self, ctx: &MetricCtx<'_>, name: &str, points: &[NumberDataPoint]) {
        for (pi, p) in points.iter().enumerate() {
            let value = if p.flags & FLAG_NO_RECORDED_VALUE != 0 {
                stale_nan()
            } else {
                match p.value {
                    Some(number_data_point::Value::AsDouble(d)) => d,
                    Some(number_data_point::Value::AsInt(i)) => i as f64,
                    None => {
                        self.reject_point(ctx, pi, "has no value (asDouble or asInt)");
                        continue;
                    }
                }
            };
            let r = self
                .base_labels(ctx, &p.attributes)
                .and_then(|base| self.emit(&base, name, None, ms(p.time_unix_nano), value));
            if let Err(e) = r {
                self.reject_point(ctx, pi, &e);
            }
        }
    }

    fn histograms(&mut self, ctx: &MetricCtx<'_>, name: &str, points: &[HistogramDataPoint]) {
        for (pi, p) in points.iter().enumerate() {
            if let Err(e) = self.histogram(ctx, name, p) {
                self.reject_point(ctx, pi, &e);
            }
        }
    }

    fn histogram(
        &mut self,
        ctx: &MetricCtx<'_>,
        name: &str,
        p: &HistogramDataPoint,
    ) -> Result<(), String> {
        let base = self.base_labels(ctx, &p.attributes)?;
        let ts = ms(p.time_unix_nano);
        let stale = p.flags & FLAG_NO_RECORDED_VALUE != 0;
        let val = |v: f64| if stale { stale_nan() } else { v };
        if let Some(sum) = p.sum {
            self.emit(&base, &format!("{name}_sum"), None, ts, val(sum))?;
        }
        self.emit(
            &base,
            &format!("{name}_count"),
            None,
            ts,
            val(p.count as f64),
        )?;
        let bucket = format!("{name}_bucket");
        let mut cumulative: u64 = 0;
        for (bound, count) in p.explicit_bounds.iter().zip(&p.bucket_counts) {
            cumulative = cumulative.saturating_add(*count);
            self.emit(
                &base,
                &bucket,
                Some(("le", format_le(*bound))),
                ts,
                val(cumulative as f64),
            )?;
        }
        self.emit(
            &base,
            &bucket,
            Some(("le", "+Inf".into())),
            ts,
            val(p.count as f64),
        )
    }

    fn summaries(&mut self, ctx: &MetricCtx<'_>, name: &str, points: &[SummaryDataPoint]) {
        for (pi, p) in points.iter().enumerate() {
            let r = (|| {
                let base = self.base_labels(ctx, &p.attributes)?;
                let ts = ms(p.time_unix_nano);
                let stale = p.flags & FLAG_NO_RECORDED_VALUE != 0;
                let val = |v: f64| if stale { stale_nan() } else { v };
                self.emit(&base, &format!("{name}_sum"), None, ts, val(p.sum))?;
                self.emit(
                    &base,
                    &format!("{name}_count"),
                    None,
                    ts,
                    val(p.count as f64),
                )?;
                for q in &p.quantile_values {
                    self.emit(
                        &base,
                        name,
                        Some(("quantile", format_le(q.quantile))),
                        ts,
                        val(q.value),
                    )?;
                }
                Ok::<(), String>(())
            })();
            if let Err(e) = r {
                self.reject_point(ctx, pi, &e);
            }
        }
    }

    /// Refuses every point of a metric with one message.
    fn reject_metric(&mut self, ctx: &MetricCtx<'_>, reason: &'static str, n: usize, why: &str) {
        self.out.rejected.add(reason, n, || {
            format!("{}: {why} ({n} data points refused)", ctx.describe())
        });
    }

    fn metric(&mut self, ctx: &MetricCtx<'_>, m: &Metric) {
        let Some(data) = &m.data else {
            self.reject_metric(
                ctx,
                reason::INVALID_METRIC,
                0,
                "has no data (gauge, sum, histogram, exponentialHistogram or summary)",
            );
            return;
        };
        let (kind, points, temporality) = match data {
            Data::Gauge(g) => (NameType::Gauge, g.data_points.len(), None),
            Data::Sum(s) => (
                if s.is_monotonic {
                    NameType::MonotonicCounter
                } else {
                    NameType::NonMonotonicCounter
                },
                s.data_points.len(),
                Some(s.aggregation_temporality),
            ),
            Data::Histogram(h) => (
                NameType::Histogram,
                h.data_points.len(),
                Some(h.aggregation_temporality),
            ),
            Data::ExponentialHistogram(h) => (
                NameType::ExponentialHistogram,
                h.data_points.len(),
                Some(h.aggregation_temporality),
            ),
            Data::Summary(s) => (NameType::Summary, s.data_points.len(), None),
        };
        if kind == NameType::ExponentialHistogram {
            self.reject_metric(
                ctx,
                reason::EXPONENTIAL_HISTOGRAM,
                points,
                "exponential histograms are not supported yet (no native histograms); \
                 configure the SDK's view or the exporter to send explicit-bucket histograms",
            );
            return;
        }
        if let Some(t) = temporality
            && t != AggregationTemporality::Cumulative as i32
        {
            let (r, why) = if t == AggregationTemporality::Delta as i32 {
                (
                    reason::DELTA_TEMPORALITY,
                    "delta temporality is not supported, as in Prometheus: only cumulative \
                     sums and histograms can be stored; set the exporter's temporality \
                     preference to cumulative"
                        .to_string(),
                )
            } else {
                (
                    reason::INVALID_POINT,
                    format!(
                        "aggregation temporality is {}; it must be \
                         AGGREGATION_TEMPORALITY_CUMULATIVE",
                        temporality_name(t)
                    ),
                )
            };
            self.reject_metric(ctx, r, points, &why);
            return;
        }
        let Some(name) = metric_name(&m.name, &m.unit, kind) else {
            self.reject_metric(
                ctx,
                reason::INVALID_METRIC,
                points,
                "the name does not normalize to a valid Prometheus metric name",
            );
            return;
        };
        let mtype = match kind {
            NameType::Gauge | NameType::NonMonotonicCounter => MetricType::Gauge,
            NameType::MonotonicCounter => MetricType::Counter,
            NameType::Histogram | NameType::ExponentialHistogram => MetricType::Histogram,
            NameType::Summary => MetricType::Summary,
        };
        self.metadata(&name, mtype, &m.description, &unit_name(&m.unit));
        match data {
            Data::Gauge(g) => self.numbers(ctx, &name, &g.data_points),
            Data::Sum(s) => self.numbers(ctx, &name, &s.data_points),
            Data::Histogram(h) => self.histograms(ctx, &name, &h.data_points),
            Data::Summary(s) => self.summaries(ctx, &name, &s.data_points),
            Data::ExponentialHistogram(_) => {}
        }
    }
}

/// Earliest and latest point time (ms) of a metric, folded into `range`.
fn time_range(m: &Metric, range: &mut Option<(i64, i64)>) {
    let mut see = |t: u64| {
        let t = ms(t);
        *range = Some(match *range {
            None => (t, t),
            Some((a, b)) => (a.min(t), b.max(t)),
        });
    };
    match &m.data {
        Some(Data::Gauge(g)) => g.data_points.iter().for_each(|p| see(p.time_unix_nano)),
        Some(Data::Sum(s)) => s.data_points.iter().for_each(|p| see(p.time_unix_nano)),
        Some(Data::Histogram(h)) => h.data_points.iter().for_each(|p| see(p.time_unix_nano)),
        Some(Data::ExponentialHistogram(h)) => {
            h.data_points.iter().for_each(|p| see(p.time_unix_nano))
        }
        Some(Data::Summary(s)) => s.data_points.iter().for_each(|p| see(p.time_unix_nano)),
        None => {}
    }
}

fn str_attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<String> {
    let kv: Option<&'a KeyValue> = attrs.iter().find(|kv| kv.key == key);
    kv.map(|kv| any_value_string(kv.value.as_ref()))
}

/// Converts a request. Never fails: refused points are in `rejected`.
pub fn convert_metrics_request(req: ExportMetricsServiceRequest) -> MetricsBatch {
    let mut c = Converter {
        out: MetricsBatch::default(),
        index: HashMap::new(),
        families: HashSet::new(),
    };
    for (ri, rm) in req.resource_metrics.iter().enumerate() {
        let resource_attrs: &[KeyValue] = rm
            .resource
            .as_ref()
            .map(|r| r.attributes.as_slice())
            .unwrap_or(&[]);
        let mut identity: Vec<(String, String)> = Vec::new();
        if let Some(name) = str_attr(resource_attrs, "service.name") {
            let job = match str_attr(resource_attrs, "service.namespace") {
                Some(ns) => format!("{ns}/{name}"),
                None => name,
            };
            identity.push(("job".into(), job));
        }
        if let Some(instance) = str_attr(resource_attrs, "service.instance.id") {
            identity.push(("instance".into(), instance));
        }
        let mut range = None;
        for (si, sm) in rm.scope_metrics.iter().enumerate() {
            let mut common: Vec<(String, String)> = Vec::new();
            if let Some(scope) = &sm.scope {
                if !scope.name.is_empty() {
                    common.push(("otel_scope_name".into(), scope.name.clone()));
                }
                if !scope.version.is_empty() {
                    common.push(("otel_scope_version".into(), scope.version.clone()));
                }
            }
            common.extend(identity.iter().cloned());
            for (mi, m) in sm.metrics.iter().enumerate() {
                time_range(m, &mut range);
                let ctx = MetricCtx {
                    loc: format!("resourceMetrics[{ri}].scopeMetrics[{si}].metrics[{mi}]"),
                    otlp_name: &m.name,
                    common: &common,
                };
                c.metric(&ctx, m);
            }
        }
        if let Some((earliest, latest)) = range {
            target_info(&mut c, ri, resource_attrs, &identity, earliest, latest);
        }
    }
    c.out
}

/// The `target_info` series of one resource, when it has attributes beyond
/// the identifying ones.
fn target_info(
    c: &mut Converter,
    ri: usize,
    attrs: &[KeyValue],
    identity: &[(String, String)],
    earliest: i64,
    latest: i64,
) {
    if !attrs
        .iter()
        .any(|kv| !IDENTIFYING.contains(&kv.key.as_str()))
    {
        return;
    }
    let mut m = BTreeMap::new();
    if let Err(e) = attribute_labels(attrs, &IDENTIFYING, &mut m) {
        c.out.rejected.add(reason::INVALID_METRIC, 0, || {
            format!("resourceMetrics[{ri}].resource: no target_info series: {e}")
        });
        return;
    }
    for (k, v) in identity {
        m.insert(k.clone(), v.clone());
    }
    m.insert(METRIC_NAME.to_string(), "target_info".to_string());
    let Ok(labels) = Labels::series(m) else {
        return;
    };
    c.metadata("target_info", MetricType::Gauge, "Target metadata", "");
    let start = earliest.max(latest - MAX_TARGET_INFO_SAMPLES * TARGET_INFO_INTERVAL_MS);
    let mut t = start;
    while t < latest {
        c.push(labels.clone(), t, 1.0);
        t += TARGET_INFO_INTERVAL_MS;
    }
    c.push(labels, latest, 1.0);
}
