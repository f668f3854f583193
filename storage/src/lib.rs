//! meshlens-storage: the span store and the metric sample store.
//!
//! Surface shared by `ingest` and `query`: [`Storage::open`],
//! [`Storage::append_spans`], [`Storage::session`] (a DataFusion session with
//! the `spans` table over buffer + Parquet files), [`Storage::samples`] (the
//! sample store: append, select, series/labels/metadata), [`Storage::shutdown`].
//! See README.md in this folder for the write and read paths.

// Tests may unwrap.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod error;
pub mod model;
pub mod samples;
pub mod schema;
pub mod span_builder;
pub mod span_view;
pub mod telemetry;

mod delta;
mod dictchunk;
mod engine;
mod files;
mod lookup;
mod lru;
mod manifest;
pub mod scatter;
mod table;
mod tindex;
mod wal;
mod walbatch;

pub use engine::{Snapshot, Storage, StorageConfig};
pub use error::{Result, StorageError};
pub use manifest::FileEntry;
pub use samples::{SampleConfig, SampleStore};
pub use telemetry::Telemetry;
