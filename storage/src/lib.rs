//! meshlens-storage: the span (and later sample) store.
//!
//! Surface shared by `ingest` and `query`: [`Storage::open`],
//! [`Storage::append_spans`], [`Storage::session`] (a DataFusion session with
//! the `spans` table over buffer + Parquet files), [`Storage::shutdown`].
//! See README.md in this folder for the write and read paths.

pub mod error;
pub mod model;
pub mod samples;
pub mod schema;
pub mod telemetry;

mod engine;
mod files;
mod manifest;
mod table;
mod tindex;
mod wal;

pub use engine::{Snapshot, Storage, StorageConfig};
pub use error::{Result, StorageError};
pub use manifest::FileEntry;
pub use samples::{SampleConfig, SampleStore};
pub use telemetry::Telemetry;
