//! Processes a test runs (tidemark's, a Redis server) and what stands between them (a slow
//! link).

use std::{
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use super::eventually;

/// Makes a child die with the test: SIGKILL when the thread that spawned it goes away
/// (a killed or interrupted test runs no destructors, and must not leave processes behind).
pub fn die_with_parent(c: &mut Command) {
    use std::os::unix::process::CommandExt;
    extern "C" {
        fn prctl(option: std::os::raw::c_int, ...) -> std::os::raw::c_int;
    }
    const PR_SET_PDEATHSIG: std::os::raw::c_int = 1;
    const SIGKILL: std::os::raw::c_ulong = 9;
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        c.pre_exec(|| {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            Ok(())
        });
    }
}

/// A port nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// What a command that ran to its end said.
#[derive(Debug)]
pub struct Ran {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// Asserts that it exited 0 (and shows what it said if not).
    #[track_caller]
    pub fn expect_ok(self) -> Ran {
        assert!(self.ok(), "{self:?}");
        self
    }

    /// Both streams, for a leak check.
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

impl From<std::process::Output> for Ran {
    fn from(out: std::process::Output) -> Ran {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        Ran { code: out.status.code(), stdout: text(&out.stdout), stderr: text(&out.stderr) }
    }
}

/// A child process whose stderr is collected in the background; killed when dropped, and
/// what it said is shown when a test fails.
pub struct Proc {
    pub child: Child,
    pub stderr: Arc<std::sync::Mutex<String>>,
}

impl Proc {
    /// Starts any command (e.g. a private copy of the binary) with its stderr collected.
    pub fn spawn(mut c: Command) -> Proc {
        c.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = c.spawn().expect("spawn tidemark");
        let stderr = Arc::new(std::sync::Mutex::new(String::new()));
        let mut pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Proc { child, stderr }
    }

    pub fn output(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends SIGTERM (and returns at once).
    pub fn signal_term(&self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
    }

    /// Waits at most `limit` for the process to exit; kills it after that (None).
    pub fn wait_for_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if start.elapsed() > limit {
                self.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then wait (bounded) for a clean exit; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal_term();
        let status = self.wait_for_exit(Duration::from_secs(40));
        status.unwrap_or_else(|| panic!("process did not stop within 40s of SIGTERM; output:\n{}", self.output()))
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A failing test shows what its processes said (the last 20,000 characters).
        if std::thread::panicking() {
            let out = self.output();
            let from = out.len().saturating_sub(20_000);
            let from = (from..out.len()).find(|&i| out.is_char_boundary(i)).unwrap_or(out.len());
            let tail = &out[from..];
            eprintln!("--- stderr of process {} (tail) ---\n{tail}\n--- end ---", self.child.id());
        }
        if self.is_running() {
            self.kill();
        }
    }
}

/// A Redis server of the test's own, on its own port (to stop, flush and restart without
/// disturbing other tests); stopped when dropped.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_on(free_port())
    }

    /// On a port a process was already told to use (a Redis that comes up late).
    pub fn start_on(port: u16) -> RedisServer {
        let mut r = RedisServer { port, child: None };
        r.respawn();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// (Re)starts it, empty.
    pub fn respawn(&mut self) {
        self.kill();
        let mut c = Command::new("redis-server");
        c.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        die_with_parent(&mut c);
        self.child = Some(c.spawn().expect("redis-server (install the redis-server package)"));
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub async fn connection(&self) -> Result<redis::aio::MultiplexedConnection, String> {
        let client = redis::Client::open(self.url()).map_err(|e| e.to_string())?;
        match tokio::time::timeout(Duration::from_secs(2), client.get_multiplexed_async_connection()).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".into()),
        }
    }

    /// Waits (10 s at most) until it answers PING.
    pub async fn wait_ready(&self) {
        eventually(&format!("redis-server on port {} answers", self.port), Duration::from_secs(10), || async {
            let mut c = self.connection().await?;
            redis::cmd("PING").query_async::<String>(&mut c).await.map_err(|e| e.to_string())
        })
        .await;
    }

    pub async fn flushall(&self) -> Result<(), String> {
        let mut c = self.connection().await?;
        redis::cmd("FLUSHALL").query_async::<()>(&mut c).await.map_err(|e| e.to_string())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP proxy that delays everything the upstream sends by `delay` (a far-away or
/// overloaded server, e.g. Redis). Stops when dropped.
pub struct SlowLink {
    pub addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl SlowLink {
    /// `upstream` is a service URL (`redis://host:port/...`); the link forwards to its host
    /// and port.
    pub async fn start(upstream: &str, delay: Duration) -> SlowLink {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let u = url::Url::parse(upstream).expect("upstream is a URL");
        let target = format!("{}:{}", u.host_str().expect("upstream host"), u.port().unwrap_or(6379));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind slow link");
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&target).await else { continue };
                let (mut client_rx, mut client_tx) = client.into_split();
                let (mut server_rx, mut server_tx) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_rx, &mut server_tx).await;
                });
                // Upstream → client: each chunk leaves `delay` after it arrived (latency,
                // not a throughput limit).
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = server_rx.read(&mut buf).await {
                        if n == 0 || tx.send((Instant::now() + delay, buf[..n].to_vec())).is_err() {
                            break;
                        }
                    }
                });
                tokio::spawn(async move {
                    while let Some((due, bytes)) = rx.recv().await {
                        tokio::time::sleep_until(due.into()).await;
                        if client_tx.write_all(&bytes).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        SlowLink { addr, task }
    }

    /// `upstream` with its host and port replaced by the link's.
    pub fn url_for(&self, upstream: &str) -> String {
        let mut u = url::Url::parse(upstream).expect("upstream is a URL");
        u.set_host(Some("127.0.0.1")).unwrap();
        u.set_port(Some(self.addr.port())).unwrap();
        u.to_string()
    }
}

impl Drop for SlowLink {
    fn drop(&mut self) {
        self.task.abort();
    }
}
