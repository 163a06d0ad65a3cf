//! HTTP/2 clients that misbehave without breaking the protocol: a flood of PING ACKs for
//! PINGs handoff never sent leaves no WARN line in the log (any client could fill it).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::backends::HttpBackend;
use crate::common::process::Handoff;
use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unsolicited_ping_acks_leaves_no_warn_line() {
    let (a, b) = (
        HttpBackend::start("a", "1.0").await,
        HttpBackend::start("b", "1.0").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("handoff.yaml");
    std::fs::write(&config, http_config(&[("a", a.addr), ("b", b.addr)], "")).unwrap();
    let h = Handoff::start(&config).await;
    h.wait_up("a").await;
    let (_, status) =
        crate::common::process::call(&client(), http::Method::GET, &h.url("/v1/status"), None)
            .await
            .unwrap();
    let web = status["listeners"][0]["listen"]
        .as_str()
        .unwrap()
        .to_string();
    let mut s = tokio::net::TcpStream::connect(&web).await.unwrap();
    // h2c with prior knowledge: the preface, empty SETTINGS, then 200 PING frames with ACK.
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    for i in 0..200u64 {
        out.extend_from_slice(&[0, 0, 8, 6, 1, 0, 0, 0, 0]);
        out.extend_from_slice(&i.to_be_bytes());
    }
    // Then a PING of our own: its ACK comes back only once every frame before it was read.
    out.extend_from_slice(&[0, 0, 8, 6, 0, 0, 0, 0, 0]);
    out.extend_from_slice(b"handoff!");
    s.write_all(&out).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let ack: &[u8] = &[
        0, 0, 8, 6, 1, 0, 0, 0, 0, b'h', b'a', b'n', b'd', b'o', b'f', b'f', b'!',
    ];
    while !got.windows(ack.len()).any(|w| w == ack) {
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("the server answered our PING")
            .unwrap();
        assert!(n > 0, "the connection was closed: {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    // The proxy still serves.
    let (code, _) = get(&client(), &format!("http://{web}/")).await;
    assert_eq!(code, 200);
    drop(s);
    // The log is read by another thread: give it a moment to see any line written.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let warns: Vec<String> = h
        .log()
        .into_iter()
        .filter(|l| l.contains("WARN") && l.to_lowercase().contains("ping"))
        .collect();
    assert!(warns.is_empty(), "{warns:#?}");
}
