//! The admin API (docs/api.md): JSON over HTTP on its own listener, loopback by default.
//!
//! | method and path                          | handler              |
//! |------------------------------------------|----------------------|
//! | `GET /healthz`                           | handoff's liveness   |
//! | `GET /dashboard`                         | the dashboard page   |
//! | `GET /metrics`                           | Prometheus text      |
//! | `GET /v1/events`                         | [`stream::events`]   |
//! | `GET /v1/openapi.json`                   | this API's OpenAPI document |
//! | `GET /v1/cluster`                        | [`handlers::cluster`] |
//! | `GET /v1/status`                         | [`handlers::status`] |
//! | `GET /v1/pools/{pool}`                   | [`handlers::pool`]   |
//! | `POST /v1/pools/{pool}/nodes`            | [`nodes::add`]       |
//! | `GET /v1/pools/{pool}/nodes/{node}`      | [`handlers::node`]   |
//! | `PATCH /v1/pools/{pool}/nodes/{node}`    | [`nodes::patch`]     |
//! | `DELETE /v1/pools/{pool}/nodes/{node}`   | [`nodes::remove`]    |
//! | `POST /v1/pools/{pool}/nodes/{node}/drain` | [`ops::drain`]     |
//! | `POST /v1/pools/{pool}/nodes/{node}/enable`| [`ops::enable`]    |
//! | `GET /v1/pools/{pool}/nodes/{node}/wait`   | [`ops::wait`]      |
//! | `POST /v1/pools/{pool}/rollouts`         | [`ops::start_rollout`] |
//! | `GET /v1/rollouts`, `GET /v1/rollouts/{id}` | [`ops::rollouts`], [`ops::rollout`] |
//! | `POST /v1/rollouts/{id}/abort`           | [`ops::abort`]       |
//! | `POST /v1/reload`                        | [`handlers::reload`] |
//!
//! `/v1/*` requires `Authorization: Bearer <token>` when the variable named by
//! `admin.token_env` is set. Errors are `{"error": "...", "detail": ...}`; bad input never
//! changes state.

mod handlers;
pub mod input;
mod nodes;
mod ops;
mod routes;
mod stream;
pub mod views;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::Serialize;
use serde_json::json;
use tokio::net::TcpListener;

use crate::app::App;
use crate::cluster::ClusterError;
use crate::config::FieldError;
use crate::members::MemberError;
use crate::rollout::RolloutError;

/// A body the admin API sends: a whole one, or the event stream.
pub type AdminBody = http_body_util::Either<Full<Bytes>, stream::Sse>;
pub type AdminResponse = Response<AdminBody>;

/// Everything the admin API can refuse, with the status code it answers.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("no such endpoint: {method} {path}")]
    NotFound { method: Method, path: String },
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed {
        method: Method,
        path: String,
        /// What the path does take (the `Allow` header).
        allow: &'static str,
    },
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error("unknown pool {pool:?}")]
    UnknownPool { pool: String },
    #[error("unknown node {node:?} in pool {pool:?}")]
    UnknownNode { pool: String, node: String },
    #[error("invalid config: running config kept")]
    InvalidConfig(Vec<FieldError>),
    #[error("{0}")]
    Conflict(String),
    #[error("reload failed: {0}; running config kept")]
    ReloadFailed(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("a takeover by a new handoff process is in progress: retry in a moment")]
    TakingOver,
    #[error("{0}")]
    Guard(#[from] crate::lifecycle::OpError),
    #[error("{0}")]
    Rollout(#[from] crate::rollout::RolloutError),
    #[error("{0}")]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error("this instance is not part of a cluster (no `cluster:` in its config)")]
    NoCluster,
    #[error(transparent)]
    Members(#[from] crate::members::MemberError),
}

impl AdminError {
    fn status(&self) -> StatusCode {
        match self {
            Self::NotFound { .. } | Self::UnknownPool { .. } | Self::UnknownNode { .. } => {
                StatusCode::NOT_FOUND
            }
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::InvalidConfig(_) => StatusCode::BAD_REQUEST,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::ReloadFailed(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::TakingOver => StatusCode::SERVICE_UNAVAILABLE,
            Self::Guard(_) => StatusCode::CONFLICT,
            Self::Cluster(e) => match e {
                ClusterError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                ClusterError::Guard(_) | ClusterError::Conflict(_) => StatusCode::CONFLICT,
                ClusterError::Unknown { .. } => StatusCode::GATEWAY_TIMEOUT,
                ClusterError::Members(
                    MemberError::UnknownPool(_) | MemberError::UnknownNode { .. },
                ) => StatusCode::NOT_FOUND,
                ClusterError::Members(_) => StatusCode::CONFLICT,
            },
            Self::NoCluster => StatusCode::NOT_FOUND,
            Self::Members(e) => match e {
                MemberError::UnknownPool(_) | MemberError::UnknownNode { .. } => {
                    StatusCode::NOT_FOUND
                }
                _ => StatusCode::CONFLICT,
            },
            Self::Rollout(e) => match e {
                RolloutError::UnknownPool(_)
                | RolloutError::Unknown(_)
                | RolloutError::UnknownNode { .. } => StatusCode::NOT_FOUND,
                RolloutError::AlreadyRunning { .. } | RolloutError::NotWaiting(_) => {
                    StatusCode::CONFLICT
                }
                RolloutError::Invalid(_) => StatusCode::BAD_REQUEST,
                RolloutError::Cluster(ClusterError::Unavailable(_)) => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                RolloutError::Cluster(ClusterError::Unknown { .. }) => StatusCode::GATEWAY_TIMEOUT,
                RolloutError::Cluster(ClusterError::Members(_)) => StatusCode::CONFLICT,
                RolloutError::Cluster(_) => StatusCode::CONFLICT,
            },
        }
    }

    fn detail(&self) -> serde_json::Value {
        match self {
            Self::UnknownPool { pool } => json!({ "pool": pool }),
            Self::UnknownNode { pool, node } => json!({ "pool": pool, "node": node }),
            Self::InvalidConfig(errors) => json!(errors),
            Self::NotFound { path, .. } | Self::MethodNotAllowed { path, .. } => {
                json!({ "path": path })
            }
            Self::Guard(crate::lifecycle::OpError::Guard { pool, node, reason })
            | Self::Cluster(ClusterError::Guard(crate::lifecycle::OpError::Guard {
                pool,
                node,
                reason,
            })) => {
                json!({ "pool": pool, "node": node, "reason": reason })
            }
            Self::Rollout(RolloutError::AlreadyRunning { pool, running }) => {
                json!({ "pool": pool, "running": running })
            }
            Self::Cluster(ClusterError::Unknown {
                write,
                what,
                reason,
            })
            | Self::Rollout(RolloutError::Cluster(ClusterError::Unknown {
                write,
                what,
                reason,
            })) => json!({ "write": write, "what": what, "reason": reason }),
            _ => serde_json::Value::Null,
        }
    }

    fn into_response(self) -> AdminResponse {
        let mut resp = json_response(
            self.status(),
            &json!({ "error": self.to_string(), "detail": self.detail() }),
        );
        if matches!(self, Self::Unauthorized) {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Self::MethodNotAllowed { allow, .. } = self {
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        resp
    }
}

pub fn json_response<T: Serialize>(status: StatusCode, body: &T) -> AdminResponse {
    let bytes = serde_json::to_vec_pretty(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = Response::new(AdminBody::Left(Full::new(Bytes::from(bytes))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn text_response(status: StatusCode, content_type: &'static str, body: String) -> AdminResponse {
    let mut resp = Response::new(AdminBody::Left(Full::new(Bytes::from(body))));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// After an accept error (out of file descriptors, say), wait this long before retrying
/// instead of spinning on the error.
const ACCEPT_ERROR_BACKOFF: std::time::Duration = std::time::Duration::from_millis(50);

/// Starts serving the admin API on `listener` (the CLI and tests call this once the app
/// runs); returns the address it serves on.
pub fn spawn(app: &Arc<App>, listener: TcpListener) -> std::io::Result<std::net::SocketAddr> {
    let addr = listener.local_addr()?;
    tracing::info!(admin = %addr, "admin API listening");
    tokio::spawn(serve(Arc::clone(app), listener));
    Ok(addr)
}

/// Serves the admin API until the process has stopped (it stays up while draining, so
/// operators can watch the drain).
pub async fn serve(app: Arc<App>, listener: TcpListener) {
    let stop = app.shutdown.force.clone();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            // Replaced by a new process, which accepts on this same socket: stop taking
            // connections (those open are served on).
            _ = app.shutdown.retire.cancelled() => break,
            r = listener.accept() => r,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => continue,
                }
            }
        };
        let app = Arc::clone(&app);
        let stop = stop.clone();
        // Tracked like client connections, so a request this process accepted is answered
        // before it exits (a takeover's old generation included).
        let tracker = app.shutdown.tracker.clone();
        tracker.spawn(async move {
            let drain = app.shutdown.drain.clone();
            let service = service_fn(move |req| {
                let app = Arc::clone(&app);
                async move {
                    let mut resp = route(&app, req).await;
                    if app.shutdown.is_retired() {
                        // Replaced by a new process: the client's next request goes there.
                        resp.headers_mut()
                            .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    }
                    Ok::<_, Infallible>(resp)
                }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = stop.cancelled() => return,
                _ = drain.cancelled() => {}
            }
            // Stopping: answer what is in flight, then close.
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                _ = conn => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

async fn route(app: &Arc<App>, req: Request<Incoming>) -> AdminResponse {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let not_found = || AdminError::NotFound {
        method: method.clone(),
        path: path.clone(),
    };
    let result = match segments.as_slice() {
        ["healthz"] => only(&method, &path, Method::GET)
            .map(|()| text_response(StatusCode::OK, "text/plain", "ok\n".into())),
        // The page holds no data: what it shows comes from /v1, with the token.
        ["dashboard"] => only(&method, &path, Method::GET).map(|()| {
            text_response(
                StatusCode::OK,
                "text/html; charset=utf-8",
                DASHBOARD.to_string(),
            )
        }),
        ["metrics"] => only(&method, &path, Method::GET).map(|()| {
            text_response(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                handlers::metrics_text(app),
            )
        }),
        ["v1", rest @ ..] => match authorize(app, &req) {
            Err(e) => Err(e),
            // During a takeover the state is on its way to the new process: a write here
            // would be lost, so it is refused (the new process answers it once it serves).
            Ok(()) if method != Method::GET && app.control.handing_over() => {
                Err(AdminError::TakingOver)
            }
            Ok(()) => match (rest, &method) {
                (["status"], &Method::GET) => Ok(handlers::status(app).await),
                (["events"], &Method::GET) => stream::events(app, &req, &query),
                (["openapi.json"], &Method::GET) => Ok(text_response(
                    StatusCode::OK,
                    "application/json",
                    OPENAPI.to_string(),
                )),
                (["cluster"], &Method::GET) => handlers::cluster(app),
                (["pools", pool], &Method::GET) => handlers::pool(app, pool),
                (["pools", pool, "nodes"], &Method::POST) => {
                    nodes::add(app, pool, read_body(req).await).await
                }
                (["pools", pool, "nodes", node], &Method::GET) => handlers::node(app, pool, node),
                (["pools", pool, "nodes", node], &Method::PATCH) => {
                    nodes::patch(app, pool, node, read_body(req).await).await
                }
                (["pools", pool, "nodes", node], &Method::DELETE) => {
                    nodes::remove(app, pool, node, &query).await
                }
                (["pools", pool, "nodes", node, "drain"], &Method::POST) => {
                    ops::drain(app, pool, node, read_body(req).await).await
                }
                (["pools", pool, "nodes", node, "enable"], &Method::POST) => {
                    ops::enable(app, pool, node, read_body(req).await).await
                }
                (["pools", pool, "nodes", node, "wait"], &Method::GET) => {
                    ops::wait(app, pool, node, &query).await
                }
                (["pools", pool, "rollouts"], &Method::POST) => {
                    ops::start_rollout(app, pool, read_body(req).await).await
                }
                (["rollouts"], &Method::GET) => Ok(ops::rollouts(app)),
                (["rollouts", id], &Method::GET) => ops::rollout(app, id),
                (["rollouts", id, "abort"], &Method::POST) => ops::abort(app, id).await,
                (["reload"], &Method::POST) => handlers::reload(app).await,
                _ => match routes::allow(&segments) {
                    Some(allow) => Err(AdminError::MethodNotAllowed {
                        method: method.clone(),
                        path: path.clone(),
                        allow,
                    }),
                    None => Err(not_found()),
                },
            },
        },
        _ => Err(not_found()),
    };
    result.unwrap_or_else(AdminError::into_response)
}

/// The dashboard: one page, its CSS and JS inline, no external asset.
const DASHBOARD: &str = include_str!("dashboard.html");

/// The API's description (docs/openapi.json), served at `/v1/openapi.json`.
const OPENAPI: &str = include_str!("../../docs/openapi.json");

/// Largest admin request body accepted.
const MAX_BODY: usize = 64 * 1024;

/// Reads a request body of at most [`MAX_BODY`] bytes.
async fn read_body(req: Request<Incoming>) -> Result<Vec<u8>, AdminError> {
    use http_body_util::{BodyExt, Limited};
    Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .map_err(|e| AdminError::BadRequest(format!("reading the request body: {e}")))
}

fn only(method: &Method, path: &str, allowed: Method) -> Result<(), AdminError> {
    if *method == allowed {
        Ok(())
    } else {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        Err(AdminError::MethodNotAllowed {
            method: method.clone(),
            path: path.to_string(),
            allow: routes::allow(&segments).unwrap_or("GET"),
        })
    }
}

fn authorize(app: &App, req: &Request<Incoming>) -> Result<(), AdminError> {
    let Some(token) = app.admin_token() else {
        return Ok(());
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(presented.as_bytes(), token.as_bytes()) {
        Ok(())
    } else {
        Err(AdminError::Unauthorized)
    }
}

/// Compares without an early exit, so response time does not reveal a prefix of the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
