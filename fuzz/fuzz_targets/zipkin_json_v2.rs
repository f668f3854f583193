#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = meshlens_ingest::zipkin::decode_json_v2(data);
});
