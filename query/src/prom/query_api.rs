//! `/api/v1/query`, `/api/v1/query_range` and `/api/v1/format_query`.
//!
//! Queries run on a blocking thread (the engine is synchronous and
//! CPU-bound); errors carry Prometheus's error types and status codes:
//! 400 `bad_data` for bad parameters and parse errors, 422 `execution` for
//! evaluation errors (too many samples, many-to-many matching, ...), 503
//! `timeout` when the deadline passes.

use super::params::{Params, parse_duration_ms};
use super::{ApiError, ErrorType, labels_json};
use crate::QueryState;
use crate::promql::{QueryError, QueryErrorKind, QueryResult, Value as PValue};
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::time::Duration;

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        ApiError {
            kind: match e.kind {
                QueryErrorKind::BadData => ErrorType::BadData,
                QueryErrorKind::Execution => ErrorType::Execution,
                QueryErrorKind::Timeout => ErrorType::Timeout,
                QueryErrorKind::Internal => ErrorType::Internal,
            },
            message: e.msg,
        }
    }
}

fn query_param(p: &Params) -> Result<String, ApiError> {
    match p.get("query") {
        Some(q) if !q.trim().is_empty() => Ok(q.to_string()),
        _ => Err(ApiError::bad_data(
            "invalid parameter \"query\": query is required",
        )),
    }
}

fn timeout_param(st: &QueryState, p: &Params) -> Result<crate::promql::Engine, ApiError> {
    let mut engine = st.engine.clone();
    if let Some(t) = p.get("timeout").filter(|s| !s.is_empty()) {
        let ms = parse_duration_ms(t)
            .map_err(|e| ApiError::bad_data(format!("invalid parameter \"timeout\": {e}")))?;
        if ms <= 0 {
            return Err(ApiError::bad_data(
                "invalid parameter \"timeout\": must be positive",
            ));
        }
        let d = Duration::from_millis(ms as u64);
        if d < engine.options().timeout {
            engine.set_timeout(d);
        }
    }
    Ok(engine)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A timestamp as Prometheus prints it: seconds, fractional only if needed.
fn ts_json(ms: i64) -> Value {
    if ms % 1000 == 0 {
        json!(ms / 1000)
    } else {
        json!(ms as f64 / 1000.0)
    }
}

fn point(ms: i64, v: f64) -> Value {
    json!([ts_json(ms), crate::promql::eval::format_float(v)])
}

fn result_json(r: QueryResult, limit: Option<usize>) -> Response {
    let mut warnings = r.warnings;
    let truncated = |n: usize| limit.is_some_and(|l| n > l);
    let data = match r.value {
        PValue::Scalar { t_ms, value } => {
            json!({"resultType": "scalar", "result": point(t_ms, value)})
        }
        PValue::String { t_ms, value } => {
            json!({"resultType": "string", "result": [ts_json(t_ms), value]})
        }
        PValue::Vector(mut v) => {
            if truncated(v.len()) {
                v.truncate(limit.unwrap_or(0));
                warnings.push("results truncated due to limit".into());
            }
            let items: Vec<Value> = v
                .iter()
                .map(|s| json!({"metric": labels_json(&s.labels), "value": point(s.t_ms, s.value)}))
                .collect();
            json!({"resultType": "vector", "result": items})
        }
        PValue::Matrix(mut m) => {
            if truncated(m.len()) {
                m.truncate(limit.unwrap_or(0));
                warnings.push("results truncated due to limit".into());
            }
            let items: Vec<Value> = m
                .iter()
                .map(|s| {
                    json!({
                        "metric": labels_json(&s.labels),
                        "values": s.points.iter().map(|&(t, v)| point(t, v)).collect::<Vec<_>>(),
                    })
                })
                .collect();
            json!({"resultType": "matrix", "result": items})
        }
    };
    let mut body = json!({"status": "success", "data": data});
    if !warnings.is_empty() {
        body["warnings"] = json!(warnings);
    }
    if !r.infos.is_empty() {
        body["infos"] = json!(r.infos);
    }
    axum::Json(body).into_response()
}

/// Runs `f` (parse + evaluate) on its own thread with a stack sized for the
/// deepest query the parser accepts ([`crate::promql::QUERY_STACK_BYTES`]).
async fn run<T, F>(f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, QueryError> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("promql".into())
        .stack_size(crate::promql::QUERY_STACK_BYTES)
        .spawn(move || {
            let _ = tx.send(f());
        });
    if let Err(e) = spawned {
        return Err(ApiError {
            kind: ErrorType::Unavailable,
            message: format!("cannot start a query thread: {e}"),
        });
    }
    match rx.await {
        Ok(r) => r.map_err(ApiError::from),
        Err(_) => Err(ApiError {
            kind: ErrorType::Internal,
            message: "query evaluation panicked".into(),
        }),
    }
}

pub async fn query(
    State(st): State<QueryState>,
    q: RawQuery,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    let started = std::time::Instant::now();
    let res = async {
        let p = Params::from_request(q.0.as_deref(), &h, &body)?;
        let query = query_param(&p)?;
        let t = p.time("time")?.unwrap_or_else(now_ms);
        let limit = p.limit()?;
        let engine = timeout_param(&st, &p)?;
        let r = run(move || engine.instant_query(&query, t)).await?;
        Ok::<_, ApiError>(result_json(r, limit))
    }
    .await;
    st.observe("prom_query", started);
    res.unwrap_or_else(IntoResponse::into_response)
}

pub async fn query_range(
    State(st): State<QueryState>,
    q: RawQuery,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    let started = std::time::Instant::now();
    let res = async {
        let p = Params::from_request(q.0.as_deref(), &h, &body)?;
        let query = query_param(&p)?;
        let start = p
            .time("start")?
            .ok_or_else(|| ApiError::bad_data("invalid parameter \"start\": start is required"))?;
        let end = p
            .time("end")?
            .ok_or_else(|| ApiError::bad_data("invalid parameter \"end\": end is required"))?;
        if end < start {
            return Err(ApiError::bad_data(
                "invalid parameter \"end\": end timestamp must not be before start time",
            ));
        }
        let step = match p.get("step").filter(|s| !s.is_empty()) {
            None => return Err(ApiError::bad_data("invalid parameter \"step\": step is required")),
            Some(s) => parse_duration_ms(s)
                .map_err(|e| ApiError::bad_data(format!("invalid parameter \"step\": {e}")))?,
        };
        if step <= 0 {
            return Err(ApiError::bad_data(
                "invalid parameter \"step\": zero or negative query resolution step widths are not accepted. Try a positive integer",
            ));
        }
        let limit = p.limit()?;
        let engine = timeout_param(&st, &p)?;
        let r = run(move || engine.range_query(&query, start, end, step)).await?;
        Ok::<_, ApiError>(result_json(r, limit))
    }
    .await;
    st.observe("prom_query_range", started);
    res.unwrap_or_else(IntoResponse::into_response)
}

pub async fn format_query(q: RawQuery, h: HeaderMap, body: Bytes) -> Response {
    let res = async {
        let p = Params::from_request(q.0.as_deref(), &h, &body)?;
        let query = query_param(&p)?;
        let pretty = run(move || crate::promql::parse(&query).map(|e| e.prettify())).await?;
        Ok::<_, ApiError>(super::success(json!(pretty), vec![]))
    }
    .await;
    res.unwrap_or_else(IntoResponse::into_response)
}
