//! The access log's life with the app: started with the config, replaced by a reload that
//! changes it, reopened on SIGUSR1, flushed and closed at exit.

use super::App;
use crate::config::Config;

impl App {
    /// Starts the access log `config` asks for, unless the running one already writes it
    /// (a reload then keeps it); stops it when `config` has none.
    pub(super) fn open_access_log(&self, config: &Config) -> std::io::Result<()> {
        let running = self.data.access_log.get();
        let next = match (&config.access_log, running) {
            (None, None) => return Ok(()),
            (Some(cfg), Some(log)) if log.serves(cfg) => return Ok(()),
            (Some(cfg), _) => Some(crate::access_log::AccessLog::start(cfg, &self.metrics)?),
            (None, Some(_)) => None,
        };
        // The log replaced finishes what was queued on its own once its last line is in.
        self.data.access_log.replace(next);
        Ok(())
    }

    /// Closes and opens the access log file again (SIGUSR1: logrotate moved it).
    pub fn reopen_access_log(&self) {
        match self.data.access_log.get() {
            Some(log) => {
                tracing::info!("access log: reopening the file");
                log.reopen();
            }
            None => tracing::info!("SIGUSR1: no access log to reopen"),
        }
    }

    /// Writes every queued access log line and closes the file (at exit, once the
    /// connections are done).
    pub async fn close_access_log(&self) {
        if let Some(log) = self.data.access_log.replace(None) {
            let _ = tokio::task::spawn_blocking(move || log.close()).await;
        }
    }
}
