//! From target groups (static or file_sd) to scrape targets, following
//! Prometheus's `PopulateLabels`:
//!
//! 1. group labels, then `__address__` = the target;
//! 2. unless already set by the group: `job`, `__scheme__`,
//!    `__metrics_path__`, `__scrape_interval__`, `__scrape_timeout__`, and
//!    `__param_<name>` (first value) for each configured param;
//! 3. `relabel_configs`; the target is dropped when a rule drops it or when
//!    `__address__` ends up empty;
//! 4. `__meta_*` labels are removed, `instance` defaults to `__address__`;
//! 5. the target's public labels are those not starting with `__`;
//!    `__param_*` labels become URL parameters.

use super::config::{JobConfig, PromDuration, check_address};
use super::relabel::{self, LabelMap};
use meshlens_storage::samples::Labels;
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

pub const ADDRESS_LABEL: &str = "__address__";
pub const SCHEME_LABEL: &str = "__scheme__";
pub const METRICS_PATH_LABEL: &str = "__metrics_path__";
pub const SCRAPE_INTERVAL_LABEL: &str = "__scrape_interval__";
pub const SCRAPE_TIMEOUT_LABEL: &str = "__scrape_timeout__";
pub const PARAM_PREFIX: &str = "__param_";
pub const META_PREFIX: &str = "__meta_";

/// A group of targets sharing labels, as in a `static_configs` entry or a
/// file_sd file.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct TargetGroup {
    /// Where it came from (`static/0`, a file path + index): for messages.
    pub source: String,
    pub targets: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

/// One target to scrape.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub job: Arc<str>,
    /// The labels attached to every sample: `job`, `instance` and the rest
    /// of the non-`__` labels.
    pub labels: Labels,
    /// All labels after relabeling (including `__address__`, `__scheme__`, ...).
    pub all_labels: LabelMap,
    /// The labels before relabeling (for `/api/v1/targets`).
    pub discovered: LabelMap,
    pub url: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Identity within the job: a hash of `all_labels`.
    pub key: u64,
}

/// A target that relabeling (or an invalid label) removed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DroppedTarget {
    pub job: String,
    #[serde(rename = "discoveredLabels")]
    pub discovered_labels: BTreeMap<String, String>,
    /// Empty when relabeling dropped it on purpose.
    pub reason: String,
}

/// What became of one discovered target.
#[derive(Clone, Debug, PartialEq)]
pub enum Populated {
    Active(Target),
    Dropped(DroppedTarget),
}

/// Builds one target from its group's labels and its address.
pub fn populate(
    job: &JobConfig,
    group_labels: &BTreeMap<String, String>,
    address: &str,
) -> Populated {
    let mut lb: LabelMap = group_labels
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !address.is_empty() {
        lb.insert(ADDRESS_LABEL.into(), address.into());
    }
    let defaults = [
        ("job", job.job_name.clone()),
        (SCHEME_LABEL, job.scheme.clone()),
        (METRICS_PATH_LABEL, job.metrics_path.clone()),
        (
            SCRAPE_INTERVAL_LABEL,
            PromDuration(job.interval()).to_string(),
        ),
        (
            SCRAPE_TIMEOUT_LABEL,
            PromDuration(job.timeout()).to_string(),
        ),
    ];
    for (k, v) in defaults {
        if !lb.contains_key(k) && !v.is_empty() {
            lb.insert(k.into(), v);
        }
    }
    for (k, vs) in &job.params {
        let name = format!("{PARAM_PREFIX}{k}");
        if let Some(first) = vs.first()
            && !lb.contains_key(&name)
            && !first.is_empty()
        {
            lb.insert(name, first.clone());
        }
    }
    let discovered = lb.clone();
    let dropped = |reason: String| {
        Populated::Dropped(DroppedTarget {
            job: job.job_name.clone(),
            discovered_labels: discovered.clone(),
            reason,
        })
    };
    if !relabel::process(&job.relabel_configs, &mut lb) {
        return dropped(String::new());
    }
    let Some(addr) = lb.get(ADDRESS_LABEL).cloned() else {
        return dropped(String::new());
    };
    if let Err(e) = check_address(&addr) {
        return dropped(format!("address {addr:?}: {e}"));
    }
    let scheme = lb
        .get(SCHEME_LABEL)
        .cloned()
        .unwrap_or_else(|| "http".into());
    if scheme != "http" {
        return dropped(format!("scheme {scheme:?} is not supported"));
    }
    let dur = |name: &str, default: Duration| -> Result<Duration, String> {
        match lb.get(name) {
            None => Ok(default),
            Some(v) => PromDuration::parse(v)
                .map(|d| d.0)
                .map_err(|e| format!("{name}: {e}")),
        }
    };
    let (interval, timeout) = match (
        dur(SCRAPE_INTERVAL_LABEL, job.interval()),
        dur(SCRAPE_TIMEOUT_LABEL, job.timeout()),
    ) {
        (Ok(i), Ok(t)) => (i, t),
        (Err(e), _) | (_, Err(e)) => return dropped(e),
    };
    if interval.is_zero() || timeout.is_zero() {
        return dropped("scrape interval and timeout must be greater than 0".into());
    }
    if timeout > interval {
        return dropped(format!(
            "scrape timeout {} is greater than scrape interval {}",
            PromDuration(timeout),
            PromDuration(interval)
        ));
    }
    lb.retain(|k, _| !k.starts_with(META_PREFIX));
    if !lb.contains_key("instance") {
        lb.insert("instance".into(), addr.clone());
    }
    let public = match Labels::new(lb.iter().filter(|(k, _)| !k.starts_with("__"))) {
        Ok(l) => l,
        Err(e) => return dropped(format!("invalid target labels: {e}")),
    };
    let mut path = lb
        .get(METRICS_PATH_LABEL)
        .cloned()
        .unwrap_or_else(|| "/metrics".into());
    if !path.starts_with('/') {
        path.insert(0, '/');
    }
    let mut params: BTreeMap<String, Vec<String>> = job.params.clone();
    for (k, v) in &lb {
        // Prometheus's Target.URL(): the label replaces the first value.
        if let Some(p) = k.strip_prefix(PARAM_PREFIX) {
            match params.get_mut(p) {
                Some(vs) if !vs.is_empty() => vs[0] = v.clone(),
                _ => {
                    params.insert(p.to_string(), vec![v.clone()]);
                }
            }
        }
    }
    let url = match build_url(&scheme, &addr, &path, &params) {
        Ok(u) => u,
        Err(e) => return dropped(e),
    };
    let key = match Labels::new(lb.iter()) {
        Ok(l) => l.series_id(),
        Err(e) => return dropped(format!("invalid target labels: {e}")),
    };
    Populated::Active(Target {
        job: Arc::from(job.job_name.as_str()),
        labels: public,
        all_labels: lb,
        discovered,
        url,
        interval,
        timeout,
        key,
    })
}

fn build_url(
    scheme: &str,
    addr: &str,
    path: &str,
    params: &BTreeMap<String, Vec<String>>,
) -> Result<String, String> {
    let mut u = reqwest::Url::parse(&format!("{scheme}://{addr}"))
        .map_err(|e| format!("address {addr:?}: {e}"))?;
    u.set_path(path);
    if params.values().any(|v| !v.is_empty()) {
        let mut q = u.query_pairs_mut();
        for (k, vs) in params {
            for v in vs {
                q.append_pair(k, v);
            }
        }
    }
    Ok(u.to_string())
}

/// All targets of a job's groups, deduplicated by identity.
pub fn build_targets(job: &JobConfig, groups: &[TargetGroup]) -> (Vec<Target>, Vec<DroppedTarget>) {
    let mut active = Vec::new();
    let mut dropped = Vec::new();
    let mut seen = HashSet::new();
    for g in groups {
        for addr in &g.targets {
            match populate(job, &g.labels, addr) {
                Populated::Active(t) => {
                    if seen.insert(t.key) {
                        active.push(t);
                    }
                }
                Populated::Dropped(d) => dropped.push(d),
            }
        }
    }
    (active, dropped)
}

/// The groups of a job's `static_configs`.
pub fn static_groups(job: &JobConfig) -> Vec<TargetGroup> {
    job.static_configs
        .iter()
        .enumerate()
        .map(|(i, sc)| TargetGroup {
            source: format!("static/{i}"),
            targets: sc.targets.clone(),
            labels: sc.labels.clone(),
        })
        .collect()
}
