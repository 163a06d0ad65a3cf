//! Command line (README.md, "CLI"): `run`, `check`, `demo`, `ctl`, and `completions` and `man`
//! for packagers.

mod admin_client;
mod check;
mod ctl;
mod ctl_render;
mod ctl_watch;
mod demo;
mod demo_cluster;
mod demo_replace;
mod hook_guard;
mod run;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub use ctl::CtlCommand;

#[derive(Debug, Parser)]
#[command(name = "handoff", version, about = "Upgrade-aware L4/L7 load balancer")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the configuration (SIGHUP reloads it, SIGTERM drains and exits).
    Run {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Worker threads (default: number of cores), one single-threaded runtime each,
        /// each client connection kept on one; 1 runs everything on one thread.
        #[arg(long, env = "HANDOFF_WORKER_THREADS", value_parser = threads_range())]
        threads: Option<usize>,
        /// Take over from the handoff running with this config's `upgrade.socket`: its
        /// listening sockets and runtime state, without refusing a connection.
        #[arg(long)]
        upgrade: bool,
        /// Log lines as text, or as one JSON object per line (timestamp, level, message,
        /// the event's fields, target).
        #[arg(long, value_enum, env = "HANDOFF_LOG_FORMAT", default_value = "text")]
        log_format: LogFormat,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) to stdout: `handoff man > handoff.1`.
    Man,
    /// Validate a configuration file; exit 1 with every error.
    Check {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Start two demo backends and a proxy in front of them, with an embedded config.
    Demo {
        /// Proxy address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Admin API address.
        #[arg(long, default_value = crate::config::defaults::ADMIN_LISTEN)]
        admin: String,
        /// Worker threads, as for `run`.
        #[arg(long, env = "HANDOFF_WORKER_THREADS", value_parser = threads_range())]
        threads: Option<usize>,
        /// Two instances sharing their admin state through a local etcd (needs the `etcd`
        /// server on PATH; Debian: etcd-server). The second listens one port above each of
        /// --listen and --admin.
        #[arg(long)]
        cluster: bool,
    },
    /// The demo's rollout hook (internal).
    #[command(hide = true)]
    DemoUpgrade,
    /// The demo's replace-rollout hook (internal).
    #[command(hide = true)]
    DemoReplace { dir: PathBuf },
    /// Runs a cluster rollout's hook and kills its process group when the driver's lease
    /// could expire (internal: handoff starts it).
    #[command(hide = true)]
    HookGuard {
        /// Time left under the lease at start; each line on stdin renews it.
        #[arg(long)]
        within_ms: u64,
        #[arg(last = true, required = true)]
        command: Vec<std::ffi::OsString>,
    },
    /// One demo backend (what `demo` runs twice in process): answers with its name and
    /// version, `/healthz` with `X-Version`; a version ending in `-bad` fails every third
    /// request. The compose demo in docker/ runs it in each backend container.
    DemoBackend {
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "1.0.0")]
        version: String,
        #[arg(long, default_value = "0.0.0.0:8000")]
        listen: String,
    },
    /// Talk to a running handoff's admin API.
    Ctl {
        /// Admin API base URL.
        #[arg(long, env = "HANDOFF_ADMIN", default_value = "http://127.0.0.1:9901")]
        admin: String,
        /// Bearer token (when the server sets admin.token_env).
        #[arg(long, env = "HANDOFF_ADMIN_TOKEN")]
        token: Option<String>,
        /// Print the API's JSON instead of a table.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: CtlCommand,
    },
}

/// Runs a command; returns the process exit code.
pub fn main(cli: Cli) -> i32 {
    // This binary can watch a cluster rollout's hooks from outside (`hook-guard`).
    crate::rollout::use_hook_guard("/proc/self/exe".into());
    let result = match cli.command {
        Command::Run {
            config,
            threads,
            upgrade,
            log_format,
        } => {
            let _ = LOG_FORMAT.set(log_format);
            run::run(config, threads, upgrade)
        }
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "handoff", &mut std::io::stdout());
            Ok(0)
        }
        Command::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(cmd)
                .render(&mut std::io::stdout())
                .map(|()| 0)
                .map_err(Into::into)
        }
        Command::Check { config } => Ok(check::check(&config)),
        Command::Demo {
            listen,
            admin,
            threads,
            cluster: false,
        } => demo::demo(&listen, &admin, threads),
        Command::Demo {
            listen,
            admin,
            threads,
            cluster: true,
        } => demo_cluster::demo(&listen, &admin, threads),
        Command::DemoUpgrade => demo::upgrade_hook(),
        Command::DemoReplace { dir } => demo_replace::hook(&dir),
        Command::HookGuard { within_ms, command } => {
            hook_guard::run(std::time::Duration::from_millis(within_ms), &command)
        }
        Command::DemoBackend {
            name,
            version,
            listen,
        } => demo::backend(&listen, name, version),
        Command::Ctl {
            admin,
            token,
            json,
            command,
        } => ctl::ctl(&admin, token.as_deref(), json, command),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("handoff: {e:#}");
            1
        }
    }
}

/// Logs to stderr; `RUST_LOG` overrides the default level (info).
pub fn init_logging() {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // The h2 crate warns about every PING ACK a client sends unasked: any client could fill
    // the log at will. Kept at debug's side unless RUST_LOG names it.
    let asked = std::env::var("RUST_LOG").is_ok_and(|v| v.contains("ping_pong"));
    if !asked {
        if let Ok(quiet) = "h2::proto::ping_pong=error".parse() {
            filter = filter.add_directive(quiet);
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match LOG_FORMAT.get().copied().unwrap_or_default() {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
    };
}

/// How log lines are written (`run --log-format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The format `run` asked for, read when logging starts.
static LOG_FORMAT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

/// `--threads` / `HANDOFF_WORKER_THREADS`: 1 to [`MAX_THREADS`].
fn threads_range() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(1..=MAX_THREADS)
}

/// Most worker threads accepted: far above any core count handoff is run on, far below
/// what would exhaust the process's threads.
pub const MAX_THREADS: u64 = 1024;

/// The main thread's runtime, and `threads` worker threads for the data path (default: one
/// per core). One: everything on the one single-threaded runtime. More: the control plane
/// on the main thread's, each client connection on one worker's (see [`crate::workers`]).
pub fn runtime(threads: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let n = threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    if n > 1 {
        crate::workers::start(n)?;
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}
