//! Per-service views: `GET /api/services`, `GET /api/services/{name}` and
//! `GET /api/services/{name}/red` (rate, error ratio, p50/p90/p99 over
//! time), every figure computed by the PromQL engine from the query the
//! answer shows, so Grafana draws the same lines from the same query.

use super::{Ctx, TopoError, window};
use crate::QueryState;
use crate::prom::params::parse_duration_ms;
use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};

#[derive(Default, Serialize)]
pub struct ServiceInfo {
    pub name: String,
    pub namespaces: BTreeSet<String>,
    pub versions: BTreeSet<String>,
    pub workloads: BTreeSet<String>,
    /// `mesh` and/or `spans`.
    pub seen_in: BTreeSet<&'static str>,
}

fn known(s: Option<&str>) -> Option<&str> {
    s.filter(|v| !v.is_empty() && *v != "unknown")
}

/// Every service seen in the window, from mesh metrics and spans.
pub async fn services(cx: &Ctx) -> Result<BTreeMap<String, ServiceInfo>, TopoError> {
    let w = &cx.w;
    let mut out: BTreeMap<String, ServiceInfo> = BTreeMap::new();
    let mut add =
        |name: &str, ns: Option<&str>, v: Option<&str>, wl: Option<&str>, src: &'static str| {
            let e = out.entry(name.to_string()).or_insert_with(|| ServiceInfo {
                name: name.to_string(),
                ..Default::default()
            });
            if let Some(x) = known(ns) {
                e.namespaces.insert(x.into());
            }
            if let Some(x) = known(v) {
                e.versions.insert(x.into());
            }
            if let Some(x) = known(wl) {
                e.workloads.insert(x.into());
            }
            e.seen_in.insert(src);
        };
    for (p, ns, reporter) in [
        (
            "destination",
            "destination_workload_namespace",
            "destination",
        ),
        ("source", "source_workload_namespace", "source"),
    ] {
        let q = format!(
            "group by ({p}_canonical_service, {ns}, {p}_canonical_revision, {p}_workload) (last_over_time(istio_requests_total{{reporter=\"{reporter}\"}}[{w}]))"
        );
        for s in cx.instant(&q).await? {
            let l = &s.labels;
            if let Some(name) = known(l.get(&format!("{p}_canonical_service"))) {
                add(
                    name,
                    l.get(ns),
                    l.get(&format!("{p}_canonical_revision")),
                    l.get(&format!("{p}_workload")),
                    "mesh",
                );
            }
        }
    }
    let q = format!(
        "group by (app, namespace, version, workload) (last_over_time(envoy_cluster_upstream_rq[{w}]))"
    );
    for s in cx.instant(&q).await? {
        let l = &s.labels;
        if let Some(name) = known(l.get("app")) {
            add(
                name,
                l.get("namespace"),
                l.get("version"),
                l.get("workload"),
                "mesh",
            );
        }
    }
    let q = format!(
        "group by (service, namespace, version) (last_over_time(traces_spanmetrics_calls_total[{w}]))"
    );
    for s in cx.instant(&q).await? {
        let l = &s.labels;
        let Some(svc) = known(l.get("service")) else {
            continue;
        };
        let ns = l.get("namespace").unwrap_or("");
        let name = super::sources::span_app(svc, ns);
        let version = l.get("version");
        let wl = version
            .filter(|v| !v.is_empty())
            .map(|v| format!("{name}-{v}"));
        add(
            name,
            Some(ns),
            version,
            wl.as_deref().or(Some(name)),
            "spans",
        );
    }
    Ok(out)
}

async fn list(
    State(st): State<QueryState>,
    Query(p): Query<HashMap<String, String>>,
) -> Result<Json<Value>, TopoError> {
    let (start, end) = window_default(&p, 3_600_000)?;
    let cx = Ctx::new(st, start, end);
    let s = services(&cx).await?;
    Ok(Json(
        json!({"services": s.into_values().collect::<Vec<_>>()}),
    ))
}

fn window_default(p: &HashMap<String, String>, default_ms: i64) -> Result<(i64, i64), TopoError> {
    if p.get("start").is_none() && p.get("window").is_none() {
        let mut q = p.clone();
        q.insert("window".into(), format!("{}ms", default_ms));
        return window(&q);
    }
    window(p)
}

async fn detail(
    State(st): State<QueryState>,
    Path(name): Path<String>,
    Query(p): Query<HashMap<String, String>>,
) -> Result<Json<Value>, TopoError> {
    let (start, end) = window_default(&p, 3_600_000)?;
    let cx = Ctx::new(st.clone(), start, end);
    let all = services(&cx).await?;
    let Some(info) = all.get(&name) else {
        return Err(TopoError::NotFound(format!(
            "service {name:?} has no traffic, spans or metrics in the window"
        )));
    };
    let mut q = p.clone();
    q.insert("graph".into(), "app".into());
    q.insert("start".into(), format!("{}", start as f64 / 1000.0));
    q.insert("end".into(), format!("{}", end as f64 / 1000.0));
    q.remove("window");
    let topo = super::topology(st, &q).await?;
    let me: BTreeSet<&str> = topo
        .nodes
        .iter()
        .filter(|n| n.app == name || n.service == name || n.name == name)
        .map(|n| n.id.as_str())
        .collect();
    let name_of = |id: &str| {
        topo.nodes
            .iter()
            .find(|n| n.id == id)
            .map(|n| n.name.clone())
            .unwrap_or_default()
    };
    let mut inbound = vec![];
    let mut outbound = vec![];
    for e in &topo.edges {
        let item = |other: &str| json!({"name": name_of(other), "node": other, "rate": e.rate, "error_ratio": e.error_ratio, "figures_from": e.figures_from});
        if me.contains(e.target.as_str()) {
            inbound.push(item(&e.source));
        }
        if me.contains(e.source.as_str()) {
            outbound.push(item(&e.target));
        }
    }
    Ok(Json(json!({
        "name": info.name,
        "namespaces": info.namespaces,
        "versions": info.versions,
        "workloads": info.workloads,
        "seen_in": info.seen_in,
        "inbound": inbound,
        "outbound": outbound,
        "start": start as f64 / 1000.0,
        "end": end as f64 / 1000.0,
    })))
}

/// The metric family, selector, version label and unit scale of one source.
struct RedSpec {
    source: &'static str,
    counter: &'static str,
    bucket: &'static str,
    sel: String,
    /// The selector for the histogram (Envoy's has no response code).
    bucket_sel: Option<String>,
    error: &'static str,
    version_label: &'static str,
    scale: &'static str,
}

fn spec(
    source: &str,
    name: &str,
    inbound: bool,
    tags: super::sources::EnvoyTags,
) -> Option<RedSpec> {
    let super::sources::EnvoyTags { cluster: cl, code } = tags;
    let n = format!("{name:?}");
    Some(match source {
        "istio" => RedSpec {
            source: "mesh",
            counter: "istio_requests_total",
            bucket: "istio_request_duration_milliseconds_bucket",
            sel: if inbound {
                format!("reporter=\"destination\",destination_canonical_service={n}")
            } else {
                format!("reporter=\"source\",source_canonical_service={n}")
            },
            bucket_sel: None,
            error: "response_code=~\"5..\"",
            version_label: if inbound {
                "destination_canonical_revision"
            } else {
                "source_canonical_revision"
            },
            scale: "",
        },
        "envoy" => RedSpec {
            source: "mesh",
            counter: "envoy_cluster_upstream_rq",
            bucket: "envoy_cluster_upstream_rq_time_bucket",
            sel: if inbound {
                format!("app={n},{cl}=~\"inbound\\\\|.*\",{code}!=\"\"")
            } else {
                format!("app={n},{cl}=~\"outbound\\\\|.*\",{code}!=\"\"")
            },
            bucket_sel: Some(if inbound {
                format!("app={n},{cl}=~\"inbound\\\\|.*\"")
            } else {
                format!("app={n},{cl}=~\"outbound\\\\|.*\"")
            }),
            error: if code == "response_code" {
                "response_code=~\"5..\""
            } else {
                "envoy_response_code=~\"5..\""
            },
            version_label: "version",
            scale: "",
        },
        "spans" => RedSpec {
            source: "spans",
            counter: "traces_spanmetrics_calls_total",
            bucket: "traces_spanmetrics_latency_bucket",
            sel: format!(
                "service=~\"{}(\\\\..*)?\",span_kind=\"{}\"",
                super::sources::regex_escape(name),
                if inbound {
                    "SPAN_KIND_SERVER"
                } else {
                    "SPAN_KIND_CLIENT"
                }
            ),
            bucket_sel: None,
            error: "status_code=\"STATUS_CODE_ERROR\"",
            version_label: "version",
            scale: " * 1000",
        },
        _ => return None,
    })
}

async fn red(
    State(st): State<QueryState>,
    Path(name): Path<String>,
    Query(p): Query<HashMap<String, String>>,
) -> Result<Json<Value>, TopoError> {
    let (start, end) = window_default(&p, 3_600_000)?;
    let step = match p.get("step").filter(|s| !s.is_empty()) {
        Some(s) => parse_duration_ms(s)
            .or_else(|_| {
                s.parse::<f64>()
                    .map(|f| (f * 1000.0) as i64)
                    .map_err(|e| e.to_string())
            })
            .map_err(|e| TopoError::BadRequest(format!("invalid parameter \"step\": {e}")))?,
        None => ((end - start) / 120).max(15_000),
    };
    if step <= 0 || (end - start) / step > 11_000 {
        return Err(TopoError::BadRequest(
            "step must be positive and give at most 11,000 points".into(),
        ));
    }
    let inbound = match p.get("direction").map(String::as_str).unwrap_or("inbound") {
        "" | "inbound" => true,
        "outbound" => false,
        d => {
            return Err(TopoError::BadRequest(format!(
                "direction must be inbound or outbound, got {d:?}"
            )));
        }
    };
    let by_version = match p.get("by").map(String::as_str).unwrap_or("version") {
        "" | "none" => false,
        "version" => true,
        b => {
            return Err(TopoError::BadRequest(format!(
                "by must be version or none, got {b:?}"
            )));
        }
    };
    let cx = Ctx::new(st.clone(), start, end);
    let wanted = p.get("source").map(String::as_str).unwrap_or("auto");
    let name_re = format!("{name:?}");
    let mesh_kind = if super::sources::has_data(
        &cx,
        &format!("istio_requests_total{{destination_canonical_service={name_re}}}"),
    )
    .await?
        || super::sources::has_data(
            &cx,
            &format!("istio_requests_total{{source_canonical_service={name_re}}}"),
        )
        .await?
    {
        Some("istio")
    } else if super::sources::has_data(&cx, &format!("envoy_cluster_upstream_rq{{app={name_re}}}"))
        .await?
    {
        Some("envoy")
    } else {
        None
    };
    let kind = match wanted {
        "mesh" => mesh_kind.ok_or_else(|| {
            TopoError::NotFound(format!(
                "no mesh metrics for service {name:?} in the window"
            ))
        })?,
        "spans" => "spans",
        "" | "auto" => mesh_kind.unwrap_or("spans"),
        s => {
            return Err(TopoError::BadRequest(format!(
                "unknown source {s:?}: use spans, mesh or auto"
            )));
        }
    };
    let tags = super::sources::envoy_tags(&cx).await?;
    let Some(sp) = spec(kind, &name, inbound, tags) else {
        return Err(TopoError::Internal(format!("no RED spec for {kind}")));
    };
    let rate_window_ms = (step + 15_000).max(60_000);
    let rw = format!("{}s", rate_window_ms / 1000);
    let by = if by_version {
        format!(" by ({})", sp.version_label)
    } else {
        String::new()
    };
    let by_le = if by_version {
        format!(" by ({}, le)", sp.version_label)
    } else {
        " by (le)".to_string()
    };
    let (c, b, sel) = (sp.counter, sp.bucket, &sp.sel);
    let bsel = sp.bucket_sel.as_ref().unwrap_or(sel);
    let rate = format!("sum{by} (rate({c}{{{sel}}}[{rw}]))");
    let mut queries: BTreeMap<&str, String> = BTreeMap::new();
    queries.insert(
        "error_ratio",
        format!("sum{by} (rate({c}{{{sel},{}}}[{rw}])) / {rate}", sp.error),
    );
    for (k, q) in [("p50", "0.5"), ("p90", "0.9"), ("p99", "0.99")] {
        queries.insert(
            k,
            format!(
                "histogram_quantile({q}, sum{by_le} (rate({b}{{{bsel}}}[{rw}]))){}",
                sp.scale
            ),
        );
    }
    queries.insert("rate", rate);
    let mut series = serde_json::Map::new();
    for (k, q) in &queries {
        let engine = st.engine.clone();
        let q2 = q.clone();
        let r = tokio::task::spawn_blocking(move || engine.range_query(&q2, start, end, step))
            .await
            .map_err(|e| TopoError::Internal(e.to_string()))?
            .map_err(|e| TopoError::Query(format!("{q}: {}", e.msg)))?;
        let crate::promql::Value::Matrix(m) = r.value else {
            continue;
        };
        let items: Vec<Value> = m
            .iter()
            .map(|s| {
                json!({
                    "labels": crate::prom::labels_json(&s.labels),
                    "version": s.labels.get(sp.version_label).unwrap_or(""),
                    "values": s.points.iter().map(|(t, v)| json!([*t as f64 / 1000.0, v])).collect::<Vec<_>>(),
                })
            })
            .collect();
        series.insert(k.to_string(), Value::Array(items));
    }
    Ok(Json(json!({
        "service": name,
        "direction": if inbound { "inbound" } else { "outbound" },
        "by": if by_version { "version" } else { "none" },
        "source": sp.source,
        "metrics": kind,
        "start": start as f64 / 1000.0,
        "end": end as f64 / 1000.0,
        "step": step as f64 / 1000.0,
        "rate_window": rw,
        "latency_unit": "ms",
        "queries": queries,
        "series": series,
    })))
}

pub fn router() -> Router<QueryState> {
    Router::new()
        .route("/api/services", get(list))
        .route("/api/services/{name}", get(detail))
        .route("/api/services/{name}/red", get(red))
}
