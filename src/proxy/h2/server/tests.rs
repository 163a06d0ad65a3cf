//! The server connection against a client made of raw frames, over an in-memory pipe:
//! what a client sees for each rule of RFC 9113 the server enforces.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::frame::{self, Reason};
use super::hpack;
use super::{Connection, RequestBody};

const WAIT: Duration = Duration::from_secs(5);

/// A frame as the client reads it.
#[derive(Debug)]
struct Got {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

struct Client {
    io: DuplexStream,
    buf: Vec<u8>,
    dec: hpack::Decoder,
}

/// Echoes the request body's length and the path; `/big` answers 100 KiB.
async fn service(req: Request<RequestBody>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let n = match req.into_body().collect().await {
        Ok(b) => b.to_bytes().len(),
        Err(_) => {
            return Response::builder()
                .status(499)
                .body(Full::default())
                .unwrap()
        }
    };
    let body = if path == "/big" {
        Bytes::from(vec![b'x'; 100 * 1024])
    } else {
        Bytes::from(format!("{path} {n}"))
    };
    Response::new(Full::new(body))
}

fn start() -> Client {
    let (client, server) = tokio::io::duplex(1 << 20);
    tokio::spawn(async move {
        let _ = Connection::new(server, service).await;
    });
    Client {
        io: client,
        buf: Vec::new(),
        dec: hpack::Decoder::default(),
    }
}

fn put(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    frame::put_head(out, payload.len(), kind, flags, stream);
    out.extend_from_slice(payload);
}

fn request_block(path: &str) -> Vec<u8> {
    let mut b = Vec::new();
    for (n, v) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "app.test"),
    ] {
        hpack::put_field(&mut b, n.as_bytes(), v.as_bytes());
    }
    b
}

impl Client {
    /// The preface and SETTINGS (with `settings`).
    async fn open(&mut self, settings: &[(u16, u32)]) {
        let mut out = frame::PREFACE.to_vec();
        frame::put_settings(&mut out, settings);
        self.send(&out).await;
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.unwrap();
    }

    async fn next(&mut self) -> Option<Got> {
        loop {
            if self.buf.len() >= 9 {
                let h = frame::Head::parse(self.buf[..9].try_into().unwrap());
                if self.buf.len() >= 9 + h.len {
                    let payload = self.buf[9..9 + h.len].to_vec();
                    self.buf.drain(..9 + h.len);
                    return Some(Got {
                        kind: h.kind,
                        flags: h.flags,
                        stream: h.stream,
                        payload,
                    });
                }
            }
            let mut b = [0u8; 65536];
            let n = tokio::time::timeout(WAIT, self.io.read(&mut b))
                .await
                .expect("the server answered in time")
                .unwrap();
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&b[..n]);
        }
    }

    /// The next frame that is not SETTINGS, a SETTINGS ACK or a connection WINDOW_UPDATE.
    async fn next_on_stream(&mut self) -> Option<Got> {
        loop {
            let f = self.next().await?;
            if f.kind != frame::SETTINGS && !(f.kind == frame::WINDOW_UPDATE && f.stream == 0) {
                return Some(f);
            }
        }
    }

    /// A response: status, body, and whether trailers came.
    async fn response(&mut self, stream: u32) -> (u16, Vec<u8>) {
        let (mut status, mut body) = (0, Vec::new());
        loop {
            let f = self.next_on_stream().await.expect("a response");
            assert_eq!(f.stream, stream, "{f:?}");
            match f.kind {
                frame::HEADERS => {
                    self.dec
                        .decode(&Bytes::from(f.payload), |n, v| {
                            if n == b":status" {
                                let v = std::str::from_utf8(v.as_bytes()).unwrap();
                                status = v.parse().unwrap();
                            }
                        })
                        .unwrap();
                }
                frame::DATA => body.extend_from_slice(&f.payload),
                other => panic!("frame type {other} on a response"),
            }
            if f.flags & frame::END_STREAM != 0 {
                return (status, body);
            }
        }
    }

    async fn goaway(&mut self) -> (u32, u32) {
        loop {
            let f = self
                .next()
                .await
                .expect("GOAWAY before the connection ends");
            if f.kind == frame::GOAWAY {
                return (frame::be32(&f.payload), frame::be32(&f.payload[4..]));
            }
        }
    }
}

#[tokio::test]
async fn a_request_split_over_continuation_frames_with_a_body_is_answered() {
    let mut c = start();
    c.open(&[]).await;
    let block = request_block("/split");
    let mut out = Vec::new();
    put(&mut out, frame::HEADERS, 0, 1, &block[..5]);
    put(&mut out, frame::CONTINUATION, 0, 1, &block[5..9]);
    put(
        &mut out,
        frame::CONTINUATION,
        frame::END_HEADERS,
        1,
        &block[9..],
    );
    // Padded DATA: five octets of body, three of padding.
    put(&mut out, frame::DATA, frame::PADDED, 1, b"\x03hello\0\0\0");
    put(&mut out, frame::DATA, frame::END_STREAM, 1, b" you");
    c.send(&out).await;
    assert_eq!(c.response(1).await, (200, b"/split 9".to_vec()));
}

#[tokio::test]
async fn pings_are_answered_with_their_payload() {
    let mut c = start();
    c.open(&[]).await;
    let mut out = Vec::new();
    frame::put_ping(&mut out, 0, *b"12345678");
    c.send(&out).await;
    let f = c.next_on_stream().await.unwrap();
    assert_eq!(
        (f.kind, f.flags, &f.payload[..]),
        (frame::PING, frame::ACK, &b"12345678"[..])
    );
}

#[tokio::test]
async fn a_response_waits_for_the_clients_window() {
    let mut c = start();
    // A stream window of 1,000 octets.
    c.open(&[(frame::SETTINGS_INITIAL_WINDOW_SIZE, 1000)]).await;
    let mut out = Vec::new();
    put(
        &mut out,
        frame::HEADERS,
        frame::END_HEADERS | frame::END_STREAM,
        1,
        &request_block("/big"),
    );
    c.send(&out).await;
    let headers = c.next_on_stream().await.unwrap();
    assert_eq!(headers.kind, frame::HEADERS);
    let mut got = 0;
    while got < 1000 {
        let f = c.next_on_stream().await.unwrap();
        assert_eq!(f.kind, frame::DATA);
        got += f.payload.len();
    }
    assert_eq!(got, 1000, "no more than the window");
    // Nothing more until the window grows.
    let more = tokio::time::timeout(Duration::from_millis(200), c.next_on_stream()).await;
    assert!(more.is_err(), "sent beyond the window: {more:?}");
    // The rest, once the stream's and the connection's windows allow it.
    let mut out = Vec::new();
    frame::put_window_update(&mut out, 1, 200 * 1024);
    frame::put_window_update(&mut out, 0, 200 * 1024);
    c.send(&out).await;
    loop {
        let f = c.next_on_stream().await.unwrap();
        assert_eq!(f.kind, frame::DATA);
        assert!(f.payload.len() <= frame::DEFAULT_FRAME);
        got += f.payload.len();
        if f.flags & frame::END_STREAM != 0 {
            break;
        }
    }
    assert_eq!(got, 100 * 1024);
}

#[tokio::test]
async fn stream_ids_that_go_backwards_end_the_connection_with_protocol_error() {
    let mut c = start();
    c.open(&[]).await;
    let mut out = Vec::new();
    let end = frame::END_HEADERS | frame::END_STREAM;
    put(&mut out, frame::HEADERS, end, 5, &request_block("/a"));
    c.send(&out).await;
    assert_eq!(c.response(5).await.0, 200);
    let mut out = Vec::new();
    put(&mut out, frame::HEADERS, end, 3, &request_block("/b"));
    c.send(&out).await;
    assert_eq!(c.goaway().await, (5, Reason::Protocol as u32));
    assert!(c.next().await.is_none(), "the connection ends");
}

#[tokio::test]
async fn a_broken_header_block_is_a_compression_error() {
    let mut c = start();
    c.open(&[]).await;
    let mut out = Vec::new();
    // Index 70 of an empty dynamic table.
    put(
        &mut out,
        frame::HEADERS,
        frame::END_HEADERS | frame::END_STREAM,
        1,
        &[0x80 | 70],
    );
    c.send(&out).await;
    assert_eq!(c.goaway().await.1, Reason::Compression as u32);
}

#[tokio::test]
async fn a_client_that_skips_the_preface_is_dropped() {
    let mut c = start();
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    while let Some(f) = c.next().await {
        assert_ne!(f.kind, frame::HEADERS, "nothing is answered");
    }
}

#[tokio::test]
async fn data_beyond_the_stream_window_resets_the_stream() {
    let mut c = start();
    c.open(&[]).await;
    let mut out = Vec::new();
    put(
        &mut out,
        frame::HEADERS,
        frame::END_HEADERS,
        1,
        &request_block("/up"),
    );
    let chunk = vec![0u8; frame::DEFAULT_FRAME];
    // 33 full frames: more than the 512 KiB stream window.
    for _ in 0..33 {
        put(&mut out, frame::DATA, 0, 1, &chunk);
    }
    c.send(&out).await;
    loop {
        let f = c.next_on_stream().await.unwrap();
        if f.kind == frame::RST_STREAM {
            assert_eq!(frame::be32(&f.payload), Reason::FlowControl as u32);
            break;
        }
    }
}

#[tokio::test]
async fn a_flood_of_resets_is_told_to_calm_down() {
    let mut c = start();
    c.open(&[]).await;
    let mut out = Vec::new();
    for i in 0..300u32 {
        let id = 2 * i + 1;
        // A request whose body never comes, reset at once.
        put(
            &mut out,
            frame::HEADERS,
            frame::END_HEADERS,
            id,
            &request_block("/r"),
        );
        frame::put_rst(&mut out, id, Reason::Cancel);
    }
    c.send(&out).await;
    assert_eq!(c.goaway().await.1, Reason::EnhanceYourCalm as u32);
}

#[tokio::test]
async fn a_head_over_the_limit_is_answered_431() {
    let mut c = start();
    c.open(&[]).await;
    let mut block = request_block("/");
    let big = "v".repeat(16 * 1024);
    for i in 0..5 {
        hpack::put_field(&mut block, format!("x-big-{i}").as_bytes(), big.as_bytes());
    }
    let mut out = Vec::new();
    let mut chunks = block.chunks(frame::DEFAULT_FRAME).peekable();
    let mut kind = frame::HEADERS;
    while let Some(ch) = chunks.next() {
        let last = chunks.peek().is_none();
        let flags = if last { frame::END_HEADERS } else { 0 }
            | if kind == frame::HEADERS {
                frame::END_STREAM
            } else {
                0
            };
        put(&mut out, kind, flags, 1, ch);
        kind = frame::CONTINUATION;
    }
    c.send(&out).await;
    assert_eq!(c.response(1).await.0, 431);
}

#[tokio::test]
async fn a_graceful_close_lets_streams_on_the_wire_in_then_ends() {
    let (client, server) = tokio::io::duplex(1 << 20);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut conn = Connection::new(server, service);
        let mut rx = Some(rx);
        std::future::poll_fn(|cx| {
            if let Some(r) = &mut rx {
                if std::pin::Pin::new(r).poll(cx).is_ready() {
                    rx = None;
                    conn.graceful_shutdown();
                }
            }
            std::pin::Pin::new(&mut conn).poll(cx)
        })
        .await
    });
    use std::future::Future;
    let mut c = Client {
        io: client,
        buf: Vec::new(),
        dec: hpack::Decoder::default(),
    };
    c.open(&[]).await;
    let mut out = Vec::new();
    put(
        &mut out,
        frame::HEADERS,
        frame::END_HEADERS,
        1,
        &request_block("/slow"),
    );
    c.send(&out).await;
    tx.send(()).unwrap();
    // First GOAWAY: every stream still counts; then the PING to answer.
    assert_eq!(c.goaway().await, ((1 << 31) - 1, 0));
    let ping = c.next_on_stream().await.unwrap();
    assert_eq!(ping.kind, frame::PING);
    // A stream the client started before it read the GOAWAY is still served.
    let mut out = Vec::new();
    put(
        &mut out,
        frame::HEADERS,
        frame::END_HEADERS | frame::END_STREAM,
        3,
        &request_block("/late"),
    );
    frame::put_ping(&mut out, frame::ACK, ping.payload.try_into().unwrap());
    c.send(&out).await;
    assert_eq!(
        c.goaway().await,
        (3, 0),
        "the final GOAWAY names the last stream"
    );
    assert_eq!(c.response(3).await, (200, b"/late 0".to_vec()));
    // Stream 1 finishes too, then the connection ends cleanly.
    let mut out = Vec::new();
    put(&mut out, frame::DATA, frame::END_STREAM, 1, b"abc");
    c.send(&out).await;
    assert_eq!(c.response(1).await, (200, b"/slow 3".to_vec()));
    assert!(c.next().await.is_none());
    assert!(task.await.unwrap().is_ok());
}

/// Frames of every type with random flags, streams and payloads, then the client leaves:
/// the connection ends every time, and never panics (a panic fails the join).
#[tokio::test]
async fn random_frames_never_panic_the_server() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..300 {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let task = tokio::spawn(async move {
            let _ = Connection::new(server, service).await;
        });
        let mut out = frame::PREFACE.to_vec();
        frame::put_settings(&mut out, &[]);
        for _ in 0..20 {
            let r = next();
            let kind = (r % 11) as u8;
            let flags = (r >> 8) as u8;
            let stream = ((r >> 16) % 8) as u32;
            let len = ((r >> 24) % 48) as usize;
            let payload: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            // Now and then a real request, so later frames meet open streams.
            if r % 5 == 0 {
                let id = 2 * (stream / 2) + 1;
                put(
                    &mut out,
                    frame::HEADERS,
                    frame::END_HEADERS,
                    id,
                    &request_block("/"),
                );
            }
            put(&mut out, kind, flags, stream, &payload);
        }
        let _ = client.write_all(&out).await;
        drop(client);
        tokio::time::timeout(WAIT, task)
            .await
            .expect("the connection ended once the client left")
            .expect("the server did not panic");
    }
}
