//! Frames to the client: a handler's response (HEADERS, then DATA as the client's windows
//! allow, then trailers), window given back as handlers read, and stream resets.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use http::header::{self, HeaderMap, HeaderName};
use http::Response;
use hyper::body::Body;

use super::conn::{Connection, Resp, CONN_WINDOW, RECENT_CLOSED, STREAM_WINDOW, WRITE_HIGH};
use super::frame::{self, Reason};
use super::handler::Service;
use super::hpack;

/// Fields that mean something only on one HTTP/1.1 connection (RFC 9113 §8.2.2).
fn connection_specific(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == header::TE
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

fn put_fields(out: &mut Vec<u8>, headers: &HeaderMap) {
    for (name, value) in headers {
        if !connection_specific(name) {
            hpack::put_field(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
}

impl<I, S: Service> Connection<I, S> {
    /// A handler's answer (`None`: it was stopped, the stream is gone).
    pub fn respond(&mut self, id: u32, resp: Option<Response<S::Body>>) {
        self.served = self.served.saturating_add(1);
        let (Some(resp), Some(s)) = (resp, self.streams.get_mut(&id)) else {
            return;
        };
        let (parts, body) = resp.into_parts();
        let status = parts.status.as_u16();
        let mut block = std::mem::take(&mut self.scratch);
        block.clear();
        hpack::put_status(&mut block, status);
        put_fields(&mut block, &parts.headers);
        let bodiless = status == 204 || status == 304 || status < 200;
        if !bodiless && !parts.headers.contains_key(header::CONTENT_LENGTH) {
            if let Some(n) = body.size_hint().exact() {
                let mut digits = itoa::Buffer::new();
                hpack::put_field(&mut block, b"content-length", digits.format(n).as_bytes());
            }
        }
        let end = body.is_end_stream();
        s.resp = Resp::Body {
            body,
            pending: None,
            last: false,
        };
        self.put_headers(id, &block, end);
        self.scratch = block;
        if end {
            self.sent_all(id);
        } else {
            self.pump(id);
        }
    }

    /// HEADERS (and CONTINUATION past the client's frame size) carrying `block`.
    pub fn put_headers(&mut self, id: u32, block: &[u8], end_stream: bool) {
        let max = self.peer_frame;
        let mut chunks = block.chunks(max).peekable();
        let first = chunks.next().unwrap_or(&[]);
        let mut flags = if end_stream { frame::END_STREAM } else { 0 };
        if chunks.peek().is_none() {
            flags |= frame::END_HEADERS;
        }
        frame::put_head(&mut self.wbuf, first.len(), frame::HEADERS, flags, id);
        self.wbuf.extend_from_slice(first);
        while let Some(c) = chunks.next() {
            let flags = if chunks.peek().is_none() {
                frame::END_HEADERS
            } else {
                0
            };
            frame::put_head(&mut self.wbuf, c.len(), frame::CONTINUATION, flags, id);
            self.wbuf.extend_from_slice(c);
        }
    }

    /// Sends what the stream's body has, as far as the windows and the write buffer allow.
    pub fn pump(&mut self, id: u32) {
        loop {
            let conn_window = self.send_window;
            let frame_max = self.peer_frame;
            let full = self.wbuf.len() >= WRITE_HIGH;
            let Some(s) = self.streams.get_mut(&id) else {
                return;
            };
            let Resp::Body {
                body,
                pending,
                last,
            } = &mut s.resp
            else {
                return;
            };
            if let Some(data) = pending {
                let n = data.len().min(frame_max).min(s.send_window.max(0) as usize);
                let n = n.min(conn_window.max(0) as usize);
                if n == 0 || full {
                    if (conn_window <= 0 || full) && !self.blocked.contains(&id) {
                        self.blocked.push(id);
                    }
                    return; // a WINDOW_UPDATE for the stream pumps it again
                }
                let chunk = data.split_to(n);
                let end = data.is_empty() && *last;
                if data.is_empty() {
                    *pending = None;
                }
                s.send_window -= n as i64;
                self.send_window -= n as i64;
                let flags = if end { frame::END_STREAM } else { 0 };
                frame::put_head(&mut self.wbuf, n, frame::DATA, flags, id);
                self.wbuf.extend_from_slice(&chunk);
                if end {
                    self.sent_all(id);
                    return;
                }
                continue;
            }
            if *last {
                return;
            }
            if full {
                if !self.blocked.contains(&id) {
                    self.blocked.push(id);
                }
                return;
            }
            let waker = s
                .waker
                .get_or_insert_with(|| Waker::from(Arc::clone(&s.shared)));
            let mut cx = Context::from_waker(waker);
            match Pin::new(&mut *body).poll_frame(&mut cx) {
                Poll::Pending => return,
                Poll::Ready(Some(Ok(f))) => match f.into_data() {
                    Ok(data) => {
                        *last = body.is_end_stream();
                        if !data.is_empty() {
                            *pending = Some(data);
                        } else if *last {
                            self.end_empty(id);
                            return;
                        }
                    }
                    Err(f) => {
                        if let Ok(trailers) = f.into_trailers() {
                            let mut block = std::mem::take(&mut self.scratch);
                            block.clear();
                            put_fields(&mut block, &trailers);
                            self.put_headers(id, &block, true);
                            self.scratch = block;
                            self.sent_all(id);
                            return;
                        }
                    }
                },
                Poll::Ready(None) => {
                    self.end_empty(id);
                    return;
                }
                Poll::Ready(Some(Err(_))) => {
                    // The node's answer broke off: the client must not take it as whole.
                    self.stream_error(id, Reason::Internal);
                    return;
                }
            }
        }
    }

    /// An empty DATA frame with END_STREAM: the body ended with nothing left to send.
    fn end_empty(&mut self, id: u32) {
        frame::put_head(&mut self.wbuf, 0, frame::DATA, frame::END_STREAM, id);
        self.sent_all(id);
    }

    /// END_STREAM went out: the stream is over once the client's side is too. A client
    /// still sending is told to stop (RST_STREAM NO_ERROR, RFC 9113 §8.1).
    fn sent_all(&mut self, id: u32) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        s.resp = Resp::Done;
        if s.recv_open {
            frame::put_rst(&mut self.wbuf, id, Reason::NoError);
        }
        self.remove(id);
    }

    /// RST_STREAM, and the stream is gone.
    pub fn stream_error(&mut self, id: u32, reason: Reason) {
        frame::put_rst(&mut self.wbuf, id, reason);
        self.remove(id);
    }

    /// Forgets a stream: its handler stops if still running, a body read elsewhere fails
    /// unless complete, and what it held of the connection's window comes back.
    pub fn remove(&mut self, id: u32) {
        if let Some(s) = self.streams.remove(&id) {
            s.shared.cancel();
            if s.recv_open {
                if self.recent_closed.len() == RECENT_CLOSED {
                    self.recent_closed.pop_front();
                }
                self.recent_closed.push_back(id);
            }
            if s.unconsumed > 0 {
                self.credit(u32::try_from(s.unconsumed).unwrap_or(u32::MAX));
            }
        }
    }

    /// A handler read `n` octets of its request body.
    pub fn give_back(&mut self, id: u32, n: u32) {
        let Some(s) = self.streams.get_mut(&id) else {
            return; // the connection's share came back when the stream went
        };
        s.unconsumed = s.unconsumed.saturating_sub(u64::from(n));
        self.credit(n);
        self.stream_credit(id, n);
    }

    /// Window for the stream, sent once half of it is owed.
    pub fn stream_credit(&mut self, id: u32, n: u32) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if !s.recv_open {
            return;
        }
        s.recv_unacked += n;
        if s.recv_unacked >= STREAM_WINDOW / 2 {
            frame::put_window_update(&mut self.wbuf, id, s.recv_unacked);
            s.recv_window += i64::from(s.recv_unacked);
            s.recv_unacked = 0;
        }
    }

    /// Window for the connection, sent once half of it is owed.
    pub fn credit(&mut self, n: u32) {
        self.recv_unacked = self.recv_unacked.saturating_add(n);
        if self.recv_unacked >= CONN_WINDOW / 2 {
            frame::put_window_update(&mut self.wbuf, 0, self.recv_unacked);
            self.recv_window += i64::from(self.recv_unacked);
            self.recv_unacked = 0;
        }
    }
}
