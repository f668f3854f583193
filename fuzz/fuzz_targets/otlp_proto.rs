#![no_main]

//! The in-place OTLP trace decoder against prost + conversion: the same
//! spans and rejections, or both refuse.

use libfuzzer_sys::fuzz_target;
use meshlens_storage::model::UnixNanos;

fuzz_target!(|data: &[u8]| {
    let now = UnixNanos(1_764_000_000_000_000_000);
    if let Err(e) = meshlens_ingest::otlp::wire::compare_with_prost(data, now) {
        panic!("{e}");
    }
});
