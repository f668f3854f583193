#![no_main]

use libfuzzer_sys::fuzz_target;

// The whole remote-write path before storage: snappy (with the size limit
// checked before allocating), then protobuf decode + validation.
fuzz_target!(|data: &[u8]| {
    if let Ok(raw) = meshlens_ingest::remote_write::decompress_snappy(data, 1 << 20) {
        let _ = meshlens_ingest::remote_write::decode_partial(&raw);
    }
    let _ = meshlens_ingest::remote_write::decode_partial(data);
});
