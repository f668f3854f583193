//! meshlens-ui: the built-in web page (topology graph, service panels with
//! RED charts, trace search and waterfall). Plain ES modules, SVG and CSS
//! under `assets/`, embedded into the binary at compile time and served by
//! [`router`]: `cargo build` alone yields a binary that serves the whole
//! page, with no build step and no external requests. Depends on axum only.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// Every asset: path under `/ui/`, content type, bytes.
pub const ASSETS: &[(&str, &str, &str)] = &[
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../assets/style.css"),
    ),
    ("js/app.js", JS, include_str!("../assets/js/app.js")),
    ("js/api.js", JS, include_str!("../assets/js/api.js")),
    ("js/util.js", JS, include_str!("../assets/js/util.js")),
    ("js/layout.js", JS, include_str!("../assets/js/layout.js")),
    (
        "js/topology.js",
        JS,
        include_str!("../assets/js/topology.js"),
    ),
    ("js/chart.js", JS, include_str!("../assets/js/chart.js")),
    ("js/panel.js", JS, include_str!("../assets/js/panel.js")),
    ("js/traces.js", JS, include_str!("../assets/js/traces.js")),
    (
        "js/waterfall.js",
        JS,
        include_str!("../assets/js/waterfall.js"),
    ),
];

const JS: &str = "text/javascript; charset=utf-8";
const INDEX: &str = include_str!("../assets/index.html");
/// Only this origin; styles set through the CSSOM only; no inline script.
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'";

fn page(content_type: &'static str, body: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Embedded in the binary: revalidate so an upgrade is picked up at once.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

async fn index() -> Response {
    page("text/html; charset=utf-8", INDEX)
}

async fn asset(Path(path): Path<String>) -> Response {
    match ASSETS.iter().find(|(p, _, _)| *p == path) {
        Some((_, ct, body)) => page(ct, body),
        None => (
            StatusCode::NOT_FOUND,
            format!("no asset /ui/{path} in this meshlens build"),
        )
            .into_response(),
    }
}

/// `GET /` (the page) and `GET /ui/...` (its modules and stylesheet).
pub fn router() -> Router {
    Router::new()
        .route("/", get(index))
        .route("/ui/{*path}", get(asset))
}

/// Total bytes of the page (HTML, JS, CSS), uncompressed.
pub fn page_weight() -> usize {
    INDEX.len() + ASSETS.iter().map(|(_, _, b)| b.len()).sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_module_the_page_imports_is_embedded() {
        let mut wanted = vec!["js/app.js".to_string(), "style.css".to_string()];
        let mut i = 0;
        while i < wanted.len() {
            let w = wanted[i].clone();
            i += 1;
            let Some((_, _, body)) = ASSETS.iter().find(|(p, _, _)| *p == w) else {
                panic!("{w} is imported but not embedded");
            };
            for line in body.lines().filter(|l| l.starts_with("import ")) {
                let Some(spec) = line.split(['\'', '"']).nth(1) else {
                    continue;
                };
                let p = format!("js/{}", spec.trim_start_matches("./"));
                if !wanted.contains(&p) {
                    wanted.push(p);
                }
            }
        }
        assert_eq!(
            wanted.len(),
            ASSETS.len(),
            "embedded but never imported: {wanted:?}"
        );
        assert!(INDEX.contains("/ui/js/app.js") && INDEX.contains("/ui/style.css"));
    }

    #[test]
    fn the_page_stays_under_300_kb() {
        assert!(page_weight() < 300 * 1024, "{} bytes", page_weight());
    }

    #[test]
    fn no_external_urls_are_loaded() {
        for (p, _, body) in ASSETS.iter().chain([("index.html", "", INDEX)].iter()) {
            for bad in [
                "src=\"http",
                "href=\"http",
                "@import",
                "url(http",
                "fetch('http",
                "fetch(\"http",
            ] {
                assert!(!body.contains(bad), "{p} loads something external: {bad}");
            }
        }
    }
}
