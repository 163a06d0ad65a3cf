//! WebSocket tunnels through handoff: echo end to end, counted as tunnel sessions, and
//! closed with 1001 "going away" toward both sides at the node's drain deadline.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use http::Method;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use crate::common::*;
use handoff::pool::{Health, SessionKind};

/// A WebSocket echo server that records the close codes it receives.
async fn ws_echo() -> (SocketAddr, Arc<Mutex<Vec<u16>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let closes = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&closes);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                // Health checks connect and leave: not every connection is a WebSocket.
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    match msg {
                        Message::Text(_) | Message::Binary(_) => {
                            let Ok(()) = ws.send(msg).await else { return };
                        }
                        Message::Close(frame) => {
                            seen.lock()
                                .unwrap()
                                .push(frame.map_or(0, |f| u16::from(f.code)));
                            return;
                        }
                        _ => {}
                    }
                }
            });
        }
    });
    (addr, closes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_is_tunnelled_and_closed_with_1001_at_the_drain_deadline() {
    let (backend, backend_closes) = ws_echo().await;
    let yaml = format!(
        r#"admin: {{ listen: "127.0.0.1:0" }}
listeners:
  - {{ name: web, listen: "127.0.0.1:0", protocol: http, routes: [ {{ pool: ws }} ] }}
pools:
  - name: ws
    nodes: [ {{ name: a, addr: "{backend}" }} ]
    health: {{ interval: 100ms, timeout: 100ms, healthy_after: 1, tcp: {{}} }}
    drain: {{ timeout: 300ms, close_spread: 0s }}
"#
    );
    let proxy = Proxy::start(&yaml).await;
    proxy.wait_health("ws", "a", Health::Up).await;
    let tcp = TcpStream::connect(proxy.addr("web")).await.unwrap();
    let (mut ws, resp) =
        tokio_tungstenite::client_async(format!("ws://{}/chat", proxy.addr("web")), tcp)
            .await
            .expect("WebSocket handshake through handoff");
    assert_eq!(resp.status(), 101);
    for text in ["hello", "through", "handoff"] {
        ws.send(Message::text(text)).await.unwrap();
        let echo = tokio::time::timeout(WAIT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echo, Message::text(text));
    }
    let node = proxy.node("ws", "a");
    assert_eq!(node.state.sessions(SessionKind::Tunnel), 1);

    let (status, _) = proxy
        .admin_json(
            Method::POST,
            "/v1/pools/ws/nodes/a/drain",
            json!({"force": true}),
        )
        .await;
    assert_eq!(status, 200);
    // The tunnel keeps working until the deadline...
    ws.send(Message::text("before the deadline")).await.unwrap();
    let echo = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echo, Message::text("before the deadline"));
    // ...then the client gets a close frame 1001.
    let close = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("no close frame")
        .unwrap()
        .unwrap();
    let Message::Close(Some(frame)) = close else {
        panic!("expected a close frame, got {close:?}")
    };
    assert_eq!(frame.code, CloseCode::Away);
    let view = proxy.wait_drained("ws", "a").await;
    assert_eq!(view["deadline_closes"], 1);
    eventually("the backend gets a close frame", || {
        !backend_closes.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(
        *backend_closes.lock().unwrap(),
        vec![1001],
        "the backend did not get 1001"
    );
    assert!(proxy.metrics().await.contains(
        "handoff_drain_deadline_closes_total{kind=\"tunnels\",node=\"a\",pool=\"ws\"} 1"
    ));
}
