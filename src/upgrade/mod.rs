//! Self-upgrade (docs/upgrade-guide.md, "Upgrading handoff itself"): a new handoff process takes over the listening sockets and the
//! runtime state of the running one, over a Unix socket, without ever closing a listening
//! socket.
//!
//! 1. The new process (`run --upgrade`) validates its config, connects to the upgrade
//!    socket and says which listeners it has ([`Message::Hello`]).
//! 2. The old process checks the peer is the same user (SO_PEERCRED), stops driving
//!    rollouts and writing the state file, and sends the state with the sockets of every
//!    listener whose name and address are unchanged, and the admin listener
//!    ([`Message::Handover`], SCM_RIGHTS). It keeps accepting meanwhile.
//! 3. The new process binds what is new, applies the state, accepts, and says
//!    [`Message::Ready`]. Only then does the old one stop accepting, drain (in-flight requests
//!    finish, keep-alive clients are told to reconnect, TCP sessions and tunnels get
//!    `shutdown_grace`) and exit 0, reporting what it still holds until then.
//! 4. If the new process dies, or is not ready within `upgrade.timeout`, the old one takes
//!    its rollouts and state file back and goes on as before.

#[allow(unsafe_code)]
mod fds;
mod state;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;

pub use crate::app::carry::{Handover, NodeHandover, PreviousSessions, PreviousView};
pub use state::Message;

use crate::app::App;
use crate::config::Config;
use crate::pool::SessionKind;

/// How often the draining old generation reports what it still holds.
const REPORT_EVERY: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("no handoff is listening on the upgrade socket {}: {source}", path.display())]
    NotListening { path: PathBuf, source: io::Error },
    #[error("the running handoff refused the takeover: {0}")]
    Refused(String),
    #[error("upgrade socket: {0}")]
    Io(#[from] io::Error),
    #[error("upgrade socket: unexpected message: {0}")]
    Protocol(String),
}

fn encode(m: &Message) -> io::Result<Vec<u8>> {
    serde_json::to_vec(m).map_err(io::Error::other)
}

fn decode(bytes: &[u8]) -> Result<Message, UpgradeError> {
    serde_json::from_slice(bytes).map_err(|e| UpgradeError::Protocol(e.to_string()))
}

/// Receives one message (blocking; call from a blocking task).
fn recv(stream: &UnixStream) -> Result<Option<(Message, Vec<OwnedFd>)>, UpgradeError> {
    match fds::recv(stream)? {
        None => Ok(None),
        Some((bytes, fds)) => Ok(Some((decode(&bytes)?, fds))),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, UpgradeError> + Send + 'static,
) -> Result<T, UpgradeError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| UpgradeError::Protocol(e.to_string()))?
}

// ---- the new process -------------------------------------------------------------------

/// What the new process got from the old one.
pub struct Inherited {
    stream: UnixStream,
    pub state: Handover,
    /// Listening sockets by listener name.
    pub listeners: HashMap<String, TcpListener>,
    pub admin: Option<TcpListener>,
}

fn listener(fd: OwnedFd) -> io::Result<TcpListener> {
    let std = std::net::TcpListener::from(fd);
    std.set_nonblocking(true)?;
    TcpListener::from_std(std)
}

/// Asks the process listening on `config.upgrade.socket` for its sockets and state.
pub async fn take_over(config: &Config) -> Result<Inherited, UpgradeError> {
    let path = config.upgrade.socket.clone();
    let hello = Message::Hello {
        pid: std::process::id(),
        listeners: config
            .listeners
            .iter()
            .map(|l| (l.name.clone(), l.listen))
            .collect(),
        admin: config.admin.listen,
    };
    let timeout = config.upgrade.timeout;
    let (stream, names, admin, state, fds) = blocking(move || {
        let stream = UnixStream::connect(&path)
            .map_err(|source| UpgradeError::NotListening { path, source })?;
        stream.set_read_timeout(Some(timeout))?;
        fds::send(&stream, &encode(&hello)?, &[])?;
        match recv(&stream)? {
            Some((
                Message::Handover {
                    listeners,
                    admin,
                    state,
                },
                fds,
            )) => Ok((stream, listeners, admin, *state, fds)),
            Some((Message::Refused { reason }, _)) => Err(UpgradeError::Refused(reason)),
            Some((other, _)) => Err(UpgradeError::Protocol(format!("{other:?}"))),
            None => Err(UpgradeError::Refused("it closed the connection".into())),
        }
    })
    .await?;
    let mut fds = fds.into_iter();
    let mut listeners = HashMap::new();
    for name in names {
        let fd = fds
            .next()
            .ok_or_else(|| UpgradeError::Protocol(format!("no socket for listener {name}")))?;
        listeners.insert(name, listener(fd)?);
    }
    let admin = match (admin, fds.next()) {
        (true, Some(fd)) => Some(listener(fd)?),
        _ => None,
    };
    Ok(Inherited {
        stream,
        state,
        listeners,
        admin,
    })
}

impl Inherited {
    /// Tells the old process this one accepts, then follows its drain into
    /// `app.previous` until it exits.
    pub async fn confirm(self, app: &Arc<App>) -> Result<(), UpgradeError> {
        let stream = self.stream;
        stream.set_read_timeout(None)?;
        let stream = blocking(move || {
            fds::send(&stream, &encode(&Message::Ready)?, &[])?;
            Ok(stream)
        })
        .await?;
        let app = Arc::clone(app);
        tokio::task::spawn_blocking(move || {
            while let Ok(Some((Message::Draining(view), _))) = recv(&stream) {
                app.note_previous(Some(view));
            }
            app.note_previous(None);
            tracing::info!("the previous generation has exited");
        });
        Ok(())
    }
}

// ---- the old process -------------------------------------------------------------------

/// Binds the upgrade socket, owner-only. A stale file (nobody listening) is replaced.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    if path.exists() {
        match UnixStream::connect(path) {
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("another handoff listens on {}", path.display()),
                ))
            }
            Err(_) => std::fs::remove_file(path)?,
        }
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Replaces whatever is at `path` with this process's upgrade socket (the new process, once
/// it took over: the old one's socket file is its own no more).
pub fn rebind(path: &Path) -> io::Result<UnixListener> {
    let _ = std::fs::remove_file(path);
    bind(path)
}

/// Serves takeovers on `listener` until one succeeds; then cancels `done`, so the caller
/// drains and exits. `admin` is the admin listener's socket, handed over too.
pub async fn serve(
    app: Arc<App>,
    listener: UnixListener,
    admin: (SocketAddr, OwnedFd),
    done: CancellationToken,
) {
    let admin = Arc::new(admin);
    loop {
        let stream = tokio::select! {
            _ = app.shutdown.drain.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "upgrade socket accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        match hand_over(&app, stream, &admin).await {
            Ok(stream) => {
                tracing::info!("takeover confirmed: the new generation accepts; draining this one");
                tokio::spawn(report(Arc::clone(&app), stream));
                done.cancel();
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "takeover failed: this process keeps serving as before");
                app.resume_after_takeover();
            }
        }
    }
}

/// One takeover attempt; returns the connection to report the drain on.
async fn hand_over(
    app: &Arc<App>,
    stream: tokio::net::UnixStream,
    admin: &Arc<(SocketAddr, OwnedFd)>,
) -> Result<UnixStream, UpgradeError> {
    let peer = stream.peer_cred()?;
    let me = nix::unistd::getuid().as_raw();
    let stream = stream.into_std()?;
    stream.set_nonblocking(false)?;
    if peer.uid() != me {
        let refuse = Message::Refused {
            reason: format!("uid {} may not take over a process of uid {me}", peer.uid()),
        };
        let _ = fds::send(&stream, &encode(&refuse)?, &[]);
        return Err(UpgradeError::Refused(format!("peer uid {}", peer.uid())));
    }
    let timeout = app.snapshot.load().config.upgrade.timeout;
    stream.set_read_timeout(Some(timeout))?;
    let (hello, stream) = blocking(move || Ok((recv(&stream)?, stream))).await?;
    let Some((
        Message::Hello {
            pid,
            listeners,
            admin: admin_addr,
        },
        _,
    )) = hello
    else {
        return Err(UpgradeError::Protocol("expected hello".into()));
    };
    tracing::info!(pid, "takeover requested: handing over sockets and state");
    // From here the new process owns the rollouts and the state file; admin writes wait.
    app.pause_for_takeover();
    let sockets = app.listener_sockets(&listeners).await;
    let state = crate::app::carry::collect(
        &app.snapshot.load(),
        app.control.membership(),
        app.rollouts.list(),
        app.process.generation,
    );
    let give_admin = admin.0 == admin_addr;
    let names: Vec<String> = sockets.iter().map(|(n, _)| n.clone()).collect();
    let message = encode(&Message::Handover {
        listeners: names,
        admin: give_admin,
        state: Box::new(state),
    })?;
    let admin = Arc::clone(admin);
    let ready = blocking(move || {
        let mut fds: Vec<_> = sockets.iter().map(|(_, fd)| fd.as_fd()).collect();
        if give_admin {
            fds.push(admin.1.as_fd());
        }
        fds::send(&stream, &message, &fds)?;
        Ok((recv(&stream)?, stream))
    })
    .await?;
    match ready {
        (Some((Message::Ready, _)), stream) => Ok(stream),
        (other, _) => Err(UpgradeError::Protocol(format!(
            "expected ready within {}, got {other:?}",
            crate::config::duration::format(timeout)
        ))),
    }
}

/// While this (old) generation drains, tells the new one what it still holds.
async fn report(app: Arc<App>, stream: UnixStream) {
    let grace = app.snapshot.load().config.shutdown_grace;
    let deadline = crate::time::rfc3339(crate::time::add_ms(crate::time::unix_ms(), grace));
    let stream = Arc::new(stream);
    let stage = app.shutdown.stage();
    loop {
        // Every connection of this generation is done: it no longer holds anything, even
        // if the process lives on (the demo keeps its backends). Closing says so.
        if *stage.borrow() == crate::shutdown::Stage::Stopped {
            return;
        }
        let view = previous_view(&app, &deadline);
        let s = Arc::clone(&stream);
        let sent = tokio::task::spawn_blocking(move || {
            fds::send(&s, &encode(&Message::Draining(view))?, &[])
        })
        .await;
        if !matches!(sent, Ok(Ok(()))) {
            return;
        }
        tokio::time::sleep(REPORT_EVERY).await;
    }
}

fn previous_view(app: &App, deadline: &str) -> PreviousView {
    let mut v = PreviousView {
        pid: std::process::id(),
        deadline: deadline.to_string(),
        ..PreviousView::default()
    };
    for pool in &app.snapshot.load().pools {
        for node in &pool.nodes {
            let s = &node.state;
            v.sessions.http_inflight += s.sessions(SessionKind::HttpInflight);
            v.sessions.tunnels += s.sessions(SessionKind::Tunnel);
            v.sessions.tcp += s.sessions(SessionKind::Tcp);
            v.nodes.insert(node.key(), s.active_sessions());
        }
    }
    v.sessions.total = v.sessions.http_inflight + v.sessions.tunnels + v.sessions.tcp;
    v
}
