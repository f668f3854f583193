#!/usr/bin/env python3
"""An Istio-Bookinfo-shaped mesh of real Envoy proxies, for meshlens tests.

Standard library only. Two sub-commands:

  bookinfo.py up --envoy PATH --workdir DIR --zipkin HOST:PORT [--fault]
      Starts six tiny Bookinfo apps (productpage-v1, details-v1, reviews-v1,
      reviews-v2, reviews-v3, ratings-v1) as threads of this process, one
      Envoy sidecar per app and an istio-ingressgateway Envoy in front of
      productpage. Every Envoy reports Zipkin spans (JSON v2) to HOST:PORT
      /api/v2/spans and serves its stats on its own admin port. When the
      whole mesh is ready (checked WITHOUT sending a request through it, so
      no span or counter moves) it writes DIR/targets.json (Prometheus
      file_sd, one target per Envoy admin) and DIR/mesh.json (ports), prints
      READY and runs until stdin reaches EOF or SIGTERM/SIGINT arrives, then
      stops every Envoy and app. Envoy configs, logs and access logs are
      DIR/<envoy>.json, DIR/<envoy>.log and DIR/<envoy>.access.log; the apps
      log to DIR/apps.log.
      --fault adds an Envoy fault filter to ratings' inbound listener that
      aborts requests carrying `end-user: jason` with HTTP 500.

  bookinfo.py drive --gateway URL --requests N [--user NAME]
      Sends N sequential GET URL/productpage (with `end-user: NAME`) and
      prints one JSON line: status counts, which reviews version answered
      and whether ratings were available.

How the shape follows Istio (as far as plain Envoy allows):
  - Zipkin service name = Envoy's --service-cluster = `<app>.<namespace>`
    (`reviews.default`, `istio-ingressgateway.istio-system`); --service-node
    is Istio's `sidecar~IP~POD.NS~NS.svc.cluster.local` form.
  - Each sidecar has an INBOUND listener (Istio's virtualInbound filter chain
    for port 9080: stat prefix inbound_0.0.0.0_9080, cluster `inbound|9080||`
    to the local app) and an OUTBOUND listener (0.0.0.0_9080: the app calls
    it like the iptables-captured port, routing by Host to
    `outbound|9080||<svc>.default.svc.cluster.local`). The gateway's listener
    is OUTBOUND too, as Istio's gateway listeners are, so its span is a
    CLIENT span.
  - Route decorators give Istio's span names (`details.default.svc.cluster
    .local:9080/*`, `productpage.default.svc.cluster.local:9080/productpage`
    on the gateway); outbound routes carry Istio's default retry policy;
    clusters carry Istio's "unlimited" circuit breakers with track_remaining.
  - stats_config is Istio's bootstrap one (use_all_default_tags: false and
    its stats_tags), so Prometheus names and labels are what an Istio proxy
    exposes: `envoy_cluster_upstream_rq_total{cluster_name="outbound|9080||
    reviews.default.svc.cluster.local"}`, `response_code`,
    `response_code_class`, `envoy_http_inbound_0_0_0_0_9080_...`. Unlike
    Istio's default there is no stats_matcher: every Envoy stat is exposed
    (as with proxyStatsMatcher inclusionRegexps ".*"). Istio's own
    istio_requests_total needs the istio-proxy stats filter, which plain
    Envoy does not have.
  - Differences from Istio: 64-bit trace ids (Istio uses 128-bit), plain
    HTTP between proxies (no mTLS), STATIC clusters instead of EDS, and the
    fault sits on ratings' INBOUND listener (Istio puts a VirtualService
    fault on the caller's outbound route).

Envoy's Zipkin reporter buffers 5 spans or 5 s by default; the runtime layer
sets tracing.zipkin.min_flush_spans=1 so each span is POSTed when it ends.
"""

import argparse
import http.client
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAMESPACE = "default"
GATEWAY = "istio-ingressgateway"
GATEWAY_NAMESPACE = "istio-system"
SVC_PORT = 9080  # the Kubernetes service port every Bookinfo service uses

# Bookinfo's workloads: (app, version) and which services each one calls.
WORKLOADS = [
    ("productpage", "v1"),
    ("details", "v1"),
    ("reviews", "v1"),
    ("reviews", "v2"),
    ("reviews", "v3"),
    ("ratings", "v1"),
]
SERVICES = ["productpage", "details", "reviews", "ratings"]

# Headers Bookinfo's apps copy from their inbound request to outbound calls.
PROPAGATE = [
    "x-request-id",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "end-user",
]

# Istio's bootstrap stats tags (tools/packaging/common/envoy_bootstrap.json in
# istio/istio, verbatim but for the templated extraStatTags), used with
# use_all_default_tags: false as Istio does.
ISTIO_STATS_TAGS = [
    {"tag_name": "cluster_name", "regex": r"^cluster\.((.+?(\..+?\.svc\.cluster\.local)?)\.)"},
    {"tag_name": "tcp_prefix", "regex": r"^tcp\.((.*?)\.)\w+?$"},
    {"tag_name": "response_code", "regex": r"_rq(_(\d{3}))$"},
    {"tag_name": "response_code_class", "regex": r"_rq(_(\dxx))$"},
    {
        "tag_name": "http_conn_manager_listener_prefix",
        "regex": r"^listener(?=\.).*?\.http\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)",
    },
    {
        "tag_name": "http_conn_manager_prefix",
        "regex": r"^http\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)",
    },
    {
        "tag_name": "listener_address",
        "regex": r"^listener\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)",
    },
    {"tag_name": "mongo_prefix", "regex": r"^mongo\.(.+?)\.(collection|cmd|cx_|op_|delays_|decoding_)(.*?)$"},
    {"tag_name": "cache", "regex": r"(cache\.(.+?)\.)"},
    {"tag_name": "component", "regex": r"(component\.(.+?)\.)"},
    {"tag_name": "tag", "regex": r"(tag\.(.+?);\.)"},
    {"tag_name": "wasm_filter", "regex": r"(wasm_filter\.(.+?)\.)"},
    {"tag_name": "authz_enforce_result", "regex": r"rbac(\.(allowed|denied))"},
    {"tag_name": "authz_dry_run_action", "regex": r"(\.istio_dry_run_(allow|deny)_)"},
    {"tag_name": "authz_dry_run_result", "regex": r"(\.shadow_(allowed|denied))"},
]

# Istio's default access log format (meshConfig accessLogFile, TEXT).
ACCESS_LOG_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% "
    '"%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% '
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER% '
    "%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% "
    "%REQUESTED_SERVER_NAME% %ROUTE_NAME%\n"
)

START_TIMEOUT_S = 60

# Plain urllib, ignoring any http_proxy in the environment (all traffic here
# is to 127.0.0.1).
URLOPEN = urllib.request.build_opener(urllib.request.ProxyHandler({})).open


def fqdn(svc, ns=NAMESPACE):
    return f"{svc}.{ns}.svc.cluster.local"


def outbound_cluster(svc):
    return f"outbound|{SVC_PORT}||{fqdn(svc)}"


INBOUND_CLUSTER = f"inbound|{SVC_PORT}||"


# ---------------------------------------------------------------------------
# The apps
# ---------------------------------------------------------------------------


class AppServer(ThreadingHTTPServer):
    daemon_threads = True
    # Envoy keeps idle upstream connections; don't let them block shutdown.
    block_on_close = False


def make_app(app, version, outbound_port, log):
    """A ThreadingHTTPServer on a free 127.0.0.1 port playing one workload.

    `outbound_port` is the workload's sidecar OUTBOUND listener: calls to
    other services go there with Istio-style Host headers (`details:9080`).
    """
    workload = f"{app}-{version}"

    def call(handler, svc, path):
        """GET http://<svc>:9080<path> through the sidecar; (status, json|None)."""
        headers = {"Host": f"{svc}:{SVC_PORT}"}
        for h in PROPAGATE:
            v = handler.headers.get(h)
            if v is not None:
                headers[h] = v
        conn = http.client.HTTPConnection("127.0.0.1", outbound_port, timeout=30)
        try:
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            try:
                doc = json.loads(body) if resp.status == 200 else None
            except ValueError:
                doc = None
            return resp.status, doc
        except OSError as e:
            log(f"{workload}: call {svc}{path} failed: {e}")
            return 0, None
        finally:
            conn.close()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as Envoy's pool expects
        server_version = workload

        def log_message(self, fmt, *args):
            log(f"{workload} {self.address_string()} {fmt % args}")

        def reply(self, doc):
            body = json.dumps(doc).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            path = self.path.split("?", 1)[0]
            if app == "productpage" and path == "/productpage":
                # Bookinfo's productpage: details, then reviews, always 200.
                d_status, details = call(self, "details", "/details/0")
                r_status, reviews = call(self, "reviews", "/reviews/0")
                self.reply(
                    {
                        "product": 0,
                        "details_status": d_status,
                        "details": details,
                        "reviews_status": r_status,
                        "reviews": reviews,
                    }
                )
            elif app == "details":
                self.reply({"id": 0, "author": "William Shakespeare", "year": 1595})
            elif app == "reviews":
                doc = {"id": "0", "podname": workload, "reviews": []}
                if version in ("v2", "v3"):
                    # Ratings failing is no error for reviews: Bookinfo shows
                    # "Ratings service is currently unavailable".
                    status, ratings = call(self, "ratings", "/ratings/0")
                    doc["ratings_status"] = status
                    if status == 200 and ratings:
                        doc["ratings"] = ratings["ratings"]
                    else:
                        doc["ratings"] = {"error": "Ratings service is currently unavailable"}
                self.reply(doc)
            elif app == "ratings":
                self.reply({"id": 0, "ratings": {"Reviewer1": 5, "Reviewer2": 4}})
            else:
                self.reply({"app": app, "version": version})

    return AppServer(("127.0.0.1", 0), Handler)


# ---------------------------------------------------------------------------
# Envoy configuration
# ---------------------------------------------------------------------------


def endpoint(port, host="127.0.0.1"):
    return {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}


def cluster(name, ports, services_meta=None):
    """A STATIC cluster shaped like Istio's (Istio's are EDS)."""
    c = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "10s",
        "lb_policy": "ROUND_ROBIN",
        # Istio's defaults: effectively unlimited, remaining_* gauges on.
        "circuit_breakers": {
            "thresholds": [
                {
                    "max_connections": 4294967295,
                    "max_pending_requests": 4294967295,
                    "max_requests": 4294967295,
                    "max_retries": 4294967295,
                    "track_remaining": True,
                }
            ]
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [endpoint(p) for p in ports]}],
        },
    }
    if services_meta:
        c["metadata"] = {"filter_metadata": {"istio": {"services": services_meta}}}
    return c


def zipkin_cluster(host, port):
    try:
        ipaddress.ip_address(host)
        kind = "STATIC"
    except ValueError:
        kind = "STRICT_DNS"
    return {
        "name": "zipkin",
        "type": kind,
        "connect_timeout": "1s",
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {
            "cluster_name": "zipkin",
            "endpoints": [{"lb_endpoints": [endpoint(port, host)]}],
        },
    }


def tracing(canonical_service, revision, namespace):
    """HCM tracing: Zipkin JSON v2, 64-bit ids, 100% sampling, Istio's tags."""
    return {
        "client_sampling": {"value": 100},
        "random_sampling": {"value": 100},
        "overall_sampling": {"value": 100},
        "max_path_tag_length": 256,
        "custom_tags": [
            {"tag": "istio.canonical_revision", "literal": {"value": revision}},
            {"tag": "istio.canonical_service", "literal": {"value": canonical_service}},
            {"tag": "istio.mesh_id", "literal": {"value": "cluster.local"}},
            {"tag": "istio.namespace", "literal": {"value": namespace}},
        ],
        "provider": {
            "name": "envoy.tracers.zipkin",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig",
                "collector_cluster": "zipkin",
                "collector_endpoint": "/api/v2/spans",
                "collector_endpoint_version": "HTTP_JSON",
                "trace_id_128bit": False,
                "shared_span_context": True,
            },
        },
    }


def retry_policy():
    """Istio's default retry policy on every outbound route."""
    return {
        "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
        "num_retries": 2,
        "retry_host_predicate": [
            {
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
                },
            }
        ],
        "host_selection_retry_max_attempts": "5",
        "retriable_status_codes": [503],
    }


def hcm(stat_prefix, route_config, trace, workdir, name, filters=(), edge=False):
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": stat_prefix,
            "codec_type": "AUTO",
            "server_name": "istio-envoy",
            "use_remote_address": edge,
            "generate_request_id": True,
            "normalize_path": True,
            "request_id_extension": {
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig",
                    "use_request_id_for_trace_sampling": True,
                }
            },
            "tracing": trace,
            "route_config": route_config,
            "access_log": [
                {
                    "name": "envoy.access_loggers.file",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                        "path": os.path.join(workdir, f"{name}.access.log"),
                        "log_format": {"text_format_source": {"inline_string": ACCESS_LOG_FORMAT}},
                    },
                }
            ],
            "http_filters": list(filters)
            + [
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                }
            ],
        },
    }


def fault_filter():
    """Abort with 500 every request of user jason (Bookinfo's fault demo)."""
    return {
        "name": "envoy.filters.http.fault",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
            "abort": {"http_status": 500, "percentage": {"numerator": 100, "denominator": "HUNDRED"}},
            "headers": [{"name": "end-user", "string_match": {"exact": "jason"}}],
        },
    }


def outbound_vhost(svc):
    host = fqdn(svc)
    domains = [host, svc, f"{svc}.{NAMESPACE}", f"{svc}.{NAMESPACE}.svc"]
    return {
        "name": f"{host}:{SVC_PORT}",
        "domains": domains + [f"{d}:{SVC_PORT}" for d in domains],
        "routes": [
            {
                "name": "default",
                "match": {"prefix": "/"},
                "decorator": {"operation": f"{host}:{SVC_PORT}/*"},
                "route": {
                    "cluster": outbound_cluster(svc),
                    "timeout": "0s",
                    "retry_policy": retry_policy(),
                },
            }
        ],
        "include_request_attempt_count": True,
    }


def outbound_clusters(ports):
    """outbound|9080||<svc>.default.svc.cluster.local for every service."""
    return [
        cluster(
            outbound_cluster(svc),
            ports[svc],
            [{"host": fqdn(svc), "name": svc, "namespace": NAMESPACE}],
        )
        for svc in SERVICES
    ]


def bootstrap(admin_port, node_meta, listeners, clusters):
    return {
        "node": {"metadata": node_meta},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        # Histograms reach /stats/prometheus at each stats flush (default 5 s).
        "stats_flush_interval": "1s",
        "stats_config": {"use_all_default_tags": False, "stats_tags": ISTIO_STATS_TAGS},
        "layered_runtime": {
            "layers": [
                {
                    "name": "global config",
                    # Send each span as soon as it ends (default: 5 spans/5 s).
                    "static_layer": {
                        "tracing.zipkin.min_flush_spans": 1,
                        "tracing.zipkin.flush_interval_ms": 1000,
                    },
                },
                {"name": "admin", "admin_layer": {}},
            ]
        },
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }


def sidecar_config(app, version, ports, p, workdir, zipkin, fault):
    """One workload's sidecar: INBOUND to the app, OUTBOUND to the mesh."""
    workload = f"{app}-{version}"
    trace = tracing(app, version, NAMESPACE)
    inbound_filters = [fault_filter()] if (fault and app == "ratings") else []
    inbound_routes = {
        "name": INBOUND_CLUSTER,
        "validate_clusters": False,
        "virtual_hosts": [
            {
                "name": f"inbound|http|{SVC_PORT}",
                "domains": ["*"],
                "routes": [
                    {
                        "name": "default",
                        "match": {"prefix": "/"},
                        "decorator": {"operation": f"{fqdn(app)}:{SVC_PORT}/*"},
                        "route": {"cluster": INBOUND_CLUSTER, "timeout": "0s"},
                    }
                ],
            }
        ],
    }
    outbound_routes = {
        "name": str(SVC_PORT),
        "validate_clusters": False,
        "virtual_hosts": [outbound_vhost(svc) for svc in SERVICES],
    }
    listeners = [
        {
            "name": "virtualInbound",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": p["inbound"]}},
            "traffic_direction": "INBOUND",
            "filter_chains": [
                {
                    "filters": [
                        hcm(
                            f"inbound_0.0.0.0_{SVC_PORT}",
                            inbound_routes,
                            trace,
                            workdir,
                            workload,
                            inbound_filters,
                        )
                    ]
                }
            ],
        },
        {
            "name": f"0.0.0.0_{SVC_PORT}",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": p["outbound"]}},
            "traffic_direction": "OUTBOUND",
            "filter_chains": [
                {"filters": [hcm(f"outbound_0.0.0.0_{SVC_PORT}", outbound_routes, trace, workdir, workload)]}
            ],
        },
    ]
    clusters = (
        [cluster(INBOUND_CLUSTER, [p["app"]])]
        + outbound_clusters(ports)
        + [zipkin_cluster(*zipkin)]
    )
    meta = {
        "NAME": f"{workload}-0",
        "NAMESPACE": NAMESPACE,
        "WORKLOAD_NAME": workload,
        "CLUSTER_ID": "Kubernetes",
        "MESH_ID": "cluster.local",
        "LABELS": {
            "app": app,
            "version": version,
            "service.istio.io/canonical-name": app,
            "service.istio.io/canonical-revision": version,
        },
    }
    return bootstrap(p["admin"], meta, listeners, clusters)


def gateway_config(ports, p, workdir, zipkin):
    """istio-ingressgateway with Bookinfo's Gateway/VirtualService routes."""
    trace = tracing(GATEWAY, "latest", GATEWAY_NAMESPACE)
    pp = fqdn("productpage")

    def route(match, op):
        return {
            "match": match,
            "decorator": {"operation": f"{pp}:{SVC_PORT}{op}"},
            "route": {
                "cluster": outbound_cluster("productpage"),
                "timeout": "0s",
                "retry_policy": retry_policy(),
            },
        }

    routes = {
        "name": "http.8080",
        "validate_clusters": False,
        "virtual_hosts": [
            {
                "name": "*:80",
                "domains": ["*"],
                "routes": [
                    route({"path": "/productpage"}, "/productpage"),
                    route({"prefix": "/static"}, "/static*"),
                    route({"path": "/login"}, "/login"),
                    route({"path": "/logout"}, "/logout"),
                    route({"prefix": "/api/v1/products"}, "/api/v1/products*"),
                ],
                "include_request_attempt_count": True,
            }
        ],
    }
    listeners = [
        {
            "name": "0.0.0.0_8080",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": p["listen"]}},
            # Istio's gateway listeners are OUTBOUND: the gateway span is a
            # CLIENT span, the root of each trace.
            "traffic_direction": "OUTBOUND",
            "filter_chains": [
                {"filters": [hcm("outbound_0.0.0.0_8080", routes, trace, workdir, GATEWAY, edge=True)]}
            ],
        }
    ]
    clusters = outbound_clusters(ports) + [zipkin_cluster(*zipkin)]
    meta = {
        "NAME": f"{GATEWAY}-0",
        "NAMESPACE": GATEWAY_NAMESPACE,
        "WORKLOAD_NAME": GATEWAY,
        "CLUSTER_ID": "Kubernetes",
        "MESH_ID": "cluster.local",
        "LABELS": {
            "app": GATEWAY,
            "istio": "ingressgateway",
            "service.istio.io/canonical-name": GATEWAY,
            "service.istio.io/canonical-revision": "latest",
        },
    }
    return bootstrap(p["admin"], meta, listeners, clusters)


# ---------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------


def reserve_ports(n):
    """n distinct free ports (all held open together, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _die_with_parent():
    """Child side of Popen: SIGTERM this Envoy if the harness dies (Linux)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class Envoy:
    def __init__(self, binary, workdir, name, config, service_cluster, service_node):
        self.name = name
        self.config_path = os.path.join(workdir, f"{name}.json")
        self.log_path = os.path.join(workdir, f"{name}.log")
        with open(self.config_path, "w") as f:
            json.dump(config, f, indent=1)
        self.admin = config["admin"]["address"]["socket_address"]["port_value"]
        self.service_cluster = service_cluster
        self.service_node = service_node
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    binary,
                    "-c", self.config_path,
                    "--concurrency", "1",
                    "--service-cluster", service_cluster,
                    "--service-node", service_node,
                    # Many Envoys on one host: no shared-memory hot restart.
                    "--disable-hot-restart",
                    "--log-level", "warn",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )

    def ready(self):
        """Admin /ready says LIVE (listeners bound, workers started)."""
        try:
            with URLOPEN(f"http://127.0.0.1:{self.admin}/ready", timeout=2) as r:
                return r.status == 200 and r.read().strip() == b"LIVE"
        except (OSError, urllib.error.URLError):
            return False

    def log_tail(self, n=30):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()

    def wait(self, deadline):
        try:
            self.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def write_atomic(path, doc):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


class PortTaken(Exception):
    """An Envoy could not bind a port reserved for it: something else on
    the host (a test running beside this one) took it in between."""


START_ATTEMPTS = 3


def up(args):
    """Starts the mesh; on a port taken between reservation and Envoy's
    bind, stops everything and starts again on new ports."""
    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            return _up_once(args)
        except PortTaken as e:
            print(
                f"bookinfo: attempt {attempt} of {START_ATTEMPTS}: {e}",
                file=sys.stderr,
                flush=True,
            )
    print(f"bookinfo: ports taken in all {START_ATTEMPTS} attempts", file=sys.stderr, flush=True)
    return 1


def _up_once(args):
    t0 = time.monotonic()
    workdir = os.path.abspath(args.workdir)
    os.makedirs(workdir, exist_ok=True)
    zhost, _, zport = args.zipkin.rpartition(":")
    zipkin = (zhost.strip("[]") or "127.0.0.1", int(zport))

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    log_file = open(os.path.join(workdir, "apps.log"), "a", buffering=1)
    log_lock = threading.Lock()

    def log(line):
        with log_lock:
            log_file.write(f"{time.strftime('%H:%M:%S')} {line}\n")

    # Ports: each sidecar's inbound/outbound/admin, the gateway's listener
    # and admin. Apps bind their own (port 0) below.
    names = [f"{a}-{v}" for a, v in WORKLOADS]
    free = iter(reserve_ports(3 * len(names) + 2))
    sidecar_ports = {n: {"inbound": next(free), "outbound": next(free), "admin": next(free)} for n in names}
    gw_ports = {"listen": next(free), "admin": next(free)}

    # Bind the apps now (their ports go into the configs) but start serving
    # after the Envoys are spawned: no extra threads while forking.
    servers = {}
    for app, version in WORKLOADS:
        n = f"{app}-{version}"
        servers[n] = make_app(app, version, sidecar_ports[n]["outbound"], log)
        sidecar_ports[n]["app"] = servers[n].server_address[1]

    # Each service's endpoints: its workloads' sidecar INBOUND ports.
    svc_ports = {svc: [sidecar_ports[f"{a}-{v}"]["inbound"] for a, v in WORKLOADS if a == svc] for svc in SERVICES}

    envoys = {}
    serving = []  # servers whose serve_forever() runs (shutdown() waits for it)
    try:
        for app, version in WORKLOADS:
            n = f"{app}-{version}"
            envoys[n] = Envoy(
                args.envoy,
                workdir,
                n,
                sidecar_config(app, version, svc_ports, sidecar_ports[n], workdir, zipkin, args.fault),
                f"{app}.{NAMESPACE}",
                f"sidecar~127.0.0.1~{n}-0.{NAMESPACE}~{NAMESPACE}.svc.cluster.local",
            )
        envoys[GATEWAY] = Envoy(
            args.envoy,
            workdir,
            GATEWAY,
            gateway_config(svc_ports, gw_ports, workdir, zipkin),
            f"{GATEWAY}.{GATEWAY_NAMESPACE}",
            f"router~127.0.0.1~{GATEWAY}-0.{GATEWAY_NAMESPACE}~{GATEWAY_NAMESPACE}.svc.cluster.local",
        )
        for s in servers.values():
            threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
            serving.append(s)

        # Readiness without traffic through the mesh: every admin says LIVE
        # and every app accepts connections.
        deadline = time.monotonic() + START_TIMEOUT_S
        pending = set(envoys)
        while pending:
            for n in sorted(pending):
                e = envoys[n]
                if e.proc.poll() is not None:
                    tail = e.log_tail()
                    if "Address already in use" in tail:
                        raise PortTaken(f"envoy {n} exited with {e.proc.returncode}:\n{tail}")
                    raise RuntimeError(f"envoy {n} exited with {e.proc.returncode}:\n{tail}")
                if e.ready():
                    pending.discard(n)
            if stop.is_set():
                raise RuntimeError("stopped while starting")
            if pending and time.monotonic() > deadline:
                raise RuntimeError(
                    f"not ready after {START_TIMEOUT_S}s: {sorted(pending)}\n"
                    + "\n".join(envoys[n].log_tail() for n in sorted(pending))
                )
            if pending:
                time.sleep(0.1)
        for n, s in servers.items():
            socket.create_connection(s.server_address, timeout=5).close()

        # Outputs.
        targets = []
        for app, version in WORKLOADS:
            n = f"{app}-{version}"
            targets.append(
                {
                    "targets": [f"127.0.0.1:{sidecar_ports[n]['admin']}"],
                    "labels": {
                        "__metrics_path__": "/stats/prometheus",
                        "app": app,
                        "version": version,
                        "namespace": NAMESPACE,
                        "workload": n,
                    },
                }
            )
        targets.append(
            {
                "targets": [f"127.0.0.1:{gw_ports['admin']}"],
                "labels": {
                    "__metrics_path__": "/stats/prometheus",
                    "app": GATEWAY,
                    "version": "latest",
                    "namespace": GATEWAY_NAMESPACE,
                    "workload": GATEWAY,
                },
            }
        )
        mesh = {
            "gateway": f"http://127.0.0.1:{gw_ports['listen']}",
            "zipkin": f"{zipkin[0]}:{zipkin[1]}",
            "fault": bool(args.fault),
            "envoys": {},
            "apps": {},
        }
        for n, e in envoys.items():
            ports = gw_ports if n == GATEWAY else sidecar_ports[n]
            mesh["envoys"][n] = {
                "admin": e.admin,
                **{k: v for k, v in ports.items() if k != "app" and k != "admin"},
                "pid": e.proc.pid,
                "service_cluster": e.service_cluster,
                "service_node": e.service_node,
                "config": e.config_path,
                "log": e.log_path,
            }
        for app, version in WORKLOADS:
            n = f"{app}-{version}"
            mesh["apps"][n] = {"app": app, "version": version, "port": sidecar_ports[n]["app"]}
        write_atomic(os.path.join(workdir, "mesh.json"), mesh)
        write_atomic(os.path.join(workdir, "targets.json"), targets)
        print(f"bookinfo: ready in {time.monotonic() - t0:.2f}s", file=sys.stderr, flush=True)
        print("READY", flush=True)

        if not args.ignore_stdin:
            threading.Thread(target=_wait_stdin_eof, args=(stop,), daemon=True).start()
        # Run until told to stop; an Envoy dying on its own is an error.
        status = 0
        while not stop.wait(0.5):
            dead = [n for n, e in envoys.items() if e.proc.poll() is not None]
            if dead:
                for n in dead:
                    print(f"bookinfo: envoy {n} exited:\n{envoys[n].log_tail()}", file=sys.stderr, flush=True)
                status = 1
                break
        return status
    except RuntimeError as e:
        print(f"bookinfo: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        deadline = time.monotonic() + 10
        for e in envoys.values():
            e.stop()
        for e in envoys.values():
            e.wait(deadline)
        # shutdown() waits for a serve_forever() poll: all at once.
        stoppers = [threading.Thread(target=s.shutdown) for s in serving]
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join()
        for s in servers.values():
            s.server_close()
        log_file.close()


def _wait_stdin_eof(stop):
    try:
        while os.read(0, 65536):
            pass
    except OSError:
        pass
    stop.set()


# ---------------------------------------------------------------------------
# Traffic
# ---------------------------------------------------------------------------


def drive(args):
    """N sequential GET /productpage through the gateway; prints a summary."""
    url = args.gateway.rstrip("/") + "/productpage"
    statuses, reviews, ratings = {}, {}, {}
    headers = {"end-user": args.user} if args.user else {}
    for _ in range(args.requests):
        req = urllib.request.Request(url, headers=headers)
        try:
            with URLOPEN(req, timeout=30) as r:
                code, body = r.status, r.read()
        except urllib.error.HTTPError as e:
            code, body = e.code, e.read()
        except OSError as e:
            code, body = f"error: {e}", b""
        statuses[str(code)] = statuses.get(str(code), 0) + 1
        try:
            doc = json.loads(body)
        except ValueError:
            continue
        rv = doc.get("reviews") or {}
        pod = rv.get("podname", f"status {doc.get('reviews_status')}")
        reviews[pod] = reviews.get(pod, 0) + 1
        if "ratings_status" in rv:
            k = str(rv["ratings_status"])
            ratings[k] = ratings.get(k, 0) + 1
    print(
        json.dumps(
            {
                "requests": args.requests,
                "user": args.user,
                "status": statuses,
                "reviews": reviews,
                "ratings_status": ratings,
            },
            sort_keys=True,
        ),
        flush=True,
    )
    return 0 if set(statuses) <= {"200"} else 1


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("up", help="start the mesh; READY on stdout; stop on stdin EOF/SIGTERM")
    u.add_argument("--envoy", required=True, help="the envoy binary")
    u.add_argument("--workdir", required=True, help="configs, logs, targets.json, mesh.json")
    u.add_argument("--zipkin", required=True, help="HOST:PORT serving POST /api/v2/spans")
    u.add_argument("--fault", action="store_true", help="ratings aborts end-user: jason with 500")
    u.add_argument("--ignore-stdin", action="store_true", help="run until a signal, not stdin EOF")
    d = sub.add_parser("drive", help="send GET /productpage requests through the gateway")
    d.add_argument("--gateway", required=True, help="e.g. http://127.0.0.1:PORT (mesh.json)")
    d.add_argument("--requests", type=int, required=True)
    d.add_argument("--user", help="sent as the end-user header")
    args = p.parse_args()
    sys.exit(up(args) if args.cmd == "up" else drive(args))


if __name__ == "__main__":
    main()
