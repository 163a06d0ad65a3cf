//! `GET /v1/events`: the event stream (`crate::events`) as Server-Sent Events. Each client
//! gets its own task that forwards events into a bounded channel the response body reads;
//! a client that falls behind is dropped (its stream ends), a reconnect with
//! `Last-Event-ID` (header, or `last_event_id=` in the query) replays what it missed from
//! the kept events. `pool=NAME` keeps one pool's events. A comment line every 15 s keeps
//! idle proxies from closing the stream.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::{Body, Frame, Incoming};
use tokio::sync::{broadcast, mpsc};

use super::{AdminBody, AdminError, AdminResponse};
use crate::app::App;
use crate::events::Event;

/// Frames a client may have waiting before it counts as too slow.
const BUFFERED: usize = 64;
const HEARTBEAT: Duration = Duration::from_secs(15);

/// The response body: frames from the client's task.
pub struct Sse(mpsc::Receiver<Bytes>);

impl Body for Sse {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

/// One event as an SSE message.
fn message(e: &Event) -> Bytes {
    let data = serde_json::to_string(e).unwrap_or_else(|_| "{}".into());
    Bytes::from(format!("id: {}\nevent: {}\ndata: {data}\n\n", e.id, e.kind))
}

pub fn events(
    app: &Arc<App>,
    req: &Request<Incoming>,
    query: &str,
) -> Result<AdminResponse, AdminError> {
    let id = |v: &str| {
        v.parse::<u64>().map_err(|_| {
            AdminError::BadRequest(format!("invalid Last-Event-ID {v:?}: expected a number"))
        })
    };
    let mut pool = None;
    // Both are checked when both are sent; the query's wins (a browser's EventSource sets
    // the header by itself on a reconnect).
    let mut last = match req.headers().get("last-event-id") {
        None => None,
        Some(v) => Some(id(v.to_str().unwrap_or("(not text)").trim())?),
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("pool", v)) => pool = Some(v.to_string()),
            Some(("last_event_id", v)) => last = Some(id(v)?),
            _ => {
                return Err(AdminError::BadRequest(format!(
                    "unknown query parameter {pair:?}: expected pool=NAME or last_event_id=N"
                )))
            }
        }
    }
    if let Some(p) = &pool {
        if app.snapshot.load().pool(p).is_none() {
            return Err(AdminError::UnknownPool { pool: p.clone() });
        }
    }
    let events = Arc::clone(&app.control.events);
    let (mut rx, missed) = events.subscribe(last);
    let (tx, body) = mpsc::channel::<Bytes>(BUFFERED);
    let stop = app.shutdown.drain.clone();
    tokio::spawn(async move {
        let keep = |e: &Event| pool.is_none() || e.pool == pool;
        // Tells the client it is connected, and how soon to come back if cut.
        if tx
            .send(Bytes::from_static(b"retry: 1000\n: connected\n\n"))
            .await
            .is_err()
        {
            return;
        }
        let mut sent = 0;
        for e in missed.iter().filter(|e| keep(e)) {
            sent = e.id;
            if tx.try_send(message(e)).is_err() {
                return;
            }
        }
        let mut beat = tokio::time::interval(HEARTBEAT);
        beat.tick().await;
        loop {
            let e = tokio::select! {
                _ = stop.cancelled() => return,
                _ = tx.closed() => return,
                _ = beat.tick() => {
                    if tx.try_send(Bytes::from_static(b": keep-alive\n\n")).is_err() {
                        return;
                    }
                    continue;
                }
                e = rx.recv() => e,
            };
            match e {
                Ok(e) if e.id > sent && keep(&e) => {
                    sent = e.id;
                    // Full: the client does not keep up; dropping it never slows anyone.
                    if tx.try_send(message(&e)).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_))
                | Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    let mut resp = Response::new(AdminBody::Right(Sse(body)));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(resp)
}
