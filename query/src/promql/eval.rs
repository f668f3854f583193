//! The evaluator.
//!
//! A query is evaluated over a step grid (one step for an instant query).
//! Every vector-typed node yields, per series, one `Option<f64>` per step;
//! range-typed nodes (matrix selectors, subqueries) yield the raw samples of
//! each series plus the window end of every step, and range functions slide
//! over them. Nothing is evaluated per step per node: each node runs once
//! for the whole grid, so per-node work is a loop over series and steps with
//! no allocation per sample.
//!
//! Semantics follow Prometheus 3.x `promql/engine.go`: left-open windows
//! `(t - range, t]`, 5-minute lookback for instant selectors, staleness
//! markers end a series, immediate (not delayed) removal of `__name__`.

use super::{
    EngineOptions, InstantSample, QueryError, QueryErrorKind, QueryResult, RangeSeries,
    SeriesSource, Value, functions,
};
use meshlens_storage::samples::{
    Labels, METRIC_NAME, MatchOp, Matcher, SeriesData, Summary, is_stale_nan,
};
use promql_parser::label::MatchOp as PMatchOp;
use promql_parser::parser::token::*;
use promql_parser::parser::{
    AggregateExpr, AtModifier, BinaryExpr, Expr, LabelModifier, Offset, SubqueryExpr,
    VectorMatchCardinality, VectorSelector,
};
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// The evaluation steps: `start + i * step` for `i < n`.
#[derive(Clone, Copy, Debug)]
pub struct Grid {
    pub start: i64,
    pub step: i64,
    pub n: usize,
}

impl Grid {
    #[inline]
    pub fn t(&self, i: usize) -> i64 {
        self.start + i as i64 * self.step
    }
}

/// One series of a vector-typed node: a value (or none) per step.
#[derive(Clone, Debug)]
pub struct Series {
    pub labels: Labels,
    pub vals: Vec<Option<f64>>,
}

/// Raw samples of one series, stale markers removed.
#[derive(Clone, Debug)]
pub struct RawSeries {
    pub labels: Labels,
    pub ts: Vec<i64>,
    pub vs: Vec<f64>,
}

impl RawSeries {
    /// Indices `[lo, hi)` of the samples in `(end - range, end]`.
    #[inline]
    pub fn window(&self, end: i64, range: i64) -> (usize, usize) {
        let lo = self.ts.partition_point(|&t| t <= end - range);
        let hi = self.ts.partition_point(|&t| t <= end);
        (lo, hi.max(lo))
    }
}

/// A range-typed value: raw series and, per step, the end of its window.
#[derive(Clone, Debug)]
pub struct RangeVal {
    pub series: Vec<RawSeries>,
    pub range_ms: i64,
    pub ends: Vec<i64>,
    /// Labels `absent_over_time` answers with (from the selector's matchers).
    pub absent_labels: Labels,
}

/// The value of a node over the grid.
#[derive(Clone, Debug)]
pub enum Val {
    Scalar(Vec<f64>),
    Str(String),
    Vector(Vec<Series>),
    Range(RangeVal),
}

/// Per-query state shared by all nodes (and threads) of one evaluation.
pub struct Ctx<'a> {
    pub src: &'a dyn SeriesSource,
    /// The query text, for annotation positions.
    pub query: &'a str,
    pub opts: &'a EngineOptions,
    /// The query's own start and end, for `@ start()` / `@ end()`.
    pub qstart: i64,
    pub qend: i64,
    /// Step used by subqueries without one: the query step, or 1m for
    /// instant queries (Prometheus's default evaluation interval).
    pub default_step: i64,
    pub deadline: Instant,
    pub samples: AtomicUsize,
    pub warnings: Mutex<Vec<String>>,
    pub infos: Mutex<Vec<String>>,
}

pub type R<T> = Result<T, QueryError>;

impl Ctx<'_> {
    pub fn check_deadline(&self) -> R<()> {
        if Instant::now() > self.deadline {
            return Err(QueryError {
                kind: QueryErrorKind::Timeout,
                msg: format!(
                    "query timed out in expression evaluation (timeout {:?}; raise --query-timeout)",
                    self.opts.timeout
                ),
            });
        }
        Ok(())
    }

    fn add_samples(&self, n: usize) -> R<()> {
        let total = self.samples.fetch_add(n, Ordering::Relaxed) + n;
        if total > self.opts.max_samples {
            return Err(QueryError::execution(format!(
                "query processing would load too many samples into memory in query execution (limit {}; narrow the time range or the selectors)",
                self.opts.max_samples
            )));
        }
        Ok(())
    }

    pub fn warn(&self, msg: String) {
        push_unique(&self.warnings, msg);
    }

    /// `msg (line:col)` with the position of argument `arg` of the first
    /// call of `func` in the query, like Prometheus's annotations.
    pub fn at_arg(&self, msg: String, func: &str, arg: usize) -> String {
        match arg_position(self.query, func, arg) {
            Some(p) => format!("{msg} ({p})"),
            None => msg,
        }
    }

    pub fn info(&self, msg: String) {
        push_unique(&self.infos, msg);
    }
}

fn push_unique(list: &Mutex<Vec<String>>, msg: String) {
    let mut w = list.lock().unwrap_or_else(|e| e.into_inner());
    if !w.contains(&msg) {
        w.push(msg);
    }
}

/// Evaluates `expr` over `[start, end]` by `step` (`instant`: one step at
/// `start`) and shapes the result like Prometheus's API does.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    src: &dyn SeriesSource,
    opts: &EngineOptions,
    query: &str,
    expr: &Expr,
    start: i64,
    end: i64,
    step: i64,
    instant: bool,
) -> Result<QueryResult, QueryError> {
    let grid = if instant {
        Grid {
            start,
            step: 1,
            n: 1,
        }
    } else {
        Grid {
            start,
            step,
            n: ((end - start) / step) as usize + 1,
        }
    };
    let ctx = Ctx {
        src,
        query,
        opts,
        qstart: start,
        qend: end,
        default_step: if instant { 60_000 } else { step },
        deadline: Instant::now() + opts.timeout,
        samples: AtomicUsize::new(0),
        warnings: Mutex::new(Vec::new()),
        infos: Mutex::new(Vec::new()),
    };
    let val = eval(&ctx, expr, &grid)?;
    let value = if instant {
        match val {
            Val::Scalar(v) => Value::Scalar {
                t_ms: start,
                value: v[0],
            },
            Val::Str(s) => Value::String {
                t_ms: start,
                value: s,
            },
            Val::Vector(series) => Value::Vector(
                series
                    .into_iter()
                    .filter_map(|s| {
                        s.vals[0].map(|v| InstantSample {
                            labels: s.labels,
                            t_ms: start,
                            value: v,
                        })
                    })
                    .collect(),
            ),
            Val::Range(r) => {
                let end = r.ends[0];
                let mut out = Vec::new();
                for s in r.series {
                    let (lo, hi) = s.window(end, r.range_ms);
                    if lo < hi {
                        out.push(RangeSeries {
                            labels: s.labels,
                            points: s.ts[lo..hi]
                                .iter()
                                .copied()
                                .zip(s.vs[lo..hi].iter().copied())
                                .collect(),
                        });
                    }
                }
                Value::Matrix(out)
            }
        }
    } else {
        let series = match val {
            Val::Scalar(v) => vec![Series {
                labels: Labels::default(),
                vals: v.into_iter().map(Some).collect(),
            }],
            Val::Vector(s) => merge_same_labels(s, grid.n)?,
            Val::Str(_) | Val::Range(_) => {
                return Err(QueryError::bad_data(
                    "invalid expression type for range query, must be Scalar or instant Vector",
                ));
            }
        };
        let mut out: Vec<RangeSeries> = series
            .into_iter()
            .filter_map(|s| {
                let points: Vec<(i64, f64)> = s
                    .vals
                    .iter()
                    .enumerate()
                    .filter_map(|(i, v)| v.map(|v| (grid.t(i), v)))
                    .collect();
                (!points.is_empty()).then_some(RangeSeries {
                    labels: s.labels,
                    points,
                })
            })
            .collect();
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        Value::Matrix(out)
    };
    Ok(QueryResult {
        value,
        warnings: ctx.warnings.into_inner().unwrap_or_default(),
        infos: ctx.infos.into_inner().unwrap_or_default(),
        samples_loaded: ctx.samples.load(Ordering::Relaxed),
    })
}

/// Evaluates one node over `grid`.
pub fn eval(ctx: &Ctx, expr: &Expr, grid: &Grid) -> R<Val> {
    ctx.check_deadline()?;
    let v = eval_node(ctx, expr, grid)?;
    ctx.check_deadline()?;
    Ok(v)
}

fn eval_node(ctx: &Ctx, expr: &Expr, grid: &Grid) -> R<Val> {
    match expr {
        Expr::NumberLiteral(n) => Ok(Val::Scalar(vec![n.val; grid.n])),
        Expr::StringLiteral(s) => Ok(Val::Str(s.val.clone())),
        Expr::Paren(p) => eval(ctx, &p.expr, grid),
        Expr::VectorSelector(vs) => Ok(Val::Vector(eval_selector(ctx, vs, grid, false)?)),
        Expr::MatrixSelector(ms) => {
            let ends = window_ends(ctx, grid, &ms.vs.at, &ms.vs.offset)?;
            Ok(Val::Range(select_range(
                ctx,
                &ms.vs,
                ends,
                dur_ms(&ms.range),
            )?))
        }
        Expr::Subquery(sq) => Ok(Val::Range(eval_subquery(ctx, sq, grid)?)),
        Expr::Unary(u) => match eval(ctx, &u.expr, grid)? {
            Val::Scalar(v) => Ok(Val::Scalar(v.into_iter().map(|x| -x).collect())),
            Val::Vector(series) => {
                let out = series
                    .into_iter()
                    .map(|s| Series {
                        labels: drop_name(&s.labels),
                        vals: s.vals.into_iter().map(|v| v.map(|x| -x)).collect(),
                    })
                    .collect();
                Ok(Val::Vector(merge_same_labels(out, grid.n)?))
            }
            _ => Err(QueryError::bad_data(
                "unary minus needs a scalar or an instant vector",
            )),
        },
        Expr::Binary(b) => eval_binary(ctx, b, grid),
        Expr::Aggregate(a) => eval_aggregate(ctx, a, grid),
        Expr::Call(c) => functions::call(ctx, c, grid),
        Expr::Extension(_) => Err(QueryError::bad_data(
            "extension expressions are not supported",
        )),
    }
}

/// Evaluates a node that must give a vector (an error otherwise).
pub fn eval_vector(ctx: &Ctx, expr: &Expr, grid: &Grid) -> R<Vec<Series>> {
    match eval(ctx, expr, grid)? {
        Val::Vector(v) => Ok(v),
        _ => Err(QueryError::bad_data(format!(
            "expected an instant vector, got {}",
            expr.value_type()
        ))),
    }
}

/// Evaluates a node that must give a scalar: one value per step.
pub fn eval_scalar(ctx: &Ctx, expr: &Expr, grid: &Grid) -> R<Vec<f64>> {
    match eval(ctx, expr, grid)? {
        Val::Scalar(v) => Ok(v),
        _ => Err(QueryError::bad_data(format!(
            "expected a scalar, got {}",
            expr.value_type()
        ))),
    }
}

pub fn dur_ms(d: &Duration) -> i64 {
    d.as_millis() as i64
}

fn offset_ms(o: &Option<Offset>) -> i64 {
    match o {
        None => 0,
        Some(Offset::Pos(d)) => dur_ms(d),
        Some(Offset::Neg(d)) => -dur_ms(d),
    }
}

pub fn system_time_ms(t: &SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

fn at_ms(ctx: &Ctx, at: &Option<AtModifier>) -> Option<i64> {
    match at {
        None => None,
        Some(AtModifier::Start) => Some(ctx.qstart),
        Some(AtModifier::End) => Some(ctx.qend),
        Some(AtModifier::At(t)) => Some(system_time_ms(t)),
    }
}

/// Per step, the time a selector reads at: `@` (or the step) minus offset.
pub(super) fn window_ends(
    ctx: &Ctx,
    grid: &Grid,
    at: &Option<AtModifier>,
    offset: &Option<Offset>,
) -> R<Vec<i64>> {
    let off = offset_ms(offset);
    Ok(match at_ms(ctx, at) {
        Some(a) => vec![a - off; grid.n],
        None => (0..grid.n).map(|i| grid.t(i) - off).collect(),
    })
}

/// The storage matchers of a selector (one set per `or` alternative).
pub fn selector_matchers(vs: &VectorSelector) -> R<Vec<Vec<Matcher>>> {
    let conv = |ms: &[promql_parser::label::Matcher]| -> R<Vec<Matcher>> {
        let mut out = Vec::with_capacity(ms.len() + 1);
        if let Some(n) = &vs.name {
            out.push(Matcher::equal(METRIC_NAME, n.clone()));
        }
        for m in ms {
            let op = match m.op {
                PMatchOp::Equal => MatchOp::Equal,
                PMatchOp::NotEqual => MatchOp::NotEqual,
                PMatchOp::Re(_) => MatchOp::Regex,
                PMatchOp::NotRe(_) => MatchOp::NotRegex,
            };
            out.push(
                Matcher::new(op, m.name.clone(), m.value.clone()).map_err(|e| {
                    QueryError::bad_data(format!("invalid regular expression: {e}"))
                })?,
            );
        }
        Ok(out)
    };
    let mut sets = vec![conv(&vs.matchers.matchers)?];
    for alt in &vs.matchers.or_matchers {
        sets.push(conv(alt)?);
    }
    if vs.matchers.matchers.is_empty() && !vs.matchers.or_matchers.is_empty() {
        sets.remove(0);
    }
    Ok(sets)
}

/// Reads the samples of every series a selector matches in `[lo, hi]`,
/// sorted by labels (Prometheus's storage order).
fn fetch(ctx: &Ctx, vs: &VectorSelector, lo: i64, hi: i64) -> R<Vec<SeriesData>> {
    let out = read_sets(vs, |set| ctx.src.select(set, lo, hi), |s| &s.labels)?;
    let n: usize = out.iter().map(|s| s.timestamps.len()).sum();
    ctx.add_samples(n)?;
    Ok(out)
}

/// Per series a selector matches, the summary of its samples in
/// `[lo, hi]` (see [`SeriesSource::summarize`]), sorted by labels.
pub(super) fn fetch_summaries(
    ctx: &Ctx,
    vs: &VectorSelector,
    lo: i64,
    hi: i64,
) -> R<Vec<(Labels, Summary)>> {
    let out = read_sets(vs, |set| ctx.src.summarize(set, lo, hi), |s| &s.0)?;
    // What the raw path would hold in memory is the samples; here it is
    // one summary per series.
    ctx.add_samples(out.len())?;
    Ok(out)
}

/// One read per matcher set of a selector (its `or` alternatives), sorted
/// by labels, a series matched by several sets kept once.
fn read_sets<T>(
    vs: &VectorSelector,
    read: impl Fn(&[Matcher]) -> Result<Vec<T>, String>,
    labels: impl Fn(&T) -> &Labels,
) -> R<Vec<T>> {
    let mut out: Vec<T> = Vec::new();
    let sets = selector_matchers(vs)?;
    let several = sets.len() > 1;
    for set in sets {
        out.extend(read(&set).map_err(|e| QueryError {
            kind: QueryErrorKind::Internal,
            msg: format!("reading samples: {e}"),
        })?);
    }
    out.sort_by(|a, b| labels(a).cmp(labels(b)));
    if several {
        out.dedup_by(|a, b| labels(a) == labels(b));
    }
    Ok(out)
}

/// An instant selector: per step, the latest sample in `(t - lookback, t]`
/// unless it is a staleness marker. With `want_ts` the value is the
/// sample's timestamp in seconds (for `timestamp()`).
pub fn eval_selector(ctx: &Ctx, vs: &VectorSelector, grid: &Grid, want_ts: bool) -> R<Vec<Series>> {
    let ends = window_ends(ctx, grid, &vs.at, &vs.offset)?;
    let lb = ctx.opts.lookback_ms;
    let (lo, hi) = min_max(&ends);
    let data = fetch(ctx, vs, lo - lb + 1, hi)?;
    let mut out = Vec::with_capacity(data.len());
    for (k, s) in data.into_iter().enumerate() {
        if k % 1024 == 0 {
            ctx.check_deadline()?;
        }
        let mut vals = Vec::with_capacity(grid.n);
        let mut any = false;
        for &e in &ends {
            let idx = s.timestamps.partition_point(|&t| t <= e);
            let v = if idx == 0 {
                None
            } else {
                let j = idx - 1;
                if s.timestamps[j] <= e - lb || is_stale_nan(s.values[j]) {
                    None
                } else if want_ts {
                    Some(s.timestamps[j] as f64 / 1000.0)
                } else {
                    Some(s.values[j])
                }
            };
            any |= v.is_some();
            vals.push(v);
        }
        if any {
            out.push(Series {
                labels: s.labels,
                vals,
            });
        }
    }
    Ok(out)
}

fn min_max(v: &[i64]) -> (i64, i64) {
    let lo = v.iter().copied().min().unwrap_or(0);
    let hi = v.iter().copied().max().unwrap_or(0);
    (lo, hi)
}

/// A matrix selector: raw samples of the union of all windows.
fn select_range(ctx: &Ctx, vs: &VectorSelector, ends: Vec<i64>, range: i64) -> R<RangeVal> {
    let (lo, hi) = min_max(&ends);
    let data = fetch(ctx, vs, lo - range + 1, hi)?;
    let series = data
        .into_iter()
        .map(|s| {
            let mut ts = Vec::with_capacity(s.timestamps.len());
            let mut vs = Vec::with_capacity(s.values.len());
            for (t, v) in s.timestamps.into_iter().zip(s.values) {
                if !is_stale_nan(v) {
                    ts.push(t);
                    vs.push(v);
                }
            }
            RawSeries {
                labels: s.labels,
                ts,
                vs,
            }
        })
        .filter(|s| !s.ts.is_empty())
        .collect();
    Ok(RangeVal {
        series,
        range_ms: range,
        ends,
        absent_labels: absent_labels(vs),
    })
}

/// The labels `absent(x{a="1"})` answers with: equality matchers, minus
/// names matched more than once (Prometheus's historic behaviour).
pub fn absent_labels(vs: &VectorSelector) -> Labels {
    let mut seen: HashMap<&str, Option<&str>> = HashMap::new();
    for m in &vs.matchers.matchers {
        if m.name == METRIC_NAME {
            continue;
        }
        match (seen.get(m.name.as_str()), &m.op) {
            (None, PMatchOp::Equal) => {
                seen.insert(&m.name, Some(&m.value));
            }
            _ => {
                seen.insert(&m.name, None);
            }
        }
    }
    Labels::new(
        seen.into_iter()
            .filter_map(|(k, v)| v.map(|v| (k.to_string(), v.to_string()))),
    )
    .unwrap_or_default()
}

/// A subquery: the inner expression on its own aligned grid, then treated
/// like a matrix selector over the points it produced.
fn eval_subquery(ctx: &Ctx, sq: &SubqueryExpr, grid: &Grid) -> R<RangeVal> {
    let range = dur_ms(&sq.range);
    let step = sq
        .step
        .as_ref()
        .map(dur_ms)
        .unwrap_or(ctx.default_step)
        .max(1);
    let ends = window_ends(ctx, grid, &sq.at, &sq.offset)?;
    let (lo, hi) = min_max(&ends);
    // First multiple of `step` strictly after `lo - range`.
    let s = lo - range;
    let start = s.div_euclid(step) * step + step;
    if hi < start {
        return Ok(RangeVal {
            series: Vec::new(),
            range_ms: range,
            ends,
            absent_labels: Labels::default(),
        });
    }
    let n = ((hi - start) / step) as usize + 1;
    if n as i64 > 50 * ctx.opts.max_points_per_series.max(1) {
        return Err(QueryError::execution(format!(
            "subquery would evaluate {n} steps; use a larger subquery step"
        )));
    }
    let inner = Grid { start, step, n };
    let series = match eval(ctx, &sq.expr, &inner)? {
        Val::Vector(v) => v,
        Val::Scalar(v) => vec![Series {
            labels: Labels::default(),
            vals: v.into_iter().map(Some).collect(),
        }],
        _ => {
            return Err(QueryError::bad_data(
                "subquery needs an instant vector or scalar expression",
            ));
        }
    };
    let mut raw = Vec::with_capacity(series.len());
    let mut total = 0;
    for s in series {
        let mut ts = Vec::new();
        let mut vs = Vec::new();
        for (i, v) in s.vals.iter().enumerate() {
            if let Some(v) = v {
                ts.push(inner.t(i));
                vs.push(*v);
            }
        }
        total += ts.len();
        if !ts.is_empty() {
            raw.push(RawSeries {
                labels: s.labels,
                ts,
                vs,
            });
        }
    }
    ctx.add_samples(total)?;
    Ok(RangeVal {
        series: raw,
        range_ms: range,
        ends,
        absent_labels: Labels::default(),
    })
}

/// Drops the metric name (and the `__type__`/`__unit__` labels that
/// describe it, as Prometheus's type-and-unit labels do).
pub fn drop_name(l: &Labels) -> Labels {
    if l.get(METRIC_NAME).is_none() && l.get("__type__").is_none() && l.get("__unit__").is_none() {
        return l.clone();
    }
    l.without(|n| n == METRIC_NAME || n == "__type__" || n == "__unit__")
}

/// `line:col` (1-based, bytes) of argument `arg` of the first call of
/// `func` (a function or an aggregation, whose `by`/`without` clause may
/// sit before the parenthesis) in `query`.
pub fn arg_position(query: &str, func: &str, arg: usize) -> Option<String> {
    let b = query.as_bytes();
    let lower = query.to_ascii_lowercase();
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let mut from = 0;
    while let Some(off) = lower[from..].find(&func.to_ascii_lowercase()) {
        let start = from + off;
        let mut i = start + func.len();
        from = start + 1;
        if (start > 0 && word(b[start - 1])) || (i < b.len() && word(b[i])) {
            continue;
        }
        let skip_ws = |mut i: usize| {
            while i < b.len() && b[i].is_ascii_whitespace() {
                i += 1;
            }
            i
        };
        i = skip_ws(i);
        // by (...) / without (...)
        for kw in ["by", "without"] {
            if lower[i..].starts_with(kw) && !b.get(i + kw.len()).is_some_and(|&c| word(c)) {
                i = skip_ws(i + kw.len());
                if b.get(i) == Some(&b'(') {
                    while i < b.len() && b[i] != b')' {
                        i += 1;
                    }
                    i = skip_ws(i + 1);
                }
            }
        }
        if b.get(i) != Some(&b'(') {
            continue;
        }
        i += 1;
        let (mut depth, mut k) = (0i32, 0usize);
        let mut arg_start = skip_ws(i);
        while i < b.len() {
            let c = b[i];
            match c {
                b'"' | b'\'' | b'`' => i = super::string_end(b, i),
                b'(' | b'[' | b'{' => depth += 1,
                b')' | b']' | b'}' => {
                    if depth == 0 {
                        break;
                    }
                    depth -= 1;
                }
                b',' if depth == 0 => {
                    if k == arg {
                        break;
                    }
                    k += 1;
                    arg_start = skip_ws(i + 1);
                }
                _ => {}
            }
            i += 1;
        }
        if k != arg {
            return None;
        }
        return Some(line_col(query, arg_start));
    }
    None
}

/// `line:col` of the first call of `func` in `query`.
pub fn call_position(query: &str, func: &str) -> Option<String> {
    let start = query.find(&format!("{func}("))?;
    Some(line_col(query, start))
}

/// `line:col` (1-based; columns in bytes) of byte `offset`, as Prometheus's
/// `PositionRange.StartPosInput` prints it.
fn line_col(query: &str, offset: usize) -> String {
    let line = 1 + query[..offset].matches('\n').count();
    let col = offset - query[..offset].rfind('\n').map_or(0, |p| p + 1) + 1;
    format!("{line}:{col}")
}

/// A label set as Prometheus's `Labels.String()` prints it.
pub fn prom_labels_string(l: &Labels) -> String {
    let parts: Vec<String> = l
        .iter()
        .map(|x| format!("{}={:?}", x.name, &*x.value))
        .collect();
    format!("{{{}}}", parts.join(", "))
}

/// Merges series with identical labels (they arise when `__name__` is
/// dropped); two values at the same step are Prometheus's
/// "vector cannot contain metrics with the same labelset" error.
pub fn merge_same_labels(series: Vec<Series>, n: usize) -> R<Vec<Series>> {
    if series.len() < 2 {
        return Ok(series);
    }
    let mut out: Vec<Series> = Vec::with_capacity(series.len());
    let mut index: HashMap<Labels, usize> = HashMap::with_capacity(series.len());
    for s in series {
        match index.get(&s.labels) {
            None => {
                index.insert(s.labels.clone(), out.len());
                out.push(s);
            }
            Some(&k) => {
                let o = &mut out[k];
                for (slot, v) in o.vals.iter_mut().zip(s.vals).take(n) {
                    if let Some(v) = v {
                        if slot.is_some() {
                            return Err(QueryError::execution(
                                "vector cannot contain metrics with the same labelset",
                            ));
                        }
                        *slot = Some(v);
                    }
                }
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------- binary

fn is_arith(op: u16) -> bool {
    matches!(op, T_ADD | T_SUB | T_MUL | T_DIV | T_MOD | T_POW | T_ATAN2)
}

fn is_comparison(op: u16) -> bool {
    matches!(op, T_EQLC | T_NEQ | T_LTE | T_LSS | T_GTE | T_GTR)
}

/// One element operation: the value and whether the element is kept
/// (comparisons keep the left value when true).
#[inline]
pub fn elem_binop(op: u16, l: f64, r: f64) -> (f64, bool) {
    match op {
        T_ADD => (l + r, true),
        T_SUB => (l - r, true),
        T_MUL => (l * r, true),
        T_DIV => (l / r, true),
        T_MOD => (l % r, true),
        T_POW => (l.powf(r), true),
        T_ATAN2 => (l.atan2(r), true),
        T_EQLC => (l, l == r),
        T_NEQ => (l, l != r),
        T_GTR => (l, l > r),
        T_LSS => (l, l < r),
        T_GTE => (l, l >= r),
        T_LTE => (l, l <= r),
        _ => (f64::NAN, false),
    }
}

fn eval_binary(ctx: &Ctx, b: &BinaryExpr, grid: &Grid) -> R<Val> {
    let op = b.op.id();
    let return_bool = b.modifier.as_ref().is_some_and(|m| m.return_bool);
    // Both sides read storage: evaluate them in parallel (when the process
    // may use more than one core).
    let (l, r) = if has_selector(&b.lhs) && has_selector(&b.rhs) && cores() > 1 {
        std::thread::scope(|s| {
            let h = std::thread::Builder::new()
                .stack_size(super::QUERY_STACK_BYTES)
                .spawn_scoped(s, || eval(ctx, &b.lhs, grid));
            let r = eval(ctx, &b.rhs, grid);
            let l = match h {
                Ok(h) => h
                    .join()
                    .unwrap_or_else(|_| Err(QueryError::execution("panic while evaluating"))),
                // No thread to be had: evaluate here.
                Err(_) => eval(ctx, &b.lhs, grid),
            };
            (l, r)
        })
    } else {
        (eval(ctx, &b.lhs, grid), eval(ctx, &b.rhs, grid))
    };
    let (l, r) = (l?, r?);
    match (l, r) {
        (Val::Scalar(a), Val::Scalar(c)) => Ok(Val::Scalar(
            a.iter()
                .zip(c.iter())
                .map(|(&x, &y)| {
                    let (v, keep) = elem_binop(op, x, y);
                    if is_comparison(op) {
                        if keep { 1.0 } else { 0.0 }
                    } else {
                        v
                    }
                })
                .collect(),
        )),
        (Val::Vector(v), Val::Scalar(s)) => Ok(Val::Vector(vector_scalar(
            v,
            &s,
            op,
            false,
            return_bool,
            grid.n,
        )?)),
        (Val::Scalar(s), Val::Vector(v)) => Ok(Val::Vector(vector_scalar(
            v,
            &s,
            op,
            true,
            return_bool,
            grid.n,
        )?)),
        (Val::Vector(l), Val::Vector(r)) => {
            let out = if matches!(op, T_LAND | T_LOR | T_LUNLESS) {
                set_op(b, op, l, r, grid.n)?
            } else {
                vector_vector(ctx, b, op, return_bool, l, r, grid.n)?
            };
            Ok(Val::Vector(merge_same_labels(out, grid.n)?))
        }
        _ => Err(QueryError::bad_data(
            "binary operators need scalar or instant-vector operands",
        )),
    }
}

/// Cores this process may run on (its CPU affinity), looked up once.
fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

fn has_selector(e: &Expr) -> bool {
    match e {
        Expr::VectorSelector(_) | Expr::MatrixSelector(_) => true,
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => false,
        Expr::Paren(p) => has_selector(&p.expr),
        Expr::Unary(u) => has_selector(&u.expr),
        Expr::Subquery(s) => has_selector(&s.expr),
        Expr::Binary(b) => has_selector(&b.lhs) || has_selector(&b.rhs),
        Expr::Aggregate(a) => has_selector(&a.expr),
        Expr::Call(c) => c.args.args.iter().any(|a| has_selector(a)),
    }
}

fn vector_scalar(
    v: Vec<Series>,
    s: &[f64],
    op: u16,
    swap: bool,
    return_bool: bool,
    n: usize,
) -> R<Vec<Series>> {
    let cmp = is_comparison(op);
    let drop = is_arith(op) || return_bool;
    let mut out = Vec::with_capacity(v.len());
    for mut series in v {
        let mut any = false;
        for (i, slot) in series.vals.iter_mut().enumerate().take(n) {
            if let Some(x) = *slot {
                let (lv, rv) = if swap { (s[i], x) } else { (x, s[i]) };
                let (mut val, keep) = elem_binop(op, lv, rv);
                if cmp && swap {
                    val = rv;
                }
                let (val, keep) = if return_bool {
                    (if keep { 1.0 } else { 0.0 }, true)
                } else {
                    (val, keep)
                };
                *slot = keep.then_some(val);
                any |= keep;
            }
        }
        if any {
            if drop {
                series.labels = drop_name(&series.labels);
            }
            out.push(series);
        }
    }
    merge_same_labels(out, n)
}

/// How two vectors are matched.
struct Matching<'a> {
    on: bool,
    labels: &'a [String],
}

impl Matching<'_> {
    fn from(b: &BinaryExpr) -> Matching<'_> {
        match b.modifier.as_ref().and_then(|m| m.matching.as_ref()) {
            Some(LabelModifier::Include(l)) => Matching {
                on: true,
                labels: &l.labels,
            },
            Some(LabelModifier::Exclude(l)) => Matching {
                on: false,
                labels: &l.labels,
            },
            None => Matching {
                on: false,
                labels: &[],
            },
        }
    }

    /// The labels two series are matched on.
    fn key(&self, l: &Labels) -> Labels {
        if self.on {
            l.without(|n| !self.labels.iter().any(|x| x == n))
        } else {
            l.without(|n| {
                n == METRIC_NAME
                    || n == "__type__"
                    || n == "__unit__"
                    || self.labels.iter().any(|x| x == n)
            })
        }
    }
}

fn set_op(b: &BinaryExpr, op: u16, l: Vec<Series>, r: Vec<Series>, n: usize) -> R<Vec<Series>> {
    let m = Matching::from(b);
    // Group ids shared by both sides.
    let mut map: HashMap<Labels, usize> = HashMap::new();
    let mut id_of = |s: &Series| {
        let k = m.key(&s.labels);
        let next = map.len();
        *map.entry(k).or_insert(next)
    };
    let lid: Vec<usize> = l.iter().map(&mut id_of).collect();
    let rid: Vec<usize> = r.iter().map(&mut id_of).collect();
    let groups = map.len();
    // present[g * n + i]: side has a sample in group g at step i.
    let presence = |side: &[Series], ids: &[usize]| {
        let mut p = vec![false; groups * n];
        for (s, &g) in side.iter().zip(ids) {
            for (i, v) in s.vals.iter().enumerate() {
                if v.is_some() {
                    p[g * n + i] = true;
                }
            }
        }
        p
    };
    let mut out = Vec::new();
    match op {
        T_LAND | T_LUNLESS => {
            let rp = presence(&r, &rid);
            let want = op == T_LAND;
            for (mut s, g) in l.into_iter().zip(lid) {
                let mut any = false;
                for i in 0..n {
                    if s.vals[i].is_some() && rp[g * n + i] != want {
                        s.vals[i] = None;
                    }
                    any |= s.vals[i].is_some();
                }
                if any {
                    out.push(s);
                }
            }
        }
        _ => {
            let lp = presence(&l, &lid);
            out.extend(l);
            for (mut s, g) in r.into_iter().zip(rid) {
                let mut any = false;
                for i in 0..n {
                    if s.vals[i].is_some() && lp[g * n + i] {
                        s.vals[i] = None;
                    }
                    any |= s.vals[i].is_some();
                }
                if any {
                    out.push(s);
                }
            }
        }
    }
    Ok(out)
}

fn vector_vector(
    ctx: &Ctx,
    b: &BinaryExpr,
    op: u16,
    return_bool: bool,
    lhs: Vec<Series>,
    rhs: Vec<Series>,
    n: usize,
) -> R<Vec<Series>> {
    let m = Matching::from(b);
    let modifier = b.modifier.as_ref();
    let card = modifier
        .map(|m| m.card.clone())
        .unwrap_or(VectorMatchCardinality::OneToOne);
    let fill_l = modifier.and_then(|m| m.fill_values.lhs);
    let fill_r = modifier.and_then(|m| m.fill_values.rhs);
    let (include, one_to_many): (&[String], bool) = match &card {
        VectorMatchCardinality::ManyToOne(l) => (&l.labels, false),
        VectorMatchCardinality::OneToMany(l) => (&l.labels, true),
        _ => (&[], false),
    };
    let one_to_one = matches!(card, VectorMatchCardinality::OneToOne);
    // As in Prometheus: `many` is iterated and `one` looked up; the sides
    // are swapped for group_right (and swapped back for the operation).
    let (many, one) = if one_to_many {
        (&rhs, &lhs)
    } else {
        (&lhs, &rhs)
    };
    // Match signatures shared by both sides.
    let mut sig_index: HashMap<Labels, usize> = HashMap::new();
    let mut sig_keys: Vec<Labels> = Vec::new();
    let mut sig_of = |s: &Series| {
        let k = m.key(&s.labels);
        match sig_index.get(&k) {
            Some(&i) => i,
            None => {
                sig_keys.push(k.clone());
                sig_index.insert(k, sig_keys.len() - 1);
                sig_keys.len() - 1
            }
        }
    };
    let many_sig: Vec<usize> = many.iter().map(&mut sig_of).collect();
    let one_sig: Vec<usize> = one.iter().map(&mut sig_of).collect();
    let nsig = sig_keys.len();
    let mut one_groups: Vec<Vec<usize>> = vec![Vec::new(); nsig];
    for (j, &g) in one_sig.iter().enumerate() {
        one_groups[g].push(j);
    }
    let drop = is_arith(op) || return_bool;
    let result_labels = |ml: &Labels, ol: &Labels| -> Labels {
        let mut l = if drop { drop_name(ml) } else { ml.clone() };
        if one_to_one {
            l = if m.on {
                l.without(|n| !m.labels.iter().any(|x| x == n))
            } else {
                l.without(|n| m.labels.iter().any(|x| x == n))
            };
        }
        for name in include {
            l = l.with(name, ol.get(name).unwrap_or(""));
        }
        l
    };
    let mut out: Vec<Series> = Vec::new();
    let mut out_seen: Vec<usize> = Vec::new();
    let mut out_index: HashMap<Labels, usize> = HashMap::new();
    // (many idx or usize::MAX, one idx or usize::MAX) -> output series.
    let mut pair_out: HashMap<(usize, usize), usize> = HashMap::new();
    let mut sig_matched: Vec<usize> = vec![usize::MAX; nsig];
    for i in 0..n {
        if i % 256 == 0 {
            ctx.check_deadline()?;
        }
        let many_any = many.iter().any(|s| s.vals[i].is_some());
        let one_any = one.iter().any(|s| s.vals[i].is_some());
        if (!many_any && !one_any)
            || ((!many_any || !one_any) && fill_l.is_none() && fill_r.is_none())
        {
            continue;
        }
        // The one side must be unique per match group at this step.
        let mut present_one: Vec<Option<usize>> = vec![None; nsig];
        for (g, members) in one_groups.iter().enumerate() {
            for &j in members {
                if one[j].vals[i].is_none() {
                    continue;
                }
                if let Some(prev) = present_one[g] {
                    let side = if one_to_many { "left" } else { "right" };
                    let mut d = [
                        prom_labels_string(&one[prev].labels),
                        prom_labels_string(&one[j].labels),
                    ];
                    d.sort();
                    return Err(QueryError::execution(format!(
                        "found duplicate series for the match group {} on the {side} hand-side of the operation: [{}, {}];many-to-many matching not allowed: matching labels must be unique on one side",
                        prom_labels_string(&sig_keys[g]),
                        d[0],
                        d[1]
                    )));
                }
                present_one[g] = Some(j);
            }
        }
        // One operation; `ml`/`ol` are the labels of the many/one sample.
        let mut apply = |key: (usize, usize),
                         ml: &Labels,
                         mv: f64,
                         ol: &Labels,
                         ov: f64,
                         sig: usize,
                         sig_matched: &mut Vec<usize>|
         -> R<()> {
            let (fl, fr) = if one_to_many { (ov, mv) } else { (mv, ov) };
            let (mut val, keep) = elem_binop(op, fl, fr);
            if return_bool {
                val = if keep { 1.0 } else { 0.0 };
            }
            let o = match pair_out.get(&key) {
                Some(&o) => o,
                None => {
                    let l = result_labels(ml, ol);
                    let o = match out_index.get(&l) {
                        Some(&o) => o,
                        None => {
                            out.push(Series {
                                labels: l.clone(),
                                vals: vec![None; n],
                            });
                            out_seen.push(usize::MAX);
                            out_index.insert(l, out.len() - 1);
                            out.len() - 1
                        }
                    };
                    pair_out.insert(key, o);
                    o
                }
            };
            if one_to_one {
                if sig_matched[sig] == i {
                    return Err(QueryError::execution(
                        "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)",
                    ));
                }
            } else if out_seen[o] == i {
                return Err(QueryError::execution(
                    "multiple matches for labels: grouping labels must ensure unique matches",
                ));
            }
            sig_matched[sig] = i;
            out_seen[o] = i;
            if keep || return_bool {
                out[o].vals[i] = Some(val);
            }
            Ok(())
        };
        for (k, s) in many.iter().enumerate() {
            let Some(mv) = s.vals[i] else { continue };
            let g = many_sig[k];
            match present_one[g] {
                Some(j) => {
                    let ov = one[j].vals[i].unwrap_or(f64::NAN);
                    apply(
                        (k, j),
                        &s.labels,
                        mv,
                        &one[j].labels,
                        ov,
                        g,
                        &mut sig_matched,
                    )?;
                }
                None => {
                    if let Some(f) = fill_r {
                        apply(
                            (k, usize::MAX),
                            &s.labels,
                            mv,
                            &sig_keys[g],
                            f,
                            g,
                            &mut sig_matched,
                        )?;
                    }
                }
            }
        }
        if let Some(f) = fill_l {
            for (j, s) in one.iter().enumerate() {
                let Some(ov) = s.vals[i] else { continue };
                let g = one_sig[j];
                if sig_matched[g] == i {
                    continue;
                }
                apply(
                    (usize::MAX, j),
                    &sig_keys[g],
                    f,
                    &s.labels,
                    ov,
                    g,
                    &mut sig_matched,
                )?;
            }
        }
    }
    out.retain(|s| s.vals.iter().any(|v| v.is_some()));
    Ok(out)
}

// ----------------------------------------------------------- aggregation

/// Neumaier-compensated summation step (Prometheus's `kahanSumInc`).
#[inline]
pub fn kahan_inc(inc: f64, sum: f64, c: f64) -> (f64, f64) {
    let t = sum + inc;
    let c = if t.is_infinite() {
        0.0
    } else if sum.abs() >= inc.abs() {
        c + ((sum - t) + inc)
    } else {
        c + ((inc - t) + sum)
    };
    (t, c)
}

/// Prometheus's `quantile`: NaN sorts first, linear interpolation.
pub fn quantile(q: f64, vals: &mut [f64]) -> f64 {
    if vals.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    vals.sort_by(|a, b| match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        _ => a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal),
    });
    let n = vals.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(n - 1.0);
    let weight = rank - rank.floor();
    vals[lower as usize] * (1.0 - weight) + vals[upper as usize] * weight
}

/// The grouping labels of one series for `by`/`without`.
fn group_labels(l: &Labels, modifier: &Option<LabelModifier>) -> Labels {
    match modifier {
        None => Labels::default(),
        Some(LabelModifier::Include(ls)) => l.without(|n| !ls.labels.iter().any(|x| x == n)),
        Some(LabelModifier::Exclude(ls)) => {
            l.without(|n| n == METRIC_NAME || ls.labels.iter().any(|x| x == n))
        }
    }
}

/// Formats a float like Go's `strconv.FormatFloat(f, 'f', -1, 64)`.
pub fn format_float(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f == f64::INFINITY {
        "+Inf".into()
    } else if f == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{f}")
    }
}

#[derive(Clone, Copy, Default)]
struct Acc {
    count: f64,
    value: f64,
    c: f64,
    mean: f64,
    incremental: bool,
}

fn eval_aggregate(ctx: &Ctx, a: &AggregateExpr, grid: &Grid) -> R<Val> {
    let op = a.op.id();
    let n = grid.n;
    let input = eval_vector(ctx, &a.expr, grid)?;
    // Parameters.
    let param: Option<Vec<f64>> = match op {
        T_TOPK | T_BOTTOMK | T_QUANTILE | T_LIMITK | T_LIMIT_RATIO => {
            let p = a
                .param
                .as_ref()
                .ok_or_else(|| QueryError::bad_data("aggregation needs a parameter"))?;
            Some(eval_scalar(ctx, p, grid)?)
        }
        _ => None,
    };
    // Groups in order of first appearance.
    let mut gindex: HashMap<Labels, usize> = HashMap::new();
    let mut gkeys: Vec<Labels> = Vec::new();
    let mut members: Vec<Vec<usize>> = Vec::new();
    for (k, s) in input.iter().enumerate() {
        let key = group_labels(&s.labels, &a.modifier);
        let g = *gindex.entry(key.clone()).or_insert_with(|| {
            gkeys.push(key);
            members.push(Vec::new());
            members.len() - 1
        });
        members[g].push(k);
    }
    match op {
        T_SUM | T_AVG | T_MIN | T_MAX | T_COUNT | T_GROUP | T_STDDEV | T_STDVAR => {
            let mut out = Vec::with_capacity(gkeys.len());
            for (g, key) in gkeys.into_iter().enumerate() {
                let mut acc = vec![Acc::default(); n];
                for &k in &members[g] {
                    for (i, v) in input[k].vals.iter().enumerate() {
                        let Some(f) = *v else { continue };
                        let a = &mut acc[i];
                        if a.count == 0.0 {
                            a.count = 1.0;
                            a.value = f;
                            a.mean = f;
                            a.c = 0.0;
                            a.incremental = false;
                            if op == T_STDDEV || op == T_STDVAR {
                                a.value = if f.is_finite() { 0.0 } else { f64::NAN };
                            }
                            continue;
                        }
                        a.count += 1.0;
                        match op {
                            T_SUM => (a.value, a.c) = kahan_inc(f, a.value, a.c),
                            T_AVG => {
                                if !a.incremental {
                                    let (nv, nc) = kahan_inc(f, a.value, a.c);
                                    if !nv.is_infinite() {
                                        a.value = nv;
                                        a.c = nc;
                                        continue;
                                    }
                                    a.incremental = true;
                                    a.mean = a.value / (a.count - 1.0);
                                    a.c /= a.count - 1.0;
                                }
                                let q = (a.count - 1.0) / a.count;
                                (a.mean, a.c) = kahan_inc(f / a.count, q * a.mean, q * a.c);
                            }
                            T_MIN if (a.value > f || a.value.is_nan()) => {
                                a.value = f;
                            }
                            T_MAX if (a.value < f || a.value.is_nan()) => {
                                a.value = f;
                            }
                            T_STDDEV | T_STDVAR => {
                                let delta = f - a.mean;
                                a.mean += delta / a.count;
                                a.value += delta * (f - a.mean);
                            }
                            _ => {}
                        }
                    }
                }
                let vals = acc
                    .iter()
                    .map(|a| {
                        (a.count > 0.0).then(|| match op {
                            T_SUM => a.value + a.c,
                            T_AVG => {
                                if a.incremental {
                                    a.mean + a.c
                                } else {
                                    a.value / a.count + a.c / a.count
                                }
                            }
                            T_COUNT => a.count,
                            T_GROUP => 1.0,
                            T_STDVAR => a.value / a.count,
                            T_STDDEV => (a.value / a.count).sqrt(),
                            _ => a.value,
                        })
                    })
                    .collect();
                out.push(Series { labels: key, vals });
            }
            Ok(Val::Vector(out))
        }
        T_QUANTILE => {
            let q = param.unwrap_or_default();
            let mut out = Vec::with_capacity(gkeys.len());
            let mut buf = Vec::new();
            for (g, key) in gkeys.into_iter().enumerate() {
                let mut vals = vec![None; n];
                for (i, slot) in vals.iter_mut().enumerate() {
                    buf.clear();
                    buf.extend(members[g].iter().filter_map(|&k| input[k].vals[i]));
                    if !buf.is_empty() {
                        *slot = Some(quantile(q[i], &mut buf));
                    }
                }
                out.push(Series { labels: key, vals });
            }
            if let Some(bad) = bad_quantile(&q) {
                ctx.warn(ctx.at_arg(
                    format!(
                        "PromQL warning: quantile value should be between 0 and 1, got {}",
                        format_float(bad)
                    ),
                    "quantile",
                    0,
                ));
            }
            Ok(Val::Vector(out))
        }
        T_COUNT_VALUES => {
            let label = match a.param.as_deref() {
                Some(Expr::StringLiteral(s)) => s.val.clone(),
                Some(e) => match eval(ctx, e, grid)? {
                    Val::Str(s) => s,
                    _ => {
                        return Err(QueryError::bad_data(
                            "count_values needs a string parameter",
                        ));
                    }
                },
                None => return Err(QueryError::bad_data("count_values needs a label name")),
            };
            if !valid_label_name(&label) {
                return Err(QueryError::execution(format!(
                    "invalid label name {label:?}"
                )));
            }
            let mut out: Vec<Series> = Vec::new();
            let mut index: HashMap<Labels, usize> = HashMap::new();
            for (g, key) in gkeys.iter().enumerate() {
                for i in 0..n {
                    let mut counts: Vec<(String, f64)> = Vec::new();
                    for &k in &members[g] {
                        if let Some(v) = input[k].vals[i] {
                            let s = format_float(v);
                            match counts.iter_mut().find(|c| c.0 == s) {
                                Some(c) => c.1 += 1.0,
                                None => counts.push((s, 1.0)),
                            }
                        }
                    }
                    for (s, c) in counts {
                        let l = key.with(&label, &s);
                        let o = *index.entry(l.clone()).or_insert_with(|| {
                            out.push(Series {
                                labels: l,
                                vals: vec![None; n],
                            });
                            out.len() - 1
                        });
                        out[o].vals[i] = Some(c);
                    }
                }
            }
            Ok(Val::Vector(out))
        }
        T_TOPK | T_BOTTOMK | T_LIMITK | T_LIMIT_RATIO => {
            let p = param.unwrap_or_default();
            let mut keep: Vec<Vec<Option<f64>>> = vec![vec![None; n]; input.len()];
            for i in 0..n {
                let pi = p[i];
                if op != T_LIMIT_RATIO {
                    if pi.is_nan() {
                        return Err(QueryError::execution("Parameter value is NaN"));
                    }
                    if !(-9.223372036854776e18..9.223372036854776e18).contains(&pi) {
                        return Err(QueryError::execution(format!(
                            "Scalar value {pi} overflows int64"
                        )));
                    }
                } else if pi.is_nan() {
                    return Err(QueryError::execution("Ratio value is NaN"));
                }
                for m in &members {
                    let present: Vec<usize> = m
                        .iter()
                        .copied()
                        .filter(|&k| input[k].vals[i].is_some())
                        .collect();
                    let chosen: Vec<usize> = match op {
                        T_LIMITK => {
                            let k = pi as i64;
                            if k < 1 {
                                Vec::new()
                            } else {
                                present.into_iter().take(k as usize).collect()
                            }
                        }
                        T_LIMIT_RATIO => {
                            let r = pi.clamp(-1.0, 1.0);
                            present
                                .into_iter()
                                .filter(|&k| {
                                    let off = ratio_offset(&input[k].labels);
                                    if r >= 0.0 { off < r } else { off >= 1.0 + r }
                                })
                                .collect()
                        }
                        _ => {
                            let k = pi as i64;
                            if k < 1 {
                                Vec::new()
                            } else {
                                select_k(&input, present, i, k as usize, op == T_TOPK)
                            }
                        }
                    };
                    for k in chosen {
                        keep[k][i] = input[k].vals[i];
                    }
                }
            }
            if op == T_LIMIT_RATIO {
                let max = p.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let min = p.iter().copied().fold(f64::INFINITY, f64::min);
                let bad = if max > 1.0 {
                    Some((max, 1.0))
                } else if min < -1.0 {
                    Some((min, -1.0))
                } else {
                    None
                };
                if let Some((v, to)) = bad {
                    ctx.warn(ctx.at_arg(
                        format!(
                            "PromQL warning: ratio value should be between -1 and 1, got {}, capping to {}",
                            format_float(v),
                            format_float(to)
                        ),
                        "limit_ratio",
                        0,
                    ));
                }
            }
            let mut out = Vec::new();
            // Instant queries keep Prometheus's order: groups as they came,
            // within a group by value (topk: descending, bottomk: ascending).
            for m in &members {
                let mut idx: Vec<usize> = m
                    .iter()
                    .copied()
                    .filter(|&k| keep[k].iter().any(|v| v.is_some()))
                    .collect();
                if n == 1 && (op == T_TOPK || op == T_BOTTOMK) {
                    idx.sort_by(|&x, &y| {
                        let (a, b) = (
                            keep[x][0].unwrap_or(f64::NAN),
                            keep[y][0].unwrap_or(f64::NAN),
                        );
                        let o = cmp_nan_low(a, b);
                        if op == T_TOPK { o.reverse() } else { o }
                    });
                    if op == T_BOTTOMK {
                        // NaN last for bottomk too.
                        idx.sort_by_key(|&x| keep[x][0].is_some_and(|v| v.is_nan()));
                    }
                }
                for k in idx {
                    out.push(Series {
                        labels: input[k].labels.clone(),
                        vals: std::mem::take(&mut keep[k]),
                    });
                }
            }
            Ok(Val::Vector(out))
        }
        _ => Err(QueryError::bad_data(format!(
            "aggregation {} is not supported",
            a.op
        ))),
    }
}

/// The quantile Prometheus warns about: NaN, else the largest above 1,
/// else the smallest below 0.
pub fn bad_quantile(q: &[f64]) -> Option<f64> {
    if q.iter().any(|x| x.is_nan()) {
        return Some(f64::NAN);
    }
    let max = q.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let min = q.iter().copied().fold(f64::INFINITY, f64::min);
    if max > 1.0 {
        Some(max)
    } else if min < 0.0 {
        Some(min)
    } else {
        None
    }
}

fn cmp_nan_low(a: f64, b: f64) -> std::cmp::Ordering {
    use std::cmp::Ordering::*;
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Equal,
        (true, false) => Less,
        (false, true) => Greater,
        _ => a.partial_cmp(&b).unwrap_or(Equal),
    }
}

/// topk/bottomk of one group at one step; NaN ranks below every number
/// for both (Prometheus replaces NaN first).
fn select_k(
    input: &[Series],
    mut present: Vec<usize>,
    i: usize,
    k: usize,
    top: bool,
) -> Vec<usize> {
    if present.len() <= k {
        return present;
    }
    present.sort_by(|&x, &y| {
        let (a, b) = (
            input[x].vals[i].unwrap_or(f64::NAN),
            input[y].vals[i].unwrap_or(f64::NAN),
        );
        match (a.is_nan(), b.is_nan()) {
            (true, true) => std::cmp::Ordering::Equal,
            (true, false) => std::cmp::Ordering::Greater,
            (false, true) => std::cmp::Ordering::Less,
            _ => {
                let o = a.partial_cmp(&b).unwrap_or(std::cmp::Ordering::Equal);
                if top { o.reverse() } else { o }
            }
        }
    });
    present.truncate(k);
    present
}

/// Prometheus's `limit_ratio` sampling offset: the label set's xxhash64
/// (as `labels.Hash`) scaled to [0, 1].
fn ratio_offset(l: &Labels) -> f64 {
    let mut b = Vec::with_capacity(256);
    for lb in l.iter() {
        b.extend_from_slice(lb.name.as_bytes());
        b.push(0xff);
        b.extend_from_slice(lb.value.as_bytes());
        b.push(0xff);
    }
    xxhash_rust::xxh64::xxh64(&b, 0) as f64 / u64::MAX as f64
}

pub fn valid_label_name(s: &str) -> bool {
    !s.is_empty() && !s.chars().any(|c| c.is_control())
}
