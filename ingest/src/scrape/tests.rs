//! Tests of the scrape manager: config, relabeling, target labels, the text
//! parser, scrape processing, and end-to-end scrapes of real HTTP targets
//! on 127.0.0.1.

use super::TargetHealth;
use super::config::{ByteSize, PromDuration, ScrapeConfig};
use super::manager::{ConfigSource, ManagerOptions, ScrapeManager};
use super::parse::{self, Line};
use super::relabel::{self, LabelMap, RelabelConfig};
use super::scrape_loop::{self, LoopState};
use super::sink::{SampleSink, SinkFuture};
use super::target::{self, Populated, Target};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use meshlens_storage::Telemetry;
use meshlens_storage::samples::{AppendReport, Labels, MetricType, SampleBatch, is_stale_nan};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

// ------------------------------------------------------------------ helpers

fn lm(pairs: &[(&str, &str)]) -> LabelMap {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn rules(yaml: &str) -> Vec<RelabelConfig> {
    let r: Vec<RelabelConfig> = serde_norway::from_str(yaml).unwrap();
    for c in &r {
        c.validate().unwrap();
    }
    r
}

fn job_from(yaml: &str) -> super::JobConfig {
    let cfg = ScrapeConfig::parse(yaml).unwrap();
    cfg.scrape_configs[0].clone()
}

fn first_target(job: &super::JobConfig) -> Target {
    let groups = target::static_groups(job);
    let (active, dropped) = target::build_targets(job, &groups);
    assert!(dropped.is_empty(), "{dropped:?}");
    active.into_iter().next().unwrap()
}

/// A sink that keeps every batch.
#[derive(Clone, Default)]
struct Collector {
    batches: Arc<Mutex<Vec<SampleBatch>>>,
}

impl SampleSink for Collector {
    fn append(&self, batch: SampleBatch) -> SinkFuture {
        let n = batch.sample_count() as u64;
        self.batches.lock().push(batch);
        Box::pin(async move {
            Ok(AppendReport {
                accepted: n,
                ..Default::default()
            })
        })
    }
}

impl Collector {
    /// (timestamp, value) of every sample of series named `name` whose
    /// labels satisfy `pred`, in write order.
    fn samples(&self, name: &str, pred: impl Fn(&Labels) -> bool) -> Vec<(i64, f64)> {
        let b = self.batches.lock();
        b.iter()
            .flat_map(|b| b.series.iter())
            .filter(|s| s.labels.metric_name() == Some(name) && pred(&s.labels))
            .flat_map(|s| s.samples.iter().map(|x| (x.timestamp_ms, x.value)))
            .collect()
    }

    fn of(&self, name: &str, instance: &str) -> Vec<(i64, f64)> {
        self.samples(name, |l| l.get("instance") == Some(instance))
    }

    fn all_series(&self) -> Vec<Labels> {
        let b = self.batches.lock();
        b.iter()
            .flat_map(|b| b.series.iter().map(|s| s.labels.clone()))
            .collect()
    }
}

async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > timeout {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A test target: serves `body` at /metrics (and gzip-compressed at /gz),
/// after `delay`, with `Connection: close` so that stopping it makes the
/// next scrape fail with "connection refused".
#[derive(Clone, Default)]
struct Exporter {
    body: Arc<Mutex<String>>,
    delay: Arc<Mutex<Duration>>,
    hits: Arc<AtomicUsize>,
    last_headers: Arc<Mutex<Option<HeaderMap>>>,
}

impl Exporter {
    fn set_body(&self, b: &str) {
        *self.body.lock() = b.to_string();
    }
}

async fn metrics_handler(State(e): State<Exporter>, headers: HeaderMap) -> impl IntoResponse {
    e.hits.fetch_add(1, Ordering::SeqCst);
    *e.last_headers.lock() = Some(headers);
    let delay = *e.delay.lock();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let body = e.body.lock().clone();
    (
        [
            ("connection", "close"),
            ("content-type", "text/plain; version=0.0.4"),
        ],
        body,
    )
}

async fn gz_handler(State(e): State<Exporter>, headers: HeaderMap) -> impl IntoResponse {
    use std::io::Write;
    e.hits.fetch_add(1, Ordering::SeqCst);
    *e.last_headers.lock() = Some(headers);
    let body = e.body.lock().clone();
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(body.as_bytes()).unwrap();
    let gz = enc.finish().unwrap();
    (
        [
            ("connection", "close"),
            ("content-type", "text/plain; version=0.0.4"),
            ("content-encoding", "gzip"),
        ],
        gz,
    )
}

async fn start_exporter(body: &str) -> (Exporter, SocketAddr, tokio::task::JoinHandle<()>) {
    let e = Exporter::default();
    e.set_body(body);
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(metrics_handler))
        .route("/gz", axum::routing::get(gz_handler))
        .with_state(e.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let h = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (e, addr, h)
}

fn fast_options() -> ManagerOptions {
    ManagerOptions {
        file_sd_poll: Duration::from_millis(100),
        ..Default::default()
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "meshlens-scrape-{name}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Writes atomically (temp file + rename), as config management tools do.
fn write_file(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

// ------------------------------------------------------------------- config

#[test]
fn durations_parse_and_print_like_prometheus() {
    let ok = [
        ("15s", 15_000u64, "15s"),
        ("1m", 60_000, "1m"),
        ("1h30m", 5_400_000, "1h30m"),
        ("5m", 300_000, "5m"),
        ("1d", 86_400_000, "1d"),
        ("1w", 604_800_000, "1w"),
        ("1y", 31_536_000_000, "1y"),
        ("200ms", 200, "200ms"),
        ("1m30s500ms", 90_500, "1m30s500ms"),
        ("90s", 90_000, "1m30s"),
        ("0", 0, "0s"),
    ];
    for (s, ms, back) in ok {
        let d = PromDuration::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(d.0, Duration::from_millis(ms), "{s}");
        assert_eq!(d.to_string(), back, "{s}");
    }
    for bad in ["", "15", "1.5s", "s", "1m1h", "1s1s", "-1s", "1 m", "10x"] {
        assert!(
            PromDuration::parse(bad).is_err(),
            "{bad:?} should be refused"
        );
    }
    assert_eq!(ByteSize::parse("64MB").unwrap().0, 64 << 20);
    assert_eq!(ByteSize::parse("10KiB").unwrap().0, 10 << 10);
    assert!(ByteSize::parse("ten").is_err());
}

const GOOD_CONFIG: &str = r#"
global:
  scrape_interval: 15s
  external_labels:
    cluster: east
scrape_configs:
  - job_name: envoy
    metrics_path: /stats/prometheus
    params:
      format: [prometheus]
    honor_labels: true
    sample_limit: 5000
    static_configs:
      - targets: ["10.0.0.1:15090", "10.0.0.2:15090"]
        labels:
          mesh: istio
    relabel_configs:
      - source_labels: [__address__]
        regex: '([^:]+):\d+'
        target_label: host
      - action: labeldrop
        regex: mesh
    metric_relabel_configs:
      - source_labels: [__name__]
        regex: envoy_server_.*
        action: drop
  - job_name: files
    scrape_interval: 5s
    file_sd_configs:
      - files: ["targets/*.json"]
  - job_name: slow
    scrape_interval: 2m
    scrape_timeout: 30s
"#;

#[test]
fn good_config_gets_prometheus_defaults() {
    let cfg = ScrapeConfig::parse(GOOD_CONFIG).unwrap();
    assert_eq!(cfg.global.scrape_interval.0, Duration::from_secs(15));
    assert_eq!(cfg.global.scrape_timeout(), Duration::from_secs(10));
    assert_eq!(cfg.global.external_labels["cluster"], "east");
    let envoy = cfg.job("envoy").unwrap();
    assert_eq!(envoy.interval(), Duration::from_secs(15));
    assert_eq!(envoy.timeout(), Duration::from_secs(10));
    assert_eq!(envoy.metrics_path, "/stats/prometheus");
    assert!(envoy.honor_labels);
    assert!(envoy.honor_timestamps, "honor_timestamps defaults to true");
    assert_eq!(envoy.sample_limit, 5000);
    assert_eq!(envoy.body_limit(), Some(64 << 20));
    assert_eq!(envoy.relabel_configs.len(), 2);
    assert_eq!(
        envoy.relabel_configs[1].action,
        relabel::RelabelAction::LabelDrop
    );
    let files = cfg.job("files").unwrap();
    // The global timeout (10s) is capped at the job's shorter interval.
    assert_eq!(files.timeout(), Duration::from_secs(5));
    assert_eq!(
        files.file_sd_configs[0].refresh_interval.0,
        Duration::from_secs(300)
    );
    let slow = cfg.job("slow").unwrap();
    assert_eq!(slow.metrics_path, "/metrics");
    assert_eq!(slow.timeout(), Duration::from_secs(30));

    // Prometheus's defaults without a global section: 1m / 10s.
    let cfg = ScrapeConfig::parse("scrape_configs: [{job_name: a}]").unwrap();
    assert_eq!(cfg.scrape_configs[0].interval(), Duration::from_secs(60));
    assert_eq!(cfg.scrape_configs[0].timeout(), Duration::from_secs(10));
    assert!(ScrapeConfig::parse("").unwrap().scrape_configs.is_empty());
}

#[test]
fn bad_configs_are_refused_with_a_useful_message() {
    let cases: &[(&str, &[&str])] = &[
        (
            "scrape_configs:\n  - job_name: a\n    scrape_intervall: 15s\n",
            &["unknown field `scrape_intervall`", "line 3"],
        ),
        (
            "global:\n  scrape_interval: 15\n",
            &["not a valid duration", "line 2"],
        ),
        (
            "scrape_configs:\n  - job_name: a\n    scheme: https\n",
            &["job \"a\"", "scheme", "https", "not supported"],
        ),
        (
            "scrape_configs:\n  - job_name: a\n    scrape_interval: 10s\n    scrape_timeout: 15s\n",
            &[
                "job \"a\"",
                "scrape_timeout (15s) is greater than scrape_interval (10s)",
            ],
        ),
        (
            "global: {scrape_interval: 5s, scrape_timeout: 6s}\n",
            &["global", "scrape_timeout"],
        ),
        (
            "scrape_configs:\n  - job_name: a\n  - job_name: a\n",
            &["job \"a\"", "duplicate job_name"],
        ),
        (
            "scrape_configs:\n  - job_name: a\n    relabel_configs:\n      - regex: '(['\n        target_label: x\n",
            &["invalid regex", "line 4"],
        ),
        (
            "scrape_configs:\n  - job_name: a\n    relabel_configs:\n      - action: hashmod\n        source_labels: [x]\n        target_label: y\n",
            &["job \"a\"", "relabel_configs[0]", "modulus"],
        ),
        (
            "scrape_configs:\n  - job_name: a\n    metric_relabel_configs:\n      - action: labeldrop\n        regex: x\n        source_labels: [y]\n",
            &[
                "job \"a\"",
                "metric_relabel_configs[0]",
                "labeldrop requires only 'regex'",
            ],
        ),
        (
            "scrape_configs:\n  - job_name: a\n    relabel_configs:\n      - action: explode\n",
            &["unknown relabel action", "explode"],
        ),
        (
            "scrape_configs:\n  - job_name: a\n    static_configs:\n      - targets: ['http://h:1']\n",
            &["job \"a\"", "static_configs[0].targets[0]", "host:port"],
        ),
        (
            "scrape_configs:\n  - job_name: a\n    file_sd_configs:\n      - files: [targets.txt]\n",
            &["job \"a\"", "file_sd_configs[0].files[0]", ".json"],
        ),
        (
            "scrape_configs:\n  - job_name: ''\n",
            &["scrape_configs[0]", "job_name is empty"],
        ),
        ("remote_write: []\n", &["unknown field `remote_write`"]),
        ("scrape_configs: [\n", &["<config>"]),
    ];
    for (yaml, needles) in cases {
        let err = ScrapeConfig::parse(yaml).expect_err(yaml).to_string();
        for n in *needles {
            assert!(err.contains(n), "error for {yaml:?} lacks {n:?}: {err}");
        }
    }
    // Files: the path is named; an unreadable file is an error too.
    let dir = temp_dir("badcfg");
    let p = dir.join("prometheus.yml");
    std::fs::write(&p, "scrape_configs:\n  - job_name: a\n    bogus: 1\n").unwrap();
    let err = ScrapeConfig::load(&p).unwrap_err().to_string();
    assert!(
        err.contains("prometheus.yml") && err.contains("bogus"),
        "{err}"
    );
    let err = ScrapeConfig::load(dir.join("missing.yml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing.yml"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn file_sd_paths_are_relative_to_the_config_file() {
    let dir = temp_dir("relpath");
    let p = dir.join("prometheus.yml");
    std::fs::write(
        &p,
        "scrape_configs:\n  - job_name: f\n    file_sd_configs:\n      - files: ['sd/*.json', '/abs/x.yml']\n",
    )
    .unwrap();
    let cfg = ScrapeConfig::load(&p).unwrap();
    let files = &cfg.scrape_configs[0].file_sd_configs[0].files;
    assert_eq!(files[0], dir.join("sd/*.json").display().to_string());
    assert_eq!(files[1], "/abs/x.yml");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn self_scrape_config_is_merged_and_the_users_job_wins() {
    let cfg = ScrapeConfig::self_scrape("127.0.0.1:9411");
    let j = cfg.job("meshlens").unwrap();
    assert_eq!(j.static_configs[0].targets, vec!["127.0.0.1:9411"]);
    assert_eq!(j.metrics_path, "/metrics");

    let user = ScrapeConfig::parse(
        "scrape_configs:\n  - job_name: meshlens\n    scrape_interval: 5s\n    static_configs: [{targets: ['10.1.1.1:9411']}]\n  - job_name: envoy\n",
    )
    .unwrap()
    .with_self_scrape("127.0.0.1:9411");
    assert_eq!(user.scrape_configs.len(), 2);
    let j = user.job("meshlens").unwrap();
    assert_eq!(j.static_configs[0].targets, vec!["10.1.1.1:9411"]);
    assert_eq!(j.interval(), Duration::from_secs(5));

    let other = ScrapeConfig::parse("scrape_configs: [{job_name: envoy}]")
        .unwrap()
        .with_self_scrape("127.0.0.1:9411");
    assert_eq!(other.scrape_configs.len(), 2);
    assert!(other.job("meshlens").is_some());

    let src = ConfigSource {
        file: None,
        self_target: Some("127.0.0.1:1".into()),
    };
    assert!(src.load().unwrap().job("meshlens").is_some());
}

// ------------------------------------------------------------------ relabel

#[test]
fn go_replacement_expansion() {
    let re = regex::Regex::new(r"^(?s:(?P<host>[a-z]+)-(\d+))$").unwrap();
    let caps = re.captures("web-42").unwrap();
    let cases = [
        ("$1", "web"),
        ("${1}", "web"),
        ("$2", "42"),
        ("$1x", ""), // Go: the group named "1x", which does not exist
        ("${1}x", "webx"),
        ("$host", "web"),
        ("${host}:$2", "web:42"),
        ("$hostx", ""),
        ("$$1", "$1"),
        ("$", "$"),
        ("a$-b", "a$-b"), // malformed: `$` kept literally
        ("${1", "${1"),
        ("$9", ""),
        ("$01", ""), // leading zero: a name, not a number
        ("plain", "plain"),
        ("$0", "web-42"),
    ];
    for (tpl, want) in cases {
        let mut out = String::new();
        relabel::expand(&re, &caps, tpl, &mut out);
        assert_eq!(out, want, "template {tpl:?}");
    }
}

#[test]
fn md5_matches_the_reference() {
    let hex = |b: [u8; 16]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    assert_eq!(hex(relabel::md5(b"")), "d41d8cd98f00b204e9800998ecf8427e");
    assert_eq!(
        hex(relabel::md5(b"abc")),
        "900150983cd24fb0d6963f7d28e17f72"
    );
    let long = vec![b'a'; 1000];
    assert_eq!(hex(relabel::md5(&long)), "cabe45dcc9ae5b66ba86600cca6b8ba8");
}

#[test]
fn relabel_actions() {
    struct Case {
        name: &'static str,
        input: &'static [(&'static str, &'static str)],
        rules: &'static str,
        /// None = dropped.
        want: Option<&'static [(&'static str, &'static str)]>,
    }
    let cases = [
        Case {
            name: "replace with defaults copies the value",
            input: &[("a", "foo")],
            rules: "- {source_labels: [a], target_label: b}",
            want: Some(&[("a", "foo"), ("b", "foo")]),
        },
        Case {
            name: "replace joins with the separator and is anchored",
            input: &[("a", "foo"), ("b", "bar")],
            rules: "- {source_labels: [a, b], regex: 'f(o+);(.*)', target_label: c, replacement: '${2}-$1'}",
            want: Some(&[("a", "foo"), ("b", "bar"), ("c", "bar-oo")]),
        },
        Case {
            name: "replace does nothing when the anchored regex does not match",
            input: &[("a", "xfoo")],
            rules: "- {source_labels: [a], regex: 'foo', target_label: b}",
            want: Some(&[("a", "xfoo")]),
        },
        Case {
            name: "replace with Go's $1x semantics yields empty, removing the target",
            input: &[("a", "foo"), ("b", "old")],
            rules: "- {source_labels: [a], regex: '(.*)', target_label: b, replacement: '$1x'}",
            want: Some(&[("a", "foo")]),
        },
        Case {
            name: "replace with a templated target label",
            input: &[("a", "team")],
            rules: "- {source_labels: [a], regex: '(.*)', target_label: 'x_$1', replacement: yes}",
            want: Some(&[("a", "team"), ("x_team", "yes")]),
        },
        Case {
            name: "replace with an invalid expanded target does nothing",
            input: &[("a", "1bad")],
            rules: "- {source_labels: [a], target_label: '$1', replacement: v}",
            want: Some(&[("a", "1bad")]),
        },
        Case {
            name: "missing source label reads as empty",
            input: &[("a", "x")],
            rules: "- {source_labels: [nope], regex: '', target_label: b, replacement: empty}",
            want: Some(&[("a", "x"), ("b", "empty")]),
        },
        Case {
            name: "keep",
            input: &[("a", "foo")],
            rules: "- {source_labels: [a], regex: 'f.*', action: keep}",
            want: Some(&[("a", "foo")]),
        },
        Case {
            name: "keep drops on mismatch",
            input: &[("a", "bar")],
            rules: "- {source_labels: [a], regex: 'f.*', action: keep}",
            want: None,
        },
        Case {
            name: "drop",
            input: &[("a", "foo")],
            rules: "- {source_labels: [a], regex: 'fo+', action: DROP}",
            want: None,
        },
        Case {
            name: "drop is anchored",
            input: &[("a", "food")],
            rules: "- {source_labels: [a], regex: 'fo+', action: drop}",
            want: Some(&[("a", "food")]),
        },
        Case {
            name: "labelmap",
            input: &[("__meta_kubernetes_pod_label_app", "web"), ("b", "1")],
            rules: "- {action: labelmap, regex: '__meta_kubernetes_pod_label_(.+)'}",
            want: Some(&[
                ("__meta_kubernetes_pod_label_app", "web"),
                ("app", "web"),
                ("b", "1"),
            ]),
        },
        Case {
            name: "labeldrop",
            input: &[("a", "1"), ("ab", "2"), ("b", "3")],
            rules: "- {action: labeldrop, regex: 'a.*'}",
            want: Some(&[("b", "3")]),
        },
        Case {
            name: "labelkeep",
            input: &[("a", "1"), ("ab", "2"), ("b", "3")],
            rules: "- {action: labelkeep, regex: 'a.*'}",
            want: Some(&[("a", "1"), ("ab", "2")]),
        },
        Case {
            name: "hashmod like Prometheus (md5 low 8 bytes)",
            input: &[("c", "baz")],
            rules: "- {action: hashmod, source_labels: [c], target_label: d, modulus: 1000}",
            want: Some(&[("c", "baz"), ("d", "976")]),
        },
        Case {
            name: "lowercase and uppercase",
            input: &[("a", "MiXeD")],
            rules: "- {action: lowercase, source_labels: [a], target_label: lo}\n- {action: uppercase, source_labels: [a], target_label: up}",
            want: Some(&[("a", "MiXeD"), ("lo", "mixed"), ("up", "MIXED")]),
        },
        Case {
            name: "keepequal keeps when equal",
            input: &[("a", "1"), ("b", "1")],
            rules: "- {action: keepequal, source_labels: [a], target_label: b}",
            want: Some(&[("a", "1"), ("b", "1")]),
        },
        Case {
            name: "keepequal drops when different",
            input: &[("a", "1"), ("b", "2")],
            rules: "- {action: keepequal, source_labels: [a], target_label: b}",
            want: None,
        },
        Case {
            name: "dropequal",
            input: &[("a", "1"), ("b", "1")],
            rules: "- {action: dropequal, source_labels: [a], target_label: b}",
            want: None,
        },
        Case {
            name: "rules apply in order",
            input: &[("a", "x")],
            rules: "- {source_labels: [a], target_label: b, replacement: y}\n- {source_labels: [b], regex: y, action: drop}",
            want: None,
        },
    ];
    for c in cases {
        let r = rules(c.rules);
        let mut l = lm(c.input);
        let kept = relabel::process(&r, &mut l);
        match c.want {
            None => assert!(!kept, "{}: should be dropped, got {l:?}", c.name),
            Some(w) => {
                assert!(kept, "{}: was dropped", c.name);
                assert_eq!(l, lm(w), "{}", c.name);
            }
        }
    }
}

// ------------------------------------------------------------------ targets

#[test]
fn target_labels_are_built_like_prometheus() {
    let job = job_from(
        r#"
scrape_configs:
  - job_name: envoy
    scrape_interval: 15s
    metrics_path: /stats/prometheus
    params:
      format: [prometheus]
      x: [1, 2]
    static_configs:
      - targets: ["10.0.0.1:15090"]
        labels: {team: mesh, __meta_zone: a}
    relabel_configs:
      - {source_labels: [__meta_zone], target_label: zone}
      - {source_labels: [__address__], regex: '(.*):\d+', target_label: host}
      - {target_label: __param_format, replacement: text}
"#,
    );
    let t = first_target(&job);
    let labels: Vec<(String, String)> = t
        .labels
        .iter()
        .map(|l| (l.name.to_string(), l.value.to_string()))
        .collect();
    let want: Vec<(String, String)> = [
        ("host", "10.0.0.1"),
        ("instance", "10.0.0.1:15090"),
        ("job", "envoy"),
        ("team", "mesh"),
        ("zone", "a"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(
        labels, want,
        "public labels: no __ labels, instance defaulted"
    );
    assert_eq!(t.discovered["__address__"], "10.0.0.1:15090");
    assert_eq!(t.discovered["__scheme__"], "http");
    assert_eq!(t.discovered["__metrics_path__"], "/stats/prometheus");
    assert_eq!(t.discovered["__scrape_interval__"], "15s");
    assert_eq!(t.discovered["__scrape_timeout__"], "10s");
    assert_eq!(t.discovered["__param_format"], "prometheus");
    assert_eq!(t.discovered["__param_x"], "1");
    assert_eq!(t.discovered["job"], "envoy");
    assert!(
        !t.all_labels.contains_key("__meta_zone"),
        "meta labels removed"
    );
    // __param_ labels win over configured params; multi-valued params stay.
    assert_eq!(
        t.url,
        "http://10.0.0.1:15090/stats/prometheus?format=text&x=1&x=2"
    );
    assert_eq!(t.interval, Duration::from_secs(15));
}

#[test]
fn targets_are_dropped_by_relabeling_and_instance_can_be_set() {
    let job = job_from(
        r#"
scrape_configs:
  - job_name: j
    static_configs:
      - targets: ["a:1", "b:2", "c:3", "a:1"]
    relabel_configs:
      - {source_labels: [__address__], regex: 'b:.*', action: drop}
      - {source_labels: [__address__], regex: 'c:.*', target_label: __address__, replacement: ''}
      - {source_labels: [__address__], regex: '(.*):1', target_label: instance, replacement: '$1-instance'}
      - {source_labels: [__address__], regex: 'a:1', target_label: __scrape_interval__, replacement: 30s}
"#,
    );
    let (active, dropped) = target::build_targets(&job, &target::static_groups(&job));
    assert_eq!(active.len(), 1, "duplicates collapse: {active:?}");
    assert_eq!(active[0].labels.get("instance"), Some("a-instance"));
    assert_eq!(active[0].interval, Duration::from_secs(30));
    assert_eq!(dropped.len(), 2);
    assert!(
        dropped
            .iter()
            .any(|d| d.discovered_labels["__address__"] == "b:2")
    );
    assert!(
        dropped
            .iter()
            .any(|d| d.discovered_labels["__address__"] == "c:3")
    );

    // A relabeled interval shorter than the timeout is refused, with a reason.
    let job = job_from(
        "scrape_configs:\n  - job_name: j\n    static_configs: [{targets: ['a:1']}]\n    relabel_configs:\n      - {target_label: __scrape_interval__, replacement: 1s}\n",
    );
    match target::populate(&job, &BTreeMap::new(), "a:1") {
        Populated::Dropped(d) => assert!(d.reason.contains("timeout"), "{d:?}"),
        Populated::Active(t) => panic!("should be dropped: {t:?}"),
    }
}

// ------------------------------------------------------------------- parser

const ENVOY_EXCERPT: &str = r#"# TYPE envoy_cluster_upstream_cx_total counter
envoy_cluster_upstream_cx_total{envoy_cluster_name="outbound|9080||reviews.default.svc.cluster.local"} 12
envoy_cluster_upstream_cx_total{envoy_cluster_name="xds-grpc"} 1
# TYPE envoy_cluster_upstream_rq_pending_overflow counter
envoy_cluster_upstream_rq_pending_overflow{envoy_cluster_name="xds-grpc"} 0
# TYPE envoy_server_live gauge
envoy_server_live{} 1
# TYPE envoy_cluster_membership_healthy gauge
envoy_cluster_membership_healthy{envoy_cluster_name="xds-grpc"} 1
# TYPE envoy_cluster_upstream_cx_connect_ms histogram
envoy_cluster_upstream_cx_connect_ms_bucket{envoy_cluster_name="xds-grpc",le="0.5"} 0
envoy_cluster_upstream_cx_connect_ms_bucket{envoy_cluster_name="xds-grpc",le="1"} 1
envoy_cluster_upstream_cx_connect_ms_bucket{envoy_cluster_name="xds-grpc",le="5"} 2
envoy_cluster_upstream_cx_connect_ms_bucket{envoy_cluster_name="xds-grpc",le="3.6e+06"} 2
envoy_cluster_upstream_cx_connect_ms_bucket{envoy_cluster_name="xds-grpc",le="+Inf"} 2
envoy_cluster_upstream_cx_connect_ms_sum{envoy_cluster_name="xds-grpc"} 3.0999999999999996447286321199499070644378662109375
envoy_cluster_upstream_cx_connect_ms_count{envoy_cluster_name="xds-grpc"} 2
# HELP rpc_duration_seconds A summary of the RPC duration in seconds.
# TYPE rpc_duration_seconds summary
rpc_duration_seconds{quantile="0.5"} 4773
rpc_duration_seconds{quantile="0.99"} NaN
rpc_duration_seconds_sum 1.7560473e+07
rpc_duration_seconds_count 2693
# A plain comment
envoy_weird{path="C:\\DIR\\FILE.TXT",error="Cannot find file:\n\"FILE.TXT\"",list="a,b=c}"} -Inf 1700000000000
istio:recording_rule:sum 5
"#;

fn find<'a>(
    e: &'a parse::Exposition,
    name: &str,
    label: Option<(&str, &str)>,
) -> &'a parse::ParsedSample {
    e.samples
        .iter()
        .find(|s| {
            s.name == name
                && label.is_none_or(|(k, v)| s.labels.iter().any(|(a, b)| a == k && b == v))
        })
        .unwrap_or_else(|| panic!("no sample {name} {label:?}"))
}

#[test]
fn parses_an_envoy_exposition() {
    let e = parse::parse_exposition(ENVOY_EXCERPT).unwrap();
    assert_eq!(e.samples.len(), 18);
    let s = find(&e, "envoy_cluster_upstream_cx_total", None);
    assert_eq!(
        s.labels,
        vec![(
            "envoy_cluster_name".to_string(),
            "outbound|9080||reviews.default.svc.cluster.local".to_string()
        )]
    );
    assert_eq!(s.value, 12.0);
    assert!(find(&e, "envoy_server_live", None).labels.is_empty());
    // Histogram buckets keep their own series names; `le` normalized like Prometheus 3.
    let les: Vec<&str> = e
        .samples
        .iter()
        .filter(|s| s.name == "envoy_cluster_upstream_cx_connect_ms_bucket")
        .map(|s| s.labels.iter().find(|(k, _)| k == "le").unwrap().1.as_str())
        .collect();
    assert_eq!(les, vec!["0.5", "1.0", "5.0", "3.6e+06", "+Inf"]);
    let sum = find(&e, "envoy_cluster_upstream_cx_connect_ms_sum", None);
    assert!((sum.value - 3.1).abs() < 1e-9);
    assert_eq!(
        find(&e, "envoy_cluster_upstream_cx_connect_ms_count", None).value,
        2.0
    );
    // Summary: quantile series, NaN value, _sum/_count.
    assert_eq!(
        find(&e, "rpc_duration_seconds", Some(("quantile", "0.5"))).value,
        4773.0
    );
    assert!(
        find(&e, "rpc_duration_seconds", Some(("quantile", "0.99")))
            .value
            .is_nan()
    );
    assert_eq!(
        find(&e, "rpc_duration_seconds_sum", None).value,
        1.7560473e7
    );
    // Escapes, commas, `=` and `}` inside values; -Inf; explicit timestamp.
    let w = find(&e, "envoy_weird", None);
    assert_eq!(w.labels[0].1, r"C:\DIR\FILE.TXT");
    assert_eq!(w.labels[1].1, "Cannot find file:\n\"FILE.TXT\"");
    assert_eq!(w.labels[2].1, "a,b=c}");
    assert_eq!(w.value, f64::NEG_INFINITY);
    assert_eq!(w.timestamp_ms, Some(1_700_000_000_000));
    // Names with colons.
    assert_eq!(find(&e, "istio:recording_rule:sum", None).value, 5.0);
    // Metadata.
    let md = e.metadata.to_metadata();
    let rpc = md
        .iter()
        .find(|m| m.metric_family == "rpc_duration_seconds")
        .unwrap();
    assert_eq!(rpc.kind, MetricType::Summary);
    assert_eq!(rpc.help, "A summary of the RPC duration in seconds.");
    let h = md
        .iter()
        .find(|m| m.metric_family == "envoy_cluster_upstream_cx_connect_ms")
        .unwrap();
    assert_eq!(h.kind, MetricType::Histogram);
}

/// Documents why the scrape path does not use `prometheus_parse::Scrape`:
/// on the same input it loses lines and mangles values. If a new version
/// fixes these, this test fails and the choice can be revisited.
#[test]
fn prometheus_parse_crate_loses_information_on_envoy_output() {
    use std::io::BufRead;
    let lines = std::io::BufReader::new(ENVOY_EXCERPT.as_bytes()).lines();
    let s = prometheus_parse::Scrape::parse(lines).unwrap();
    let names: Vec<&str> = s.samples.iter().map(|x| x.metric.as_str()).collect();
    // `envoy_server_live{} 1` (Envoy writes empty braces) is silently dropped.
    assert!(!names.contains(&"envoy_server_live"), "{names:?}");
    // Names with ':' are silently dropped.
    assert!(!names.iter().any(|n| n.contains(':')), "{names:?}");
    // A `}` inside a label value loses the whole line.
    assert!(!names.contains(&"envoy_weird"), "{names:?}");
    // Escapes are not undone, and `,` inside values splits them.
    let small = "m{path=\"C:\\\\DIR\",list=\"a,b\"} 1\n";
    let s2 =
        prometheus_parse::Scrape::parse(std::io::BufReader::new(small.as_bytes()).lines()).unwrap();
    assert_eq!(s2.samples[0].labels.get("path"), Some(r"C:\\DIR"));
    assert_ne!(s2.samples[0].labels.get("list"), Some("a,b"));
    let (_, ours_small) = parse::parse_series(small.split(' ').next().unwrap()).unwrap();
    assert_eq!(ours_small[0].1, r"C:\DIR");
    assert_eq!(ours_small[1].1, "a,b");
    // Our parser keeps all of them.
    let ours = parse::parse_exposition(ENVOY_EXCERPT).unwrap();
    assert!(ours.samples.iter().any(|x| x.name == "envoy_server_live"));
    assert!(ours.samples.iter().any(|x| x.name.contains(':')));
    // Where the crate is right, the values agree (histograms regrouped).
    let cx = s
        .samples
        .iter()
        .find(|x| {
            x.metric == "envoy_cluster_upstream_cx_total"
                && x.labels.get("envoy_cluster_name") == Some("xds-grpc")
        })
        .unwrap();
    assert_eq!(cx.value, prometheus_parse::Value::Counter(1.0));
    assert_eq!(
        find(
            &ours,
            "envoy_cluster_upstream_cx_total",
            Some(("envoy_cluster_name", "xds-grpc"))
        )
        .value,
        1.0
    );
}

#[test]
fn parser_edge_cases_and_errors() {
    assert_eq!(parse::parse_line("").unwrap(), Line::Blank);
    assert_eq!(parse::parse_line("# just a comment").unwrap(), Line::Blank);
    assert_eq!(parse::parse_line("#HELP x y").unwrap(), Line::Blank);
    assert_eq!(
        parse::parse_line("# HELP x a \\\\ b\\nc").unwrap(),
        Line::Help {
            family: "x",
            text: "a \\ b\nc".into()
        }
    );
    assert_eq!(
        parse::parse_line("# TYPE x untyped").unwrap(),
        Line::Type {
            family: "x",
            kind: MetricType::Unknown
        }
    );
    match parse::parse_line("  x{a=\"1\",} 2 -5\r").unwrap() {
        Line::Sample {
            series,
            value,
            timestamp_ms,
        } => {
            assert_eq!(series, "x{a=\"1\",}");
            assert_eq!(value, 2.0);
            assert_eq!(timestamp_ms, Some(-5));
        }
        l => panic!("{l:?}"),
    }
    for (v, want) in [
        ("+Inf", f64::INFINITY),
        ("Inf", f64::INFINITY),
        ("1e3", 1000.0),
        ("-0.5", -0.5),
    ] {
        assert_eq!(parse::parse_value(v), Some(want), "{v}");
    }
    assert!(parse::parse_value("NaN").unwrap().is_nan());
    assert_eq!(parse::parse_value("0x10"), None);
    let (name, labels) = parse::parse_series("m{ a = \"x\" , b=\"\\t\"}").unwrap();
    assert_eq!(name, "m");
    assert_eq!(labels[0].0, "a");
    assert_eq!(labels[0].1, "x");
    assert_eq!(labels[1].1, "\\t", "unknown escapes are kept as written");

    let bad = [
        ("x", "expected a space"),
        ("x 1 2 3", "unexpected text"),
        ("x abc", "invalid value"),
        ("x 1 1.5", "invalid timestamp"),
        ("x{a=\"1\" 1", "unterminated"),
        ("1x 1", "metric name"),
        ("# TYPE x bogus", "invalid metric type"),
    ];
    for (l, want) in bad {
        let err = match parse::parse_line(l) {
            Err(e) => e,
            Ok(Line::Sample { series, .. }) => parse::parse_series(series).unwrap_err(),
            Ok(other) => panic!("{l:?} parsed as {other:?}"),
        };
        assert!(err.contains(want), "{l:?}: {err}");
    }
    for s in ["x{a=1}", "x{a=\"1\"b=\"2\"}", "x{=\"1\"}", "x{a=\"1\"}y"] {
        assert!(parse::parse_series(s).is_err(), "{s}");
    }
    let err = parse::parse_exposition("a 1\nb 2\nc{ 3\n").unwrap_err();
    assert_eq!(err.line, 3);

    for (f, want) in [
        (1.0, "1.0"),
        (0.5, "0.5"),
        (5.0, "5.0"),
        (1e6, "1e+06"),
        (3.6e6, "3.6e+06"),
        (123456.0, "123456.0"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (f64::INFINITY, "+Inf"),
    ] {
        assert_eq!(
            parse::normalize_float_label(&parse::format_go_float(f)),
            want,
            "{f}"
        );
    }
    assert_eq!(parse::normalize_float_label("Inf"), "+Inf");
    assert_eq!(parse::normalize_float_label("x"), "x");
}

// --------------------------------------------------- processing (no network)

fn process(
    job: &super::JobConfig,
    t: &Target,
    st: &mut LoopState,
    body: &str,
    ts: i64,
) -> scrape_loop::Processed {
    scrape_loop::process(job, t, st, body, ts).unwrap()
}

fn labels_of(p: &scrape_loop::Processed, name: &str) -> Vec<Labels> {
    p.series
        .iter()
        .filter(|s| s.labels.metric_name() == Some(name))
        .map(|s| s.labels.clone())
        .collect()
}

#[test]
fn honor_labels_false_renames_conflicts_and_true_keeps_scraped() {
    let yaml = |honor: bool| {
        format!(
            "scrape_configs:\n  - job_name: j\n    honor_labels: {honor}\n    static_configs: [{{targets: ['h:1'], labels: {{zone: z1}}}}]\n"
        )
    };
    let body = "m{job=\"scraped\",instance=\"i2\",exported_job=\"e\",zone=\"z9\",k=\"v\"} 1\n";
    let job = job_from(&yaml(false));
    let t = first_target(&job);
    let p = process(&job, &t, &mut LoopState::default(), body, 1000);
    let l = &labels_of(&p, "m")[0];
    assert_eq!(l.get("job"), Some("j"));
    assert_eq!(l.get("instance"), Some("h:1"));
    assert_eq!(l.get("zone"), Some("z1"));
    assert_eq!(l.get("exported_instance"), Some("i2"));
    assert_eq!(l.get("exported_zone"), Some("z9"));
    // exported_job is taken by a scraped label: one more prefix.
    assert_eq!(l.get("exported_job"), Some("e"));
    assert_eq!(l.get("exported_exported_job"), Some("scraped"));
    assert_eq!(l.get("k"), Some("v"));

    let job = job_from(&yaml(true));
    let t = first_target(&job);
    let p = process(&job, &t, &mut LoopState::default(), body, 1000);
    let l = &labels_of(&p, "m")[0];
    assert_eq!(l.get("job"), Some("scraped"));
    assert_eq!(l.get("instance"), Some("i2"));
    assert_eq!(l.get("zone"), Some("z9"));
    assert_eq!(l.get("exported_job"), Some("e"));
    assert_eq!(l.get("exported_instance"), None);
}

#[test]
fn metric_relabeling_timestamps_and_staleness_in_process() {
    let job = job_from(
        r#"
scrape_configs:
  - job_name: j
    static_configs: [{targets: ['h:1']}]
    metric_relabel_configs:
      - {source_labels: [__name__], regex: 'drop_me.*', action: drop}
      - {source_labels: [code], regex: '(\d)..', target_label: class, replacement: '${1}xx'}
"#,
    );
    let t = first_target(&job);
    let mut st = LoopState::default();
    let body1 = "# TYPE req counter\nreq{code=\"503\"} 1\ndrop_me 2\nold 3\nexplicit 4 12345\nreq{code=\"503\"} 9\n";
    let p = process(&job, &t, &mut st, body1, 1000);
    assert_eq!(p.scraped, 5);
    assert_eq!(p.post_relabel, 4);
    assert_eq!(p.duplicates, 1);
    assert_eq!(p.added, 3);
    let req = &labels_of(&p, "req")[0];
    assert_eq!(req.get("class"), Some("5xx"));
    assert!(labels_of(&p, "drop_me").is_empty());
    let ex = p
        .series
        .iter()
        .find(|s| s.labels.metric_name() == Some("explicit"))
        .unwrap();
    assert_eq!(
        ex.samples[0].timestamp_ms, 12345,
        "honor_timestamps keeps it"
    );
    assert_eq!(p.metadata.len(), 1);

    // Second scrape: `old` vanished -> stale marker; metadata not resent;
    // the cache serves the same series (no new series added).
    let p = process(
        &job,
        &t,
        &mut st,
        "# TYPE req counter\nreq{code=\"503\"} 2\n",
        2000,
    );
    assert_eq!(p.added, 0);
    assert!(
        p.metadata.is_empty(),
        "metadata is only sent when it changes"
    );
    let stale: Vec<_> = p
        .series
        .iter()
        .filter(|s| is_stale_nan(s.samples[0].value))
        .collect();
    assert_eq!(stale.len(), 1, "{stale:?}");
    assert_eq!(stale[0].labels.metric_name(), Some("old"));
    assert_eq!(stale[0].samples[0].timestamp_ms, 2000);
    // Series with explicit timestamps get no stale markers.
    assert!(
        !stale
            .iter()
            .any(|s| s.labels.metric_name() == Some("explicit"))
    );

    // honor_timestamps: false -> the scrape time.
    let mut job2 = job.clone();
    job2.honor_timestamps = false;
    let p = process(
        &job2,
        &t,
        &mut LoopState::default(),
        "explicit 4 12345\n",
        3000,
    );
    assert_eq!(p.series[0].samples[0].timestamp_ms, 3000);
}

#[test]
fn limits_fail_the_scrape() {
    let base = "scrape_configs:\n  - job_name: j\n    static_configs: [{targets: ['h:1']}]\n";
    let cases = [
        ("    sample_limit: 2\n", "a 1\nb 1\nc 1\n", "sample_limit"),
        ("    sample_limit: 3\n", "a 1\nb 1\nc 1\n", ""),
        // __name__, job, instance and x: 4 labels.
        ("    label_limit: 4\n", "a{x=\"1\"} 1\n", ""),
        (
            "    label_limit: 4\n",
            "a{x=\"1\",y=\"2\"} 1\n",
            "label_limit",
        ),
        (
            "    label_name_length_limit: 5\n",
            "a{toolong=\"1\"} 1\n",
            "label_name_length_limit",
        ),
        (
            "    label_value_length_limit: 3\n",
            "a{x=\"1234\"} 1\n",
            "label_value_length_limit",
        ),
        ("", "a{x=\"1\",x=\"2\"} 1\n", "invalid_series"),
        ("", "a 1\nb{ 2\n", "parse_error"),
    ];
    for (extra, body, reason) in cases {
        let job = job_from(&format!("{base}{extra}"));
        let t = first_target(&job);
        let r = scrape_loop::process(&job, &t, &mut LoopState::default(), body, 1);
        match (reason, r) {
            ("", Ok(_)) => {}
            ("", Err(f)) => panic!("{extra}{body}: unexpected failure {f:?}"),
            (want, Ok(_)) => panic!("{extra}{body}: should fail with {want}"),
            (want, Err(f)) => assert_eq!(f.reason, want, "{extra}{body}: {}", f.message),
        }
    }
    // The scraped count covers the whole body even past the sample limit.
    let job = job_from(&format!("{base}    sample_limit: 1\n"));
    let t = first_target(&job);
    let f = scrape_loop::process(&job, &t, &mut LoopState::default(), "a 1\nb 1\nc 1\n", 1)
        .unwrap_err();
    assert_eq!(f.scraped, 3);
    assert!(f.message.contains("sample limit exceeded"), "{}", f.message);
}

// ------------------------------------------------------- end to end (HTTP)

fn job_yaml(name: &str, targets: &[SocketAddr], extra: &str) -> String {
    let t: Vec<String> = targets.iter().map(|a| format!("'{a}'")).collect();
    format!(
        "  - job_name: {name}\n    scrape_interval: 200ms\n    scrape_timeout: 150ms\n    static_configs: [{{targets: [{}]}}]\n{extra}",
        t.join(", ")
    )
}

fn config(jobs: &[String]) -> ScrapeConfig {
    ScrapeConfig::parse(&format!("scrape_configs:\n{}", jobs.concat())).unwrap()
}

#[tokio::test]
async fn scrapes_with_regular_timestamps_metadata_once_and_synthetic_series() {
    let (exp, addr, _srv) = start_exporter(
        "# HELP reqs Requests.\n# TYPE reqs counter\nreqs{code=\"200\"} 7\n# TYPE lat histogram\nlat_bucket{le=\"1\"} 1\nlat_bucket{le=\"+Inf\"} 2\nlat_sum 3\nlat_count 2\n",
    )
    .await;
    let sink = Collector::default();
    let tel = Telemetry::new();
    let mgr = ScrapeManager::start(
        config(&[job_yaml("basic", &[addr], "")]),
        Arc::new(sink.clone()),
        tel.clone(),
    );
    let inst = addr.to_string();
    wait_until("4 scrapes", Duration::from_secs(5), || {
        sink.of("up", &inst).len() >= 4
    })
    .await;
    let ups = sink.of("up", &inst);
    assert!(ups.iter().all(|(_, v)| *v == 1.0), "{ups:?}");
    // On a 200ms grid (a tick may be skipped if the machine is very busy).
    for w in ups.windows(2) {
        let d = w[1].0 - w[0].0;
        assert!(d > 0 && d % 200 == 0, "timestamps on a 200ms grid: {ups:?}");
    }
    assert!(ups.windows(2).any(|w| w[1].0 - w[0].0 == 200), "{ups:?}");
    let reqs = sink.of("reqs", &inst);
    assert_eq!(
        reqs[0],
        (ups[0].0, 7.0),
        "samples carry the scrape's tick time"
    );
    let s = sink
        .all_series()
        .into_iter()
        .find(|l| l.metric_name() == Some("reqs"))
        .unwrap();
    assert_eq!(s.get("job"), Some("basic"));
    assert_eq!(s.get("code"), Some("200"));
    assert!(
        !sink
            .samples("lat_bucket", |l| l.get("le") == Some("1.0"))
            .is_empty(),
        "le normalized"
    );
    assert!(
        !sink
            .samples("lat_bucket", |l| l.get("le") == Some("+Inf"))
            .is_empty()
    );
    let scraped = sink.of("scrape_samples_scraped", &inst);
    assert_eq!(scraped[0].1, 5.0);
    assert_eq!(
        sink.of("scrape_samples_post_metric_relabeling", &inst)[0].1,
        5.0
    );
    assert_eq!(sink.of("scrape_series_added", &inst)[0].1, 5.0);
    assert_eq!(sink.of("scrape_series_added", &inst)[1].1, 0.0);
    assert!(!sink.of("scrape_duration_seconds", &inst).is_empty());
    // Metadata: sent with the first scrape only.
    let with_meta: Vec<usize> = sink
        .batches
        .lock()
        .iter()
        .enumerate()
        .filter(|(_, b)| !b.metadata.is_empty())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(with_meta, vec![0]);
    let md = sink.batches.lock()[0].metadata.clone();
    assert!(md.iter().any(|m| m.metric_family == "reqs"
        && m.kind == MetricType::Counter
        && m.help == "Requests."));
    // Request headers.
    let h = exp.last_headers.lock().clone().unwrap();
    assert_eq!(h.get("accept").unwrap(), super::ACCEPT_HEADER);
    assert!(
        h.get("accept-encoding")
            .unwrap()
            .to_str()
            .unwrap()
            .contains("gzip")
    );
    assert_eq!(
        h.get("x-prometheus-scrape-timeout-seconds").unwrap(),
        "0.15"
    );
    let snap = mgr.targets();
    assert_eq!(snap.active_targets.len(), 1);
    assert_eq!(snap.active_targets[0].health, TargetHealth::Up);
    assert_eq!(
        snap.active_targets[0].scrape_url,
        format!("http://{addr}/metrics")
    );
    assert_eq!(snap.active_targets[0].scrape_interval, "200ms");
    assert!(snap.active_targets[0].last_scrape_ms.is_some());
    mgr.stop().await;
    // No stale markers on shutdown.
    assert!(!sink.of("reqs", &inst).iter().any(|(_, v)| is_stale_nan(*v)));
}

#[tokio::test]
async fn gzip_bodies_and_the_body_size_limit() {
    let body: String = (0..50).map(|i| format!("m{{i=\"{i}\"}} {i}\n")).collect();
    let (_exp, addr, _srv) = start_exporter(&body).await;
    let sink = Collector::default();
    let tel = Telemetry::new();
    let jobs = [
        job_yaml("gz", &[addr], "    metrics_path: /gz\n"),
        job_yaml("capped", &[addr], "    body_size_limit: 100B\n"),
    ];
    let mgr = ScrapeManager::start(config(&jobs), Arc::new(sink.clone()), tel.clone());
    let gz = |l: &Labels| l.get("job") == Some("gz");
    let capped = |l: &Labels| l.get("job") == Some("capped");
    wait_until("both jobs scraped", Duration::from_secs(5), || {
        !sink.samples("up", gz).is_empty() && !sink.samples("up", capped).is_empty()
    })
    .await;
    assert_eq!(sink.samples("up", gz)[0].1, 1.0);
    assert_eq!(sink.samples("m", gz).len() % 50, 0);
    assert!(!sink.samples("m", gz).is_empty());
    assert_eq!(sink.samples("up", capped)[0].1, 0.0);
    assert!(sink.samples("m", capped).is_empty());
    assert!(
        tel.counter(
            super::metrics::FAILURES,
            &[("job", "capped"), ("reason", "body_size_limit")]
        ) >= 1.0
    );
    mgr.stop().await;
}

#[tokio::test]
async fn vanished_series_get_a_stale_marker() {
    let (exp, addr, _srv) = start_exporter("a 1\nb{x=\"y\"} 2\n").await;
    let sink = Collector::default();
    let mgr = ScrapeManager::start(
        config(&[job_yaml("stale", &[addr], "")]),
        Arc::new(sink.clone()),
        Telemetry::new(),
    );
    let inst = addr.to_string();
    wait_until("b scraped", Duration::from_secs(5), || {
        !sink.of("b", &inst).is_empty()
    })
    .await;
    exp.set_body("a 1\n");
    wait_until("b stale", Duration::from_secs(5), || {
        sink.of("b", &inst).iter().any(|(_, v)| is_stale_nan(*v))
    })
    .await;
    // Let a few more scrapes happen: exactly one marker, nothing after it.
    let n = sink.of("up", &inst).len();
    wait_until("2 more scrapes", Duration::from_secs(5), || {
        sink.of("up", &inst).len() >= n + 2
    })
    .await;
    let b = sink.of("b", &inst);
    let (stale_ts, _) = *b.last().unwrap();
    assert!(is_stale_nan(b.last().unwrap().1), "{b:?}");
    assert_eq!(b.iter().filter(|(_, v)| is_stale_nan(*v)).count(), 1);
    // The marker carries the timestamp of the scrape that missed b.
    assert!(sink.of("a", &inst).iter().any(|(t, _)| *t == stale_ts));
    assert!(sink.of("a", &inst).iter().all(|(_, v)| *v == 1.0));
    mgr.stop().await;
}

#[tokio::test]
async fn target_down_writes_up_0_and_stale_markers() {
    let (_exp, addr, srv) = start_exporter("x 1\ny 2\n").await;
    let sink = Collector::default();
    let tel = Telemetry::new();
    let mgr = ScrapeManager::start(
        config(&[job_yaml("down", &[addr], "")]),
        Arc::new(sink.clone()),
        tel.clone(),
    );
    let inst = addr.to_string();
    wait_until("x scraped", Duration::from_secs(5), || {
        !sink.of("x", &inst).is_empty()
    })
    .await;
    srv.abort();
    let _ = srv.await;
    wait_until("up=0", Duration::from_secs(5), || {
        sink.of("up", &inst).iter().any(|(_, v)| *v == 0.0)
    })
    .await;
    let ups = sink.of("up", &inst);
    let (down_ts, _) = *ups.iter().find(|(_, v)| *v == 0.0).unwrap();
    assert!(
        !ups.iter().any(|(_, v)| is_stale_nan(*v)),
        "up is 0, never stale"
    );
    for name in ["x", "y"] {
        let s = sink.of(name, &inst);
        assert_eq!(
            s.last().map(|(t, v)| (*t, is_stale_nan(*v))),
            Some((down_ts, true)),
            "{name}: {s:?}"
        );
    }
    // Once marked, the following failed scrapes add no more markers.
    let n = ups.len();
    wait_until("more failed scrapes", Duration::from_secs(5), || {
        sink.of("up", &inst).len() >= n + 2
    })
    .await;
    assert_eq!(
        sink.of("x", &inst)
            .iter()
            .filter(|(_, v)| is_stale_nan(*v))
            .count(),
        1
    );
    assert_eq!(
        sink.of("scrape_samples_scraped", &inst).last().unwrap().1,
        0.0
    );
    let snap = mgr.targets();
    assert_eq!(snap.active_targets[0].health, TargetHealth::Down);
    assert!(!snap.active_targets[0].last_error.is_empty());
    assert!(
        tel.counter(
            super::metrics::FAILURES,
            &[("job", "down"), ("reason", "connection")]
        ) >= 1.0
    );
    let text = tel.render();
    assert!(
        text.contains(&format!(
            "meshlens_scrape_last_error{{job=\"down\",instance=\"{inst}\",reason=\"connection\"}} 1"
        )),
        "{text}"
    );
    mgr.stop().await;
}

#[tokio::test]
async fn a_slow_target_does_not_delay_a_fast_one() {
    let (fast_exp, fast, _s1) = start_exporter("f 1\n").await;
    let (slow_exp, slow, _s2) = start_exporter("s 1\n").await;
    *slow_exp.delay.lock() = Duration::from_secs(10);
    let sink = Collector::default();
    let jobs = [
        job_yaml("fast", &[fast], ""),
        format!(
            "  - job_name: slow\n    scrape_interval: 2s\n    scrape_timeout: 1900ms\n    static_configs: [{{targets: ['{slow}']}}]\n"
        ),
    ];
    let mgr = ScrapeManager::start(config(&jobs), Arc::new(sink.clone()), Telemetry::new());
    wait_until("slow scrape in flight", Duration::from_secs(5), || {
        slow_exp.hits.load(Ordering::SeqCst) >= 1
    })
    .await;
    let fi = fast.to_string();
    let before = sink.of("up", &fi).len();
    // While the slow scrape hangs (until its 1.9s timeout), the fast target
    // keeps its 200ms rhythm; serialized scrapes could not do 3 in 1.8s.
    wait_until(
        "3 fast scrapes during the slow one",
        Duration::from_millis(1800),
        || sink.of("up", &fi).len() >= before + 3,
    )
    .await;
    assert!(
        sink.of("up", &slow.to_string())
            .iter()
            .all(|(_, v)| *v == 0.0),
        "the slow target never answered in time"
    );
    assert!(fast_exp.hits.load(Ordering::SeqCst) >= 3);
    mgr.stop().await;
}

#[tokio::test]
async fn file_sd_changes_are_picked_up_and_removed_targets_go_stale() {
    let (_e1, a, _s1) = start_exporter("m 1\n").await;
    let (_e2, b, _s2) = start_exporter("m 2\n").await;
    let dir = temp_dir("filesd");
    let sd = dir.join("targets.json");
    write_file(
        &sd,
        &format!(r#"[{{"targets": ["{a}", "{b}"], "labels": {{"team": "mesh"}}}}]"#),
    );
    let cfg = ScrapeConfig::parse(&format!(
        "scrape_configs:\n  - job_name: files\n    scrape_interval: 200ms\n    scrape_timeout: 150ms\n    file_sd_configs:\n      - files: ['{}/*.json']\n",
        dir.display()
    ))
    .unwrap();
    let sink = Collector::default();
    let mgr = ScrapeManager::start_with_options(
        cfg,
        Arc::new(sink.clone()),
        Telemetry::new(),
        fast_options(),
    );
    let (ai, bi) = (a.to_string(), b.to_string());
    wait_until("both targets scraped", Duration::from_secs(5), || {
        !sink.of("m", &ai).is_empty() && !sink.of("m", &bi).is_empty()
    })
    .await;
    let s = sink
        .all_series()
        .into_iter()
        .find(|l| l.metric_name() == Some("m"))
        .unwrap();
    assert_eq!(s.get("team"), Some("mesh"));
    assert_eq!(
        s.get("__meta_filepath"),
        None,
        "meta labels are not attached"
    );
    let snap = mgr.targets();
    assert_eq!(snap.active_targets.len(), 2);
    assert!(snap.active_targets[0].discovered_labels["__meta_filepath"].ends_with("targets.json"));

    // b leaves, c (a new file) arrives.
    write_file(
        &sd,
        &format!(r#"[{{"targets": ["{a}"], "labels": {{"team": "mesh"}}}}]"#),
    );
    wait_until("b's series stale", Duration::from_secs(5), || {
        sink.of("m", &bi).iter().any(|(_, v)| is_stale_nan(*v))
    })
    .await;
    assert!(
        sink.of("up", &bi)
            .last()
            .is_some_and(|(_, v)| is_stale_nan(*v)),
        "synthetic series go stale too"
    );
    assert_eq!(mgr.targets().active_targets.len(), 1);
    let n = sink.of("m", &bi).len();
    let na = sink.of("m", &ai).len();
    wait_until("a keeps going", Duration::from_secs(5), || {
        sink.of("m", &ai).len() >= na + 2
    })
    .await;
    assert_eq!(sink.of("m", &bi).len(), n, "b is no longer scraped");
    assert!(
        !sink.of("m", &ai).iter().any(|(_, v)| is_stale_nan(*v)),
        "a kept running untouched"
    );

    // A broken file keeps its previous targets.
    std::fs::write(&sd, "[{not json").unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(mgr.targets().active_targets.len(), 1);
    mgr.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn reload_keeps_unchanged_targets_and_a_bad_file_keeps_the_old_config() {
    use tower::ServiceExt;
    let (_e1, a, _s1) = start_exporter("m 1\n").await;
    let (_e2, b, _s2) = start_exporter("n 1\n").await;
    let dir = temp_dir("reload");
    let file = dir.join("prometheus.yml");
    std::fs::write(
        &file,
        format!("scrape_configs:\n{}", job_yaml("a", &[a], "")),
    )
    .unwrap();
    let sink = Collector::default();
    let tel = Telemetry::new();
    let mgr = ScrapeManager::start_from_source(
        ConfigSource {
            file: Some(file.clone()),
            self_target: None,
        },
        Arc::new(sink.clone()),
        tel.clone(),
        fast_options(),
    )
    .unwrap();
    let ai = a.to_string();
    wait_until("a scraped", Duration::from_secs(5), || {
        sink.of("m", &ai).len() >= 2
    })
    .await;

    // Invalid file: error returned, old config and targets stay.
    std::fs::write(
        &file,
        "scrape_configs:\n  - job_name: a\n    scrape_intervall: 1s\n",
    )
    .unwrap();
    let err = mgr.reload_from_file(&file).await.unwrap_err().to_string();
    assert!(err.contains("scrape_intervall"), "{err}");
    assert!(mgr.config().job("a").is_some());
    assert_eq!(mgr.targets().active_targets.len(), 1);
    let app = super::router(mgr.clone());
    let resp = app
        .clone()
        .oneshot(
            axum::http::Request::post("/-/reload")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 500);
    let text = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&text);
    assert!(
        text.contains("failed to reload config") && text.contains("scrape_intervall"),
        "{text}"
    );
    assert_eq!(
        tel.counter(super::metrics::RELOADS, &[("result", "failure")]),
        2.0
    );

    // Good file adding job b: 200; job a unchanged keeps running (no stale
    // marker, timestamps stay on the same grid).
    std::fs::write(
        &file,
        format!(
            "scrape_configs:\n{}{}",
            job_yaml("a", &[a], ""),
            job_yaml("b", &[b], "")
        ),
    )
    .unwrap();
    let resp = app
        .clone()
        .oneshot(
            axum::http::Request::post("/-/reload")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(mgr.config().job("b").is_some());
    let bi = b.to_string();
    wait_until("b scraped", Duration::from_secs(5), || {
        !sink.of("n", &bi).is_empty()
    })
    .await;
    let na = sink.of("up", &ai).len();
    wait_until("a scraped again", Duration::from_secs(5), || {
        sink.of("up", &ai).len() >= na + 2
    })
    .await;
    let m = sink.of("m", &ai);
    assert!(!m.iter().any(|(_, v)| is_stale_nan(*v)), "{m:?}");
    // A restarted loop would start with an empty cache and report the
    // series as added again.
    let added = sink.of("scrape_series_added", &ai);
    assert_eq!(added[0].1, 1.0);
    assert!(
        added[1..].iter().all(|(_, v)| *v == 0.0),
        "a's loop was restarted: {added:?}"
    );

    // Changing job a (new metric relabeling) keeps the target's state: the
    // old series, now renamed, goes stale exactly once; no gap marker for up.
    std::fs::write(
        &file,
        format!(
            "scrape_configs:\n{}{}",
            job_yaml(
                "a",
                &[a],
                "    metric_relabel_configs:\n      - {source_labels: [__name__], regex: m, target_label: __name__, replacement: m2}\n"
            ),
            job_yaml("b", &[b], "")
        ),
    )
    .unwrap();
    mgr.reload_from_source().await.unwrap();
    wait_until("m2 scraped", Duration::from_secs(5), || {
        !sink.of("m2", &ai).is_empty()
    })
    .await;
    wait_until("m stale", Duration::from_secs(5), || {
        sink.of("m", &ai).iter().any(|(_, v)| is_stale_nan(*v))
    })
    .await;
    assert!(!sink.of("up", &ai).iter().any(|(_, v)| is_stale_nan(*v)));

    // Removing job b: its series go stale during the reload.
    std::fs::write(
        &file,
        format!("scrape_configs:\n{}", job_yaml("a", &[a], "")),
    )
    .unwrap();
    mgr.reload_from_file(&file).await.unwrap();
    assert!(
        sink.of("n", &bi)
            .last()
            .is_some_and(|(_, v)| is_stale_nan(*v))
    );
    assert!(
        sink.of("up", &bi)
            .last()
            .is_some_and(|(_, v)| is_stale_nan(*v))
    );
    assert_eq!(mgr.targets().active_targets.len(), 1);
    mgr.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn sample_limit_fails_the_scrape_end_to_end() {
    let body: String = (0..5).map(|i| format!("s{i} 1\n")).collect();
    let (_exp, addr, _srv) = start_exporter(&body).await;
    let sink = Collector::default();
    let tel = Telemetry::new();
    let mgr = ScrapeManager::start(
        config(&[job_yaml("limited", &[addr], "    sample_limit: 3\n")]),
        Arc::new(sink.clone()),
        tel.clone(),
    );
    let inst = addr.to_string();
    wait_until("2 scrapes", Duration::from_secs(5), || {
        sink.of("up", &inst).len() >= 2
    })
    .await;
    assert!(sink.of("up", &inst).iter().all(|(_, v)| *v == 0.0));
    assert_eq!(sink.of("scrape_samples_scraped", &inst)[0].1, 5.0);
    for i in 0..5 {
        assert!(
            sink.of(&format!("s{i}"), &inst).is_empty(),
            "no scraped sample stored"
        );
    }
    assert!(
        tel.counter(
            super::metrics::FAILURES,
            &[("job", "limited"), ("reason", "sample_limit")]
        ) >= 2.0
    );
    let snap = mgr.targets();
    assert!(
        snap.active_targets[0]
            .last_error
            .contains("sample limit exceeded")
    );
    let text = tel.render();
    assert!(
        text.contains(&format!("meshlens_scrape_last_error{{job=\"limited\",instance=\"{inst}\",reason=\"sample_limit\"}} 1")),
        "{text}"
    );
    mgr.stop().await;
}

#[tokio::test]
async fn storage_rejections_are_counted() {
    #[derive(Clone)]
    struct Rejecting;
    impl SampleSink for Rejecting {
        fn append(&self, batch: SampleBatch) -> SinkFuture {
            let n = batch.sample_count() as u64;
            Box::pin(async move {
                Ok(AppendReport {
                    accepted: 0,
                    series_created: 0,
                    rejected: vec![(meshlens_storage::samples::RejectReason::OutOfOrder, n)],
                    examples: vec![],
                })
            })
        }
    }
    let (_exp, addr, _srv) = start_exporter("a 1\n").await;
    let tel = Telemetry::new();
    let mgr = ScrapeManager::start(
        config(&[job_yaml("rej", &[addr], "")]),
        Arc::new(Rejecting),
        tel.clone(),
    );
    let t2 = tel.clone();
    wait_until("rejections counted", Duration::from_secs(5), move || {
        t2.counter(
            super::metrics::SAMPLES_REJECTED,
            &[("job", "rej"), ("reason", "out_of_order")],
        ) >= 6.0
    })
    .await;
    mgr.stop().await;
}
