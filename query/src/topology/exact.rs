//! The exact recompute: the service graph of a window straight from the
//! stored spans. DataFusion scans the window (time pruning, projection of
//! the columns needed); the pairing runs over the record batches in one
//! pass with the rules of the derivation in `ingest/src/derive` (docs/API.md)
//! minus its wait: halves pair however far apart they arrived. Files are
//! sorted by trace id, so the two halves of a call nearly always meet in the
//! same batch and the table of waiting halves stays small. Latency
//! quantiles are exact (sorted server durations, interpolated like
//! `percentile_cont`). Counts are stored spans (no sampling multiplier).
//! The test suite checks the derived series against it.

use super::model::{Extras, GraphType, Latency, NodeRef, Row};
use super::sources::span_ident;
use super::{Ctx, TopoError};
use arrow::array::{Array, ArrayRef, AsArray, MapArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Int32Type};
use datafusion::prelude::{col, lit};
use futures::StreamExt;
use meshlens_storage::model::istio_cluster_host;
use std::collections::HashMap;

/// The columns the recompute reads.
const COLUMNS: &[&str] = &[
    "trace_id",
    "span_id",
    "parent_span_id",
    "kind",
    "shared",
    "service_name",
    "duration_nano",
    "status_code",
    "remote_service_name",
    "tag_http_status_code",
    "tag_response_flags",
    "tag_upstream_cluster",
    "tag_istio_canonical_revision",
    "tag_istio_namespace",
    "attributes",
    "resource_attributes",
];

/// One edge x response code x flags of the recompute.
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
    /// Server-side durations, seconds, sorted.
    pub durations: Vec<f64>,
}

/// The `q` quantile of sorted values, interpolated between neighbours.
pub fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64))
}

const CONNS: [&str; 4] = ["", "virtual_node", "database", "messaging_system"];
const NONE: u32 = 0;

/// Half of a call: interned strings (0 = none).
#[derive(Clone, Copy)]
struct Half {
    svc: u32,
    ns: u32,
    ver: u32,
    secs: Option<f64>,
    failed: bool,
    code: u32,
    flags: u32,
    /// Peer name and connection type index, for an unpaired half.
    peer: u32,
    peer_conn: u8,
    messaging: bool,
}

/// (trace id, pairing key).
type HalfKey = ([u8; 16], [u8; 8]);

#[derive(Hash, PartialEq, Eq, Clone, Copy)]
struct EdgeKey {
    client: u32,
    server: u32,
    conn: u8,
    cns: u32,
    cver: u32,
    sns: u32,
    sver: u32,
    code: u32,
    flags: u32,
    cvirt: bool,
    svirt: bool,
}

#[derive(Default)]
struct Agg {
    n: i64,
    failed: i64,
    durations: Vec<f64>,
}

#[derive(Default)]
struct Pairer {
    names: Vec<String>,
    ids: HashMap<String, u32>,
    waiting: HashMap<HalfKey, (Option<Half>, Option<Half>), foldhash::fast::RandomState>,
    aggs: HashMap<EdgeKey, Agg, foldhash::fast::RandomState>,
    hosts: HashMap<u32, u32>,
    codes: HashMap<u32, Option<u16>>,
    code_ids: HashMap<u16, u32>,
}

/// Per-row interned ids of a (dictionary or plain) string column.
fn intern_column(p: &mut Pairer, a: &ArrayRef) -> Vec<u32> {
    if let Some(d) = a.as_dictionary_opt::<Int32Type>()
        && let Some(values) = d.values().as_string_opt::<i32>()
    {
        let ids: Vec<u32> = (0..values.len())
            .map(|i| {
                if values.is_null(i) {
                    NONE
                } else {
                    p.intern(values.value(i))
                }
            })
            .collect();
        return (0..d.len())
            .map(|i| {
                if d.is_null(i) {
                    NONE
                } else {
                    ids[d.keys().value(i) as usize]
                }
            })
            .collect();
    }
    let owned = arrow::compute::cast(a, &DataType::Utf8).ok();
    let Some(s) = owned.as_ref().and_then(|o| o.as_string_opt::<i32>()) else {
        return vec![NONE; a.len()];
    };
    (0..s.len())
        .map(|i| {
            if s.is_null(i) {
                NONE
            } else {
                p.intern(s.value(i))
            }
        })
        .collect()
}

/// A string map column, taken apart once per batch (no downcast per
/// lookup).
struct MapView<'a> {
    map: &'a MapArray,
    keys: &'a StringArray,
    values: &'a StringArray,
}

impl<'a> MapView<'a> {
    fn new(m: Option<&'a MapArray>) -> Option<MapView<'a>> {
        let map = m?;
        Some(MapView {
            map,
            keys: map.keys().as_string_opt::<i32>()?,
            values: map.values().as_string_opt::<i32>()?,
        })
    }
}

/// The value of `key` in row `i` of a string map column.
fn map_get<'a>(m: &Option<MapView<'a>>, i: usize, key: &str) -> Option<&'a str> {
    let m = m.as_ref()?;
    if m.map.is_null(i) {
        return None;
    }
    let offs = m.map.value_offsets();
    let (a, b) = (offs[i] as usize, offs[i + 1] as usize);
    (a..b)
        .find(|&j| m.keys.value(j) == key)
        .and_then(|j| (!m.values.is_null(j)).then(|| m.values.value(j)))
        .filter(|v| !v.is_empty())
}

impl Pairer {
    fn intern(&mut self, s: &str) -> u32 {
        if s.is_empty() {
            return NONE;
        }
        if let Some(&i) = self.ids.get(s) {
            return i;
        }
        if self.names.is_empty() {
            self.names.push(String::new());
        }
        let i = self.names.len() as u32;
        self.names.push(s.to_string());
        self.ids.insert(s.to_string(), i);
        i
    }

    /// The host of an Istio outbound cluster name (interned), cached by id.
    fn cluster_host(&mut self, cluster: u32) -> u32 {
        if let Some(&h) = self.hosts.get(&cluster) {
            return h;
        }
        let host = istio_cluster_host(&self.names[cluster as usize]).map(str::to_string);
        let h = host.map_or(NONE, |h| self.intern(&h));
        self.hosts.insert(cluster, h);
        h
    }

    /// An HTTP status tag value as a number, cached by id.
    fn code_of(&mut self, id: u32) -> Option<u16> {
        if let Some(&c) = self.codes.get(&id) {
            return c;
        }
        let c = self.names[id as usize].trim().parse().ok();
        self.codes.insert(id, c);
        c
    }

    /// The interned text of a status code.
    fn code_id(&mut self, c: u16) -> u32 {
        if let Some(&i) = self.code_ids.get(&c) {
            return i;
        }
        let i = self.intern(&c.to_string());
        self.code_ids.insert(c, i);
        i
    }

    fn name(&self, i: u32) -> String {
        self.names.get(i as usize).cloned().unwrap_or_default()
    }

    fn batch(&mut self, b: &RecordBatch) -> Result<(), TopoError> {
        let colr = |n: &str| {
            b.column_by_name(n)
                .cloned()
                .ok_or_else(|| TopoError::Internal(format!("exact recompute: no column {n}")))
        };
        let trace = colr("trace_id")?;
        let trace = trace.as_fixed_size_binary();
        let span = colr("span_id")?;
        let span = span.as_fixed_size_binary();
        let parent = colr("parent_span_id")?;
        let parent = parent.as_fixed_size_binary();
        let kind = colr("kind")?;
        let kind = kind.as_primitive::<arrow::datatypes::UInt8Type>();
        let shared = colr("shared")?;
        let shared = shared.as_boolean();
        let dur = colr("duration_nano")?;
        let dur = dur.as_primitive::<arrow::datatypes::Int64Type>();
        let status = colr("status_code")?;
        let status = status.as_primitive::<arrow::datatypes::UInt8Type>();
        let svc = intern_column(self, &colr("service_name")?);
        let remote = intern_column(self, &colr("remote_service_name")?);
        let http = intern_column(self, &colr("tag_http_status_code")?);
        let flags = intern_column(self, &colr("tag_response_flags")?);
        let cluster = intern_column(self, &colr("tag_upstream_cluster")?);
        let rev = intern_column(self, &colr("tag_istio_canonical_revision")?);
        let ins = intern_column(self, &colr("tag_istio_namespace")?);
        let attrs_col = colr("attributes")?;
        let attrs = MapView::new(attrs_col.as_map_opt());
        let res_col = colr("resource_attributes")?;
        let res = MapView::new(res_col.as_map_opt());
        let dash = self.intern("-");
        for i in 0..b.num_rows() {
            let k = kind.value(i);
            let is_client = matches!(k, 3 | 4);
            let is_server = matches!(k, 2 | 5);
            if (!is_client && !is_server) || svc[i] == NONE {
                continue;
            }
            let attr = |key: &str| map_get(&attrs, i, key).or_else(|| map_get(&res, i, key));
            // Failure and response code (span_info::failed / http_status).
            let code_num: Option<u16> = if http[i] != NONE {
                self.code_of(http[i])
            } else {
                map_get(&attrs, i, "http.response.status_code").and_then(|v| v.trim().parse().ok())
            };
            let failed = status.value(i) == 2
                || map_get(&attrs, i, "error").is_some()
                || code_num.is_some_and(|c| c >= 500);
            let ver = match rev[i] {
                NONE => attr("service.version").map_or(NONE, |v| self.intern(v)),
                v => v,
            };
            let ns = match ins[i] {
                NONE => attr("service.namespace")
                    .or_else(|| attr("k8s.namespace.name"))
                    .map_or(NONE, |v| self.intern(v)),
                v => v,
            };
            let (peer, peer_conn) = if is_client {
                let other: u8 = if k == 4 { 3 } else { 1 };
                // Attributes first (rare on proxies), then ids already interned.
                let named: Option<(&str, u8)> = attr("peer.service").map(|p| (p, other));
                let named = match named {
                    Some(x) => Some(x),
                    None if remote[i] != NONE => None,
                    None => attr("db.name")
                        .or_else(|| attr("db.system"))
                        .map(|p| (p, 2))
                        .or_else(|| {
                            (k == 4)
                                .then(|| {
                                    attr("messaging.system")
                                        .or_else(|| attr("messaging.destination.name"))
                                        .or_else(|| attr("messaging.destination"))
                                        .map(|p| (p, 3))
                                })
                                .flatten()
                        })
                        .or_else(|| {
                            attr("server.address")
                                .or_else(|| attr("net.peer.name"))
                                .map(|p| (p, other))
                        }),
                };
                match named {
                    Some((p, c)) => (self.intern(p), c),
                    None if remote[i] != NONE => (remote[i], other),
                    None if cluster[i] != NONE => (self.cluster_host(cluster[i]), other),
                    None => (NONE, 1),
                }
            } else {
                let conn: u8 = if k == 5 { 3 } else { 1 };
                if remote[i] != NONE {
                    (remote[i], conn)
                } else if k == 5 {
                    (
                        attr("messaging.system").map_or(NONE, |v| self.intern(v)),
                        conn,
                    )
                } else {
                    (NONE, conn)
                }
            };
            let code = match code_num {
                Some(c) => self.code_id(c),
                None => NONE,
            };
            let half = Half {
                svc: svc[i],
                ns,
                ver,
                secs: (!dur.is_null(i)).then(|| dur.value(i) as f64 / 1e9),
                failed,
                code,
                flags: if flags[i] == dash { NONE } else { flags[i] },
                peer,
                peer_conn,
                messaging: matches!(k, 4 | 5),
            };
            let mut tid = [0u8; 16];
            tid.copy_from_slice(trace.value(i));
            let mut own = [0u8; 8];
            own.copy_from_slice(span.value(i));
            let key = if is_client || shared.value(i) {
                own
            } else if !parent.is_null(i) {
                let mut p = [0u8; 8];
                p.copy_from_slice(parent.value(i));
                p
            } else {
                // A root server span: from its named caller, else `user`.
                let from = if half.peer != NONE {
                    half.peer
                } else {
                    self.intern("user")
                };
                let conn = if half.peer != NONE { half.peer_conn } else { 1 };
                self.edge(None, Some(&half), Some((from, conn)));
                continue;
            };
            let slot = self.waiting.entry((tid, key)).or_insert((None, None));
            let side = if is_client { &mut slot.0 } else { &mut slot.1 };
            if side.is_some() {
                continue; // reported twice: counted once
            }
            *side = Some(half);
            if let (Some(c), Some(s)) = *slot {
                self.waiting.remove(&(tid, key));
                self.edge(Some(&c), Some(&s), None);
            }
        }
        Ok(())
    }

    fn edge(&mut self, c: Option<&Half>, s: Option<&Half>, peer: Option<(u32, u8)>) {
        let Some(any) = c.or(s) else { return };
        let conn = match peer {
            Some((_, k)) => k,
            None if any.messaging
                || c.is_some_and(|h| h.messaging)
                || s.is_some_and(|h| h.messaging) =>
            {
                3
            }
            None => 0,
        };
        let flags = {
            let mut v: Vec<&str> = [c.map(|h| h.flags), s.map(|h| h.flags)]
                .into_iter()
                .flatten()
                .filter(|f| *f != NONE)
                .flat_map(|f| self.names[f as usize].split(','))
                .map(str::trim)
                .filter(|f| !f.is_empty())
                .collect();
            v.sort_unstable();
            v.dedup();
            v.join(",")
        };
        let flags = self.intern(&flags);
        let key = EdgeKey {
            client: c.map(|h| h.svc).or(peer.map(|p| p.0)).unwrap_or(NONE),
            server: s.map(|h| h.svc).or(peer.map(|p| p.0)).unwrap_or(NONE),
            conn,
            cns: c.map(|h| h.ns).unwrap_or(NONE),
            cver: c.map(|h| h.ver).unwrap_or(NONE),
            sns: s.map(|h| h.ns).unwrap_or(NONE),
            sver: s.map(|h| h.ver).unwrap_or(NONE),
            code: c
                .map(|h| h.code)
                .filter(|x| *x != NONE)
                .or(s.map(|h| h.code))
                .unwrap_or(NONE),
            flags,
            cvirt: c.is_none(),
            svirt: s.is_none(),
        };
        let a = self.aggs.entry(key).or_default();
        a.n += 1;
        if c.is_some_and(|h| h.failed) || s.is_some_and(|h| h.failed) {
            a.failed += 1;
        }
        if let Some(secs) = s.and_then(|h| h.secs) {
            a.durations.push(secs);
        }
    }

    fn finish(mut self) -> Vec<ExactEdge> {
        let left: Vec<(Option<Half>, Option<Half>)> =
            self.waiting.drain().map(|(_, v)| v).collect();
        for (c, s) in left {
            match (c, s) {
                (Some(c), None) if c.peer != NONE => {
                    self.edge(Some(&c), None, Some((c.peer, c.peer_conn)))
                }
                (None, Some(s)) if s.peer != NONE => {
                    self.edge(None, Some(&s), Some((s.peer, s.peer_conn)))
                }
                _ => {}
            }
        }
        let aggs = std::mem::take(&mut self.aggs);
        let mut out: Vec<ExactEdge> = aggs
            .into_iter()
            .map(|(k, mut a)| {
                a.durations.sort_by(|x, y| x.total_cmp(y));
                ExactEdge {
                    client: self.name(k.client),
                    server: self.name(k.server),
                    connection_type: CONNS[k.conn as usize].to_string(),
                    client_namespace: self.name(k.cns),
                    client_version: self.name(k.cver),
                    server_namespace: self.name(k.sns),
                    server_version: self.name(k.sver),
                    code: self.name(k.code),
                    flags: self.name(k.flags),
                    client_virtual: k.cvirt,
                    server_virtual: k.svirt,
                    requests: a.n,
                    failed: a.failed,
                    durations: a.durations,
                }
            })
            .collect();
        out.sort_by(|a, b| {
            (&a.client, &a.server, &a.code, &a.flags)
                .cmp(&(&b.client, &b.server, &b.code, &b.flags))
        });
        out
    }
}

/// Runs the recompute over `[start_ms, end_ms]` (span start times).
pub async fn edges(cx: &Ctx, start_ms: i64, end_ms: i64) -> Result<Vec<ExactEdge>, TopoError> {
    edges_in(&cx.st.storage.session(), start_ms, end_ms).await
}

/// [`edges`] on a DataFusion session that has the `spans` table.
pub async fn edges_in(
    ctx: &datafusion::prelude::SessionContext,
    start_ms: i64,
    end_ms: i64,
) -> Result<Vec<ExactEdge>, TopoError> {
    let err = |e: datafusion::error::DataFusionError| {
        TopoError::Internal(format!("exact recompute: {e}"))
    };
    let start_ns = start_ms.saturating_mul(1_000_000);
    let end_ns = end_ms.saturating_mul(1_000_000).saturating_add(999_999);
    let df = ctx
        .table("spans")
        .await
        .map_err(err)?
        .filter(
            col("start_time_unix_nano")
                .gt_eq(lit(start_ns))
                .and(col("start_time_unix_nano").lt_eq(lit(end_ns))),
        )
        .map_err(err)?
        .select_columns(COLUMNS)
        .map_err(err)?;
    let mut stream = df.execute_stream().await.map_err(err)?;
    let mut p = Pairer::default();
    while let Some(b) = stream.next().await {
        p.batch(&b.map_err(err)?)?;
    }
    Ok(p.finish())
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
    let mut durations: HashMap<(String, String), Vec<f64>> = HashMap::new();
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
        durations
            .entry(key)
            .or_default()
            .extend_from_slice(&e.durations);
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
    for (key, mut d) in durations {
        if d.is_empty() {
            continue;
        }
        d.sort_by(|a, b| a.total_cmp(b));
        extras.latency.insert(
            key,
            Latency {
                p50: quantile(&d, 0.5).map(|s| s * 1000.0),
                p95: quantile(&d, 0.95).map(|s| s * 1000.0),
                p99: quantile(&d, 0.99).map(|s| s * 1000.0),
            },
        );
    }
    Ok((
        rows,
        extras,
        Box::new(|_: &NodeRef, _: &NodeRef| std::collections::BTreeMap::new()),
    ))
}
