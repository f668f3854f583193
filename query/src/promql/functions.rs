//! PromQL functions over float samples (Prometheus 3.x `promql/functions.go`
//! semantics). Native-histogram functions answer with no samples, as they
//! do in Prometheus for float input.

use super::QueryError;
use super::eval::{
    Ctx, Grid, R, RangeVal, Series, Val, absent_labels, bad_quantile, drop_name, eval, eval_scalar,
    eval_selector, eval_vector, format_float, kahan_inc, merge_same_labels, quantile,
    valid_label_name,
};
use chrono::{Datelike, TimeZone, Timelike, Utc};
use meshlens_storage::samples::{Labels, Summary};
use promql_parser::parser::{Call, Expr};
use std::collections::HashMap;

/// Evaluates a function call.
pub fn call(ctx: &Ctx, c: &Call, grid: &Grid) -> R<Val> {
    let name = c.func.name;
    let args: Vec<&Expr> = c.args.args.iter().map(|a| a.as_ref()).collect();
    let n = grid.n;
    let out = match name {
        // ---- scalars and constants
        "time" => {
            return Ok(Val::Scalar(
                (0..n).map(|i| grid.t(i) as f64 / 1000.0).collect(),
            ));
        }
        "pi" => return Ok(Val::Scalar(vec![std::f64::consts::PI; n])),
        "scalar" => {
            let v = eval_vector(ctx, args[0], grid)?;
            let vals = (0..n)
                .map(|i| {
                    let mut it = v.iter().filter_map(|s| s.vals[i]);
                    match (it.next(), it.next()) {
                        (Some(x), None) => x,
                        _ => f64::NAN,
                    }
                })
                .collect();
            return Ok(Val::Scalar(vals));
        }
        "vector" => {
            let s = eval_scalar(ctx, args[0], grid)?;
            vec![Series {
                labels: Labels::default(),
                vals: s.into_iter().map(Some).collect(),
            }]
        }
        // ---- range functions
        "rate" | "increase" | "delta" => {
            let counter = name != "delta";
            let is_rate = name == "rate";
            if let Some((sums, end, range)) = summaries(ctx, args[0], grid)? {
                if counter {
                    counter_info_of(ctx, sums.iter().map(|s| &s.0), name);
                }
                sums.into_iter()
                    .filter_map(|(l, s)| {
                        let v = extrapolated_rate_of(&s, end, range, counter, is_rate)?;
                        Some(Series {
                            labels: drop_name(&l),
                            vals: vec![Some(v)],
                        })
                    })
                    .collect()
            } else {
                let rv = eval_range(ctx, args[0], grid)?;
                if counter {
                    counter_info(ctx, &rv, name);
                }
                range_fn(ctx, &rv, false, |ts, vs, end, range, _| {
                    extrapolated_rate(ts, vs, end - range, end, range, counter, is_rate)
                })?
            }
        }
        "irate" | "idelta" => {
            let rv = eval_range(ctx, args[0], grid)?;
            let is_rate = name == "irate";
            range_fn(ctx, &rv, false, |ts, vs, _, _, _| {
                let l = ts.len();
                if l < 2 {
                    return None;
                }
                let (t0, t1, v0, v1) = (ts[l - 2], ts[l - 1], vs[l - 2], vs[l - 1]);
                let mut r = v1;
                if !is_rate || v1 >= v0 || v1.is_nan() || v0.is_nan() {
                    r = v1 - v0;
                }
                if is_rate {
                    r /= (t1 - t0) as f64 / 1000.0;
                }
                Some(r)
            })?
        }
        "deriv" => {
            let rv = eval_range(ctx, args[0], grid)?;
            range_fn(ctx, &rv, false, |ts, vs, _, _, _| {
                (ts.len() >= 2).then(|| linear_regression(ts, vs, ts[0]).0)
            })?
        }
        "predict_linear" => {
            let rv = eval_range(ctx, args[0], grid)?;
            let d = eval_scalar(ctx, args[1], grid)?;
            range_fn(ctx, &rv, false, |ts, vs, _, _, i| {
                (ts.len() >= 2).then(|| {
                    let (slope, intercept) = linear_regression(ts, vs, grid.t(i));
                    slope * d[i] + intercept
                })
            })?
        }
        "changes" | "resets" => {
            let rv = eval_range(ctx, args[0], grid)?;
            let resets = name == "resets";
            range_fn(ctx, &rv, false, |_, vs, _, _, _| {
                let mut c = 0.0;
                for w in vs.windows(2) {
                    let (p, q) = (w[0], w[1]);
                    if resets {
                        if q < p {
                            c += 1.0;
                        }
                    } else if !(p == q || (p.is_nan() && q.is_nan())) {
                        c += 1.0;
                    }
                }
                Some(c)
            })?
        }
        "avg_over_time" => over_time(ctx, args[0], grid, false, avg)?,
        "sum_over_time" => over_time(ctx, args[0], grid, false, |v| {
            let (mut s, mut c) = (0.0, 0.0);
            for &x in v {
                (s, c) = kahan_inc(x, s, c);
            }
            s + c
        })?,
        "count_over_time" | "present_over_time" | "last_over_time"
            if let Some((sums, _, _)) = summaries(ctx, args[0], grid)? =>
        {
            sums.into_iter()
                .map(|(l, s)| Series {
                    labels: if name == "last_over_time" {
                        l
                    } else {
                        drop_name(&l)
                    },
                    vals: vec![Some(match name {
                        "count_over_time" => s.count as f64,
                        "present_over_time" => 1.0,
                        _ => s.last_v,
                    })],
                })
                .collect()
        }
        "count_over_time" => over_time(ctx, args[0], grid, false, |v| v.len() as f64)?,
        "present_over_time" => over_time(ctx, args[0], grid, false, |_| 1.0)?,
        "last_over_time" => over_time(ctx, args[0], grid, true, |v| v[v.len() - 1])?,
        "first_over_time" => over_time(ctx, args[0], grid, true, |v| v[0])?,
        "min_over_time" => over_time(ctx, args[0], grid, false, |v| {
            let mut m = v[0];
            for &x in &v[1..] {
                if x < m || m.is_nan() {
                    m = x;
                }
            }
            m
        })?,
        "max_over_time" => over_time(ctx, args[0], grid, false, |v| {
            let mut m = v[0];
            for &x in &v[1..] {
                if x > m || m.is_nan() {
                    m = x;
                }
            }
            m
        })?,
        "stddev_over_time" => over_time(ctx, args[0], grid, false, |v| stdvar(v).sqrt())?,
        "stdvar_over_time" => over_time(ctx, args[0], grid, false, stdvar)?,
        "mad_over_time" => over_time(ctx, args[0], grid, false, |v| {
            if v.iter().any(|x| x.is_nan()) {
                return f64::NAN;
            }
            let mut buf = v.to_vec();
            let median = quantile(0.5, &mut buf);
            let mut dev: Vec<f64> = v.iter().map(|x| (x - median).abs()).collect();
            quantile(0.5, &mut dev)
        })?,
        "ts_of_min_over_time"
        | "ts_of_max_over_time"
        | "ts_of_last_over_time"
        | "ts_of_first_over_time" => {
            let rv = eval_range(ctx, args[0], grid)?;
            range_fn(ctx, &rv, false, |ts, vs, _, _, _| {
                let l = ts.len();
                if l == 0 {
                    return None;
                }
                let idx = match name {
                    "ts_of_last_over_time" => l - 1,
                    "ts_of_first_over_time" => 0,
                    _ => {
                        let max = name == "ts_of_max_over_time";
                        let mut best = 0;
                        for k in 1..l {
                            let (b, x) = (vs[best], vs[k]);
                            let better = if max { x >= b } else { x <= b };
                            if better || b.is_nan() {
                                best = k;
                            }
                        }
                        best
                    }
                };
                Some(ts[idx] as f64 / 1000.0)
            })?
        }
        "quantile_over_time" => {
            let q = eval_scalar(ctx, args[0], grid)?;
            let rv = eval_range(ctx, args[1], grid)?;
            if let Some(bad) = bad_quantile(&q) {
                ctx.warn(ctx.at_arg(
                    format!(
                        "PromQL warning: quantile value should be between 0 and 1, got {}",
                        format_float(bad)
                    ),
                    name,
                    0,
                ));
            }
            let mut buf = Vec::new();
            range_fn(ctx, &rv, false, |_, vs, _, _, i| {
                if vs.is_empty() {
                    return None;
                }
                buf.clear();
                buf.extend_from_slice(vs);
                Some(quantile(q[i], &mut buf))
            })?
        }
        "double_exponential_smoothing" | "holt_winters" => {
            let rv = eval_range(ctx, args[0], grid)?;
            let sf = eval_scalar(ctx, args[1], grid)?;
            let tf = eval_scalar(ctx, args[2], grid)?;
            for i in 0..n {
                if !(sf[i] > 0.0 && sf[i] < 1.0) {
                    return Err(QueryError::execution(format!(
                        "invalid smoothing factor. Expected: 0 < sf < 1, got: {:.6}",
                        sf[i]
                    )));
                }
                if !(tf[i] > 0.0 && tf[i] < 1.0) {
                    return Err(QueryError::execution(format!(
                        "invalid trend factor. Expected: 0 < tf < 1, got: {:.6}",
                        tf[i]
                    )));
                }
            }
            range_fn(ctx, &rv, false, |_, vs, _, _, i| des(vs, sf[i], tf[i]))?
        }
        "absent_over_time" => {
            let rv = eval_range(ctx, args[0], grid)?;
            let vals: Vec<Option<f64>> = rv
                .ends
                .iter()
                .map(|&e| {
                    let any = rv.series.iter().any(|s| {
                        let (lo, hi) = s.window(e, rv.range_ms);
                        lo < hi
                    });
                    (!any).then_some(1.0)
                })
                .collect();
            if vals.iter().any(|v| v.is_some()) {
                vec![Series {
                    labels: rv.absent_labels.clone(),
                    vals,
                }]
            } else {
                Vec::new()
            }
        }
        // ---- instant-vector functions
        "absent" => {
            let v = eval_vector(ctx, args[0], grid)?;
            let vals: Vec<Option<f64>> = (0..n)
                .map(|i| (!v.iter().any(|s| s.vals[i].is_some())).then_some(1.0))
                .collect();
            if vals.iter().any(|v| v.is_some()) {
                let labels = match unparen(args[0]) {
                    Expr::VectorSelector(vs) => absent_labels(vs),
                    _ => Labels::default(),
                };
                vec![Series { labels, vals }]
            } else {
                Vec::new()
            }
        }
        "timestamp" => match unparen(args[0]) {
            Expr::VectorSelector(vs) => eval_selector(ctx, vs, grid, true)?
                .into_iter()
                .map(|s| Series {
                    labels: drop_name(&s.labels),
                    vals: s.vals,
                })
                .collect(),
            e => eval_vector(ctx, e, grid)?
                .into_iter()
                .map(|s| Series {
                    labels: drop_name(&s.labels),
                    vals: s
                        .vals
                        .iter()
                        .enumerate()
                        .map(|(i, v)| v.map(|_| grid.t(i) as f64 / 1000.0))
                        .collect(),
                })
                .collect(),
        },
        "abs" => map(ctx, args[0], grid, f64::abs)?,
        "ceil" => map(ctx, args[0], grid, f64::ceil)?,
        "floor" => map(ctx, args[0], grid, f64::floor)?,
        "exp" => map(ctx, args[0], grid, f64::exp)?,
        "sqrt" => map(ctx, args[0], grid, f64::sqrt)?,
        "ln" => map(ctx, args[0], grid, f64::ln)?,
        "log2" => map(ctx, args[0], grid, f64::log2)?,
        "log10" => map(ctx, args[0], grid, f64::log10)?,
        "sgn" => map(ctx, args[0], grid, |x| {
            if x > 0.0 {
                1.0
            } else if x < 0.0 {
                -1.0
            } else {
                x
            }
        })?,
        "sin" => map(ctx, args[0], grid, f64::sin)?,
        "cos" => map(ctx, args[0], grid, f64::cos)?,
        "tan" => map(ctx, args[0], grid, f64::tan)?,
        "asin" => map(ctx, args[0], grid, f64::asin)?,
        "acos" => map(ctx, args[0], grid, f64::acos)?,
        "atan" => map(ctx, args[0], grid, f64::atan)?,
        "sinh" => map(ctx, args[0], grid, f64::sinh)?,
        "cosh" => map(ctx, args[0], grid, f64::cosh)?,
        "tanh" => map(ctx, args[0], grid, f64::tanh)?,
        "asinh" => map(ctx, args[0], grid, f64::asinh)?,
        "acosh" => map(ctx, args[0], grid, f64::acosh)?,
        "atanh" => map(ctx, args[0], grid, f64::atanh)?,
        "deg" => map(ctx, args[0], grid, |x| x * 180.0 / std::f64::consts::PI)?,
        "rad" => map(ctx, args[0], grid, |x| x * std::f64::consts::PI / 180.0)?,
        "round" => {
            let to = if args.len() > 1 {
                eval_scalar(ctx, args[1], grid)?
            } else {
                vec![1.0; n]
            };
            map_i(ctx, args[0], grid, |x, i| {
                let inv = 1.0 / to[i];
                (x * inv + 0.5).floor() / inv
            })?
        }
        "clamp" => {
            let lo = eval_scalar(ctx, args[1], grid)?;
            let hi = eval_scalar(ctx, args[2], grid)?;
            let v = eval_vector(ctx, args[0], grid)?;
            v.into_iter()
                .filter_map(|s| {
                    let vals: Vec<Option<f64>> = s
                        .vals
                        .iter()
                        .enumerate()
                        .map(|(i, v)| {
                            let (l, h) = (lo[i], hi[i]);
                            if l > h {
                                return None;
                            }
                            v.map(|x| go_max(l, go_min(h, x)))
                        })
                        .collect();
                    vals.iter().any(|v| v.is_some()).then(|| Series {
                        labels: drop_name(&s.labels),
                        vals,
                    })
                })
                .collect()
        }
        "clamp_min" => {
            let lo = eval_scalar(ctx, args[1], grid)?;
            map_i(ctx, args[0], grid, |x, i| go_max(x, lo[i]))?
        }
        "clamp_max" => {
            let hi = eval_scalar(ctx, args[1], grid)?;
            map_i(ctx, args[0], grid, |x, i| go_min(x, hi[i]))?
        }
        "day_of_month" | "day_of_week" | "day_of_year" | "days_in_month" | "hour" | "minute"
        | "month" | "year" => {
            let input = if args.is_empty() {
                vec![Series {
                    labels: Labels::default(),
                    vals: (0..n).map(|i| Some(grid.t(i) as f64 / 1000.0)).collect(),
                }]
            } else {
                eval_vector(ctx, args[0], grid)?
            };
            input
                .into_iter()
                .map(|s| Series {
                    labels: drop_name(&s.labels),
                    vals: s
                        .vals
                        .iter()
                        .map(|v| v.map(|x| date_part(name, x)))
                        .collect(),
                })
                .collect()
        }
        "sort" | "sort_desc" => {
            let mut v = eval_vector(ctx, args[0], grid)?;
            sort_in_range_warning(ctx, name, grid);
            if n == 1 {
                let desc = name == "sort_desc";
                v.sort_by(|a, b| {
                    let (x, y) = (a.vals[0].unwrap_or(f64::NAN), b.vals[0].unwrap_or(f64::NAN));
                    match (x.is_nan(), y.is_nan()) {
                        (true, true) => std::cmp::Ordering::Equal,
                        (true, false) => std::cmp::Ordering::Greater,
                        (false, true) => std::cmp::Ordering::Less,
                        _ => {
                            let o = x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal);
                            if desc { o.reverse() } else { o }
                        }
                    }
                });
            }
            return Ok(Val::Vector(v));
        }
        "sort_by_label" | "sort_by_label_desc" => {
            let mut v = eval_vector(ctx, args[0], grid)?;
            sort_in_range_warning(ctx, name, grid);
            let mut names = Vec::new();
            for a in &args[1..] {
                names.push(string_arg(ctx, a, grid)?);
            }
            let desc = name == "sort_by_label_desc";
            v.sort_by(|a, b| {
                for l in &names {
                    let (x, y) = (a.labels.get(l).unwrap_or(""), b.labels.get(l).unwrap_or(""));
                    if x != y {
                        let o = natural_cmp(x, y);
                        return if desc { o.reverse() } else { o };
                    }
                }
                let o = a.labels.cmp(&b.labels);
                if desc { o.reverse() } else { o }
            });
            return Ok(Val::Vector(v));
        }
        "label_replace" => {
            let v = eval_vector(ctx, args[0], grid)?;
            let dst = string_arg(ctx, args[1], grid)?;
            let repl = string_arg(ctx, args[2], grid)?;
            let src = string_arg(ctx, args[3], grid)?;
            let re_s = string_arg(ctx, args[4], grid)?;
            let re = regex::Regex::new(&format!("^(?s:{re_s})$")).map_err(|e| {
                QueryError::execution(format!(
                    "invalid regular expression in label_replace(): {re_s}: {e}"
                ))
            })?;
            if !valid_label_name(&dst) {
                return Err(QueryError::execution(format!(
                    "invalid destination label name in label_replace(): {dst}"
                )));
            }
            let out: Vec<Series> = v
                .into_iter()
                .map(|s| {
                    let sv = s.labels.get(&src).unwrap_or("");
                    let labels = match re.captures(sv) {
                        Some(caps) => {
                            let mut res = String::new();
                            caps.expand(&repl, &mut res);
                            s.labels.with(&dst, &res)
                        }
                        None => s.labels.clone(),
                    };
                    Series {
                        labels,
                        vals: s.vals,
                    }
                })
                .collect();
            return Ok(Val::Vector(merge_same_labels(out, n)?));
        }
        "label_join" => {
            let v = eval_vector(ctx, args[0], grid)?;
            let dst = string_arg(ctx, args[1], grid)?;
            let sep = string_arg(ctx, args[2], grid)?;
            let mut srcs = Vec::new();
            for a in &args[3..] {
                let s = string_arg(ctx, a, grid)?;
                if !valid_label_name(&s) {
                    return Err(QueryError::execution(format!(
                        "invalid source label name in label_join(): {s}"
                    )));
                }
                srcs.push(s);
            }
            if !valid_label_name(&dst) {
                return Err(QueryError::execution(format!(
                    "invalid destination label name in label_join(): {dst}"
                )));
            }
            let out: Vec<Series> = v
                .into_iter()
                .map(|s| {
                    let joined = srcs
                        .iter()
                        .map(|l| s.labels.get(l).unwrap_or(""))
                        .collect::<Vec<_>>()
                        .join(&sep);
                    Series {
                        labels: s.labels.with(&dst, &joined),
                        vals: s.vals,
                    }
                })
                .collect();
            return Ok(Val::Vector(merge_same_labels(out, n)?));
        }
        "histogram_quantile" => {
            let q = eval_scalar(ctx, args[0], grid)?;
            let v = eval_vector(ctx, args[1], grid)?;
            histogram_quantile(ctx, &q, v, n)?
        }
        "histogram_fraction" => {
            let lo = eval_scalar(ctx, args[0], grid)?;
            let hi = eval_scalar(ctx, args[1], grid)?;
            let v = eval_vector(ctx, args[2], grid)?;
            histogram_fraction(ctx, &lo, &hi, v, n)?
        }
        "histogram_count" | "histogram_sum" | "histogram_avg" | "histogram_stddev"
        | "histogram_stdvar" => {
            // Only native histograms have these; float samples give nothing.
            let _ = eval_vector(ctx, args[0], grid)?;
            Vec::new()
        }
        other => {
            return Err(QueryError::bad_data(format!(
                "function {other:?} is not supported by meshlens (experimental or native-histogram only)"
            )));
        }
    };
    Ok(Val::Vector(merge_same_labels(out, n)?))
}

fn sort_in_range_warning(ctx: &Ctx, name: &str, grid: &Grid) {
    if grid.n > 1 {
        let msg = "PromQL warning: sort is ineffective for range queries since results are always ordered by labels".to_string();
        // Prometheus points at the call itself.
        let pos = super::eval::call_position(ctx.query, name);
        ctx.warn(match pos {
            Some(p) => format!("{msg} ({p})"),
            None => msg,
        });
    }
}

fn unparen(e: &Expr) -> &Expr {
    match e {
        Expr::Paren(p) => unparen(&p.expr),
        e => e,
    }
}

fn string_arg(ctx: &Ctx, e: &Expr, grid: &Grid) -> R<String> {
    match eval(ctx, e, grid)? {
        Val::Str(s) => Ok(s),
        _ => Err(QueryError::bad_data("expected a string argument")),
    }
}

fn eval_range(ctx: &Ctx, e: &Expr, grid: &Grid) -> R<RangeVal> {
    match eval(ctx, e, grid)? {
        Val::Range(r) => Ok(r),
        _ => Err(QueryError::bad_data("expected a range vector argument")),
    }
}

/// Applies `f(timestamps, values, window end, range, step)` to every
/// window of every series.
fn range_fn(
    ctx: &Ctx,
    rv: &RangeVal,
    keep_name: bool,
    mut f: impl FnMut(&[i64], &[f64], i64, i64, usize) -> Option<f64>,
) -> R<Vec<Series>> {
    let mut out = Vec::with_capacity(rv.series.len());
    // Work per check: about a million samples visited.
    let mut budget: usize = 0;
    for s in &rv.series {
        let mut any = false;
        let mut vals: Vec<Option<f64>> = Vec::with_capacity(rv.ends.len());
        for (i, &e) in rv.ends.iter().enumerate() {
            let (lo, hi) = s.window(e, rv.range_ms);
            budget += hi - lo + 1;
            if budget > 1 << 20 {
                budget = 0;
                ctx.check_deadline()?;
            }
            if lo >= hi {
                vals.push(None);
                continue;
            }
            let v = f(&s.ts[lo..hi], &s.vs[lo..hi], e, rv.range_ms, i);
            any |= v.is_some();
            vals.push(v);
        }
        if any {
            out.push(Series {
                labels: if keep_name {
                    s.labels.clone()
                } else {
                    drop_name(&s.labels)
                },
                vals,
            });
        }
    }
    Ok(out)
}

fn over_time(
    ctx: &Ctx,
    arg: &Expr,
    grid: &Grid,
    keep_name: bool,
    f: impl Fn(&[f64]) -> f64,
) -> R<Vec<Series>> {
    let rv = eval_range(ctx, arg, grid)?;
    range_fn(ctx, &rv, keep_name, |_, vs, _, _, _| {
        (!vs.is_empty()).then(|| f(vs))
    })
}

/// rate()/increase() of a metric whose name does not look like a counter.
fn counter_info(ctx: &Ctx, rv: &RangeVal, func: &str) {
    counter_info_of(ctx, rv.series.iter().map(|s| &s.labels), func);
}

fn counter_info_of<'a>(ctx: &Ctx, labels: impl Iterator<Item = &'a Labels>, func: &str) {
    for l in labels {
        if let Some(n) = l.metric_name()
            && !(n.ends_with("_total")
                || n.ends_with("_sum")
                || n.ends_with("_count")
                || n.ends_with("_bucket"))
        {
            ctx.info(ctx.at_arg(
                    format!(
                        "PromQL info: metric might not be a counter, name does not end in _total/_sum/_count/_bucket: {n:?}"
                    ),
                    func,
                    0,
                ));
        }
    }
}

fn avg(v: &[f64]) -> f64 {
    let (mut sum, mut count) = (v[0], 1.0);
    let (mut mean, mut c) = (0.0, 0.0);
    let mut incremental = false;
    for (i, &f) in v[1..].iter().enumerate() {
        count = (i + 2) as f64;
        if !incremental {
            let (ns, nc) = kahan_inc(f, sum, c);
            if !ns.is_infinite() {
                sum = ns;
                c = nc;
                continue;
            }
            incremental = true;
            mean = sum / (count - 1.0);
            c /= count - 1.0;
        }
        let q = (count - 1.0) / count;
        (mean, c) = kahan_inc(f / count, q * mean, q * c);
    }
    if incremental {
        mean + c
    } else {
        sum / count + c / count
    }
}

fn stdvar(v: &[f64]) -> f64 {
    let (mut count, mut mean, mut cmean, mut aux, mut caux) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for &f in v {
        count += 1.0;
        let delta = f - (mean + cmean);
        (mean, cmean) = kahan_inc(delta / count, mean, cmean);
        (aux, caux) = kahan_inc(delta * (f - (mean + cmean)), aux, caux);
    }
    (aux + caux) / count
}

/// Prometheus's `extrapolatedRate`.
fn extrapolated_rate(
    ts: &[i64],
    vs: &[f64],
    range_start: i64,
    range_end: i64,
    range: i64,
    counter: bool,
    is_rate: bool,
) -> Option<f64> {
    if ts.len() < 2 {
        return None;
    }
    let last = ts.len() - 1;
    let mut result = vs[last] - vs[0];
    if counter {
        let mut prev = vs[0];
        for &cur in &vs[1..] {
            if cur < prev {
                result += prev;
            }
            prev = cur;
        }
    }
    extrapolate(
        ts.len(),
        (ts[0], vs[0]),
        ts[last],
        result,
        (range_start, range_end, range),
        counter,
        is_rate,
    )
}

/// `rate` (`is_rate`), `increase` (`counter`) or `delta` over the window
/// `(end - range, end]` from the summary of the samples in it.
pub fn extrapolated_rate_of(
    s: &Summary,
    end: i64,
    range: i64,
    counter: bool,
    is_rate: bool,
) -> Option<f64> {
    let result = if counter {
        s.counter_increase()
    } else {
        s.last_v - s.first_v
    };
    extrapolate(
        s.count as usize,
        (s.first_t, s.first_v),
        s.last_t,
        result,
        (end - range, end, range),
        counter,
        is_rate,
    )
}

/// The extrapolation of `extrapolatedRate`, from `count` samples whose
/// first is `first`, last at `last_t`, and whose (reset-corrected)
/// difference is `result`.
fn extrapolate(
    count: usize,
    first: (i64, f64),
    last_t: i64,
    result: f64,
    (range_start, range_end, range): (i64, i64, i64),
    counter: bool,
    is_rate: bool,
) -> Option<f64> {
    if count < 2 {
        return None;
    }
    let (first_t, first_v) = first;
    let mut to_start = (first_t - range_start) as f64 / 1000.0;
    let mut to_end = (range_end - last_t) as f64 / 1000.0;
    let sampled = (last_t - first_t) as f64 / 1000.0;
    let avg_between = sampled / (count - 1) as f64;
    let threshold = avg_between * 1.1;
    let mut interval = sampled;
    if to_start >= threshold {
        to_start = avg_between / 2.0;
    }
    if counter && result > 0.0 && first_v >= 0.0 {
        let to_zero = sampled * (first_v / result);
        if to_zero < to_start {
            to_start = to_zero;
        }
    }
    interval += to_start;
    if to_end >= threshold {
        to_end = avg_between / 2.0;
    }
    interval += to_end;
    let mut factor = interval / sampled;
    if is_rate {
        factor /= range as f64 / 1000.0;
    }
    Some(result * factor)
}

/// Range windows shorter than this are read raw: summaries pay off when a
/// window spans many per-minute cells.
pub const SUMMARY_MIN_RANGE_MS: i64 = 10 * 60_000;

/// Per-series summaries of one window, its end and its range (ms).
type Summaries = (Vec<(Labels, Summary)>, i64, i64);

/// For `f(selector[range])` evaluated at one instant over a long range: per
/// series, the summary of its samples in the window, with the window's end
/// and range. None when the argument is not a plain matrix selector, the
/// query has several steps or the range is short.
fn summaries(ctx: &Ctx, e: &Expr, grid: &Grid) -> R<Option<Summaries>> {
    let Expr::MatrixSelector(ms) = e else {
        return Ok(None);
    };
    let range = super::eval::dur_ms(&ms.range);
    if grid.n != 1 || range < SUMMARY_MIN_RANGE_MS || !ctx.opts.summaries {
        return Ok(None);
    }
    let end = super::eval::window_ends(ctx, grid, &ms.vs.at, &ms.vs.offset)?[0];
    let sums = super::eval::fetch_summaries(ctx, &ms.vs, end - range + 1, end)?;
    Ok(Some((sums, end, range)))
}

/// Least squares (Kahan-summed) with x relative to `intercept_t`.
fn linear_regression(ts: &[i64], vs: &[f64], intercept_t: i64) -> (f64, f64) {
    let (mut n, mut sx, mut cx, mut sy, mut cy) = (0.0, 0.0, 0.0, 0.0, 0.0);
    let (mut sxy, mut cxy, mut sx2, mut cx2) = (0.0, 0.0, 0.0, 0.0);
    let init_y = vs[0];
    let mut const_y = true;
    for (k, (&t, &y)) in ts.iter().zip(vs).enumerate() {
        if const_y && k > 0 && y != init_y {
            const_y = false;
        }
        n += 1.0;
        let x = (t - intercept_t) as f64 / 1e3;
        (sx, cx) = kahan_inc(x, sx, cx);
        (sy, cy) = kahan_inc(y, sy, cy);
        (sxy, cxy) = kahan_inc(x * y, sxy, cxy);
        (sx2, cx2) = kahan_inc(x * x, sx2, cx2);
    }
    if const_y {
        if init_y.is_infinite() {
            return (f64::NAN, f64::NAN);
        }
        return (0.0, init_y);
    }
    let (sx, sy, sxy, sx2) = (sx + cx, sy + cy, sxy + cxy, sx2 + cx2);
    let cov = sxy - sx * sy / n;
    let var = sx2 - sx * sx / n;
    let slope = cov / var;
    (slope, sy / n - slope * sx / n)
}

/// Double exponential smoothing (formerly holt_winters).
fn des(vs: &[f64], sf: f64, tf: f64) -> Option<f64> {
    if vs.len() < 2 {
        return None;
    }
    let (mut s0, mut s1, mut b) = (0.0, vs[0], vs[1] - vs[0]);
    for (i, &v) in vs.iter().enumerate().skip(1) {
        let x = sf * v;
        if i > 1 {
            b = tf * (s1 - s0) + (1.0 - tf) * b;
        }
        let y = (1.0 - sf) * (s1 + b);
        s0 = s1;
        s1 = x + y;
    }
    Some(s1)
}

fn map(ctx: &Ctx, arg: &Expr, grid: &Grid, f: impl Fn(f64) -> f64) -> R<Vec<Series>> {
    map_i(ctx, arg, grid, |x, _| f(x))
}

fn map_i(ctx: &Ctx, arg: &Expr, grid: &Grid, f: impl Fn(f64, usize) -> f64) -> R<Vec<Series>> {
    let v = eval_vector(ctx, arg, grid)?;
    Ok(v.into_iter()
        .map(|s| Series {
            labels: drop_name(&s.labels),
            vals: s
                .vals
                .iter()
                .enumerate()
                .map(|(i, v)| v.map(|x| f(x, i)))
                .collect(),
        })
        .collect())
}

/// Go's math.Max / math.Min (NaN wins).
fn go_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}
fn go_min(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.min(b)
    }
}

fn date_part(name: &str, secs: f64) -> f64 {
    let Some(t) = Utc.timestamp_opt(secs.trunc() as i64, 0).single() else {
        return f64::NAN;
    };
    match name {
        "day_of_month" => t.day() as f64,
        "day_of_week" => t.weekday().num_days_from_sunday() as f64,
        "day_of_year" => t.ordinal() as f64,
        "hour" => t.hour() as f64,
        "minute" => t.minute() as f64,
        "month" => t.month() as f64,
        "year" => t.year() as f64,
        _ => {
            // days_in_month
            let (y, m) = (t.year(), t.month());
            let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            let first = Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0).single();
            let next = Utc.with_ymd_and_hms(ny, nm, 1, 0, 0, 0).single();
            match (first, next) {
                (Some(a), Some(b)) => (b - a).num_days() as f64,
                _ => f64::NAN,
            }
        }
    }
}

/// Natural order: digit runs compare as numbers.
fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let (ab, bb) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < ab.len() && j < bb.len() {
        if ab[i].is_ascii_digit() && bb[j].is_ascii_digit() {
            let si = i;
            while i < ab.len() && ab[i].is_ascii_digit() {
                i += 1;
            }
            let sj = j;
            while j < bb.len() && bb[j].is_ascii_digit() {
                j += 1;
            }
            let x = a[si..i].trim_start_matches('0');
            let y = b[sj..j].trim_start_matches('0');
            let o = x.len().cmp(&y.len()).then_with(|| x.cmp(y));
            if o != Ordering::Equal {
                return o;
            }
        } else {
            let o = ab[i].cmp(&bb[j]);
            if o != Ordering::Equal {
                return o;
            }
            i += 1;
            j += 1;
        }
    }
    (ab.len() - i).cmp(&(bb.len() - j))
}

/// Classic-bucket histograms grouped by their labels without `le`.
struct Buckets {
    labels: Labels,
    /// (upper bound, input series index)
    members: Vec<(f64, usize)>,
}

fn bucket_groups(ctx: &Ctx, v: &[Series], func: &str, arg: usize) -> Vec<Buckets> {
    let mut index: HashMap<Labels, usize> = HashMap::new();
    let mut out: Vec<Buckets> = Vec::new();
    for (k, s) in v.iter().enumerate() {
        let le = s.labels.get("le");
        let ub = le.and_then(parse_le);
        let Some(ub) = ub else {
            let name = s.labels.metric_name().unwrap_or("");
            let mut msg = format!(
                "PromQL warning: bucket label \"le\" is missing or has a malformed value of {:?}",
                le.unwrap_or("")
            );
            if !name.is_empty() {
                msg.push_str(&format!(" for metric name {name:?}"));
            }
            ctx.warn(ctx.at_arg(msg, func, arg));
            continue;
        };
        let key = s.labels.without(|n| n == "le");
        let g = *index.entry(key.clone()).or_insert_with(|| {
            out.push(Buckets {
                labels: drop_name(&key),
                members: Vec::new(),
            });
            out.len() - 1
        });
        out[g].members.push((ub, k));
    }
    for b in &mut out {
        b.members
            .sort_by(|x, y| x.0.partial_cmp(&y.0).unwrap_or(std::cmp::Ordering::Equal));
    }
    out
}

pub fn parse_le(s: &str) -> Option<f64> {
    match s.trim() {
        "+Inf" | "Inf" | "+inf" | "inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        t => t.parse::<f64>().ok(),
    }
}

fn almost_equal(a: f64, b: f64, eps: f64) -> bool {
    if a == b {
        return true;
    }
    let min_normal = f64::MIN_POSITIVE;
    let abs_sum = a.abs() + b.abs();
    let diff = (a - b).abs();
    if a == 0.0 || b == 0.0 || abs_sum < min_normal {
        return diff < eps * min_normal;
    }
    diff / abs_sum.min(f64::MAX) < eps
}

/// Buckets with equal upper bounds summed (input sorted by bound).
fn coalesce(b: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut merged: Vec<(f64, f64)> = Vec::with_capacity(b.len());
    for &(ub, c) in b {
        match merged.last_mut() {
            Some(last) if last.0 == ub => last.1 += c,
            _ => merged.push((ub, c)),
        }
    }
    merged
}

/// Prometheus's `BucketQuantile` over sorted `(upper bound, count)`.
/// Returns the value and whether monotonicity had to be forced.
pub fn bucket_quantile(q: f64, buckets: &mut Vec<(f64, f64)>) -> (f64, bool) {
    if q.is_nan() {
        return (f64::NAN, false);
    }
    if q < 0.0 {
        return (f64::NEG_INFINITY, false);
    }
    if q > 1.0 {
        return (f64::INFINITY, false);
    }
    if buckets.is_empty() || buckets[buckets.len() - 1].0 != f64::INFINITY {
        return (f64::NAN, false);
    }
    *buckets = coalesce(buckets);
    let mut forced = false;
    let mut prev = buckets[0].1;
    for b in buckets.iter_mut().skip(1) {
        let cur = b.1;
        if cur == prev {
            continue;
        }
        if almost_equal(prev, cur, 1e-12) {
            b.1 = prev;
            continue;
        }
        if cur < prev {
            b.1 = prev;
            forced = true;
            continue;
        }
        prev = cur;
    }
    if buckets.len() < 2 {
        return (f64::NAN, forced);
    }
    let obs = buckets[buckets.len() - 1].1;
    if obs == 0.0 {
        return (f64::NAN, forced);
    }
    let mut rank = q * obs;
    let last = buckets.len() - 1;
    let b = buckets[..last].partition_point(|x| x.1 < rank);
    if b == last {
        return (buckets[last - 1].0, forced);
    }
    if b == 0 && buckets[0].0 <= 0.0 {
        return (buckets[0].0, forced);
    }
    let (mut start, end, mut count) = (0.0, buckets[b].0, buckets[b].1);
    if b > 0 {
        start = buckets[b - 1].0;
        count -= buckets[b - 1].1;
        rank -= buckets[b - 1].1;
    }
    (start + (end - start) * (rank / count), forced)
}

fn histogram_quantile(ctx: &Ctx, q: &[f64], v: Vec<Series>, n: usize) -> R<Vec<Series>> {
    if let Some(bad) = bad_quantile(q) {
        ctx.warn(ctx.at_arg(
            format!(
                "PromQL warning: quantile value should be between 0 and 1, got {}",
                format_float(bad)
            ),
            "histogram_quantile",
            0,
        ));
    }
    let groups = bucket_groups(ctx, &v, "histogram_quantile", 1);
    let mut out = Vec::with_capacity(groups.len());
    let mut buf = Vec::new();
    for g in groups {
        let mut vals = vec![None; n];
        for (i, slot) in vals.iter_mut().enumerate() {
            buf.clear();
            buf.extend(
                g.members
                    .iter()
                    .filter_map(|&(ub, k)| v[k].vals[i].map(|c| (ub, c))),
            );
            if buf.is_empty() {
                continue;
            }
            let (val, forced) = bucket_quantile(q[i], &mut buf);
            if forced {
                ctx.info(ctx.at_arg(
                    format!(
                        "PromQL info: input to histogram_quantile needed to be fixed for monotonicity (see https://prometheus.io/docs/prometheus/latest/querying/functions/#histogram_quantile) for metric name {:?}",
                        v[g.members[0].1].labels.metric_name().unwrap_or("")
                    ),
                    "histogram_quantile",
                    1,
                ));
            }
            *slot = Some(val);
        }
        if vals.iter().any(|v| v.is_some()) {
            out.push(Series {
                labels: g.labels,
                vals,
            });
        }
    }
    Ok(out)
}

/// `histogram_fraction(lo, hi, classic buckets)`: the share of
/// observations between the bounds, interpolating linearly inside buckets.
fn histogram_fraction(
    ctx: &Ctx,
    lo: &[f64],
    hi: &[f64],
    v: Vec<Series>,
    n: usize,
) -> R<Vec<Series>> {
    let groups = bucket_groups(ctx, &v, "histogram_fraction", 2);
    let mut out = Vec::with_capacity(groups.len());
    for g in groups {
        let mut vals = vec![None; n];
        for (i, slot) in vals.iter_mut().enumerate() {
            let b: Vec<(f64, f64)> = g
                .members
                .iter()
                .filter_map(|&(ub, k)| v[k].vals[i].map(|c| (ub, c)))
                .collect();
            if b.is_empty() {
                continue;
            }
            *slot = Some(bucket_fraction(lo[i], hi[i], &b));
        }
        if vals.iter().any(|v| v.is_some()) {
            out.push(Series {
                labels: g.labels,
                vals,
            });
        }
    }
    Ok(out)
}

/// Prometheus's `BucketFraction` over sorted `(upper bound, count)`.
fn bucket_fraction(lower: f64, upper: f64, b: &[(f64, f64)]) -> f64 {
    if b.is_empty() || b[b.len() - 1].0 != f64::INFINITY {
        return f64::NAN;
    }
    let merged = coalesce(b);
    let count = merged[merged.len() - 1].1;
    if count == 0.0 || lower.is_nan() || upper.is_nan() {
        return f64::NAN;
    }
    if lower >= upper {
        return 0.0;
    }
    let (mut rank, mut lower_rank, mut upper_rank) = (0.0, 0.0, 0.0);
    let (mut lower_set, mut upper_set) = (false, false);
    let mut lower_bound = if merged[0].0 <= 0.0 {
        f64::NEG_INFINITY
    } else {
        0.0
    };
    for (i, &(ub, c)) in merged.iter().enumerate() {
        if i > 0 {
            lower_bound = merged[i - 1].0;
        }
        // No interpolation inside a bucket of infinite width.
        let interpolate = |v: f64| {
            if lower_bound == f64::NEG_INFINITY {
                c
            } else {
                rank + (c - rank) * (v - lower_bound) / (ub - lower_bound)
            }
        };
        if !lower_set && lower_bound >= lower {
            lower_rank = rank;
            lower_set = true;
        }
        if !upper_set && lower_bound >= upper {
            upper_rank = rank;
            upper_set = true;
        }
        if lower_set && upper_set {
            break;
        }
        if !lower_set && lower_bound < lower && ub > lower {
            lower_rank = interpolate(lower);
            lower_set = true;
        }
        if !upper_set && lower_bound < upper && ub > upper {
            upper_rank = interpolate(upper);
            upper_set = true;
        }
        if lower_set && upper_set {
            break;
        }
        rank = c;
    }
    if !lower_set || lower_rank > count {
        lower_rank = count;
    }
    if !upper_set || upper_rank > count {
        upper_rank = count;
    }
    (upper_rank - lower_rank) / count
}
