//! Runs Prometheus's PromQL test scripts (`promql/promqltest/testdata/*.test`
//! in the Prometheus repository) against our [`Engine`].
//!
//! The scripts are written in a small language, described in
//! `../shared/conformance/README.md` and defined by Prometheus's
//! `promql/promqltest/test.go`. This module has our own parser of that
//! language ([`parse_script`]) and a runner ([`run_file`], [`run_dir`],
//! [`run_script`]) that counts every `eval` command as passed, failed or
//! skipped, with a short reason for every failure and skip.
//!
//! # What the runner reproduces from Prometheus's `test.go`
//!
//! - Samples of a `load <interval>` block sit at `i * interval` ms from t=0;
//!   loads add to what is already there, `clear` drops everything.
//! - Values compare with a relative tolerance of 1e-6 (`util/almost.Equal`):
//!   NaN equals NaN, a staleness marker only equals a staleness marker.
//! - Series compare as sets, keyed by their full label set (including
//!   `__name__`), unless the eval is ordered (then positions must match too).
//!   The sample timestamps of an instant vector are not compared (Prometheus
//!   does not either); the timestamps of range (matrix) points are.
//! - Annotations: `expect warn`/`expect info` (optionally with `msg:` or
//!   `regex:`) require at least one such annotation and every annotation of
//!   that kind must match one of the expectations; `expect no_warn` /
//!   `expect no_info` forbid them; without any expectation, annotations are
//!   not checked. Messages compare with the whole string of
//!   `QueryResult::warnings` / `QueryResult::infos` (Prometheus's annotation
//!   text, e.g. `PromQL warning: ... (1:6)`).
//! - `expect fail` passes when the query errors (with `msg:` the error text
//!   must be equal, with `regex:` the regex must match somewhere in it).
//! - A range query's matrix must be sorted by labels.
//! - Like Prometheus's `runInstantQuery`, every instant eval is checked three
//!   ways (each can be switched off in [`RunOptions`]):
//!   1. the instant query at the eval time;
//!   2. *range mode*: the same expression as a range query from `t-1m` to
//!      `t+1m` step `1m`, whose point at `t` must give the same result (not
//!      for `expect string`, `expect range vector` or failing evals, nor for
//!      expressions containing `start()`, `end()`, `range()` or `step()`;
//!      for ordered evals the range query must only succeed);
//!   3. *@ variants*: the expression with `@ <eval time>` put on every
//!      selector and subquery that has no numeric `@` yet (as Prometheus
//!      does, outermost only: not inside subqueries), evaluated at other
//!      times (`-10t, 0, t/5, t, 10t`, or `-1s, 0, 1s` when t=0), again in
//!      both modes. Not done when the expression calls a function whose
//!      result depends on the evaluation time (`time()`, `timestamp()`,
//!      `hour()`, ... — Prometheus's `AtModifierUnsafeFunctions`). We print
//!      the rewritten expression with `promql_parser`'s `Display` and only
//!      use it when it parses back to the same tree; otherwise the @ variants
//!      of that eval are left out (counted in [`FileReport::at_variants_unchecked`]).
//!
//!   An eval passes only if every check passes; the failure reason says which
//!   check failed (`range mode: ...`, `@ variant ...`).
//!
//! # What is skipped (counted, with a reason)
//!
//! - Native histograms: a series whose points use `{{...}}`, and under
//!   `load_with_nhcb` the native histograms with custom buckets Prometheus
//!   derives from classic `_bucket`/`_count`/`_sum` series, cannot be loaded
//!   into our float-only store. Such series are remembered ("tainted") until
//!   the next `clear`; an eval whose expression has a selector that could
//!   select a tainted series, or whose expected result contains `{{...}}`,
//!   is skipped as `native histogram`. Evals that only touch float series of
//!   the same block still run.
//! - Start timestamps (`metric@st ...` lines, an experimental Prometheus
//!   storage/engine feature): series with start timestamps are tainted the
//!   same way and evals selecting them are skipped as `experimental: start
//!   timestamps`.
//! - Experimental syntax that `promql_parser` rejects: when the expression
//!   does not parse and uses a construct Prometheus only accepts behind a
//!   feature flag (`EnableExperimentalFunctions`, `ExperimentalDurationExpr`,
//!   `EnableExtendedRangeSelectors`, `EnableBinopFillModifiers` — all on in
//!   Prometheus's test engine), the eval is skipped as `experimental: ...`
//!   (see [`experimental_constructs`] for the list). An expression that does
//!   not parse for any other reason is a failure (`parser: ...`), unless the
//!   eval expects an error (then the engine's parse error is checked like any
//!   other error). Experimental constructs that *do* parse are run; when
//!   the engine answers such a query with an error (it may decline
//!   experimental features), or with another error than the expected one,
//!   the eval is skipped as `experimental: ... (the
//!   engine refuses it)`; any other failure of one is a failure that says
//!   `[uses experimental: ...]` in its reason.
//! - The trim operators `</` and `>/` (they only apply to native histograms
//!   and `promql_parser` rejects them) are skipped as `native histogram`.
//!
//! # What the expectations assume of the engine
//!
//! Prometheus's test engine runs with a 5m lookback (our default), a default
//! subquery step of 1m (`foo[5m:]` in an instant query), negative offsets and
//! `@` enabled, delayed `__name__` removal, and every experimental parser
//! flag on. [`RunOptions::default`] uses [`EngineOptions::default`].
//!
//! # Robustness
//!
//! Evals run one after the other. Each query runs on its own thread: a panic
//! becomes a failure (`panic: <message> at <file:line>`, kept off stderr),
//! and a query still running after [`RunOptions::query_timeout`] is
//! abandoned and fails with `timeout: ...`.

use super::{Engine, EngineOptions, MemSource, QueryError, QueryResult, Value};
use meshlens_storage::samples::{
    Labels, MatchOp as StoreMatchOp, Matcher as StoreMatcher, is_stale_nan, stale_nan,
};
use promql_parser::parser::{AtModifier, Expr};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Once, mpsc};
use std::time::{Duration, SystemTime};

// ---------------------------------------------------------------------------
// Parsed form of a script
// ---------------------------------------------------------------------------

/// One position of a value sequence (`load` lines and expected results).
#[derive(Clone, Copy, Debug)]
pub enum SeqValue {
    /// `_`: no sample at this position.
    Omitted,
    /// A float; `stale` is the staleness-marker NaN.
    Value(f64),
}

/// The points of one series line.
#[derive(Clone, Debug)]
pub enum SeriesPoints {
    Floats(Vec<SeqValue>),
    /// At least one point is a native histogram (`{{...}}`); we keep no points.
    NativeHistogram,
}

/// A series line: `metric{labels} <points>`.
#[derive(Clone, Debug)]
pub struct SeriesLine {
    /// 1-based line number in the file.
    pub line: usize,
    pub labels: Labels,
    pub points: SeriesPoints,
}

/// `load <interval>` (or `load_with_nhcb <interval>`) and its series.
#[derive(Clone, Debug)]
pub struct LoadCmd {
    pub line: usize,
    pub interval_ms: i64,
    pub with_nhcb: bool,
    pub series: Vec<SeriesLine>,
    /// Series given start timestamps by `metric@st ...` lines (line numbers).
    pub start_timestamps: Vec<(usize, Labels)>,
    /// A bare `@st ...` line gives start timestamps to every series of the block.
    pub default_start_timestamps: bool,
}

/// Instant or range evaluation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EvalKind {
    Instant {
        at_ms: i64,
    },
    Range {
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
    },
}

/// How an expected error message or annotation is matched.
#[derive(Clone, Debug)]
pub enum TextMatch {
    /// No `msg:`/`regex:` part: anything matches.
    Any,
    /// `msg: text`: the whole message must be equal.
    Exact(String),
    /// `regex: re`: the regex must match somewhere in the message.
    Regex(Pattern),
}

impl TextMatch {
    pub fn matches(&self, s: &str) -> bool {
        match self {
            TextMatch::Any => true,
            TextMatch::Exact(m) => m == s,
            TextMatch::Regex(p) => p.is_match(s),
        }
    }

    fn describe(&self) -> String {
        match self {
            TextMatch::Any => "anything".to_string(),
            TextMatch::Exact(m) => format!("{m:?}"),
            TextMatch::Regex(p) => format!("/{}/", p.source),
        }
    }
}

/// A regex searched anywhere in a string (Go's `regexp.MatchString`).
#[derive(Clone, Debug)]
pub struct Pattern {
    pub source: String,
    matcher: StoreMatcher,
}

impl Pattern {
    pub fn new(source: &str) -> Result<Pattern, String> {
        // The store's matchers are anchored (`^(?s:...)$`, like PromQL's);
        // `.*?(?:re).*` turns that into a search anywhere in the string.
        let matcher = StoreMatcher::new(StoreMatchOp::Regex, "m", format!(".*?(?:{source}).*"))
            .map_err(|e| format!("invalid regex {source:?}: {e}"))?;
        Ok(Pattern {
            source: source.to_string(),
            matcher,
        })
    }

    pub fn is_match(&self, s: &str) -> bool {
        self.matcher.matches(s)
    }
}

/// Expectations about annotations of one kind (warnings or infos).
#[derive(Clone, Debug, Default)]
pub struct AnnotationExpect {
    /// `eval_warn` / `eval_info`: at least one annotation, nothing more checked.
    pub required: bool,
    /// `expect warn ...` / `expect info ...` lines.
    pub expected: Vec<TextMatch>,
    /// `expect no_warn` / `expect no_info`.
    pub forbidden: bool,
}

/// An expected series of the result.
#[derive(Clone, Debug)]
pub struct ExpectedSeries {
    pub line: usize,
    pub labels: Labels,
    pub values: Vec<SeqValue>,
    /// 1-based position among the expected series (for ordered evals).
    pub pos: usize,
}

/// `eval ...` and the lines after it.
#[derive(Clone, Debug)]
pub struct EvalCmd {
    /// 1-based line number of the `eval` line.
    pub line: usize,
    pub expr: String,
    pub kind: EvalKind,
    /// `eval_fail` or `expect fail ...`; the text match applies to the error.
    pub fail: Option<TextMatch>,
    /// Old-style `expected_fail_message` / `expected_fail_regexp` lines.
    pub fail_extra: Vec<TextMatch>,
    pub ordered: bool,
    pub warn: AnnotationExpect,
    pub info: AnnotationExpect,
    pub expected: Vec<ExpectedSeries>,
    /// A bare number line: the result must be this scalar.
    pub expected_scalar: Option<f64>,
    /// `expect string "..."`.
    pub expected_string: Option<String>,
    /// `expect range vector from A to B step S` (instant evals returning a matrix).
    pub range_vector: Option<(i64, i64, i64)>,
    /// Some expected value is a native histogram.
    pub expects_histogram: bool,
    /// Lines of this block we could not parse; the eval then fails with them.
    pub problems: Vec<String>,
}

impl EvalCmd {
    fn new(line: usize, expr: String, kind: EvalKind) -> EvalCmd {
        EvalCmd {
            line,
            expr,
            kind,
            fail: None,
            fail_extra: Vec::new(),
            ordered: false,
            warn: AnnotationExpect::default(),
            info: AnnotationExpect::default(),
            expected: Vec::new(),
            expected_scalar: None,
            expected_string: None,
            range_vector: None,
            expects_histogram: false,
            problems: Vec::new(),
        }
    }
}

/// One command of a script.
#[derive(Clone, Debug)]
pub enum Command {
    Load(LoadCmd),
    Clear { line: usize },
    Eval(Box<EvalCmd>),
}

/// A line of the script that is not part of any command we understood.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScriptError {
    pub line: usize,
    pub msg: String,
}

// ---------------------------------------------------------------------------
// Script parser
// ---------------------------------------------------------------------------

/// Parses a whole script. Like `test.go`, lines are trimmed, `#` lines are
/// blank, and a block (`load` or `eval` with its following lines) ends at
/// the first blank line.
pub fn parse_script(text: &str) -> (Vec<Command>, Vec<ScriptError>) {
    let lines: Vec<String> = text
        .split('\n')
        .map(|l| {
            let t = l.trim();
            if t.starts_with('#') {
                String::new()
            } else {
                t.to_string()
            }
        })
        .collect();
    let mut cmds = Vec::new();
    let mut errors = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let l = &lines[i];
        if l.is_empty() {
            i += 1;
            continue;
        }
        let first = l
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        // The block's body: following lines up to the next blank one.
        let mut end = i + 1;
        while end < lines.len() && !lines[end].is_empty() {
            end += 1;
        }
        let body: Vec<(usize, &str)> = (i + 1..end).map(|j| (j + 1, lines[j].as_str())).collect();
        if first == "clear" {
            cmds.push(Command::Clear { line: i + 1 });
            i += 1;
            continue;
        } else if first.starts_with("load") {
            match parse_load(i + 1, l, &body) {
                Ok(c) => cmds.push(Command::Load(c)),
                Err(e) => errors.push(e),
            }
        } else if first.starts_with("eval") {
            match parse_eval(i + 1, l, &body) {
                Ok(c) => cmds.push(Command::Eval(Box::new(c))),
                Err(e) => errors.push(e),
            }
        } else {
            errors.push(ScriptError {
                line: i + 1,
                msg: format!("invalid command {l:?}"),
            });
            i += 1;
            continue;
        }
        i = end;
    }
    (cmds, errors)
}

fn parse_load(line: usize, header: &str, body: &[(usize, &str)]) -> Result<LoadCmd, ScriptError> {
    let err = |msg: String| ScriptError { line, msg };
    let (word, rest) = split_word(header);
    let with_nhcb = match word {
        "load" => false,
        "load_with_nhcb" => true,
        _ => return Err(err(format!("invalid load command {header:?}"))),
    };
    let interval_ms = parse_duration_ms(rest.trim())
        .map_err(|e| err(format!("invalid step definition {:?}: {e}", rest.trim())))?;
    let mut cmd = LoadCmd {
        line,
        interval_ms,
        with_nhcb,
        series: Vec::new(),
        start_timestamps: Vec::new(),
        default_start_timestamps: false,
    };
    for &(ln, text) in body {
        // `metric{labels}@st <offsets>` or a bare `@st <offsets>`: start
        // timestamps. We only remember which series have them.
        let (head, _) = split_word(text);
        if let Some(metric) = head.strip_suffix("@st") {
            if metric.is_empty() {
                cmd.default_start_timestamps = true;
            } else {
                let (labels, rest) = parse_metric(metric).map_err(|e| ScriptError {
                    line: ln,
                    msg: format!("invalid @st line: {e}"),
                })?;
                if !rest.trim().is_empty() {
                    return Err(ScriptError {
                        line: ln,
                        msg: "invalid @st line".into(),
                    });
                }
                cmd.start_timestamps.push((ln, labels));
            }
            continue;
        }
        let (labels, points) =
            parse_series_line(text).map_err(|msg| ScriptError { line: ln, msg })?;
        cmd.series.push(SeriesLine {
            line: ln,
            labels,
            points,
        });
    }
    Ok(cmd)
}

fn parse_eval(line: usize, header: &str, body: &[(usize, &str)]) -> Result<EvalCmd, ScriptError> {
    let err = |msg: String| ScriptError { line, msg };
    let (word, rest) = split_word(header);
    let modifier = match word {
        "eval" => "",
        "eval_fail" => "fail",
        "eval_warn" => "warn",
        "eval_info" => "info",
        "eval_ordered" => "ordered",
        _ => return Err(err(format!("invalid evaluation command {header:?}"))),
    };
    let (mode, rest) = split_word(rest);
    let dur = |s: &str, what: &str| {
        parse_duration_ms(s).map_err(|e| err(format!("invalid {what} {s:?}: {e}")))
    };
    let (kind, expr) = match mode {
        "instant" => {
            let (at, rest) = split_word(rest);
            if at != "at" {
                return Err(err("instant eval needs `at <time>`".into()));
            }
            let (t, expr) = split_word(rest);
            (
                EvalKind::Instant {
                    at_ms: dur(t, "timestamp")?,
                },
                expr,
            )
        }
        // `eval_ordered range` is not a thing (range results are always sorted).
        "range" if modifier != "ordered" => {
            let (from, rest) = split_word(rest);
            let (a, rest) = split_word(rest);
            let (to, rest) = split_word(rest);
            let (b, rest) = split_word(rest);
            let (step, rest) = split_word(rest);
            let (s, expr) = split_word(rest);
            if from != "from" || to != "to" || step != "step" {
                return Err(err("range eval needs `from <t> to <t> step <d>`".into()));
            }
            let (start_ms, end_ms, step_ms) =
                (dur(a, "start time")?, dur(b, "end time")?, dur(s, "step")?);
            if end_ms < start_ms {
                return Err(err("end timestamp is before start timestamp".into()));
            }
            (
                EvalKind::Range {
                    start_ms,
                    end_ms,
                    step_ms,
                },
                expr,
            )
        }
        _ => return Err(err(format!("invalid evaluation command {header:?}"))),
    };
    let expr = expr.trim();
    if expr.is_empty() {
        return Err(err("eval without an expression".into()));
    }
    let is_instant = matches!(kind, EvalKind::Instant { .. });
    let mut cmd = EvalCmd::new(line, expr.to_string(), kind);
    match modifier {
        "fail" => cmd.fail = Some(TextMatch::Any),
        "warn" => cmd.warn.required = true,
        "info" => cmd.info.required = true,
        "ordered" => cmd.ordered = true,
        _ => {}
    }
    let mut fail_lines = 0;
    for &(ln, text) in body {
        let problem = |msg: String| cmd_problem(ln, msg);
        if cmd.fail.is_some() && text.starts_with("expected_fail_message") {
            let m = text["expected_fail_message".len()..].trim();
            cmd.fail_extra.push(TextMatch::Exact(m.to_string()));
            continue;
        }
        if cmd.fail.is_some() && text.starts_with("expected_fail_regexp") {
            let m = text["expected_fail_regexp".len()..].trim();
            match Pattern::new(m) {
                Ok(p) => cmd.fail_extra.push(TextMatch::Regex(p)),
                Err(e) => cmd.problems.push(problem(e)),
            }
            continue;
        }
        if text.starts_with("expect range vector") {
            match parse_expect_range(text) {
                Ok(r) => cmd.range_vector = Some(r),
                Err(e) => cmd.problems.push(problem(e)),
            }
            continue;
        }
        if let Some(s) = text.strip_prefix("expect string") {
            let s = s.trim();
            match promql_parser::util::unquote_string(s) {
                Ok(v) if !s.is_empty() => cmd.expected_string = Some(v),
                _ => cmd
                    .problems
                    .push(problem(format!("invalid expect string {s:?}"))),
            }
            continue;
        }
        // A metric named `expect` would have to be written `expect{}`.
        if text.split(' ').next() == Some("expect") {
            match parse_expect(text) {
                Ok((kind, m)) => match kind {
                    "fail" => {
                        fail_lines += 1;
                        cmd.fail = Some(m);
                    }
                    "ordered" => cmd.ordered = true,
                    "warn" => cmd.warn.expected.push(m),
                    "no_warn" => cmd.warn.forbidden = true,
                    "info" => cmd.info.expected.push(m),
                    "no_info" => cmd.info.forbidden = true,
                    _ => unreachable!(),
                },
                Err(e) => cmd.problems.push(problem(e)),
            }
            continue;
        }
        if let Some(v) = parse_go_number(text) {
            cmd.expected_scalar = Some(v);
            continue;
        }
        match parse_series_line(text) {
            Ok((labels, SeriesPoints::Floats(values))) => {
                if values.len() > 1 && is_instant && cmd.range_vector.is_none() {
                    cmd.problems.push(problem(
                        "expecting multiple values in instant evaluation not allowed".into(),
                    ));
                }
                let pos = cmd.expected.len() + 1;
                cmd.expected.push(ExpectedSeries {
                    line: ln,
                    labels,
                    values,
                    pos,
                });
            }
            Ok((_, SeriesPoints::NativeHistogram)) => cmd.expects_histogram = true,
            Err(e) => cmd.problems.push(problem(e)),
        }
    }
    if !cmd.warn.expected.is_empty() && cmd.warn.forbidden {
        cmd.problems
            .push("invalid expect lines, warn and no_warn cannot be used together".into());
    }
    if !cmd.info.expected.is_empty() && cmd.info.forbidden {
        cmd.problems
            .push("invalid expect lines, info and no_info cannot be used together".into());
    }
    if fail_lines > 1 {
        cmd.problems
            .push("invalid expect lines, multiple expect fail lines are not allowed".into());
    }
    Ok(cmd)
}

fn cmd_problem(line: usize, msg: String) -> String {
    format!("line {line}: {msg}")
}

/// `expect <type> [msg: text | regex: re]`; returns the type and the match.
pub fn parse_expect(line: &str) -> Result<(&'static str, TextMatch), String> {
    let (word, rest) = split_word(line.trim());
    if word != "expect" {
        return Err(format!("not an expect line: {line:?}"));
    }
    let (kind, rest) = split_word(rest);
    let kind: &'static str = match kind {
        "ordered" => "ordered",
        "fail" => "fail",
        "warn" => "warn",
        "no_warn" => "no_warn",
        "info" => "info",
        "no_info" => "no_info",
        _ => return Err(format!("invalid expected error/annotation type {kind:?}")),
    };
    let rest = rest.trim();
    if rest.is_empty() {
        return Ok((kind, TextMatch::Any));
    }
    if let Some(m) = rest.strip_prefix("msg:") {
        return Ok((kind, TextMatch::Exact(m.trim().to_string())));
    }
    if let Some(m) = rest.strip_prefix("regex:") {
        return Ok((kind, TextMatch::Regex(Pattern::new(m.trim())?)));
    }
    Err(format!("invalid expect statement {line:?}"))
}

/// `expect range vector from A to B step S` → (A, B, S) in ms.
pub fn parse_expect_range(line: &str) -> Result<(i64, i64, i64), String> {
    let rest = line
        .trim()
        .strip_prefix("expect range vector")
        .ok_or_else(|| format!("invalid range vector definition {line:?}"))?;
    let words: Vec<&str> = rest.split_whitespace().collect();
    match words.as_slice() {
        ["from", a, "to", b, "step", s] => {
            let (a, b, s) = (
                parse_duration_ms(a)?,
                parse_duration_ms(b)?,
                parse_duration_ms(s)?,
            );
            if b < a {
                return Err(format!(
                    "invalid test definition, end timestamp is before start timestamp in {line:?}"
                ));
            }
            Ok((a, b, s))
        }
        _ => Err(format!("invalid range vector definition {line:?}")),
    }
}

/// Splits off the first whitespace-separated word; the rest keeps its
/// leading whitespace trimmed.
fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], s[i..].trim_start()),
        None => (s, ""),
    }
}

/// Prometheus's `model.ParseDuration`: `0`, or units `y w d h m s ms` in
/// that order, each at most once (`1h30m`, `10s53ms`). Returns milliseconds.
pub fn parse_duration_ms(s: &str) -> Result<i64, String> {
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err("empty duration string".into());
    }
    const UNITS: [(&str, i64); 7] = [
        ("y", 365 * 24 * 3_600_000),
        ("w", 7 * 24 * 3_600_000),
        ("d", 24 * 3_600_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
        ("ms", 1),
    ];
    let bad = || format!("not a valid duration string: {s:?}");
    let b = s.as_bytes();
    let mut i = 0;
    let mut total: i64 = 0;
    let mut last_unit: Option<usize> = None;
    while i < b.len() {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return Err(bad());
        }
        let n: i64 = s[start..i].parse().map_err(|_| bad())?;
        let ustart = i;
        while i < b.len() && !b[i].is_ascii_digit() {
            i += 1;
        }
        let unit = &s[ustart..i];
        let pos = UNITS
            .iter()
            .position(|(u, _)| *u == unit)
            .ok_or_else(|| format!("unknown unit {unit:?} in duration {s:?}"))?;
        if last_unit.is_some_and(|l| pos <= l) {
            return Err(bad());
        }
        last_unit = Some(pos);
        total = n
            .checked_mul(UNITS[pos].1)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("duration {s:?} out of range"))?;
    }
    Ok(total)
}

/// Go's `parseNumber` in `test.go`: `strconv.ParseInt(s, 0, 64)`, else
/// `strconv.ParseFloat(s, 64)` (so `0x1F`, `010` (octal!), `1e3`, `Inf`,
/// `-Inf`, `NaN` are numbers).
pub fn parse_go_number(s: &str) -> Option<f64> {
    parse_go_int(s)
        .map(|i| i as f64)
        .or_else(|| parse_go_float(s))
}

fn parse_go_int(s: &str) -> Option<i64> {
    let (neg, body) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let lower = body.to_ascii_lowercase();
    let (radix, digits, prefixed) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d.to_string(), true)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d.to_string(), true)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d.to_string(), true)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, lower[1..].to_string(), true)
    } else {
        (10, lower.clone(), false)
    };
    // Underscores may separate digits (Go integer literal syntax).
    let d = if digits.contains('_') {
        if digits.starts_with('_') && !prefixed || digits.ends_with('_') || digits.contains("__") {
            return None;
        }
        digits.replace('_', "")
    } else {
        digits
    };
    if d.is_empty() || !d.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let v = i128::from_str_radix(&d, radix).ok()?;
    let v = if neg { -v } else { v };
    i64::try_from(v).ok()
}

fn parse_go_float(s: &str) -> Option<f64> {
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    let lower = body.to_ascii_lowercase();
    let special = matches!(lower.as_str(), "inf" | "infinity" | "nan");
    // Rust's parser also takes these words; otherwise insist on Go's
    // decimal float syntax (digits, one dot, exponent).
    if !special
        && (body.is_empty()
            || !body
                .chars()
                .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-')))
    {
        return None;
    }
    s.parse::<f64>().ok()
}

/// Parses `metric{labels} <points>` (a load line or an expected series).
pub fn parse_series_line(line: &str) -> Result<(Labels, SeriesPoints), String> {
    let (labels, rest) = parse_metric(line)?;
    if !rest.is_empty() && !rest.starts_with(char::is_whitespace) {
        return Err(format!(
            "unexpected {:?} after the series labels",
            first_chars(rest)
        ));
    }
    if rest.contains("{{") {
        return Ok((labels, SeriesPoints::NativeHistogram));
    }
    Ok((labels, SeriesPoints::Floats(parse_values(rest)?)))
}

fn first_chars(s: &str) -> String {
    s.chars().take(12).collect()
}

/// Parses the label part of a series description: `name`, `name{...}` or
/// `{...}`; inside the braces `label="value"` pairs and an optional quoted
/// metric name (`{"my.metric", a="b"}`); values in `"..."`, `'...'` or
/// backticks, with Go escapes. Returns the labels and the rest of the line.
pub fn parse_metric(s: &str) -> Result<(Labels, &str), String> {
    let s = s.trim_start();
    let mut pairs: Vec<(String, String)> = Vec::new();
    let name_len = s
        .char_indices()
        .take_while(|&(i, c)| {
            c == '_' || c == ':' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())
        })
        .count();
    if name_len > 0 {
        pairs.push(("__name__".into(), s[..name_len].to_string()));
    }
    let mut rest = &s[name_len..];
    if let Some(r) = rest.strip_prefix('{') {
        rest = r;
        loop {
            rest = rest.trim_start();
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            // Name: identifier or quoted string.
            let name;
            if rest.starts_with(['"', '\'', '`']) {
                let (q, r) = take_quoted(rest)?;
                name = q;
                rest = r.trim_start();
            } else {
                let n = rest
                    .char_indices()
                    .take_while(|&(i, c)| {
                        c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())
                    })
                    .count();
                if n == 0 {
                    return Err(format!("unexpected {:?} in label set", first_chars(rest)));
                }
                name = rest[..n].to_string();
                rest = rest[n..].trim_start();
            }
            if let Some(r) = rest.strip_prefix('=') {
                let (v, r) = take_quoted(r.trim_start())?;
                pairs.push((name, v));
                rest = r.trim_start();
            } else {
                // A quoted string alone is the metric name.
                if name_len > 0 || pairs.iter().any(|(n, _)| n == "__name__") {
                    return Err(format!("metric name set twice in {s:?}"));
                }
                pairs.push(("__name__".into(), name));
            }
            if let Some(r) = rest.strip_prefix(',') {
                rest = r;
            } else if !rest.starts_with('}') {
                return Err(format!(
                    "expected ',' or '}}' in label set, got {:?}",
                    first_chars(rest)
                ));
            }
        }
    } else if name_len == 0 {
        return Err(format!(
            "expected a metric name or label set, got {:?}",
            first_chars(s)
        ));
    }
    let labels = Labels::new(pairs).map_err(|e| e.to_string())?;
    Ok((labels, rest))
}

/// Splits a quoted string off the start of `s` and unquotes it.
fn take_quoted(s: &str) -> Result<(String, &str), String> {
    let q = s.chars().next().ok_or("expected a quoted string")?;
    if !matches!(q, '"' | '\'' | '`') {
        return Err(format!(
            "expected a quoted string, got {:?}",
            first_chars(s)
        ));
    }
    let mut escaped = false;
    for (i, c) in s.char_indices().skip(1) {
        if escaped {
            escaped = false;
        } else if c == '\\' && q != '`' {
            escaped = true;
        } else if c == q {
            let raw = &s[..i + 1];
            let v = promql_parser::util::unquote_string(raw)
                .map_err(|e| format!("bad string {raw}: {e}"))?;
            return Ok((v, &s[i + 1..]));
        }
    }
    Err(format!("unterminated string {:?}", first_chars(s)))
}

/// Parses the points of a series line: whitespace-separated items, each
/// one of (the grammar of Prometheus's `series_item`):
///
/// - `_`: one missing sample; `_xN`: N missing samples;
/// - `v`: one value: a number (`1`, `-2.5`, `1e3`, `Inf`, `-Inf`, `NaN`;
///   never hex: `0x10` means "0 repeated"), or `stale`;
/// - `vxN`: N+1 times `v` (the +1 is the sample at the start);
/// - `v+dxN` / `v-dxN`: N+1 values `v, v+d, v+2d, ...` computed by repeated
///   addition, as Prometheus does (so rounding matches its expectations).
pub fn parse_values(s: &str) -> Result<Vec<SeqValue>, String> {
    let mut out = Vec::new();
    for item in s.split_whitespace() {
        parse_item(item, &mut out).map_err(|e| format!("bad value {item:?}: {e}"))?;
    }
    Ok(out)
}

fn parse_item(item: &str, out: &mut Vec<SeqValue>) -> Result<(), String> {
    if item == "_" {
        out.push(SeqValue::Omitted);
        return Ok(());
    }
    if let Some(n) = item.strip_prefix("_x") {
        let n: u64 = parse_uint(n)?;
        out.extend((0..n).map(|_| SeqValue::Omitted));
        return Ok(());
    }
    let mut cur = item;
    let base = take_value(&mut cur, true)?;
    if cur.is_empty() {
        out.push(SeqValue::Value(base));
        return Ok(());
    }
    if let Some(n) = cur.strip_prefix('x') {
        let n = parse_uint(n)?;
        out.extend((0..=n).map(|_| SeqValue::Value(base)));
        return Ok(());
    }
    if cur.starts_with(['+', '-']) {
        let delta = take_value(&mut cur, false)?;
        let n = cur
            .strip_prefix('x')
            .ok_or("expected 'x<count>' after the increment")?;
        let n = parse_uint(n)?;
        let mut v = base;
        for _ in 0..=n {
            out.push(SeqValue::Value(v));
            v += delta;
        }
        return Ok(());
    }
    Err(format!("unexpected {cur:?}"))
}

fn parse_uint(s: &str) -> Result<u64, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("invalid repetition count {s:?}"));
    }
    s.parse()
        .map_err(|_| format!("invalid repetition count {s:?}"))
}

/// Takes an optionally signed number (or `stale`, when allowed) off the
/// front of `cur`. Numbers are scanned like Prometheus's lexer in series
/// mode: digits, `.`, exponent; an `x` ends a number; words (`Inf`, `NaN`,
/// `stale`) end at the first non-alphanumeric character.
fn take_value(cur: &mut &str, allow_stale: bool) -> Result<f64, String> {
    let s = *cur;
    let (neg, body) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let signed = body.len() != s.len();
    let b = body.as_bytes();
    let (v, len) = if b
        .first()
        .is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_')
    {
        let n = b
            .iter()
            .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_' || **c == b':')
            .count();
        let word = &body[..n];
        let v = match word.to_ascii_lowercase().as_str() {
            "inf" => f64::INFINITY,
            "nan" => f64::NAN,
            "stale" if allow_stale && !signed => stale_nan(),
            _ => return Err(format!("expected a number or \"stale\", got {word:?}")),
        };
        (v, n)
    } else {
        let mut i = 0;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i < b.len() && b[i] == b'.' {
            i += 1;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
        }
        if i > 0 && i < b.len() && (b[i] == b'e' || b[i] == b'E') {
            i += 1;
            if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
                i += 1;
            }
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
        }
        if i < b.len() && b[i] != b'x' && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
            return Err("bad number syntax".into());
        }
        let text = &body[..i];
        let v = parse_go_number(text).ok_or_else(|| format!("bad number {text:?}"))?;
        (v, i)
    };
    *cur = &body[len..];
    Ok(if neg { -v } else { v })
}

// ---------------------------------------------------------------------------
// Experimental constructs
// ---------------------------------------------------------------------------

/// Functions Prometheus only accepts with `--enable-feature=promql-experimental-functions`
/// (`Experimental: true` in `promql/parser/functions.go`), plus the
/// duration-expression functions.
pub const EXPERIMENTAL_FUNCTIONS: &[&str] = &[
    "double_exponential_smoothing",
    "first_over_time",
    "histogram_quantiles",
    "info",
    "integral",
    "mad_over_time",
    "sort_by_label",
    "sort_by_label_desc",
    "ts_of_first_over_time",
    "ts_of_last_over_time",
    "ts_of_max_over_time",
    "ts_of_min_over_time",
    // Start timestamps (experimental storage of created timestamps).
    "start_timestamp",
    // Duration expressions (`promql-duration-expr`).
    "start",
    "end",
    "range",
    "step",
    "min_of",
    "max_of",
];

/// Names the experimental constructs an expression uses, found in its text
/// (it need not parse):
///
/// - experimental functions ([`EXPERIMENTAL_FUNCTIONS`]; `@ start()` and
///   `@ end()` are standard and not counted);
/// - the `limitk` and `limit_ratio` aggregations;
/// - `fill(...)`, `fill_left(...)`, `fill_right(...)` binary-operator modifiers;
/// - `anchored` / `smoothed` after a range selector (extended range selectors);
/// - duration expressions: arithmetic or calls inside `[...]`, or a
///   parenthesised / computed `offset`.
pub fn experimental_constructs(expr: &str) -> Vec<String> {
    let toks = rough_tokens(expr);
    let mut found: Vec<String> = Vec::new();
    let mut add = |s: String| {
        if !found.contains(&s) {
            found.push(s);
        }
    };
    for (i, t) in toks.iter().enumerate() {
        let next = toks.get(i + 1).map(String::as_str);
        let prev = if i > 0 {
            Some(toks[i - 1].as_str())
        } else {
            None
        };
        let is_ident = t.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_');
        if !is_ident {
            continue;
        }
        let lower = t.to_ascii_lowercase();
        match lower.as_str() {
            "limitk" | "limit_ratio" if matches!(next, Some("(" | "by" | "without")) => {
                add(format!("{lower} aggregation"))
            }
            "fill" | "fill_left" | "fill_right" if next == Some("(") => {
                add("fill modifiers".into())
            }
            // After a selector (`foo[5m] anchored`, `foo smoothed`,
            // `foo @ 10 smoothed`), i.e. where an operator would be expected.
            "anchored" | "smoothed"
                if prev.is_some_and(|p| {
                    p == "]"
                        || p == "}"
                        || p.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
                }) && !matches!(next, Some("(" | "{" | "[")) =>
            {
                add(format!("{lower} modifier (extended range selectors)"))
            }
            "start" | "end" if next == Some("(") && prev == Some("@") => {}
            _ if next == Some("(") && EXPERIMENTAL_FUNCTIONS.contains(&lower.as_str()) => {
                if matches!(
                    lower.as_str(),
                    "start" | "end" | "range" | "step" | "min_of" | "max_of"
                ) {
                    add("duration expressions".into());
                } else {
                    add(format!("{lower}()"));
                }
            }
            "offset" => {
                // `offset (1m+1m)`, `offset -(...)`, `offset step()`.
                let mut j = i + 1;
                if toks.get(j).map(String::as_str) == Some("-") {
                    j += 1;
                }
                let a = toks.get(j).map(String::as_str);
                let b = toks.get(j + 1).map(String::as_str);
                if a == Some("(") || b == Some("(") {
                    add("duration expressions".into());
                }
            }
            _ => {}
        }
    }
    // Inside brackets only `5m`, `5m:`, `5m:1m` (and plain numbers) are standard.
    let mut depth = 0;
    for t in &toks {
        match t.as_str() {
            "[" => depth += 1,
            "]" => depth -= 1,
            _ if depth > 0 => {
                let plain = t == ":" || t.chars().all(|c| c.is_ascii_alphanumeric() || c == '.');
                if !plain {
                    add("duration expressions".into());
                }
            }
            _ => {}
        }
    }
    found
}

/// `</` and `>/`: the operators that trim native histogram buckets
/// (only meaningful on native histograms; `promql_parser` does not know them).
pub fn uses_trim_operators(expr: &str) -> bool {
    rough_tokens(expr)
        .windows(2)
        .any(|w| matches!(w[0].as_str(), "<" | ">") && w[1] == "/")
}

/// Splits an expression into identifiers/numbers and single punctuation
/// characters; string literals become one `"` token. Good enough to spot
/// the constructs above without a parser.
fn rough_tokens(expr: &str) -> Vec<String> {
    let mut toks = Vec::new();
    let mut chars = expr.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_whitespace() {
            continue;
        }
        if matches!(c, '"' | '\'' | '`') {
            let mut esc = false;
            for d in chars.by_ref() {
                if esc {
                    esc = false;
                } else if d == '\\' && c != '`' {
                    esc = true;
                } else if d == c {
                    break;
                }
            }
            toks.push("\"".to_string());
        } else if c == '#' {
            // Comment to the end of the line.
            for d in chars.by_ref() {
                if d == '\n' {
                    break;
                }
            }
        } else if c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == ':' {
            let mut w = c.to_string();
            while let Some(&d) = chars.peek() {
                if d.is_ascii_alphanumeric() || d == '_' || d == '.' || d == ':' {
                    w.push(d);
                    chars.next();
                } else {
                    break;
                }
            }
            // `5m:1m` and `foo:bar`: keep `:` separate only where it stands
            // alone between durations (inside brackets); metric names with
            // colons stay one token, which is what the checks above want.
            if w.contains(':') && w.chars().next().is_some_and(|c| c.is_ascii_digit()) {
                let mut first = true;
                for part in w.split(':') {
                    if !first {
                        toks.push(":".to_string());
                    }
                    first = false;
                    if !part.is_empty() {
                        toks.push(part.to_string());
                    }
                }
            } else {
                toks.push(w);
            }
        } else {
            toks.push(c.to_string());
        }
    }
    toks
}

// ---------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------

/// A failed eval.
#[derive(Clone, Debug)]
pub struct Failure {
    pub file: String,
    pub line: usize,
    pub expr: String,
    pub reason: String,
}

/// A skipped eval.
#[derive(Clone, Debug)]
pub struct Skip {
    pub file: String,
    pub line: usize,
    pub expr: String,
    /// A short category, e.g. `native histogram (query selects histogram series)`.
    pub reason: String,
}

/// The outcome of one file.
#[derive(Clone, Debug, Default)]
pub struct FileReport {
    /// File name (e.g. `functions.test`).
    pub file: String,
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
    pub failures: Vec<Failure>,
    pub skips: Vec<Skip>,
    /// Lines of the file the runner could not parse (a runner bug or a new
    /// syntax; evals in broken blocks are not counted).
    pub errors: Vec<ScriptError>,
    /// Instant evals whose @ variants could not be built (the rewritten
    /// expression did not print back faithfully); their other checks ran.
    pub at_variants_unchecked: usize,
}

impl FileReport {
    pub fn total(&self) -> usize {
        self.passed + self.failed + self.skipped
    }

    /// `file: passed P, failed F, skipped S`.
    pub fn summary_line(&self) -> String {
        format!(
            "{}: passed {}, failed {}, skipped {}",
            self.file, self.passed, self.failed, self.skipped
        )
    }
}

/// Options of a run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub engine: EngineOptions,
    /// How long the runner waits for one query; a query still running after
    /// that is abandoned (its thread keeps running) and the eval fails.
    pub query_timeout: Duration,
    /// Check instant evals again as range queries (Prometheus does).
    pub check_range_mode: bool,
    /// Check instant evals again with `@ <eval time>` at other times (Prometheus does).
    pub check_at_variants: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            // Prometheus's test engine: 5m lookback (the default).
            engine: EngineOptions::default(),
            query_timeout: Duration::from_secs(60),
            check_range_mode: true,
            check_at_variants: true,
        }
    }
}

/// Runs one `.test` file with default options.
pub fn run_file(path: &Path) -> FileReport {
    run_file_with(path, &RunOptions::default())
}

/// Runs one `.test` file.
pub fn run_file_with(path: &Path, opts: &RunOptions) -> FileReport {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    match std::fs::read_to_string(path) {
        Ok(text) => run_script(&name, &text, opts),
        Err(e) => FileReport {
            file: name,
            errors: vec![ScriptError {
                line: 0,
                msg: format!("cannot read {}: {e}", path.display()),
            }],
            ..FileReport::default()
        },
    }
}

/// Runs every `*.test` file of a directory (sorted by name), with default options.
pub fn run_dir(dir: &Path) -> Vec<FileReport> {
    run_dir_with(dir, &RunOptions::default())
}

/// Runs every `*.test` file of a directory (sorted by name).
pub fn run_dir_with(dir: &Path, opts: &RunOptions) -> Vec<FileReport> {
    test_files(dir)
        .iter()
        .map(|p| run_file_with(p, opts))
        .collect()
}

/// The `*.test` files of a directory, sorted.
pub fn test_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "test"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Runs a script's commands in order.
pub fn run_script(file: &str, text: &str, opts: &RunOptions) -> FileReport {
    install_panic_hook();
    let (cmds, errors) = parse_script(text);
    let mut report = FileReport {
        file: file.to_string(),
        errors,
        ..FileReport::default()
    };
    let mut runner = Runner {
        opts,
        source: MemSource::new(),
        engine: None,
        tainted: Vec::new(),
    };
    for cmd in &cmds {
        match cmd {
            Command::Clear { .. } => runner.clear(),
            Command::Load(load) => runner.load(load),
            Command::Eval(ev) => {
                let outcome = runner.eval(ev, &mut report.at_variants_unchecked);
                match outcome {
                    Outcome::Pass => report.passed += 1,
                    Outcome::Fail(reason) => {
                        report.failed += 1;
                        let reason = match experimental_constructs(&ev.expr) {
                            v if v.is_empty() => reason,
                            v => format!("{reason} [uses experimental: {}]", v.join(", ")),
                        };
                        report.failures.push(Failure {
                            file: file.to_string(),
                            line: ev.line,
                            expr: ev.expr.clone(),
                            reason,
                        });
                    }
                    Outcome::Skip(reason) => {
                        report.skipped += 1;
                        report.skips.push(Skip {
                            file: file.to_string(),
                            line: ev.line,
                            expr: ev.expr.clone(),
                            reason,
                        });
                    }
                }
            }
        }
    }
    report
}

/// Prefix of a failure reason that is the engine's error for a query that
/// should have succeeded.
const ENGINE_ERROR: &str = "error: ";
/// Prefix of a failure reason that is an error other than the expected one.
const OTHER_ERROR: &str = "expected error matching ";

enum Outcome {
    Pass,
    Fail(String),
    Skip(String),
}

/// Why a series could not be loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TaintKind {
    NativeHistogram,
    StartTimestamps,
}

struct Runner<'a> {
    opts: &'a RunOptions,
    source: MemSource,
    /// Built on first use after a load or clear.
    engine: Option<Engine>,
    /// Series we could not load (or loaded without what makes them special).
    tainted: Vec<(Labels, TaintKind)>,
}

impl Runner<'_> {
    fn clear(&mut self) {
        self.source = MemSource::new();
        self.engine = None;
        self.tainted.clear();
    }

    fn load(&mut self, load: &LoadCmd) {
        self.engine = None;
        let st: Vec<&Labels> = load.start_timestamps.iter().map(|(_, l)| l).collect();
        for s in &load.series {
            if load.default_start_timestamps || st.contains(&&s.labels) {
                self.tainted
                    .push((s.labels.clone(), TaintKind::StartTimestamps));
            }
            match &s.points {
                SeriesPoints::NativeHistogram => {
                    self.tainted
                        .push((s.labels.clone(), TaintKind::NativeHistogram));
                }
                SeriesPoints::Floats(values) => {
                    let samples = values.iter().enumerate().filter_map(|(i, v)| match v {
                        SeqValue::Omitted => None,
                        SeqValue::Value(f) => Some((i as i64 * load.interval_ms, *f)),
                    });
                    self.source.add(s.labels.clone(), samples);
                    if load.with_nhcb
                        && let Some(l) = nhcb_labels(&s.labels)
                    {
                        self.tainted.push((l, TaintKind::NativeHistogram));
                    }
                }
            }
        }
    }

    fn engine(&mut self) -> Engine {
        if self.engine.is_none() {
            self.engine = Some(Engine::new(
                Arc::new(self.source.clone()),
                self.opts.engine.clone(),
            ));
        }
        self.engine.clone().expect("engine just built")
    }

    fn eval(&mut self, ev: &EvalCmd, unchecked_variants: &mut usize) -> Outcome {
        if !ev.problems.is_empty() {
            return Outcome::Fail(format!("test syntax: {}", ev.problems.join("; ")));
        }
        if ev.expects_histogram {
            return Outcome::Skip("native histogram (expected result has {{...}})".into());
        }
        let ast = match promql_parser::parser::parse(&ev.expr) {
            Ok(ast) => Some(ast),
            Err(e) => {
                if uses_trim_operators(&ev.expr) {
                    return Outcome::Skip("native histogram (trim operators </ >/)".into());
                }
                let exp = experimental_constructs(&ev.expr);
                if !exp.is_empty() {
                    return Outcome::Skip(format!("experimental: {}", exp.join(", ")));
                }
                if ev.fail.is_none() {
                    return Outcome::Fail(format!("parser: {}", one_line(&e)));
                }
                None
            }
        };
        if let Some(ast) = &ast {
            let mut selectors = Vec::new();
            super::collect_selectors(ast, &mut selectors);
            for kind in [TaintKind::NativeHistogram, TaintKind::StartTimestamps] {
                let hit = self.tainted.iter().any(|(labels, k)| {
                    *k == kind && selectors.iter().any(|vs| selector_matches(vs, labels))
                });
                if hit {
                    return Outcome::Skip(
                        match kind {
                            TaintKind::NativeHistogram => {
                                "native histogram (query selects histogram series)"
                            }
                            TaintKind::StartTimestamps => "experimental: start timestamps (@st)",
                        }
                        .into(),
                    );
                }
            }
        }
        let engine = self.engine();
        let result = match ev.kind {
            EvalKind::Range {
                start_ms,
                end_ms,
                step_ms,
            } => self.run_range(&engine, ev, start_ms, end_ms, step_ms),
            EvalKind::Instant { at_ms } => {
                self.run_instant(&engine, ev, &ev.expr, at_ms)
                    .and_then(|()| match &ast {
                        Some(ast) if self.opts.check_at_variants => {
                            self.run_at_variants(&engine, ev, ast, at_ms, unchecked_variants)
                        }
                        _ => Ok(()),
                    })
            }
        };
        match result {
            Ok(()) => Outcome::Pass,
            // The engine refused the eval's own query (not a range-mode or @
            // variant re-run, whose reasons have a prefix), or gave another
            // error than the one expected, and the query uses an experimental
            // construct: an engine may decline those, so this counts as a
            // skip, not a conformance failure.
            Err(e) if e.starts_with(ENGINE_ERROR) || e.starts_with(OTHER_ERROR) => {
                match experimental_constructs(&ev.expr) {
                    v if v.is_empty() => Outcome::Fail(e),
                    v => Outcome::Skip(format!(
                        "experimental: {} (the engine refuses it)",
                        v.join(", ")
                    )),
                }
            }
            Err(e) => Outcome::Fail(e),
        }
    }

    /// The instant eval again with `@ <eval time>` at other times.
    fn run_at_variants(
        &self,
        engine: &Engine,
        ev: &EvalCmd,
        ast: &Expr,
        at_ms: i64,
        unchecked: &mut usize,
    ) -> Result<(), String> {
        match at_variants(ast, at_ms) {
            AtVariants::Unsafe => Ok(()),
            AtVariants::Unprintable => {
                *unchecked += 1;
                Ok(())
            }
            AtVariants::Cases(cases) => {
                for (expr, t) in cases {
                    self.run_instant(engine, ev, &expr, t)
                        .map_err(|e| format!("@ variant `{expr}` at t={}: {e}", fmt_ms(t)))?;
                }
                Ok(())
            }
        }
    }

    fn run_range(
        &self,
        engine: &Engine,
        ev: &EvalCmd,
        start: i64,
        end: i64,
        step: i64,
    ) -> Result<(), String> {
        let expr = ev.expr.clone();
        let res = call_engine(engine, self.opts.query_timeout, move |e| {
            e.range_query(&expr, start, end, step)
        })?;
        let res = match res {
            Err(e) if ev.fail.is_some() => return check_expected_failure(ev, &e),
            Err(e) => return Err(format!("{ENGINE_ERROR}{}", one_line(&e.msg))),
            Ok(_) if ev.fail.is_some() => return Err("expected an error, got a result".into()),
            Ok(r) => r,
        };
        check_annotations(ev, &res)?;
        compare_result(ev, &res.value, (start, end, step))
    }

    /// One instant query (the eval's own, or an @ variant) with its range-mode check.
    fn run_instant(&self, engine: &Engine, ev: &EvalCmd, expr: &str, t: i64) -> Result<(), String> {
        let q = expr.to_string();
        let res = call_engine(engine, self.opts.query_timeout, move |e| {
            e.instant_query(&q, t)
        })?;
        let res = match res {
            Err(e) if ev.fail.is_some() => return check_expected_failure(ev, &e),
            Err(e) => return Err(format!("{ENGINE_ERROR}{}", one_line(&e.msg))),
            Ok(r) if ev.fail.is_some() => {
                return Err(format!("expected an error, got a {}", r.value.type_name()));
            }
            Ok(r) => r,
        };
        check_annotations(ev, &res)?;
        // Points of an instant query's matrix sit on the grid of the
        // `expect range vector` line; without one no point is expected.
        let grid = ev.range_vector.unwrap_or((t, i64::MIN, 0));
        compare_result(ev, &res.value, grid)?;

        if !self.opts.check_range_mode
            || ev.range_vector.is_some()
            || ev.expected_string.is_some()
            || uses_query_context_functions(expr)
        {
            return Ok(());
        }
        let q = expr.to_string();
        let range = call_engine(engine, self.opts.query_timeout, move |e| {
            e.range_query(&q, t - 60_000, t + 60_000, 60_000)
        })
        .map_err(|e| format!("range mode: {e}"))?
        .map_err(|e| format!("range mode: error: {}", one_line(&e.msg)))?;
        if ev.ordered {
            // Range results are sorted by labels, so order cannot be checked.
            return Ok(());
        }
        let Value::Matrix(series) = &range.value else {
            return Err(format!(
                "range mode: got a {}, not a matrix",
                range.value.type_name()
            ));
        };
        check_sorted(series).map_err(|e| format!("range mode: {e}"))?;
        let vector: Vec<super::InstantSample> = series
            .iter()
            .filter_map(|s| {
                s.points
                    .iter()
                    .find(|p| p.0 == t)
                    .map(|p| super::InstantSample {
                        labels: s.labels.clone(),
                        t_ms: t,
                        value: p.1,
                    })
            })
            .collect();
        let value = if matches!(res.value, Value::Scalar { .. }) {
            match vector.first() {
                Some(s) => Value::Scalar {
                    t_ms: t,
                    value: s.value,
                },
                None => return Err("range mode: no point at the eval time".into()),
            }
        } else {
            Value::Vector(vector)
        };
        compare_result(ev, &value, grid).map_err(|e| format!("range mode: {e}"))
    }
}

/// The labels of the native histogram with custom buckets that
/// `load_with_nhcb` derives from a classic histogram series, if any.
fn nhcb_labels(labels: &Labels) -> Option<Labels> {
    let name = labels.metric_name()?;
    let base = if let Some(b) = name.strip_suffix("_bucket") {
        let le = labels.get("le")?;
        match le.trim_start_matches('+').parse::<f64>() {
            Ok(v) if !v.is_nan() => b,
            _ => return None,
        }
    } else if let Some(b) = name.strip_suffix("_sum") {
        b
    } else {
        name.strip_suffix("_count")?
    };
    Some(labels.without(|n| n == "le").with("__name__", base))
}

/// Whether a selector could select the series with these labels.
fn selector_matches(vs: &promql_parser::parser::VectorSelector, labels: &Labels) -> bool {
    let get = |n: &str| labels.get(n).unwrap_or("");
    if let Some(name) = &vs.name
        && get("__name__") != name
    {
        return false;
    }
    let all = |ms: &[promql_parser::label::Matcher]| ms.iter().all(|m| m.is_match(get(&m.name)));
    all(&vs.matchers.matchers)
        && (vs.matchers.or_matchers.is_empty() || vs.matchers.or_matchers.iter().any(|g| all(g)))
}

/// `test.go`'s `reQueryContextFuncs`: such expressions resolve differently
/// in a range query, so the range-mode check is left out.
fn uses_query_context_functions(expr: &str) -> bool {
    ["start()", "end()", "range()", "step()"]
        .iter()
        .any(|f| expr.contains(f))
}

// ---------------------------------------------------------------------------
// @ variants (Prometheus's atModifierTestCases)
// ---------------------------------------------------------------------------

/// Functions whose result depends on the evaluation time even when their
/// arguments do not (Prometheus's `AtModifierUnsafeFunctions`).
const AT_UNSAFE_FUNCTIONS: &[&str] = &[
    "days_in_month",
    "day_of_month",
    "day_of_week",
    "day_of_year",
    "hour",
    "minute",
    "month",
    "year",
    "predict_linear",
    "time",
    "timestamp",
];

enum AtVariants {
    /// The expression calls an @-unsafe function: no variants.
    Unsafe,
    /// The rewritten expression does not print back faithfully.
    Unprintable,
    /// (expression, eval time) pairs.
    Cases(Vec<(String, i64)>),
}

fn at_variants(ast: &Expr, t: i64) -> AtVariants {
    let mut e = ast.clone();
    let Some(at) = u64::try_from(t)
        .ok()
        .and_then(|ms| SystemTime::UNIX_EPOCH.checked_add(Duration::from_millis(ms)))
        .map(AtModifier::At)
    else {
        return AtVariants::Unprintable;
    };
    if set_at(&mut e, &at) {
        return AtVariants::Unsafe;
    }
    let text = e.to_string();
    match promql_parser::parser::parse(&text) {
        Ok(back) if same_ast(back.clone(), e.clone()) => {}
        _ => return AtVariants::Unprintable,
    }
    let times: Vec<i64> = if t == 0 {
        vec![-1000, 0, 1000]
    } else {
        vec![-10 * t, 0, t / 5, t, 10 * t]
    };
    AtVariants::Cases(times.into_iter().map(|ts| (text.clone(), ts)).collect())
}

/// Whether two trees mean the same, up to what `Display` legitimately
/// changes: matcher order, `by ()` (= no grouping), `ignoring()` (= default
/// matching), and NaN fill values (compared through `Debug`).
fn same_ast(mut a: Expr, mut b: Expr) -> bool {
    normalize(&mut a);
    normalize(&mut b);
    format!("{a:?}") == format!("{b:?}")
}

fn normalize(e: &mut Expr) {
    use promql_parser::label::{Matcher, Matchers};
    use promql_parser::parser::LabelModifier;
    fn sort_matchers(m: &mut Matchers) {
        let key = |m: &Matcher| (m.name.clone(), m.op.to_string(), m.value.clone());
        m.matchers.sort_by_key(key);
        for g in &mut m.or_matchers {
            g.sort_by_key(key);
        }
    }
    match e {
        Expr::VectorSelector(vs) => sort_matchers(&mut vs.matchers),
        Expr::MatrixSelector(ms) => sort_matchers(&mut ms.vs.matchers),
        Expr::Subquery(sq) => normalize(&mut sq.expr),
        Expr::Aggregate(a) => {
            if matches!(&a.modifier, Some(LabelModifier::Include(l)) if l.is_empty()) {
                a.modifier = None;
            }
            normalize(&mut a.expr);
            if let Some(p) = &mut a.param {
                normalize(p);
            }
        }
        Expr::Unary(u) => normalize(&mut u.expr),
        Expr::Binary(b) => {
            if let Some(m) = &mut b.modifier
                && matches!(&m.matching, Some(LabelModifier::Exclude(l)) if l.is_empty())
            {
                m.matching = None;
            }
            if b.modifier
                .as_ref()
                .is_some_and(|m| *m == Default::default())
            {
                b.modifier = None;
            }
            normalize(&mut b.lhs);
            normalize(&mut b.rhs);
        }
        Expr::Paren(p) => normalize(&mut p.expr),
        Expr::Call(c) => {
            for a in &mut c.args.args {
                normalize(a);
            }
        }
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

/// Puts `at` on every selector and subquery that has no numeric `@` (an
/// `@ start()`/`@ end()` is the eval time itself in an instant query, and
/// Prometheus's rewrite replaces it too), not descending into subqueries.
/// Returns true when an @-unsafe function is called outside subqueries.
fn set_at(e: &mut Expr, at: &AtModifier) -> bool {
    let pin = |slot: &mut Option<AtModifier>| {
        if !matches!(slot, Some(AtModifier::At(_))) {
            *slot = Some(at.clone());
        }
    };
    match e {
        Expr::VectorSelector(vs) => {
            pin(&mut vs.at);
            false
        }
        Expr::MatrixSelector(ms) => {
            pin(&mut ms.vs.at);
            false
        }
        Expr::Subquery(sq) => {
            pin(&mut sq.at);
            false
        }
        Expr::Aggregate(a) => {
            let mut unsafe_call = set_at(&mut a.expr, at);
            if let Some(p) = &mut a.param {
                unsafe_call |= set_at(p, at);
            }
            unsafe_call
        }
        Expr::Unary(u) => set_at(&mut u.expr, at),
        Expr::Binary(b) => {
            let l = set_at(&mut b.lhs, at);
            let r = set_at(&mut b.rhs, at);
            l || r
        }
        Expr::Paren(p) => set_at(&mut p.expr, at),
        Expr::Call(c) => {
            let mut unsafe_call = AT_UNSAFE_FUNCTIONS.contains(&c.func.name);
            for a in &mut c.args.args {
                unsafe_call |= set_at(a, at);
            }
            unsafe_call
        }
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => false,
    }
}

// ---------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------

fn check_expected_failure(ev: &EvalCmd, err: &QueryError) -> Result<(), String> {
    let msg = &err.msg;
    for m in ev.fail.iter().chain(ev.fail_extra.iter()) {
        if !m.matches(msg) {
            return Err(format!(
                "{OTHER_ERROR}{}, got: {}",
                m.describe(),
                one_line(msg)
            ));
        }
    }
    Ok(())
}

fn check_annotations(ev: &EvalCmd, res: &QueryResult) -> Result<(), String> {
    check_annotation_kind("warning", &ev.warn, &res.warnings)?;
    check_annotation_kind("info", &ev.info, &res.infos)
}

fn check_annotation_kind(kind: &str, exp: &AnnotationExpect, got: &[String]) -> Result<(), String> {
    if exp.required && got.is_empty() {
        return Err(format!("expected {kind} annotations, got none"));
    }
    if !exp.expected.is_empty() {
        if got.is_empty() {
            return Err(format!("expected {kind} annotations, got none"));
        }
        for e in &exp.expected {
            if !got.iter().any(|g| e.matches(g)) {
                return Err(format!(
                    "expected {kind} matching {}, got {}",
                    e.describe(),
                    fmt_strings(got)
                ));
            }
        }
        for g in got {
            if !exp.expected.iter().any(|e| e.matches(g)) {
                return Err(format!("unexpected {kind} {g:?}"));
            }
        }
    }
    if exp.forbidden && !got.is_empty() {
        return Err(format!(
            "unexpected {kind} annotations: {}",
            fmt_strings(got)
        ));
    }
    Ok(())
}

fn fmt_strings(v: &[String]) -> String {
    let parts: Vec<String> = v.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", parts.join(", "))
}

/// Compares a result with the expectations. `grid` is (start, end, step)
/// of the expected matrix points.
fn compare_result(ev: &EvalCmd, value: &Value, grid: (i64, i64, i64)) -> Result<(), String> {
    let expected: HashMap<&Labels, &ExpectedSeries> =
        ev.expected.iter().map(|e| (&e.labels, e)).collect();
    match value {
        Value::Matrix(series) => {
            if ev.ordered {
                return Err("expected an ordered vector, got a matrix".into());
            }
            if let Some(v) = ev.expected_scalar {
                return Err(format!("expected scalar {}, got a matrix", fmt_f(v)));
            }
            check_sorted(series)?;
            let (start, end, step) = grid;
            for s in series {
                let Some(exp) = expected.get(&s.labels) else {
                    return Err(format!(
                        "unexpected series {} in result: {}",
                        s.labels,
                        fmt_points(&s.points)
                    ));
                };
                let mut want: Vec<(i64, f64)> = Vec::new();
                for (i, v) in exp.values.iter().enumerate() {
                    let t = start + i as i64 * step;
                    if t > end {
                        return Err(format!(
                            "expected {} points for {}, but the query range cannot hold that many",
                            exp.values.len(),
                            s.labels
                        ));
                    }
                    if let SeqValue::Value(f) = v {
                        want.push((t, *f));
                    }
                }
                if let Some(p) = s.points.iter().find(|p| is_stale_nan(p.1)) {
                    return Err(format!(
                        "staleness marker in result for {} at t={}",
                        s.labels,
                        fmt_ms(p.0)
                    ));
                }
                if want.len() != s.points.len() {
                    return Err(format!(
                        "{}: expected {} points {}, got {} points {}",
                        s.labels,
                        want.len(),
                        fmt_points(&want),
                        s.points.len(),
                        fmt_points(&s.points)
                    ));
                }
                for (w, g) in want.iter().zip(&s.points) {
                    if w.0 != g.0 {
                        return Err(format!(
                            "{}: expected a point at t={}, got t={} (result {})",
                            s.labels,
                            fmt_ms(w.0),
                            fmt_ms(g.0),
                            fmt_points(&s.points)
                        ));
                    }
                    if !almost_equal(w.1, g.1) {
                        return Err(format!(
                            "{} at t={}: expected {}, got {}",
                            s.labels,
                            fmt_ms(w.0),
                            fmt_f(w.1),
                            fmt_f(g.1)
                        ));
                    }
                }
            }
            missing(ev, series.iter().map(|s| &s.labels))
        }
        Value::Vector(samples) => {
            if let Some(v) = ev.expected_scalar {
                return Err(format!(
                    "expected scalar {}, got a vector of {} samples",
                    fmt_f(v),
                    samples.len()
                ));
            }
            for (i, s) in samples.iter().enumerate() {
                let Some(exp) = expected.get(&s.labels) else {
                    return Err(format!(
                        "unexpected series {} in result, value {}",
                        s.labels,
                        fmt_f(s.value)
                    ));
                };
                if is_stale_nan(s.value) {
                    return Err(format!("staleness marker in result for {}", s.labels));
                }
                if ev.ordered && exp.pos != i + 1 {
                    return Err(format!(
                        "expected {} at position {}, got it at {}",
                        s.labels,
                        exp.pos,
                        i + 1
                    ));
                }
                let want = match exp.values.first() {
                    Some(SeqValue::Value(v)) => *v,
                    _ => return Err(format!("test expects no value for {}", s.labels)),
                };
                if !almost_equal(want, s.value) {
                    return Err(format!(
                        "{}: expected {}, got {}",
                        s.labels,
                        fmt_f(want),
                        fmt_f(s.value)
                    ));
                }
            }
            missing(ev, samples.iter().map(|s| &s.labels))
        }
        Value::Scalar { value, .. } => {
            let Some(want) = ev.expected_scalar else {
                return Err(format!(
                    "expected a vector or matrix, got scalar {}",
                    fmt_f(*value)
                ));
            };
            if is_stale_nan(*value) {
                return Err("staleness marker as scalar result".into());
            }
            if !almost_equal(want, *value) {
                return Err(format!(
                    "expected scalar {}, got {}",
                    fmt_f(want),
                    fmt_f(*value)
                ));
            }
            Ok(())
        }
        Value::String { value, .. } => {
            let want = ev.expected_string.as_deref().unwrap_or("");
            if want != value {
                return Err(format!("expected string {want:?}, got {value:?}"));
            }
            Ok(())
        }
    }
}

/// The first expected series absent from the result, as an error.
fn missing<'a>(ev: &EvalCmd, got: impl Iterator<Item = &'a Labels>) -> Result<(), String> {
    let got: Vec<&Labels> = got.collect();
    for e in &ev.expected {
        if !got.contains(&&e.labels) {
            let vals: Vec<String> = e
                .values
                .iter()
                .map(|v| match v {
                    SeqValue::Omitted => "_".to_string(),
                    SeqValue::Value(f) => fmt_f(*f),
                })
                .collect();
            return Err(format!(
                "expected series {} ({}) not in result ({} series)",
                e.labels,
                vals.join(" "),
                got.len()
            ));
        }
    }
    Ok(())
}

fn check_sorted(series: &[super::RangeSeries]) -> Result<(), String> {
    for w in series.windows(2) {
        if w[0].labels > w[1].labels {
            return Err(format!(
                "matrix not sorted by labels: {} before {}",
                w[0].labels, w[1].labels
            ));
        }
    }
    Ok(())
}

/// Prometheus's `util/almost.Equal` with epsilon 1e-6: a staleness marker
/// only equals a staleness marker, NaN equals NaN, otherwise a relative
/// difference (to the sum of magnitudes) below epsilon.
pub fn almost_equal(a: f64, b: f64) -> bool {
    const EPSILON: f64 = 1e-6;
    if is_stale_nan(a) || is_stale_nan(b) {
        return is_stale_nan(a) && is_stale_nan(b);
    }
    if a.is_nan() && b.is_nan() {
        return true;
    }
    if a == b {
        return true;
    }
    let abs_sum = a.abs() + b.abs();
    let diff = (a - b).abs();
    if a == 0.0 || b == 0.0 || abs_sum < f64::MIN_POSITIVE {
        return diff < EPSILON * f64::MIN_POSITIVE;
    }
    diff / abs_sum.min(f64::MAX) < EPSILON
}

fn fmt_f(v: f64) -> String {
    if is_stale_nan(v) {
        "stale".into()
    } else if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

/// Milliseconds as a compact duration (`90s`, `1m30s`, `-1s`, `10ms`).
fn fmt_ms(ms: i64) -> String {
    if ms == 0 {
        return "0".into();
    }
    let mut s = String::new();
    if ms < 0 {
        s.push('-');
    }
    let mut rest = ms.unsigned_abs();
    for (unit, len) in [("h", 3_600_000u64), ("m", 60_000), ("s", 1000), ("ms", 1)] {
        if rest >= len {
            let _ = write!(s, "{}{unit}", rest / len);
            rest %= len;
        }
    }
    s
}

fn fmt_points(points: &[(i64, f64)]) -> String {
    const MAX: usize = 12;
    let mut parts: Vec<String> = points
        .iter()
        .take(MAX)
        .map(|(t, v)| format!("{}@{}", fmt_f(*v), fmt_ms(*t)))
        .collect();
    if points.len() > MAX {
        parts.push(format!("… ({} more)", points.len() - MAX));
    }
    format!("[{}]", parts.join(" "))
}

fn one_line(s: &str) -> String {
    s.replace('\n', " ")
}

// ---------------------------------------------------------------------------
// Calling the engine: its own thread, panics caught, a deadline
// ---------------------------------------------------------------------------

const QUERY_THREAD: &str = "promqltest-query";

thread_local! {
    /// The message of the last panic on this thread (set by our hook).
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Keeps panics of our query threads off stderr (they become failures with
/// the message and location); every other thread keeps the previous hook.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() == Some(QUERY_THREAD) {
                let msg = if let Some(s) = info.payload().downcast_ref::<&str>() {
                    (*s).to_string()
                } else if let Some(s) = info.payload().downcast_ref::<String>() {
                    s.clone()
                } else {
                    "(non-string panic payload)".to_string()
                };
                let loc = info
                    .location()
                    .map(|l| format!(" at {}:{}", l.file(), l.line()))
                    .unwrap_or_default();
                LAST_PANIC.with(|p| *p.borrow_mut() = Some(format!("{msg}{loc}")));
            } else {
                previous(info);
            }
        }));
    });
}

type QueryOutcome = Result<QueryResult, QueryError>;

/// Runs `f` against the engine on a fresh thread. `Err` is a panic or a
/// timeout (the thread is then abandoned).
fn call_engine<F>(engine: &Engine, timeout: Duration, f: F) -> Result<QueryOutcome, String>
where
    F: FnOnce(&Engine) -> QueryOutcome + Send + 'static,
{
    let engine = engine.clone();
    let (tx, rx) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name(QUERY_THREAD.into())
        .spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&engine)));
            let r = r.map_err(|payload| {
                LAST_PANIC
                    .with(|p| p.borrow_mut().take())
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into())
            });
            let _ = tx.send(r);
        });
    if let Err(e) = spawned {
        return Err(format!("cannot start a query thread: {e}"));
    }
    match rx.recv_timeout(timeout) {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(panic)) => Err(format!("panic: {}", one_line(&panic))),
        Err(mpsc::RecvTimeoutError::Timeout) => {
            Err(format!("timeout: no answer after {}s", timeout.as_secs()))
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => Err("panic: (query thread died)".into()),
    }
}

// ---------------------------------------------------------------------------
// Reports
// ---------------------------------------------------------------------------

/// Sums of all files: (passed, failed, skipped).
pub fn totals(reports: &[FileReport]) -> (usize, usize, usize) {
    reports.iter().fold((0, 0, 0), |(p, f, s), r| {
        (p + r.passed, f + r.failed, s + r.skipped)
    })
}

/// The plain-text report: one line per file, the total, then every script
/// error, every failure, and the skip reasons with their counts.
pub fn format_report(reports: &[FileReport]) -> String {
    let mut out = String::new();
    for r in reports {
        let _ = writeln!(out, "{}", r.summary_line());
    }
    let (p, f, s) = totals(reports);
    let _ = writeln!(out, "total: passed {p}, failed {f}, skipped {s}");
    for r in reports {
        for e in &r.errors {
            let _ = writeln!(
                out,
                "ERROR {}:{} cannot parse the test script: {}",
                r.file, e.line, e.msg
            );
        }
    }
    for r in reports {
        for fl in &r.failures {
            let _ = writeln!(
                out,
                "FAIL {}:{} {} — {}",
                fl.file,
                fl.line,
                fl.expr,
                shorten(&fl.reason, 400)
            );
        }
    }
    let skips = skip_counts(reports);
    if !skips.is_empty() {
        let _ = writeln!(out, "skipped, by reason:");
        for (reason, n) in skips {
            let _ = writeln!(out, "  {n:5}  {reason}");
        }
    }
    let unchecked: usize = reports.iter().map(|r| r.at_variants_unchecked).sum();
    if unchecked > 0 {
        let _ = writeln!(
            out,
            "note: the @ variants of {unchecked} instant evals were not checked (rewritten expression does not print back faithfully)"
        );
    }
    out
}

/// Skip reasons with their counts, most frequent first.
pub fn skip_counts(reports: &[FileReport]) -> Vec<(String, usize)> {
    let mut m: BTreeMap<&str, usize> = BTreeMap::new();
    for r in reports {
        for s in &r.skips {
            *m.entry(s.reason.as_str()).or_default() += 1;
        }
    }
    let mut v: Vec<(String, usize)> = m.into_iter().map(|(k, n)| (k.to_string(), n)).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v
}

/// A markdown report (for docs/CONFORMANCE.md): a table per file, the skip
/// reasons with counts, and every failure with its reason.
pub fn markdown_report(reports: &[FileReport]) -> String {
    let mut out = String::new();
    let (p, f, s) = totals(reports);
    let _ = writeln!(
        out,
        "{p} of {} evals pass ({f} fail, {s} skipped).\n",
        p + f + s
    );
    let _ = writeln!(out, "| file | passed | failed | skipped | total |");
    let _ = writeln!(out, "|---|---:|---:|---:|---:|");
    for r in reports {
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} | {} |",
            r.file,
            r.passed,
            r.failed,
            r.skipped,
            r.total()
        );
    }
    let _ = writeln!(
        out,
        "| **total** | **{p}** | **{f}** | **{s}** | **{}** |",
        p + f + s
    );
    let skips = skip_counts(reports);
    if !skips.is_empty() {
        let _ = writeln!(out, "\n### Skipped cases, by reason\n");
        let _ = writeln!(out, "| reason | cases |");
        let _ = writeln!(out, "|---|---:|");
        for (reason, n) in skips {
            let _ = writeln!(out, "| {} | {n} |", md_text(&reason));
        }
    }
    let errors: Vec<(&str, &ScriptError)> = reports
        .iter()
        .flat_map(|r| r.errors.iter().map(move |e| (r.file.as_str(), e)))
        .collect();
    if !errors.is_empty() {
        let _ = writeln!(out, "\n### Script lines the runner could not parse\n");
        for (file, e) in errors {
            let _ = writeln!(out, "- `{file}:{}`: {}", e.line, md_text(&e.msg));
        }
    }
    if f > 0 {
        let _ = writeln!(out, "\n### Failures\n");
        for r in reports {
            if r.failures.is_empty() {
                continue;
            }
            let _ = writeln!(out, "#### `{}` ({} failed)\n", r.file, r.failed);
            for fl in &r.failures {
                let _ = writeln!(
                    out,
                    "- line {}: {} — {}",
                    fl.line,
                    md_code(&fl.expr),
                    md_text(&shorten(&fl.reason, 400))
                );
            }
            out.push('\n');
        }
    }
    out
}

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut t: String = s.chars().take(max).collect();
    t.push('…');
    t
}

/// Inline code that survives backticks in the text.
fn md_code(s: &str) -> String {
    let mut fence = "`".to_string();
    while s.contains(fence.as_str()) {
        fence.push('`');
    }
    let pad = if s.starts_with('`') || s.ends_with('`') {
        " "
    } else {
        ""
    };
    format!("{fence}{pad}{s}{pad}{fence}")
}

/// Text in a markdown list or paragraph: no HTML, no line breaks.
fn md_text(s: &str) -> String {
    one_line(s)
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('|', "\\|")
}

// ---------------------------------------------------------------------------
// Tests of the parser
// ---------------------------------------------------------------------------

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn vals(s: &str) -> Vec<SeqValue> {
        parse_values(s).unwrap()
    }

    fn floats(v: &[SeqValue]) -> Vec<Option<f64>> {
        v.iter()
            .map(|v| match v {
                SeqValue::Omitted => None,
                SeqValue::Value(f) => Some(*f),
            })
            .collect()
    }

    #[test]
    fn expanding_notation() {
        assert_eq!(
            floats(&vals("1 2 3")),
            vec![Some(1.0), Some(2.0), Some(3.0)]
        );
        // `a+bxN` is N+1 values.
        assert_eq!(
            floats(&vals("0+10x3")),
            vec![Some(0.0), Some(10.0), Some(20.0), Some(30.0)]
        );
        assert_eq!(
            floats(&vals("10-2x2")),
            vec![Some(10.0), Some(8.0), Some(6.0)]
        );
        assert_eq!(
            floats(&vals("-1-1x2")),
            vec![Some(-1.0), Some(-2.0), Some(-3.0)]
        );
        assert_eq!(floats(&vals("-1+1x1")), vec![Some(-1.0), Some(0.0)]);
        // `axN` repeats a N+1 times.
        assert_eq!(floats(&vals("5x2")), vec![Some(5.0); 3]);
        // `0x10` is "0 repeated", never hex.
        assert_eq!(vals("0x10").len(), 11);
        assert_eq!(vals("0+0x10").len(), 11);
        assert_eq!(
            floats(&vals("1e3 .5 +2")),
            vec![Some(1000.0), Some(0.5), Some(2.0)]
        );
        assert_eq!(floats(&vals("1.5+0.5x1")), vec![Some(1.5), Some(2.0)]);
        // Repeated addition, like Prometheus (0.1+0.1+0.1 != 0.3).
        let v = floats(&vals("0+0.1x3"));
        assert_eq!(v[3], Some(0.1 + 0.1 + 0.1));
        // Exponents with signs inside an item.
        assert_eq!(floats(&vals("1e-1+1e+1x1")), vec![Some(0.1), Some(10.1)]);
    }

    #[test]
    fn gaps_stale_and_specials() {
        let v = vals("1 _ _x3 stale 2");
        assert_eq!(v.len(), 7);
        assert!(matches!(v[1], SeqValue::Omitted));
        assert!(v[2..5].iter().all(|x| matches!(x, SeqValue::Omitted)));
        match v[5] {
            SeqValue::Value(f) => assert!(is_stale_nan(f)),
            _ => panic!("stale expected"),
        }
        let v = floats(&vals("Inf -Inf +Inf NaN nan inf"));
        assert_eq!(v[0], Some(f64::INFINITY));
        assert_eq!(v[1], Some(f64::NEG_INFINITY));
        assert_eq!(v[2], Some(f64::INFINITY));
        assert!(v[3].unwrap().is_nan() && !is_stale_nan(v[3].unwrap()));
        assert!(v[4].unwrap().is_nan());
        assert_eq!(v[5], Some(f64::INFINITY));
        assert!(parse_values("_x").is_err());
        assert!(parse_values("1x").is_err());
        assert!(parse_values("1+1").is_err());
        assert!(parse_values("stalex3").is_err());
        assert!(parse_values("foo").is_err());
        assert!(parse_values("0xAB").is_err());
        assert!(parse_values("").unwrap().is_empty());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("0"), Ok(0));
        assert_eq!(parse_duration_ms("0s"), Ok(0));
        assert_eq!(parse_duration_ms("10s"), Ok(10_000));
        assert_eq!(parse_duration_ms("1m"), Ok(60_000));
        assert_eq!(parse_duration_ms("1h30m"), Ok(5_400_000));
        assert_eq!(parse_duration_ms("10s53ms"), Ok(10_053));
        assert_eq!(parse_duration_ms("20s500ms"), Ok(20_500));
        assert_eq!(parse_duration_ms("1d"), Ok(86_400_000));
        assert_eq!(parse_duration_ms("2w"), Ok(14 * 86_400_000));
        assert_eq!(parse_duration_ms("1y"), Ok(365 * 86_400_000));
        assert_eq!(parse_duration_ms("5m0s"), Ok(300_000));
        assert!(parse_duration_ms("").is_err());
        assert!(parse_duration_ms("10").is_err());
        assert!(parse_duration_ms("1m1h").is_err());
        assert!(parse_duration_ms("1m1m").is_err());
        assert!(parse_duration_ms("-1m").is_err());
        assert!(parse_duration_ms("1x").is_err());
    }

    #[test]
    fn numbers_like_go() {
        assert_eq!(parse_go_number("3000"), Some(3000.0));
        assert_eq!(parse_go_number("-5"), Some(-5.0));
        assert_eq!(parse_go_number("0x1F"), Some(31.0));
        assert_eq!(parse_go_number("010"), Some(8.0));
        assert_eq!(parse_go_number("1_000"), Some(1000.0));
        assert_eq!(parse_go_number("0.00001234"), Some(0.00001234));
        assert_eq!(parse_go_number("-0.0000002"), Some(-0.0000002));
        assert_eq!(parse_go_number("1e3"), Some(1000.0));
        assert_eq!(parse_go_number("+Inf"), Some(f64::INFINITY));
        assert_eq!(parse_go_number("-Inf"), Some(f64::NEG_INFINITY));
        assert!(parse_go_number("NaN").unwrap().is_nan());
        assert_eq!(parse_go_number("foo"), None);
        assert_eq!(parse_go_number("{} 1"), None);
        assert_eq!(parse_go_number("metric 1"), None);
    }

    #[test]
    fn label_sets() {
        let (l, rest) = parse_metric(r#"foo{a="1", b='x'} 1 2"#).unwrap();
        assert_eq!(l.metric_name(), Some("foo"));
        assert_eq!(l.get("a"), Some("1"));
        assert_eq!(l.get("b"), Some("x"));
        assert_eq!(rest, " 1 2");
        // Escapes and separators inside values.
        let (l, _) = parse_metric(r#"{job="a\"b\\c\n", x="{count:2, sum:[1,2)}"}"#).unwrap();
        assert_eq!(l.get("job"), Some("a\"b\\c\n"));
        assert_eq!(l.get("x"), Some("{count:2, sum:[1,2)}"));
        assert_eq!(l.metric_name(), None);
        // Backticks are raw.
        let (l, _) = parse_metric(r#"m{a=`x\ny`}"#).unwrap();
        assert_eq!(l.get("a"), Some("x\\ny"));
        // Quoted (UTF-8) metric and label names; trailing comma.
        let (l, _) = parse_metric(r#"{"my.metric", "label.one"="v", a="b",}"#).unwrap();
        assert_eq!(l.metric_name(), Some("my.metric"));
        assert_eq!(l.get("label.one"), Some("v"));
        // __name__ spelled out, metric names with colons.
        let (l, _) = parse_metric(r#"{__name__="x", a="b"}"#).unwrap();
        assert_eq!(l.metric_name(), Some("x"));
        let (l, _) = parse_metric("job:rate5m:sum{a=\"b\"}").unwrap();
        assert_eq!(l.metric_name(), Some("job:rate5m:sum"));
        let (l, rest) = parse_metric("some_metric{}").unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!(rest, "");
        assert!(parse_metric(r#"{a="1"#).is_err());
        assert!(parse_metric(r#"{a=1}"#).is_err());
        assert!(parse_metric(r#"foo{"x"}"#).is_err());
    }

    #[test]
    fn series_lines() {
        let (l, p) = parse_series_line(r#"http_requests{job="api"} 0+10x2 _ stale"#).unwrap();
        assert_eq!(l.get("job"), Some("api"));
        match p {
            SeriesPoints::Floats(v) => assert_eq!(v.len(), 5),
            _ => panic!(),
        }
        let (_, p) = parse_series_line("h {{schema:1 sum:3 count:22 buckets:[5 10 7]}} 1").unwrap();
        assert!(matches!(p, SeriesPoints::NativeHistogram));
        assert!(parse_series_line("foo{a=\"b\"}1").is_err());
    }

    #[test]
    fn expect_lines() {
        assert!(matches!(
            parse_expect("expect fail"),
            Ok(("fail", TextMatch::Any))
        ));
        match parse_expect("expect fail msg:invalid label name \"a\"") {
            Ok(("fail", TextMatch::Exact(m))) => assert_eq!(m, "invalid label name \"a\""),
            other => panic!("{other:?}"),
        }
        match parse_expect("expect warn msg: PromQL warning: x (1:6)") {
            Ok(("warn", TextMatch::Exact(m))) => assert_eq!(m, "PromQL warning: x (1:6)"),
            other => panic!("{other:?}"),
        }
        match parse_expect(r"expect info regex: fixed for monotonicity .* \(1:21\)") {
            Ok(("info", TextMatch::Regex(p))) => {
                assert!(p.is_match("PromQL info: fixed for monotonicity foo (1:21) tail"));
                assert!(!p.is_match("fixed for monotonicity (1:22)"));
            }
            other => panic!("{other:?}"),
        }
        match parse_expect("expect fail regex: conflicting label") {
            Ok(("fail", TextMatch::Regex(p))) => assert!(p.is_match("x: conflicting label: y")),
            other => panic!("{other:?}"),
        }
        for k in ["ordered", "no_warn", "no_info", "warn", "info"] {
            assert_eq!(parse_expect(&format!("expect {k}")).unwrap().0, k);
        }
        assert!(parse_expect("expect bogus").is_err());
        assert!(parse_expect("expect fail message: x").is_err());
        assert_eq!(
            parse_expect_range("expect range vector from 10s to 1m step 10s"),
            Ok((10_000, 60_000, 10_000))
        );
        assert!(parse_expect_range("expect range vector from 1m to 10s step 10s").is_err());
    }

    #[test]
    fn script_structure() {
        let text = r#"
# comment
load 5m
    http_requests{job="api"} 0+10x10
    hist {{schema:0 sum:1 count:1}}
	other 1 _ 3

eval instant at 50m sum(http_requests)
    expect no_warn
    {} 100

eval range from 0 to 10m step 5m http_requests
  {__name__="http_requests", job="api"} 0 10 20

eval_fail instant at 0 foo(

eval_ordered instant at 1m sort(x)
  expect warn msg: hello
  x{a="1"} 1
  x{a="2"} 2

eval instant at 50m ("Foo")
	expect string `Foo`

eval instant at 1m some_metric[1m]
  expect range vector from 10s to 1m step 10s
  some_metric{env="a"} 2 3 4 5 6

eval instant at 0 1 + 1
  2

clear
bogus line
"#;
        let (cmds, errors) = parse_script(text);
        assert_eq!(
            errors,
            vec![ScriptError {
                line: 33,
                msg: "invalid command \"bogus line\"".into()
            }]
        );
        let Command::Load(load) = &cmds[0] else {
            panic!()
        };
        assert_eq!(load.line, 3);
        assert_eq!(load.interval_ms, 300_000);
        assert_eq!(load.series.len(), 3);
        assert!(matches!(
            load.series[1].points,
            SeriesPoints::NativeHistogram
        ));
        let Command::Eval(e) = &cmds[1] else { panic!() };
        assert_eq!(e.line, 8);
        assert_eq!(e.expr, "sum(http_requests)");
        assert_eq!(e.kind, EvalKind::Instant { at_ms: 3_000_000 });
        assert!(e.warn.forbidden);
        assert_eq!(e.expected.len(), 1);
        assert!(e.expected[0].labels.is_empty());
        let Command::Eval(e) = &cmds[2] else { panic!() };
        assert_eq!(
            e.kind,
            EvalKind::Range {
                start_ms: 0,
                end_ms: 600_000,
                step_ms: 300_000
            }
        );
        assert_eq!(e.expected[0].labels.metric_name(), Some("http_requests"));
        assert_eq!(e.expected[0].values.len(), 3);
        let Command::Eval(e) = &cmds[3] else { panic!() };
        assert!(e.fail.is_some());
        assert_eq!(e.expr, "foo(");
        assert!(e.problems.is_empty());
        let Command::Eval(e) = &cmds[4] else { panic!() };
        assert_eq!(e.expr, "sort(x)");
        assert!(e.ordered);
        let Command::Eval(e) = &cmds[5] else { panic!() };
        assert_eq!(e.expected_string.as_deref(), Some("Foo"));
        let Command::Eval(e) = &cmds[6] else { panic!() };
        assert_eq!(e.range_vector, Some((10_000, 60_000, 10_000)));
        assert_eq!(e.expected[0].values.len(), 5);
        assert!(e.problems.is_empty());
        let Command::Eval(e) = &cmds[7] else { panic!() };
        assert_eq!(e.expected_scalar, Some(2.0));
        assert!(matches!(cmds[8], Command::Clear { line: 32 }));
        // A block runs to the next blank line, as in test.go: an eval line
        // right after another eval's lines is taken as a (bad) result line.
        let (cmds, _) = parse_script("eval instant at 0 a\neval instant at 0 b\n");
        assert_eq!(cmds.len(), 1);
        let Command::Eval(e) = &cmds[0] else { panic!() };
        assert_eq!(e.problems.len(), 1);
    }

    #[test]
    fn start_timestamp_lines() {
        let text = "load 1m\n  cumulative{type=\"st\"}@st  _ _ -30s-1mx2\n  cumulative{type=\"st\"} _ _ 0+60x2\n  other 1\n";
        let (cmds, errors) = parse_script(text);
        assert!(errors.is_empty(), "{errors:?}");
        let Command::Load(load) = &cmds[0] else {
            panic!()
        };
        assert_eq!(load.series.len(), 2);
        assert_eq!(load.start_timestamps.len(), 1);
        assert_eq!(load.start_timestamps[0].1.get("type"), Some("st"));
        let (cmds, _) = parse_script("load 1m\n  @st _ -1m\n  x 1 2\n");
        let Command::Load(load) = &cmds[0] else {
            panic!()
        };
        assert!(load.default_start_timestamps);
    }

    #[test]
    fn instant_evals_reject_several_values() {
        let (cmds, _) = parse_script("eval instant at 1m x\n  x 1 2\n");
        let Command::Eval(e) = &cmds[0] else { panic!() };
        assert_eq!(e.problems.len(), 1);
    }

    #[test]
    fn experimental_detection() {
        let f = |s: &str| experimental_constructs(s);
        assert!(f("sum(rate(foo[5m])) by (job)").is_empty());
        assert!(f("foo[5m:1m] offset -5m @ start()").is_empty());
        assert!(f("foo @ end()").is_empty());
        assert!(f(r#"foo{a=~"[a-z]+(x)"}"#).is_empty());
        assert!(f("node_namespace_pod:kube_pod_info:{a=\"b\"}").is_empty());
        assert_eq!(f("limitk(2, foo)"), vec!["limitk aggregation"]);
        assert_eq!(
            f("limit_ratio by (a) (0.5, foo)"),
            vec!["limit_ratio aggregation"]
        );
        assert_eq!(f("a + fill(0) b"), vec!["fill modifiers"]);
        assert_eq!(f("a + on(x) fill_left(1) b"), vec!["fill modifiers"]);
        let anchored = "anchored modifier (extended range selectors)";
        let smoothed = "smoothed modifier (extended range selectors)";
        assert_eq!(f("rate(foo[5m] anchored)"), vec![anchored]);
        assert_eq!(f("increase(foo[5m] smoothed)"), vec![smoothed]);
        assert_eq!(f("metric smoothed"), vec![smoothed]);
        assert_eq!(f("metric @ 100 smoothed + 0"), vec![smoothed]);
        assert_eq!(f("metric{a=\"b\"} offset -100 anchored"), vec![anchored]);
        assert!(f("smoothed + anchored").is_empty());
        assert!(f("smoothed_mix * on(a) smoothed").is_empty());
        assert!(uses_trim_operators("h >/ 10.0"));
        assert!(uses_trim_operators("histogram_count(h </ -1)"));
        assert!(!uses_trim_operators("a < b / c"));
        assert!(!uses_trim_operators("a{b=\"</\"}"));
        assert_eq!(f("foo[5m+1m]"), vec!["duration expressions"]);
        assert_eq!(f("foo[step()]"), vec!["duration expressions"]);
        assert_eq!(f("foo offset (1m * 2)"), vec!["duration expressions"]);
        assert_eq!(f("step()"), vec!["duration expressions"]);
        assert_eq!(f("foo[min_of(step(), 1h)]"), vec!["duration expressions"]);
        assert_eq!(f("start_timestamp(foo)"), vec!["start_timestamp()"]);
        assert_eq!(f("info(foo)"), vec!["info()"]);
        assert_eq!(f("sort_by_label(foo, \"a\")"), vec!["sort_by_label()"]);
        assert_eq!(f("mad_over_time(foo[5m])"), vec!["mad_over_time()"]);
        // A metric that happens to be named like a function is fine.
        assert!(f("info + step").is_empty());
    }

    #[test]
    fn tolerance() {
        assert!(almost_equal(1.0, 1.0 + 1e-9));
        assert!(!almost_equal(1.0, 1.001));
        assert!(almost_equal(f64::NAN, f64::NAN));
        assert!(!almost_equal(f64::NAN, stale_nan()));
        assert!(almost_equal(stale_nan(), stale_nan()));
        assert!(almost_equal(f64::INFINITY, f64::INFINITY));
        assert!(!almost_equal(f64::INFINITY, f64::NEG_INFINITY));
        assert!(!almost_equal(f64::INFINITY, f64::MAX));
        assert!(!almost_equal(0.0, 1e-300));
        assert!(almost_equal(0.0, -0.0));
    }

    #[test]
    fn nhcb_derivation() {
        let l = Labels::new([("__name__", "req_bucket"), ("le", "+Inf"), ("job", "a")]).unwrap();
        let n = nhcb_labels(&l).unwrap();
        assert_eq!(n.metric_name(), Some("req"));
        assert_eq!(n.get("le"), None);
        assert_eq!(n.get("job"), Some("a"));
        let l = Labels::new([("__name__", "req_count")]).unwrap();
        assert_eq!(nhcb_labels(&l).unwrap().metric_name(), Some("req"));
        let l = Labels::new([("__name__", "req_total")]).unwrap();
        assert!(nhcb_labels(&l).is_none());
    }

    #[test]
    fn at_variant_rewrite() {
        let ast = promql_parser::parser::parse("sum(rate(foo[5m])) + bar @ start()").unwrap();
        let AtVariants::Cases(c) = at_variants(&ast, 100_000) else {
            panic!()
        };
        assert_eq!(c.len(), 5);
        assert!(c[0].0.contains("foo[5m] @ 100.000"), "{}", c[0].0);
        assert!(c[0].0.contains("bar @ 100.000"), "{}", c[0].0);
        assert_eq!(
            c.iter().map(|x| x.1).collect::<Vec<_>>(),
            vec![-1_000_000, 0, 20_000, 100_000, 1_000_000]
        );
        let ast = promql_parser::parser::parse("foo").unwrap();
        let AtVariants::Cases(c) = at_variants(&ast, 0) else {
            panic!()
        };
        assert_eq!(
            c.iter().map(|x| x.1).collect::<Vec<_>>(),
            vec![-1000, 0, 1000]
        );
        let ast = promql_parser::parser::parse("time() + foo").unwrap();
        assert!(matches!(at_variants(&ast, 1000), AtVariants::Unsafe));
        // Inside a subquery nothing is touched, unsafe calls included.
        let ast = promql_parser::parser::parse("max_over_time(timestamp(foo)[5m:1m])").unwrap();
        let AtVariants::Cases(c) = at_variants(&ast, 60_000) else {
            panic!()
        };
        assert!(c[0].0.contains("[5m:1m] @ 60.000"), "{}", c[0].0);
    }

    #[test]
    fn markdown_escapes() {
        assert_eq!(md_code("a`b"), "``a`b``");
        assert_eq!(md_code("x"), "`x`");
        assert_eq!(md_text("a|b<c>"), "a\\|b&lt;c&gt;");
    }
}
