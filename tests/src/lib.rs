//! Helpers shared by the integration tests in `tests/`: building tasks from JSON, running a
//! command against a host, and small local servers (HTTP, plain TCP) on 127.0.0.1.
#![deny(missing_docs)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use deployer_core::{
    CommandError, CommandRegistry, ExecContext, Outcome, RemoteHost, Task, TaskEntry, Tasklist,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A registry with every standard command.
pub fn registry() -> CommandRegistry {
    let mut r = CommandRegistry::new();
    deployer_commands::register_all(&mut r);
    r
}

/// The task described by `value` (a task object as in a tasklist).
pub fn task(value: &Value) -> Task {
    let tasklist = json!({"stages": [{"name": "s", "concurrency": 1, "tasks": [value]}]});
    let tasklist = Tasklist::from_value(&tasklist).unwrap_or_else(|e| panic!("{value}: {e}"));
    match &tasklist.stages[0].tasks[0] {
        TaskEntry::Single(t) => t.clone(),
        TaskEntry::Chain(_) => panic!("{value} is a chain"),
    }
}

/// Initializes the task `value` with `registry` and runs it against `host`.
pub async fn run_with(
    registry: &CommandRegistry,
    host: Arc<dyn RemoteHost>,
    value: Value,
) -> Result<Outcome, CommandError> {
    let task = task(&value);
    let command = registry
        .instantiate(&task)
        .unwrap_or_else(|e| panic!("{value}: {e}"));
    let ctx = ExecContext::new(host, task, Arc::new(|_, _| {}));
    command.execute(&ctx).await
}

/// [`run_with`] the standard [`registry`].
pub async fn run(host: Arc<dyn RemoteHost>, value: Value) -> Result<Outcome, CommandError> {
    run_with(&registry(), host, value).await
}

/// A path as a `&str` (the tests only make UTF-8 paths).
pub fn s(path: &std::path::Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// A tiny HTTP/1.1 server on 127.0.0.1 that answers from a script of `(status, body)` pairs
/// (the last one repeats) and records each request's head and body.
pub struct HttpServer {
    /// Where it listens.
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
}

impl HttpServer {
    /// Starts serving; answers are taken from `script` in order.
    pub async fn start(script: Vec<(u16, &'static str)>) -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(VecDeque::from(script)));
        let recorded = requests.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (status, body) = {
                    let mut s = script.lock().unwrap();
                    if s.len() > 1 {
                        s.pop_front().unwrap()
                    } else {
                        s.front().copied().unwrap_or((200, ""))
                    }
                };
                let request = read_request(&mut stream).await;
                recorded.lock().unwrap().push(request);
                let answer = format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
                let _ = stream.shutdown().await;
            }
        });
        HttpServer { addr, requests }
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every request so far (head and body).
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

async fn read_request(stream: &mut tokio::net::TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())
                        .flatten()
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return text;
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return String::from_utf8_lossy(&buf).to_string(),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}
