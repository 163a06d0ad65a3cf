//! Frames from the client (RFC 9113 §6): each checked as the RFC says, a connection error
//! (GOAWAY) or a stream error (RST_STREAM) where it breaks a rule.

use bytes::Bytes;

use super::conn::{conn_error, Block, Connection, Error, Goaway, Phase, Resp};
use super::conn::{DRAIN_PING, MAX_BLOCK, MAX_RESETS, MAX_STREAMS};
use super::frame::{self, be32, Head, Reason};
use super::handler::Service;
use super::request::{self, Built};
use super::stream::Chunk;

impl<I, S: Service> Connection<I, S> {
    pub fn frame(&mut self, head: Head, payload: Bytes) -> Result<(), Error> {
        if let Some(b) = &self.block {
            if head.kind != frame::CONTINUATION || head.stream != b.id {
                return Err(conn_error(
                    Reason::Protocol,
                    "a frame other than CONTINUATION inside a header block",
                ));
            }
        }
        let (id, flags) = (head.stream, head.flags);
        let on_stream = |ok: bool| {
            if ok {
                Ok(())
            } else {
                Err(conn_error(Reason::Protocol, "a frame on the wrong stream"))
            }
        };
        match head.kind {
            frame::DATA => {
                on_stream(id != 0)?;
                self.data(id, flags, payload)
            }
            frame::HEADERS => {
                on_stream(id != 0)?;
                let mut fragment = frame::unpadded(flags, &payload)
                    .ok_or_else(|| conn_error(Reason::Protocol, "HEADERS padding too long"))?;
                if flags & frame::PRIORITY_FLAG != 0 {
                    fragment = fragment
                        .get(5..)
                        .ok_or_else(|| conn_error(Reason::FrameSize, "HEADERS too short"))?;
                }
                if flags & frame::END_HEADERS != 0 {
                    let fragment = payload.slice_ref(fragment);
                    self.block_done(id, flags, &fragment)
                } else {
                    self.block = Some(Block {
                        id,
                        flags,
                        buf: fragment.to_vec(),
                    });
                    Ok(())
                }
            }
            frame::CONTINUATION => {
                let Some(mut b) = self.block.take() else {
                    return Err(conn_error(Reason::Protocol, "CONTINUATION without HEADERS"));
                };
                b.buf.extend_from_slice(&payload);
                if b.buf.len() > MAX_BLOCK {
                    return Err(conn_error(
                        Reason::EnhanceYourCalm,
                        "a header block too large",
                    ));
                }
                if flags & frame::END_HEADERS != 0 {
                    self.block_done(b.id, b.flags, &Bytes::from(b.buf))
                } else {
                    self.block = Some(b);
                    Ok(())
                }
            }
            frame::PRIORITY => {
                on_stream(id != 0)?;
                if payload.len() != 5 {
                    self.stream_error(id, Reason::FrameSize);
                }
                Ok(())
            }
            frame::RST_STREAM => {
                on_stream(id != 0)?;
                if payload.len() != 4 {
                    return Err(conn_error(Reason::FrameSize, "RST_STREAM not 4 octets"));
                }
                if id > self.last_id {
                    return Err(conn_error(Reason::Protocol, "RST_STREAM on an idle stream"));
                }
                self.client_reset(id)
            }
            frame::SETTINGS => {
                on_stream(id == 0)?;
                self.settings(flags, &payload)
            }
            frame::PUSH_PROMISE => Err(conn_error(Reason::Protocol, "PUSH_PROMISE from a client")),
            frame::PING => {
                on_stream(id == 0)?;
                let data: [u8; 8] = payload[..]
                    .try_into()
                    .map_err(|_| conn_error(Reason::FrameSize, "PING not 8 octets"))?;
                if flags & frame::ACK == 0 {
                    frame::put_ping(&mut self.wbuf, frame::ACK, data);
                } else if data == DRAIN_PING && self.goaway == Goaway::Draining {
                    // Streams the client started before it saw the first GOAWAY are in.
                    self.go_final();
                }
                Ok(())
            }
            frame::GOAWAY => {
                on_stream(id == 0)?;
                if payload.len() < 8 {
                    return Err(conn_error(
                        Reason::FrameSize,
                        "GOAWAY shorter than 8 octets",
                    ));
                }
                self.peer_done = true;
                Ok(())
            }
            frame::WINDOW_UPDATE => {
                if payload.len() != 4 {
                    return Err(conn_error(Reason::FrameSize, "WINDOW_UPDATE not 4 octets"));
                }
                self.window_update(id, be32(&payload) & 0x7fff_ffff)
            }
            // Unknown frame types are ignored (§4.1).
            _ => Ok(()),
        }
    }

    fn data(&mut self, id: u32, flags: u8, payload: Bytes) -> Result<(), Error> {
        let len = payload.len();
        self.recv_window -= len as i64;
        if self.recv_window < 0 {
            return Err(conn_error(
                Reason::FlowControl,
                "DATA beyond the connection window",
            ));
        }
        let Some(data) = frame::unpadded(flags, &payload) else {
            return Err(conn_error(Reason::Protocol, "DATA padding too long"));
        };
        let data = payload.slice_ref(data);
        let Some(s) = self.streams.get_mut(&id) else {
            if id > self.last_id {
                return Err(conn_error(Reason::Protocol, "DATA on an idle stream"));
            }
            // A stream handoff has closed or reset: its window is the connection's again.
            self.credit(len as u32);
            return Ok(());
        };
        if !s.recv_open {
            self.credit(len as u32);
            self.stream_error(id, Reason::StreamClosed);
            return Ok(());
        }
        s.recv_window -= len as i64;
        s.received += data.len() as u64;
        s.unconsumed += data.len() as u64;
        let padding = (len - data.len()) as u32;
        let overflow = s.recv_window < 0;
        let end = flags & frame::END_STREAM != 0;
        let bad_length = s
            .content_length
            .is_some_and(|n| s.received > n || (end && s.received != n));
        if !data.is_empty() && !overflow && !bad_length {
            s.shared.push(Chunk::Data(data));
        }
        if padding > 0 {
            // Padding is never read by anyone: given back at once.
            self.stream_credit(id, padding);
            self.credit(padding);
        }
        if overflow {
            self.stream_error(id, Reason::FlowControl);
        } else if bad_length {
            // Malformed (§8.1.1): the body disagrees with its content-length.
            self.stream_error(id, Reason::Protocol);
        } else if end {
            self.end_recv(id);
        }
        Ok(())
    }

    /// A whole header block: a new request, or trailers.
    fn block_done(&mut self, id: u32, flags: u8, block: &Bytes) -> Result<(), Error> {
        let end = flags & frame::END_STREAM != 0;
        let existing = self.streams.get(&id).map(|s| s.recv_open);
        let mut head = request::Head::default();
        let trailer = id <= self.last_id;
        self.dec
            .decode(block, |n, v| head.field(n, v, trailer))
            .map_err(|_| conn_error(Reason::Compression, "a header block HPACK cannot decode"))?;
        if trailer {
            match existing {
                Some(true) if end => match head.trailers() {
                    Ok(t) => {
                        if let Some(s) = self.streams.get(&id) {
                            s.shared.push(Chunk::Trailers(t));
                        }
                        self.end_recv(id);
                    }
                    Err(_) => self.stream_error(id, Reason::Protocol),
                },
                Some(true) => self.stream_error(id, Reason::Protocol),
                Some(false) => self.stream_error(id, Reason::StreamClosed),
                // Trailers already on their way when handoff reset the stream.
                None if self.recent_closed.contains(&id) => {}
                None => {
                    return Err(conn_error(
                        Reason::Protocol,
                        "HEADERS on a closed stream, or stream IDs out of order",
                    ))
                }
            }
            return Ok(());
        }
        if id.is_multiple_of(2) {
            return Err(conn_error(
                Reason::Protocol,
                "a client stream with an even ID",
            ));
        }
        self.last_id = id;
        if self.peer_done || matches!(self.goaway, Goaway::Final(last) if id > last) {
            return Ok(()); // after GOAWAY: not processed, the client may retry it
        }
        if self.streams.len() >= MAX_STREAMS {
            self.stream_error(id, Reason::Refused);
            return Ok(());
        }
        match head.build() {
            Built::Request(req, len) => {
                if end && len.is_some_and(|n| n != 0) {
                    self.stream_error(id, Reason::Protocol);
                } else {
                    self.start(req, id, end, len);
                }
            }
            Built::Malformed(why) => {
                tracing::debug!(stream = id, why, "refused a malformed HTTP/2 request");
                self.stream_error(id, Reason::Protocol);
            }
            Built::TooLarge => self.too_large(id, end),
        }
        Ok(())
    }

    fn settings(&mut self, flags: u8, payload: &[u8]) -> Result<(), Error> {
        if flags & frame::ACK != 0 {
            if !payload.is_empty() {
                return Err(conn_error(
                    Reason::FrameSize,
                    "a SETTINGS ACK with a payload",
                ));
            }
            return Ok(());
        }
        if !payload.len().is_multiple_of(6) {
            return Err(conn_error(
                Reason::FrameSize,
                "SETTINGS not a multiple of 6 octets",
            ));
        }
        for s in payload.chunks_exact(6) {
            let (key, value) = (u16::from_be_bytes([s[0], s[1]]), be32(&s[2..]));
            match key {
                frame::SETTINGS_ENABLE_PUSH if value > 1 => {
                    return Err(conn_error(
                        Reason::Protocol,
                        "SETTINGS_ENABLE_PUSH not 0 or 1",
                    ));
                }
                frame::SETTINGS_INITIAL_WINDOW_SIZE => {
                    let window = i64::from(value);
                    if window > frame::MAX_WINDOW {
                        return Err(conn_error(
                            Reason::FlowControl,
                            "an initial window over 2^31-1",
                        ));
                    }
                    let delta = window - self.peer_window;
                    self.peer_window = window;
                    for s in self.streams.values_mut() {
                        s.send_window += delta;
                    }
                    if delta > 0 {
                        self.blocked.extend(self.streams.keys().copied());
                    }
                }
                frame::SETTINGS_MAX_FRAME_SIZE => {
                    if !(frame::DEFAULT_FRAME as u32..1 << 24).contains(&value) {
                        return Err(conn_error(
                            Reason::Protocol,
                            "a max frame size out of range",
                        ));
                    }
                    self.peer_frame = value as usize;
                }
                // Handoff's encoder never indexes: the table size is no concern of it.
                _ => {}
            }
        }
        frame::put_settings_ack(&mut self.wbuf);
        self.phase = Phase::Open;
        Ok(())
    }

    fn window_update(&mut self, id: u32, increment: u32) -> Result<(), Error> {
        if id == 0 {
            if increment == 0 {
                return Err(conn_error(Reason::Protocol, "a WINDOW_UPDATE of 0"));
            }
            self.send_window += i64::from(increment);
            if self.send_window > frame::MAX_WINDOW {
                return Err(conn_error(Reason::FlowControl, "a window over 2^31-1"));
            }
            return Ok(()); // blocked streams are pumped at the end of the round
        }
        let Some(s) = self.streams.get_mut(&id) else {
            if id > self.last_id {
                return Err(conn_error(
                    Reason::Protocol,
                    "WINDOW_UPDATE on an idle stream",
                ));
            }
            return Ok(());
        };
        if increment == 0 {
            self.stream_error(id, Reason::Protocol);
            return Ok(());
        }
        s.send_window += i64::from(increment);
        if s.send_window > frame::MAX_WINDOW {
            self.stream_error(id, Reason::FlowControl);
            return Ok(());
        }
        self.pump(id);
        Ok(())
    }

    /// The client reset a stream: its handler stops, its body (if read elsewhere) fails.
    fn client_reset(&mut self, id: u32) -> Result<(), Error> {
        let Some(s) = self.streams.get(&id) else {
            return Ok(());
        };
        if !matches!(s.resp, Resp::Done) {
            self.resets = self.resets.saturating_add(1);
            if self.resets > MAX_RESETS && self.resets > self.served {
                return Err(conn_error(
                    Reason::EnhanceYourCalm,
                    "more streams reset than served",
                ));
            }
        }
        self.remove(id);
        Ok(())
    }

    /// The client's side of a stream is complete.
    fn end_recv(&mut self, id: u32) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        s.recv_open = false;
        s.shared.end();
        if matches!(s.resp, Resp::Done) {
            self.remove(id);
        }
    }

    /// A request head over the limit: 431, and no handler.
    fn too_large(&mut self, id: u32, end: bool) {
        self.service.too_large();
        self.scratch.clear();
        super::hpack::put_status(&mut self.scratch, 431);
        let block = std::mem::take(&mut self.scratch);
        self.put_headers(id, &block, true);
        self.scratch = block;
        if !end {
            frame::put_rst(&mut self.wbuf, id, Reason::NoError);
        }
    }
}
