//! `SpansTable`: one DataFusion table over the in-memory buffer and the
//! Parquet files of the manifest.
//!
//! Filters on `start_time_unix_nano`, `trace_id` and `service_name` prune
//! whole files with the manifest before any file is opened; the remaining
//! filters go to the Parquet reader as a predicate (row-group statistics,
//! bloom filters, page index, late materialisation).

use crate::engine::Shared;
use crate::manifest::FileEntry;
use crate::schema::{SERVICE, START, TRACE_ID, spans_schema};
use crate::tindex::TraceFilter;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::physical_plan::parquet::CachedParquetFileReaderFactory;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::Result;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::union::UnionExec;
use std::fmt;
use std::sync::Arc;

pub struct SpansTable {
    shared: Arc<Shared>,
}

impl fmt::Debug for SpansTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SpansTable")
    }
}

impl SpansTable {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        SpansTable { shared }
    }
}

/// What the filters say about which files can hold matching rows.
#[derive(Default, Debug, PartialEq)]
pub(crate) struct Hints {
    /// Inclusive bounds on span start time (ns).
    pub min_start: Option<i64>,
    pub max_start: Option<i64>,
    pub trace_ids: Option<Vec<[u8; 16]>>,
    pub service: Option<String>,
}

fn column_name(e: &Expr) -> Option<&str> {
    match e {
        Expr::Column(c) => Some(c.name.as_str()),
        Expr::Cast(c) => column_name(&c.expr),
        _ => None,
    }
}

fn literal(e: &Expr) -> Option<&ScalarValue> {
    match e {
        Expr::Literal(v, _) => Some(v),
        Expr::Cast(c) => literal(&c.expr),
        _ => None,
    }
}

fn as_i64(v: &ScalarValue) -> Option<i64> {
    match v {
        ScalarValue::Int64(Some(x)) => Some(*x),
        ScalarValue::Int32(Some(x)) => Some(*x as i64),
        ScalarValue::UInt64(Some(x)) => i64::try_from(*x).ok(),
        _ => None,
    }
}

fn as_id(v: &ScalarValue) -> Option<[u8; 16]> {
    match v {
        ScalarValue::FixedSizeBinary(16, Some(b)) | ScalarValue::Binary(Some(b)) => {
            b.as_slice().try_into().ok()
        }
        _ => None,
    }
}

fn as_str(v: &ScalarValue) -> Option<String> {
    match v {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => Some(s.clone()),
        ScalarValue::Dictionary(_, inner) => as_str(inner),
        _ => None,
    }
}

impl Hints {
    pub(crate) fn from_filters(filters: &[Expr]) -> Hints {
        let mut h = Hints::default();
        for f in filters {
            h.add(f);
        }
        h
    }

    fn add(&mut self, e: &Expr) {
        match e {
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                if *op == Operator::And {
                    self.add(left);
                    self.add(right);
                    return;
                }
                let (col, lit, op) = match (
                    column_name(left),
                    literal(right),
                    column_name(right),
                    literal(left),
                ) {
                    (Some(c), Some(v), _, _) => (c, v, *op),
                    (_, _, Some(c), Some(v)) => match op.swap() {
                        Some(op) => (c, v, op),
                        None => return,
                    },
                    _ => return,
                };
                match (col, op) {
                    (START, Operator::GtEq | Operator::Gt) => {
                        if let Some(v) = as_i64(lit) {
                            self.min_start = Some(self.min_start.map_or(v, |m| m.max(v)));
                        }
                    }
                    (START, Operator::LtEq | Operator::Lt) => {
                        if let Some(v) = as_i64(lit) {
                            self.max_start = Some(self.max_start.map_or(v, |m| m.min(v)));
                        }
                    }
                    (TRACE_ID, Operator::Eq) => {
                        if let Some(id) = as_id(lit) {
                            self.trace_ids = Some(vec![id]);
                        }
                    }
                    (SERVICE, Operator::Eq) => self.service = as_str(lit),
                    _ => {}
                }
            }
            Expr::Between(b) if !b.negated => {
                if column_name(&b.expr) == Some(START)
                    && let (Some(lo), Some(hi)) = (
                        literal(&b.low).and_then(as_i64),
                        literal(&b.high).and_then(as_i64),
                    )
                {
                    self.min_start = Some(self.min_start.map_or(lo, |m| m.max(lo)));
                    self.max_start = Some(self.max_start.map_or(hi, |m| m.min(hi)));
                }
            }
            Expr::InList(l) if !l.negated && column_name(&l.expr) == Some(TRACE_ID) => {
                let ids: Option<Vec<[u8; 16]>> =
                    l.list.iter().map(|e| literal(e).and_then(as_id)).collect();
                if let Some(ids) = ids {
                    self.trace_ids = Some(ids);
                }
            }
            _ => {}
        }
    }

    /// Could `f` (with its trace-id filter, if any) hold a row that passes the filters?
    pub(crate) fn may_match(&self, f: &FileEntry, ids: Option<&TraceFilter>) -> bool {
        if let Some(lo) = self.min_start
            && f.max_time < lo
        {
            return false;
        }
        if let Some(hi) = self.max_start
            && f.min_time > hi
        {
            return false;
        }
        if let Some(s) = &self.service
            && !f.services.iter().any(|x| x == s)
        {
            return false;
        }
        if let (Some(wanted), Some(filter)) = (&self.trace_ids, ids)
            && !wanted.iter().any(|id| filter.may_contain(id))
        {
            return false;
        }
        if let Some(ids) = &self.trace_ids {
            let (Ok(lo), Ok(hi)) = (hex::decode(&f.min_trace_id), hex::decode(&f.max_trace_id))
            else {
                return true;
            };
            return ids
                .iter()
                .any(|id| id.as_slice() >= lo.as_slice() && id.as_slice() <= hi.as_slice());
        }
        true
    }
}

#[async_trait]
impl TableProvider for SpansTable {
    fn schema(&self) -> SchemaRef {
        spans_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // Inexact: DataFusion re-applies every filter above the scan, so
        // pruning here only has to be conservative.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let schema = spans_schema();
        let snapshot = self.shared.snapshot();
        let hints = Hints::from_filters(filters);
        let mut inputs: Vec<Arc<dyn ExecutionPlan>> = Vec::new();

        if !snapshot.batches.is_empty() {
            let mem = MemorySourceConfig::try_new(
                std::slice::from_ref(&snapshot.batches),
                schema.clone(),
                projection.cloned(),
            )?;
            inputs.push(DataSourceExec::from_data_source(mem));
        }

        let files: Vec<&FileEntry> = {
            let filters = self.shared.filters.read();
            snapshot
                .files
                .iter()
                .filter(|f| hints.may_match(f, filters.get(&f.path).map(|x| x.as_ref())))
                .collect()
        };
        if !files.is_empty() {
            let mut source = ParquetSource::new(schema.clone())
                .with_enable_page_index(true)
                .with_bloom_filter_on_read(false)
                .with_pushdown_filters(true)
                .with_reorder_filters(true);
            if let Some(pred) = conjunction(filters.to_vec()) {
                let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
                source = source.with_predicate(state.create_physical_expr(pred, &df_schema)?);
            }
            let store = state.runtime_env().object_store(&self.shared.store_url)?;
            let cache = state.runtime_env().cache_manager.get_file_metadata_cache();
            let source = source.with_parquet_file_reader_factory(Arc::new(
                CachedParquetFileReaderFactory::new(store, cache),
            ));
            // Up to two groups so both cores work on large scans.
            let groups_n = files.len().min(state.config().target_partitions()).max(1);
            let mut groups: Vec<Vec<PartitionedFile>> = vec![Vec::new(); groups_n];
            for (i, f) in files.iter().enumerate() {
                groups[i % groups_n].push(PartitionedFile::new(f.path.clone(), f.bytes));
            }
            let config =
                FileScanConfigBuilder::new(self.shared.store_url.clone(), Arc::new(source))
                    .with_file_groups(groups.into_iter().map(FileGroup::new).collect())
                    .with_projection_indices(projection.cloned())?
                    .with_limit(limit)
                    .build();
            inputs.push(DataSourceExec::from_data_source(config));
        }

        match inputs.len() {
            0 => {
                let projected = match projection {
                    Some(p) => Arc::new(schema.project(p)?),
                    None => schema,
                };
                Ok(Arc::new(EmptyExec::new(projected)))
            }
            _ => UnionExec::try_new(inputs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::{col, lit};

    #[test]
    fn hints_from_filters() {
        let id = [7u8; 16];
        let filters = vec![
            col(START)
                .gt_eq(lit(10i64))
                .and(col(START).lt_eq(lit(20i64))),
            col(TRACE_ID).eq(lit(ScalarValue::FixedSizeBinary(16, Some(id.to_vec())))),
            lit("svc").eq(col(SERVICE)),
        ];
        let h = Hints::from_filters(&filters);
        assert_eq!(h.min_start, Some(10));
        assert_eq!(h.max_start, Some(20));
        assert_eq!(h.trace_ids, Some(vec![id]));
        assert_eq!(h.service.as_deref(), Some("svc"));

        let mut f = FileEntry {
            path: "p".into(),
            partition: 0,
            min_time: 0,
            max_time: 9,
            max_end_time: 9,
            rows: 1,
            bytes: 1,
            services: vec!["svc".into()],
            min_trace_id: hex::encode([0u8; 16]),
            max_trace_id: hex::encode([9u8; 16]),
            level: 0,
        };
        assert!(!h.may_match(&f, None), "ends before the window");
        f.max_time = 15;
        assert!(h.may_match(&f, None));
        f.max_trace_id = hex::encode([6u8; 16]);
        assert!(!h.may_match(&f, None), "trace id above the file's range");
        f.max_trace_id = hex::encode([9u8; 16]);
        let other = crate::tindex::TraceFilter::build([[1u8; 16]].iter().map(|i| i.as_slice()))
            .expect("filter");
        assert!(
            !h.may_match(&f, Some(&other)),
            "the file's trace-id filter rules it out"
        );
        let with =
            crate::tindex::TraceFilter::build([id].iter().map(|i| i.as_slice())).expect("filter");
        assert!(h.may_match(&f, Some(&with)));
    }
}
