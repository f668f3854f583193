//! The sample store: series catalog + inverted index, WAL, in-memory
//! head, Parquet files sorted by (series id, time). See storage/README.md.

mod catalog;
pub mod exemplars;
pub mod model;
pub mod rollup;
mod sfiles;
mod store;
mod walrec;

pub use exemplars::{Exemplar, ExemplarStore, SeriesExemplars};
pub use model::*;
pub use rollup::Summary;
pub use sfiles::SampleFile;
pub(crate) use store::OpenArgs;
pub use store::{SampleConfig, SampleStats, SampleStore};
