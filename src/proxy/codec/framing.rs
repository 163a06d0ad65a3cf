//! Message framing (RFC 9112 §6): where a request or response body ends.
//!
//! Anything ambiguous is refused rather than guessed, so a backend can never see a message
//! boundary other than the one handoff saw: Transfer-Encoding with Content-Length,
//! Content-Length values that differ, a request coding other than exactly `chunked`, bare
//! LF line ends, and malformed chunk framing. Heads are parsed by httparse; chunk-size lines
//! by `httparse::parse_chunk_size`, and trailers by `httparse::parse_headers`, after the
//! stricter checks here.

use httparse::Header;

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLen {
    /// No body, by rule (no framing header in a request; a response to HEAD, or 1xx, 204,
    /// 304), whatever a Content-Length says.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the sender closes (responses only).
    UntilClose,
}

/// Why a message's framing cannot be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Bad {
    #[error("Transfer-Encoding together with Content-Length")]
    LengthAndCoding,
    #[error("Content-Length values differ or are not a number")]
    BadLength,
    #[error("a request Transfer-Encoding other than chunked")]
    BadCoding,
    #[error("Transfer-Encoding in an HTTP/1.0 request")]
    CodingInHttp10,
    #[error("a line ends in a bare LF")]
    BareLf,
    #[error("invalid chunk framing")]
    BadChunk,
    #[error("a malformed message head")]
    Malformed,
}

/// Whether `b` holds an LF not preceded by CR (RFC 9112 §2.2 lets a recipient accept one; a
/// proxy must not, since the next hop may disagree on where the line ends).
pub fn has_bare_lf(b: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', b).any(|at| at == 0 || b[at - 1] != b'\r')
}

/// A Content-Length value: decimal digits only, at most 19 (so it fits a u64).
pub fn decimal(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0, |n, &d| n * 10 + u64::from(d - b'0')))
}

/// Content-Length over every field line and list element: one value, however often
/// repeated (RFC 9110 §8.6); `None` when absent.
fn content_length(headers: &[Header<'_>]) -> Result<Option<u64>, Bad> {
    let mut found: Option<u64> = None;
    for h in headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
    {
        for v in h.value.split(|&c| c == b',') {
            let n = decimal(trim(v)).ok_or(Bad::BadLength)?;
            if found.is_some_and(|f| f != n) {
                return Err(Bad::BadLength);
            }
            found = Some(n);
        }
    }
    Ok(found)
}

/// The transfer codings, in order, over every Transfer-Encoding line; `None` when absent.
fn codings<'a>(headers: &'a [Header<'a>]) -> Option<impl Iterator<Item = &'a [u8]> + 'a> {
    let mut lines = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
        .peekable();
    lines.peek()?;
    Some(
        lines
            .flat_map(|h| h.value.split(|&c| c == b','))
            .map(trim)
            .filter(|c| !c.is_empty()),
    )
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|&c| c != b' ' && c != b'\t')
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|&c| c != b' ' && c != b'\t')
        .map_or(start, |e| e + 1);
    &v[start..end]
}

/// A request's body (RFC 9112 §6.3, rules 3–6). `minor` is the HTTP/1.x minor version.
pub fn request_body(headers: &[Header<'_>], minor: u8) -> Result<BodyLen, Bad> {
    if let Some(mut codings) = codings(headers) {
        if minor == 0 {
            return Err(Bad::CodingInHttp10);
        }
        // Exactly one coding, `chunked`: anything else (`gzip, chunked` included) is a
        // coding the backend might frame differently.
        let only_chunked = codings
            .next()
            .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"))
            && codings.next().is_none();
        if !only_chunked {
            return Err(Bad::BadCoding);
        }
        if headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("content-length"))
        {
            return Err(Bad::LengthAndCoding);
        }
        return Ok(BodyLen::Chunked);
    }
    Ok(content_length(headers)?.map_or(BodyLen::Empty, BodyLen::Length))
}

/// A response's body (RFC 9112 §6.3, rules 1–7), given the request's method and the status.
/// The second value says whether the connection must close after it: a response framed by
/// Transfer-Encoding despite a Content-Length is suspect.
pub fn response_body(
    headers: &[Header<'_>],
    status: u16,
    to_head: bool,
) -> Result<(BodyLen, bool), Bad> {
    if to_head || (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok((BodyLen::Empty, false));
    }
    if let Some(codings) = codings(headers) {
        let chunked_last = codings
            .last()
            .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"));
        let with_length = headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("content-length"));
        return Ok(if chunked_last {
            (BodyLen::Chunked, with_length)
        } else {
            (BodyLen::UntilClose, true)
        });
    }
    Ok(match content_length(headers)? {
        None => (BodyLen::UntilClose, true),
        Some(n) => (BodyLen::Length(n), false),
    })
}

/// Longest chunk-size line (with its extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;
/// Largest trailer section accepted.
const MAX_TRAILERS: usize = 16 * 1024;

/// One step through a chunked body.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    /// This many bytes of framing (a size line, a CRLF after data).
    Framing(usize),
    /// This many bytes of chunk data.
    Data(usize),
    /// The last chunk's line was seen before; this many bytes of trailers and the final
    /// CRLF end the body.
    End(usize),
    /// More bytes are needed to go on.
    Incomplete,
}

/// Follows a chunked body as it passes, checking every line (RFC 9112 §7.1).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Chunked {
    /// Expecting a chunk-size line.
    #[default]
    Size,
    /// Inside chunk data, this many bytes to go.
    Data(u64),
    /// Expecting the CRLF after chunk data.
    DataEnd,
    /// After the last chunk: expecting trailers or the final CRLF.
    Trailers,
    Done,
}

impl Chunked {
    pub fn is_done(&self) -> bool {
        *self == Chunked::Done
    }

    /// Reads the next piece at the front of `buf`.
    pub fn step(&mut self, buf: &[u8]) -> Result<Piece, Bad> {
        match *self {
            Chunked::Size => {
                let Some(lf) = buf.iter().position(|&c| c == b'\n') else {
                    return if buf.len() > MAX_CHUNK_LINE {
                        Err(Bad::BadChunk)
                    } else {
                        Ok(Piece::Incomplete)
                    };
                };
                let line = &buf[..=lf];
                // A hex digit first (parse_chunk_size takes an empty size as 0), and no
                // control byte but HTAB in the extensions (it skips anything there, a bare
                // LF included).
                let body = &line[..line.len().saturating_sub(2)];
                if lf > MAX_CHUNK_LINE
                    || lf == 0
                    || line[lf - 1] != b'\r'
                    || !line[0].is_ascii_hexdigit()
                    || body.iter().any(|&c| (c < 0x20 && c != b'\t') || c == 0x7f)
                {
                    return Err(Bad::BadChunk);
                }
                match httparse::parse_chunk_size(line) {
                    Ok(httparse::Status::Complete((n, size))) if n == line.len() => {
                        *self = if size == 0 {
                            Chunked::Trailers
                        } else {
                            Chunked::Data(size)
                        };
                        Ok(Piece::Framing(n))
                    }
                    _ => Err(Bad::BadChunk),
                }
            }
            Chunked::Data(left) => {
                let n = (buf.len() as u64).min(left);
                if n == 0 {
                    return Ok(Piece::Incomplete);
                }
                *self = if n == left {
                    Chunked::DataEnd
                } else {
                    Chunked::Data(left - n)
                };
                Ok(Piece::Data(n as usize))
            }
            Chunked::DataEnd => match buf {
                [b'\r', b'\n', ..] => {
                    *self = Chunked::Size;
                    Ok(Piece::Framing(2))
                }
                [] | [b'\r'] => Ok(Piece::Incomplete),
                _ => Err(Bad::BadChunk),
            },
            Chunked::Trailers => {
                if buf.starts_with(b"\r\n") {
                    *self = Chunked::Done;
                    return Ok(Piece::End(2));
                }
                let mut fields = [httparse::EMPTY_HEADER; 32];
                match httparse::parse_headers(buf, &mut fields) {
                    Ok(httparse::Status::Complete((n, _))) if !has_bare_lf(&buf[..n]) => {
                        *self = Chunked::Done;
                        Ok(Piece::End(n))
                    }
                    Ok(httparse::Status::Partial) if buf.len() <= MAX_TRAILERS => {
                        Ok(Piece::Incomplete)
                    }
                    _ => Err(Bad::BadChunk),
                }
            }
            Chunked::Done => Ok(Piece::Incomplete),
        }
    }

    /// Steps over as much of `buf` as is complete; returns how many bytes that was (framing
    /// and data alike, for passing the body on as it is).
    pub fn scan(&mut self, buf: &[u8]) -> Result<usize, Bad> {
        let mut at = 0;
        loop {
            match self.step(&buf[at..])? {
                Piece::Framing(n) | Piece::Data(n) => at += n,
                Piece::End(n) => return Ok(at + n),
                Piece::Incomplete => return Ok(at),
            }
        }
    }
}

/// What is left of a body, by its framing.
pub enum Left {
    Bytes(u64),
    Chunked(Chunked),
    UntilClose,
}

impl Left {
    /// `None`: the body is empty.
    pub fn of(body: BodyLen) -> Option<Left> {
        match body {
            BodyLen::Empty | BodyLen::Length(0) => None,
            BodyLen::Length(n) => Some(Left::Bytes(n)),
            BodyLen::Chunked => Some(Left::Chunked(Chunked::default())),
            BodyLen::UntilClose => Some(Left::UntilClose),
        }
    }

    /// Whether the sender closing ends this body cleanly.
    pub fn ends_at_close(&self) -> bool {
        matches!(self, Left::UntilClose)
    }
}

/// How much of `data` belongs to the body, and whether the body ends there. Copies it into
/// `out` when `copy` (only the chunk data, when `decode`).
pub fn ready(
    left: &mut Left,
    data: &[u8],
    decode: bool,
    out: &mut Vec<u8>,
    copy: bool,
) -> Result<(usize, bool), Bad> {
    let (n, done) = match left {
        Left::Bytes(l) => {
            let n = (*l).min(data.len() as u64);
            *l -= n;
            (n as usize, *l == 0)
        }
        Left::UntilClose => (data.len(), false),
        Left::Chunked(c) if decode => {
            let mut at = 0;
            loop {
                match c.step(&data[at..])? {
                    Piece::Data(k) => {
                        out.extend_from_slice(&data[at..at + k]);
                        at += k;
                    }
                    Piece::Framing(k) => at += k,
                    Piece::End(k) => return Ok((at + k, true)),
                    Piece::Incomplete => return Ok((at, false)),
                }
            }
        }
        Left::Chunked(c) => {
            let n = c.scan(data)?;
            (n, c.is_done())
        }
    };
    if copy {
        out.extend_from_slice(&data[..n]);
    }
    Ok((n, done))
}

#[cfg(test)]
#[path = "framing_tests.rs"]
mod tests;
