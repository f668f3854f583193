//! The Prometheus-compatible scrape manager.
//!
//! ```text
//! ScrapeConfig (YAML: global + scrape_configs)
//!   -> per job: target groups (static_configs, file_sd_configs)
//!   -> target labels + relabel_configs            (target.rs)
//!   -> one tokio task per target                  (scrape_loop.rs)
//!        GET url (timeout, gzip, body cap) -> text format parse (parse.rs)
//!        -> scrape cache: raw series -> final labels (target labels,
//!           honor_labels, metric_relabel_configs, limits)
//!        -> samples at the scheduled tick time + stale markers + up/scrape_*
//!        -> SampleSink::append (the sample store)
//! ```
//!
//! Behaviour follows Prometheus; where it had to choose, this module:
//! * schedules each target on a fixed grid `offset + k * interval` (offset
//!   = hash of the target's labels modulo the interval), and stamps samples
//!   with the grid time, so timestamps are perfectly regular;
//! * fails the whole scrape on a malformed line (as Prometheus), with the
//!   line number in the error (`reason="parse_error"`);
//! * normalizes `le` of histogram buckets and `quantile` of summaries to
//!   the float form, as Prometheus 3 does (`le="1"` -> `le="1.0"`);
//! * on a failed scrape (HTTP error, timeout, parse error, any limit):
//!   writes `up=0` and the other synthetic series, stale markers for every
//!   series of the previous scrape, and no scraped sample;
//! * when a target disappears (reload, file_sd change): stale markers for
//!   all its series and its synthetic series, written at once (Prometheus
//!   waits an interval first); on [`ScrapeManager::stop`]: none;
//! * series with an explicit timestamp (kept with `honor_timestamps`) get
//!   no stale markers, as in Prometheus;
//! * sends metadata (`# HELP`/`# TYPE`) with the first scrape and then only
//!   families that are new or changed;
//! * does not attach `global.external_labels` to samples (Prometheus uses
//!   them only towards other systems).
//!
//! Self-metrics are listed in [`metrics`].

pub mod config;
pub mod discovery;
pub mod manager;
pub mod metrics;
pub mod parse;
pub mod relabel;
mod scrape_loop;
pub mod sink;
pub mod target;

#[cfg(test)]
mod tests;

pub use config::{ConfigError, JobConfig, PromDuration, ScrapeConfig};
pub use manager::{ActiveTarget, ConfigSource, ManagerOptions, ScrapeManager, TargetsSnapshot};
pub use scrape_loop::{ACCEPT_HEADER, TargetHealth};
pub use sink::{SampleSink, SinkFuture};
pub use target::{DroppedTarget, Target, TargetGroup};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;

/// `POST /-/reload` (and `PUT`): re-reads the configuration source. 200 on
/// success; 500 with the error text otherwise (the old configuration keeps
/// running), as Prometheus answers.
pub fn router(manager: ScrapeManager) -> axum::Router {
    axum::Router::new()
        .route("/-/reload", post(reload).put(reload))
        .route("/api/v1/targets", axum::routing::get(targets))
        .with_state(manager)
}

/// `GET /api/v1/targets` in Prometheus's shape (`state=active|dropped|any`).
async fn targets(
    State(m): State<ScrapeManager>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> axum::Json<serde_json::Value> {
    use serde_json::json;
    let snap = m.targets();
    let state = q.get("state").map(String::as_str).unwrap_or("any");
    let pool = q.get("scrapePool");
    let active: Vec<serde_json::Value> = snap
        .active_targets
        .iter()
        .filter(|t| pool.is_none_or(|p| *p == t.job))
        .map(|t| {
            let last = t
                .last_scrape_ms
                .and_then(chrono::DateTime::from_timestamp_millis)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                .unwrap_or_else(|| "0001-01-01T00:00:00Z".to_string());
            json!({
                "discoveredLabels": t.discovered_labels,
                "labels": t.labels,
                "scrapePool": t.job,
                "scrapeUrl": t.scrape_url,
                "globalUrl": t.scrape_url,
                "lastError": t.last_error,
                "lastScrape": last,
                "lastScrapeDuration": t.last_scrape_duration_seconds,
                "health": t.health,
                "scrapeInterval": t.scrape_interval,
                "scrapeTimeout": t.scrape_timeout,
            })
        })
        .collect();
    let dropped: Vec<serde_json::Value> = snap
        .dropped_targets
        .iter()
        .filter(|t| pool.is_none_or(|p| *p == t.job))
        .map(|t| json!({"discoveredLabels": t.discovered_labels}))
        .collect();
    let (active, dropped) = match state {
        "active" => (active, vec![]),
        "dropped" => (vec![], dropped),
        _ => (active, dropped),
    };
    axum::Json(json!({
        "status": "success",
        "data": {"activeTargets": active, "droppedTargets": dropped},
    }))
}

async fn reload(State(m): State<ScrapeManager>) -> (StatusCode, String) {
    match m.reload_from_source().await {
        Ok(()) => (StatusCode::OK, String::new()),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("failed to reload config: {e}\n"),
        ),
    }
}
