#![no_main]

use libfuzzer_sys::fuzz_target;
use meshlens_ingest::remote_write::{
    Decoded, decode_partial, decode_partial_prost, decompress_snappy,
};

/// Equality that holds for NaN samples too: the whole value as printed,
/// and every sample value's bits.
fn same(a: &Decoded, b: &Decoded) -> bool {
    let bits = |d: &Decoded| -> Vec<u64> {
        let by_labels = d.batch.series.iter().flat_map(|s| s.samples.iter());
        let by_id = d.batch.known.iter().flat_map(|(_, s)| s.iter());
        by_labels.chain(by_id).map(|s| s.value.to_bits()).collect()
    };
    format!("{a:?}") == format!("{b:?}") && bits(a) == bits(b)
}

/// The in-place decoder must accept exactly what prost accepts and give the
/// same result.
fn differential(body: &[u8]) {
    match (decode_partial(body), decode_partial_prost(body)) {
        (Ok(a), Ok(b)) => assert!(same(&a, &b), "decoders disagree: {a:?} vs {b:?}"),
        (Err(_), Err(_)) => {}
        (a, b) => panic!("decoders disagree: in place {a:?}, prost {b:?}"),
    }
}

// The whole remote-write path before storage: snappy (with the size limit
// checked before allocating), then protobuf decode + validation, checked
// against prost's decoder.
fuzz_target!(|data: &[u8]| {
    if let Ok(raw) = decompress_snappy(data, 1 << 20) {
        differential(&raw);
    }
    differential(data);
});
