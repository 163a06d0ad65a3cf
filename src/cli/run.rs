//! `handoff run -c FILE`: serve until SIGTERM/SIGINT; SIGHUP reloads.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::app::{self, App};
use crate::config;
use crate::shutdown::Shutdown;

pub fn run(path: PathBuf, threads: Option<usize>) -> anyhow::Result<i32> {
    let config = match config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return Ok(1);
        }
    };
    let rt = super::runtime(threads).context("starting the runtime")?;
    rt.block_on(async move {
        // Before anything else: a SIGHUP sent the moment the process starts is a reload
        // request, queued until the app serves, never the default "terminate".
        let signals = Signals::install()?;
        super::init_logging();
        let bound = app::bind(&config).await?;
        let app = App::start(config, Some(path), bound.listeners, Shutdown::new()).await?;
        crate::admin::spawn(&app, bound.admin).context("starting the admin API")?;
        serve_until_signal(app, signals).await
    })
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
}

/// Serves until SIGTERM or SIGINT, reloading on SIGHUP; then drains within the grace period.
pub async fn serve_until_signal(app: Arc<App>, mut signals: Signals) -> anyhow::Result<i32> {
    loop {
        tokio::select! {
            _ = signals.hup.recv() => {
                // The outcome is logged and counted by reload itself.
                let _ = app.reload().await;
            }
            _ = signals.term.recv() => break,
            _ = signals.int.recv() => break,
        }
    }
    let grace = app.snapshot.load().config.shutdown_grace;
    tracing::info!(grace = %config::duration::format(grace), "shutting down: draining connections");
    let cut = app.shutdown.run(grace).await;
    app.flush_state().await;
    tracing::info!(cut, "stopped");
    Ok(0)
}
