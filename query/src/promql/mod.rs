//! The PromQL engine: parses with `promql-parser`, evaluates over any
//! [`SeriesSource`] (the sample store in production, [`MemSource`] in the
//! conformance runner), Prometheus 3.x semantics for float samples.
//!
//! Evaluation is column-wise: every vector-typed sub-expression of a query is
//! evaluated once for all steps of the query, giving per series one array of
//! values over the step grid (see [`eval`]).

pub mod eval;
pub mod functions;
pub mod promqltest;

use meshlens_storage::samples::{Labels, Matcher, SeriesData, Summary};
use promql_parser::parser::Expr;
use std::sync::Arc;
use std::time::Duration;

/// Where the engine reads samples from.
pub trait SeriesSource: Send + Sync {
    /// All series matching every matcher, with their samples in
    /// `[start_ms, end_ms]` (both inclusive), sorted by time. Series with no
    /// sample in the range may be left out.
    fn select(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<SeriesData>, String>;

    /// Per series matching every matcher, a summary of its samples in
    /// `[start_ms, end_ms]` (staleness markers left out), in any order:
    /// what range functions over long windows need. Must equal summarising
    /// what `select` returns; sources with a faster way override it.
    fn summarize(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<(Labels, Summary)>, String> {
        let mut out: Vec<(Labels, Summary)> = self
            .select(matchers, start_ms, end_ms)?
            .into_iter()
            .filter_map(|s| Summary::of(&s.timestamps, &s.values).map(|x| (s.labels, x)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

/// The sample store as a source. Its reads are async (object store); the
/// engine runs on a blocking thread and waits on the runtime it was given.
pub struct StoreSource {
    pub store: Arc<meshlens_storage::samples::SampleStore>,
    pub handle: tokio::runtime::Handle,
}

impl SeriesSource for StoreSource {
    fn select(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<SeriesData>, String> {
        self.handle
            .block_on(self.store.select(matchers, start_ms, end_ms))
            .map_err(|e| e.to_string())
    }

    fn summarize(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<(Labels, Summary)>, String> {
        self.handle
            .block_on(self.store.summarize(matchers, start_ms, end_ms))
            .map_err(|e| e.to_string())
    }
}

/// An in-memory source: series kept in a vector, matchers applied by scan.
#[derive(Default, Clone)]
pub struct MemSource {
    series: Vec<SeriesData>,
}

impl MemSource {
    pub fn new() -> MemSource {
        MemSource::default()
    }

    /// Adds samples to the series with these labels (creating it), keeping
    /// timestamps sorted and unique (a later add at the same time wins).
    pub fn add(&mut self, labels: Labels, samples: impl IntoIterator<Item = (i64, f64)>) {
        let idx = match self.series.iter().position(|s| s.labels == labels) {
            Some(i) => i,
            None => {
                self.series.push(SeriesData {
                    labels,
                    timestamps: Vec::new(),
                    values: Vec::new(),
                });
                self.series.len() - 1
            }
        };
        let s = &mut self.series[idx];
        let mut pts: Vec<(i64, f64)> = s
            .timestamps
            .iter()
            .copied()
            .zip(s.values.iter().copied())
            .collect();
        pts.extend(samples);
        // Stable sort + keep last of equal timestamps.
        pts.sort_by_key(|p| p.0);
        let mut dedup: Vec<(i64, f64)> = Vec::with_capacity(pts.len());
        for p in pts {
            match dedup.last_mut() {
                Some(last) if last.0 == p.0 => *last = p,
                _ => dedup.push(p),
            }
        }
        s.timestamps = dedup.iter().map(|p| p.0).collect();
        s.values = dedup.iter().map(|p| p.1).collect();
    }

    pub fn clear(&mut self) {
        self.series.clear();
    }

    pub fn len(&self) -> usize {
        self.series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }
}

impl SeriesSource for MemSource {
    fn select(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<SeriesData>, String> {
        let mut out = Vec::new();
        for s in &self.series {
            if !matchers
                .iter()
                .all(|m| m.matches(s.labels.get(&m.name).unwrap_or("")))
            {
                continue;
            }
            let lo = s.timestamps.partition_point(|&t| t < start_ms);
            let hi = s.timestamps.partition_point(|&t| t <= end_ms);
            if lo >= hi {
                continue;
            }
            out.push(SeriesData {
                labels: s.labels.clone(),
                timestamps: s.timestamps[lo..hi].to_vec(),
                values: s.values[lo..hi].to_vec(),
            });
        }
        Ok(out)
    }
}

/// Engine limits and defaults (Prometheus's defaults).
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// How far back an instant selector looks for a sample (5m).
    pub lookback_ms: i64,
    /// Whole-query deadline (2m).
    pub timeout: Duration,
    /// Most samples a query may hold in memory at once (50,000,000).
    pub max_samples: usize,
    /// Most points per series of a range query (11,000).
    pub max_points_per_series: i64,
    /// Instant `rate`/`increase`/`delta`/`last_over_time`/`count_over_time`/
    /// `present_over_time` over 10 m or more read per-series summaries
    /// (exact; see [`SeriesSource::summarize`]) instead of every sample.
    pub summaries: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            lookback_ms: 5 * 60 * 1000,
            timeout: Duration::from_secs(120),
            max_samples: 50_000_000,
            max_points_per_series: 11_000,
            summaries: true,
        }
    }
}

/// One sample of an instant vector.
#[derive(Clone, Debug, PartialEq)]
pub struct InstantSample {
    pub labels: Labels,
    pub t_ms: i64,
    pub value: f64,
}

/// One series of a range result.
#[derive(Clone, Debug, PartialEq)]
pub struct RangeSeries {
    pub labels: Labels,
    /// `(time ms, value)` sorted by time.
    pub points: Vec<(i64, f64)>,
}

/// The value of a query.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Scalar { t_ms: i64, value: f64 },
    String { t_ms: i64, value: String },
    Vector(Vec<InstantSample>),
    Matrix(Vec<RangeSeries>),
}

impl Value {
    /// "scalar", "string", "vector" or "matrix" (the API's resultType).
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Scalar { .. } => "scalar",
            Value::String { .. } => "string",
            Value::Vector(_) => "vector",
            Value::Matrix(_) => "matrix",
        }
    }
}

/// A query's answer with its annotations.
#[derive(Clone, Debug)]
pub struct QueryResult {
    pub value: Value,
    pub warnings: Vec<String>,
    pub infos: Vec<String>,
    /// Samples the query loaded from storage (for stats and limits).
    pub samples_loaded: usize,
}

/// Why a query failed, mapped to Prometheus's API error types.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueryErrorKind {
    /// Parse errors, bad parameters: 400 `bad_data`.
    BadData,
    /// Errors while evaluating: 422 `execution`.
    Execution,
    /// The deadline passed: 503 `timeout`.
    Timeout,
    /// Storage failed: 500 `internal`.
    Internal,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{msg}")]
pub struct QueryError {
    pub kind: QueryErrorKind,
    pub msg: String,
}

impl QueryError {
    pub fn bad_data(msg: impl Into<String>) -> QueryError {
        QueryError {
            kind: QueryErrorKind::BadData,
            msg: msg.into(),
        }
    }
    pub fn execution(msg: impl Into<String>) -> QueryError {
        QueryError {
            kind: QueryErrorKind::Execution,
            msg: msg.into(),
        }
    }
}

/// The engine: cheap to clone, safe to share between requests.
#[derive(Clone)]
pub struct Engine {
    source: Arc<dyn SeriesSource>,
    opts: EngineOptions,
    /// Parsed queries by text: dashboards re-send the same strings, and
    /// `promql-parser` takes ~1 ms on a long dashboard query.
    parsed: Arc<std::sync::Mutex<std::collections::HashMap<String, Arc<Expr>>>>,
}

/// Most parsed queries kept (the cache is emptied when full).
const PARSE_CACHE_ENTRIES: usize = 4096;

impl Engine {
    pub fn new(source: Arc<dyn SeriesSource>, opts: EngineOptions) -> Engine {
        Engine {
            source,
            opts,
            parsed: Arc::default(),
        }
    }

    /// Parses through the cache.
    fn parse_cached(&self, query: &str) -> Result<Arc<Expr>, QueryError> {
        if let Some(e) = self
            .parsed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(query)
        {
            return Ok(e.clone());
        }
        let e = Arc::new(parse(query)?);
        let mut c = self.parsed.lock().unwrap_or_else(|e| e.into_inner());
        if c.len() >= PARSE_CACHE_ENTRIES {
            c.clear();
        }
        c.insert(query.to_string(), e.clone());
        Ok(e)
    }

    pub fn options(&self) -> &EngineOptions {
        &self.opts
    }

    /// Lowers the deadline (a request's `timeout` parameter).
    pub fn set_timeout(&mut self, t: Duration) {
        self.opts.timeout = t;
    }

    /// Evaluates `query` at one instant (`/api/v1/query`).
    pub fn instant_query(&self, query: &str, t_ms: i64) -> Result<QueryResult, QueryError> {
        let expr = self.parse_cached(query)?;
        eval::evaluate(&*self.source, &self.opts, query, &expr, t_ms, t_ms, 0, true)
    }

    /// Evaluates `query` at every step of `[start_ms, end_ms]`
    /// (`/api/v1/query_range`); the result is always a matrix.
    pub fn range_query(
        &self,
        query: &str,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
    ) -> Result<QueryResult, QueryError> {
        if step_ms <= 0 {
            return Err(QueryError::bad_data(
                "zero or negative query resolution step widths are not accepted. Try a positive integer",
            ));
        }
        if end_ms < start_ms {
            return Err(QueryError::bad_data(
                "end timestamp must not be before start time",
            ));
        }
        if (end_ms - start_ms) / step_ms >= self.opts.max_points_per_series {
            return Err(QueryError::bad_data(format!(
                "exceeded maximum resolution of {} points per timeseries. Try decreasing the query resolution (?step=XX)",
                thousands(self.opts.max_points_per_series)
            )));
        }
        let expr = self.parse_cached(query)?;
        if !matches!(
            expr.value_type(),
            promql_parser::parser::value::ValueType::Vector
                | promql_parser::parser::value::ValueType::Scalar
        ) {
            return Err(QueryError::bad_data(format!(
                "invalid expression type {:?} for range query, must be Scalar or instant Vector",
                type_word(&expr)
            )));
        }
        eval::evaluate(
            &*self.source,
            &self.opts,
            query,
            &expr,
            start_ms,
            end_ms,
            step_ms,
            false,
        )
    }
}

fn type_word(expr: &promql_parser::parser::Expr) -> &'static str {
    use promql_parser::parser::value::ValueType;
    match expr.value_type() {
        ValueType::Vector => "instant vector",
        ValueType::Scalar => "scalar",
        ValueType::Matrix => "range vector",
        ValueType::String => "string",
    }
}

fn thousands(n: i64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Parses a query, mapping the parser's error to `bad_data`.
pub fn parse(query: &str) -> Result<promql_parser::parser::Expr, QueryError> {
    check_depth(query)?;
    promql_parser::parser::parse(query).map_err(QueryError::bad_data)
}

/// Stack for threads that parse and evaluate queries: with the limits
/// below, the deepest accepted tree fits with room to spare (debug builds
/// included).
pub const QUERY_STACK_BYTES: usize = 64 << 20;

/// Most bracket nesting levels a query may have.
pub const MAX_NESTING: usize = 256;
/// Most operators a query may have (each can add a level to the tree).
pub const MAX_OPERATORS: usize = 1000;

/// The index of the quote closing the string literal that starts at `i`
/// (`"..."` and `'...'` with backslash escapes, raw `` `...` `` without), or
/// the end of the text. Scanners of query text use it to skip strings.
pub(crate) fn string_end(b: &[u8], i: usize) -> usize {
    let q = b[i];
    let mut j = i + 1;
    while j < b.len() {
        if b[j] == b'\\' && q != b'`' {
            j += 1;
        } else if b[j] == q {
            return j;
        }
        j += 1;
    }
    b.len()
}

/// Parsing and evaluation recurse over the expression tree, so a hostile
/// query (10,000 nested parentheses, a chain of 100,000 `+`) would overflow
/// the thread's stack and abort the process. Bound the tree's depth from the
/// text before parsing: bracket nesting, and operators outside strings
/// (counted generously: a `-` in `1e-3` counts too).
fn check_depth(query: &str) -> Result<(), QueryError> {
    let b = query.as_bytes();
    let (mut depth, mut max_depth, mut ops) = (0usize, 0usize, 0usize);
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'"' | b'\'' | b'`' => i = string_end(b, i),
            b'(' | b'[' | b'{' => {
                depth += 1;
                max_depth = max_depth.max(depth);
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            b'+' | b'-' | b'*' | b'/' | b'%' | b'^' | b'<' | b'>' | b'=' | b'!' => ops += 1,
            c if c.is_ascii_alphabetic() => {
                let start = i;
                while i + 1 < b.len() && (b[i + 1].is_ascii_alphanumeric() || b[i + 1] == b'_') {
                    i += 1;
                }
                let word = &query[start..=i];
                if ["and", "or", "unless", "atan2"]
                    .iter()
                    .any(|k| word.eq_ignore_ascii_case(k))
                {
                    ops += 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    if max_depth > MAX_NESTING {
        return Err(QueryError::bad_data(format!(
            "query nests {max_depth} levels of brackets; at most {MAX_NESTING} are accepted"
        )));
    }
    if ops > MAX_OPERATORS {
        return Err(QueryError::bad_data(format!(
            "query has {ops} operators; at most {MAX_OPERATORS} are accepted"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests;

/// Every vector selector of an expression (those inside range selectors
/// and subqueries too), in source order.
pub fn collect_selectors<'e>(
    e: &'e Expr,
    out: &mut Vec<&'e promql_parser::parser::VectorSelector>,
) {
    match e {
        Expr::Aggregate(a) => {
            collect_selectors(&a.expr, out);
            if let Some(p) = &a.param {
                collect_selectors(p, out);
            }
        }
        Expr::Unary(u) => collect_selectors(&u.expr, out),
        Expr::Binary(b) => {
            collect_selectors(&b.lhs, out);
            collect_selectors(&b.rhs, out);
        }
        Expr::Paren(p) => collect_selectors(&p.expr, out),
        Expr::Subquery(s) => collect_selectors(&s.expr, out),
        Expr::VectorSelector(vs) => out.push(vs),
        Expr::MatrixSelector(ms) => out.push(&ms.vs),
        Expr::Call(c) => {
            for a in &c.args.args {
                collect_selectors(a, out);
            }
        }
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}
