#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = meshlens_ingest::otlp::decode_otlp_metrics_json(data);
});
