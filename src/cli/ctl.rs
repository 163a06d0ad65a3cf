//! `handoff ctl`: a thin client of the admin API, with human output by default and `--json`
//! for scripts. Exit codes: 0 success; 1 the API refused (its error is printed); 2 the admin
//! API could not be reached; 3 conflict (409: pair guard, rollout already running); 4 timed
//! out (504: `wait`, or a cluster write whose outcome is unknown); 5 the rollout failed or
//! was aborted (`rollout status`).

use anyhow::{bail, Context};
use clap::Subcommand;
use http::{Method, StatusCode, Uri};
use serde_json::{json, Value};

use super::ctl_render as render;
use crate::admin::views::{NodeView, StatusView};
use crate::rollout::Rollout;

#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Every pool and node, and every rollout.
    Status,
    /// Stop sending new sessions to a node; it becomes drained when its last session ends.
    Drain {
        /// POOL/NODE
        target: String,
        /// Drain deadline (default: the pool's drain.timeout).
        #[arg(long)]
        timeout: Option<String>,
        /// Override the pair guard.
        #[arg(long)]
        force: bool,
    },
    /// Readmit a drained node: warming once healthy, then active after the warmup.
    Enable {
        /// POOL/NODE
        target: String,
        #[arg(long)]
        warmup: Option<String>,
    },
    /// Block until a node reaches a state (active, draining, drained, warming, up, down).
    Wait {
        /// POOL/NODE
        target: String,
        #[arg(long)]
        state: String,
        #[arg(long, default_value = "60s")]
        timeout: String,
    },
    /// Rollouts: start, status, abort.
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// A pool's members at runtime: add, set (weight, address), remove.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Re-read the config file of the running handoff.
    Reload,
    /// The cluster this instance belongs to: connected or not, who drives each rollout, and
    /// every live instance with the sessions it holds.
    Cluster,
    /// Follow events as they happen (node state, health and version changes, rollout steps,
    /// drains done, deadline closes), of every pool or of POOL; until interrupted.
    Watch {
        /// Only this pool's events.
        pool: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Upgrade every node of POOL, one at a time, to VERSION.
    Start {
        pool: String,
        #[arg(long)]
        version: String,
        /// Node order, comma-separated (default: config order).
        #[arg(long, value_delimiter = ',')]
        order: Option<Vec<String>>,
        #[arg(long)]
        drain_timeout: Option<String>,
        #[arg(long)]
        ready_timeout: Option<String>,
        #[arg(long)]
        warmup: Option<String>,
    },
    /// One rollout with its timeline, or every rollout without ID.
    Status { id: Option<String> },
    /// Stop a rollout after its current step.
    Abort { id: String },
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Add node POOL/NODE at ADDR (IP:PORT): it takes sessions once up, warming up; with
    /// --drained it is held out until enabled.
    Add {
        /// POOL/NODE
        target: String,
        addr: String,
        #[arg(long)]
        weight: Option<u32>,
        #[arg(long)]
        drained: bool,
        /// The node a replace rollout (without a hook) is provisioning: this one replaces it.
        #[arg(long)]
        replaces: Option<String>,
    },
    /// Change a node's weight, or its address (only while drained with no session).
    Set {
        /// POOL/NODE
        target: String,
        #[arg(long)]
        weight: Option<u32>,
        #[arg(long)]
        addr: Option<String>,
    },
    /// Remove a node: at once when drained with no session; with --drain, drain it and
    /// remove it once drained.
    Remove {
        /// POOL/NODE
        target: String,
        #[arg(long)]
        drain: bool,
        /// Override the pair guard (with --drain).
        #[arg(long)]
        force: bool,
        /// The drain's deadline (with --drain).
        #[arg(long)]
        timeout: Option<String>,
    },
}

const REFUSED: i32 = 1;
const UNREACHABLE: i32 = 2;
const CONFLICT: i32 = 3;
const TIMED_OUT: i32 = 4;
const ROLLOUT_NOT_OK: i32 = 5;

pub fn ctl(
    admin: &str,
    token: Option<&str>,
    json: bool,
    command: CtlCommand,
) -> anyhow::Result<i32> {
    if let CtlCommand::Watch { pool } = &command {
        return super::ctl_watch::watch(admin, token, json, pool.as_deref());
    }
    let base: Uri = admin
        .parse()
        .with_context(|| format!("invalid --admin URL {admin:?}"))?;
    let (method, path, body) = request_for(&command)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (status, bytes) =
        match rt.block_on(super::admin_client::call(&base, token, method, &path, body)) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("handoff ctl: cannot reach the admin API at {admin}: {e:#}");
                return Ok(UNREACHABLE);
            }
        };
    let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let code = match status {
        s if s.is_success() => 0,
        StatusCode::CONFLICT => CONFLICT,
        StatusCode::GATEWAY_TIMEOUT => TIMED_OUT,
        _ => REFUSED,
    };
    if json {
        println!("{}", String::from_utf8_lossy(&bytes).trim_end());
    } else if code == REFUSED || code == CONFLICT || value["error"].is_string() {
        // A 504 with an error (a cluster write whose outcome is unknown) is said as one.
        let error = value["error"].as_str().unwrap_or("request refused");
        eprintln!("handoff ctl: {error} ({status})");
        if let Some(detail) = value.get("detail").filter(|d| !d.is_null()) {
            eprintln!("{}", render::detail(detail));
        }
    } else {
        print!("{}", human(&command, &value, code)?);
    }
    if code == 0 {
        if let CtlCommand::Rollout(RolloutCommand::Status { id: Some(_) }) = &command {
            if matches!(value["state"].as_str(), Some("failed" | "aborted")) {
                return Ok(ROLLOUT_NOT_OK);
            }
        }
    }
    Ok(code)
}

fn split_target(target: &str) -> anyhow::Result<(&str, &str)> {
    match target.split_once('/') {
        Some((p, n)) if !p.is_empty() && !n.is_empty() && !n.contains('/') => Ok((p, n)),
        _ => bail!("expected POOL/NODE, got {target:?}"),
    }
}

fn request_for(command: &CtlCommand) -> anyhow::Result<(Method, String, Option<Value>)> {
    Ok(match command {
        CtlCommand::Status => (Method::GET, "/v1/status".into(), None),
        CtlCommand::Reload => (Method::POST, "/v1/reload".into(), None),
        CtlCommand::Cluster => (Method::GET, "/v1/cluster".into(), None),
        CtlCommand::Watch { .. } => bail!("watch follows a stream (see ctl_watch)"),
        CtlCommand::Drain {
            target,
            timeout,
            force,
        } => {
            let (p, n) = split_target(target)?;
            let mut body = json!({ "force": force });
            if let Some(t) = timeout {
                body["timeout"] = json!(t);
            }
            (
                Method::POST,
                format!("/v1/pools/{p}/nodes/{n}/drain"),
                Some(body),
            )
        }
        CtlCommand::Enable { target, warmup } => {
            let (p, n) = split_target(target)?;
            let body = warmup.as_ref().map(|w| json!({ "warmup": w }));
            (
                Method::POST,
                format!("/v1/pools/{p}/nodes/{n}/enable"),
                body,
            )
        }
        CtlCommand::Wait {
            target,
            state,
            timeout,
        } => {
            let (p, n) = split_target(target)?;
            (
                Method::GET,
                format!("/v1/pools/{p}/nodes/{n}/wait?state={state}&timeout={timeout}"),
                None,
            )
        }
        CtlCommand::Node(NodeCommand::Add {
            target,
            addr,
            weight,
            drained,
            replaces,
        }) => {
            let (p, n) = split_target(target)?;
            let mut body = json!({ "name": n, "addr": addr });
            if let Some(old) = replaces {
                body["replaces"] = json!(old);
            }
            if let Some(w) = weight {
                body["weight"] = json!(w);
            }
            if *drained {
                body["state"] = json!("drained");
            }
            (Method::POST, format!("/v1/pools/{p}/nodes"), Some(body))
        }
        CtlCommand::Node(NodeCommand::Set {
            target,
            weight,
            addr,
        }) => {
            let (p, n) = split_target(target)?;
            let mut body = json!({});
            if let Some(w) = weight {
                body["weight"] = json!(w);
            }
            if let Some(a) = addr {
                body["addr"] = json!(a);
            }
            (
                Method::PATCH,
                format!("/v1/pools/{p}/nodes/{n}"),
                Some(body),
            )
        }
        CtlCommand::Node(NodeCommand::Remove {
            target,
            drain,
            force,
            timeout,
        }) => {
            let (p, n) = split_target(target)?;
            let mut query = format!("drain={drain}&force={force}");
            if let Some(t) = timeout {
                query.push_str(&format!("&timeout={t}"));
            }
            (
                Method::DELETE,
                format!("/v1/pools/{p}/nodes/{n}?{query}"),
                None,
            )
        }
        CtlCommand::Rollout(RolloutCommand::Start {
            pool,
            version,
            order,
            drain_timeout,
            ready_timeout,
            warmup,
        }) => {
            let mut body = json!({ "version": version });
            for (k, v) in [
                ("drain_timeout", drain_timeout),
                ("ready_timeout", ready_timeout),
                ("warmup", warmup),
            ] {
                if let Some(v) = v {
                    body[k] = json!(v);
                }
            }
            if let Some(order) = order {
                body["order"] = json!(order);
            }
            (
                Method::POST,
                format!("/v1/pools/{pool}/rollouts"),
                Some(body),
            )
        }
        CtlCommand::Rollout(RolloutCommand::Status { id: None }) => {
            (Method::GET, "/v1/rollouts".into(), None)
        }
        CtlCommand::Rollout(RolloutCommand::Status { id: Some(id) }) => {
            (Method::GET, format!("/v1/rollouts/{id}"), None)
        }
        CtlCommand::Rollout(RolloutCommand::Abort { id }) => {
            (Method::POST, format!("/v1/rollouts/{id}/abort"), None)
        }
    })
}

fn human(command: &CtlCommand, value: &Value, code: i32) -> anyhow::Result<String> {
    let node = || serde_json::from_value::<NodeView>(value.clone()).context("unexpected node JSON");
    let rollout =
        || serde_json::from_value::<Rollout>(value.clone()).context("unexpected rollout JSON");
    Ok(match command {
        CtlCommand::Status => render::status(
            &serde_json::from_value::<StatusView>(value.clone())
                .context("unexpected status JSON")?,
        ),
        CtlCommand::Reload => "reloaded\n".into(),
        CtlCommand::Cluster => render::cluster(
            &serde_json::from_value(value.clone()).context("unexpected cluster JSON")?,
        ),
        CtlCommand::Watch { .. } => String::new(),
        CtlCommand::Node(NodeCommand::Remove { .. }) => {
            let n = node()?;
            if code == 0 && value["state"] != "draining" {
                format!("{}/{} removed\n", n.pool, n.name)
            } else {
                format!(
                    "{}/{} draining: removed once drained\n{}",
                    n.pool,
                    n.name,
                    render::node_line(&n)
                )
            }
        }
        CtlCommand::Node(_) => render::node_line(&node()?),
        CtlCommand::Drain { .. } | CtlCommand::Enable { .. } => {
            let mut out = render::node_line(&node()?);
            if let Some(lagging) = value["lagging"].as_array().filter(|l| !l.is_empty()) {
                let names: Vec<&str> = lagging.iter().filter_map(Value::as_str).collect();
                out.push_str(&format!(
                    "warning: not yet applied after 2s by {}\n",
                    names.join(", ")
                ));
            }
            out
        }
        CtlCommand::Wait { state, .. } => {
            let n = node()?;
            if code == 0 {
                format!("{}/{} is {state}\n", n.pool, n.name)
            } else {
                format!(
                    "{}/{} did not reach {state} in time: {}",
                    n.pool,
                    n.name,
                    render::node_line(&n)
                )
            }
        }
        CtlCommand::Rollout(RolloutCommand::Start { .. }) => {
            let r = rollout()?;
            format!(
                "rollout {} started: pool {} to version {} (order {})\n",
                r.id,
                r.pool,
                r.version,
                r.order.join(", ")
            )
        }
        CtlCommand::Rollout(RolloutCommand::Status { id: Some(_) })
        | CtlCommand::Rollout(RolloutCommand::Abort { .. }) => render::rollout(&rollout()?),
        CtlCommand::Rollout(RolloutCommand::Status { id: None }) => {
            let list: Vec<Rollout> = serde_json::from_value(value["rollouts"].clone())
                .context("unexpected rollouts JSON")?;
            render::rollout_list(&list)
        }
    })
}
