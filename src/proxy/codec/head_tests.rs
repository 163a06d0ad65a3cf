//! Head parsing and rewriting, requests (`head`) and responses (`response`).

use super::*;
use crate::proxy::codec::response::*;

/// What the tests forward with: a client address, plain HTTP, no ID, no rules.
const FWD: Forwarding<'static> = Forwarding {
    forwarded_for: b"192.0.2.7",
    proto: "http",
    request_id: None,
    rules: None,
    default_host: "pool",
};

fn rewrite(raw: &str) -> Result<String, Refusal> {
    let mut fields = fields();
    let req = parse_request(raw.as_bytes(), &mut fields)?.expect("complete");
    let info = inspect(&req)?;
    let mut out = Vec::new();
    write_request(&mut out, &req, &info, &FWD);
    Ok(String::from_utf8(out).unwrap())
}

#[test]
fn hop_by_hop_fields_go_forwarding_fields_come_and_names_keep_their_case() {
    let out = rewrite(
        "GET /a?b=1 HTTP/1.1\r\nHost: example.test\r\nConnection: keep-alive, X-Secret\r\n\
         x-secret: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nX-Forwarded-For: 10.0.0.1\r\n\
         x-forwarded-for: 10.0.0.2\r\nX-Forwarded-Proto: https\r\nX-MiXeD-Case: yes\r\n\r\n",
    )
    .unwrap();
    assert_eq!(
        out,
        "GET /a?b=1 HTTP/1.1\r\nHost: example.test\r\nX-MiXeD-Case: yes\r\n\
         X-Forwarded-For: 10.0.0.1, 10.0.0.2, 192.0.2.7\r\nX-Forwarded-Proto: http\r\n\r\n"
    );
}

#[test]
fn an_http10_request_without_host_gets_the_pools_name_as_host() {
    // HTTP/1.1 requires Host (RFC 9112 §3.2): a backend answers 400 without one.
    let out = rewrite("GET / HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!(
        out,
        "GET / HTTP/1.1\r\nHost: pool\r\nX-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: http\r\n\r\n"
    );
    let kept = rewrite("GET / HTTP/1.0\r\nHost: a.test\r\n\r\n").unwrap();
    assert!(
        kept.contains("Host: a.test\r\n") && !kept.contains("pool"),
        "{kept}"
    );
}

#[test]
fn framing_fields_are_written_from_the_framing_decided() {
    let out = rewrite("POST / HTTP/1.1\r\nHost: x\r\ncontent-length: 5, 5\r\n\r\n").unwrap();
    assert!(
        out.contains("\r\nContent-Length: 5\r\n") && !out.contains("5, 5"),
        "{out}"
    );
    let out = rewrite("POST / HTTP/1.1\r\nHost: x\r\ntransfer-encoding: CHUNKED\r\n\r\n").unwrap();
    assert!(out.contains("\r\nTransfer-Encoding: chunked\r\n"), "{out}");
}

#[test]
fn absolute_form_targets_become_origin_form_and_route_by_their_authority() {
    let raw = "GET http://api.test:8080/v1/x?q=1 HTTP/1.1\r\nHost: other\r\n\r\n";
    let mut fields = fields();
    let req = parse_request(raw.as_bytes(), &mut fields).unwrap().unwrap();
    let info = inspect(&req).unwrap();
    assert_eq!((info.host, info.path), (Some("api.test:8080"), "/v1/x"));
    assert!(rewrite(raw)
        .unwrap()
        .starts_with("GET /v1/x?q=1 HTTP/1.1\r\n"));
    // HTTP/1.0 without Host: the authority becomes the Host.
    let out = rewrite("GET http://a.test/ HTTP/1.0\r\n\r\n").unwrap();
    assert!(out.contains("\r\nHost: a.test\r\n"), "{out}");
}

#[test]
fn requests_handoff_cannot_frame_or_route_are_refused() {
    let bad = |raw: &str| rewrite(raw).err();
    assert!(
        matches!(bad("GET / HTTP/1.1\r\n\r\n"), Some(Refusal::Bad(_))),
        "no Host"
    );
    assert!(matches!(
        bad("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        Some(Refusal::Bad(_))
    ));
    assert!(
        matches!(
            bad("GET / HTTP/1.1\nHost: a\r\n\r\n"),
            Some(Refusal::Bad(_))
        ),
        "bare LF"
    );
    assert!(matches!(
        bad("GET / HTTP/1.1\r\nHost : a\r\n\r\n"),
        Some(Refusal::Bad(_))
    ));
    assert!(matches!(
        bad("GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n"),
        Some(Refusal::Bad(_))
    ));
    assert!(matches!(
        bad("CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n"),
        Some(Refusal::NotImplemented(_))
    ));
    assert!(matches!(
        bad("GET ftp://a/ HTTP/1.1\r\nHost: a\r\n\r\n"),
        Some(Refusal::Bad(_))
    ));
    let many: String = (0..MAX_FIELDS + 1)
        .map(|i| format!("X-{i}: 1\r\n"))
        .collect();
    assert_eq!(
        bad(&format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n")),
        Some(Refusal::TooLarge)
    );
}

#[test]
fn keep_alive_follows_the_version_and_connection() {
    let ka = |raw: &str| {
        let mut fields = fields();
        let req = parse_request(raw.as_bytes(), &mut fields).unwrap().unwrap();
        inspect(&req).unwrap().keep_alive
    };
    assert!(ka("GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
    assert!(!ka(
        "GET / HTTP/1.1\r\nHost: a\r\nConnection: Close\r\n\r\n"
    ));
    assert!(!ka("GET / HTTP/1.0\r\n\r\n"));
    assert!(ka("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
}

fn respond(raw: &str, to_head: bool, client: ClientSide<'_>) -> (String, ResponseInfo) {
    let mut fields = fields();
    let resp = parse_response(raw.as_bytes(), &mut fields)
        .unwrap()
        .unwrap();
    let info = inspect_response(&resp, to_head).unwrap();
    let mut out = Vec::new();
    write_response(&mut out, &resp, &info, &client);
    (String::from_utf8(out).unwrap(), info)
}

const KEEP: ClientSide<'static> = ClientSide {
    minor: 1,
    keep_alive: true,
    set_cookie: None,
    upgrade: None,
    request_id: None,
    rules: None,
};

#[test]
fn responses_are_rewritten_for_the_client() {
    let (out, info) = respond(
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\nServer: b\r\n\r\n",
        false,
        ClientSide {
            set_cookie: Some(b"h=1"),
            ..KEEP
        },
    );
    assert_eq!(
        out,
        "HTTP/1.1 200 OK\r\nServer: b\r\nSet-Cookie: h=1\r\nContent-Length: 2\r\n\r\n"
    );
    assert!(!info.upstream_closes);
    // A HEAD response keeps its Content-Length; closing says so.
    let (out, _) = respond(
        "HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n",
        true,
        ClientSide {
            keep_alive: false,
            ..KEEP
        },
    );
    assert_eq!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Length: 99\r\nConnection: close\r\n\r\n"
    );
    // HTTP/1.0 clients get no chunked coding, and keep-alive said out loud.
    let (out, _) = respond(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        false,
        ClientSide { minor: 0, ..KEEP },
    );
    assert_eq!(out, "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\n\r\n");
    // An HTTP/1.0 backend without keep-alive, or a close-delimited body, ends the connection.
    let (_, info) = respond("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false, KEEP);
    assert!(info.upstream_closes);
    let (_, info) = respond("HTTP/1.1 200 OK\r\n\r\n", false, KEEP);
    assert!(info.upstream_closes && info.body == BodyLen::UntilClose);
}

#[test]
fn local_responses_are_complete_messages() {
    let mut out = Vec::new();
    write_local(
        &mut out,
        502,
        "the backend failed",
        false,
        Some("close"),
        None,
    );
    let text = String::from_utf8(out).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 502 Bad Gateway\r\n") && head.contains("Connection: close"));
    assert!(
        head.contains(&format!("Content-Length: {}", body.len())),
        "{text}"
    );
}

#[test]
fn decimals_are_written_plainly() {
    for n in [0u64, 7, 10, 204, 65536, u64::MAX] {
        let mut out = Vec::new();
        push_decimal(&mut out, n);
        assert_eq!(out, n.to_string().as_bytes());
    }
}

#[test]
fn connection_fields_are_read_in_one_pass_whatever_their_case_and_count() {
    let h = |name, value| httparse::Header { name, value };
    let none = connection_tokens(&[h("Host", &b"x"[..])]);
    assert_eq!(none, ConnectionTokens::default());
    let headers = [
        h("connection", &b" Keep-Alive , X-Secret"[..]),
        h("Host", &b"x"[..]),
        h("CONNECTION", &b"UPGRADE,,close"[..]),
    ];
    let c = connection_tokens(&headers);
    assert!(
        c.keep_alive && c.upgrade && c.close && c.names_fields,
        "{c:?}"
    );
    assert!(names_fields(&headers));
    let plain = [h("Connection", &b"close, keep-alive, upgrade"[..])];
    assert!(!connection_tokens(&plain).names_fields);
}

#[test]
fn every_hop_by_hop_and_rewritten_name_is_dropped_in_any_case_and_others_kept() {
    let gone = [
        "TE",
        "Trailer",
        "UPGRADE",
        "Connection",
        "keep-alive",
        "Content-Length",
        "X-Forwarded-For",
        "Proxy-Connection",
        "transfer-encoding",
        "X-FORWARDED-PROTO",
        "Proxy-Authenticate",
        "proxy-authorization",
    ];
    for name in gone {
        assert!(dropped(name, &[], true, false), "{name}");
        let lower = name.to_ascii_lowercase();
        assert!(dropped(&lower, &[], true, false), "{lower}");
    }
    // Forwarding fields are rewritten on requests only.
    assert!(!dropped("X-Forwarded-For", &[], false, false));
    for name in [
        "Host",
        "User-Agent",
        "Accept",
        "Content-Type",
        "Tex",
        "Cookie",
        "Date",
        "",
        "-",
    ] {
        assert!(!dropped(name, &[], true, false), "{name}");
    }
    // A name `Connection` lists is dropped, whatever its first letter.
    let conn = [httparse::Header {
        name: "Connection",
        value: b"X-Secret, Authorization",
    }];
    assert!(dropped("x-secret", &conn, true, true) && dropped("Authorization", &conn, true, true));
    assert!(!dropped("Host", &conn, true, true));
}

#[test]
fn fields_passed_on_come_out_as_name_colon_space_value_however_they_were_spaced() {
    let out = rewrite(
        "GET / HTTP/1.1\r\nHost: h\r\nA:b\r\nC:   d\r\nE:\tf\r\nG: h  \r\nEmpty:\r\nI: j\r\n\r\n",
    )
    .unwrap();
    assert_eq!(
        out,
        "GET / HTTP/1.1\r\nHost: h\r\nA: b\r\nC: d\r\nE: f\r\nG: h\r\nEmpty: \r\nI: j\r\n\
         X-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: http\r\n\r\n"
    );
    let (resp, _) = respond(
        "HTTP/1.1 200 OK\r\nA:b\r\nC:  d\r\nE: f\r\nContent-Length: 0\r\n\r\n",
        false,
        KEEP,
    );
    assert!(resp.contains("\r\nA: b\r\nC: d\r\nE: f\r\n"), "{resp:?}");
}

#[test]
fn host_values_are_checked_alike_on_the_quick_path_and_by_the_http_crate() {
    for good in [
        "a.test",
        "a.test:8080",
        "10.0.0.1:80",
        "x-y.z",
        "[::1]:80",
        "a_b.test",
    ] {
        assert!(valid_host(good), "{good}");
    }
    for bad in ["a test", "a@b", "a:1:2", "[::1", "a\x7f", "a{b"] {
        assert!(!valid_host(bad), "{bad}");
    }
    // The quick path takes a subset of what the full parse accepts.
    for quick in ["a.test", "a.test:8080", "10.0.0.1:80", "x-y.z", "A1:65535"] {
        assert!(plain_host(quick.as_bytes()), "{quick}");
        assert!(http::uri::Authority::try_from(quick).is_ok(), "{quick}");
    }
    for slow in ["", "a:", "[::1]", "a_b", "a:123456", ":80"] {
        assert!(!plain_host(slow.as_bytes()), "{slow}");
    }
}
