//! Trace lookups and searches over the `spans` table, shared by every trace
//! API (Zipkin now, Tempo later).

use crate::error::QueryError;
use datafusion::functions_aggregate::expr_fn::max;
use datafusion::prelude::{Expr, col, lit};
use meshlens_storage::Storage;
use meshlens_storage::model::{Span, TraceId, UnixNanos};
use meshlens_storage::schema::{SERVICE, START, TRACE_ID, batch_to_spans};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// One condition of Zipkin's `annotationQuery`: `key=value` on tags, or a
/// bare word that matches a tag key or an annotation value.
#[derive(Debug, Clone, PartialEq)]
pub enum AnnotationTerm {
    Exists(String),
    Equals(String, String),
}

/// Parses `error and http.method=GET` (terms joined by " and ").
pub fn parse_annotation_query(q: &str) -> Vec<AnnotationTerm> {
    q.split(" and ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| match t.split_once('=') {
            Some((k, v)) => AnnotationTerm::Equals(k.trim().to_string(), v.trim().to_string()),
            None => AnnotationTerm::Exists(t.to_string()),
        })
        .collect()
}

/// A trace search, in the model's units.
#[derive(Debug, Clone, Default)]
pub struct TraceQuery {
    pub service: Option<String>,
    pub remote_service: Option<String>,
    pub span_name: Option<String>,
    pub annotations: Vec<AnnotationTerm>,
    pub min_duration_nanos: Option<i64>,
    pub max_duration_nanos: Option<i64>,
    /// Window on span start time, inclusive.
    pub start: UnixNanos,
    pub end: UnixNanos,
    pub limit: usize,
}

pub struct TraceStore {
    storage: Arc<Storage>,
}

impl TraceStore {
    pub fn new(storage: Arc<Storage>) -> Self {
        TraceStore { storage }
    }

    async fn collect(
        &self,
        filter: Expr,
        columns: Option<&[&str]>,
    ) -> Result<Vec<arrow::record_batch::RecordBatch>, QueryError> {
        let started = std::time::Instant::now();
        let mut df = self
            .storage
            .session()
            .table("spans")
            .await?
            .filter(filter)?;
        if let Some(cols) = columns {
            df = df.select_columns(cols)?;
        }
        let out = df.collect().await?;
        self.storage.telemetry().observe(
            "meshlens_storage_scan_seconds",
            &[],
            started.elapsed().as_secs_f64(),
        );
        Ok(out)
    }

    async fn spans(&self, filter: Expr) -> Result<Vec<Span>, QueryError> {
        let mut out = Vec::new();
        for b in self.collect(filter, None).await? {
            out.extend(batch_to_spans(&b)?);
        }
        Ok(out)
    }

    /// The spans of each trace found, in the order asked; unknown ids are left out.
    pub async fn traces(&self, ids: &[TraceId]) -> Result<Vec<Vec<Span>>, QueryError> {
        if ids.is_empty() {
            return Ok(vec![]);
        }
        let wanted: Vec<[u8; 16]> = ids.iter().map(|id| id.0).collect();
        let mut by_id: HashMap<TraceId, Vec<Span>> = HashMap::new();
        for b in self.storage.find_traces(&wanted).await? {
            for s in batch_to_spans(&b)? {
                by_id.entry(s.trace_id).or_default().push(s);
            }
        }
        let mut out = Vec::new();
        for id in ids {
            if let Some(mut spans) = by_id.remove(id) {
                spans.sort_by_key(|s| (s.start.map_or(i64::MIN, |t| t.0), s.shared));
                out.push(spans);
            }
        }
        Ok(out)
    }

    /// Trace ids matching a search, most recent first.
    ///
    /// A trace ranks by its newest matching span. The window is searched
    /// from its end backwards: first from the start of the newest file, then
    /// of the 4th, 16th, 64th... newest, then from the window's start (so a
    /// search that finds too few reads at most about twice what one pass
    /// over the window reads). Once a
    /// narrowed window `[from, end]` holds `limit` traces, they are the
    /// answer: every other trace's newest matching span starts before
    /// `from`, so it ranks below all of them.
    pub async fn search(&self, q: &TraceQuery) -> Result<Vec<Vec<Span>>, QueryError> {
        let mut starts: Vec<i64> = self
            .storage
            .snapshot()
            .files
            .iter()
            .filter(|f| f.max_time >= q.start.0 && f.min_time <= q.end.0)
            .map(|f| f.min_time)
            .filter(|&t| t > q.start.0)
            .collect();
        starts.sort_unstable_by(|a, b| b.cmp(a));
        starts.dedup();
        let mut cutoffs: Vec<i64> = (0..)
            .map(|k: u32| 4usize.pow(k) - 1)
            .take_while(|&i| i < starts.len())
            .map(|i| starts[i])
            .collect();
        cutoffs.push(q.start.0);
        let mut newest = HashMap::new();
        for from in cutoffs {
            newest = self.newest_since(q, from).await?;
            if newest.len() >= q.limit {
                break;
            }
        }
        let mut ids: Vec<(TraceId, i64)> = newest.into_iter().collect();
        ids.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        ids.truncate(q.limit);
        let ids: Vec<TraceId> = ids.into_iter().map(|(id, _)| id).collect();
        self.traces(&ids).await
    }

    /// The traces with a span matching `q` that starts in `[from, q.end]`
    /// (at most `q.limit` of them, the newest, when there are no annotation
    /// terms), each with its newest matching span's start.
    async fn newest_since(
        &self,
        q: &TraceQuery,
        from: i64,
    ) -> Result<HashMap<TraceId, i64>, QueryError> {
        let mut f = col(START)
            .gt_eq(lit(from))
            .and(col(START).lt_eq(lit(q.end.0)));
        if let Some(s) = &q.service {
            f = f.and(col(SERVICE).eq(lit(s.as_str())));
        }
        if let Some(s) = &q.remote_service {
            f = f.and(col("remote_service_name").eq(lit(s.as_str())));
        }
        if let Some(s) = &q.span_name {
            f = f.and(col("name").eq(lit(s.as_str())));
        }
        if let Some(d) = q.min_duration_nanos {
            f = f.and(col("duration_nano").gt_eq(lit(d)));
        }
        if let Some(d) = q.max_duration_nanos {
            f = f.and(col("duration_nano").lt_eq(lit(d)));
        }
        // trace id -> newest matching span start
        let mut newest: HashMap<TraceId, i64> = HashMap::new();
        if q.annotations.is_empty() {
            // Let DataFusion keep only the newest `limit` traces.
            let started = std::time::Instant::now();
            let df = self
                .storage
                .session()
                .table("spans")
                .await?
                .filter(f)?
                .aggregate(vec![col(TRACE_ID)], vec![max(col(START)).alias("newest")])?
                .sort(vec![
                    col("newest").sort(false, true),
                    col(TRACE_ID).sort(true, true),
                ])?
                .limit(0, Some(q.limit))?;
            for b in df.collect().await? {
                let ids = b
                    .column(0)
                    .as_any()
                    .downcast_ref::<arrow::array::FixedSizeBinaryArray>();
                let starts = b
                    .column(1)
                    .as_any()
                    .downcast_ref::<arrow::array::Int64Array>();
                let (Some(ids), Some(starts)) = (ids, starts) else {
                    continue;
                };
                for i in 0..b.num_rows() {
                    newest.insert(
                        TraceId(ids.value(i).try_into().unwrap_or_default()),
                        starts.value(i),
                    );
                }
            }
            self.storage.telemetry().observe(
                "meshlens_storage_scan_seconds",
                &[],
                started.elapsed().as_secs_f64(),
            );
        } else {
            for s in self.spans(f).await? {
                if q.annotations.iter().all(|t| term_matches(&s, t)) {
                    let t = s.start.map_or(0, |t| t.0);
                    let e = newest.entry(s.trace_id).or_insert(t);
                    *e = (*e).max(t);
                }
            }
        }
        Ok(newest)
    }

    /// Every local service name.
    pub fn services(&self) -> Vec<String> {
        let snap = self.storage.snapshot();
        let mut set: BTreeSet<String> = snap
            .files
            .iter()
            .flat_map(|f| f.services.iter().cloned())
            .collect();
        for b in &snap.batches {
            if let Some(c) = b.column_by_name(SERVICE)
                && let Ok(s) = arrow::compute::cast(c, &arrow::datatypes::DataType::Utf8)
            {
                let s = arrow::array::AsArray::as_string::<i32>(&s);
                for v in s.iter().flatten() {
                    if !set.contains(v) {
                        set.insert(v.to_string());
                    }
                }
            }
        }
        set.into_iter().filter(|s| !s.is_empty()).collect()
    }

    /// Distinct values of one string column, optionally for one service.
    pub async fn distinct(
        &self,
        column: &str,
        service: Option<&str>,
    ) -> Result<Vec<String>, QueryError> {
        let mut filter = col(column).is_not_null();
        if let Some(s) = service {
            filter = filter.and(col(SERVICE).eq(lit(s)));
        }
        let mut df = self
            .storage
            .session()
            .table("spans")
            .await?
            .filter(filter)?;
        df = df.select_columns(&[column])?.distinct()?;
        let mut out = BTreeSet::new();
        for b in df.collect().await? {
            let s = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Utf8)?;
            for v in arrow::array::AsArray::as_string::<i32>(&s).iter().flatten() {
                if !v.is_empty() {
                    out.insert(v.to_string());
                }
            }
        }
        Ok(out.into_iter().collect())
    }

    /// Every span starting in a window (dependency linking).
    pub async fn spans_in_window(
        &self,
        start: UnixNanos,
        end: UnixNanos,
    ) -> Result<Vec<Span>, QueryError> {
        self.spans(
            col(START)
                .gt_eq(lit(start.0))
                .and(col(START).lt_eq(lit(end.0))),
        )
        .await
    }
}

fn term_matches(s: &Span, t: &AnnotationTerm) -> bool {
    match t {
        AnnotationTerm::Exists(k) => {
            s.attributes.contains_key(k) || s.events.iter().any(|e| &e.name == k)
        }
        AnnotationTerm::Equals(k, v) => {
            s.attributes.get(k).is_some_and(|x| &x.to_tag_string() == v)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotation_query_terms() {
        assert_eq!(
            parse_annotation_query("error and http.method=GET"),
            vec![
                AnnotationTerm::Exists("error".into()),
                AnnotationTerm::Equals("http.method".into(), "GET".into())
            ]
        );
        assert!(parse_annotation_query("").is_empty());
    }

    /// The newest-first search (narrowed windows, widened until `limit`
    /// traces are found) answers what a scan of the whole window answers:
    /// spans spread over four files of successive minutes and the buffer,
    /// traces with spans in several of them, every limit from 1 to more than
    /// there are traces.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn search_from_the_newest_files_equals_a_whole_window_scan() {
        use meshlens_storage::model::{Endpoint, SpanId};
        use meshlens_storage::{StorageConfig, Telemetry};
        let d = std::env::temp_dir().join(format!("meshlens-search-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let mut cfg = StorageConfig::new(&d);
        cfg.maintenance_interval = std::time::Duration::from_secs(3600);
        cfg.flush_age = std::time::Duration::from_secs(3600);
        let storage = Storage::open(cfg, Telemetry::new()).await.expect("open");
        let minute = 60_000_000_000i64;
        let base = UnixNanos::now().0 - 30 * minute;
        let mut all: Vec<Span> = Vec::new();
        let mut n = 0u64;
        for round in 0..5i64 {
            let mut spans = Vec::new();
            for i in 0..60u64 {
                n += 1;
                // Trace ids repeat across rounds: a trace has spans in
                // several files, some of them old and slow.
                let trace = 1 + (i * 7 + round as u64 * 3) % 90;
                spans.push(Span {
                    trace_id: TraceId::from_u64s(0, trace),
                    trace_id_64: true,
                    span_id: SpanId(n.to_be_bytes()),
                    name: "op".into(),
                    start: Some(UnixNanos(base + round * minute + (i as i64 * 997) % minute)),
                    duration_nanos: Some(((i * 31 + round as u64 * 17) % 100) as i64 * 1_000_000),
                    local: Endpoint {
                        service_name: Some(if i % 3 == 0 { "a" } else { "b" }.into()),
                        ..Default::default()
                    },
                    ..Default::default()
                });
            }
            all.extend(spans.clone());
            storage.append_spans(spans).await.expect("append");
            if round < 4 {
                storage.flush().await.expect("flush");
            }
        }
        assert_eq!(storage.snapshot().files.len(), 4);
        let store = TraceStore::new(storage.clone());
        for (service, min_ms) in [(None, 0), (Some("a"), 0), (Some("b"), 60), (Some("a"), 95)] {
            // By hand: each trace's newest matching span, newest first.
            let mut newest: HashMap<TraceId, i64> = HashMap::new();
            for s in &all {
                let ok = service.is_none_or(|x| s.local.service_name.as_deref() == Some(x))
                    && s.duration_nanos.unwrap_or(0) >= min_ms * 1_000_000;
                if ok {
                    let t = s.start.map_or(0, |t| t.0);
                    let e = newest.entry(s.trace_id).or_insert(t);
                    *e = (*e).max(t);
                }
            }
            let mut ranked: Vec<(TraceId, i64)> = newest.into_iter().collect();
            ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            for limit in [1, 2, 5, 10, 30, 200] {
                let q = TraceQuery {
                    service: service.map(str::to_string),
                    min_duration_nanos: Some(min_ms * 1_000_000),
                    start: UnixNanos(base - minute),
                    end: UnixNanos(base + 10 * minute),
                    limit,
                    ..Default::default()
                };
                let got: Vec<TraceId> = store
                    .search(&q)
                    .await
                    .expect("search")
                    .iter()
                    .map(|t| t[0].trace_id)
                    .collect();
                let want: Vec<TraceId> = ranked.iter().take(limit).map(|r| r.0).collect();
                let mut got_sorted = got.clone();
                got_sorted.sort();
                let mut want_sorted = want.clone();
                want_sorted.sort();
                assert_eq!(
                    got_sorted, want_sorted,
                    "{service:?} >= {min_ms} ms, limit {limit}"
                );
            }
        }
        storage.shutdown().await.expect("shutdown");
        let _ = std::fs::remove_dir_all(&d);
    }
}
