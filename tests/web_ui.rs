//! The web page in a real browser: `tests/web/ui.mjs` drives Debian's
//! headless Chromium with playwright-core against a running `meshlens demo`
//! (graph, graph type and window switches, the reviews panel with charts and
//! traces, the waterfall, trace search and lookup by id, the fault-injection
//! scenario from the page's own control, a deep link, empty/error states).
//! Screenshots of every step go to `$CARGO_TARGET_DIR/ui-screenshots` (or the
//! system temp dir).

mod common;

use common::{Server, required_tool, temp_dir};
use std::process::Command;

#[test]
fn the_page_shows_the_demo_mesh_in_a_real_browser() {
    let (Some(chromium), Some(modules)) = (
        required_tool("MESHLENS_TEST_CHROMIUM"),
        required_tool("MESHLENS_TEST_NODE_MODULES"),
    ) else {
        return;
    };
    let dir = temp_dir("web-ui");
    let s = Server::start_demo(
        &dir.join("data"),
        &[
            "--rate",
            "30",
            "--derive-interval",
            "2s",
            "--scrape-interval",
            "2s",
            "--service-graph-wait",
            "2s",
        ],
    );
    let shots = std::env::var("CARGO_TARGET_DIR")
        .map(|t| std::path::PathBuf::from(t).join("ui-screenshots"))
        .unwrap_or_else(|_| std::env::temp_dir().join("meshlens-ui-screenshots"));
    let _ = std::fs::remove_dir_all(&shots);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/web/ui.mjs");
    let out = Command::new("node")
        .arg(script)
        .arg(s.url(""))
        .arg(&shots)
        .env("MESHLENS_TEST_CHROMIUM", chromium)
        .env("MESHLENS_TEST_NODE_MODULES", modules)
        .output()
        .expect("node runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(
        out.status.success(),
        "browser test failed:\n{text}\nmeshlens log:\n{}",
        s.log()
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n")
    );
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The layout's properties (left to right, no overlap, stability across
/// refreshes, cycle breaking, crossing reduction): `tests/web/layout.test.mjs`.
#[test]
fn the_graph_layout_keeps_its_properties() {
    let node_ok = Command::new("node").arg("--version").output().is_ok();
    if !node_ok {
        assert!(
            std::env::var("CI").is_err(),
            "node is not installed: ./scripts/test.sh needs it for the web tests"
        );
        eprintln!("SKIPPED: node is not installed; the layout test did not run");
        return;
    }
    let out = Command::new("node")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/web/layout.test.mjs"
        ))
        .output()
        .expect("node runs");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
