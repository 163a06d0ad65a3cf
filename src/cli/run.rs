//! `handoff run -c FILE [--upgrade]`: serve until SIGTERM/SIGINT; SIGHUP reloads; a new
//! process started with `--upgrade` takes over and this one drains and exits.

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
        serve_until_signal(app, &mut signals, handed_over).await
    });
    // A thread may still be blocked reading what an earlier generation reports about its
    // drain: it must not hold this process's exit.
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    code
}

/// Binds the listeners a takeover did not hand over (new, or moved to another address).
async fn bind_missing(
    config: &Config,
    mut inherited: HashMap<String, TcpListener>,
) -> anyhow::Result<HashMap<String, TcpListener>> {
    let mut listeners = HashMap::new();
    for l in &config.listeners {
        let socket = match inherited.remove(&l.name) {
            Some(s) => s,
            None => app::bind_one(&l.name, l.listen).await?,
        };
        listeners.insert(l.name.clone(), socket);
    }
    Ok(listeners)
}

/// The signals `run` and `demo` act on, installed before the app starts.
pub struct Signals {
    hup: Signal,
    term: Signal,
    int: Signal,
}

impl Signals {
    pub fn install() -> anyhow::Result<Signals> {
        Ok(Signals {
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

/// Serves until SIGTERM or SIGINT, or until a new generation took over (`handed_over`),
/// reloading on SIGHUP; then drains within the grace period.
pub async fn serve_until_signal(
    app: Arc<App>,
    signals: &mut Signals,
    handed_over: CancellationToken,
) -> anyhow::Result<i32> {
    let replaced = loop {
        tokio::select! {
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
