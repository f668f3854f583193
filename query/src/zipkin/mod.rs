//! The Zipkin v2 query API (../shared/specs/zipkin2-api.yaml) on :9411.
//!
//! Ingest (`POST /api/v2/spans`) lives in the ingest crate; this router only
//! answers GETs, so the binary merges both onto one port.

pub mod encode;
pub mod linker;

use crate::QueryState;
use crate::error::QueryError;
use crate::traces::{TraceQuery, parse_annotation_query};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use meshlens_storage::model::{TraceId, UnixNanos};
use meshlens_storage::schema::PROMOTED_TAGS;
use std::collections::HashMap;

/// Tag keys offered by `autocompleteKeys` (Zipkin's AUTOCOMPLETE_KEYS).
pub const AUTOCOMPLETE_KEYS: &[&str] = &[
    "http.method",
    "http.status_code",
    "response_flags",
    "upstream_cluster",
    "istio.canonical_service",
    "istio.canonical_revision",
    "istio.namespace",
];

const DAY_MS: i64 = 86_400_000;

pub fn router(state: QueryState) -> Router {
    Router::new()
        .route("/api/v2/services", get(services))
        .route("/api/v2/spans", get(span_names))
        .route("/api/v2/remoteServices", get(remote_services))
        .route("/api/v2/traces", get(traces))
        .route("/api/v2/trace/{id}", get(trace))
        .route("/api/v2/traceMany", get(trace_many))
        .route("/api/traces/{id}/extras", get(trace_extras))
        .route("/api/v2/autocompleteKeys", get(autocomplete_keys))
        .route("/api/v2/autocompleteValues", get(autocomplete_values))
        .route("/api/v2/dependencies", get(dependencies))
        .with_state(state)
}

type Params = Query<HashMap<String, String>>;

fn param<'a>(p: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    p.get(name).map(String::as_str).filter(|s| !s.is_empty())
}

fn int_param(
    p: &HashMap<String, String>,
    name: &str,
    unit: &str,
) -> Result<Option<i64>, QueryError> {
    match param(p, name) {
        None => Ok(None),
        Some(v) => v.parse::<i64>().map(Some).map_err(|_| {
            QueryError::BadRequest(format!("{name} must be an integer ({unit}), got {v:?}"))
        }),
    }
}

fn required<'a>(p: &'a HashMap<String, String>, name: &str) -> Result<&'a str, QueryError> {
    param(p, name).ok_or_else(|| QueryError::BadRequest(format!("{name} is required")))
}

fn parse_trace_id(s: &str) -> Result<TraceId, QueryError> {
    TraceId::parse_hex(s)
        .map(|(id, _)| id)
        .map_err(|e| QueryError::BadRequest(e.to_string()))
}

async fn services(State(st): State<QueryState>) -> Json<Vec<String>> {
    Json(st.traces.services())
}

async fn span_names(
    State(st): State<QueryState>,
    Query(p): Params,
) -> Result<Json<Vec<String>>, QueryError> {
    let service = required(&p, "serviceName")?;
    Ok(Json(st.traces.distinct("name", Some(service)).await?))
}

async fn remote_services(
    State(st): State<QueryState>,
    Query(p): Params,
) -> Result<Json<Vec<String>>, QueryError> {
    let service = required(&p, "serviceName")?;
    Ok(Json(
        st.traces
            .distinct("remote_service_name", Some(service))
            .await?,
    ))
}

fn window(p: &HashMap<String, String>) -> Result<(UnixNanos, UnixNanos), QueryError> {
    let end_ms = int_param(p, "endTs", "epoch milliseconds")?
        .unwrap_or_else(|| UnixNanos::now().as_millis());
    let lookback = int_param(p, "lookback", "milliseconds")?.unwrap_or(DAY_MS);
    if end_ms <= 0 {
        return Err(QueryError::BadRequest(format!(
            "endTs must be positive, got {end_ms}"
        )));
    }
    if lookback < 0 {
        return Err(QueryError::BadRequest(format!(
            "lookback must not be negative, got {lookback}"
        )));
    }
    // The whole end millisecond is in the window.
    let end = UnixNanos::from_millis(end_ms).0 + 999_999;
    let start = UnixNanos::from_millis(end_ms.saturating_sub(lookback)).0;
    Ok((UnixNanos(start), UnixNanos(end)))
}

async fn traces(State(st): State<QueryState>, Query(p): Params) -> Result<Response, QueryError> {
    let (start, end) = window(&p)?;
    let limit = int_param(&p, "limit", "count")?.unwrap_or(10);
    if limit <= 0 {
        return Err(QueryError::BadRequest(format!(
            "limit must be positive, got {limit}"
        )));
    }
    let min = int_param(&p, "minDuration", "microseconds")?;
    let max = int_param(&p, "maxDuration", "microseconds")?;
    if let (Some(a), Some(b)) = (min, max)
        && a > b
    {
        return Err(QueryError::BadRequest(format!(
            "minDuration ({a}) must not exceed maxDuration ({b})"
        )));
    }
    let q = TraceQuery {
        service: param(&p, "serviceName").map(String::from),
        remote_service: param(&p, "remoteServiceName").map(String::from),
        span_name: param(&p, "spanName")
            .filter(|s| *s != "all")
            .map(String::from),
        annotations: param(&p, "annotationQuery")
            .map(parse_annotation_query)
            .unwrap_or_default(),
        min_duration_nanos: min.map(|us| us.saturating_mul(1_000)),
        max_duration_nanos: max.map(|us| us.saturating_mul(1_000)),
        start,
        end,
        limit: limit as usize,
    };
    let started = std::time::Instant::now();
    let found = st.traces.search(&q).await?;
    st.observe("zipkin_traces", started);
    let body: Vec<Vec<_>> = found.iter().map(|t| encode::trace_json(t)).collect();
    Ok(Json(body).into_response())
}

async fn trace(
    State(st): State<QueryState>,
    Path(id): Path<String>,
) -> Result<Response, QueryError> {
    let started = std::time::Instant::now();
    let spans = one_trace(&st, &id).await?;
    st.observe("zipkin_trace", started);
    Ok(Json(encode::trace_json(&spans)).into_response())
}

/// The spans of trace `id` (hex), or 400 / 404.
async fn one_trace(
    st: &QueryState,
    id: &str,
) -> Result<Vec<meshlens_storage::model::Span>, QueryError> {
    let trace_id = parse_trace_id(id)?;
    st.traces
        .traces(&[trace_id])
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| QueryError::NotFound(format!("trace {id}")))
}

/// What the Zipkin model cannot carry, for the trace view: per span (that
/// has any), its OpenTelemetry links and its events with their attributes.
async fn trace_extras(
    State(st): State<QueryState>,
    Path(id): Path<String>,
) -> Result<Response, QueryError> {
    let spans = one_trace(&st, &id).await?;
    let attrs = |j: &Option<String>| {
        j.as_deref()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
            .unwrap_or(serde_json::Value::Null)
    };
    let out: Vec<serde_json::Value> = spans
        .iter()
        .filter(|s| !s.links.is_empty() || s.events.iter().any(|e| e.attributes_json.is_some()))
        .map(|s| {
            serde_json::json!({
                "id": s.span_id.to_hex(),
                "links": s.links.iter().map(|l| serde_json::json!({
                    "traceId": l.trace_id.to_hex(false),
                    "spanId": l.span_id.to_hex(),
                    "traceState": l.trace_state,
                    "attributes": attrs(&l.attributes_json),
                })).collect::<Vec<_>>(),
                "events": s.events.iter().map(|e| serde_json::json!({
                    "timestamp": e.time.as_micros(),
                    "name": e.name,
                    "attributes": attrs(&e.attributes_json),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(Json(serde_json::json!({ "spans": out })).into_response())
}

async fn trace_many(
    State(st): State<QueryState>,
    Query(p): Params,
) -> Result<Response, QueryError> {
    let ids = required(&p, "traceIds")?;
    let ids = ids
        .split(',')
        .map(|s| parse_trace_id(s.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    let found = st.traces.traces(&ids).await?;
    let body: Vec<Vec<_>> = found.iter().map(|t| encode::trace_json(t)).collect();
    Ok(Json(body).into_response())
}

async fn autocomplete_keys() -> Json<Vec<&'static str>> {
    Json(AUTOCOMPLETE_KEYS.to_vec())
}

async fn autocomplete_values(
    State(st): State<QueryState>,
    Query(p): Params,
) -> Result<Json<Vec<String>>, QueryError> {
    let key = required(&p, "key")?;
    let Some((_, column)) = PROMOTED_TAGS.iter().find(|(k, _)| *k == key) else {
        // Zipkin answers only for configured keys; others have no values.
        return Ok(Json(vec![]));
    };
    Ok(Json(st.traces.distinct(column, None).await?))
}

async fn dependencies(
    State(st): State<QueryState>,
    Query(p): Params,
) -> Result<Response, QueryError> {
    required(&p, "endTs")?;
    let (start, end) = window(&p)?;
    let spans = st.traces.spans_in_window(start, end).await?;
    let mut by_trace: HashMap<TraceId, Vec<_>> = HashMap::new();
    for s in spans {
        by_trace.entry(s.trace_id).or_default().push(s);
    }
    let mut linker = linker::Linker::new();
    for spans in by_trace.values() {
        linker.put_trace(spans);
    }
    Ok(Json(linker.links()).into_response())
}
