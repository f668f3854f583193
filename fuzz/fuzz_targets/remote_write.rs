#![no_main]

use libfuzzer_sys::fuzz_target;
use meshlens_ingest::remote_write::{decode_partial, decode_partial_prost, decompress_snappy};

/// The in-place decoder must accept exactly what prost accepts and give the
/// same result.
fn differential(body: &[u8]) {
    match (decode_partial(body), decode_partial_prost(body)) {
        (Ok(a), Ok(b)) => assert!(a.same_as(&b), "decoders disagree: {a:?} vs {b:?}"),
        (Err(_), Err(_)) => {}
        (a, b) => panic!("decoders disagree: in place {a:?}, prost {b:?}"),
    }
}

// The whole remote-write path before storage: snappy (with the size limit
// checked before allocating), then protobuf decode + validation, checked
// against prost's decoder (NaN samples compared by their bits).
fuzz_target!(|data: &[u8]| {
    if let Ok(raw) = decompress_snappy(data, 1 << 20) {
        differential(&raw);
    }
    differential(data);
});
