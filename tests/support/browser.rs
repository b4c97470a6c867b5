//! Headless Chromium for the browser tests, driven through WebDriver (`chromedriver`) by the
//! `fantoccini` client: Debian's `chromium` and `chromium-driver`, which
//! `deploy/local/chromium.sh` installs (test.sh runs it). A missing browser fails the test
//! with that hint; it is never skipped.
//!
//! WebDriver rather than the DevTools protocol: it drives the browser as a person does —
//! typed keys go through the focused element and the page's own event handlers. What is ours
//! here is around the protocol: chromedriver on a free port, a fresh profile, the quiet
//! headless flags, bounds on every step (60 s a command, 20 s a wait) that fail the test
//! saying what it waited for, and the cleanup on drop.

use std::{
    fmt::Display,
    future::Future,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub use fantoccini::{elements::Element, key::Key};
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};

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

/// A WebDriver command's answer; the test fails on an error, or after 60 s without one (a
/// stuck browser must not hang the run).
async fn step<T, E: Display>(what: &str, command: impl Future<Output = Result<T, E>>) -> T {
    match tokio::time::timeout(Duration::from_secs(60), command).await {
        Ok(Ok(value)) => value,
        Ok(Err(e)) => panic!("WebDriver {what}: {e}"),
        Err(_) => panic!("WebDriver {what}: no answer within 60 s"),
    }
}

/// Asks `check` every 100 ms until it answers `Ok`; the test fails after 20 s with `what` and
/// the last thing seen instead.
async fn until<T, F: Future<Output = Result<T, String>>>(what: &str, mut check: impl FnMut() -> F) -> T {
    let start = Instant::now();
    loop {
        match check().await {
            Ok(value) => return value,
            Err(seen) => assert!(start.elapsed() < Duration::from_secs(20), "{what} within 20 s ({seen})"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub struct Browser {
    client: Client,
    driver: Driver,
}

/// chromedriver and the profile, ended and removed when dropped (also when a test fails
/// before the session exists or before `quit`).
struct Driver {
    process: Child,
    profile: PathBuf,
}

impl Drop for Browser {
    /// A test that fails before `quit` ends the session all the same, so that chromedriver
    /// quits Chromium: killing chromedriver alone left Chromium running, writing into the
    /// profile being removed. On a thread of its own (the session's task runs on the test's
    /// runtime), bounded; after `quit` it finds the session closed at once.
    fn drop(&mut self) {
        let close = self.client.clone().close();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build();
            runtime.map(|r| r.block_on(async { tokio::time::timeout(Duration::from_secs(10), close).await }))
        })
        .join();
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

impl Browser {
    /// Starts chromedriver on a free port and a headless Chromium session with a fresh
    /// profile and a window of `width`×`height`.
    pub async fn start(width: u32, height: u32) -> Browser {
        let hint = "run deploy/local/chromium.sh (deploy/local/test.sh does), which installs Debian's chromium and chromium-driver";
        let driver_path = which("chromedriver").unwrap_or_else(|| panic!("chromedriver is not installed: {hint}"));
        let chromium = which("chromium").unwrap_or_else(|| panic!("chromium is not installed: {hint}"));
        let port = crate::support::free_port();
        let process = Command::new(driver_path)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let profile = std::env::temp_dir().join(format!("tidemark-chromium-{}-{:08x}", crate::support::run_id(), rand::random::<u32>()));
        let driver = Driver { process, profile };
        std::fs::create_dir_all(&driver.profile).unwrap();
        let start = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(start.elapsed() < Duration::from_secs(30), "chromedriver did not start within 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut args: Vec<String> = FLAGS.iter().map(|s| s.to_string()).collect();
        args.push(format!("--user-data-dir={}", driver.profile.display()));
        args.push(format!("--window-size={width},{height}"));
        let Value::Object(caps) = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium.display().to_string(), "args": args}
        }) else {
            unreachable!()
        };
        let (mut builder, url) = (ClientBuilder::new(HttpConnector::new()), format!("http://127.0.0.1:{port}"));
        Browser { client: step("new session", builder.capabilities(caps).connect(&url)).await, driver }
    }

    pub async fn goto(&self, url: &str) {
        step(&format!("goto {url}"), self.client.goto(url)).await
    }

    pub async fn url(&self) -> String {
        step("url", self.client.current_url()).await.into()
    }

    /// Elements matching a CSS selector (none is not an error).
    pub async fn find_all(&self, css: &str) -> Vec<Element> {
        step(&format!("find {css}"), self.client.find_all(Locator::Css(css))).await
    }

    pub async fn find(&self, css: &str) -> Element {
        self.find_all(css).await.into_iter().next().unwrap_or_else(|| panic!("no element matches {css}"))
    }

    /// The texts of the elements `css` matches, in order.
    pub async fn texts(&self, css: &str) -> Vec<String> {
        let mut out = Vec::new();
        for e in self.find_all(css).await {
            out.push(self.text(&e).await);
        }
        out
    }

    /// Waits (bounded) until `css` matches at least one element.
    pub async fn wait_for(&self, css: &str) -> Vec<Element> {
        let found = || async { Some(self.find_all(css).await).filter(|f| !f.is_empty()).ok_or("none".to_string()) };
        until(&format!("something to match {css}"), found).await
    }

    /// Waits (bounded) until the URL satisfies `check`.
    pub async fn wait_for_url(&self, what: &str, check: impl Fn(&str) -> bool) -> String {
        let url = || async {
            let url = self.url().await;
            if check(&url) {
                Ok(url)
            } else {
                Err(format!("it is {url}"))
            }
        };
        until(&format!("the URL to become {what}"), url).await
    }

    pub async fn click(&self, e: &Element) {
        step("click", e.click()).await
    }

    /// Types into an element, key by key, as a person would.
    pub async fn type_keys(&self, e: &Element, text: &str) {
        step("send keys", e.send_keys(text)).await
    }

    pub async fn text(&self, e: &Element) -> String {
        step("text", e.text()).await
    }

    pub async fn attr(&self, e: &Element, name: &str) -> Option<String> {
        step(&format!("attribute {name}"), e.attr(name)).await
    }

    /// The id of the focused element.
    pub async fn active_id(&self) -> Option<String> {
        self.attr(&step("active element", self.client.active_element()).await, "id").await
    }

    /// Saves a PNG of the viewport.
    pub async fn screenshot(&self, path: &Path) {
        let png = step("screenshot", self.client.screenshot()).await;
        assert!(png.starts_with(b"\x89PNG"), "the screenshot is a PNG");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }

    pub async fn quit(self) {
        let _ = tokio::time::timeout(Duration::from_secs(60), self.client.clone().close()).await;
    }
}

/// Where the test run writes screenshots (not committed): `target/screenshots/`.
pub fn screenshot_dir() -> PathBuf {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("screenshots")
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
    use super::*;

    /// The processes started with `profile` as their Chromium profile (`--user-data-dir`).
    fn using(profile: &Path) -> Vec<u32> {
        let flag = format!("--user-data-dir={}", profile.display());
        let pids = std::fs::read_dir("/proc").unwrap().flatten().filter_map(|d| d.file_name().to_str()?.parse().ok());
        pids.filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.split(|&b| b == 0).any(|a| a == flag.as_bytes())))
            .collect()
    }

    /// What a failing test relies on: a browser dropped without `quit` (a panic on the way)
    /// leaves no chromedriver, no Chromium and no profile behind.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_browser_dropped_without_quit_leaves_no_process_and_no_profile() {
        let b = Browser::start(400, 300).await;
        b.goto("data:text/html,<p id=greeting>hello</p>").await;
        assert_eq!(b.texts("#greeting").await, ["hello"]);
        let (driver, profile) = (b.driver.process.id(), b.driver.profile.clone());
        assert!(!using(&profile).is_empty(), "Chromium runs with the fresh profile");
        drop(b);
        assert!(!Path::new(&format!("/proc/{driver}")).exists(), "chromedriver has ended");
        assert!(!profile.exists(), "the profile is removed");
        assert_eq!(using(&profile), [0u32; 0], "no Chromium is left");
    }
}
