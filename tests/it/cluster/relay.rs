//! A TCP relay between a handoff instance and one etcd member that the test can cut: while
//! cut, no byte passes either way and connections stay open, as in a network partition
//! (nothing is refused or reset; packets just stop arriving). Healed, held bytes flow again.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

pub struct Relay {
    pub addr: SocketAddr,
    cut: watch::Sender<bool>,
    open: Arc<AtomicUsize>,
    _task: tokio_util::task::AbortOnDropHandle<()>,
}

impl Relay {
    pub async fn start(upstream: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = watch::channel(false).0;
        let open = Arc::new(AtomicUsize::new(0));
        let (rx, count) = (cut.subscribe(), Arc::clone(&open));
        let task = tokio::spawn(async move {
            // Dropped with the relay: every connection goes with it.
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((client, _)) = accepted else { return };
                        conns.spawn(relay(client, upstream, rx.clone(), Arc::clone(&count)));
                    }
                    Some(_) = conns.join_next() => {}
                }
            }
        });
        Relay {
            addr,
            cut,
            open,
            _task: tokio_util::task::AbortOnDropHandle::new(task),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    pub fn heal(&self) {
        self.cut.send_replace(false);
    }

    /// Connections open through the relay now.
    pub fn open(&self) -> usize {
        self.open.load(SeqCst)
    }
}

async fn relay(
    client: TcpStream,
    upstream: SocketAddr,
    mut cut: watch::Receiver<bool>,
    open: Arc<AtomicUsize>,
) {
    if cut.wait_for(|c| !*c).await.is_err() {
        return;
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    open.fetch_add(1, SeqCst);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    tokio::select! {
        _ = pump(cr, sw, cut.clone()) => {}
        _ = pump(sr, cw, cut) => {}
    }
    open.fetch_sub(1, SeqCst);
}

/// Copies until EOF or an error, holding every chunk while the relay is cut.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut cut: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if cut.wait_for(|c| !*c).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if cut.wait_for(|c| !*c).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
