//! RFC 9112 framing, rule by rule.

use super::*;

/// What the tests forward with: a client address, plain HTTP, no ID, no rules.
const FWD: crate::proxy::codec::head::Forwarding<'static> = crate::proxy::codec::head::Forwarding {
    forwarded_for: b"192.0.2.7",
    proto: "http",
    request_id: None,
    rules: None,
    default_host: "pool",
};

fn h<'a>(pairs: &'a [(&'a str, &'a str)]) -> Vec<Header<'a>> {
    pairs
        .iter()
        .map(|(n, v)| Header {
            name: n,
            value: v.as_bytes(),
        })
        .collect()
}

#[test]
fn request_without_framing_headers_has_no_body() {
    assert_eq!(request_body(&h(&[("host", "x")]), 1), Ok(BodyLen::Empty));
    assert_eq!(
        request_body(&h(&[("content-length", "0")]), 1),
        Ok(BodyLen::Length(0))
    );
}

#[test]
fn content_length_repeated_with_one_value_is_that_length() {
    assert_eq!(
        request_body(&h(&[("Content-Length", "12")]), 1),
        Ok(BodyLen::Length(12))
    );
    let same = h(&[("content-length", "5"), ("content-length", "5, 5")]);
    assert_eq!(request_body(&same, 1), Ok(BodyLen::Length(5)));
}

#[test]
fn content_length_values_that_differ_or_are_not_numbers_are_refused() {
    for bad in [
        &[("content-length", "5"), ("content-length", "6")][..],
        &[("content-length", "5, 6")],
        &[("content-length", "+5")],
        &[("content-length", "-1")],
        &[("content-length", "0x10")],
        &[("content-length", "")],
        &[("content-length", "99999999999999999999")],
    ] {
        assert_eq!(request_body(&h(bad), 1), Err(Bad::BadLength), "{bad:?}");
    }
}

#[test]
fn transfer_encoding_with_content_length_is_refused() {
    let both = h(&[("content-length", "6"), ("transfer-encoding", "chunked")]);
    assert_eq!(request_body(&both, 1), Err(Bad::LengthAndCoding));
}

#[test]
fn only_exactly_chunked_frames_a_request() {
    assert_eq!(
        request_body(&h(&[("Transfer-Encoding", "Chunked")]), 1),
        Ok(BodyLen::Chunked)
    );
    assert_eq!(
        request_body(&h(&[("transfer-encoding", " chunked ")]), 1),
        Ok(BodyLen::Chunked)
    );
    for te in [
        "chunked, identity",
        "xchunked",
        "gzip",
        "gzip, chunked",
        "chunked, chunked",
        ",",
    ] {
        assert_eq!(
            request_body(&h(&[("transfer-encoding", te)]), 1),
            Err(Bad::BadCoding),
            "{te:?}"
        );
    }
    let split = h(&[
        ("transfer-encoding", "gzip"),
        ("transfer-encoding", "chunked"),
    ]);
    assert_eq!(request_body(&split, 1), Err(Bad::BadCoding));
}

#[test]
fn transfer_encoding_in_an_http10_request_is_refused() {
    let te = h(&[("transfer-encoding", "chunked")]);
    assert_eq!(request_body(&te, 0), Err(Bad::CodingInHttp10));
}

#[test]
fn responses_to_head_and_1xx_204_304_have_no_body() {
    let cl = h(&[("content-length", "10")]);
    assert_eq!(response_body(&cl, 200, true), Ok((BodyLen::Empty, false)));
    for status in [100, 101, 103, 204, 304] {
        assert_eq!(
            response_body(&cl, status, false),
            Ok((BodyLen::Empty, false))
        );
    }
}

#[test]
fn response_framing_chunked_wins_length_and_otherwise_until_close() {
    let cl = h(&[("content-length", "10")]);
    assert_eq!(
        response_body(&cl, 200, false),
        Ok((BodyLen::Length(10), false))
    );
    let chunked = h(&[("transfer-encoding", "gzip, chunked")]);
    assert_eq!(
        response_body(&chunked, 200, false),
        Ok((BodyLen::Chunked, false))
    );
    let both = h(&[("transfer-encoding", "chunked"), ("content-length", "3")]);
    assert_eq!(
        response_body(&both, 200, false),
        Ok((BodyLen::Chunked, true))
    );
    let gzip = h(&[("transfer-encoding", "gzip")]);
    assert_eq!(
        response_body(&gzip, 200, false),
        Ok((BodyLen::UntilClose, true))
    );
    assert_eq!(
        response_body(&[], 200, false),
        Ok((BodyLen::UntilClose, true))
    );
    let bad = h(&[("content-length", "1"), ("content-length", "2")]);
    assert_eq!(response_body(&bad, 200, false), Err(Bad::BadLength));
}

#[test]
fn bare_lf_is_found() {
    assert!(!has_bare_lf(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
    assert!(has_bare_lf(b"GET / HTTP/1.1\nHost: x\r\n\r\n"));
    assert!(has_bare_lf(b"\n"));
    assert!(has_bare_lf(b"GET / HTTP/1.1\r\nHost: x\r\n\n"));
}

fn scan_all(body: &[u8]) -> Result<(usize, bool), Bad> {
    let mut c = Chunked::default();
    let n = c.scan(body)?;
    Ok((n, c.is_done()))
}

#[test]
fn chunked_bodies_with_extensions_and_trailers_end_where_they_end() {
    let body = b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 1\r\n\r\nGET /next";
    assert_eq!(scan_all(body), Ok((body.len() - 9, true)));
    let plain = b"A\r\n0123456789\r\n0\r\n\r\n";
    assert_eq!(scan_all(plain), Ok((plain.len(), true)));
}

#[test]
fn chunked_bodies_are_followed_byte_by_byte() {
    let body = b"3\r\nabc\r\n0\r\nt: 1\r\n\r\n";
    let mut c = Chunked::default();
    let mut held = Vec::new();
    let mut data = Vec::new();
    for &b in body {
        held.push(b);
        loop {
            match c.step(&held).unwrap() {
                Piece::Incomplete => break,
                Piece::Data(n) => {
                    data.extend_from_slice(&held[..n]);
                    held.drain(..n);
                }
                Piece::Framing(n) | Piece::End(n) => {
                    held.drain(..n);
                }
            }
        }
    }
    assert!(c.is_done() && held.is_empty());
    assert_eq!(data, b"abc");
}

#[test]
fn invalid_chunk_sizes_are_refused() {
    for bad in [
        &b"zz\r\n"[..],
        b"\r\n",
        b"-1\r\n",
        b" 5\r\n",
        b"5\n",
        b"5;a\nb\r\n",
        b"5;\x00\r\n",
        b"10000000000000000\r\n",
        b"5\r\nhello0\r\n",
        b"0\r\nbad header\r\n\r\n",
        b"0\r\nx: 1\n\r\n",
    ] {
        let mut c = Chunked::default();
        assert_eq!(
            c.scan(bad).err(),
            Some(Bad::BadChunk),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    let long = vec![b'a'; MAX_CHUNK_LINE + 10];
    assert_eq!(Chunked::default().scan(&long), Err(Bad::BadChunk));
}

#[test]
fn chunked_bodies_pass_whole_or_lose_their_coding_for_http10() {
    let data = b"3\r\nabc\r\n0\r\n\r\nextra";
    let mut out = Vec::new();
    let mut left = Left::Chunked(Chunked::default());
    assert_eq!(
        ready(&mut left, data, false, &mut out, true),
        Ok((data.len() - 5, true))
    );
    assert_eq!(out, &data[..data.len() - 5]);
    let mut out = Vec::new();
    let mut left = Left::Chunked(Chunked::default());
    assert_eq!(
        ready(&mut left, data, true, &mut out, true),
        Ok((data.len() - 5, true))
    );
    assert_eq!(out, b"abc");
    let mut left = Left::Bytes(4);
    assert_eq!(
        ready(&mut left, b"abcdef", false, &mut out, false),
        Ok((4, true))
    );
}

mod generated {
    //! Generated heads: whatever handoff accepts, the head it writes for the backend frames
    //! the body exactly as handoff did; nothing panics on any input.
    use super::super::{request_body, BodyLen, Chunked};
    use crate::proxy::codec::head;
    use proptest::prelude::*;
    use proptest::sample::select;

    fn field() -> impl Strategy<Value = String> {
        let names = select(vec![
            "Host",
            "Content-Length",
            "content-length",
            "Transfer-Encoding",
            "TE",
            "Connection",
            "X-A",
            "Upgrade",
            "Cookie",
            "X-Forwarded-For",
        ]);
        let values = select(vec![
            "x",
            "0",
            "5",
            "5, 5",
            "5, 6",
            "-1",
            "chunked",
            "Chunked",
            "gzip, chunked",
            "chunked, identity",
            "close",
            "keep-alive, X-A",
            "upgrade",
            "websocket",
            "",
            " chunked",
            "a\tb",
        ]);
        let seps = select(vec![": ", ":", " : ", ":\t"]);
        let ends = select(vec!["\r\n", "\r\n", "\r\n", "\n"]);
        (names, seps, values, ends).prop_map(|(n, s, v, e)| format!("{n}{s}{v}{e}"))
    }

    fn request() -> impl Strategy<Value = Vec<u8>> {
        let lines = select(vec![
            "GET / HTTP/1.1\r\n",
            "POST /a?b HTTP/1.1\r\n",
            "PUT http://h/x HTTP/1.1\r\n",
            "GET / HTTP/1.0\r\n",
            "HEAD / HTTP/1.1\r\n",
        ]);
        (lines, proptest::collection::vec(field(), 0..6))
            .prop_map(|(l, f)| format!("{l}{}\r\nbody", f.concat()).into_bytes())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

        #[test]
        fn the_backend_frames_what_handoff_accepted_the_same_way(raw in request()) {
            let mut fields = head::fields();
            let Ok(Some(req)) = head::parse_request(&raw, &mut fields) else { return Ok(()) };
            let Ok(info) = head::inspect(&req) else { return Ok(()) };
            let mut out = Vec::new();
            head::write_request(&mut out, &req, &info, &super::FWD);
            let mut again = head::fields();
            let sent = head::parse_request(&out, &mut again)
                .expect("the rewritten head parses")
                .expect("and is complete");
            prop_assert_eq!(sent.len, out.len());
            let framed = request_body(sent.headers, 1).expect("and frames plainly");
            prop_assert_eq!(framed, info.body);
            prop_assert!(info.body != BodyLen::UntilClose);
        }

        #[test]
        fn no_input_panics(raw in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut fields = head::fields();
            if let Ok(Some(req)) = head::parse_request(&raw, &mut fields) {
                let _ = head::inspect(&req);
            }
            let mut fields = head::fields();
            if let Ok(Some(resp)) = crate::proxy::codec::response::parse_response(&raw, &mut fields) {
                let _ = crate::proxy::codec::response::inspect_response(&resp, false);
            }
            let _ = Chunked::default().scan(&raw);
        }
    }
}
