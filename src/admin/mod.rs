//! The admin API (design.md §5): JSON over HTTP on its own listener, loopback by default.
//!
//! | method and path                          | handler              |
//! |------------------------------------------|----------------------|
//! | `GET /healthz`                           | handoff's liveness   |
//! | `GET /metrics`                           | Prometheus text      |
//! | `GET /v1/status`                         | [`handlers::status`] |
//! | `GET /v1/pools/{pool}`                   | [`handlers::pool`]   |
//! | `GET /v1/pools/{pool}/nodes/{node}`      | [`handlers::node`]   |
//! | `POST /v1/reload`                        | [`handlers::reload`] |
//!
//! `/v1/*` requires `Authorization: Bearer <token>` when the variable named by
//! `admin.token_env` is set. Errors are `{"error": "...", "detail": ...}`; bad input never
//! changes state.

mod handlers;
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
use crate::config::FieldError;

pub type AdminResponse = Response<Full<Bytes>>;

/// Everything the admin API can refuse, with the status code it answers.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("no such endpoint: {method} {path}")]
    NotFound { method: Method, path: String },
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed { method: Method, path: String },
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
        resp
    }
}

pub fn json_response<T: Serialize>(status: StatusCode, body: &T) -> AdminResponse {
    let bytes = serde_json::to_vec_pretty(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn text_response(status: StatusCode, content_type: &'static str, body: String) -> AdminResponse {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// Serves the admin API until the process has stopped (it stays up while draining, so
/// operators can watch the drain).
pub async fn serve(app: Arc<App>, listener: TcpListener) {
    let stop = app.shutdown.force.clone();
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    continue;
                }
            },
        };
        let app = Arc::clone(&app);
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let app = Arc::clone(&app);
                async move { Ok::<_, Infallible>(route(&app, req).await) }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(stream), service);
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
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let result = match segments.as_slice() {
        ["healthz"] => only(&method, &path, Method::GET)
            .map(|()| text_response(StatusCode::OK, "text/plain", "ok\n".into())),
        ["metrics"] => only(&method, &path, Method::GET).map(|()| {
            handlers::refresh_gauges(app);
            text_response(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                app.metrics.render(),
            )
        }),
        ["v1", rest @ ..] => match authorize(app, &req) {
            Err(e) => Err(e),
            Ok(()) => match rest {
                ["status"] => match only(&method, &path, Method::GET) {
                    Ok(()) => Ok(handlers::status(app).await),
                    Err(e) => Err(e),
                },
                ["pools", pool] => {
                    only(&method, &path, Method::GET).and_then(|()| handlers::pool(app, pool))
                }
                ["pools", pool, "nodes", node] => {
                    only(&method, &path, Method::GET).and_then(|()| handlers::node(app, pool, node))
                }
                ["reload"] => match only(&method, &path, Method::POST) {
                    Ok(()) => handlers::reload(app).await,
                    Err(e) => Err(e),
                },
                _ => Err(AdminError::NotFound {
                    method: method.clone(),
                    path: path.clone(),
                }),
            },
        },
        _ => Err(AdminError::NotFound {
            method: method.clone(),
            path: path.clone(),
        }),
    };
    result.unwrap_or_else(AdminError::into_response)
}

fn only(method: &Method, path: &str, allowed: Method) -> Result<(), AdminError> {
    if *method == allowed {
        Ok(())
    } else {
        Err(AdminError::MethodNotAllowed {
            method: method.clone(),
            path: path.to_string(),
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
