//! `handoff ctl`: a thin client of the admin API, with a table for humans and `--json` for
//! scripts. Exit codes: 0 success, 1 the API refused (the error is printed), 2 the admin API
//! could not be reached.

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Subcommand;
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::admin::views::{NodeView, StatusView};

#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Every pool and node, and every rollout.
    Status,
    /// Re-read the config file of the running handoff.
    Reload,
}

/// Exit code when the admin API cannot be reached at all.
const UNREACHABLE: i32 = 2;

pub fn ctl(
    admin: &str,
    token: Option<&str>,
    json: bool,
    command: CtlCommand,
) -> anyhow::Result<i32> {
    let base: Uri = admin
        .parse()
        .with_context(|| format!("invalid --admin URL {admin:?}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (method, path) = match command {
        CtlCommand::Status => (Method::GET, "/v1/status"),
        CtlCommand::Reload => (Method::POST, "/v1/reload"),
    };
    let (status, body) = match rt.block_on(call(&base, token, method, path)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("handoff ctl: cannot reach the admin API at {admin}: {e:#}");
            return Ok(UNREACHABLE);
        }
    };
    if json || !status.is_success() {
        println!("{}", String::from_utf8_lossy(&body).trim_end());
        if !status.is_success() {
            eprintln!("handoff ctl: {path} answered {status}");
            return Ok(1);
        }
        return Ok(0);
    }
    match command {
        CtlCommand::Status => {
            let view: StatusView =
                serde_json::from_slice(&body).context("unexpected status JSON")?;
            print!("{}", render_status(&view));
        }
        CtlCommand::Reload => println!("reloaded"),
    }
    Ok(0)
}

async fn call(
    base: &Uri,
    token: Option<&str>,
    method: Method,
    path: &str,
) -> anyhow::Result<(http::StatusCode, Bytes)> {
    if base.scheme_str().is_some_and(|s| s != "http") {
        bail!("only http:// admin URLs are supported");
    }
    let authority = base
        .authority()
        .context("the admin URL needs a host and port")?
        .clone();
    let port = authority.port_u16().unwrap_or(80);
    let stream = TcpStream::connect((authority.host().trim_matches(['[', ']']), port)).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, authority.as_str());
    if let Some(t) = token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let resp = sender
        .send_request(req.body(Full::new(Bytes::new()))?)
        .await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// Renders rows as aligned columns.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn node_row(n: &NodeView) -> Vec<String> {
    vec![
        n.pool.clone(),
        n.name.clone(),
        n.addr.clone(),
        n.state.clone(),
        n.health.clone(),
        n.version.clone().unwrap_or_else(|| "-".into()),
        n.sessions.total.to_string(),
        n.effective_weight.to_string(),
        n.state_since.clone(),
    ]
}

pub fn render_status(view: &StatusView) -> String {
    let mut rows = vec![[
        "POOL", "NODE", "ADDR", "STATE", "HEALTH", "VERSION", "SESSIONS", "WEIGHT", "SINCE",
    ]
    .map(String::from)
    .to_vec()];
    rows.extend(view.pools.iter().flat_map(|p| p.nodes.iter().map(node_row)));
    let mut out = table(&rows);
    out.push('\n');
    let mut listeners = vec![["LISTENER", "PROTOCOL", "ADDRESS", "CONNECTIONS"]
        .map(String::from)
        .to_vec()];
    listeners.extend(view.listeners.iter().map(|l| {
        vec![
            l.name.clone(),
            l.protocol.clone(),
            l.listen.clone(),
            l.connections.to_string(),
        ]
    }));
    out.push_str(&table(&listeners));
    out.push_str(&format!(
        "\nrollouts: {}\n",
        if view.rollouts.is_empty() {
            "none".to_string()
        } else {
            view.rollouts.len().to_string()
        }
    ));
    out
}
