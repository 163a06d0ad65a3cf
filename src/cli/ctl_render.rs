//! Human output of `handoff ctl`: aligned tables and timelines.

use serde_json::Value;

use crate::admin::views::{NodeView, StatusView};
use crate::rollout::Rollout;

/// Renders rows as aligned columns.
pub fn table(rows: &[Vec<String>]) -> String {
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
        if n.traffic.window_requests == 0 {
            "-".into()
        } else {
            format!("{:.1}%", n.traffic.error_rate * 100.0)
        },
        n.traffic
            .p99_ms
            .map_or_else(|| "-".into(), |ms| format!("{ms}ms")),
        n.state_since.clone(),
    ]
}

/// `ERRORS` and `P99` cover the last minute (the node JSON's `traffic` window).
const NODE_HEADER: [&str; 11] = [
    "POOL", "NODE", "ADDR", "STATE", "HEALTH", "VERSION", "SESSIONS", "WEIGHT", "ERRORS", "P99",
    "SINCE",
];

pub fn status(view: &StatusView) -> String {
    let p = &view.process;
    let mut out = format!(
        "handoff {} pid {} generation {} since {}\n",
        p.version, p.pid, p.generation, p.started_at
    );
    if let Some(prev) = &view.previous {
        out.push_str(&format!(
            "previous generation: pid {} draining, sessions {} (http_inflight {}, tunnels {}, tcp {}), closes the rest at {}\n",
            prev.pid,
            prev.sessions.total,
            prev.sessions.http_inflight,
            prev.sessions.tunnels,
            prev.sessions.tcp,
            prev.deadline
        ));
    }
    out.push('\n');
    let mut rows = vec![NODE_HEADER.map(String::from).to_vec()];
    rows.extend(view.pools.iter().flat_map(|p| p.nodes.iter().map(node_row)));
    out.push_str(&table(&rows));
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
    out.push('\n');
    if view.rollouts.is_empty() {
        out.push_str("rollouts: none\n");
    } else {
        out.push_str(&rollout_list(&view.rollouts));
    }
    out
}

/// One node on one line, with its sessions by kind.
pub fn node_line(n: &NodeView) -> String {
    let deadline = n
        .deadline
        .as_ref()
        .map_or(String::new(), |d| format!(", deadline {d}"));
    format!(
        "{}/{}: {} / {} (version {}){deadline}; sessions {} (http_inflight {}, tunnels {}, tcp {}, affinity {})\n",
        n.pool,
        n.name,
        n.state,
        n.health,
        n.version.as_deref().unwrap_or("-"),
        n.sessions.total,
        n.sessions.http_inflight,
        n.sessions.tunnels,
        n.sessions.tcp,
        n.sessions.affinity,
    )
}

pub fn rollout_list(list: &[Rollout]) -> String {
    let mut rows = vec![[
        "ROLLOUT", "POOL", "VERSION", "STATE", "NODE", "PHASE", "CREATED",
    ]
    .map(String::from)
    .to_vec()];
    rows.extend(list.iter().map(|r| {
        vec![
            r.id.clone(),
            r.pool.clone(),
            r.version.clone(),
            state_word(r).into(),
            r.current_node.clone().unwrap_or_else(|| "-".into()),
            r.phase.map_or("-", |p| p.as_str()).into(),
            r.created_at.clone(),
        ]
    }));
    table(&rows)
}

fn state_word(r: &Rollout) -> &'static str {
    match r.state {
        crate::rollout::RolloutState::Running => "running",
        crate::rollout::RolloutState::Succeeded => "succeeded",
        crate::rollout::RolloutState::Failed => "failed",
        crate::rollout::RolloutState::Aborted => "aborted",
    }
}

/// A rollout with its timeline.
pub fn rollout(r: &Rollout) -> String {
    let mut out = format!(
        "rollout {}: pool {} to version {}: {}{}\n",
        r.id,
        r.pool,
        r.version,
        state_word(r),
        if r.abort_requested && r.finished_at.is_none() {
            " (abort requested)"
        } else {
            ""
        }
    );
    if let (Some(node), Some(phase)) = (&r.current_node, r.phase) {
        out.push_str(&format!("current: {node} in {}\n", phase.as_str()));
    }
    if let Some(reason) = &r.reason {
        out.push_str(&format!("reason: {reason}\n"));
    }
    if let Some(b) = &r.rollback {
        let state = match b.state {
            crate::rollout::RollbackState::Running => "running",
            crate::rollout::RollbackState::Succeeded => "succeeded",
            crate::rollout::RollbackState::Failed => "failed",
        };
        out.push_str(&format!(
            "rollback: {} to {}: {state}{}\n",
            b.node,
            b.version,
            b.detail
                .as_deref()
                .map_or_else(String::new, |d| format!(" ({d})"))
        ));
    }
    out.push_str("timeline:\n");
    for e in &r.timeline {
        out.push_str(&format!("  {}  {}\n", e.at, e.message));
    }
    out
}

/// An error's `detail`, readably.
pub fn detail(detail: &Value) -> String {
    match detail {
        Value::Array(items) => items
            .iter()
            .map(|i| {
                match (
                    i["line"].as_u64(),
                    i["col"].as_u64(),
                    i["path"].as_str(),
                    i["reason"].as_str(),
                ) {
                    (Some(l), Some(c), Some(p), Some(r)) => format!("  {l}:{c}: {p}: {r}"),
                    _ => format!("  {i}"),
                }
            })
            .collect::<Vec<_>>()
            .join("\n"),
        other => format!("  {other}"),
    }
}

/// `handoff ctl cluster`.
pub fn cluster(view: &crate::cluster::ClusterView) -> String {
    let driven: Vec<String> = view
        .drivers
        .iter()
        .map(|(id, by)| format!("{id} by {by}"))
        .collect();
    let mut out = format!(
        "cluster {} as {}: {}, revision {}; rollouts driven: {}\n",
        view.prefix,
        view.instance,
        if view.connected {
            "connected"
        } else {
            "NOT CONNECTED to etcd (serving with the last known state; writes refused)"
        },
        view.revision,
        if driven.is_empty() {
            "none".to_string()
        } else {
            driven.join(", ")
        }
    );
    let mut rows = vec![["INSTANCE", "ADMIN", "SINCE", "REVISION", "SESSIONS"]
        .map(String::from)
        .to_vec()];
    for m in &view.members {
        let held: Vec<String> = m
            .sessions
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(node, n)| format!("{node}={n}"))
            .collect();
        rows.push(vec![
            m.instance.clone(),
            m.admin.clone(),
            m.since.clone(),
            m.revision.to_string(),
            if held.is_empty() {
                "-".into()
            } else {
                held.join(" ")
            },
        ]);
    }
    out.push_str(&table(&rows));
    out
}
