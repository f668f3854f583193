//! Zipkin's dependency linker: service -> service call counts from span trees.
//!
//! Semantics (same as Zipkin's `DependencyLinker`, written down in
//! ../shared/DESIGN.md section 4):
//! - the tree: a shared (server) span is the child of the client span with
//!   the same id; other spans hang under their parent id, preferring a shared
//!   span on the same endpoint (an intermediate local span of that server);
//!   spans whose parent is missing hang under the first root;
//! - a client span with children is skipped (its server child links);
//! - a span without kind counts as a client when both services are known;
//! - server/consumer: parent = remote service, child = local service; a root
//!   server span with no remote service yields no link;
//! - client/producer: parent = local service, child = remote service;
//! - producer/consumer link only when both names are known;
//! - otherwise the nearest ancestor with a kind provides the parent name for
//!   server spans (and when the parent is unknown), a client span whose
//!   ancestor is another service also gets ancestor -> client service, and a
//!   server span directly under a client inherits that client's `error`.

use meshlens_storage::model::{Span, SpanId, SpanKind};
use std::collections::{BTreeMap, HashMap, VecDeque};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DependencyLink {
    pub parent: String,
    pub child: String,
    pub call_count: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub error_count: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

#[derive(Default)]
pub struct Linker {
    links: BTreeMap<(String, String), (u64, u64)>,
}

/// (service name, ipv4, ipv6, port) of a span's local endpoint.
type EndpointKey = (Option<String>, Option<String>, Option<String>, Option<i32>);

#[derive(Hash, PartialEq, Eq, Clone, Debug)]
enum Key {
    Id(SpanId),
    /// A shared span, told apart by its local endpoint.
    Shared(SpanId, Option<EndpointKey>),
}

fn endpoint_key(s: &Span) -> Option<EndpointKey> {
    (!s.local.is_empty()).then(|| {
        (
            s.local.service_name.clone(),
            s.local.ipv4.clone(),
            s.local.ipv6.clone(),
            s.local.port,
        )
    })
}

fn kind_of(s: &Span) -> Option<SpanKind> {
    match s.kind {
        SpanKind::Server | SpanKind::Client | SpanKind::Producer | SpanKind::Consumer => {
            Some(s.kind)
        }
        _ => None,
    }
}

/// Merges spans reported more than once (same id, sharedness and endpoint):
/// the first report wins, missing fields and tags come from the others.
fn merge_duplicates(spans: &[Span]) -> Vec<Span> {
    let mut out: Vec<Span> = Vec::with_capacity(spans.len());
    let mut index: HashMap<(SpanId, bool, Option<String>), usize> = HashMap::new();
    for s in spans {
        let k = (s.span_id, s.shared, s.local.service_name.clone());
        match index.get(&k) {
            Some(&i) => {
                let m = &mut out[i];
                if m.parent_span_id.is_none() {
                    m.parent_span_id = s.parent_span_id;
                }
                if kind_of(m).is_none() {
                    m.kind = s.kind;
                }
                if m.remote.service_name.is_none() {
                    m.remote.service_name = s.remote.service_name.clone();
                }
                for (k, v) in &s.attributes {
                    m.attributes.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
            None => {
                index.insert(k, out.len());
                out.push(s.clone());
            }
        }
    }
    out
}

impl Linker {
    pub fn new() -> Self {
        Self::default()
    }

    fn add(&mut self, parent: &str, child: &str, error: bool) {
        let e = self
            .links
            .entry((parent.to_string(), child.to_string()))
            .or_default();
        e.0 += 1;
        if error {
            e.1 += 1;
        }
    }

    /// Adds one trace (all spans must share a trace id).
    pub fn put_trace(&mut self, spans: &[Span]) {
        if spans.is_empty() {
            return;
        }
        let spans = merge_duplicates(spans);
        // Index: key of each span -> key of its parent.
        let mut key_of: Vec<Key> = Vec::with_capacity(spans.len());
        let mut parent_of: Vec<Option<Key>> = Vec::with_capacity(spans.len());
        let mut known: HashMap<Key, ()> = HashMap::new();
        for s in &spans {
            let (k, p) = if s.shared {
                (
                    Key::Shared(s.span_id, endpoint_key(s)),
                    Some(Key::Id(s.span_id)),
                )
            } else {
                (Key::Id(s.span_id), s.parent_span_id.map(Key::Id))
            };
            known.insert(k.clone(), ());
            key_of.push(k);
            parent_of.push(p);
        }
        // Resolve parents and pick the root.
        let mut node_by_key: HashMap<Key, usize> = HashMap::new();
        let mut root: Option<usize> = None;
        let mut parents: Vec<Option<Key>> = vec![None; spans.len()];
        for (i, s) in spans.iter().enumerate() {
            let parent = if s.shared {
                Some(Key::Id(s.span_id))
            } else if let Some(pid) = s.parent_span_id {
                let shared_parent = Key::Shared(pid, endpoint_key(s));
                if known.contains_key(&shared_parent) {
                    Some(shared_parent)
                } else {
                    Some(Key::Id(pid))
                }
            } else {
                None
            };
            if parent.is_none() && root.is_none() {
                root = Some(i);
                continue;
            }
            parents[i] = parent.or_else(|| parent_of[i].clone());
            if s.shared {
                node_by_key.insert(key_of[i].clone(), i);
                node_by_key.insert(Key::Shared(s.span_id, None), i);
            } else {
                node_by_key.insert(key_of[i].clone(), i);
            }
        }
        // Children lists; spans with a missing parent go under the root
        // (or a synthetic root when there is none).
        let mut parent_idx: Vec<Option<usize>> = vec![None; spans.len()];
        let mut children: Vec<Vec<usize>> = vec![Vec::new(); spans.len()];
        let mut top: Vec<usize> = Vec::new();
        for i in 0..spans.len() {
            if Some(i) == root {
                continue;
            }
            let p = parents[i]
                .as_ref()
                .and_then(|k| node_by_key.get(k))
                .copied()
                .filter(|&p| p != i);
            match p.or(root) {
                Some(p) => {
                    parent_idx[i] = Some(p);
                    children[p].push(i);
                }
                None => top.push(i),
            }
        }
        // Breadth-first walk.
        let mut queue: VecDeque<usize> = match root {
            Some(r) => VecDeque::from([r]),
            None => top.into_iter().collect(),
        };
        let mut seen = vec![false; spans.len()];
        while let Some(i) = queue.pop_front() {
            if std::mem::replace(&mut seen[i], true) {
                continue;
            }
            queue.extend(children[i].iter().copied());
            let span = &spans[i];
            let mut kind = kind_of(span);
            if kind == Some(SpanKind::Client) && !children[i].is_empty() {
                continue;
            }
            let service = span.local.service_name.as_deref();
            let remote = span.remote.service_name.as_deref();
            if kind.is_none() {
                if service.is_some() && remote.is_some() {
                    kind = Some(SpanKind::Client);
                } else {
                    continue;
                }
            }
            let (mut parent, child) = match kind {
                Some(SpanKind::Server | SpanKind::Consumer) => {
                    if Some(i) == root && remote.is_none() {
                        continue;
                    }
                    (remote, service)
                }
                _ => (service, remote),
            };
            let mut error = span.attributes.contains_key("error");
            if matches!(kind, Some(SpanKind::Producer | SpanKind::Consumer)) {
                if let (Some(p), Some(c)) = (parent, child) {
                    self.add(p, c, error);
                }
                continue;
            }
            // Nearest ancestor that has a kind.
            let mut anc = parent_idx[i];
            while let Some(a) = anc {
                if kind_of(&spans[a]).is_some() {
                    break;
                }
                anc = parent_idx[a];
            }
            if let Some(a) = anc
                && let Some(anc_name) = spans[a].local.service_name.as_deref()
            {
                if kind == Some(SpanKind::Client)
                    && let Some(svc) = service
                    && svc != anc_name
                {
                    self.add(anc_name, svc, false);
                }
                if kind == Some(SpanKind::Server) || parent.is_none() {
                    parent = Some(anc_name);
                }
                if !error
                    && spans[a].kind == SpanKind::Client
                    && span.parent_span_id == Some(spans[a].span_id)
                {
                    error = spans[a].attributes.contains_key("error");
                }
            }
            if let (Some(p), Some(c)) = (parent, child) {
                self.add(p, c, error);
            }
        }
    }

    pub fn links(self) -> Vec<DependencyLink> {
        self.links
            .into_iter()
            .map(|((parent, child), (calls, errors))| DependencyLink {
                parent,
                child,
                call_count: calls,
                error_count: errors,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshlens_storage::model::{AttrValue, Endpoint, TraceId};

    fn span(
        id: u8,
        parent: Option<u8>,
        kind: SpanKind,
        svc: &str,
        remote: Option<&str>,
        shared: bool,
    ) -> Span {
        Span {
            trace_id: TraceId::from_u64s(0, 1),
            span_id: SpanId([0, 0, 0, 0, 0, 0, 0, id]),
            parent_span_id: parent.map(|p| SpanId([0, 0, 0, 0, 0, 0, 0, p])),
            kind,
            local: Endpoint {
                service_name: Some(svc.into()),
                ..Default::default()
            },
            remote: Endpoint {
                service_name: remote.map(Into::into),
                ..Default::default()
            },
            shared,
            ..Default::default()
        }
    }

    fn links(spans: &[Span]) -> Vec<(String, String, u64, u64)> {
        let mut l = Linker::new();
        l.put_trace(spans);
        l.links()
            .into_iter()
            .map(|d| (d.parent, d.child, d.call_count, d.error_count))
            .collect()
    }

    #[test]
    fn shared_spans_link_client_to_server_and_inherit_errors() {
        let mut client = span(2, Some(1), SpanKind::Client, "frontend", None, false);
        client
            .attributes
            .insert("error".into(), AttrValue::Str("500".into()));
        let spans = vec![
            span(1, None, SpanKind::Server, "frontend", None, false),
            client,
            span(2, Some(1), SpanKind::Server, "backend", None, true),
        ];
        // The shared server span has the client's id, not its parent id, so
        // Zipkin's rule (parentId == client id) does not pass the error on.
        assert_eq!(
            links(&spans),
            vec![("frontend".into(), "backend".into(), 1, 0)]
        );
    }

    #[test]
    fn separate_server_span_inherits_client_error() {
        let mut client = span(2, Some(1), SpanKind::Client, "frontend", None, false);
        client
            .attributes
            .insert("error".into(), AttrValue::Str("".into()));
        let spans = vec![
            span(1, None, SpanKind::Server, "frontend", None, false),
            client,
            span(3, Some(2), SpanKind::Server, "backend", None, false),
        ];
        assert_eq!(
            links(&spans),
            vec![("frontend".into(), "backend".into(), 1, 1)]
        );
    }

    #[test]
    fn leaf_client_links_to_uninstrumented_peer_and_root_needs_remote() {
        let spans = vec![
            span(1, None, SpanKind::Server, "api", None, false),
            span(2, Some(1), SpanKind::Client, "api", Some("mysql"), false),
        ];
        assert_eq!(links(&spans), vec![("api".into(), "mysql".into(), 1, 0)]);
    }

    #[test]
    fn messaging_links_through_broker() {
        let spans = vec![
            span(
                1,
                None,
                SpanKind::Producer,
                "producer",
                Some("kafka"),
                false,
            ),
            span(
                2,
                Some(1),
                SpanKind::Consumer,
                "consumer",
                Some("kafka"),
                false,
            ),
        ];
        assert_eq!(
            links(&spans),
            vec![
                ("kafka".into(), "consumer".into(), 1, 0),
                ("producer".into(), "kafka".into(), 1, 0)
            ]
        );
    }
}
