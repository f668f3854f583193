//! The topology as Grafana Node Graph data frames: nodes with `id`,
//! `title`, `subtitle`, `mainstat`, `secondarystat`, the `arc__*` fields
//! (summing to 1) and `detail__*` fields; edges with `id`, `source`,
//! `target`, `mainstat`, `secondarystat`. A JSON data source (Infinity,
//! JSON API) maps these arrays to the two frames the panel wants.

use super::model::Topology;
use serde::Serialize;

#[allow(non_snake_case)]
#[derive(Serialize)]
pub struct NgNode {
    pub id: String,
    pub title: String,
    pub subtitle: String,
    /// Inbound requests per second (outbound for entry points).
    pub mainstat: f64,
    /// Error percentage of that traffic.
    pub secondarystat: f64,
    pub arc__success: f64,
    pub arc__errors: f64,
    pub arc__idle: f64,
    pub detail__health: String,
    pub detail__type: String,
    pub detail__namespace: String,
}

#[allow(non_snake_case)]
#[derive(Serialize)]
pub struct NgEdge {
    pub id: String,
    pub source: String,
    pub target: String,
    /// Requests per second.
    pub mainstat: f64,
    /// Error percentage.
    pub secondarystat: f64,
    pub detail__p95_ms: Option<f64>,
    pub detail__share_percent: f64,
    pub detail__figures_from: String,
}

#[derive(Serialize)]
pub struct Frames {
    pub nodes: Vec<NgNode>,
    pub edges: Vec<NgEdge>,
}

pub fn frames(t: &Topology) -> Frames {
    let nodes = t
        .nodes
        .iter()
        .map(|n| {
            let traffic = if n.flags.root {
                &n.outbound
            } else {
                &n.inbound
            };
            let (ok, err, idle) = if traffic.rate > 0.0 {
                (1.0 - traffic.error_ratio, traffic.error_ratio, 0.0)
            } else {
                (0.0, 0.0, 1.0)
            };
            let subtitle = match (n.namespace.is_empty(), n.version.is_empty()) {
                (false, false) => format!("{} · {}", n.namespace, n.version),
                (false, true) => n.namespace.clone(),
                (true, false) => n.version.clone(),
                (true, true) => n.node_type.to_string(),
            };
            NgNode {
                id: n.id.clone(),
                title: n.name.clone(),
                subtitle,
                mainstat: traffic.rate,
                secondarystat: traffic.error_ratio * 100.0,
                arc__success: ok,
                arc__errors: err,
                arc__idle: idle,
                detail__health: n.health.to_string(),
                detail__type: n.node_type.to_string(),
                detail__namespace: n.namespace.clone(),
            }
        })
        .collect();
    let edges = t
        .edges
        .iter()
        .map(|e| NgEdge {
            id: e.id.clone(),
            source: e.source.clone(),
            target: e.target.clone(),
            mainstat: e.rate,
            secondarystat: e.error_ratio * 100.0,
            detail__p95_ms: e.latency_ms.p95,
            detail__share_percent: e.share * 100.0,
            detail__figures_from: e.figures_from.to_string(),
        })
        .collect();
    Frames { nodes, edges }
}
