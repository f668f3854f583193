//! The Prometheus text exposition format (0.0.4), as served by Envoy's
//! `/stats/prometheus`, Istio, and every Prometheus client library.
//!
//! Why not `prometheus_parse::Scrape::parse`: checked against its 0.2.5
//! source (and in `tests.rs`), it splits label pairs on `,` and `=` without
//! honouring quotes, so values containing `,`, `=` or `}` are mangled or the
//! line is lost; it never unescapes `\"`, `\\`, `\n`; its name regex `\w+`
//! drops every metric with a `:` in its name; it silently skips lines whose
//! value does not parse and replaces an unparseable timestamp with "now";
//! it cannot tell an explicit timestamp from its default one; it regroups
//! histogram and summary lines into hash maps (order and the `le`/`quantile`
//! text lost; bucket timestamps taken from the first bucket); and it parses
//! every label of every line on every scrape, which defeats the scrape cache.
//! So the scrape path uses this small parser, which works on borrowed line
//! slices: [`parse_line`] splits a line into the raw series text (the scrape
//! cache key), value and timestamp; [`parse_series`] turns the raw series
//! text into labels only when the cache misses. Malformed input is an error
//! with its line number, and fails the scrape, as in Prometheus.

use meshlens_storage::samples::{MetricMetadata, MetricType};
use std::borrow::Cow;
use std::collections::BTreeMap;

/// One line of an exposition.
#[derive(Clone, Debug, PartialEq)]
pub enum Line<'a> {
    /// Empty line or a comment that is neither HELP nor TYPE.
    Blank,
    Help {
        family: &'a str,
        text: String,
    },
    Type {
        family: &'a str,
        kind: MetricType,
    },
    Sample {
        /// The series exactly as written: `name` or `name{labels}`.
        series: &'a str,
        value: f64,
        timestamp_ms: Option<i64>,
    },
}

fn is_name_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b == b':'
}
fn is_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b':'
}
fn is_label_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}
fn is_label_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}
fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Parses a float the way Go's `strconv.ParseFloat` does for exposition
/// values: `NaN`, `+Inf`, `-Inf`, `Inf` (any case), decimal and exponent forms.
pub fn parse_value(s: &str) -> Option<f64> {
    let lower = s.to_ascii_lowercase();
    match lower.as_str() {
        "nan" | "+nan" | "-nan" => return Some(f64::NAN),
        "inf" | "+inf" | "infinity" | "+infinity" => return Some(f64::INFINITY),
        "-inf" | "-infinity" => return Some(f64::NEG_INFINITY),
        _ => {}
    }
    if s.is_empty()
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
    {
        return None;
    }
    s.parse::<f64>().ok()
}

/// Parses one line (without its `\n`; a trailing `\r` is tolerated).
pub fn parse_line(line: &str) -> Result<Line<'_>, String> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    let line = line.trim_start_matches([' ', '\t']);
    if line.is_empty() {
        return Ok(Line::Blank);
    }
    if let Some(rest) = line.strip_prefix('#') {
        return parse_comment(rest);
    }
    let b = line.as_bytes();
    if !is_name_start(b[0]) {
        return Err(format!("expected a metric name, found {:?}", head(line)));
    }
    let mut i = 1;
    while i < b.len() && is_name_char(b[i]) {
        i += 1;
    }
    if i < b.len() && b[i] == b'{' {
        i = end_of_labels(line, i)?;
    }
    let series = &line[..i];
    let rest = &line[i..];
    if !rest.starts_with([' ', '\t']) {
        return Err(format!(
            "expected a space after the series {:?}, found {:?}",
            head(series),
            head(rest)
        ));
    }
    let mut fields = rest.split([' ', '\t']).filter(|f| !f.is_empty());
    let Some(v) = fields.next() else {
        return Err(format!("no value for series {:?}", head(series)));
    };
    let value = parse_value(v).ok_or_else(|| format!("invalid value {v:?}"))?;
    let timestamp_ms = match fields.next() {
        None => None,
        Some(t) => Some(
            t.parse::<i64>()
                .map_err(|_| format!("invalid timestamp {t:?}"))?,
        ),
    };
    if let Some(extra) = fields.next() {
        return Err(format!(
            "unexpected text after the timestamp: {:?}",
            head(extra)
        ));
    }
    Ok(Line::Sample {
        series,
        value,
        timestamp_ms,
    })
}

fn head(s: &str) -> &str {
    match s.char_indices().nth(40) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Index just past the `}` closing the label set opened at `open`.
fn end_of_labels(line: &str, open: usize) -> Result<usize, String> {
    let b = line.as_bytes();
    let mut i = open + 1;
    let mut in_quotes = false;
    while i < b.len() {
        match b[i] {
            b'\\' if in_quotes => i += 1,
            b'"' => in_quotes = !in_quotes,
            b'}' if !in_quotes => return Ok(i + 1),
            _ => {}
        }
        i += 1;
    }
    Err(format!(
        "unterminated label set in {:?}",
        head(&line[..open.min(line.len())])
    ))
}

fn parse_comment(rest: &str) -> Result<Line<'_>, String> {
    // `# HELP name text`, `# TYPE name type`; anything else is a comment.
    if !rest.starts_with([' ', '\t']) {
        return Ok(Line::Blank);
    }
    let rest = rest.trim_start_matches([' ', '\t']);
    let (kw, rest) = match rest.find([' ', '\t']) {
        Some(i) => (&rest[..i], rest[i..].trim_start_matches([' ', '\t'])),
        None => (rest, ""),
    };
    if kw != "HELP" && kw != "TYPE" {
        return Ok(Line::Blank);
    }
    let nb = rest.as_bytes();
    if nb.is_empty() || !is_name_start(nb[0]) {
        return Err(format!(
            "# {kw}: expected a metric name, found {:?}",
            head(rest)
        ));
    }
    let mut i = 1;
    while i < nb.len() && is_name_char(nb[i]) {
        i += 1;
    }
    let family = &rest[..i];
    let tail = &rest[i..];
    if !tail.is_empty() && !tail.starts_with([' ', '\t']) {
        return Err(format!("# {kw}: invalid metric name {:?}", head(rest)));
    }
    let tail = tail.trim_start_matches([' ', '\t']);
    if kw == "HELP" {
        return Ok(Line::Help {
            family,
            text: unescape_help(tail),
        });
    }
    let kind = match tail.trim_end() {
        "counter" => MetricType::Counter,
        "gauge" => MetricType::Gauge,
        "histogram" => MetricType::Histogram,
        "summary" => MetricType::Summary,
        "untyped" | "unknown" => MetricType::Unknown,
        other => return Err(format!("# TYPE {family}: invalid metric type {other:?}")),
    };
    Ok(Line::Type { family, kind })
}

/// HELP text escapes: `\\` and `\n`.
fn unescape_help(s: &str) -> String {
    if !s.contains('\\') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some(o) => {
                out.push('\\');
                out.push(o);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// Label pairs of a raw series: names borrowed, values unescaped when needed.
pub type SeriesLabels<'a> = Vec<(&'a str, Cow<'a, str>)>;

/// The name and labels of a raw series (`name` or `name{a="1",b="2"}`),
/// label values unescaped (`\\`, `\"`, `\n`; other backslashes kept).
pub fn parse_series(series: &str) -> Result<(&str, SeriesLabels<'_>), String> {
    let b = series.as_bytes();
    let name_end = series.find('{').unwrap_or(series.len());
    let name = &series[..name_end];
    if name.is_empty() || !is_name_start(b[0]) || !name.bytes().all(is_name_char) {
        return Err(format!("invalid metric name {:?}", head(name)));
    }
    let mut labels = Vec::new();
    if name_end == series.len() {
        return Ok((name, labels));
    }
    let mut i = name_end + 1;
    let skip = |i: &mut usize| {
        while *i < b.len() && is_blank(b[*i]) {
            *i += 1;
        }
    };
    loop {
        skip(&mut i);
        if i >= b.len() {
            return Err(format!("unterminated label set in {:?}", head(series)));
        }
        if b[i] == b'}' {
            i += 1;
            break;
        }
        if !is_label_start(b[i]) {
            return Err(format!("invalid label name in {:?}", head(series)));
        }
        let ls = i;
        while i < b.len() && is_label_char(b[i]) {
            i += 1;
        }
        let lname = &series[ls..i];
        skip(&mut i);
        if i >= b.len() || b[i] != b'=' {
            return Err(format!("expected '=' after label {lname:?}"));
        }
        i += 1;
        skip(&mut i);
        if i >= b.len() || b[i] != b'"' {
            return Err(format!(
                "expected '\"' to open the value of label {lname:?}"
            ));
        }
        i += 1;
        let vs = i;
        let mut escaped = false;
        while i < b.len() && b[i] != b'"' {
            if b[i] == b'\\' {
                escaped = true;
                i += 1;
            }
            i += 1;
        }
        if i >= b.len() {
            return Err(format!("unterminated value of label {lname:?}"));
        }
        let raw = &series[vs..i];
        i += 1;
        let value = if escaped {
            Cow::Owned(unescape_label_value(raw))
        } else {
            Cow::Borrowed(raw)
        };
        labels.push((lname, value));
        skip(&mut i);
        if i < b.len() && b[i] == b',' {
            i += 1;
            continue;
        }
        if i < b.len() && b[i] == b'}' {
            i += 1;
            break;
        }
        return Err(format!("expected ',' or '}}' after label {lname:?}"));
    }
    if i != b.len() {
        return Err(format!(
            "unexpected text after the label set of {:?}",
            head(series)
        ));
    }
    Ok((name, labels))
}

fn unescape_label_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('"') => out.push('"'),
            Some('n') => out.push('\n'),
            Some(o) => {
                out.push('\\');
                out.push(o);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// Formats a float like Go's `strconv.FormatFloat(f, 'g', -1, 64)`.
pub fn format_go_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "+Inf" } else { "-Inf" }.into();
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0" } else { "0" }.into();
    }
    let e = format!("{f:e}");
    let (mant, exp) = e.split_once('e').unwrap_or((&e, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    // Go: with the shortest precision, %e is used when the exponent is
    // < -4 or >= 6 (eprec = 6).
    if !(-4..6).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{mant}e{sign}{:02}", exp.abs());
    }
    format!("{f}")
}

/// Prometheus 3's normalization of `le` / `quantile` values: the OpenMetrics
/// float form (`1` -> `1.0`, `1e6` -> `1e+06`, `Inf` -> `+Inf`). Values that
/// are not floats are kept as written.
pub fn normalize_float_label(v: &str) -> Cow<'_, str> {
    let Some(f) = parse_value(v) else {
        return Cow::Borrowed(v);
    };
    let mut s = format_go_float(f);
    if !s.contains(['.', 'e', 'I', 'N']) {
        s.push_str(".0");
    }
    if s == v {
        Cow::Borrowed(v)
    } else {
        Cow::Owned(s)
    }
}

/// `# HELP` / `# TYPE` lines of one exposition, by family.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetadataSet {
    pub families: BTreeMap<String, (MetricType, String)>,
}

impl MetadataSet {
    pub fn add_help(&mut self, family: &str, text: String) {
        match self.families.get_mut(family) {
            Some(e) => e.1 = text,
            None => {
                self.families
                    .insert(family.to_string(), (MetricType::Unknown, text));
            }
        }
    }

    pub fn add_type(&mut self, family: &str, kind: MetricType) {
        match self.families.get_mut(family) {
            Some(e) => e.0 = kind,
            None => {
                self.families
                    .insert(family.to_string(), (kind, String::new()));
            }
        }
    }

    pub fn kind(&self, family: &str) -> Option<MetricType> {
        self.families.get(family).map(|e| e.0)
    }

    /// The label whose value Prometheus normalizes for a series of this name:
    /// `le` of `<histogram>_bucket`, `quantile` of `<summary>`.
    pub fn float_label_of(&self, name: &str) -> Option<&'static str> {
        if let Some(fam) = name.strip_suffix("_bucket")
            && self.kind(fam) == Some(MetricType::Histogram)
        {
            return Some("le");
        }
        if self.kind(name) == Some(MetricType::Summary) {
            return Some("quantile");
        }
        None
    }

    pub fn to_metadata(&self) -> Vec<MetricMetadata> {
        self.families
            .iter()
            .map(|(f, (k, h))| MetricMetadata {
                metric_family: f.clone(),
                kind: *k,
                help: h.clone(),
                unit: String::new(),
            })
            .collect()
    }
}

/// A fully parsed sample (tests, tools; the scrape loop goes line by line).
#[derive(Clone, Debug, PartialEq)]
pub struct ParsedSample {
    pub name: String,
    /// In the order written, values unescaped, `le`/`quantile` normalized.
    pub labels: Vec<(String, String)>,
    pub value: f64,
    pub timestamp_ms: Option<i64>,
}

/// A whole exposition, parsed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Exposition {
    pub samples: Vec<ParsedSample>,
    pub metadata: MetadataSet,
}

/// A parse error with its 1-based line number.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

/// Parses a whole exposition (stops at the first malformed line).
pub fn parse_exposition(text: &str) -> Result<Exposition, ParseError> {
    let mut out = Exposition::default();
    for (n, l) in text.split('\n').enumerate() {
        let err = |message| ParseError {
            line: n + 1,
            message,
        };
        match parse_line(l).map_err(err)? {
            Line::Blank => {}
            Line::Help { family, text } => out.metadata.add_help(family, text),
            Line::Type { family, kind } => out.metadata.add_type(family, kind),
            Line::Sample {
                series,
                value,
                timestamp_ms,
            } => {
                let (name, labels) = parse_series(series).map_err(err)?;
                let norm = out.metadata.float_label_of(name);
                let labels = labels
                    .into_iter()
                    .map(|(k, v)| {
                        let v = if Some(k) == norm {
                            normalize_float_label(&v).into_owned()
                        } else {
                            v.into_owned()
                        };
                        (k.to_string(), v)
                    })
                    .collect();
                out.samples.push(ParsedSample {
                    name: name.to_string(),
                    labels,
                    value,
                    timestamp_ms,
                });
            }
        }
    }
    Ok(out)
}
