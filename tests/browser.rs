//! The embedded web client, from the outside.
//!
//! - Fast checks, in process on SQLite, no browser: how `/` and the client's files are served
//!   (content types, CSP, ETag / 304, compression, SPA fallback, `/api` 404s staying JSON), and
//!   static guards on the files themselves (no inline script or style, no HTML sinks).
//! - `the_browser_suite_passes`: runs `node --test e2e/` — two confab nodes (this build) on
//!   PostgreSQL + Redis, two headless Chromiums. It needs node, `npm ci --prefix e2e`, Debian's
//!   `/usr/bin/chromium`, `CONFAB_TEST_DATABASE_URL` and `CONFAB_TEST_REDIS_URL`; without one of
//!   them it says why and passes, unless `CONFAB_TEST_REQUIRE_SERVICES=1` makes that a failure.

use std::{
    io::Read as _,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use confab::{App, Config, config::Secret};
use reqwest::{StatusCode, header};

/// The whole browser suite, restarts and 55-message history included, takes about 40 s here.
const SUITE_TIMEOUT: Duration = Duration::from_secs(360);

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn services_required() -> bool {
    std::env::var("CONFAB_TEST_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// Says why the test cannot run and returns from it, or fails when services are required.
macro_rules! skip {
    ($($why:tt)*) => {{
        let why = format!($($why)*);
        assert!(!services_required(), "CONFAB_TEST_REQUIRE_SERVICES=1, but {why}");
        eprintln!("skipped: {why}");
        return;
    }};
}

// --- fast checks ---------------------------------------------------------------------------------

struct TestApp {
    base: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl TestApp {
    async fn spawn() -> Self {
        let dir = tempfile::tempdir().expect("a temp dir for the SQLite file");
        let mut config = Config { listen: "127.0.0.1:0".into(), ..Config::default() };
        config.database.url = Secret::new(format!("sqlite://{}/confab.db", dir.path().display()));
        let app = App::build(config).await.expect("the app builds on a fresh SQLite database");
        let base = format!("http://{}", app.local_addr());
        tokio::spawn(app.run_until_stopped(std::future::pending()));
        Self { base, http: reqwest::Client::new(), _dir: dir }
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut req = self.http.get(format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.expect("the server answers")
    }
}

fn header<'a>(resp: &'a reqwest::Response, name: &header::HeaderName) -> &'a str {
    resp.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
}

#[tokio::test]
async fn the_page_is_html_with_a_strict_csp_and_an_etag() {
    let app = TestApp::spawn().await;
    let resp = app.get("/", &[]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, &header::CONTENT_TYPE), "text/html; charset=utf-8");
    let csp = header(&resp, &header::CONTENT_SECURITY_POLICY);
    assert!(csp.contains("script-src 'self';") && csp.contains("style-src 'self';"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(header(&resp, &header::CACHE_CONTROL), "no-cache");
    assert!(header(&resp, &header::ETAG).starts_with("W/\""), "{:?}", resp.headers());
    let body = resp.text().await.unwrap();
    assert!(body.contains(r#"<script type="module" src="/js/main.js">"#), "{body}");
}

#[tokio::test]
async fn a_matching_if_none_match_gets_a_bodyless_304() {
    let app = TestApp::spawn().await;
    for path in ["/", "/js/main.js", "/app.css"] {
        let first = app.get(path, &[]).await;
        let etag = header(&first, &header::ETAG).to_owned();
        let again = app.get(path, &[("if-none-match", &etag)]).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{path}");
        assert_eq!(header(&again, &header::ETAG), etag, "{path}");
        assert!(again.bytes().await.unwrap().is_empty(), "{path}");
        let stale = app.get(path, &[("if-none-match", "W/\"stale\"")]).await;
        assert_eq!(stale.status(), StatusCode::OK, "{path}");
    }
}

#[tokio::test]
async fn scripts_and_styles_have_their_content_types() {
    let app = TestApp::spawn().await;
    for module in ["main", "auth", "connection", "chat", "view", "dom"] {
        let resp = app.get(&format!("/js/{module}.js"), &[]).await;
        assert_eq!(resp.status(), StatusCode::OK, "{module}.js");
        assert_eq!(header(&resp, &header::CONTENT_TYPE), "text/javascript; charset=utf-8", "{module}.js");
    }
    let css = app.get("/app.css", &[]).await;
    assert_eq!(header(&css, &header::CONTENT_TYPE), "text/css; charset=utf-8");
    let icon = app.get("/favicon.svg", &[]).await;
    assert_eq!(header(&icon, &header::CONTENT_TYPE), "image/svg+xml");
}

#[tokio::test]
async fn every_file_the_page_references_is_served() {
    let app = TestApp::spawn().await;
    let page = app.get("/", &[]).await.text().await.unwrap();
    let refs: Vec<&str> =
        page.split(['"', '\'']).filter(|s| s.starts_with('/') && !s.starts_with("/api") && s.contains('.')).collect();
    assert!(refs.len() >= 4, "{refs:?}");
    for path in refs {
        assert_eq!(app.get(path, &[]).await.status(), StatusCode::OK, "{path}");
    }
}

#[tokio::test]
async fn scripts_and_styles_are_compressed_when_the_client_accepts_it() {
    let app = TestApp::spawn().await;
    for path in ["/js/view.js", "/app.css"] {
        let plain = app.get(path, &[]).await;
        assert_eq!(header(&plain, &header::CONTENT_ENCODING), "", "{path}");
        let plain_len = plain.bytes().await.unwrap().len();
        for coding in ["gzip", "br"] {
            let resp = app.get(path, &[("accept-encoding", coding)]).await;
            assert_eq!(header(&resp, &header::CONTENT_ENCODING), coding, "{path}");
            assert!(header(&resp, &header::VARY).contains("accept-encoding"), "{path}");
            let len = resp.bytes().await.unwrap().len();
            assert!(len * 2 < plain_len, "{path} {coding}: {len} of {plain_len} bytes");
        }
    }
}

#[tokio::test]
async fn client_routes_get_the_page_and_missing_files_do_not() {
    let app = TestApp::spawn().await;
    let index_etag = header(&app.get("/", &[]).await, &header::ETAG).to_owned();
    for path in ["/some/deep/link", "/r/general"] {
        let resp = app.get(path, &[]).await;
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        assert_eq!(header(&resp, &header::CONTENT_TYPE), "text/html; charset=utf-8", "{path}");
        assert_eq!(header(&resp, &header::ETAG), index_etag, "{path}");
    }
    assert_eq!(app.get("/missing.js", &[]).await.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn unknown_api_paths_stay_json_404s() {
    let app = TestApp::spawn().await;
    for path in ["/api/nope", "/api/messages", "/api/deep/er/path"] {
        let resp = app.get(path, &[]).await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{path}");
        assert!(header(&resp, &header::CONTENT_TYPE).starts_with("application/json"), "{path}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert!(body["error"].is_string() && body["code"].is_string(), "{path}: {body}");
    }
}

/// The CSP would block inline script and style anyway; this says which file broke the rule.
#[test]
fn the_page_has_no_inline_script_style_or_handlers() {
    let page = std::fs::read_to_string(root().join("assets/index.html")).unwrap();
    let lower = page.to_lowercase();
    assert!(!lower.contains("<style"), "inline <style> in index.html");
    assert!(!lower.contains(" style="), "style attribute in index.html");
    for (i, _) in lower.match_indices("<script") {
        let tag = &lower[i..lower[i..].find('>').map_or(lower.len(), |e| i + e)];
        assert!(tag.contains(" src="), "inline script in index.html: {tag}");
    }
    let handler = lower.split(|c: char| c.is_whitespace()).any(|w| w.starts_with("on") && w.contains('='));
    assert!(!handler, "inline event handler attribute in index.html");
}

/// Message text reaches the page only as text: no HTML-parsing sink anywhere in the client.
#[test]
fn the_client_never_parses_strings_as_html() {
    let mut files = 0;
    for entry in std::fs::read_dir(root().join("assets/js")).unwrap() {
        let path = entry.unwrap().path();
        let source = std::fs::read_to_string(&path).unwrap();
        let code: String = source.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n");
        for sink in ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"] {
            assert!(!code.contains(sink), "{} uses {sink}", path.display());
        }
        files += 1;
    }
    assert!(files >= 5, "the client's modules are in assets/js");
}

// --- the browser suite ---------------------------------------------------------------------------

fn find_in_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|dir| dir.join(program)).find(|p| p.is_file()))
}

#[test]
fn the_browser_suite_passes() {
    let Some(node) = find_in_path("node") else { skip!("node is not on PATH") };
    if !root().join("e2e/node_modules/playwright-core").is_dir() {
        skip!("e2e/node_modules is missing: run `npm ci --prefix e2e`");
    }
    let chromium = std::env::var("CONFAB_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        skip!("{chromium} is missing: apt-get install -y chromium chromium-driver");
    }
    for var in ["CONFAB_TEST_DATABASE_URL", "CONFAB_TEST_REDIS_URL"] {
        if std::env::var_os(var).is_none() {
            skip!("{var} is not set (the suite runs two nodes on PostgreSQL and Redis)");
        }
    }

    // Its own process group, so a timeout takes Chromium and the confab nodes down with it.
    // CONFAB_TEST_* pass through with the rest of the environment.
    let mut child = Command::new(node)
        .args(["--test", "--test-reporter=spec", "e2e/"])
        .current_dir(root())
        .env("CONFAB_BIN", env!("CARGO_BIN_EXE_confab"))
        .env("CONFAB_CHROMIUM", &chromium)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("node starts");
    let drain = |mut pipe: Box<dyn std::io::Read + Send>| {
        thread::spawn(move || {
            let mut out = String::new();
            let _ = pipe.read_to_string(&mut out);
            out
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped")));

    let deadline = Instant::now() + SUITE_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("node can be waited for") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = Command::new("kill").args(["-KILL", &format!("-{}", child.id())]).status();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(200));
    };
    let out = stdout.join().unwrap_or_default();
    let err = stderr.join().unwrap_or_default();
    println!("{out}");
    eprintln!("{err}");
    match status {
        Some(s) if s.success() => {}
        Some(s) => panic!("the browser suite failed ({s}); node's output is above, node logs in test-artifacts/"),
        None => panic!("the browser suite took longer than {SUITE_TIMEOUT:?}; node's output is above"),
    }
}
