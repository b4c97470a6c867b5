//! Headless Chromium for the browser tests, driven through WebDriver (`chromedriver`):
//! Debian's `chromium` and `chromium-driver`, which `deploy/local/chromium.sh` installs
//! (test.sh runs it). A missing browser fails the test with that hint; it is never skipped.
//!
//! WebDriver rather than the DevTools protocol: it is a small JSON-over-HTTP protocol that
//! the `reqwest` the tests already use speaks (no WebSocket client, no new dependency), and
//! it drives the browser as a person does — typed keys go through the focused element and
//! the page's own event handlers.

#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{json, Value};

/// The W3C WebDriver key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
pub const ARROW_DOWN: &str = "\u{E015}";
pub const ARROW_UP: &str = "\u{E013}";
pub const ENTER: &str = "\u{E007}";

/// The flags that keep headless Chromium quiet on a machine without internet (its
/// background connections otherwise misbehave) and independent of any other run.
const FLAGS: [&str; 9] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
];

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    profile: PathBuf,
}

#[derive(Clone, Debug)]
pub struct Element(String);

impl Browser {
    /// Starts chromedriver on a free port and a headless Chromium session with a fresh
    /// profile and a window of `width`×`height`.
    pub async fn start(width: u32, height: u32) -> Browser {
        let hint = "run deploy/local/chromium.sh (deploy/local/test.sh does), which installs Debian's chromium and chromium-driver";
        let driver_path = which("chromedriver").unwrap_or_else(|| panic!("chromedriver is not installed: {hint}"));
        let chromium = which("chromium").unwrap_or_else(|| panic!("chromium is not installed: {hint}"));
        let port = crate::support::free_port();
        let driver = Command::new(driver_path)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let profile = std::env::temp_dir().join(format!("tidemark-chromium-{}-{:08x}", crate::support::run_id(), rand::random::<u32>()));
        std::fs::create_dir_all(&profile).unwrap();
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let mut b = Browser { driver, base, session: String::new(), http, profile };
        let start = Instant::now();
        while b.http.get(format!("{}/status", b.base)).send().await.is_err() {
            assert!(start.elapsed() < Duration::from_secs(30), "chromedriver did not start within 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut args: Vec<String> = FLAGS.iter().map(|s| s.to_string()).collect();
        args.push(format!("--user-data-dir={}", b.profile.display()));
        args.push(format!("--window-size={width},{height}"));
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium.display().to_string(), "args": args}
        }}});
        let v = b.call(reqwest::Method::POST, "/session", Some(caps)).await;
        b.session = v["sessionId"].as_str().unwrap_or_else(|| panic!("no WebDriver session: {v}")).to_string();
        b
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        r = r.json(&body.unwrap_or_else(|| json!({})));
        let resp = r.send().await.unwrap_or_else(|e| panic!("WebDriver {path}: {e}"));
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "WebDriver {path}: HTTP {status}: {v}");
        v["value"].clone()
    }

    async fn session(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        self.call(method, &format!("/session/{}{path}", self.session), body).await
    }

    pub async fn goto(&self, url: &str) {
        self.session(reqwest::Method::POST, "/url", Some(json!({ "url": url }))).await;
    }

    pub async fn url(&self) -> String {
        self.http.get(format!("{}/session/{}/url", self.base, self.session)).send().await.unwrap().json::<Value>().await.unwrap()["value"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Elements matching a CSS selector (none is not an error).
    pub async fn find_all(&self, css: &str) -> Vec<Element> {
        let v = self.session(reqwest::Method::POST, "/elements", Some(json!({"using": "css selector", "value": css}))).await;
        v.as_array().unwrap().iter().map(|e| Element(e[ELEMENT].as_str().unwrap().to_string())).collect()
    }

    pub async fn find(&self, css: &str) -> Element {
        self.find_all(css).await.into_iter().next().unwrap_or_else(|| panic!("no element matches {css}"))
    }

    /// Waits (bounded) until `css` matches at least one element.
    pub async fn wait_for(&self, css: &str) -> Vec<Element> {
        let start = Instant::now();
        loop {
            let found = self.find_all(css).await;
            if !found.is_empty() {
                return found;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "nothing matched {css} within 20 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits (bounded) until the URL satisfies `check`.
    pub async fn wait_for_url(&self, what: &str, check: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let url = self.url().await;
            if check(&url) {
                return url;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "the URL did not become {what} within 20 s (it is {url})");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn click(&self, e: &Element) {
        self.session(reqwest::Method::POST, &format!("/element/{}/click", e.0), None).await;
    }

    /// Types into an element, key by key, as a person would.
    pub async fn type_keys(&self, e: &Element, text: &str) {
        self.session(reqwest::Method::POST, &format!("/element/{}/value", e.0), Some(json!({ "text": text }))).await;
    }

    pub async fn text(&self, e: &Element) -> String {
        self.session(reqwest::Method::GET, &format!("/element/{}/text", e.0), None).await.as_str().unwrap_or_default().to_string()
    }

    pub async fn attr(&self, e: &Element, name: &str) -> Option<String> {
        self.session(reqwest::Method::GET, &format!("/element/{}/attribute/{name}", e.0), None).await.as_str().map(str::to_string)
    }

    /// The id of the focused element.
    pub async fn active_id(&self) -> Option<String> {
        let v = self.session(reqwest::Method::GET, "/element/active", None).await;
        let e = Element(v[ELEMENT].as_str()?.to_string());
        self.attr(&e, "id").await
    }

    /// Saves a PNG of the viewport.
    pub async fn screenshot(&self, path: &Path) {
        let v = self.session(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64_decode(v.as_str().expect("a base64 screenshot"));
        assert!(png.starts_with(b"\x89PNG"), "the screenshot is a PNG");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }

    pub async fn quit(mut self) {
        let _ = self.http.delete(format!("{}/session/{}", self.base, self.session)).send().await;
        self.session.clear();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Where the test run writes screenshots (not committed): `target/screenshots/`.
pub fn screenshot_dir() -> PathBuf {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("screenshots")
}

/// Standard base64 (WebDriver's screenshots), without a dependency for it.
fn base64_decode(s: &str) -> Vec<u8> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for v in s.bytes().filter_map(value) {
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// `tidemark serve`'s application on a real port of this process, until dropped.
pub struct Server {
    pub url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    pub async fn start(services: tidemark::services::Services) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            tidemark::process::serve::run_on(services, listener, async {
                let _ = rx.await;
            })
            .await
            .expect("serve");
        });
        Server { url, stop: Some(tx), task }
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_decodes() {
        assert_eq!(super::base64_decode("aGVsbG8="), b"hello");
        assert_eq!(super::base64_decode("iVBORw=="), b"\x89PNG");
    }
}
