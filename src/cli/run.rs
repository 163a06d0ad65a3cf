//! `handoff run -c FILE`: serve until SIGTERM/SIGINT; SIGHUP reloads.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};

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
    super::init_logging();
    let rt = super::runtime(threads).context("starting the runtime")?;
    rt.block_on(async move {
        let bound = app::bind(&config).await?;
        let app = App::start(config, Some(path), bound, Shutdown::new()).await?;
        serve_until_signal(app).await
    })
}

/// Serves until SIGTERM or SIGINT, reloading on SIGHUP; then drains within the grace period.
pub async fn serve_until_signal(app: Arc<App>) -> anyhow::Result<i32> {
    let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                // The outcome is logged and counted by reload itself.
                let _ = app.reload().await;
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    let grace = app.snapshot.load().config.shutdown_grace;
    tracing::info!(grace = %config::duration::format(grace), "shutting down: draining connections");
    let cut = app.shutdown.run(grace).await;
    app.flush_state().await;
    tracing::info!(cut, "stopped");
    Ok(0)
}
