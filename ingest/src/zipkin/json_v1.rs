//! Zipkin v1 JSON to v2-shaped [`Span`]s, the way Zipkin's
//! `V1JsonSpanReader` + `V1SpanConverter` do it: core annotations
//! (cs/sr/ss/cr/ms/mr/ws/wr) become kind, timestamp and duration; one v1
//! span carrying both cs and sr splits into a client half and a `shared`
//! server half; "ca"/"sa"/"ma" address annotations become remote endpoints;
//! other binary annotations become tags.
//!
//! Differences from Zipkin, on purpose: names keep their case; binary
//! annotation values that are numbers or booleans (other than the address
//! markers) become string tags instead of being dropped.

use super::json_common::{RawEndpoint, Str, parse_array};
use super::{Collector, at};
use crate::error::{DecodeError, Problem};
use crate::validate::{FieldProblem, micros_to_nanos, parent_id_hex, span_id_hex, trace_id_hex};
use meshlens_storage::model::{
    AttrValue, Endpoint, Event, Span, SpanId, SpanKind, TraceId, UnixNanos,
};
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::fmt;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawV1Span<'a> {
    #[serde(borrow)]
    trace_id: Option<Str<'a>>,
    #[serde(borrow)]
    id: Option<Str<'a>>,
    #[serde(borrow)]
    parent_id: Option<Str<'a>>,
    name: Option<String>,
    timestamp: Option<i64>,
    duration: Option<i64>,
    annotations: Option<Vec<RawV1Annotation>>,
    binary_annotations: Option<Vec<RawBinaryAnnotation>>,
    debug: Option<bool>,
}

#[derive(Deserialize)]
struct RawV1Annotation {
    timestamp: Option<i64>,
    value: Option<String>,
    endpoint: Option<RawEndpoint>,
}

#[derive(Deserialize)]
struct RawBinaryAnnotation {
    key: Option<String>,
    value: Option<BinaryValue>,
    endpoint: Option<RawEndpoint>,
}

enum BinaryValue {
    Str(String),
    Bool(bool),
    /// Arrays and objects: Zipkin skips them.
    Skip,
}

impl<'de> Deserialize<'de> for BinaryValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = BinaryValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<BinaryValue, E> {
                Ok(BinaryValue::Str(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<BinaryValue, E> {
                Ok(BinaryValue::Str(v))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<BinaryValue, E> {
                Ok(BinaryValue::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<BinaryValue, E> {
                Ok(BinaryValue::Str(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<BinaryValue, E> {
                Ok(BinaryValue::Str(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<BinaryValue, E> {
                Ok(BinaryValue::Str(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<BinaryValue, E> {
                Ok(BinaryValue::Skip)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<BinaryValue, A::Error> {
                while s.next_element::<IgnoredAny>()?.is_some() {}
                Ok(BinaryValue::Skip)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<BinaryValue, A::Error> {
                while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(BinaryValue::Skip)
            }
        }
        d.deserialize_any(V)
    }
}

/// Decodes a Zipkin v1 JSON list of spans into v2-shaped spans.
pub fn decode_json_v1(bytes: &[u8]) -> Result<Vec<Span>, DecodeError> {
    let text = DecodeError::check_utf8(bytes)?;
    let raw: Vec<RawV1Span> = parse_array(text)?;
    let mut c = Collector::new(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        match V1::from_raw(r) {
            Ok(v1) => {
                for b in Converter::new(&v1).convert() {
                    match b.build() {
                        Ok((span, tags)) => c.good(i, span, tags),
                        Err(fp) => c.bad(i, fp),
                    }
                }
            }
            Err(fp) => c.bad(i, fp),
        }
    }
    c.finish()
}

/// A core or plain annotation; timestamps in microseconds.
#[derive(Clone)]
struct Ann {
    ts: i64,
    value: String,
    endpoint: Option<Endpoint>,
}

struct Bin {
    key: String,
    /// `None` for an address annotation (ca/sa/ma).
    value: Option<String>,
    endpoint: Option<Endpoint>,
}

/// A v1 span after parsing, as Zipkin's `V1Span` holds it.
struct V1 {
    trace_id: TraceId,
    trace_id_64: bool,
    id: SpanId,
    parent: Option<SpanId>,
    name: String,
    /// 0 means absent.
    timestamp: i64,
    duration: i64,
    annotations: Vec<Ann>,
    bins: Vec<Bin>,
    debug: bool,
}

fn endpoint(e: Option<RawEndpoint>, field: &str) -> Result<Option<Endpoint>, FieldProblem> {
    super::json_common::endpoint_opt(e.as_ref(), field)
}

impl V1 {
    fn from_raw(r: RawV1Span<'_>) -> Result<V1, FieldProblem> {
        let trace = r
            .trace_id
            .ok_or((Some("traceId".into()), Problem::Missing))?;
        let (trace_id, trace_id_64) = trace_id_hex(&trace.0).map_err(at("traceId"))?;
        let id = r.id.ok_or((Some("id".into()), Problem::Missing))?;
        let id = span_id_hex("span id", &id.0).map_err(at("id"))?;
        let parent = match r.parent_id {
            Some(p) => parent_id_hex(&p.0).map_err(at("parentId"))?,
            None => None,
        };
        let mut annotations = Vec::new();
        for (i, a) in r.annotations.unwrap_or_default().into_iter().enumerate() {
            let (Some(ts), Some(value)) = (a.timestamp, a.value) else {
                return Err((
                    Some(format!("annotations[{i}]")),
                    Problem::Other("an annotation needs both timestamp and value".into()),
                ));
            };
            let endpoint = endpoint(a.endpoint, &format!("annotations[{i}].endpoint"))?;
            annotations.push(Ann {
                ts,
                value,
                endpoint,
            });
        }
        // Zipkin sorts annotations by (timestamp, value), binary ones by key.
        annotations.sort_by(|a, b| a.ts.cmp(&b.ts).then_with(|| a.value.cmp(&b.value)));
        let mut bins = Vec::new();
        for (i, b) in r
            .binary_annotations
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            let key = b.key.ok_or((
                Some(format!("binaryAnnotations[{i}].key")),
                Problem::Missing,
            ))?;
            let endpoint = endpoint(b.endpoint, &format!("binaryAnnotations[{i}].endpoint"))?;
            match b.value {
                Some(BinaryValue::Str(v)) => bins.push(Bin {
                    key,
                    value: Some(v),
                    endpoint,
                }),
                // Address annotations: Zipkin keeps `true` ones that have an
                // endpoint and drops the rest.
                Some(BinaryValue::Bool(v)) if matches!(key.as_str(), "ca" | "sa" | "ma") => {
                    if v && endpoint.is_some() {
                        bins.push(Bin {
                            key,
                            value: None,
                            endpoint,
                        })
                    }
                }
                Some(BinaryValue::Bool(v)) => bins.push(Bin {
                    key,
                    value: Some(v.to_string()),
                    endpoint,
                }),
                Some(BinaryValue::Skip) | None => {}
            }
        }
        bins.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(V1 {
            trace_id,
            trace_id_64,
            id,
            parent,
            name: r.name.unwrap_or_default(),
            timestamp: r.timestamp.unwrap_or(0),
            duration: r.duration.unwrap_or(0),
            annotations,
            bins,
            debug: r.debug.unwrap_or(false),
        })
    }
}

/// A v2 span under construction (Zipkin's `Span.Builder`), times in µs.
struct Builder<'a> {
    src: &'a V1,
    kind: SpanKind,
    local: Endpoint,
    remote: Endpoint,
    /// 0 means unset.
    ts: i64,
    dur: Option<i64>,
    shared: bool,
    annotations: Vec<(i64, String)>,
    tags: Vec<(String, String)>,
}

impl<'a> Builder<'a> {
    fn new(src: &'a V1) -> Self {
        Builder {
            src,
            kind: SpanKind::Unspecified,
            local: Endpoint::default(),
            remote: Endpoint::default(),
            ts: 0,
            dur: None,
            shared: false,
            annotations: Vec::new(),
            tags: Vec::new(),
        }
    }

    fn build(self) -> Result<(Span, usize), FieldProblem> {
        let mut events = Vec::with_capacity(self.annotations.len());
        for (i, (ts, value)) in self.annotations.into_iter().enumerate() {
            let t = micros_to_nanos(ts)
                .map_err(|p| (Some(format!("annotations[{i}].timestamp")), p))?;
            events.push(Event {
                time: UnixNanos(t),
                name: value,
                attributes_json: None,
            });
        }
        let start = match self.ts {
            0 => None,
            us => Some(UnixNanos(micros_to_nanos(us).map_err(at("timestamp"))?)),
        };
        let duration_nanos = match self.dur {
            None | Some(0) => None,
            Some(us) => Some(micros_to_nanos(us).map_err(at("duration"))?),
        };
        let count = self.tags.len();
        let attributes = self
            .tags
            .into_iter()
            .map(|(k, v)| (k, AttrValue::Str(v)))
            .collect();
        let src = self.src;
        Ok((
            Span {
                trace_id: src.trace_id,
                trace_id_64: src.trace_id_64,
                span_id: src.id,
                parent_span_id: src.parent,
                name: src.name.clone(),
                kind: self.kind,
                start,
                duration_nanos,
                local: self.local,
                remote: self.remote,
                shared: self.shared,
                debug: src.debug,
                attributes,
                events,
                ..Default::default()
            },
            count,
        ))
    }
}

/// A core annotation remembered by the converter.
#[derive(Clone)]
struct Core {
    ts: i64,
    value: &'static str,
    endpoint: Option<Endpoint>,
}

fn same_service(a: &Option<Endpoint>, b: &Option<Endpoint>) -> bool {
    a.as_ref().and_then(|e| e.service_name.as_ref())
        == b.as_ref().and_then(|e| e.service_name.as_ref())
}

struct Converter<'a> {
    src: &'a V1,
    /// `spans[0]` is Zipkin's `first`.
    spans: Vec<Builder<'a>>,
    cs: Option<Core>,
    sr: Option<Core>,
    ss: Option<Core>,
    cr: Option<Core>,
    ms: Option<Core>,
    mr: Option<Core>,
    ws: Option<Core>,
    wr: Option<Core>,
}

impl<'a> Converter<'a> {
    fn new(src: &'a V1) -> Self {
        Converter {
            src,
            spans: vec![Builder::new(src)],
            cs: None,
            sr: None,
            ss: None,
            cr: None,
            ms: None,
            mr: None,
            ws: None,
            wr: None,
        }
    }

    fn convert(mut self) -> Vec<Builder<'a>> {
        self.process_annotations();
        self.process_binary_annotations();
        self.spans
    }

    fn for_endpoint(&mut self, e: &Option<Endpoint>) -> usize {
        let Some(e) = e else { return 0 };
        for (i, b) in self.spans.iter_mut().enumerate() {
            if b.local.is_empty() {
                b.local = e.clone();
                return i;
            }
            if b.local.service_name == e.service_name {
                return i;
            }
        }
        self.new_span(e)
    }

    fn new_span(&mut self, e: &Endpoint) -> usize {
        let mut b = Builder::new(self.src);
        b.local = e.clone();
        self.spans.push(b);
        self.spans.len() - 1
    }

    /// Uses the span's own timestamp/duration when both are set, else the
    /// annotations'.
    fn maybe_timestamp_duration(&mut self, begin: &Core, end: Option<&Core>) {
        let (ts, dur) = (self.src.timestamp, self.src.duration);
        let i = self.for_endpoint(&begin.endpoint);
        let b = &mut self.spans[i];
        if ts != 0 && dur != 0 {
            b.ts = ts;
            b.dur = Some(dur);
        } else {
            b.ts = begin.ts;
            if let Some(end) = end {
                b.dur = Some(end.ts - begin.ts);
            }
        }
    }

    fn end_reflects_duration(&self, end: &Option<Core>) -> bool {
        let (ts, dur) = (self.src.timestamp, self.src.duration);
        matches!(end, Some(e) if ts != 0 && dur != 0 && ts.checked_add(dur) == Some(e.ts))
    }

    fn process_annotations(&mut self) {
        let src = self.src;
        for a in &src.annotations {
            let i = self.for_endpoint(&a.endpoint);
            let core = |value: &'static str| Core {
                ts: a.ts,
                value,
                endpoint: a.endpoint.clone(),
            };
            // Core annotations need an endpoint; without one they are plain.
            if a.value.len() == 2 && a.endpoint.is_some() {
                let b = &mut self.spans[i];
                match a.value.as_str() {
                    "cs" => (b.kind, self.cs) = (SpanKind::Client, Some(core("cs"))),
                    "sr" => (b.kind, self.sr) = (SpanKind::Server, Some(core("sr"))),
                    "ss" => (b.kind, self.ss) = (SpanKind::Server, Some(core("ss"))),
                    "cr" => (b.kind, self.cr) = (SpanKind::Client, Some(core("cr"))),
                    "ms" => (b.kind, self.ms) = (SpanKind::Producer, Some(core("ms"))),
                    "mr" => (b.kind, self.mr) = (SpanKind::Consumer, Some(core("mr"))),
                    "ws" => self.ws = Some(core("ws")),
                    "wr" => self.wr = Some(core("wr")),
                    _ => b.annotations.push((a.ts, a.value.clone())),
                }
            } else {
                self.spans[i].annotations.push((a.ts, a.value.clone()));
            }
        }

        // Bridged event models can lose the start annotation.
        if self.cs.is_none() && self.end_reflects_duration(&self.cr) {
            let endpoint = self.cr.as_ref().and_then(|c| c.endpoint.clone());
            self.cs = Some(Core {
                ts: src.timestamp,
                value: "cs",
                endpoint,
            });
        }
        if self.sr.is_none() && self.end_reflects_duration(&self.ss) {
            let endpoint = self.ss.as_ref().and_then(|c| c.endpoint.clone());
            self.sr = Some(Core {
                ts: src.timestamp,
                value: "sr",
                endpoint,
            });
        }

        let (cs, sr, ss, cr) = (
            self.cs.clone(),
            self.sr.clone(),
            self.ss.clone(),
            self.cr.clone(),
        );
        match (&cs, &sr) {
            (Some(cs), Some(sr)) => {
                // In a shared span the client owns the span's timestamp/duration.
                self.maybe_timestamp_duration(cs, cr.as_ref());
                let client = self.for_endpoint(&cs.endpoint);
                let server = if same_service(&cs.endpoint, &sr.endpoint) {
                    // Loopback: make sure there are two spans.
                    self.spans[client].kind = SpanKind::Client;
                    let s = self.new_span(sr.endpoint.as_ref().unwrap_or(&Endpoint::default()));
                    self.spans[s].kind = SpanKind::Server;
                    s
                } else {
                    self.for_endpoint(&sr.endpoint)
                };
                let s = &mut self.spans[server];
                s.shared = true;
                s.ts = sr.ts;
                if let Some(ss) = &ss {
                    s.dur = Some(ss.ts - sr.ts);
                }
                if cr.is_none() && src.duration == 0 {
                    self.spans[client].dur = None; // one-way: no duration
                }
            }
            _ => {
                if let (Some(cs), Some(cr)) = (&cs, &cr) {
                    self.maybe_timestamp_duration(cs, Some(cr));
                } else if let (Some(sr), Some(ss)) = (&sr, &ss) {
                    self.maybe_timestamp_duration(sr, Some(ss));
                } else {
                    self.handle_incomplete_rpc();
                }
            }
        }

        // v1 had no shared flag: a server side without the span's own
        // timestamp (or duration) implied it.
        if let (None, Some(sr)) = (&cs, &sr)
            && (src.timestamp == 0 || (ss.is_some() && src.duration == 0))
        {
            let i = self.for_endpoint(&sr.endpoint);
            self.spans[i].shared = true;
        }

        let (ms, mr, ws, wr) = (
            self.ms.clone(),
            self.mr.clone(),
            self.ws.clone(),
            self.wr.clone(),
        );
        match (&ms, &mr) {
            (Some(ms), Some(mr)) => {
                let producer = self.for_endpoint(&ms.endpoint);
                let consumer = if same_service(&ms.endpoint, &mr.endpoint) {
                    self.spans[producer].kind = SpanKind::Producer;
                    let c = self.new_span(mr.endpoint.as_ref().unwrap_or(&Endpoint::default()));
                    self.spans[c].kind = SpanKind::Consumer;
                    c
                } else {
                    self.for_endpoint(&mr.endpoint)
                };
                let c = &mut self.spans[consumer];
                c.shared = true;
                match &wr {
                    Some(wr) => (c.ts, c.dur) = (wr.ts, Some(mr.ts - wr.ts)),
                    None => c.ts = mr.ts,
                }
                let p = &mut self.spans[producer];
                p.ts = ms.ts;
                p.dur = ws.as_ref().map(|ws| ws.ts - ms.ts);
            }
            (Some(ms), None) => self.maybe_timestamp_duration(ms, ws.as_ref()),
            (None, Some(mr)) => match &wr {
                Some(wr) => self.maybe_timestamp_duration(wr, Some(mr)),
                None => self.maybe_timestamp_duration(mr, None),
            },
            (None, None) => {
                for w in [ws, wr].into_iter().flatten() {
                    let i = self.for_endpoint(&w.endpoint);
                    self.spans[i].annotations.push((w.ts, w.value.to_string()));
                }
            }
        }
    }

    fn handle_incomplete_rpc(&mut self) {
        for b in &mut self.spans {
            let (start, end) = match b.kind {
                SpanKind::Client => (&self.cs, &self.cr),
                SpanKind::Server => (&self.sr, &self.ss),
                _ => continue,
            };
            if let Some(s) = start {
                b.ts = s.ts;
            }
            if let Some(e) = end {
                b.annotations.push((e.ts, e.value.to_string()));
            }
        }
        if self.src.timestamp != 0 {
            self.spans[0].ts = self.src.timestamp;
            self.spans[0].dur = Some(self.src.duration);
        }
    }

    fn process_binary_annotations(&mut self) {
        let (mut ca, mut sa, mut ma) = (None, None, None);
        let src = self.src;
        for b in &src.bins {
            let Some(value) = &b.value else {
                match b.key.as_str() {
                    "ca" => ca = b.endpoint.clone(),
                    "sa" => sa = b.endpoint.clone(),
                    _ => ma = b.endpoint.clone(),
                }
                continue;
            };
            let i = self.for_endpoint(&b.endpoint);
            // "lc" with an empty value only marks the local endpoint.
            if b.key == "lc" && value.is_empty() {
                continue;
            }
            let tags = &mut self.spans[i].tags;
            match tags.iter_mut().find(|(k, _)| *k == b.key) {
                Some(t) => t.1 = value.clone(),
                None => tags.push((b.key.clone(), value.clone())),
            }
        }

        let no_core =
            self.cs.is_none() && self.cr.is_none() && self.ss.is_none() && self.sr.is_none();
        if no_core && (ca.is_some() || sa.is_some()) {
            match (ca, sa) {
                (Some(ca), Some(sa)) => {
                    let i = self.for_endpoint(&Some(ca));
                    self.spans[i].remote = sa;
                }
                // "sa" alone is just a remote address: not a client span.
                (None, Some(sa)) => self.spans[0].remote = sa,
                (Some(ca), None) => {
                    self.spans[0].kind = SpanKind::Server;
                    self.spans[0].remote = ca;
                }
                (None, None) => {}
            }
            return;
        }

        let server = self.sr.clone().or_else(|| self.ss.clone());
        if let (Some(mut ca), Some(server)) = (ca, server)
            && Some(&ca) != server.endpoint.as_ref()
        {
            // Finagle's "ca" on server spans repeats the server's own service
            // name; drop it so it does not become a loopback link.
            if same_service(&Some(ca.clone()), &server.endpoint) {
                ca.service_name = None;
            }
            let i = self.for_endpoint(&server.endpoint);
            self.spans[i].remote = ca;
        }
        if let Some(sa) = sa {
            let client = self.cs.clone().or_else(|| self.cr.clone());
            if let Some(c) = client {
                let i = self.for_endpoint(&c.endpoint);
                self.spans[i].remote = sa;
            }
        }
        if let Some(ma) = ma {
            for m in [self.ms.clone(), self.mr.clone()].into_iter().flatten() {
                let i = self.for_endpoint(&m.endpoint);
                self.spans[i].remote = ma.clone();
            }
        }
    }
}
