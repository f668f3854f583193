//! Trace lookups and searches over the `spans` table, shared by every trace
//! API (Zipkin now, Tempo later).

use crate::error::QueryError;
use datafusion::common::ScalarValue;
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

fn id_lit(id: &TraceId) -> Expr {
    lit(ScalarValue::FixedSizeBinary(16, Some(id.0.to_vec())))
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
        let filter = if ids.len() == 1 {
            col(TRACE_ID).eq(id_lit(&ids[0]))
        } else {
            col(TRACE_ID).in_list(ids.iter().map(id_lit).collect(), false)
        };
        let mut by_id: HashMap<TraceId, Vec<Span>> = HashMap::new();
        for s in self.spans(filter).await? {
            by_id.entry(s.trace_id).or_default().push(s);
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
    pub async fn search(&self, q: &TraceQuery) -> Result<Vec<Vec<Span>>, QueryError> {
        let mut f = col(START)
            .gt_eq(lit(q.start.0))
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
        let mut ids: Vec<(TraceId, i64)> = newest.into_iter().collect();
        ids.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        ids.truncate(q.limit);
        let ids: Vec<TraceId> = ids.into_iter().map(|(id, _)| id).collect();
        self.traces(&ids).await
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
}
