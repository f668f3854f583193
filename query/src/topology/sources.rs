//! Rows (one per call path and response code) from each source: Istio
//! standard metrics, raw Envoy cluster stats, and the series derived from
//! spans. Figures come from the PromQL engine so each one has a query that
//! reproduces it; request counts come from the raw samples (not
//! extrapolated).

use super::model::{EdgeFlags, Extras, GraphType, Ident, NodeRef, Row, Tcp};
use super::{Ctx, TopoError};
use meshlens_storage::samples::{Labels, Matcher};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Identity labels of Istio metrics needed for node ids of graph type `g`.
fn istio_group(g: GraphType) -> Vec<&'static str> {
    let mut v = vec![
        "source_workload_namespace",
        "source_workload",
        "destination_service_namespace",
        "destination_service_name",
        "destination_workload_namespace",
        "destination_workload",
    ];
    match g {
        GraphType::Workload => {}
        GraphType::App | GraphType::Service => {
            v.extend(["source_canonical_service", "destination_canonical_service"]);
        }
        GraphType::VersionedApp => v.extend([
            "source_canonical_service",
            "destination_canonical_service",
            "source_canonical_revision",
            "destination_canonical_revision",
        ]),
    }
    v
}

fn get(l: &Labels, k: &str) -> String {
    l.get(k).unwrap_or("").to_string()
}

fn istio_idents(l: &Labels) -> (Ident, Ident) {
    let src_workload = get(l, "source_workload");
    let src = Ident {
        namespace: get(l, "source_workload_namespace"),
        workload: src_workload.clone(),
        app: l
            .get("source_canonical_service")
            .or(l.get("source_app"))
            .unwrap_or("")
            .to_string(),
        version: l
            .get("source_canonical_revision")
            .or(l.get("source_version"))
            .unwrap_or("")
            .to_string(),
        service: String::new(),
        unknown: src_workload == "unknown",
        virtual_node: false,
    };
    let dst_wl_ns = get(l, "destination_workload_namespace");
    let dst = Ident {
        namespace: if dst_wl_ns.is_empty() || dst_wl_ns == "unknown" {
            get(l, "destination_service_namespace")
        } else {
            dst_wl_ns
        },
        workload: get(l, "destination_workload"),
        app: l
            .get("destination_canonical_service")
            .or(l.get("destination_app"))
            .unwrap_or("")
            .to_string(),
        version: l
            .get("destination_canonical_revision")
            .or(l.get("destination_version"))
            .unwrap_or("")
            .to_string(),
        service: get(l, "destination_service_name"),
        unknown: false,
        virtual_node: false,
    };
    (src, dst)
}

fn q(s: &str) -> String {
    format!("{s:?}")
}

/// Label matchers (PromQL text) selecting one node on one side.
fn istio_node_sel(n: &NodeRef, source_side: bool) -> Vec<String> {
    let p = if source_side { "source" } else { "destination" };
    let i = &n.ident;
    let ns_label = if source_side {
        "source_workload_namespace"
    } else if n.node_type == "service" {
        "destination_service_namespace"
    } else {
        "destination_workload_namespace"
    };
    let mut v = Vec::new();
    match n.node_type {
        "unknown" => v.push(format!("{p}_workload=\"unknown\"")),
        "workload" => v.push(format!("{p}_workload={}", q(&i.workload))),
        "app" | "versioned_app" => {
            v.push(format!("{p}_canonical_service={}", q(&i.app)));
            if n.node_type == "versioned_app" {
                v.push(format!("{p}_canonical_revision={}", q(&i.version)));
            }
        }
        _ => {
            if source_side {
                v.push(format!("source_canonical_service={}", q(&i.service)));
            } else {
                v.push(format!("destination_service_name={}", q(&i.service)));
            }
        }
    }
    if n.node_type != "unknown" && !i.namespace.is_empty() {
        v.push(format!("{ns_label}={}", q(&i.namespace)));
    }
    v
}

/// The selectors behind an edge's figures (each `metric{matchers}`).
struct FigureSelectors<'a> {
    /// The request counter.
    total: String,
    /// Failed (5xx) and 4xx requests.
    errors: String,
    errors_4xx: String,
    /// Duration buckets, and the factor that makes their quantiles ms.
    buckets: String,
    scale: &'a str,
    /// `sum by (...)` labels and selector of the response breakdown.
    responses: (&'a str, String),
}

/// The PromQL per figure of an edge: the same shape for every source.
fn figure_queries(f: FigureSelectors, w: &str) -> BTreeMap<&'static str, String> {
    let rate = format!("sum(rate({}[{w}]))", f.total);
    let mut m = BTreeMap::new();
    m.insert(
        "error_ratio",
        format!("sum(rate({}[{w}])) / {rate}", f.errors),
    );
    m.insert(
        "error_ratio_4xx",
        format!("sum(rate({}[{w}])) / {rate}", f.errors_4xx),
    );
    for (k, qn) in [("p50", "0.5"), ("p95", "0.95"), ("p99", "0.99")] {
        m.insert(
            k,
            format!(
                "histogram_quantile({qn}, sum by (le) (rate({}[{w}]))){}",
                f.buckets, f.scale
            ),
        );
    }
    m.insert("requests", format!("sum(increase({}[{w}]))", f.total));
    m.insert(
        "responses",
        format!("sum by ({}) (rate({}[{w}]))", f.responses.0, f.responses.1),
    );
    m.insert("rate", rate);
    m
}

fn istio_queries(src: &NodeRef, dst: &NodeRef, w: &str) -> BTreeMap<&'static str, String> {
    let reporter = if src.node_type == "unknown" {
        "destination"
    } else {
        "source"
    };
    let mut sel = vec![format!("reporter=\"{reporter}\"")];
    sel.extend(istio_node_sel(src, true));
    sel.extend(istio_node_sel(dst, false));
    let sel = sel.join(",");
    let counter = |extra: &str| format!("istio_requests_total{{{sel}{extra}}}");
    figure_queries(
        FigureSelectors {
            total: counter(""),
            errors: counter(",response_code=~\"5..\""),
            errors_4xx: counter(",response_code=~\"4..\""),
            buckets: format!("istio_request_duration_milliseconds_bucket{{{sel}}}"),
            scale: "",
            responses: ("response_code, response_flags", counter("")),
        },
        w,
    )
}

/// p50/p95/p99 per edge from bucket rates (`le` plus the group labels), as
/// PromQL's `histogram_quantile` computes them, times `scale`.
fn quantiles_into(
    rates: Vec<(Labels, f64)>,
    scale: f64,
    extras: &mut Extras,
    key: impl Fn(&Labels) -> Option<(String, String)>,
) {
    // Grouped by every label but `le` and `reporter`, borrowed (no label
    // set built per bucket); a group's first row stands for its labels.
    type Group = (usize, Vec<(f64, f64)>);
    let mut groups: HashMap<Vec<(&str, &str)>, Group, foldhash::fast::RandomState> =
        HashMap::default();
    for (i, (labels, value)) in rates.iter().enumerate() {
        let Some(le) = labels
            .get("le")
            .and_then(crate::promql::functions::parse_le)
        else {
            continue;
        };
        let k: Vec<(&str, &str)> = labels
            .iter()
            .filter(|l| l.name.as_ref() != "le" && l.name.as_ref() != "reporter")
            .map(|l| (l.name.as_ref(), l.value.as_ref()))
            .collect();
        groups
            .entry(k)
            .or_insert_with(|| (i, Vec::new()))
            .1
            .push((le, *value));
    }
    for (_, (first, mut buckets)) in groups {
        let Some(k) = key(&rates[first].0) else {
            continue;
        };
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let q = |p: f64| {
            let mut b = buckets.clone();
            let (v, _) = crate::promql::functions::bucket_quantile(p, &mut b);
            v.is_finite().then_some(v * scale)
        };
        let lat = extras.latency.entry(k).or_default();
        lat.p50 = q(0.5);
        lat.p95 = q(0.95);
        lat.p99 = q(0.99);
    }
}

/// Whether any series of `metric` has samples in the window.
pub async fn has_data(cx: &Ctx, metric: &str) -> Result<bool, TopoError> {
    let r = cx
        .instant(&format!("count(last_over_time({metric}[{}]))", cx.w))
        .await?;
    Ok(r.iter().any(|s| s.value > 0.0))
}

/// The Istio-metrics graph (Kiali's queries: `reporter="source"` for calls
/// from inside the mesh, `reporter="destination"` with
/// `source_workload="unknown"` for traffic from outside).
pub async fn istio(
    cx: &Ctx,
    g: GraphType,
) -> Result<(Vec<Row>, Extras, Box<super::Queries>), TopoError> {
    let group_s = istio_group(g).join(",");
    let w = cx.w.clone();
    let sels = [
        r#"istio_requests_total{reporter="source"}"#,
        r#"istio_requests_total{reporter="destination",source_workload="unknown"}"#,
    ];
    // The duration buckets (most of the series) are read on another task
    // while this one reads the request counters.
    let bucket_task = {
        let cx = cx.clone();
        let by: Vec<&'static str> = istio_group(g)
            .into_iter()
            .chain(["reporter", "le"])
            .collect();
        tokio::spawn(async move {
            let mut wanted = Vec::new();
            for sel in [
                r#"istio_request_duration_milliseconds_bucket{reporter="source"}"#,
                r#"istio_request_duration_milliseconds_bucket{reporter="destination",source_workload="unknown"}"#,
            ] {
                wanted.extend(cx.rates_by(sel, &by).await?);
            }
            Ok::<_, TopoError>(wanted)
        })
    };
    let mut rows = Vec::new();
    let by = format!("{group_s},request_protocol,response_code,response_flags");
    for sel in sels {
        for c in cx.counted(sel, &by).await? {
            let (src, dst) = istio_idents(&c.labels);
            let key = &c.labels;
            rows.push(Row {
                src,
                dst,
                protocol: get(key, "request_protocol"),
                code: get(key, "response_code"),
                flags: get(key, "response_flags"),
                rate: c.rate,
                requests: c.requests,
                recent_rate: c.recent_rate,
                ..Row::full()
            });
        }
    }
    let mut extras = Extras::default();
    let edge_key = |l: &Labels| {
        let (s, d) = istio_idents(l);
        (s.node(g, true).id, d.node(g, false).id)
    };
    // The figures below are `sum by (...) (rate(...[w]))` at the window's
    // end (the queries of each edge show them), computed without building
    // a label set per series.
    let group: Vec<&str> = istio_group(g);
    let with = |extra: &[&'static str]| -> Vec<&str> {
        group.iter().copied().chain(extra.iter().copied()).collect()
    };
    // mTLS share, from the destination's view (sources report "unknown"):
    // one read, split by the policy.
    let all = cx
        .rates_by(
            r#"istio_requests_total{reporter="destination"}"#,
            &with(&["connection_security_policy"]),
        )
        .await?;
    let mut acc: HashMap<(String, String), (f64, f64)> = HashMap::new();
    for (labels, value) in all {
        let e = acc.entry(edge_key(&labels)).or_default();
        if labels.get("connection_security_policy") == Some("mutual_tls") {
            e.0 += value;
        }
        e.1 += value;
    }
    for (k, (m, t)) in acc {
        if t > 0.0 {
            extras.mtls.insert(k, m / t);
        }
    }
    // TCP bytes.
    for (metric, sent) in [
        ("istio_tcp_sent_bytes_total", true),
        ("istio_tcp_received_bytes_total", false),
    ] {
        let r = cx
            .rates_by(&format!("{metric}{{reporter=\"source\"}}"), &group)
            .await?;
        for (labels, value) in r {
            let t: &mut Tcp = extras.tcp.entry(edge_key(&labels)).or_default();
            if sent {
                t.sent_bytes_per_second += value;
            } else {
                t.received_bytes_per_second += value;
            }
        }
    }
    // Latency quantiles, per graph-type group (quantiles do not add up),
    // as `histogram_quantile` computes them from the bucket rates. Only the
    // buckets that are wanted were read: the source reporter's, and the
    // destination's for callers outside the mesh (the destination
    // reporter's buckets are otherwise half of all the samples).
    let wanted = bucket_task
        .await
        .map_err(|e| TopoError::Internal(format!("bucket read task: {e}")))??;
    quantiles_into(wanted, 1.0, &mut extras, |l| Some(edge_key(l)));
    let wq = w.clone();
    Ok((
        rows,
        extras,
        Box::new(move |s: &NodeRef, d: &NodeRef| istio_queries(s, d, &wq)),
    ))
}

/// `outbound|9080|v1|reviews.default.svc.cluster.local` -> (service, namespace, subset).
pub fn parse_istio_cluster(c: &str) -> Option<(String, String, String)> {
    let host = meshlens_storage::model::istio_cluster_host(c)?;
    let subset = c.split('|').nth(2).unwrap_or("").to_string();
    let mut parts = host.split('.');
    let svc = parts.next()?.to_string();
    let ns = parts.next().unwrap_or("").to_string();
    (!svc.is_empty()).then_some((svc, ns, subset))
}

const ENVOY_NODE: &str = "namespace,workload,app,version,job,instance";

fn envoy_src(l: &Labels) -> Ident {
    let workload = l
        .get("workload")
        .or(l.get("app"))
        .or(l.get("job"))
        .unwrap_or("")
        .to_string();
    Ident {
        namespace: get(l, "namespace"),
        app: l.get("app").unwrap_or(&workload).to_string(),
        version: get(l, "version"),
        workload,
        ..Default::default()
    }
}

fn envoy_dst(l: &Labels) -> Option<Ident> {
    let cluster = l.get("cluster_name").or(l.get("envoy_cluster_name"))?;
    let (svc, ns, subset) = parse_istio_cluster(cluster)?;
    Some(Ident {
        namespace: ns,
        app: svc.clone(),
        version: subset,
        service: svc,
        ..Default::default()
    })
}

/// Envoy's stat tag names: Istio's bootstrap names them `cluster_name` and
/// `response_code`; a plain Envoy `envoy_cluster_name`, `envoy_response_code`.
#[derive(Clone, Copy)]
pub struct EnvoyTags {
    pub cluster: &'static str,
    pub code: &'static str,
}

/// Which tag names the scraped Envoys use.
pub async fn envoy_tags(cx: &Ctx) -> Result<EnvoyTags, TopoError> {
    Ok(
        if has_data(cx, r#"envoy_cluster_upstream_rq_total{cluster_name!=""}"#).await? {
            EnvoyTags {
                cluster: "cluster_name",
                code: "response_code",
            }
        } else {
            EnvoyTags {
                cluster: "envoy_cluster_name",
                code: "envoy_response_code",
            }
        },
    )
}

fn envoy_queries(
    src: &NodeRef,
    dst: &NodeRef,
    w: &str,
    tags: EnvoyTags,
) -> BTreeMap<&'static str, String> {
    let EnvoyTags { cluster: cl, code } = tags;
    let mut sel = Vec::new();
    let i = &src.ident;
    match src.node_type {
        "workload" => sel.push(format!("workload={}", q(&i.workload))),
        _ => {
            sel.push(format!("app={}", q(&i.app)));
            if src.node_type == "versioned_app" {
                sel.push(format!("version={}", q(&i.version)));
            }
        }
    }
    if !i.namespace.is_empty() {
        sel.push(format!("namespace={}", q(&i.namespace)));
    }
    let d = &dst.ident;
    let host = if d.namespace.is_empty() {
        regex_escape(&d.service)
    } else {
        format!(
            "{}\\\\.{}",
            regex_escape(&d.service),
            regex_escape(&d.namespace)
        )
    };
    let subset = if dst.node_type == "versioned_app" {
        regex_escape(&d.version)
    } else {
        "[^|]*".into()
    };
    sel.push(format!(
        "{cl}=~\"outbound\\\\|[^|]*\\\\|{subset}\\\\|{host}(\\\\..*)?\""
    ));
    let sel = sel.join(",");
    let counter = |extra: &str| format!("envoy_cluster_upstream_rq{{{sel},{code}!=\"\"{extra}}}");
    figure_queries(
        FigureSelectors {
            total: counter(""),
            errors: counter(&format!(",{code}=~\"5..\"")),
            errors_4xx: counter(&format!(",{code}=~\"4..\"")),
            buckets: format!("envoy_cluster_upstream_rq_time_bucket{{{sel}}}"),
            scale: "",
            responses: (code, counter("")),
        },
        w,
    )
}

/// `s` as a regex literal inside a PromQL double-quoted string.
pub(super) fn regex_escape(s: &str) -> String {
    let mut o = String::new();
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            o.push_str("\\\\");
        }
        o.push(c);
    }
    o
}

/// The graph from raw Envoy stats, for proxies without Istio's telemetry:
/// the scraped proxy is the source (its scrape labels `namespace`,
/// `workload`, `app`, `version`), the Istio-named outbound cluster the
/// destination (`outbound|port|subset|host`).
pub async fn envoy(
    cx: &Ctx,
    g: GraphType,
) -> Result<(Vec<Row>, Extras, Box<super::Queries>), TopoError> {
    let w = cx.w.clone();
    let tags = envoy_tags(cx).await?;
    let EnvoyTags { cluster: cl, code } = tags;
    let sel = format!(r#"envoy_cluster_upstream_rq{{{cl}=~"outbound\\|.*",{code}!=""}}"#);
    let by = format!("{ENVOY_NODE},{cl},{code}");
    let mut rows = Vec::new();
    for c in cx.counted(&sel, &by).await? {
        let Some(dst) = envoy_dst(&c.labels) else {
            continue;
        };
        rows.push(Row {
            src: envoy_src(&c.labels),
            dst,
            protocol: "http".into(),
            code: get(&c.labels, code),
            flags: String::new(),
            rate: c.rate,
            requests: c.requests,
            recent_rate: c.recent_rate,
            ..Row::full()
        });
    }
    let mut extras = Extras::default();
    let edge_key = |l: &Labels| -> Option<(String, String)> {
        Some((
            envoy_src(l).node(g, true).id,
            envoy_dst(l)?.node(g, false).id,
        ))
    };
    let node_by = format!("{ENVOY_NODE},{cl}");
    let rates = cx
        .instant(&format!(
            "sum by ({node_by},le) (rate(envoy_cluster_upstream_rq_time_bucket{{{cl}=~\"outbound\\\\|.*\"}}[{w}]))"
        ))
        .await?;
    quantiles_into(
        rates.into_iter().map(|s| (s.labels, s.value)).collect(),
        1.0,
        &mut extras,
        edge_key,
    );
    for (metric, which) in [
        ("envoy_cluster_upstream_rq_pending_overflow", 0),
        ("envoy_cluster_upstream_cx_overflow", 0),
        ("envoy_cluster_upstream_rq_retry", 1),
        ("envoy_cluster_upstream_rq_timeout", 2),
    ] {
        let r = cx
            .instant(&format!(
                "sum by ({node_by}) (increase({metric}{{{cl}=~\"outbound\\\\|.*\"}}[{w}])) > 0"
            ))
            .await?;
        for s in r {
            let Some(k) = edge_key(&s.labels) else {
                continue;
            };
            let f: &mut EdgeFlags = extras.flags.entry(k).or_default();
            match which {
                0 => f.circuit_breaker = true,
                1 => f.retries = true,
                _ => f.timeouts = true,
            }
        }
    }
    // The HTTP connection manager's stat prefix is a label for a plain
    // Envoy and part of the metric name under Istio's stats tags.
    for metric in ["fault_aborts_injected", "fault_delays_injected"] {
        let r = cx
            .instant(&format!(
                "sum by ({ENVOY_NODE}) (increase({{__name__=~\"envoy_http_(.*_)?{metric}\"}}[{w}])) > 0"
            ))
            .await?;
        for s in r {
            extras
                .fault_nodes
                .insert(envoy_src(&s.labels).node(g, false).id);
        }
    }
    let wq = w.clone();
    Ok((
        rows,
        extras,
        Box::new(move |s: &NodeRef, d: &NodeRef| envoy_queries(s, d, &wq, tags)),
    ))
}

/// The app of a span service name: Istio proxies report `<app>.<namespace>`
/// (or the service's FQDN); the namespace dimension says which part to drop.
pub(super) fn span_app<'a>(name: &'a str, ns: &str) -> &'a str {
    match name.split_once('.') {
        Some((a, rest))
            if !ns.is_empty()
                && (rest == ns || rest.strip_prefix(ns).is_some_and(|r| r.starts_with('.'))) =>
        {
            a
        }
        _ => name,
    }
}

/// A span service name to an identity: Istio proxies report
/// `<app>.<namespace>`; the `namespace`/`version` dimensions say the rest.
pub fn span_ident(name: &str, ns: &str, version: &str, virtual_node: bool) -> Ident {
    if name == "user" && virtual_node {
        return Ident {
            unknown: true,
            ..Default::default()
        };
    }
    if virtual_node {
        // A call that never reached a workload, named by its Kubernetes
        // service (an Envoy `upstream_cluster` host): the service node, as
        // Istio's metrics show it (destination_workload="unknown").
        if let Some((svc, svc_ns)) = name
            .strip_suffix(".svc.cluster.local")
            .and_then(|h| h.split_once('.'))
            .filter(|(s, n)| !s.is_empty() && !n.is_empty() && !n.contains('.'))
        {
            return Ident {
                namespace: svc_ns.to_string(),
                service: svc.to_string(),
                ..Default::default()
            };
        }
        return Ident {
            service: name.to_string(),
            virtual_node: true,
            ..Default::default()
        };
    }
    let app = span_app(name, ns).to_string();
    let ns = ns.to_string();
    let workload = if version.is_empty() {
        app.clone()
    } else {
        format!("{app}-{version}")
    };
    Ident {
        namespace: ns,
        workload,
        app: app.clone(),
        version: version.to_string(),
        service: app,
        unknown: false,
        virtual_node: false,
    }
}

const SPAN_EDGE: &str =
    "client,server,connection_type,client_namespace,server_namespace,client_version,server_version";

fn span_idents(l: &Labels, traced: &HashSet<String>) -> (Ident, Ident) {
    let c = get(l, "client");
    let s = get(l, "server");
    let conn = get(l, "connection_type");
    let virt = |n: &str| !conn.is_empty() && !traced.contains(n);
    (
        span_ident(
            &c,
            &get(l, "client_namespace"),
            &get(l, "client_version"),
            virt(&c),
        ),
        span_ident(
            &s,
            &get(l, "server_namespace"),
            &get(l, "server_version"),
            virt(&s),
        ),
    )
}

fn span_queries(
    src: &NodeRef,
    dst: &NodeRef,
    w: &str,
    names: &dyn Fn(&NodeRef) -> Vec<String>,
) -> BTreeMap<&'static str, String> {
    let side = |n: &NodeRef, p: &str| -> Vec<String> {
        let mut v = Vec::new();
        let ns = names(n);
        if ns.len() == 1 {
            v.push(format!("{p}={}", q(&ns[0])));
        } else if !ns.is_empty() {
            v.push(format!(
                "{p}=~{}",
                q(&ns
                    .iter()
                    .map(|s| regex_escape(s).replace("\\\\", "\\"))
                    .collect::<Vec<_>>()
                    .join("|"))
            ));
        }
        if n.node_type == "versioned_app"
            || (n.node_type == "workload" && !n.ident.version.is_empty())
        {
            v.push(format!("{p}_version={}", q(&n.ident.version)));
        }
        v
    };
    let mut sel = side(src, "client");
    sel.extend(side(dst, "server"));
    let sel = sel.join(",");
    let total = format!("traces_service_graph_request_total{{{sel}}}");
    figure_queries(
        FigureSelectors {
            errors: format!("traces_service_graph_request_failed_total{{{sel}}}"),
            errors_4xx: format!(
                "meshlens_service_graph_responses_total{{{sel},response_code=~\"4..\"}}"
            ),
            buckets: format!("traces_service_graph_request_server_seconds_bucket{{{sel}}}"),
            scale: " * 1000",
            responses: (
                "response_code, response_flags",
                format!("meshlens_service_graph_responses_total{{{sel}}}"),
            ),
            total,
        },
        w,
    )
}

/// The graph from the service-graph series derived from spans.
pub async fn spans(
    cx: &Ctx,
    g: GraphType,
) -> Result<(Vec<Row>, Extras, Box<super::Queries>), TopoError> {
    let w = cx.w.clone();
    let traced: HashSet<String> = cx
        .instant(&format!(
            "group by (service) (last_over_time(traces_spanmetrics_calls_total[{w}]))"
        ))
        .await?
        .into_iter()
        .filter_map(|s| s.labels.get("service").map(str::to_string))
        .collect();
    // Traffic from Tempo's series (what the edge queries read)...
    let total = "traces_service_graph_request_total";
    let mut rows = Vec::new();
    for c in cx.counted(total, SPAN_EDGE).await? {
        let (src, dst) = span_idents(&c.labels, &traced);
        rows.push(Row {
            src,
            dst,
            rate: c.rate,
            requests: c.requests,
            recent_rate: c.recent_rate,
            traffic: true,
            ..Default::default()
        });
    }
    // ...the breakdown by response code and flags from meshlens's own...
    let resp = "meshlens_service_graph_responses_total";
    let by = format!("{SPAN_EDGE},response_code,response_flags");
    for c in cx.counted(resp, &by).await? {
        let (src, dst) = span_idents(&c.labels, &traced);
        let code = get(&c.labels, "response_code");
        rows.push(Row {
            src,
            dst,
            protocol: if code.is_empty() {
                String::new()
            } else {
                "http".into()
            },
            code,
            flags: get(&c.labels, "response_flags"),
            rate: c.rate,
            requests: c.requests,
            breakdown: true,
            ..Default::default()
        });
    }
    // ...and failures (error status or tag, 5xx) from Tempo's failed series.
    for c in cx
        .counted("traces_service_graph_request_failed_total", SPAN_EDGE)
        .await?
    {
        let (src, dst) = span_idents(&c.labels, &traced);
        rows.push(Row {
            src,
            dst,
            failed_rate: Some(c.rate),
            ..Default::default()
        });
    }
    let mut extras = Extras::default();
    let group = match g {
        GraphType::Workload | GraphType::VersionedApp => SPAN_EDGE,
        _ => "client,server,connection_type,client_namespace,server_namespace",
    };
    let by: Vec<&str> = group.split(',').chain(["le"]).collect();
    let rates = cx
        .rates_by("traces_service_graph_request_server_seconds_bucket", &by)
        .await?;
    quantiles_into(rates, 1000.0, &mut extras, |l| {
        let (a, b) = span_idents(l, &traced);
        Some((a.node(g, true).id, b.node(g, false).id))
    });
    // Span service names per node, for the queries.
    let mut names: HashMap<String, Vec<String>> = HashMap::new();
    for s in cx
        .instant(&format!(
            "group by ({SPAN_EDGE}) (last_over_time(traces_service_graph_request_total[{w}]))"
        ))
        .await?
    {
        let (a, b) = span_idents(&s.labels, &traced);
        for (id, n) in [
            (a.node(g, true).id, get(&s.labels, "client")),
            (b.node(g, false).id, get(&s.labels, "server")),
        ] {
            let e = names.entry(id).or_default();
            if !e.contains(&n) {
                e.push(n);
            }
        }
    }
    let wq = w.clone();
    Ok((
        rows,
        extras,
        Box::new(move |s: &NodeRef, d: &NodeRef| {
            let f = |n: &NodeRef| names.get(&n.id).cloned().unwrap_or_default();
            span_queries(s, d, &wq, &f)
        }),
    ))
}

/// A matcher list from PromQL selector text; used by exact counting.
pub fn selector(sel: &str) -> Result<Vec<Vec<Matcher>>, TopoError> {
    crate::prom::params::parse_selector(sel).map_err(|e| TopoError::Internal(e.message))
}
