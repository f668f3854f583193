//! The exact recompute: the service graph of a window straight from the
//! stored spans, one DataFusion plan (a hash join of client halves with
//! server halves), with the pairing rules of the derivation in
//! `ingest/src/derive` (docs/API.md) minus its wait: halves pair however
//! far apart they arrived. The test suite checks the derived series
//! against it.

use super::model::{Extras, GraphType, Latency, NodeRef, Row};
use super::sources::span_ident;
use super::{Ctx, TopoError};
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type};
use datafusion::common::ScalarValue;
use datafusion::functions::expr_fn::{concat_ws, nullif, split_part, starts_with};
use datafusion::functions_aggregate::approx_percentile_cont::approx_percentile_cont;
use datafusion::functions_aggregate::expr_fn::{count, sum};
use datafusion::functions_nested::expr_fn::{array_element, map_extract};
use datafusion::logical_expr::{JoinType, cast, try_cast, when};
use datafusion::prelude::{DataFrame, Expr, SessionContext, coalesce, col, lit};
use std::collections::HashMap;
use std::ops::Not;

fn map_attr(map: &str, key: &str) -> Expr {
    array_element(map_extract(col(map), lit(key)), lit(1i64))
}

/// A string attribute from the span's map, then the resource's.
fn attr(key: &str) -> Expr {
    coalesce(vec![
        map_attr("attributes", key),
        map_attr("resource_attributes", key),
    ])
}

fn utf8(e: Expr) -> Expr {
    cast(e, DataType::Utf8)
}

/// The client-style peer of a half (docs/API.md): `peer.service`, the
/// remote endpoint, `db.name`/`db.system`, messaging (producers),
/// `server.address`, `net.peer.name`, the host of Envoy's `upstream_cluster`.
fn client_peer() -> (Expr, Expr) {
    let cluster = utf8(col("tag_upstream_cluster"));
    let peer = coalesce(vec![
        attr("peer.service"),
        utf8(col("remote_service_name")),
        attr("db.name"),
        attr("db.system"),
        when(
            col("kind").eq(lit(4u8)),
            coalesce(vec![
                attr("messaging.system"),
                attr("messaging.destination.name"),
                attr("messaging.destination"),
            ]),
        )
        .end()
        .unwrap_or(lit(ScalarValue::Utf8(None))),
        attr("server.address"),
        attr("net.peer.name"),
        when(
            starts_with(cluster.clone(), lit("outbound|")),
            nullif(split_part(cluster, lit("|"), lit(4i64)), lit("")),
        )
        .end()
        .unwrap_or(lit(ScalarValue::Utf8(None))),
    ]);
    let conn = when(
        attr("peer.service")
            .is_null()
            .and(col("remote_service_name").is_null())
            .and(
                attr("db.name")
                    .is_not_null()
                    .or(attr("db.system").is_not_null()),
            ),
        lit("database"),
    )
    .when(col("kind").eq(lit(4u8)), lit("messaging_system"))
    .otherwise(lit("virtual_node"))
    .unwrap_or(lit("virtual_node"));
    (peer, conn)
}

/// The (trace, key) halves of one side with what an edge needs.
fn half(spans: DataFrame, client: bool) -> datafusion::error::Result<DataFrame> {
    let p = if client { "c_" } else { "v_" };
    let status = coalesce(vec![
        try_cast(
            coalesce(vec![
                utf8(col("tag_http_status_code")),
                map_attr("attributes", "http.response.status_code"),
            ]),
            DataType::Int32,
        ),
        lit(0i32),
    ]);
    let failed = col("status_code")
        .eq(lit(2u8))
        .or(map_attr("attributes", "error").is_not_null())
        .or(status.clone().gt_eq(lit(500i32)));
    let version = coalesce(vec![
        utf8(col("tag_istio_canonical_revision")),
        attr("service.version"),
    ]);
    let namespace = coalesce(vec![
        utf8(col("tag_istio_namespace")),
        attr("service.namespace"),
        attr("k8s.namespace.name"),
    ]);
    let root = col("shared").not().and(col("parent_span_id").is_null());
    let (key, kinds, peer, conn) = if client {
        let (peer, conn) = client_peer();
        (col("span_id"), vec![lit(3u8), lit(4u8)], peer, conn)
    } else {
        // A server names its caller by its remote endpoint (a consumer: the
        // broker); a root server without one was called by `user`.
        let named = coalesce(vec![
            utf8(col("remote_service_name")),
            when(col("kind").eq(lit(5u8)), attr("messaging.system"))
                .end()
                .unwrap_or(lit(ScalarValue::Utf8(None))),
        ]);
        let peer = when(root.clone(), coalesce(vec![named.clone(), lit("user")]))
            .otherwise(named.clone())
            .unwrap_or(named);
        let conn = when(col("kind").eq(lit(5u8)), lit("messaging_system"))
            .otherwise(lit("virtual_node"))
            .unwrap_or(lit("virtual_node"));
        let key = when(col("shared"), col("span_id"))
            .otherwise(col("parent_span_id"))
            .unwrap_or(col("span_id"));
        (key, vec![lit(2u8), lit(5u8)], peer, conn)
    };
    spans
        .filter(col("kind").in_list(kinds, false))?
        .select(vec![
            col("trace_id").alias(format!("{p}tid")),
            key.alias(format!("{p}k")),
            col("kind").alias(format!("{p}kind")),
            utf8(col("service_name")).alias(format!("{p}svc")),
            (cast(col("duration_nano"), DataType::Float64) / lit(1e9)).alias(format!("{p}secs")),
            failed.alias(format!("{p}failed")),
            cast(nullif(status, lit(0i32)), DataType::Utf8).alias(format!("{p}code")),
            nullif(utf8(col("tag_response_flags")), lit("-")).alias(format!("{p}flags")),
            version.alias(format!("{p}ver")),
            namespace.alias(format!("{p}ns")),
            peer.alias(format!("{p}peer")),
            conn.alias(format!("{p}conn")),
        ])
}

/// The recompute as a DataFusion plan over table `spans` for span start
/// times in `[start_ns, end_ns]`: client and server halves full-outer-joined
/// on (trace id, key), then counted per edge, code and flags.
pub async fn plan(
    ctx: &SessionContext,
    start_ns: i64,
    end_ns: i64,
) -> datafusion::error::Result<DataFrame> {
    let spans = ctx.table("spans").await?.filter(
        col("start_time_unix_nano")
            .gt_eq(lit(start_ns))
            .and(col("start_time_unix_nano").lt_eq(lit(end_ns)))
            .and(col("service_name").is_not_null()),
    )?;
    let c = half(spans.clone(), true)?;
    let v = half(spans, false)?;
    let joined = c.join(
        v,
        JoinType::Full,
        &["c_tid", "c_k"],
        &["v_tid", "v_k"],
        None,
    )?;
    let has_c = col("c_tid").is_not_null();
    let has_v = col("v_tid").is_not_null();
    let both = has_c.clone().and(has_v.clone());
    let only_c = has_c.clone().and(has_v.clone().not());
    let only_v = has_v.clone().and(has_c.clone().not());
    let pick = |a: Expr, b: Expr, c: Expr| {
        when(both.clone(), a)
            .when(only_c.clone(), b)
            .otherwise(c)
            .unwrap_or(lit(ScalarValue::Utf8(None)))
    };
    let null = || lit(ScalarValue::Utf8(None));
    let edges = joined
        .filter(
            both.clone()
                .or(only_c.clone().and(col("c_peer").is_not_null()))
                .or(only_v.clone().and(col("v_peer").is_not_null())),
        )?
        .select(vec![
            pick(col("c_svc"), col("c_svc"), col("v_peer")).alias("client"),
            pick(col("v_svc"), col("c_peer"), col("v_svc")).alias("server"),
            pick(
                when(
                    col("c_kind").eq(lit(4u8)).or(col("v_kind").eq(lit(5u8))),
                    lit("messaging_system"),
                )
                .otherwise(lit(""))
                .unwrap_or(lit("")),
                col("c_conn"),
                col("v_conn"),
            )
            .alias("conn"),
            pick(col("c_ns"), col("c_ns"), null()).alias("cns"),
            pick(col("c_ver"), col("c_ver"), null()).alias("cver"),
            pick(col("v_ns"), null(), col("v_ns")).alias("sns"),
            pick(col("v_ver"), null(), col("v_ver")).alias("sver"),
            coalesce(vec![col("c_code"), col("v_code")]).alias("code"),
            concat_ws(lit(","), vec![col("c_flags"), col("v_flags")]).alias("flags"),
            only_v.clone().alias("cvirt"),
            only_c.clone().alias("svirt"),
            coalesce(vec![col("c_failed"), lit(false)])
                .or(coalesce(vec![col("v_failed"), lit(false)]))
                .alias("failed"),
            col("v_secs").alias("secs"),
        ])?;
    let q = |p: f64, name: &str| {
        approx_percentile_cont(col("secs").sort(true, false), lit(p), None).alias(name)
    };
    edges.aggregate(
        vec![
            col("client"),
            col("server"),
            col("conn"),
            col("cns"),
            col("cver"),
            col("sns"),
            col("sver"),
            col("code"),
            col("flags"),
            col("cvirt"),
            col("svirt"),
        ],
        vec![
            count(lit(1i64)).alias("n"),
            sum(when(col("failed"), lit(1i64))
                .otherwise(lit(0i64))
                .unwrap_or(lit(0i64)))
            .alias("nfailed"),
            q(0.5, "p50"),
            q(0.95, "p95"),
            q(0.99, "p99"),
        ],
    )
}

fn strings(b: &RecordBatch, name: &str) -> Result<Vec<String>, TopoError> {
    let col = b
        .column_by_name(name)
        .ok_or_else(|| TopoError::Internal(format!("exact recompute: no column {name}")))?;
    let col = arrow::compute::cast(col, &DataType::Utf8)
        .map_err(|e| TopoError::Internal(e.to_string()))?;
    let a = col.as_string::<i32>();
    Ok((0..a.len())
        .map(|i| {
            if a.is_null(i) {
                String::new()
            } else {
                a.value(i).to_string()
            }
        })
        .collect())
}

fn numbers(b: &RecordBatch, name: &str) -> Result<Vec<Option<f64>>, TopoError> {
    let col = b
        .column_by_name(name)
        .ok_or_else(|| TopoError::Internal(format!("exact recompute: no column {name}")))?;
    let col = arrow::compute::cast(col, &DataType::Float64)
        .map_err(|e| TopoError::Internal(e.to_string()))?;
    let a = col.as_primitive::<Float64Type>();
    Ok((0..a.len())
        .map(|i| (!a.is_null(i)).then(|| a.value(i)))
        .collect())
}

/// One result row of [`sql`].
#[derive(Clone, Debug, PartialEq)]
pub struct ExactEdge {
    pub client: String,
    pub server: String,
    pub connection_type: String,
    pub client_namespace: String,
    pub client_version: String,
    pub server_namespace: String,
    pub server_version: String,
    pub code: String,
    pub flags: String,
    /// The client (server) is a virtual node: only named by the other side.
    pub client_virtual: bool,
    pub server_virtual: bool,
    pub requests: i64,
    pub failed: i64,
    /// Server-side duration quantiles, seconds (t-digest).
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
}

/// Runs the recompute over `[start_ms, end_ms]` (span start times).
pub async fn edges(cx: &Ctx, start_ms: i64, end_ms: i64) -> Result<Vec<ExactEdge>, TopoError> {
    let ctx = cx.st.storage.session();
    let batches = plan(
        &ctx,
        start_ms.saturating_mul(1_000_000),
        end_ms.saturating_mul(1_000_000).saturating_add(999_999),
    )
    .await
    .map_err(|e| TopoError::Internal(format!("exact recompute: {e}")))?
    .collect()
    .await
    .map_err(|e| TopoError::Internal(format!("exact recompute: {e}")))?;
    let mut out = Vec::new();
    for b in &batches {
        let (client, server, conn) = (
            strings(b, "client")?,
            strings(b, "server")?,
            strings(b, "conn")?,
        );
        let (cns, cver, sns, sver) = (
            strings(b, "cns")?,
            strings(b, "cver")?,
            strings(b, "sns")?,
            strings(b, "sver")?,
        );
        let (code, flags) = (strings(b, "code")?, strings(b, "flags")?);
        let (n, f) = (numbers(b, "n")?, numbers(b, "nfailed")?);
        let (p50, p95, p99) = (numbers(b, "p50")?, numbers(b, "p95")?, numbers(b, "p99")?);
        let (cv, sv) = (strings(b, "cvirt")?, strings(b, "svirt")?);
        for i in 0..b.num_rows() {
            let mut fl: Vec<&str> = flags[i]
                .split(',')
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .collect();
            fl.sort_unstable();
            fl.dedup();
            out.push(ExactEdge {
                client: client[i].clone(),
                server: server[i].clone(),
                connection_type: conn[i].clone(),
                client_namespace: cns[i].clone(),
                client_version: cver[i].clone(),
                server_namespace: sns[i].clone(),
                server_version: sver[i].clone(),
                code: code[i].clone(),
                flags: fl.join(","),
                client_virtual: cv[i] == "true",
                server_virtual: sv[i] == "true",
                requests: n[i].unwrap_or(0.0) as i64,
                failed: f[i].unwrap_or(0.0) as i64,
                p50: p50[i],
                p95: p95[i],
                p99: p99[i],
            });
        }
    }
    out.sort_by(|a, b| {
        (&a.client, &a.server, &a.code, &a.flags).cmp(&(&b.client, &b.server, &b.code, &b.flags))
    });
    Ok(out)
}

/// Rows for the graph builder from the recompute.
pub async fn rows(
    cx: &Ctx,
    g: GraphType,
) -> Result<(Vec<Row>, Extras, Box<super::Queries>), TopoError> {
    let edges = edges(cx, cx.start_ms, cx.end_ms).await?;
    let secs = (cx.end_ms - cx.start_ms) as f64 / 1000.0;
    let mut rows = Vec::new();
    let mut extras = Extras::default();
    let mut weights: HashMap<(String, String), f64> = HashMap::new();
    for e in &edges {
        let src = span_ident(
            &e.client,
            &e.client_namespace,
            &e.client_version,
            e.client_virtual,
        );
        let dst = span_ident(
            &e.server,
            &e.server_namespace,
            &e.server_version,
            e.server_virtual,
        );
        let key = (src.node(g, true).id, dst.node(g, false).id);
        // Quantiles of merged groups: weighted by requests (an approximation
        // only when a graph node merges several versions).
        let w = e.requests as f64;
        let lat: &mut Latency = extras.latency.entry(key.clone()).or_default();
        let tot = weights.entry(key).or_default();
        let mix = |old: Option<f64>, new: Option<f64>| match (old, new) {
            (Some(o), Some(n)) => Some((o * *tot + n * w * 1000.0) / (*tot + w)),
            (None, Some(n)) => Some(n * 1000.0),
            (o, None) => o,
        };
        lat.p50 = mix(lat.p50, e.p50);
        lat.p95 = mix(lat.p95, e.p95);
        lat.p99 = mix(lat.p99, e.p99);
        if e.p50.is_some() {
            *tot += w;
        }
        rows.push(Row {
            src,
            dst,
            protocol: if e.code.is_empty() {
                String::new()
            } else {
                "http".into()
            },
            code: e.code.clone(),
            flags: e.flags.clone(),
            rate: e.requests as f64 / secs,
            requests: e.requests as f64,
            failed_rate: Some(e.failed as f64 / secs),
            recent_rate: None,
            traffic: true,
            breakdown: true,
        });
    }
    Ok((
        rows,
        extras,
        Box::new(|_: &NodeRef, _: &NodeRef| std::collections::BTreeMap::new()),
    ))
}
