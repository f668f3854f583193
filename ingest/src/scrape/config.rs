//! The scrape configuration: the `global` and `scrape_configs` sections of a
//! Prometheus configuration file, with Prometheus's defaults and checks.
//!
//! [`ScrapeConfig::parse`] / [`ScrapeConfig::load`] deserialize (unknown
//! fields are errors, reported with their YAML line), then resolve defaults
//! (a job without `scrape_interval` takes the global one, ...) and validate;
//! a [`ScrapeConfig`] obtained from them is ready to run.

use super::relabel::RelabelConfig;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Prometheus's default `global.scrape_interval`.
pub const DEFAULT_SCRAPE_INTERVAL: Duration = Duration::from_secs(60);
/// Prometheus's default `global.scrape_timeout`.
pub const DEFAULT_SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);
/// Prometheus's default `global.evaluation_interval`.
pub const DEFAULT_EVALUATION_INTERVAL: Duration = Duration::from_secs(60);
/// Prometheus's default `file_sd_configs[].refresh_interval`.
pub const DEFAULT_FILE_SD_REFRESH: Duration = Duration::from_secs(300);
/// Largest accepted (uncompressed) scrape body when `body_size_limit` is not set.
pub const DEFAULT_BODY_SIZE_LIMIT: u64 = 64 * 1024 * 1024;
/// The job name of meshlens's own metrics (see [`ScrapeConfig::with_self_scrape`]).
pub const SELF_JOB: &str = "meshlens";

/// Why a configuration was refused. The message names the file, the job and
/// the field; YAML syntax and unknown-field errors carry the line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// YAML syntax, unknown field, wrong type, bad duration or regex.
    #[error("{origin}: {message}")]
    Syntax { origin: String, message: String },
    /// A semantic check failed (the message starts with `job "name": `).
    #[error("{origin}: {message}")]
    Invalid { origin: String, message: String },
}

// ---------------------------------------------------------------- durations

/// A duration in Prometheus syntax: `1y2w3d4h5m6s7ms` (units in that order,
/// each optional, at least one; `0` alone is zero). `1y` = 365d, `1w` = 7d.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PromDuration(pub Duration);

impl PromDuration {
    pub fn parse(s: &str) -> Result<PromDuration, String> {
        if s == "0" {
            return Ok(PromDuration(Duration::ZERO));
        }
        if s.is_empty() {
            return Err("empty duration string".into());
        }
        const UNITS: [(&str, u64); 7] = [
            ("y", 365 * 24 * 3600 * 1000),
            ("w", 7 * 24 * 3600 * 1000),
            ("d", 24 * 3600 * 1000),
            ("h", 3600 * 1000),
            ("m", 60 * 1000),
            ("s", 1000),
            ("ms", 1),
        ];
        let bad = || format!("not a valid duration string: {s:?}");
        let mut rest = s;
        let mut next_unit = 0;
        let mut total: u64 = 0;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(bad());
            }
            let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
            rest = &rest[digits..];
            let unit_len = rest.bytes().take_while(|b| b.is_ascii_alphabetic()).count();
            let unit = &rest[..unit_len];
            rest = &rest[unit_len..];
            let Some(pos) = UNITS.iter().position(|(u, _)| *u == unit) else {
                return Err(bad());
            };
            if pos < next_unit {
                return Err(bad()); // units out of order or repeated
            }
            next_unit = pos + 1;
            total = n
                .checked_mul(UNITS[pos].1)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(|| format!("duration out of range: {s:?}"))?;
        }
        Ok(PromDuration(Duration::from_millis(total)))
    }

    pub fn as_duration(&self) -> Duration {
        self.0
    }
}

impl From<Duration> for PromDuration {
    fn from(d: Duration) -> Self {
        PromDuration(d)
    }
}

impl fmt::Display for PromDuration {
    /// Formats like Prometheus's `model.Duration.String()`: `15s`, `1m30s`,
    /// `1h`, `2w` (years and weeks only when exact).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = self.0.as_millis() as u64;
        if ms == 0 {
            return f.write_str("0s");
        }
        let units: [(&str, u64, bool); 7] = [
            ("y", 365 * 24 * 3600 * 1000, true),
            ("w", 7 * 24 * 3600 * 1000, true),
            ("d", 24 * 3600 * 1000, false),
            ("h", 3600 * 1000, false),
            ("m", 60 * 1000, false),
            ("s", 1000, false),
            ("ms", 1, false),
        ];
        for (unit, mult, exact) in units {
            if exact && !ms.is_multiple_of(mult) {
                continue;
            }
            let v = ms / mult;
            if v > 0 {
                write!(f, "{v}{unit}")?;
                ms -= v * mult;
            }
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for PromDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        PromDuration::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl Serialize for PromDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A byte size like Prometheus's `body_size_limit`: `1024`, `10KB`, `64MB`,
/// `1GiB` (KB/MB/GB/TB are powers of 1024, as in Prometheus).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(s: &str) -> Result<ByteSize, String> {
        let t = s.trim();
        let digits = t.bytes().take_while(u8::is_ascii_digit).count();
        let bad = || format!("not a valid byte size: {s:?}");
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = t[..digits].parse().map_err(|_| bad())?;
        let mult: u64 = match t[digits..].trim() {
            "" | "B" => 1,
            "KB" | "KiB" | "K" => 1 << 10,
            "MB" | "MiB" | "M" => 1 << 20,
            "GB" | "GiB" | "G" => 1 << 30,
            "TB" | "TiB" | "T" => 1 << 40,
            _ => return Err(bad()),
        };
        n.checked_mul(mult).map(ByteSize).ok_or_else(bad)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => ByteSize::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

// ------------------------------------------------------------------ structs

/// The whole file. Sections of a Prometheus file other than `global`,
/// `rule_files` and `scrape_configs` are refused as unknown.
#[derive(Clone, Debug, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScrapeConfig {
    #[serde(default)]
    pub global: GlobalConfig,
    /// Accepted and kept for the rules engine; the scrape manager ignores it.
    #[serde(default)]
    pub rule_files: Vec<String>,
    #[serde(default)]
    pub scrape_configs: Vec<JobConfig>,
    /// The file this was loaded from (relative `file_sd_configs` paths are
    /// resolved against its directory).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalConfig {
    #[serde(default = "default_scrape_interval")]
    pub scrape_interval: PromDuration,
    /// Resolved by validation: 10s, or the interval when that is shorter.
    #[serde(default)]
    pub scrape_timeout: Option<PromDuration>,
    #[serde(default = "default_evaluation_interval")]
    pub evaluation_interval: PromDuration,
    /// As in Prometheus, these are *not* attached to scraped samples; they
    /// are for whatever talks to other systems (federation, alerts, remote write).
    #[serde(default)]
    pub external_labels: BTreeMap<String, String>,
}

impl Default for GlobalConfig {
    fn default() -> Self {
        GlobalConfig {
            scrape_interval: default_scrape_interval(),
            scrape_timeout: None,
            evaluation_interval: default_evaluation_interval(),
            external_labels: BTreeMap::new(),
        }
    }
}

impl GlobalConfig {
    pub fn scrape_timeout(&self) -> Duration {
        self.scrape_timeout
            .map(|d| d.0)
            .unwrap_or_else(|| DEFAULT_SCRAPE_TIMEOUT.min(self.scrape_interval.0))
    }
}

fn default_scrape_interval() -> PromDuration {
    PromDuration(DEFAULT_SCRAPE_INTERVAL)
}
fn default_evaluation_interval() -> PromDuration {
    PromDuration(DEFAULT_EVALUATION_INTERVAL)
}
fn default_metrics_path() -> String {
    "/metrics".into()
}
fn default_scheme() -> String {
    "http".into()
}
fn default_true() -> bool {
    true
}
fn default_refresh() -> PromDuration {
    PromDuration(DEFAULT_FILE_SD_REFRESH)
}

/// One `scrape_configs` entry (a "job"). After validation `scrape_interval`,
/// `scrape_timeout` are set and `file_sd_configs` paths are absolute or
/// relative to the working directory.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobConfig {
    pub job_name: String,
    #[serde(default)]
    pub scrape_interval: Option<PromDuration>,
    #[serde(default)]
    pub scrape_timeout: Option<PromDuration>,
    #[serde(default = "default_metrics_path")]
    pub metrics_path: String,
    #[serde(default = "default_scheme")]
    pub scheme: String,
    #[serde(default)]
    pub params: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub honor_labels: bool,
    #[serde(default = "default_true")]
    pub honor_timestamps: bool,
    /// 0 = no limit (all four limits).
    #[serde(default)]
    pub sample_limit: u64,
    #[serde(default)]
    pub label_limit: u64,
    #[serde(default)]
    pub label_name_length_limit: u64,
    #[serde(default)]
    pub label_value_length_limit: u64,
    /// Unset: [`DEFAULT_BODY_SIZE_LIMIT`]; `0`: no limit (as in Prometheus).
    #[serde(default)]
    pub body_size_limit: Option<ByteSize>,
    #[serde(default)]
    pub static_configs: Vec<StaticConfig>,
    #[serde(default)]
    pub file_sd_configs: Vec<FileSdConfig>,
    #[serde(default)]
    pub relabel_configs: Vec<RelabelConfig>,
    #[serde(default)]
    pub metric_relabel_configs: Vec<RelabelConfig>,
}

impl JobConfig {
    /// A job scraping `targets` with every other field at its default.
    pub fn new(job_name: &str, targets: &[&str]) -> JobConfig {
        JobConfig {
            job_name: job_name.to_string(),
            scrape_interval: None,
            scrape_timeout: None,
            metrics_path: default_metrics_path(),
            scheme: default_scheme(),
            params: BTreeMap::new(),
            honor_labels: false,
            honor_timestamps: true,
            sample_limit: 0,
            label_limit: 0,
            label_name_length_limit: 0,
            label_value_length_limit: 0,
            body_size_limit: None,
            static_configs: vec![StaticConfig {
                targets: targets.iter().map(|t| t.to_string()).collect(),
                labels: BTreeMap::new(),
            }],
            file_sd_configs: Vec::new(),
            relabel_configs: Vec::new(),
            metric_relabel_configs: Vec::new(),
        }
    }

    pub fn interval(&self) -> Duration {
        self.scrape_interval
            .map(|d| d.0)
            .unwrap_or(DEFAULT_SCRAPE_INTERVAL)
    }

    pub fn timeout(&self) -> Duration {
        self.scrape_timeout
            .map(|d| d.0)
            .unwrap_or_else(|| DEFAULT_SCRAPE_TIMEOUT.min(self.interval()))
    }

    /// The body cap in bytes; `None` = unlimited.
    pub fn body_limit(&self) -> Option<u64> {
        match self.body_size_limit {
            None => Some(DEFAULT_BODY_SIZE_LIMIT),
            Some(ByteSize(0)) => None,
            Some(ByteSize(n)) => Some(n),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticConfig {
    #[serde(default)]
    pub targets: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSdConfig {
    /// Paths; the last path element may contain `*` and `?` wildcards.
    pub files: Vec<String>,
    #[serde(default = "default_refresh")]
    pub refresh_interval: PromDuration,
}

// ---------------------------------------------------------------- load/check

impl ScrapeConfig {
    /// Parses and validates YAML text (relative file_sd paths: working directory).
    pub fn parse(text: &str) -> Result<ScrapeConfig, ConfigError> {
        Self::parse_with_origin(text, "<config>", None)
    }

    /// Reads, parses and validates a file.
    pub fn load(path: impl AsRef<Path>) -> Result<ScrapeConfig, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse_with_origin(&text, &path.display().to_string(), Some(path))
    }

    fn parse_with_origin(
        text: &str,
        origin: &str,
        source: Option<&Path>,
    ) -> Result<ScrapeConfig, ConfigError> {
        // An empty file is an empty config, as in Prometheus.
        let mut cfg: ScrapeConfig = if text.trim().is_empty() {
            ScrapeConfig::default()
        } else {
            serde_norway::from_str(text).map_err(|e| ConfigError::Syntax {
                origin: origin.to_string(),
                message: e.to_string(),
            })?
        };
        // Absolute, so that resolving relative file_sd paths is idempotent.
        cfg.source = source.map(|p| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()));
        cfg.resolve_and_validate()
            .map_err(|message| ConfigError::Invalid {
                origin: origin.to_string(),
                message,
            })?;
        Ok(cfg)
    }

    /// The configuration meshlens runs without a file: one job `meshlens`
    /// scraping `/metrics` of `self_target` (e.g. `127.0.0.1:9411`).
    pub fn self_scrape(self_target: &str) -> ScrapeConfig {
        ScrapeConfig::default().with_self_scrape(self_target)
    }

    /// Adds the `meshlens` self-scrape job unless the configuration already
    /// has a job of that name (the user's own definition wins).
    pub fn with_self_scrape(mut self, self_target: &str) -> ScrapeConfig {
        if !self.scrape_configs.iter().any(|j| j.job_name == SELF_JOB) {
            let mut job = JobConfig::new(SELF_JOB, &[self_target]);
            job.scrape_interval = Some(self.global.scrape_interval);
            job.scrape_timeout = Some(PromDuration(self.global.scrape_timeout()));
            self.scrape_configs.push(job);
        }
        self
    }

    /// Fills defaults from `global` and checks everything. Idempotent.
    pub fn resolve_and_validate(&mut self) -> Result<(), String> {
        let g = &mut self.global;
        if g.scrape_interval.0.is_zero() {
            return Err("global: scrape_interval must be greater than 0".into());
        }
        let gt = g.scrape_timeout();
        if gt > g.scrape_interval.0 {
            return Err(format!(
                "global: scrape_timeout ({}) is greater than scrape_interval ({})",
                PromDuration(gt),
                g.scrape_interval
            ));
        }
        g.scrape_timeout = Some(PromDuration(gt));
        for name in g.external_labels.keys() {
            if !is_valid_label_name(name) {
                return Err(format!(
                    "global: external_labels: invalid label name {name:?}"
                ));
            }
        }
        let (gi, gt) = (g.scrape_interval, PromDuration(gt));
        let base_dir = self
            .source
            .as_ref()
            .and_then(|p| p.parent())
            .map(Path::to_path_buf);
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (i, job) in self.scrape_configs.iter_mut().enumerate() {
            if job.job_name.is_empty() {
                return Err(format!("scrape_configs[{i}]: job_name is empty"));
            }
            if let Some(first) = seen.insert(job.job_name.clone(), i) {
                return Err(format!(
                    "job {:?}: duplicate job_name (scrape_configs[{first}] and scrape_configs[{i}])",
                    job.job_name
                ));
            }
            validate_job(job, gi, gt, base_dir.as_deref())
                .map_err(|e| format!("job {:?}: {e}", job.job_name))?;
        }
        Ok(())
    }

    pub fn job(&self, name: &str) -> Option<&JobConfig> {
        self.scrape_configs.iter().find(|j| j.job_name == name)
    }
}

fn validate_job(
    job: &mut JobConfig,
    global_interval: PromDuration,
    global_timeout: PromDuration,
    base_dir: Option<&Path>,
) -> Result<(), String> {
    let interval = job.scrape_interval.unwrap_or(global_interval);
    if interval.0.is_zero() {
        return Err("scrape_interval must be greater than 0".into());
    }
    let timeout = match job.scrape_timeout {
        Some(t) => t,
        // Prometheus: the global timeout, capped at the job's interval.
        None => PromDuration(global_timeout.0.min(interval.0)),
    };
    if timeout.0.is_zero() {
        return Err("scrape_timeout must be greater than 0".into());
    }
    if timeout > interval {
        return Err(format!(
            "scrape_timeout ({timeout}) is greater than scrape_interval ({interval})"
        ));
    }
    job.scrape_interval = Some(interval);
    job.scrape_timeout = Some(timeout);
    match job.scheme.as_str() {
        "http" => {}
        "https" => {
            return Err(
                "scheme: \"https\" is not supported (this build has no TLS client); use http"
                    .into(),
            );
        }
        other => return Err(format!("scheme: {other:?} is not supported; use http")),
    }
    if !job.metrics_path.starts_with('/') {
        job.metrics_path.insert(0, '/');
    }
    for (i, sc) in job.static_configs.iter().enumerate() {
        for (k, t) in sc.targets.iter().enumerate() {
            check_address(t).map_err(|e| format!("static_configs[{i}].targets[{k}] {t:?}: {e}"))?;
        }
        for name in sc.labels.keys() {
            if !is_valid_label_name(name) {
                return Err(format!(
                    "static_configs[{i}].labels: invalid label name {name:?}"
                ));
            }
        }
    }
    for (i, fsd) in job.file_sd_configs.iter_mut().enumerate() {
        if fsd.files.is_empty() {
            return Err(format!("file_sd_configs[{i}].files: no files given"));
        }
        if fsd.refresh_interval.0.is_zero() {
            return Err(format!(
                "file_sd_configs[{i}].refresh_interval must be greater than 0"
            ));
        }
        for (k, f) in fsd.files.iter_mut().enumerate() {
            super::discovery::check_pattern(f)
                .map_err(|e| format!("file_sd_configs[{i}].files[{k}] {f:?}: {e}"))?;
            if let Some(dir) = base_dir
                && Path::new(f.as_str()).is_relative()
            {
                *f = dir.join(&*f).display().to_string();
            }
        }
    }
    for (what, rcs) in [
        ("relabel_configs", &job.relabel_configs),
        ("metric_relabel_configs", &job.metric_relabel_configs),
    ] {
        for (i, rc) in rcs.iter().enumerate() {
            rc.validate().map_err(|e| format!("{what}[{i}]: {e}"))?;
        }
    }
    Ok(())
}

/// A target address is `host:port` or `host`: no scheme, no path.
pub(crate) fn check_address(addr: &str) -> Result<(), String> {
    if addr.is_empty() {
        return Err("empty address".into());
    }
    if addr.contains('/') {
        return Err("not a valid host:port (no scheme or path allowed)".into());
    }
    if addr.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("not a valid host:port (contains whitespace)".into());
    }
    Ok(())
}

/// Prometheus's classic label name syntax `[a-zA-Z_][a-zA-Z0-9_]*`.
pub fn is_valid_label_name(name: &str) -> bool {
    let mut b = name.bytes();
    match b.next() {
        Some(c) if c.is_ascii_alphabetic() || c == b'_' => {}
        _ => return false,
    }
    b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}
