//! The Prometheus HTTP API (read side): series, labels, label values,
//! metadata, buildinfo. Shapes, parameters and errors as Prometheus 3.x:
//! GET or form-encoded POST, times as RFC 3339 or Unix seconds, answers as
//! `{"status":"success","data":...}` and errors as
//! `{"status":"error","errorType":"bad_data","error":"..."}`.

pub mod params;
pub mod query_api;

use crate::QueryState;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use meshlens_storage::samples::Labels;
use params::Params;
use serde_json::{Value, json};

/// Prometheus's error types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorType {
    BadData,
    Execution,
    Timeout,
    Canceled,
    Internal,
    Unavailable,
    NotFound,
}

impl ErrorType {
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorType::BadData => "bad_data",
            ErrorType::Execution => "execution",
            ErrorType::Timeout => "timeout",
            ErrorType::Canceled => "canceled",
            ErrorType::Internal => "internal",
            ErrorType::Unavailable => "unavailable",
            ErrorType::NotFound => "not_found",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ErrorType::BadData => StatusCode::BAD_REQUEST,
            ErrorType::Execution => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorType::Timeout | ErrorType::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorType::Canceled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            ErrorType::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorType::NotFound => StatusCode::NOT_FOUND,
        }
    }
}

/// An error answer of the Prometheus API.
#[derive(Debug)]
pub struct ApiError {
    pub kind: ErrorType,
    pub message: String,
}

impl ApiError {
    pub fn bad_data(message: impl Into<String>) -> Self {
        ApiError {
            kind: ErrorType::BadData,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.kind == ErrorType::Internal {
            tracing::error!(error = %self.message, "prometheus API failed");
        }
        (
            self.kind.status(),
            axum::Json(json!({
                "status": "error",
                "errorType": self.kind.as_str(),
                "error": self.message,
            })),
        )
            .into_response()
    }
}

/// A success answer: `{"status":"success","data":...}` (+ warnings/infos).
pub fn success(data: Value, warnings: Vec<String>) -> Response {
    let mut body = json!({"status": "success", "data": data});
    if !warnings.is_empty() {
        body["warnings"] = json!(warnings);
    }
    axum::Json(body).into_response()
}

pub fn router(state: QueryState) -> Router {
    Router::new()
        .route(
            "/api/v1/query",
            get(query_api::query).post(query_api::query),
        )
        .route(
            "/api/v1/query_range",
            get(query_api::query_range).post(query_api::query_range),
        )
        .route(
            "/api/v1/format_query",
            get(query_api::format_query).post(query_api::format_query),
        )
        .route("/api/v1/series", get(series).post(series))
        .route("/api/v1/labels", get(labels).post(labels))
        .route("/api/v1/label/{name}/values", get(label_values))
        .route("/api/v1/metadata", get(metadata))
        .route("/api/v1/status/buildinfo", get(buildinfo))
        .route("/api/v1/query_exemplars", get(exemplars).post(exemplars))
        .with_state(state)
}

pub fn labels_json(l: &Labels) -> Value {
    let mut m = serde_json::Map::with_capacity(l.len());
    for x in l.iter() {
        m.insert(x.name.to_string(), Value::String(x.value.to_string()));
    }
    Value::Object(m)
}

async fn series(State(st): State<QueryState>, q: RawQuery, h: HeaderMap, body: Bytes) -> Response {
    let started = std::time::Instant::now();
    let res = (|| {
        let p = Params::from_request(q.0.as_deref(), &h, &body)?;
        let sets = p.match_sets()?;
        if sets.is_empty() {
            return Err(ApiError::bad_data("no match[] parameter provided"));
        }
        let (start, end) = p.range()?;
        let limit = p.limit()?;
        let mut out = st
            .storage
            .samples()
            .series(&sets, start, end, limit.map_or(0, |l| l + 1));
        let warnings = truncate(&mut out, limit);
        Ok(success(
            Value::Array(out.iter().map(labels_json).collect()),
            warnings,
        ))
    })();
    st.observe("prom_series", started);
    res.unwrap_or_else(IntoResponse::into_response)
}

/// Prometheus answers `limit` results and warns when there were more.
fn truncate<T>(v: &mut Vec<T>, limit: Option<usize>) -> Vec<String> {
    match limit {
        Some(l) if v.len() > l => {
            v.truncate(l);
            vec!["results truncated due to limit".to_string()]
        }
        _ => vec![],
    }
}

async fn labels(State(st): State<QueryState>, q: RawQuery, h: HeaderMap, body: Bytes) -> Response {
    let res = (|| {
        let p = Params::from_request(q.0.as_deref(), &h, &body)?;
        let sets = p.match_sets()?;
        let (start, end) = p.range()?;
        let limit = p.limit()?;
        let mut out =
            st.storage
                .samples()
                .label_names(&sets, start, end, limit.map_or(0, |l| l + 1));
        let warnings = truncate(&mut out, limit);
        Ok::<_, ApiError>(success(json!(out), warnings))
    })();
    res.unwrap_or_else(IntoResponse::into_response)
}

async fn label_values(
    State(st): State<QueryState>,
    Path(name): Path<String>,
    q: RawQuery,
) -> Response {
    let res = (|| {
        let p = Params::from_request(q.0.as_deref(), &HeaderMap::new(), &[])?;
        // Prometheus 3 accepts `U__` + escaped UTF-8 names in the path.
        let name = params::unescape_label_name(&name);
        let sets = p.match_sets()?;
        let (start, end) = p.range()?;
        let limit = p.limit()?;
        let mut out =
            st.storage
                .samples()
                .label_values(&name, &sets, start, end, limit.map_or(0, |l| l + 1));
        let warnings = truncate(&mut out, limit);
        Ok::<_, ApiError>(success(json!(out), warnings))
    })();
    res.unwrap_or_else(IntoResponse::into_response)
}

async fn metadata(State(st): State<QueryState>, q: RawQuery) -> Response {
    let res = (|| {
        let p = Params::from_request(q.0.as_deref(), &HeaderMap::new(), &[])?;
        let metric = p.get("metric");
        let limit = p.limit()?;
        let mut m = serde_json::Map::new();
        for md in st
            .storage
            .samples()
            .metadata(metric.filter(|s| !s.is_empty()))
        {
            if limit.is_some_and(|l| m.len() >= l) {
                break;
            }
            m.insert(
                md.metric_family.clone(),
                json!([{"type": md.kind.as_str(), "help": md.help, "unit": md.unit}]),
            );
        }
        Ok::<_, ApiError>(success(Value::Object(m), vec![]))
    })();
    res.unwrap_or_else(IntoResponse::into_response)
}

/// No `features` map: Grafana would take the server for Mimir.
async fn buildinfo() -> Response {
    success(
        json!({
            "version": "3.0.0",
            "revision": env!("CARGO_PKG_VERSION"),
            "branch": "meshlens",
            "buildUser": "meshlens",
            "buildDate": "",
            "goVersion": "meshlens (Rust)",
        }),
        vec![],
    )
}

/// `/api/v1/query_exemplars`: the exemplars (trace ids the span-derived
/// series carry) of every series the query's selectors select, in
/// `[start, end]` (default: all time), in Prometheus's shape.
async fn exemplars(
    State(st): State<QueryState>,
    q: RawQuery,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    let res = (|| {
        let p = Params::from_request(q.0.as_deref(), &h, &body)?;
        let query = p.get("query").unwrap_or("");
        if query.is_empty() {
            return Err(ApiError::bad_data("query parameter is required"));
        }
        let (start, end) = p.range()?;
        let expr = crate::promql::parse(query)
            .map_err(|e| ApiError::bad_data(format!("invalid parameter \"query\": {}", e.msg)))?;
        let mut selectors = Vec::new();
        crate::promql::collect_selectors(&expr, &mut selectors);
        let mut sets = Vec::new();
        for vs in selectors {
            sets.extend(params::selector_matchers(vs, query)?);
        }
        let groups = st.storage.samples().exemplars().select(&sets, start, end);
        let data: Vec<Value> = groups
            .into_iter()
            .map(|g| {
                json!({
                    "seriesLabels": labels_json(&g.series),
                    "exemplars": g.exemplars.iter().map(|e| json!({
                        "labels": e.labels.iter().map(|(k, v)| (k.clone(), Value::String(v.clone())))
                            .collect::<serde_json::Map<String, Value>>(),
                        "value": crate::promql::eval::format_float(e.value),
                        "timestamp": e.timestamp_ms as f64 / 1000.0,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        Ok(success(Value::Array(data), vec![]))
    })();
    res.unwrap_or_else(IntoResponse::into_response)
}

#[cfg(test)]
mod tests;
