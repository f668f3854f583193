//! Request parameters of the Prometheus API: query string and form body
//! merged (repeated keys kept, for `match[]`), times, limits, selectors.

use super::ApiError;
use axum::http::{HeaderMap, header};
use meshlens_storage::samples::{MatchOp, Matcher};
use promql_parser::label::MatchOp as PMatchOp;
use promql_parser::parser::{self, Expr};

pub struct Params {
    pairs: Vec<(String, String)>,
}

/// Prometheus's minimum and maximum times (what "no start/end" means).
pub const MIN_TIME_MS: i64 = -9_223_309_901_257_974;
pub const MAX_TIME_MS: i64 = 9_223_309_901_257_974;

impl Params {
    pub fn from_request(
        query: Option<&str>,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Params, ApiError> {
        let mut pairs: Vec<(String, String)> = query
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default();
        if !body.is_empty() {
            let ct = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !ct.starts_with("application/x-www-form-urlencoded") {
                return Err(ApiError::bad_data(format!(
                    "POST bodies must be application/x-www-form-urlencoded, got {ct:?}"
                )));
            }
            pairs.extend(form_urlencoded::parse(body).into_owned());
        }
        Ok(Params { pairs })
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn all(&self, key: &str) -> impl Iterator<Item = &str> {
        self.pairs
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `match[]` selectors, each a list of matcher sets (`or` inside braces
    /// makes several).
    pub fn match_sets(&self) -> Result<Vec<Vec<Matcher>>, ApiError> {
        let mut out = Vec::new();
        for s in self.all("match[]") {
            out.extend(parse_selector(s)?);
        }
        Ok(out)
    }

    pub fn time(&self, key: &str) -> Result<Option<i64>, ApiError> {
        match self.get(key) {
            None | Some("") => Ok(None),
            Some(s) => parse_time(s)
                .map(Some)
                .map_err(|e| ApiError::bad_data(format!("invalid parameter \"{key}\": {e}"))),
        }
    }

    /// `start`/`end` in ms, defaulting to all time.
    pub fn range(&self) -> Result<(i64, i64), ApiError> {
        let start = self.time("start")?.unwrap_or(MIN_TIME_MS);
        let end = self.time("end")?.unwrap_or(MAX_TIME_MS);
        if end < start {
            return Err(ApiError::bad_data(
                "invalid parameter \"end\": end timestamp must not be before start time",
            ));
        }
        Ok((start, end))
    }

    pub fn limit(&self) -> Result<Option<usize>, ApiError> {
        match self.get("limit") {
            None | Some("") => Ok(None),
            Some(s) => match s.parse::<i64>() {
                Ok(0) => Ok(None),
                Ok(n) if n > 0 => Ok(Some(n as usize)),
                _ => Err(ApiError::bad_data(format!(
                    "invalid parameter \"limit\": {s:?} is not a non-negative integer"
                ))),
            },
        }
    }
}

/// RFC 3339 or (fractional) Unix seconds, to ms.
pub fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(f) = s.parse::<f64>() {
        if !f.is_finite() {
            return Err(format!("cannot parse {s:?} to a valid timestamp"));
        }
        let ms = (f * 1000.0).round();
        if ms > MAX_TIME_MS as f64 || ms < MIN_TIME_MS as f64 {
            return Err(format!(
                "cannot parse {s:?} to a valid timestamp: out of range"
            ));
        }
        return Ok(ms as i64);
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|_| format!("cannot parse {s:?} to a valid timestamp"))
}

/// A series selector (`up{job="a"}`, `{__name__=~"x.*"}`) to matcher sets.
pub fn parse_selector(s: &str) -> Result<Vec<Vec<Matcher>>, ApiError> {
    let expr = parser::parse(s)
        .map_err(|e| ApiError::bad_data(format!("invalid parameter \"match[]\": {e}")))?;
    let Expr::VectorSelector(vs) = expr else {
        return Err(ApiError::bad_data(format!(
            "invalid parameter \"match[]\": {s:?} is not a series selector"
        )));
    };
    selector_matchers(&vs, s)
}

/// The matcher sets of a parsed vector selector (`or` inside braces makes
/// several); `s` is the text quoted in errors.
pub fn selector_matchers(
    vs: &promql_parser::parser::VectorSelector,
    s: &str,
) -> Result<Vec<Vec<Matcher>>, ApiError> {
    let conv = |m: &promql_parser::label::Matcher| -> Result<Matcher, ApiError> {
        let op = match m.op {
            PMatchOp::Equal => MatchOp::Equal,
            PMatchOp::NotEqual => MatchOp::NotEqual,
            PMatchOp::Re(_) => MatchOp::Regex,
            PMatchOp::NotRe(_) => MatchOp::NotRegex,
        };
        Matcher::new(op, m.name.clone(), m.value.clone())
            .map_err(|e| ApiError::bad_data(format!("invalid regular expression in {s:?}: {e}")))
    };
    let base: Vec<Vec<&promql_parser::label::Matcher>> = if vs.matchers.or_matchers.is_empty() {
        vec![vs.matchers.matchers.iter().collect()]
    } else {
        vs.matchers
            .or_matchers
            .iter()
            .map(|set| set.iter().collect())
            .collect()
    };
    let mut out = Vec::new();
    for set in base {
        let mut ms: Vec<Matcher> = set.into_iter().map(conv).collect::<Result<_, _>>()?;
        if let Some(n) = &vs.name {
            ms.push(Matcher::equal("__name__", n.clone()));
        }
        if ms.iter().all(|m| m.matches_empty()) {
            return Err(ApiError::bad_data(format!(
                "invalid parameter \"match[]\": {s:?}: vector selector must contain at least one non-empty matcher"
            )));
        }
        out.push(ms);
    }
    Ok(out)
}

/// Prometheus 3's `U__` escaping of label names in URL paths
/// (`U__http_2e_method` = `http.method`).
pub fn unescape_label_name(s: &str) -> String {
    let Some(rest) = s.strip_prefix("U__") else {
        return s.to_string();
    };
    let mut out = String::new();
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '_' {
            if chars.peek() == Some(&'_') {
                chars.next();
                out.push('_');
                continue;
            }
            let hex: String = chars.by_ref().take_while(|&c| c != '_').collect();
            match u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                Some(ch) => out.push(ch),
                None => return s.to_string(),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A Prometheus duration (`15s`, `1h30m`, `500ms`, `2d`) or float seconds
/// (`15`, `0.5`), to ms.
pub fn parse_duration_ms(s: &str) -> Result<i64, String> {
    if let Ok(f) = s.parse::<f64>() {
        let ms = (f * 1000.0).round();
        if !ms.is_finite() || ms.abs() > i64::MAX as f64 / 2.0 {
            return Err(format!(
                "cannot parse {s:?} to a valid duration. It overflows int64"
            ));
        }
        return Ok(ms as i64);
    }
    let bad = || format!("cannot parse {s:?} to a valid duration");
    let b = s.as_bytes();
    let (mut i, mut total, mut any) = (0, 0i64, false);
    while i < b.len() {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            return Err(bad());
        }
        let n: i64 = s[start..i].parse().map_err(|_| bad())?;
        let ustart = i;
        while i < b.len() && b[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit = match &s[ustart..i] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 604_800_000,
            "y" => 31_536_000_000,
            _ => return Err(bad()),
        };
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
        any = true;
    }
    if !any {
        return Err(bad());
    }
    Ok(total)
}
