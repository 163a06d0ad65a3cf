//! Real backends for tests: an HTTP node that reports a version and can be stopped and
//! started again on the same port (an upgrade), and TCP servers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What one run (start to stop) of a backend saw.
#[derive(Default)]
pub struct Stats {
    /// Proxied (non-health) requests.
    pub hits: AtomicUsize,
    /// Health check requests.
    pub checks: AtomicUsize,
    /// Health checks seen when the first proxied request arrived (-1: none yet).
    pub checks_at_first_hit: AtomicI64,
}

pub struct HttpBackend {
    pub name: &'static str,
    pub addr: SocketAddr,
    version: Arc<Mutex<String>>,
    /// Percent of proxied requests answered 500 (kept across restarts).
    failing: Arc<AtomicUsize>,
    pub stats: Arc<Stats>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl HttpBackend {
    pub async fn start(name: &'static str, version: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        Self::serve(name, listener, version, Arc::default())
    }

    /// Starts on `addr` (another loopback address, say: several "hosts" on one port).
    pub async fn start_at(name: &'static str, version: &str, addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind backend");
        Self::serve(name, listener, version, Arc::default())
    }

    fn serve(
        name: &'static str,
        listener: TcpListener,
        version: &str,
        failing: Arc<AtomicUsize>,
    ) -> Self {
        let addr = listener.local_addr().expect("local addr");
        let version = Arc::new(Mutex::new(version.to_string()));
        let stats = Arc::new(Stats {
            checks_at_first_hit: AtomicI64::new(-1),
            ..Default::default()
        });
        let stop = CancellationToken::new();
        let task = tokio::spawn(accept_loop(
            name,
            listener,
            Arc::clone(&version),
            Arc::clone(&failing),
            Arc::clone(&stats),
            stop.clone(),
        ));
        HttpBackend {
            name,
            addr,
            version,
            failing,
            stats,
            stop,
            task: Some(task),
        }
    }

    pub fn hits(&self) -> usize {
        self.stats.hits.load(SeqCst)
    }

    /// Stops like a killed process: the port closes and open connections are dropped.
    pub async fn stop(&mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Starts again on the same port, reporting `version` (an upgrade, or not).
    pub async fn restart(&mut self, version: &str) {
        self.stop().await;
        let listener = bind_again(self.addr).await;
        let failing = Arc::clone(&self.failing);
        *self = Self::serve(self.name, listener, version, failing);
    }

    /// From now on, answers 500 to `percent` % of proxied requests, spread evenly (health
    /// checks still pass: the bad version analysis must catch).
    pub fn set_failing(&self, percent: usize) {
        self.failing.store(percent, SeqCst);
    }

    pub fn set_version(&self, version: &str) {
        *self.version.lock().unwrap() = version.to_string();
    }
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn bind_again(addr: SocketAddr) -> TcpListener {
    for _ in 0..100 {
        if let Ok(l) = TcpListener::bind(addr).await {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("could not bind {addr} again");
}

async fn accept_loop(
    name: &'static str,
    listener: TcpListener,
    version: Arc<Mutex<String>>,
    failing: Arc<AtomicUsize>,
    stats: Arc<Stats>,
    stop: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
        };
        let (version, stats, stop) = (Arc::clone(&version), Arc::clone(&stats), stop.clone());
        let failing = Arc::clone(&failing);
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let fail = failing.load(SeqCst);
                answer(name, Arc::clone(&version), fail, Arc::clone(&stats), req)
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

async fn answer(
    name: &'static str,
    version: Arc<Mutex<String>>,
    failing: usize,
    stats: Arc<Stats>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let version = version.lock().unwrap().clone();
    let path = req.uri().path().to_string();
    let (status, body) = if path == "/healthz" {
        stats.checks.fetch_add(1, SeqCst);
        (
            StatusCode::OK,
            format!("{{\"version\":\"{version}\",\"node\":\"{name}\"}}"),
        )
    } else {
        let checks = stats.checks.load(SeqCst) as i64;
        let _ = stats
            .checks_at_first_hit
            .compare_exchange(-1, checks, SeqCst, SeqCst);
        let k = stats.hits.fetch_add(1, SeqCst);
        if (k + 1) * failing / 100 > k * failing / 100 {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{name} {version} failed"),
            )
        } else if path == "/headers" {
            let map: serde_json::Map<String, serde_json::Value> = req
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into()))
                .collect();
            (StatusCode::OK, serde_json::Value::Object(map).to_string())
        } else if let Some(ms) = path.strip_prefix("/slow/") {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(100))).await;
            (StatusCode::OK, format!("{name} {version}"))
        } else if path == "/echo" {
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            (StatusCode::OK, String::from_utf8_lossy(&body).into_owned())
        } else {
            (StatusCode::OK, format!("{name} {version}"))
        }
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert("x-version", version.parse().unwrap());
    resp.headers_mut().insert("x-node", name.parse().unwrap());
    Ok(resp)
}

/// A TCP server that reads until the client half-closes, then answers with every byte
/// XOR 0xA5 and closes: it proves both directions and the half-close.
pub async fn tcp_transform_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut data = Vec::new();
                if s.read_to_end(&mut data).await.is_ok() {
                    for b in &mut data {
                        *b ^= 0xA5;
                    }
                    let _ = s.write_all(&data).await;
                    let _ = s.shutdown().await;
                }
            });
        }
    });
    addr
}

/// A TCP echo server that prefixes nothing and closes when the client does.
pub async fn tcp_echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// An address where nothing listens (bound once, then released).
pub async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// Reads until EOF or `limit`; returns the bytes and whether EOF came in time.
pub async fn read_to_eof(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let mut buf = Vec::new();
    let eof = tokio::time::timeout(limit, s.read_to_end(&mut buf))
        .await
        .is_ok();
    (buf, eof)
}
