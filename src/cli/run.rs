//! `handoff run -c FILE [--upgrade]`: serve until SIGTERM/SIGINT; SIGHUP reloads; SIGUSR1
//! reopens the access log; a new
//! process started with `--upgrade` (by hand, or by this one on SIGUSR2) takes over and this
//! one drains and exits.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::app::{self, App};
use crate::config::{self, Config};
use crate::shutdown::Shutdown;
use crate::upgrade;

pub fn run(path: PathBuf, threads: Option<usize>, take_over: bool) -> anyhow::Result<i32> {
    // Resolved now, before an upgrade replaces the binary on disk: SIGUSR2 starts whatever
    // is at this path then.
    let successor = Successor {
        exe: std::env::current_exe().context("locating the handoff binary")?,
        config: std::path::absolute(&path).unwrap_or_else(|_| path.clone()),
        threads,
    };
    let config = match config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return Ok(1);
        }
    };
    let rt = super::runtime(threads).context("starting the runtime")?;
    let code = rt.block_on(async move {
        // Before anything else: a SIGHUP sent the moment the process starts is a reload
        // request, queued until the app serves, never the default "terminate".
        let signals = Signals::install()?;
        super::init_logging();
        raise_fd_limit(&config);
        let (listeners, admin, inherited) = if take_over {
            match upgrade::take_over(&config).await {
                Ok(mut inherited) => {
                    let listeners = bind_missing(&config, std::mem::take(&mut inherited.listeners)).await?;
                    let admin = match inherited.admin.take() {
                        Some(a) => a,
                        None => app::bind_one("admin", config.admin.listen).await?,
                    };
                    (listeners, admin, Some(inherited))
                }
                Err(e) => {
                    eprintln!("{}: takeover failed: {e}", path.display());
                    return Ok(1);
                }
            }
        } else {
            let bound = app::bind(&config).await?;
            (bound.listeners, bound.admin, None)
        };
        let upgrade_path = config.upgrade.socket.clone();
        let admin_for_handover = (config.admin.listen, admin.as_fd().try_clone_to_owned()?);
        let (state, link) = match inherited {
            Some(mut i) => (Some(std::mem::take(&mut i.state)), Some(i)),
            None => (None, None),
        };
        let app = App::start_with(config, Some(path), listeners, Shutdown::new(), state).await?;
        let admin_addr = crate::admin::spawn(&app, admin).context("starting the admin API")?;
        if let Some(link) = link {
            if let Err(e) = link.confirm(&app).await {
                eprintln!("takeover failed at confirmation: {e}");
                return Ok(1);
            }
            tracing::info!(generation = app.process.generation, "took over from the previous generation");
        }
        app.join_cluster(admin_addr);
        let handed_over = CancellationToken::new();
        match if take_over { upgrade::rebind(&upgrade_path) } else { upgrade::bind(&upgrade_path) } {
            Ok(unix) => {
                tokio::spawn(upgrade::serve(Arc::clone(&app), unix, admin_for_handover, handed_over.clone()));
            }
            Err(e) => {
                tracing::warn!(socket = %upgrade_path.display(), error = %e, "self-upgrade unavailable: cannot listen on the upgrade socket");
            }
        }
        // systemd (Type=notify): serving now. After a takeover this process is the service's
        // main process from here on (the unit needs NotifyAccess=all for that).
        notify(&[sd_notify::NotifyState::MainPid(std::process::id()), sd_notify::NotifyState::Ready]);
        let mut signals = signals;
        serve_until_signal(app, &mut signals, handed_over, Some(&successor)).await
    });
    // A thread may still be blocked reading what an earlier generation reports about its
    // drain: it must not hold this process's exit.
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    code
}

/// The listeners of a takeover: the sockets handed over (the ones the new config keeps),
/// and the rest bound here, by the same plan a reload follows.
async fn bind_missing(
    config: &Config,
    mut inherited: HashMap<String, TcpListener>,
) -> anyhow::Result<HashMap<String, TcpListener>> {
    let have = config
        .listeners
        .iter()
        .filter(|l| inherited.contains_key(&l.name))
        .map(|l| (l.name.clone(), l.listen))
        .collect();
    let plan = app::plan::Plan::new(&have, None, config);
    let mut listeners = plan.bind().await?;
    for name in plan.keep {
        if let Some(socket) = inherited.remove(&name) {
            listeners.insert(name, socket);
        }
    }
    Ok(listeners)
}

/// The signals `run` and `demo` act on, installed before the app starts.
pub struct Signals {
    hup: Signal,
    term: Signal,
    int: Signal,
    usr1: Signal,
    usr2: Signal,
}

impl Signals {
    pub fn install() -> anyhow::Result<Signals> {
        Ok(Signals {
            usr1: signal(SignalKind::user_defined1()).context("installing SIGUSR1 handler")?,
            usr2: signal(SignalKind::user_defined2()).context("installing SIGUSR2 handler")?,
            hup: signal(SignalKind::hangup()).context("installing SIGHUP handler")?,
            term: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
        })
    }

    /// Until SIGTERM or SIGINT.
    pub async fn stopped(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// What SIGUSR2 starts: the binary now at the path this process was started from, taking
/// over with the same config (NGINX's binary upgrade; under systemd the new process is in
/// the service's cgroup, so it can become the main process).
pub struct Successor {
    exe: PathBuf,
    config: PathBuf,
    threads: Option<usize>,
}

impl Successor {
    /// Starts `run -c CONFIG --upgrade`; a task reaps it and logs a failed attempt (this
    /// process then simply keeps serving).
    fn start(&self) {
        let mut cmd = tokio::process::Command::new(&self.exe);
        cmd.arg("run")
            .arg("-c")
            .arg(&self.config)
            .arg("--upgrade")
            .stdin(std::process::Stdio::null());
        if let Some(n) = self.threads {
            cmd.arg("--threads").arg(n.to_string());
        }
        if super::LOG_FORMAT.get() == Some(&super::LogFormat::Json) {
            cmd.args(["--log-format", "json"]);
        }
        match cmd.spawn() {
            Ok(mut child) => {
                tracing::info!(exe = %self.exe.display(), pid = child.id().unwrap_or(0), "SIGUSR2: started a new process to take over");
                tokio::spawn(async move {
                    match child.wait().await {
                        Ok(s) if s.success() => {}
                        Ok(s) => {
                            tracing::warn!(status = %s, "the new process exited: self-upgrade failed, serving on")
                        }
                        Err(e) => tracing::warn!(error = %e, "waiting for the new process failed"),
                    }
                });
            }
            Err(e) => {
                tracing::warn!(exe = %self.exe.display(), error = %e, "SIGUSR2: could not start a new process; serving on")
            }
        }
    }
}

/// Serves until SIGTERM or SIGINT, or until a new generation took over (`handed_over`),
/// reloading on SIGHUP and starting a successor on SIGUSR2 (`run` only); then drains within
/// the grace period.
pub async fn serve_until_signal(
    app: Arc<App>,
    signals: &mut Signals,
    handed_over: CancellationToken,
    successor: Option<&Successor>,
) -> anyhow::Result<i32> {
    let replaced = loop {
        tokio::select! {
            _ = signals.usr2.recv() => match successor {
                Some(s) => s.start(),
                None => tracing::info!("SIGUSR2 ignored: the demo's backends live in this process"),
            },
            // logrotate's postrotate: the file was moved; lines go to a new one.
            _ = signals.usr1.recv() => app.reopen_access_log(),
            _ = signals.hup.recv() => {
                notify(&[sd_notify::NotifyState::Reloading]);
                // The outcome is logged and counted by reload itself.
                let _ = app.reload().await;
                notify(&[sd_notify::NotifyState::Ready]);
            }
            _ = signals.term.recv() => break false,
            _ = signals.int.recv() => break false,
            _ = handed_over.cancelled() => break true,
        }
    };
    if !replaced {
        notify(&[sd_notify::NotifyState::Stopping]);
    }
    let grace = app.snapshot.load().config.shutdown_grace;
    tracing::info!(grace = %config::duration::format(grace), replaced, "shutting down: draining connections");
    let cut = if replaced {
        // The new generation is this cluster instance now: it publishes under the name.
        app.leave_cluster().await;
        app.shutdown.retire(grace).await
    } else {
        let cut = app.shutdown.run(grace).await;
        // Sessions held here stayed counted cluster-wide until they ended.
        app.leave_cluster().await;
        cut
    };
    // After a takeover the state file is the new generation's: this flush writes nothing.
    app.flush_state().await;
    // The lines of every exchange this process served are in the file before it exits
    // (after a takeover, the new generation appends its own beside them).
    app.close_access_log().await;
    tracing::info!(cut, "stopped");
    Ok(0)
}

/// Tells systemd (when it started this process with `NOTIFY_SOCKET`) how the service is;
/// nothing without it. A failure is logged, never fatal: serving matters more.
fn notify(states: &[sd_notify::NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "could not notify systemd");
    }
}

/// Raises the soft limit on open files to the hard one (as HAProxy does from its maxconn,
/// and Go's runtime at start): the distributions' soft default, 1,024, is far below what
/// `max_connections` allows, and a listener out of descriptors can accept no one. Warns when
/// even the hard limit is below what the listeners may need (a client and a backend socket
/// per connection).
pub(super) fn raise_fd_limit(config: &Config) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft < hard {
        if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            tracing::warn!(error = %e, soft, hard, "could not raise the open-file limit");
        }
    }
    let need: u64 = config
        .listeners
        .iter()
        .map(|l| 2 * l.max_connections as u64)
        .sum::<u64>()
        + 256;
    if hard < need {
        tracing::warn!(limit = hard, need, "the open-file limit is below twice the listeners' max_connections: raise it (LimitNOFILE= under systemd, ulimit -n) or lower max_connections");
    }
}
