//! Writing a line's fields: a JSON object (NGINX's `escape=json`, made strict: bytes that are
//! not UTF-8 are escaped one by one, so every line parses), or space-separated text with
//! strings quoted and `-` for what is absent.

use std::cell::RefCell;
use std::fmt::Display;
use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::escape::{escape_json, escape_text};
use crate::config::LogFormat;

/// A field's name, JSON-quoted with its colon (`"name":`): written with one copy. Made by
/// [`key!`].
#[derive(Clone, Copy)]
pub struct Key(pub &'static str);

/// `key!("name")`: the [`Key`] of a field.
macro_rules! key {
    ($name:literal) => {
        $crate::access_log::format::Key(concat!("\"", $name, "\":"))
    };
}
pub(crate) use key;

/// A line being written.
pub struct Line {
    buf: Vec<u8>,
    format: LogFormat,
    first: bool,
}

impl Line {
    pub fn new(mut buf: Vec<u8>, format: LogFormat) -> Line {
        buf.clear();
        Line {
            buf,
            format,
            first: true,
        }
    }

    pub fn empty(format: LogFormat) -> Line {
        Line::new(Vec::new(), format)
    }

    pub fn format(&self) -> LogFormat {
        self.format
    }

    /// The finished line, with its newline.
    pub fn end(mut self) -> Vec<u8> {
        match self.format {
            LogFormat::Json if self.first => self.buf.extend_from_slice(b"{}\n"),
            LogFormat::Json => self.buf.extend_from_slice(b"}\n"),
            LogFormat::Text => self.buf.push(b'\n'),
        }
        self.buf
    }

    /// Starts a field: its key in JSON, a separator in text.
    fn key(&mut self, name: Key) {
        let first = std::mem::replace(&mut self.first, false);
        match self.format {
            LogFormat::Json => {
                self.buf.push(if first { b'{' } else { b',' });
                self.buf.extend_from_slice(name.0.as_bytes());
            }
            LogFormat::Text if !first => self.buf.push(b' '),
            LogFormat::Text => {}
        }
    }

    fn absent(&mut self) {
        match self.format {
            LogFormat::Json => self.buf.extend_from_slice(b"null"),
            LogFormat::Text => self.buf.push(b'-'),
        }
    }

    /// A string field (`null` or `-` when absent).
    pub fn bytes(&mut self, name: Key, value: Option<&[u8]>) {
        self.key(name);
        match value {
            Some(v) => self.quoted(v),
            None => self.absent(),
        }
    }

    pub fn str(&mut self, name: Key, value: Option<&str>) {
        self.bytes(name, value.map(str::as_bytes));
    }

    /// A string field left out of JSON when absent (`-` in text, which has fixed places).
    pub fn optional(&mut self, name: Key, value: Option<&[u8]>) {
        match (value, self.format) {
            (None, LogFormat::Json) => {}
            _ => self.bytes(name, value),
        }
    }

    /// An address: `"IP:PORT"` in JSON, bare in text (IPv4 written by hand: it is in every
    /// line).
    pub fn addr(&mut self, name: Key, addr: &SocketAddr) {
        let SocketAddr::V4(v4) = addr else {
            return self.display(name, addr);
        };
        self.key(name);
        let json = self.format == LogFormat::Json;
        if json {
            self.buf.push(b'"');
        }
        for (i, octet) in v4.ip().octets().into_iter().enumerate() {
            if i > 0 {
                self.buf.push(b'.');
            }
            push_u64(&mut self.buf, octet.into());
        }
        self.buf.push(b':');
        push_u64(&mut self.buf, v4.port().into());
        if json {
            self.buf.push(b'"');
        }
    }

    /// A value written as it displays: no quoting needed in text.
    pub fn display(&mut self, name: Key, value: &impl Display) {
        self.key(name);
        match self.format {
            LogFormat::Json => {
                let _ = write!(self.buf, "\"{value}\"");
            }
            LogFormat::Text => {
                let _ = write!(self.buf, "{value}");
            }
        }
    }

    /// RFC 3339, UTC, microseconds. The date and time of day are formatted once a second
    /// per thread; a line adds its microseconds.
    pub fn time(&mut self, name: Key, at: SystemTime) {
        self.key(name);
        let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
        let json = self.format == LogFormat::Json;
        if json {
            self.buf.push(b'"');
        }
        SECOND.with(|cached| {
            let mut cached = cached.borrow_mut();
            if cached.0 != since.as_secs() || cached.1.is_empty() {
                cached.1.clear();
                let whole = UNIX_EPOCH + Duration::from_secs(since.as_secs());
                // "YYYY-MM-DDTHH:MM:SSZ": kept without its Z.
                let _ = write!(cached.1, "{}", humantime::format_rfc3339_seconds(whole));
                cached.1.pop();
                cached.0 = since.as_secs();
            }
            self.buf.extend_from_slice(&cached.1);
        });
        self.buf.push(b'.');
        push_padded(&mut self.buf, since.subsec_micros().into(), 6);
        self.buf.push(b'Z');
        if json {
            self.buf.push(b'"');
        }
    }

    pub fn number(&mut self, name: Key, value: Option<u64>) {
        self.key(name);
        match value {
            Some(n) => push_u64(&mut self.buf, n),
            None => self.absent(),
        }
    }

    /// Milliseconds with three decimals (microseconds).
    pub fn millis(&mut self, name: Key, value: Option<Duration>) {
        self.key(name);
        match value {
            Some(d) => {
                let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
                push_u64(&mut self.buf, us / 1000);
                self.buf.push(b'.');
                push_padded(&mut self.buf, us % 1000, 3);
            }
            None => self.absent(),
        }
    }

    /// `tls: {version, sni}`, left out of JSON without TLS; `"version/sni"` in text.
    pub fn tls(&mut self, tls: Option<(&str, Option<&str>)>) {
        match (tls, self.format) {
            (None, LogFormat::Json) => {}
            (None, LogFormat::Text) => self.bytes(key!("tls"), None),
            (Some((version, sni)), LogFormat::Json) => {
                self.key(key!("tls"));
                self.buf.extend_from_slice(b"{\"version\":");
                self.quoted(version.as_bytes());
                self.buf.extend_from_slice(b",\"sni\":");
                match sni {
                    Some(s) => self.quoted(s.as_bytes()),
                    None => self.buf.extend_from_slice(b"null"),
                }
                self.buf.push(b'}');
            }
            (Some((version, sni)), LogFormat::Text) => {
                self.key(key!("tls"));
                self.buf.push(b'"');
                escape_text(&mut self.buf, version.as_bytes());
                self.buf.push(b'/');
                escape_text(&mut self.buf, sni.unwrap_or("-").as_bytes());
                self.buf.push(b'"');
            }
        }
    }

    /// `rollout: {id, phase}`, left out of JSON when the node is in none; `"id/phase"` in
    /// text.
    pub fn rollout(&mut self, rollout: Option<(&str, &str)>) {
        match (rollout, self.format) {
            (None, LogFormat::Json) => {}
            (None, LogFormat::Text) => self.bytes(key!("rollout"), None),
            (Some((id, phase)), LogFormat::Json) => {
                self.key(key!("rollout"));
                self.buf.extend_from_slice(b"{\"id\":");
                self.quoted(id.as_bytes());
                self.buf.extend_from_slice(b",\"phase\":");
                self.quoted(phase.as_bytes());
                self.buf.push(b'}');
            }
            (Some((id, phase)), LogFormat::Text) => {
                self.key(key!("rollout"));
                self.buf.push(b'"');
                escape_text(&mut self.buf, id.as_bytes());
                self.buf.push(b'/');
                escape_text(&mut self.buf, phase.as_bytes());
                self.buf.push(b'"');
            }
        }
    }

    /// A list of names: a JSON array; comma-separated and quoted in text (`-` when empty).
    pub fn list<'a>(&mut self, name: Key, items: impl Iterator<Item = &'a str>) {
        self.key(name);
        match self.format {
            LogFormat::Json => {
                self.buf.push(b'[');
                for (i, item) in items.enumerate() {
                    if i > 0 {
                        self.buf.push(b',');
                    }
                    self.quoted(item.as_bytes());
                }
                self.buf.push(b']');
            }
            LogFormat::Text => {
                let mark = self.buf.len();
                self.buf.push(b'"');
                for (i, item) in items.enumerate() {
                    if i > 0 {
                        self.buf.push(b',');
                    }
                    escape_text(&mut self.buf, item.as_bytes());
                }
                if self.buf.len() == mark + 1 {
                    self.buf.truncate(mark);
                    self.buf.push(b'-');
                } else {
                    self.buf.push(b'"');
                }
            }
        }
    }

    fn quoted(&mut self, v: &[u8]) {
        self.buf.push(b'"');
        match self.format {
            LogFormat::Json => escape_json(&mut self.buf, v),
            LogFormat::Text => escape_text(&mut self.buf, v),
        }
        self.buf.push(b'"');
    }
}

thread_local! {
    /// The second a line was last written in on this thread, and its text.
    static SECOND: RefCell<(u64, Vec<u8>)> = const { RefCell::new((0, Vec::new())) };
}

/// Appends `n` in decimal.
pub fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Appends `n` in decimal with at least `width` digits (leading zeros).
fn push_padded(out: &mut Vec<u8>, n: u64, width: usize) {
    let start = out.len();
    push_u64(out, n);
    let written = out.len() - start;
    if written < width {
        out.splice(start..start, std::iter::repeat_n(b'0', width - written));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_numbers_and_addresses_are_written_exactly() {
        let mut l = Line::new(Vec::new(), LogFormat::Text);
        let at = UNIX_EPOCH + Duration::from_micros(1_765_000_000_000_042);
        l.time(key!("t"), at);
        l.time(key!("t"), at + Duration::from_secs(61));
        l.millis(key!("ms"), Some(Duration::from_micros(5)));
        l.number(key!("n"), Some(0));
        l.number(key!("n"), Some(u64::MAX));
        l.addr(key!("a"), &"10.0.255.1:65535".parse().unwrap());
        l.addr(key!("a"), &"[::1]:80".parse().unwrap());
        let line = String::from_utf8(l.end()).unwrap();
        assert_eq!(
            line,
            "2025-12-06T05:46:40.000042Z 2025-12-06T05:47:41.000042Z 0.005 0 18446744073709551615 10.0.255.1:65535 [::1]:80\n"
        );
        assert_eq!(
            humantime::format_rfc3339_micros(at).to_string(),
            line.split(' ').next().unwrap()
        );
    }

    #[test]
    fn a_json_line_has_its_fields_and_nulls() {
        let mut l = Line::new(Vec::new(), LogFormat::Json);
        l.str(key!("a"), Some("x"));
        l.optional(key!("absent"), None);
        l.number(key!("n"), None);
        l.millis(key!("ms"), Some(Duration::from_micros(1_234_567)));
        l.list(key!("attempts"), ["a", "b"].into_iter());
        l.tls(Some(("TLSv1.3", None)));
        let line = l.end();
        let v: serde_json::Value = serde_json::from_slice(&line).expect("json");
        assert_eq!(v["a"], "x");
        assert!(v.get("absent").is_none());
        assert!(v["n"].is_null());
        assert_eq!(v["ms"].as_f64(), Some(1234.567));
        assert_eq!(v["attempts"], serde_json::json!(["a", "b"]));
        assert_eq!(v["tls"]["version"], "TLSv1.3");
        assert!(line.ends_with(b"}\n"));
    }

    #[test]
    fn a_text_line_keeps_every_place() {
        let mut l = Line::new(Vec::new(), LogFormat::Text);
        l.str(key!("a"), Some("x y"));
        l.optional(key!("absent"), None);
        l.list(key!("attempts"), std::iter::empty());
        l.number(key!("n"), Some(7));
        assert_eq!(l.end(), b"\"x y\" - - 7\n");
    }
}
