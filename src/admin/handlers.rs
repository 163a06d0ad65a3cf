//! Admin endpoint handlers: read the snapshot, render views, run reloads.

use std::sync::Arc;

use http::StatusCode;
use serde_json::json;

use super::views::{ListenerView, PoolView, SniRouteView, StatusView};
use super::{json_response, AdminError, AdminResponse};
use crate::app::{App, ReloadError};
use crate::metrics::StateGauges;
use crate::pool::{AdminState, Cause, Health, SessionKind};

pub async fn status(app: &Arc<App>) -> AdminResponse {
    let addrs = app.listener_addrs().await;
    let snapshot = app.snapshot.load_full();
    let mut listeners = Vec::new();
    for l in &snapshot.config.listeners {
        listeners.push(ListenerView {
            name: l.name.clone(),
            protocol: l.kind.protocol().into(),
            listen: addrs.get(&l.name).copied().unwrap_or(l.listen).to_string(),
            connections: app.listener_connections(&l.name).await.unwrap_or(0),
            tls: l.tls.is_some(),
            sni_routes: match &l.kind {
                crate::config::ListenerKind::Tcp { sni_routes, .. } => sni_routes
                    .iter()
                    .map(|r| SniRouteView {
                        sni: r.sni.clone(),
                        pool: r.pool.clone(),
                    })
                    .collect(),
                crate::config::ListenerKind::Http { .. } => Vec::new(),
            },
        });
    }
    let view = StatusView {
        version: env!("CARGO_PKG_VERSION").into(),
        process: app.process.clone(),
        previous: app.previous.load_full().map(|p| (*p).clone()),
        listeners,
        pools: snapshot.pools.iter().map(|p| PoolView::of(p)).collect(),
        rollouts: app.rollouts.list(),
    };
    json_response(StatusCode::OK, &view)
}

pub fn pool(app: &App, pool: &str) -> Result<AdminResponse, AdminError> {
    let snapshot = app.snapshot.load();
    let p = snapshot
        .pool(pool)
        .ok_or_else(|| AdminError::UnknownPool { pool: pool.into() })?;
    Ok(json_response(StatusCode::OK, &PoolView::of(p)))
}

pub fn node(app: &App, pool: &str, node: &str) -> Result<AdminResponse, AdminError> {
    let t = super::ops::target(app, pool, node)?;
    Ok(json_response(
        StatusCode::OK,
        &super::ops::node_answer(app, &t, None),
    ))
}

/// `GET /v1/cluster`: this instance, whether it is connected, and every live member.
pub fn cluster(app: &App) -> Result<AdminResponse, AdminError> {
    let cluster = app.cluster().ok_or(AdminError::NoCluster)?;
    Ok(json_response(StatusCode::OK, &cluster.view()))
}

pub async fn reload(app: &Arc<App>) -> Result<AdminResponse, AdminError> {
    match app.reload().await {
        Ok(()) => {
            let snapshot = app.snapshot.load();
            Ok(json_response(
                StatusCode::OK,
                &json!({
                    "status": "reloaded",
                    "listeners": snapshot.config.listeners.len(),
                    "pools": snapshot.pools.len(),
                }),
            ))
        }
        Err(ReloadError::Config(e)) => Err(AdminError::InvalidConfig(e.field_errors())),
        Err(ReloadError::NoFile) => Err(AdminError::Conflict(ReloadError::NoFile.to_string())),
        Err(e @ ReloadError::Start(_)) => Err(AdminError::ReloadFailed(e.to_string())),
        Err(e @ ReloadError::Members(_)) => Err(AdminError::Conflict(e.to_string())),
    }
}

/// The whole `/metrics` text: the families kept since start, then the state gauges built
/// for this scrape alone (no reset-then-set that a concurrent scrape could see half done).
pub fn metrics_text(app: &App) -> String {
    let g = StateGauges::new();
    let now = crate::pool::unix_ms();
    for pool in &app.snapshot.load().pools {
        for (i, node) in pool.nodes.iter().enumerate() {
            let (p, n) = (pool.name.as_str(), node.name.as_str());
            let admin = node.state.admin();
            for s in AdminState::ALL {
                g.node_state
                    .with_label_values(&[p, n, s.as_str()])
                    .set(i64::from(s == admin));
            }
            let health = node.state.health();
            for h in Health::ALL {
                g.node_health
                    .with_label_values(&[p, n, h.as_str()])
                    .set(i64::from(h == health));
            }
            if let Some(v) = node.state.version() {
                g.node_version_info
                    .with_label_values(&[p, n, v.as_str()])
                    .set(1);
            }
            let traffic = &node.state.traffic;
            let total = traffic.sample();
            g.node_requests
                .with_label_values(&[p, n])
                .inc_by(total.requests);
            for cause in Cause::ALL {
                g.node_errors
                    .with_label_values(&[p, n, cause.as_str()])
                    .inc_by(total.errors[cause as usize]);
            }
            let (recent, _) = traffic.recent();
            for (q, gauge) in [0.5, 0.99].into_iter().zip(&g.node_latency) {
                if let Some(d) = recent.quantile(q) {
                    gauge.with_label_values(&[p, n]).set(d.as_secs_f64());
                }
            }
            g.node_error_ratio
                .with_label_values(&[p, n])
                .set(recent.error_rate());
            for k in SessionKind::ALL {
                let count = match k {
                    SessionKind::Affinity => pool.affinity_sessions(i, now).0,
                    _ => node.state.sessions(k),
                };
                g.sessions_active
                    .with_label_values(&[p, n, k.as_str()])
                    .set(i64::try_from(count).unwrap_or(i64::MAX));
            }
        }
    }
    if let Some(cluster) = app.cluster() {
        let view = cluster.view();
        let p = [view.prefix.as_str()];
        g.cluster_connected
            .with_label_values(&p)
            .set(i64::from(view.connected));
        g.cluster_members
            .with_label_values(&p)
            .set(i64::try_from(view.members.len()).unwrap_or(i64::MAX));
        let driving = view
            .drivers
            .values()
            .filter(|d| **d == view.instance)
            .count();
        g.cluster_driver
            .with_label_values(&p)
            .set(i64::try_from(driving).unwrap_or(i64::MAX));
        g.cluster_revision.with_label_values(&p).set(view.revision);
    }
    let mut text = app.metrics.render();
    text.push_str(&g.render());
    text
}
