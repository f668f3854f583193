//! `file_sd_configs`: target groups read from JSON or YAML files
//! (`[{"targets": ["host:port", ...], "labels": {"k": "v"}}, ...]`).
//!
//! Files are re-read when their modification time or size changes (the
//! manager polls every few seconds) and at least every `refresh_interval`.
//! A file that fails to parse keeps the groups it last had (as Prometheus
//! does) and the error is logged and counted. Every group gets the label
//! `__meta_filepath`. Patterns may use `*` and `?` in their last path element.

use super::config::FileSdConfig;
use super::target::TargetGroup;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// Checks a `files` entry: a `.json`, `.yml` or `.yaml` file name, wildcards
/// only in the last path element.
pub(crate) fn check_pattern(p: &str) -> Result<(), String> {
    let lower = p.to_ascii_lowercase();
    if ![".json", ".yml", ".yaml"]
        .iter()
        .any(|e| lower.ends_with(e))
    {
        return Err("must end in .json, .yml or .yaml".into());
    }
    let (dir, _) = split_pattern(p);
    if dir.contains(['*', '?', '[']) {
        return Err("wildcards are only allowed in the file name".into());
    }
    Ok(())
}

fn split_pattern(p: &str) -> (&str, &str) {
    match p.rfind('/') {
        Some(i) => (&p[..=i], &p[i + 1..]),
        None => ("", p),
    }
}

/// `*` (any run of characters) and `?` (one character) glob match.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0usize, 0usize);
    let (mut star, mut mark) = (None::<usize>, 0usize);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// The files a pattern names now (sorted). A missing literal file is no file.
pub fn expand_pattern(pattern: &str) -> Vec<PathBuf> {
    let (dir, file) = split_pattern(pattern);
    if !file.contains(['*', '?']) {
        let p = PathBuf::from(pattern);
        return if p.is_file() { vec![p] } else { Vec::new() };
    }
    let dir_path = if dir.is_empty() {
        Path::new(".")
    } else {
        Path::new(dir)
    };
    let Ok(rd) = std::fs::read_dir(dir_path) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| !n.starts_with('.') && glob_match(file, n))
        })
        .map(|e| PathBuf::from(format!("{dir}{}", e.file_name().to_string_lossy())))
        .collect();
    out.sort();
    out
}

#[derive(Deserialize)]
struct RawGroup {
    #[serde(default)]
    targets: Vec<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// Reads one file_sd file.
pub fn read_groups(path: &Path) -> Result<Vec<TargetGroup>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let lower = path.to_string_lossy().to_ascii_lowercase();
    let raw: Vec<RawGroup> = if lower.ends_with(".json") {
        serde_json::from_str(&text).map_err(|e| e.to_string())?
    } else if text.trim().is_empty() {
        Vec::new()
    } else {
        serde_norway::from_str(&text).map_err(|e| e.to_string())?
    };
    let file = path.display().to_string();
    let mut out = Vec::with_capacity(raw.len());
    for (i, g) in raw.into_iter().enumerate() {
        for name in g.labels.keys() {
            if !super::config::is_valid_label_name(name) {
                return Err(format!("group {i}: invalid label name {name:?}"));
            }
        }
        let mut labels = g.labels;
        labels.insert("__meta_filepath".into(), file.clone());
        out.push(TargetGroup {
            source: format!("{file}:{i}"),
            targets: g.targets,
            labels,
        });
    }
    Ok(out)
}

struct FileState {
    stamp: (Option<SystemTime>, u64),
    groups: Vec<TargetGroup>,
}

/// The file_sd state of one job.
pub struct FileSd {
    configs: Vec<FileSdConfig>,
    files: BTreeMap<PathBuf, FileState>,
    last_errors: HashMap<PathBuf, String>,
    last_full: Instant,
}

/// One file that could not be read or parsed.
#[derive(Clone, Debug)]
pub struct FileSdError {
    pub path: PathBuf,
    pub message: String,
}

impl FileSd {
    pub fn new(configs: Vec<FileSdConfig>) -> FileSd {
        FileSd {
            configs,
            files: BTreeMap::new(),
            last_errors: HashMap::new(),
            last_full: Instant::now(),
        }
    }

    /// The shortest `refresh_interval` of the job's file_sd configs.
    pub fn refresh_interval(&self) -> Duration {
        self.configs
            .iter()
            .map(|c| c.refresh_interval.0)
            .min()
            .unwrap_or(super::config::DEFAULT_FILE_SD_REFRESH)
    }

    /// Re-reads what changed (everything when the refresh interval passed).
    /// Returns whether the groups changed, and the new read errors (an error
    /// is reported once until it changes).
    pub fn refresh(&mut self) -> (bool, Vec<FileSdError>) {
        let force = self.last_full.elapsed() >= self.refresh_interval();
        if force {
            self.last_full = Instant::now();
        }
        let mut paths: Vec<PathBuf> = self
            .configs
            .iter()
            .flat_map(|c| c.files.iter())
            .flat_map(|p| expand_pattern(p))
            .collect();
        paths.sort();
        paths.dedup();
        let mut changed = false;
        let mut errors = Vec::new();
        let before = self.files.len();
        self.files.retain(|p, _| paths.binary_search(p).is_ok());
        if self.files.len() != before {
            changed = true;
        }
        self.last_errors
            .retain(|p, _| paths.binary_search(p).is_ok());
        for p in paths {
            let stamp = match std::fs::metadata(&p) {
                Ok(m) => (m.modified().ok(), m.len()),
                Err(_) => continue,
            };
            if !force && self.files.get(&p).is_some_and(|f| f.stamp == stamp) {
                continue;
            }
            match read_groups(&p) {
                Ok(groups) => {
                    self.last_errors.remove(&p);
                    match self.files.get_mut(&p) {
                        Some(f) => {
                            f.stamp = stamp;
                            if f.groups != groups {
                                f.groups = groups;
                                changed = true;
                            }
                        }
                        None => {
                            self.files.insert(p, FileState { stamp, groups });
                            changed = true;
                        }
                    }
                }
                Err(message) => {
                    if self.last_errors.get(&p) != Some(&message) {
                        self.last_errors.insert(p.clone(), message.clone());
                        errors.push(FileSdError { path: p, message });
                    }
                }
            }
        }
        (changed, errors)
    }

    /// The current groups of all files.
    pub fn groups(&self) -> Vec<TargetGroup> {
        self.files
            .values()
            .flat_map(|f| f.groups.iter().cloned())
            .collect()
    }
}
