//! The service topology: what calls what, and how healthy each call path
//! is, from mesh metrics (Istio standard metrics, or raw Envoy stats) and
//! from the service-graph series derived from spans. See docs/API.md
//! ("Topology") for the parameters and the answer.

pub mod exact;
pub mod model;
pub mod nodegraph;
pub mod red;
pub mod sources;
#[cfg(test)]
mod tests;

use crate::QueryState;
use crate::prom::params::{parse_duration_ms, parse_time};
use crate::promql::InstantSample;
use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use meshlens_storage::samples::Labels;
use model::{GraphType, HealthThresholds, NodeRef, Topology};
use std::collections::{BTreeMap, HashMap};

/// The PromQL per figure of an edge, given its two nodes.
pub type Queries = dyn Fn(&NodeRef, &NodeRef) -> BTreeMap<&'static str, String> + Send + Sync;

#[derive(Debug, thiserror::Error)]
pub enum TopoError {
    #[error("{0}")]
    BadRequest(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("query failed: {0}")]
    Query(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl IntoResponse for TopoError {
    fn into_response(self) -> Response {
        let status = match &self {
            TopoError::BadRequest(_) => StatusCode::BAD_REQUEST,
            TopoError::NotFound(_) => StatusCode::NOT_FOUND,
            TopoError::Query(_) => StatusCode::UNPROCESSABLE_ENTITY,
            TopoError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (
            status,
            Json(serde_json::json!({"status": "error", "error": self.to_string()})),
        )
            .into_response()
    }
}

/// A query window and the means to evaluate PromQL over it.
#[derive(Clone)]
pub struct Ctx {
    pub st: QueryState,
    pub start_ms: i64,
    pub end_ms: i64,
    /// The window as a PromQL duration (`300s`).
    pub w: String,
}

impl Ctx {
    pub fn new(st: QueryState, start_ms: i64, end_ms: i64) -> Ctx {
        let secs = ((end_ms - start_ms) as f64 / 1000.0).ceil().max(1.0) as i64;
        Ctx {
            st,
            start_ms,
            end_ms,
            w: format!("{secs}s"),
        }
    }

    /// A topology window: from 10 minutes on, its start moves back to a
    /// whole minute (by less than a minute) so every long-window figure
    /// reads per-minute summaries of the stored samples instead of every
    /// sample (exact either way; the figures' queries carry the widened
    /// range, e.g. `[3645123ms]`).
    pub fn for_topology(st: QueryState, start_ms: i64, end_ms: i64) -> Ctx {
        if end_ms - start_ms < crate::promql::functions::SUMMARY_MIN_RANGE_MS {
            return Ctx::new(st, start_ms, end_ms);
        }
        let start = start_ms.div_euclid(60_000) * 60_000;
        let ms = end_ms - start;
        Ctx {
            st,
            start_ms: start,
            end_ms,
            w: if ms % 1000 == 0 {
                format!("{}s", ms / 1000)
            } else {
                format!("{ms}ms")
            },
        }
    }

    /// An instant query at the window's end.
    pub async fn instant(&self, q: &str) -> Result<Vec<InstantSample>, TopoError> {
        let engine = self.st.engine.clone();
        let q = q.to_string();
        let t = self.end_ms;
        let r =
            tokio::task::spawn_blocking(move || engine.instant_query(&q, t).map_err(|e| (q, e)))
                .await
                .map_err(|e| TopoError::Internal(e.to_string()))?;
        match r {
            Ok(r) => match r.value {
                crate::promql::Value::Vector(v) => Ok(v),
                crate::promql::Value::Scalar { t_ms, value } => Ok(vec![InstantSample {
                    labels: Labels::default(),
                    t_ms,
                    value,
                }]),
                _ => Ok(vec![]),
            },
            Err((q, e)) => Err(TopoError::Query(format!("{q}: {}", e.msg))),
        }
    }

    /// `sum by (<by>) (rate(<sel>[<w>]))` at the window's end, computed as
    /// the PromQL engine does (the same per-series extrapolation over the
    /// same summaries) but grouped without building a label set per series.
    pub async fn rates_by(&self, sel: &str, by: &[&str]) -> Result<Vec<(Labels, f64)>, TopoError> {
        let sets = sources::selector(sel)?;
        let range = self.end_ms - self.start_ms;
        let several = sets.len() > 1;
        let mut data = Vec::new();
        for set in sets {
            data.extend(
                self.st
                    .storage
                    .samples()
                    .summarize(&set, self.start_ms + 1, self.end_ms)
                    .await
                    .map_err(|e| TopoError::Internal(e.to_string()))?,
            );
        }
        if several {
            // Selector alternatives may match a series twice.
            data.sort_by(|a, b| a.0.cmp(&b.0));
            data.dedup_by(|a, b| a.0 == b.0);
        }
        Ok(group_sums(
            &data,
            by,
            |s, out| match crate::promql::functions::extrapolated_rate_of(
                s,
                self.end_ms,
                range,
                true,
                true,
            ) {
                Some(v) => {
                    out.push(v);
                    true
                }
                None => false,
            },
        )
        .into_iter()
        .map(|(l, v)| (l, v[0]))
        .collect())
    }

    /// Counter increases by the `by` labels: in the window (as a count and
    /// a per-second rate over the window) and in its last one to two
    /// minutes, from the last whole minute before the end (`None` when the
    /// window is 3 minutes or shorter), from the stored samples.
    pub async fn counted(&self, sel: &str, by: &str) -> Result<Vec<Counted>, TopoError> {
        // One read of the series for both the window and its last minutes.
        let mut windows = vec![(self.start_ms, self.end_ms)];
        let recent_start = self.end_ms.div_euclid(60_000) * 60_000 - 60_000;
        if recent_start - self.start_ms >= 60_000 {
            windows.push((recent_start, self.end_ms));
        }
        let mut got = self
            .exact_increases_in(sel, by, &windows)
            .await?
            .into_iter();
        let all = got.next().unwrap_or_default();
        let recent = got.next();
        let secs = (self.end_ms - self.start_ms) as f64 / 1000.0;
        let recent_secs = (self.end_ms - recent_start) as f64 / 1000.0;
        let mut out: Vec<Counted> = all
            .into_iter()
            .map(|(labels, n)| Counted {
                recent_rate: recent
                    .as_ref()
                    .map(|r| r.get(&labels).copied().unwrap_or(0.0) / recent_secs),
                rate: n / secs,
                requests: n,
                labels,
            })
            .collect();
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        Ok(out)
    }

    /// [`Ctx::exact_increase_in`] over the whole window.
    pub async fn exact_increase(
        &self,
        sel: &str,
        by: &str,
    ) -> Result<HashMap<Labels, f64>, TopoError> {
        self.exact_increase_in(sel, by, self.start_ms, self.end_ms)
            .await
    }

    /// Counter increase in a window from the stored samples, not
    /// extrapolated: per series the sum of its increases between samples
    /// (a drop is a reset: the new value counts), from its last sample at
    /// or before the window's start, or from 0 when the series begins
    /// inside the window. Summed by the `by` labels (comma-separated).
    pub async fn exact_increase_in(
        &self,
        sel: &str,
        by: &str,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<HashMap<Labels, f64>, TopoError> {
        let mut v = self
            .exact_increases_in(sel, by, &[(start_ms, end_ms)])
            .await?;
        Ok(v.pop().unwrap_or_default())
    }

    /// [`Ctx::exact_increase_in`] for several windows from one read of the
    /// series (one map per window, in order). Reads per-series summaries
    /// (see `SampleStore::summarize_windows`): windows starting on whole
    /// minutes decode no stored sample.
    pub async fn exact_increases_in(
        &self,
        sel: &str,
        by: &str,
        windows: &[(i64, i64)],
    ) -> Result<Vec<HashMap<Labels, f64>>, TopoError> {
        let sets = sources::selector(sel)?;
        let by: Vec<&str> = by.split(',').map(str::trim).collect();
        let lookback = self.st.engine.options().lookback_ms;
        let mut out: Vec<HashMap<Labels, f64>> = vec![HashMap::new(); windows.len()];
        // Per window: the samples before it (the last is where its increase
        // starts from), and those inside it.
        let mut reads = Vec::with_capacity(2 * windows.len());
        for &(start_ms, end_ms) in windows {
            reads.push((start_ms - lookback + 1, start_ms));
            reads.push((start_ms + 1, end_ms));
        }
        let mut data = Vec::new();
        for set in sets {
            data.extend(
                self.st
                    .storage
                    .samples()
                    .summarize_windows(&set, &reads)
                    .await
                    .map_err(|e| TopoError::Internal(e.to_string()))?,
            );
        }
        for (l, acc) in group_sums(&data, &by, |sums, out| {
            for w in 0..windows.len() {
                let inc = sums[2 * w + 1].map_or(0.0, |s| {
                    let prev = sums[2 * w].map(|p| p.last_v).unwrap_or(0.0);
                    let first = if s.first_v >= prev {
                        s.first_v - prev
                    } else {
                        s.first_v
                    };
                    first + s.counter_increase()
                });
                out.push(inc);
            }
            true
        }) {
            for (o, a) in out.iter_mut().zip(acc) {
                *o.entry(l.clone()).or_default() += a;
            }
        }
        Ok(out)
    }
}

/// Per-group sums of rows grouped by the values of the `by` labels
/// (borrowed: no label set is built per row). `figures(row, out)` pushes a
/// row's figures onto `out` (the same count for every row) or answers
/// false to leave the row out. A group's labels are built once, from one of
/// its rows' (interned) strings.
fn group_sums<T>(
    rows: &[(Labels, T)],
    by: &[&str],
    mut figures: impl FnMut(&T, &mut Vec<f64>) -> bool,
) -> Vec<(Labels, Vec<f64>)> {
    let mut by: Vec<&str> = by.to_vec();
    by.sort_unstable();
    by.dedup();
    let mut groups: HashMap<Vec<&str>, (usize, Vec<f64>), foldhash::fast::RandomState> =
        HashMap::default();
    let mut key: Vec<&str> = Vec::with_capacity(by.len());
    let mut row_figures = Vec::new();
    for (i, (labels, x)) in rows.iter().enumerate() {
        row_figures.clear();
        if !figures(x, &mut row_figures) {
            continue;
        }
        labels.get_sorted(&by, &mut key);
        match groups.get_mut(&key) {
            Some((_, sums)) => {
                for (a, f) in sums.iter_mut().zip(&row_figures) {
                    *a += f;
                }
            }
            None => {
                groups.insert(key.clone(), (i, row_figures.clone()));
            }
        }
    }
    groups
        .into_values()
        .map(|(i, sums)| (rows[i].0.without(|n| by.binary_search(&n).is_err()), sums))
        .collect()
}

/// Counter increase of one label group.
pub struct Counted {
    pub labels: Labels,
    pub requests: f64,
    /// `requests` per second of the window.
    pub rate: f64,
    /// Per second over the window's last minute.
    pub recent_rate: Option<f64>,
}

/// Where the window is: `start`/`end` (RFC 3339 or Unix seconds) or a
/// `window` (`5m`) ending at `end` (default now). Defaults to the last 5 m.
pub fn window(p: &HashMap<String, String>) -> Result<(i64, i64), TopoError> {
    let t = |k: &str| -> Result<Option<i64>, TopoError> {
        match p.get(k).map(String::as_str) {
            None | Some("") => Ok(None),
            Some(s) => parse_time(s)
                .map(Some)
                .map_err(|e| TopoError::BadRequest(format!("invalid parameter {k:?}: {e}"))),
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let end = t("end")?.unwrap_or(now);
    let start = match (t("start")?, p.get("window").filter(|s| !s.is_empty())) {
        (Some(s), _) => s,
        (None, Some(w)) => {
            let ms = parse_duration_ms(w)
                .map_err(|e| TopoError::BadRequest(format!("invalid parameter \"window\": {e}")))?;
            end - ms
        }
        (None, None) => end - 5 * 60_000,
    };
    if end <= start {
        return Err(TopoError::BadRequest(
            "the window is empty: \"end\" must be after \"start\"".into(),
        ));
    }
    if end - start > 31 * 24 * 3_600_000 {
        return Err(TopoError::BadRequest(
            "the window may be at most 31 days".into(),
        ));
    }
    Ok((start, end))
}

fn thresholds(p: &HashMap<String, String>) -> Result<HealthThresholds, TopoError> {
    let mut th = HealthThresholds::default();
    for (k, slot) in [
        ("degraded_5xx", &mut th.degraded_5xx),
        ("failing_5xx", &mut th.failing_5xx),
        ("degraded_4xx", &mut th.degraded_4xx),
        ("failing_4xx", &mut th.failing_4xx),
    ] {
        if let Some(v) = p.get(k).filter(|s| !s.is_empty()) {
            *slot = v
                .parse::<f64>()
                .ok()
                .filter(|x| (0.0..=1.0).contains(x))
                .ok_or_else(|| {
                    TopoError::BadRequest(format!("{k} must be a ratio between 0 and 1, got {v:?}"))
                })?;
        }
    }
    Ok(th)
}

/// Computes the topology for the request's parameters.
pub async fn topology(st: QueryState, p: &HashMap<String, String>) -> Result<Topology, TopoError> {
    let (start, end) = window(p)?;
    // `graphType` is Kiali's name for it.
    let graph = match p
        .get("graph")
        .or_else(|| p.get("graphType"))
        .map(String::as_str)
        .filter(|s| !s.is_empty())
    {
        None => GraphType::VersionedApp,
        Some(g) => GraphType::parse(g).ok_or_else(|| {
            TopoError::BadRequest(format!(
                "unknown graph type {g:?}: use workload, app, versioned_app or service"
            ))
        })?,
    };
    let source: &'static str = match p.get("source").map(String::as_str).unwrap_or("auto") {
        "" | "auto" => "auto",
        "mesh" => "mesh",
        "spans" => "spans",
        s => {
            return Err(TopoError::BadRequest(format!(
                "unknown source {s:?}: use spans, mesh or auto"
            )));
        }
    };
    let exact = matches!(p.get("exact").map(String::as_str), Some("true" | "1"));
    if exact && source != "spans" {
        return Err(TopoError::BadRequest(
            "exact=true recomputes from stored spans: use it with source=spans".into(),
        ));
    }
    let th = thresholds(p)?;
    let namespaces: Vec<String> = p
        .get("namespaces")
        .map(|s| {
            s.split(',')
                .map(|x| x.trim().to_string())
                .filter(|x| !x.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let cx = Ctx::for_topology(st, start, end);
    let mut warnings = Vec::new();
    // `auto` reads both sources: the span-derived one on another task, so
    // the two reads use two cores.
    let span_task = (source == "auto" && !exact).then(|| {
        let cx = Ctx::for_topology(cx.st.clone(), start, end);
        tokio::spawn(async move { span_source(&cx, graph, &th, false).await })
    });

    let mut mesh_metrics = None;
    let mut mesh_graph = None;
    if source != "spans" {
        // Istio's metrics when they give a graph, else Envoy's cluster stats.
        let istio = sources::istio(&cx, graph).await?;
        let found = if !istio.0.is_empty() {
            Some(("istio", istio))
        } else if sources::has_data(&cx, "envoy_cluster_upstream_rq").await? {
            Some(("envoy", sources::envoy(&cx, graph).await?))
        } else {
            None
        };
        if let Some((kind, (rows, extras, queries))) = found {
            mesh_metrics = Some(kind);
            mesh_graph = Some(model::build(&rows, graph, "mesh", &extras, &*queries, &th));
        } else if source == "mesh" {
            warnings.push(
                "no mesh metrics (istio_requests_total or envoy_cluster_upstream_rq) in the window"
                    .into(),
            );
        }
    }
    let span_graph = match span_task {
        Some(t) => t
            .await
            .map_err(|e| TopoError::Internal(format!("span source task: {e}")))??,
        None if source != "mesh" => span_source(&cx, graph, &th, exact).await?,
        None => None,
    };
    if span_graph.is_none() && source == "spans" && !exact {
        warnings.push("no service-graph series derived from spans in the window".into());
    }
    let (mut nodes, mut edges) = match (mesh_graph, span_graph) {
        (Some(m), Some(s)) => model::merge(m, s),
        (Some(m), None) => m,
        (None, Some(s)) => s,
        (None, None) => (vec![], vec![]),
    };
    if !namespaces.is_empty() {
        let in_ns = |id: &str, nodes: &[model::Node]| {
            nodes
                .iter()
                .find(|n| n.id == id)
                .is_some_and(|n| namespaces.contains(&n.namespace))
        };
        edges.retain(|e| in_ns(&e.source, &nodes) || in_ns(&e.target, &nodes));
        let keep: std::collections::HashSet<String> = edges
            .iter()
            .flat_map(|e| [e.source.clone(), e.target.clone()])
            .collect();
        nodes.retain(|n| keep.contains(&n.id) || namespaces.contains(&n.namespace));
    }
    Ok(Topology {
        source,
        graph,
        start: cx.start_ms as f64 / 1000.0,
        end: end as f64 / 1000.0,
        window_seconds: (end - cx.start_ms) as f64 / 1000.0,
        mesh_metrics,
        exact,
        nodes,
        edges,
        warnings,
    })
}

type Graph = (Vec<model::Node>, Vec<model::Edge>);

/// The graph from spans: the derived service-graph series, or with `exact`
/// a recompute from the stored spans; None when there is nothing derived.
async fn span_source(
    cx: &Ctx,
    graph: GraphType,
    th: &HealthThresholds,
    exact: bool,
) -> Result<Option<Graph>, TopoError> {
    if exact {
        let (rows, extras, queries) = exact::rows(cx, graph).await?;
        return Ok(Some(model::build(
            &rows, graph, "spans", &extras, &*queries, th,
        )));
    }
    if !sources::has_data(cx, "traces_service_graph_request_total").await? {
        return Ok(None);
    }
    let (rows, extras, queries) = sources::spans(cx, graph).await?;
    Ok(Some(model::build(
        &rows, graph, "spans", &extras, &*queries, th,
    )))
}

async fn topology_handler(
    State(st): State<QueryState>,
    Query(p): Query<HashMap<String, String>>,
) -> Result<Response, TopoError> {
    let t = topology(st, &p).await?;
    Ok(match p.get("format").map(String::as_str) {
        Some("nodegraph") => Json(nodegraph::frames(&t)).into_response(),
        None | Some("") | Some("json") => Json(t).into_response(),
        Some(f) => {
            return Err(TopoError::BadRequest(format!(
                "unknown format {f:?}: use json or nodegraph"
            )));
        }
    })
}

async fn nodes_handler(
    State(st): State<QueryState>,
    Query(p): Query<HashMap<String, String>>,
) -> Result<Response, TopoError> {
    let t = topology(st, &p).await?;
    Ok(Json(nodegraph::frames(&t).nodes).into_response())
}

async fn edges_handler(
    State(st): State<QueryState>,
    Query(p): Query<HashMap<String, String>>,
) -> Result<Response, TopoError> {
    let t = topology(st, &p).await?;
    Ok(Json(nodegraph::frames(&t).edges).into_response())
}

/// `/api/topology`, `/api/topology/nodes`, `/api/topology/edges`,
/// `/api/services...`.
pub fn router(state: QueryState) -> Router {
    Router::new()
        .route("/api/topology", get(topology_handler))
        .route("/api/topology/nodes", get(nodes_handler))
        .route("/api/topology/edges", get(edges_handler))
        .merge(red::router())
        .with_state(state)
}
