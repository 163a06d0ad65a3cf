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
                node.health_flipped(from, to, "passive connect failures");
            }
        }
    }
    result
}

/// Connects to node `index` of an HTTP/1.1 pool: TCP, then TLS when the pool has
/// `upstream.tls` (within the same connect timeout). A TLS failure is the node's, like a
/// failed connect: logged with the reason and counted.
pub async fn connect_upstream(
    pool: &Pool,
    index: usize,
    timeout: Duration,
) -> io::Result<crate::pool::UpstreamIo> {
    let started = Instant::now();
    let tcp = connect_node(pool, index, timeout).await?;
    let (Some(connector), Some(tls)) = (&pool.tls, &pool.config.upstream.tls) else {
        return Ok(crate::pool::UpstreamIo::Plain(tcp));
    };
    let node = &pool.nodes[index];
    let left = timeout.saturating_sub(started.elapsed());
    let result = match tokio::time::timeout(
        left,
        connector.connect(tls.server_name(node.addr), tcp),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "TLS handshake timed out",
        )),
    };
    match result {
        Ok(s) => Ok(crate::pool::UpstreamIo::Tls(Box::new(s))),
        Err(e) => {
            tracing::warn!(node = %node.key(), error = %e, "TLS to the backend failed");
            node.state.metrics.tls_failures.inc();
            if let Some((from, to)) = pool.passive_failure(index) {
                node.health_flipped(from, to, "passive connect failures");
            }
            Err(e)
        }
    }
}
