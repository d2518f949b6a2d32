//! A headless Chromium for tests, driven through WebDriver: `chromedriver` (Debian's
//! `chromium-driver`) started on a free loopback port, and sessions opened on it with
//! `fantoccini` over plain HTTP (no TLS stack: we only talk to localhost).
//!
//! ```ignore
//! let driver = Chromedriver::start().unwrap();
//! let browser = Browser::open(&driver).await.unwrap();
//! browser.client().goto("http://127.0.0.1:8080/").await.unwrap();
//! browser.screenshot(Path::new("page.png")).await.unwrap();
//! browser.close().await;
//! ```
//!
//! Each session gets a fresh profile from chromedriver, so two sessions are two users with
//! cookies of their own.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder};

/// What the tests need installed, for error messages.
pub const PACKAGES: &str = "chromium chromium-driver";

/// A program on `PATH` (or in /usr/bin, where Debian puts both).
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([
            PathBuf::from("/usr/bin"),
            PathBuf::from("/usr/lib/chromium"),
        ])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// A free TCP port on 127.0.0.1 (free when asked; the OS does not hand it out again at once).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Waits until something accepts connections on `127.0.0.1:port`, or `child` exits, or
/// `limit` passes; the error says which.
pub fn wait_for_port(child: &mut Child, port: u16, limit: Duration) -> Result<(), String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + limit;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited ({status}) before listening on port {port}"));
        }
        if Instant::now() > deadline {
            return Err(format!("not listening on port {port} after {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A running `chromedriver`, killed on drop.
pub struct Chromedriver {
    child: Child,
    port: u16,
    chromium: PathBuf,
}

impl Chromedriver {
    /// Starts `chromedriver --port=<free port>` (from `PATH`) and waits until it listens.
    /// Without `chromedriver` or `chromium` the error names the Debian packages to install.
    pub fn start() -> Result<Chromedriver, String> {
        let driver = find_program("chromedriver").ok_or_else(|| {
            format!(
                "chromedriver is not on PATH: install Debian's packages {PACKAGES} \
                 (apt-get install {PACKAGES}; scripts/test.sh does when run as root)"
            )
        })?;
        let chromium = find_program("chromium")
            .or_else(|| find_program("chromium-browser"))
            .ok_or_else(|| {
                format!(
                    "chromium is not on PATH: install Debian's packages {PACKAGES} \
                     (apt-get install {PACKAGES})"
                )
            })?;
        let port = free_port();
        let mut child = Command::new(&driver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", driver.display()))?;
        if let Err(e) = wait_for_port(&mut child, port, Duration::from_secs(15)) {
            let _ = child.kill();
            let mut said = String::new();
            if let Some(mut out) = child.stdout.take() {
                let _ = out.read_to_string(&mut said);
            }
            if let Some(mut err) = child.stderr.take() {
                let _ = err.read_to_string(&mut said);
            }
            let _ = child.wait();
            return Err(format!("{}: {e}\n{said}", driver.display()));
        }
        // Drain its output so it never blocks on a full pipe.
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    if line.is_err() {
                        break;
                    }
                }
            });
        }
        Ok(Chromedriver {
            child,
            port,
            chromium,
        })
    }

    /// The WebDriver endpoint.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One headless Chromium session (a fresh profile: cookies of its own).
pub struct Browser {
    client: Client,
}

impl Browser {
    /// Opens a session: `--headless=new --no-sandbox --disable-dev-shm-usage` (tests run as
    /// root, in containers with a small /dev/shm), a 1280×900 window.
    pub async fn open(driver: &Chromedriver) -> Result<Browser, String> {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".to_string(),
            serde_json::json!({
                "binary": driver.chromium.display().to_string(),
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-dev-shm-usage",
                    "--disable-gpu",
                    "--window-size=1280,900",
                    "--hide-scrollbars",
                ],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&driver.url())
            .await
            .map_err(|e| {
                format!(
                    "cannot open a Chromium session through {}: {e}",
                    driver.url()
                )
            })?;
        Ok(Browser { client })
    }

    /// The WebDriver client (navigate, find, click, run scripts).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Saves what the window shows as a PNG at `path` (its directory is created).
    pub async fn screenshot(&self, path: &Path) -> Result<(), String> {
        let png = self
            .client
            .screenshot()
            .await
            .map_err(|e| format!("screenshot: {e}"))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        std::fs::write(path, png).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Polls `check` every 100 ms until it gives `Some`, or fails after `limit` naming `what`.
    pub async fn wait_until<T, F, Fut>(&self, what: &str, limit: Duration, mut check: F) -> T
    where
        F: FnMut(Client) -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(v) = check(self.client.clone()).await {
                return v;
            }
            if Instant::now() > deadline {
                let page = self.client.source().await.unwrap_or_default();
                panic!("timed out after {limit:?} waiting for {what}; the page:\n{page}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Ends the session (the browser quits).
    pub async fn close(self) {
        let _ = self.client.close().await;
    }
}
