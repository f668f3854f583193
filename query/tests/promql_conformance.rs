//! Runs Prometheus's PromQL test suite (`../shared/conformance/promql/*.test`,
//! see `../shared/conformance/README.md`) against our engine and compares the
//! pass counts with `tests/promql_conformance_baseline.txt`.
//!
//! - Skips (passes) with a loud message when the folder is absent, so a plain
//!   clone of the project still passes `cargo test`. `MESHLENS_CONFORMANCE_DIR`
//!   points it elsewhere.
//! - Fails when a file's (or the total) pass count drops below the baseline,
//!   or when the runner cannot parse part of a script.
//! - `MESHLENS_UPDATE_BASELINE=1` rewrites the baseline with the current counts.
//! - `MESHLENS_CONFORMANCE_REPORT=path` also writes a markdown report there.
//! - `MESHLENS_CONFORMANCE_VERBOSE=1` also lists every skipped eval.
//!
//! Run with `cargo test -p meshlens-query --test promql_conformance -- --nocapture`
//! to see the report.

use meshlens_query::promql::promqltest::{
    FileReport, format_report, markdown_report, run_dir, totals,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const BASELINE: &str = "tests/promql_conformance_baseline.txt";

fn conformance_dir() -> PathBuf {
    match std::env::var_os("MESHLENS_CONFORMANCE_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance/promql"),
    }
}

/// `file.test <passed>` lines and `total <passed>`; `#` comments.
fn read_baseline(path: &Path) -> BTreeMap<String, usize> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return BTreeMap::new();
    };
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let name = it.next()?;
            let n = it.next()?.parse().ok()?;
            Some((name.to_string(), n))
        })
        .collect()
}

fn baseline_text(reports: &[FileReport]) -> String {
    let mut out = String::from(
        "# Passed evals per file of the Prometheus PromQL test suite; the\n\
         # promql_conformance test fails when a count drops below these.\n\
         # Regenerate: MESHLENS_UPDATE_BASELINE=1 cargo test -p meshlens-query --test promql_conformance\n",
    );
    for r in reports {
        out.push_str(&format!("{} {}\n", r.file, r.passed));
    }
    out.push_str(&format!("total {}\n", totals(reports).0));
    out
}

#[test]
fn prometheus_promql_test_suite() {
    let dir = conformance_dir();
    if !dir.is_dir() {
        eprintln!(
            "\n==================================================================\n\
             SKIPPED: conformance folder {} not found\n\
             (set MESHLENS_CONFORMANCE_DIR to run the Prometheus PromQL suite)\n\
             ==================================================================\n",
            dir.display()
        );
        return;
    }
    let reports = run_dir(&dir);
    assert!(!reports.is_empty(), "no *.test files in {}", dir.display());
    println!("{}", format_report(&reports));
    if std::env::var("MESHLENS_CONFORMANCE_VERBOSE").is_ok_and(|v| v == "1") {
        for s in reports.iter().flat_map(|r| &r.skips) {
            println!("SKIP {}:{} {} — {}", s.file, s.line, s.expr, s.reason);
        }
    }

    if let Some(path) = std::env::var_os("MESHLENS_CONFORMANCE_REPORT") {
        std::fs::write(&path, markdown_report(&reports)).expect("write the markdown report");
        println!("markdown report written to {}", Path::new(&path).display());
    }

    let baseline_path = Path::new(env!("CARGO_MANIFEST_DIR")).join(BASELINE);
    if std::env::var("MESHLENS_UPDATE_BASELINE").is_ok_and(|v| v == "1") {
        std::fs::write(&baseline_path, baseline_text(&reports)).expect("write the baseline");
        println!("baseline rewritten: {}", baseline_path.display());
        return;
    }

    let baseline = read_baseline(&baseline_path);
    let mut current: BTreeMap<String, usize> =
        reports.iter().map(|r| (r.file.clone(), r.passed)).collect();
    current.insert("total".into(), totals(&reports).0);
    let mut regressions = Vec::new();
    let mut improvements = Vec::new();
    for (name, &want) in &baseline {
        let got = current.get(name).copied().unwrap_or(0);
        if got < want {
            regressions.push(format!("{name}: passed {got}, baseline {want}"));
        } else if got > want {
            improvements.push(format!("{name}: passed {got}, baseline {want}"));
        }
    }
    for (name, &got) in &current {
        if !baseline.contains_key(name) && got > 0 {
            improvements.push(format!("{name}: passed {got}, not in the baseline"));
        }
    }
    if !improvements.is_empty() {
        println!(
            "conformance improved:\n  {}\nupdate the baseline: MESHLENS_UPDATE_BASELINE=1 cargo test -p meshlens-query --test promql_conformance",
            improvements.join("\n  ")
        );
    }
    let script_errors: Vec<String> = reports
        .iter()
        .flat_map(|r| {
            r.errors
                .iter()
                .map(move |e| format!("{}:{}: {}", r.file, e.line, e.msg))
        })
        .collect();
    assert!(
        script_errors.is_empty(),
        "the runner could not parse parts of the test scripts:\n  {}",
        script_errors.join("\n  ")
    );
    assert!(
        regressions.is_empty(),
        "PromQL conformance regressed below {}:\n  {}",
        baseline_path.display(),
        regressions.join("\n  ")
    );
}
