//! Upstream connects shared by TCP and HTTP: bounded by the connect timeout, timed into the
//! pool's histogram, and reported as passive failures when they fail.

use std::io;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::pool::Pool;

/// Connects to node `index` of `pool`.
pub async fn connect_node(pool: &Pool, index: usize, timeout: Duration) -> io::Result<TcpStream> {
    let node = &pool.nodes[index];
    let started = Instant::now();
    let result = match tokio::time::timeout(timeout, TcpStream::connect(node.addr)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
    };
    match &result {
        Ok(stream) => {
            pool.metrics
                .connect_duration
                .observe(started.elapsed().as_secs_f64());
            let _ = stream.set_nodelay(true);
        }
        Err(e) => {
            tracing::debug!(node = %node.key(), addr = %node.addr, error = %e, "upstream connect failed");
            if let Some((from, to)) = pool.passive_failure(index) {
                crate::health::log_flip(node, from, to, "passive connect failures");
            }
        }
    }
    result
}
