//! The running application: the routing snapshot, metrics and shutdown, plus the control
//! plane state (listener table, health checkers) that only reloads touch.
//!
//! [`App::start`] takes sockets bound by the caller ([`bind`] for `handoff run` and tests,
//! handed over ones at a takeover) and the state carried over ([`carry`]: the state file,
//! or the old process's), so every way of starting shares one path. [`App::apply`] is the
//! reload: a [`plan`] of the listeners (keep, bind, stop) computed from the old and new
//! config, the same one start and takeover follow, then applied; a new snapshot carries node
//! state over by `pool/node`, and the health checks restart. A config or bind error changes
//! nothing.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::net::TcpListener;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config, ConfigError};

mod access_log;
pub mod carry;
mod listeners;
pub mod plan;
mod state;
mod tickets;
use crate::control::{Control, StateStore};
use crate::events::Events;
use crate::metrics::Metrics;
use crate::persist::{self, PersistError};
use crate::proxy::DataPlane;
use crate::rollout;
use crate::shutdown::Shutdown;
use crate::snapshot::Snapshot;
use listeners::ListenerTable;

/// Sockets the caller bound (or inherited) for the app to serve on.
pub struct Bound {
    /// Listening sockets by listener name.
    pub listeners: HashMap<String, TcpListener>,
    pub admin: TcpListener,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot bind listener {listener:?} on {addr}: {source}")]
    Bind {
        listener: String,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error("no socket was provided for listener {0:?}")]
    MissingSocket(String),
    #[error(
        "affinity_key_env: {var} holds {len} bytes; a shared affinity secret needs at least {min}"
    )]
    AffinitySecret { var: String, len: usize, min: usize },
    #[error(transparent)]
    State(#[from] PersistError),
    #[error("cannot start the access log writer: {0}")]
    AccessLog(io::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("no config file to reload: this instance runs an embedded config")]
    NoFile,
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Start(#[from] StartError),
    /// The new file clashes with nodes added at runtime.
    #[error("reload refused, running config kept: {0}")]
    Members(#[from] crate::members::MemberError),
}

/// Binds every listener of `config` and the admin API (a start: no socket there yet).
pub async fn bind(config: &Config) -> Result<Bound, StartError> {
    let listeners = plan::Plan::new(&Default::default(), None, config)
        .bind()
        .await?;
    let admin = bind_one("admin", config.admin.listen).await?;
    Ok(Bound { listeners, admin })
}

/// Binds one listening socket, naming it in the error.
pub async fn bind_one(name: &str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind {
            listener: name.to_string(),
            addr,
            source,
        })
}

pub struct App {
    /// The routing snapshot; the data path loads it, reloads swap it.
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub metrics: Arc<Metrics>,
    pub shutdown: Shutdown,
    /// What the data path gets: the snapshot and the shutdown tokens, nothing else.
    pub data: Arc<DataPlane>,
    /// The handle the control plane (lifecycle, rollouts, state file) works through.
    pub control: Arc<Control>,
    /// Every rollout this instance knows.
    pub rollouts: Arc<rollout::Registry>,
    /// The file `POST /v1/reload` and SIGHUP re-read; `None` for the embedded demo config.
    config_path: Option<PathBuf>,
    /// Bearer token for `/v1/*`, read from the variable named by `admin.token_env`.
    admin_token: ArcSwapOption<String>,
    listeners: Mutex<ListenerTable>,
    /// This process, as `/v1/status` shows it.
    pub process: ProcessInfo,
    /// The generation this process took over from, while it drains (`/v1/status`).
    pub previous: ArcSwapOption<carry::PreviousView>,
    /// The cluster this instance shares admin state with, once joined ([`App::join_cluster`]).
    cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
    /// The pools' DNS discovery tasks.
    discovery: crate::discovery::Discovery,
}

/// This process: `/v1/status` `process`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ProcessInfo {
    pub pid: u32,
    /// handoff's version.
    pub version: String,
    /// RFC 3339.
    pub started_at: String,
    /// Takeovers since the first start, plus one.
    pub generation: u64,
}

impl App {
    /// Starts serving `config` on the listening sockets in `listeners` (by listener name).
    /// The state file is read and applied first, so no listener accepts and no checker runs
    /// before a restored drained node is drained. The admin API is the caller's to serve
    /// ([`crate::admin::serve`]).
    pub async fn start(
        config: Config,
        config_path: Option<PathBuf>,
        listeners: HashMap<String, TcpListener>,
        shutdown: Shutdown,
    ) -> Result<Arc<App>, StartError> {
        App::start_with(config, config_path, listeners, shutdown, None).await
    }

    /// [`App::start`], taking over the runtime state of another process (`inherited`)
    /// instead of reading the state file.
    pub async fn start_with(
        config: Config,
        config_path: Option<PathBuf>,
        mut listeners: HashMap<String, TcpListener>,
        shutdown: Shutdown,
        inherited: Option<carry::Handover>,
    ) -> Result<Arc<App>, StartError> {
        let metrics = Arc::new(Metrics::new());
        let events = Arc::new(Events::default());
        let state_path = config.state_file.clone();
        // What the previous process left: handed over at a takeover, else the state file.
        let carried: Option<carry::CarryOver> = match (inherited, &state_path) {
            (Some(h), _) => Some(h.into()),
            (None, Some(path)) => persist::load(path)?.map(Into::into),
            (None, None) => None,
        };
        let keys = state::affinity_keys(
            &config,
            carried.as_ref().and_then(|c| c.affinity_key.as_deref()),
        )?;
        let keys = match &config.cluster {
            Some(cluster) => crate::cluster::shared_keys(cluster, keys).await,
            None => keys,
        };
        let generation = carried.as_ref().map_or(0, |c| c.generation) + 1;
        // Nodes added, changed or removed at runtime, as the previous process left them.
        let members = carried
            .as_ref()
            .map(|c| c.membership.clone())
            .unwrap_or_default();
        let (membership, dropped) = members.fit(&config);
        for why in dropped {
            tracing::warn!("runtime member change dropped: {why}");
        }
        let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot::build_with_keys(
            membership.effective(&config),
            None,
            keys,
            &metrics,
            &events,
        )));
        let rollouts = Arc::new(rollout::Registry::new(config.cluster.is_some(), &events));
        let (store, writer) = match &state_path {
            Some(_) => {
                let (store, writer) = StateStore::new();
                (Some(store), Some(writer))
            }
            None => (None, None),
        };
        let control = Arc::new(Control::new(
            Arc::clone(&snapshot),
            Arc::clone(&metrics),
            Arc::clone(&events),
            shutdown.force.clone(),
            store,
        ));
        control.set_members(config.clone(), membership);
        let data = Arc::new(DataPlane {
            snapshot: Arc::clone(&snapshot),
            shutdown: shutdown.clone(),
            access_log: Default::default(),
        });
        let app = Arc::new(App {
            data,
            snapshot,
            metrics,
            shutdown,
            control,
            rollouts,
            admin_token: ArcSwapOption::new(token_from_env(&config).map(Arc::new)),
            config_path,
            listeners: Mutex::new(ListenerTable {
                listeners: HashMap::new(),
            }),
            process: ProcessInfo {
                pid: std::process::id(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                started_at: crate::time::rfc3339(crate::time::unix_ms()),
                generation,
            },
            previous: ArcSwapOption::empty(),
            cluster: std::sync::OnceLock::new(),
            discovery: Default::default(),
        });
        if let (Some(path), Some(writer)) = (state_path, writer) {
            tokio::spawn(persist::writer(
                Arc::clone(&app.control),
                Arc::clone(&app.rollouts),
                path,
                writer,
            ));
        }
        tokio::spawn(tickets::rotate(Arc::downgrade(&app)));
        tokio::spawn(roll_traffic(
            Arc::clone(&app.snapshot),
            Arc::clone(&app.metrics),
            app.shutdown.force.clone(),
        ));
        app.open_access_log(&config)
            .map_err(StartError::AccessLog)?;
        if let Some(carried) = carried {
            carry::apply(&app, carried);
        }
        // Written once at start, so the affinity key is on disk before the first cookie.
        app.control.mark_dirty();
        {
            let mut table = app.listeners.lock().await;
            for l in &config.listeners {
                let socket = listeners
                    .remove(&l.name)
                    .ok_or_else(|| StartError::MissingSocket(l.name.clone()))?;
                let entry = app.start_listener(l, socket, None);
                table.listeners.insert(l.name.clone(), entry);
            }
            app.control.restart_health();
            app.discovery.sync(&app.control, &config);
        }
        tracing::info!(
            listeners = config.listeners.len(),
            pools = config.pools.len(),
            "handoff started"
        );
        Ok(app)
    }

    /// Re-reads the config file and applies it.
    pub async fn reload(self: &Arc<Self>) -> Result<(), ReloadError> {
        let result = self.reload_inner().await;
        let outcome = if result.is_ok() { "ok" } else { "failed" };
        self.metrics.reloads.with_label_values(&[outcome]).inc();
        match &result {
            Ok(()) => tracing::info!("config reloaded"),
            Err(e) => tracing::warn!(error = %e, "config reload refused; running config kept"),
        }
        result
    }

    async fn reload_inner(self: &Arc<Self>) -> Result<(), ReloadError> {
        let path = self.config_path.clone().ok_or(ReloadError::NoFile)?;
        // Loading may resolve host names: keep it off the async workers.
        let config = tokio::task::spawn_blocking(move || config::load(&path))
            .await
            .map_err(|e| {
                ReloadError::Config(ConfigError::Read {
                    path: PathBuf::new(),
                    source: io::Error::other(e.to_string()),
                })
            })??;
        self.apply(config).await
    }

    /// Applies a validated config: nothing changes unless every new listener could be bound.
    pub async fn apply(self: &Arc<Self>, config: Config) -> Result<(), ReloadError> {
        let mut control = self.listeners.lock().await;
        // Nodes added at runtime under a name the new file now uses: refused before anything.
        self.control.rebased(&config)?;
        let have = control
            .listeners
            .iter()
            .map(|(name, e)| (name.clone(), e.configured))
            .collect();
        let plan = plan::Plan::new(&have, Some(&self.snapshot.load().config), &config);
        let mut fresh = plan.bind().await?;
        for setting in &plan.later {
            tracing::warn!(setting, "changed: it takes effect at the next restart");
        }
        // The runtime member changes the file left alone are kept; the health checkers
        // restart with the new snapshot (a result probed at a node's old address is ignored
        // by address epoch).
        self.control.install_file(config.clone())?;
        if let Err(e) = self.open_access_log(&config) {
            tracing::warn!(error = %e, "the new access log could not be started; the old one goes on");
        }
        self.discovery.sync(&self.control, &config);
        self.admin_token
            .store(token_from_env(&config).map(Arc::new));
        let mut stopped_stats = HashMap::new();
        for name in &plan.stop {
            if let Some(entry) = control.listeners.remove(name) {
                // Its connections go on; only accepting stops.
                entry.stop.cancel();
                tracing::info!(listener = %name, addr = %entry.local, "listener stopped");
                stopped_stats.insert(name.clone(), entry.stats);
            }
        }
        for l in &config.listeners {
            if let Some(socket) = fresh.remove(&l.name) {
                let entry = self.start_listener(l, socket, stopped_stats.remove(&l.name));
                control.listeners.insert(l.name.clone(), entry);
            }
        }
        Ok(())
    }

    /// A takeover hands this process's state to another: from now on admin writes answer
    /// 503, the state file is the new process's, and the rollouts are driven there.
    pub fn pause_for_takeover(&self) {
        self.control.set_handing_over(true);
        self.rollouts.pause();
    }

    /// The takeover failed: this process carries on as before (state file, admin writes,
    /// rollouts driven here again).
    pub fn resume_after_takeover(&self) {
        self.control.set_handing_over(false);
        rollout::Registry::resume(&self.control, &self.rollouts);
    }

    /// What the draining previous generation still holds (`None` once it exited): shown in
    /// `/v1/status`, and waited for by this process's drains of the same nodes.
    pub fn note_previous(&self, view: Option<carry::PreviousView>) {
        for pool in &self.snapshot.load().pools {
            for node in &pool.nodes {
                let held = view
                    .as_ref()
                    .and_then(|v| v.nodes.get(&node.key()).copied())
                    .unwrap_or(0);
                node.state.set_previous_sessions(held);
            }
        }
        self.previous.store(view.map(Arc::new));
    }

    pub fn admin_token(&self) -> Option<Arc<String>> {
        self.admin_token.load_full()
    }
}

/// Takes every node's traffic sample for the sliding window, every
/// [`traffic::WINDOW_STEP`](crate::pool::traffic::WINDOW_STEP), until `stop`.
/// Every few seconds: rolls the nodes' traffic windows, closes idle backend connections the
/// backend closed or that grew too old, and gives memory back after a burst of connections
/// ended ([`crate::memory`]).
async fn roll_traffic(
    snapshot: Arc<ArcSwap<Snapshot>>,
    metrics: Arc<crate::metrics::Metrics>,
    stop: CancellationToken,
) {
    let mut trimmer = crate::memory::Trimmer::default();
    let mut tick = tokio::time::interval(crate::pool::traffic::WINDOW_STEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        for pool in &snapshot.load().pools {
            for node in &pool.nodes {
                node.state.traffic.roll();
                node.idle.sweep();
            }
        }
        trimmer.look(&metrics);
    }
}

fn token_from_env(config: &Config) -> Option<String> {
    let var = config.admin.token_env.as_deref()?;
    std::env::var(var).ok().filter(|t| !t.is_empty())
}
