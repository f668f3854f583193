//! Names of the scrape manager's own metrics (in [`meshlens_storage::Telemetry`]).
//!
//! `reason` values are stable words: `connection`, `timeout`, `http`,
//! `http_status`, `body_size_limit`, `parse_error`, `invalid_series`,
//! `sample_limit`, `label_limit`, `label_name_length_limit`,
//! `label_value_length_limit`.

use meshlens_storage::Telemetry;

/// Counter `{job, reason}`: failed scrapes.
pub const FAILURES: &str = "meshlens_scrape_failures_total";
/// Gauge `{job, instance, reason}`: 1 while the target's most recent scrape
/// failed for `reason`; set back to 0 when a later scrape succeeds or fails
/// for another reason (series of removed targets stay at their last value).
pub const LAST_ERROR: &str = "meshlens_scrape_last_error";
/// Counter `{job, reason}`: scraped samples storage refused (`AppendReport`).
pub const SAMPLES_REJECTED: &str = "meshlens_scrape_samples_rejected_total";
/// Counter `{job}`: batches storage refused altogether (backpressure, shutdown).
pub const APPEND_FAILURES: &str = "meshlens_scrape_append_failures_total";
/// Counter `{job}`: samples dropped because their series appeared twice in one scrape.
pub const DUPLICATES: &str = "meshlens_scrape_duplicate_samples_total";
/// Counter `{job}`: staleness markers written.
pub const STALE_MARKERS: &str = "meshlens_scrape_stale_markers_total";
/// Histogram `{job}`: scrape durations.
pub const SCRAPE_DURATION: &str = "meshlens_scrape_duration_seconds";
/// Gauge `{job, state}` (`active` / `dropped`): targets per job.
pub const TARGETS: &str = "meshlens_scrape_targets";
/// Counter `{result}` (`success` / `failure`): configuration reloads.
pub const RELOADS: &str = "meshlens_scrape_config_reloads_total";
/// Gauge: 1 when the last configuration reload succeeded.
pub const LAST_RELOAD_OK: &str = "meshlens_scrape_config_last_reload_successful";
/// Counter `{job}`: file_sd files that could not be read or parsed.
pub const SD_FILE_ERRORS: &str = "meshlens_scrape_sd_file_read_errors_total";

pub fn describe(t: &Telemetry) {
    t.describe(FAILURES, "counter", "Failed scrapes, by job and reason.");
    t.describe(
        LAST_ERROR,
        "gauge",
        "1 while a target's most recent scrape failed for this reason, else 0.",
    );
    t.describe(
        SAMPLES_REJECTED,
        "counter",
        "Scraped samples the storage refused, by job and reason.",
    );
    t.describe(
        APPEND_FAILURES,
        "counter",
        "Scrape results the storage refused as a whole (backpressure, shutdown).",
    );
    t.describe(
        DUPLICATES,
        "counter",
        "Samples dropped because their series appeared twice in one scrape.",
    );
    t.describe(
        STALE_MARKERS,
        "counter",
        "Staleness markers written, by job.",
    );
    t.describe(SCRAPE_DURATION, "histogram", "Scrape durations, by job.");
    t.describe(
        TARGETS,
        "gauge",
        "Scrape targets by job and state (active, dropped).",
    );
    t.describe(
        RELOADS,
        "counter",
        "Scrape configuration reloads, by result.",
    );
    t.describe(
        LAST_RELOAD_OK,
        "gauge",
        "1 when the last scrape configuration reload succeeded.",
    );
    t.describe(
        SD_FILE_ERRORS,
        "counter",
        "file_sd files that could not be read or parsed, by job.",
    );
}
