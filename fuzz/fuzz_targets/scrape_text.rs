#![no_main]

use libfuzzer_sys::fuzz_target;

// The Prometheus text exposition parser the scraper uses.
fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = meshlens_ingest::scrape::parse::parse_exposition(text);
    }
});
