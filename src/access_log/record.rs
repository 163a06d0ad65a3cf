//! One exchange's line: the request's fields written when it starts, the outcome's when it
//! ends, in JSON or text.
//!
//! A [`Record`] is made only when the access log is on (the data path holds an `Option` of
//! one, so a request without a log costs one test per step). The line goes to the writer
//! when the record is finished or dropped (an exchange cut short still leaves its line).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::format::{key, Line};
use super::writer::AccessLog;
use crate::metrics::ClientError;
use crate::pool::Pool;

/// How an exchange ended: one word an operator can grep for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Termination {
    /// Answered whole (by a node, or by handoff itself when nothing failed).
    Ok,
    /// The client went away before the answer was whole.
    ClientClosed,
    /// The client was too slow sending its request (head or body), or a TCP session moved
    /// nothing for `timeouts.idle`.
    ClientTimeout,
    /// The client accepted no byte of its response within `timeouts.send`.
    SendTimeout,
    /// The request was refused for something the client got wrong.
    ClientFault(ClientError),
    /// No node of the pool could take it.
    NoNode,
    /// Every node tried refused or failed the connection.
    ConnectFailed,
    /// The node closed or reset before the answer was whole.
    UpstreamReset,
    /// The node did not answer within `timeouts.response`.
    UpstreamTimeout,
    /// The node's drain deadline closed it.
    DrainDeadline,
    /// handoff's shutdown closed it (the force deadline).
    Shutdown,
    /// A TCP session closed to rebalance its pool after a readmission.
    Rebalanced,
}

impl Termination {
    pub fn as_str(self) -> &'static str {
        match self {
            Termination::Ok => "ok",
            Termination::ClientClosed => "client_closed",
            Termination::ClientTimeout => "client_timeout",
            Termination::SendTimeout => "send_timeout",
            Termination::ClientFault(e) => match e {
                ClientError::BadRequest => "client_fault:bad_request",
                ClientError::HeadTooLarge => "client_fault:head_too_large",
                ClientError::NotImplemented => "client_fault:not_implemented",
                ClientError::BodyTimeout => "client_timeout",
                ClientError::BadBody => "client_fault:bad_body",
                ClientError::BodyCut => "client_closed",
                ClientError::NoRoute => "client_fault:no_route",
            },
            Termination::NoNode => "no_node",
            Termination::ConnectFailed => "connect_failed",
            Termination::UpstreamReset => "upstream_reset",
            Termination::UpstreamTimeout => "upstream_timeout",
            Termination::DrainDeadline => "drain_deadline",
            Termination::Shutdown => "shutdown",
            Termination::Rebalanced => "rebalanced",
        }
    }

    /// A compact code, for a connection's "why it was cut" flag (0: not cut).
    pub fn code(self) -> u8 {
        match self {
            Termination::SendTimeout => 1,
            Termination::ClientTimeout => 2,
            Termination::DrainDeadline => 3,
            Termination::Shutdown => 4,
            _ => 0,
        }
    }

    pub fn from_code(code: u8) -> Option<Termination> {
        Some(match code {
            1 => Termination::SendTimeout,
            2 => Termination::ClientTimeout,
            3 => Termination::DrainDeadline,
            4 => Termination::Shutdown,
            _ => return None,
        })
    }
}

/// What every exchange of one client connection shares in its line.
#[derive(Clone, Copy)]
pub struct Conn<'a> {
    pub client: SocketAddr,
    pub listener: &'a str,
    /// `HTTP/1.1`, `HTTP/2`, `tcp`, ...
    pub proto: &'a str,
    /// TLS version and SNI, when TLS was terminated.
    pub tls: Option<(&'a str, Option<&'a str>)>,
}

/// The request's own fields, as the client sent them (absent ones are `None`).
#[derive(Default, Clone, Copy)]
pub struct Request<'a> {
    pub request_id: Option<&'a [u8]>,
    pub traceparent: Option<&'a [u8]>,
    pub tracestate: Option<&'a [u8]>,
    pub method: Option<&'a [u8]>,
    pub host: Option<&'a [u8]>,
    pub path: Option<&'a [u8]>,
    pub user_agent: Option<&'a [u8]>,
}

/// Most nodes a line lists under `attempts` (a longer walk lists its first ones).
const MAX_ATTEMPTS: usize = 8;

/// One exchange's line in the making.
pub struct Record {
    log: Arc<AccessLog>,
    line: Line,
    started: Instant,
    pub status: Option<u16>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub connect: Option<Duration>,
    pub header: Option<Duration>,
    pub termination: Termination,
    pool: Option<Arc<Pool>>,
    /// The node that served, or was tried last (an index into the pool's nodes).
    node: Option<u16>,
    attempts: [u16; MAX_ATTEMPTS],
    tried: u8,
    finished: bool,
}

impl Record {
    /// Starts a line at `started` (the request's head, or the session's accept).
    pub fn start(
        log: &Arc<AccessLog>,
        started: Instant,
        conn: Conn<'_>,
        req: Request<'_>,
    ) -> Record {
        let mut line = Line::new(log.buffer(), log.format);
        // Records start as their exchange does: now is `started`, to the microsecond.
        line.time(key!("time"), SystemTime::now());
        line.bytes(key!("request_id"), req.request_id);
        line.optional(key!("traceparent"), req.traceparent);
        line.optional(key!("tracestate"), req.tracestate);
        line.addr(key!("client"), &conn.client);
        line.str(key!("listener"), Some(conn.listener));
        line.str(key!("proto"), Some(conn.proto));
        line.tls(conn.tls);
        line.bytes(key!("method"), req.method);
        line.bytes(key!("host"), req.host);
        line.bytes(key!("path"), req.path);
        line.bytes(key!("user_agent"), req.user_agent);
        Record {
            log: Arc::clone(log),
            line,
            started,
            status: None,
            bytes_in: 0,
            bytes_out: 0,
            connect: None,
            header: None,
            termination: Termination::ClientClosed,
            pool: None,
            node: None,
            attempts: [0; MAX_ATTEMPTS],
            tried: 0,
            finished: false,
        }
    }

    /// The pool the exchange was routed to.
    pub fn pool(&mut self, pool: &Arc<Pool>) {
        if self.pool.is_none() {
            self.pool = Some(Arc::clone(pool));
        }
    }

    /// Node `index` of the pool is tried (in walk order); it is the line's node until
    /// another is tried.
    pub fn attempt(&mut self, index: usize) {
        let index = u16::try_from(index).unwrap_or(u16::MAX);
        let again = self.tried > 0 && self.node == Some(index);
        if !again && usize::from(self.tried) < MAX_ATTEMPTS {
            self.attempts[usize::from(self.tried)] = index;
            self.tried += 1;
        }
        self.node = Some(index);
    }

    /// The node the line names (the one that served, or was tried last).
    pub fn node(&self) -> Option<&crate::pool::Node> {
        let pool = self.pool.as_deref()?;
        pool.nodes.get(usize::from(self.node?)).map(|n| &**n)
    }

    /// Writes the rest of the line and queues it.
    pub fn finish(&mut self) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        // A node that failed after its drain deadline was cut by it: the word says so,
        // whichever path saw the failure.
        let cut = matches!(
            self.termination,
            Termination::UpstreamReset | Termination::UpstreamTimeout
        );
        if cut
            && self
                .node()
                .is_some_and(|n| n.state.lifecycle.deadline_passed())
        {
            self.termination = Termination::DrainDeadline;
        }
        let mut line = std::mem::replace(&mut self.line, Line::empty(self.log.format));
        let pool = self.pool.as_deref();
        line.str(key!("pool"), pool.map(|p| p.name.as_str()));
        let node = pool
            .zip(self.node)
            .and_then(|(p, i)| p.nodes.get(usize::from(i)));
        match node {
            Some(n) => {
                line.str(key!("node"), Some(&n.name));
                line.addr(key!("node_addr"), &n.addr);
                let version = n.state.version();
                line.str(key!("node_version"), version.as_deref().map(String::as_str));
                line.rollout(n.state.rollout().as_deref().map(|r| (&*r.id, r.phase)));
            }
            None => {
                line.str(key!("node"), None);
                line.str(key!("node_addr"), None);
                line.str(key!("node_version"), None);
                line.rollout(None);
            }
        }
        let names = self.attempts[..usize::from(self.tried)]
            .iter()
            .filter_map(|&i| pool.and_then(|p| p.nodes.get(usize::from(i))))
            .map(|n| n.name.as_str());
        line.list(key!("attempts"), names);
        line.number(key!("status"), self.status.map(u64::from));
        line.number(key!("bytes_in"), Some(self.bytes_in));
        line.number(key!("bytes_out"), Some(self.bytes_out));
        line.millis(key!("duration_ms"), Some(self.started.elapsed()));
        line.millis(key!("connect_ms"), self.connect);
        line.millis(key!("header_ms"), self.header);
        line.str(key!("termination"), Some(self.termination.as_str()));
        self.log.push(line.end());
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The field names of a line, in order: what `format: text` writes, space-separated.
pub const FIELDS: &[&str] = &[
    "time",
    "request_id",
    "traceparent",
    "tracestate",
    "client",
    "listener",
    "proto",
    "tls",
    "method",
    "host",
    "path",
    "user_agent",
    "pool",
    "node",
    "node_addr",
    "node_version",
    "rollout",
    "attempts",
    "status",
    "bytes_in",
    "bytes_out",
    "duration_ms",
    "connect_ms",
    "header_ms",
    "termination",
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AccessLogConfig, LogFormat, LogTarget};
    use crate::metrics::Metrics;

    fn one_line(format: LogFormat, fill: impl FnOnce(&mut Record)) -> String {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("access.log");
        let cfg = AccessLogConfig {
            target: LogTarget::File(path.clone()),
            format,
        };
        let log = AccessLog::start(&cfg, &Metrics::new()).expect("writer");
        let conn = Conn {
            client: "192.0.2.7:5000".parse().expect("addr"),
            listener: "web",
            proto: "HTTP/1.1",
            tls: Some(("TLSv1.3", Some("example.com"))),
        };
        let req = Request {
            method: Some(b"GET"),
            path: Some(b"/a\"c?x=\x01"),
            ..Request::default()
        };
        let mut record = Record::start(&log, Instant::now(), conn, req);
        fill(&mut record);
        drop(record);
        log.close();
        std::fs::read_to_string(path).expect("log file")
    }

    #[test]
    fn a_text_line_has_every_field_in_its_place() {
        let text = one_line(LogFormat::Text, |r| {
            r.status = Some(204);
            r.termination = Termination::Ok;
        });
        assert!(
            text.ends_with('\n') && text.lines().count() == 1,
            "{text:?}"
        );
        // Quoted strings hold no unescaped space here, so fields split on spaces.
        let fields: Vec<&str> = text.trim_end().split(' ').collect();
        assert_eq!(fields.len(), FIELDS.len(), "{text}");
        let at = |name: &str| fields[FIELDS.iter().position(|f| *f == name).expect("field")];
        assert_eq!(at("client"), "192.0.2.7:5000");
        assert_eq!(at("tls"), "\"TLSv1.3/example.com\"");
        assert_eq!(at("method"), "\"GET\"");
        assert_eq!(at("status"), "204");
        assert_eq!(at("node"), "-");
        assert_eq!(at("termination"), "\"ok\"");
        assert_eq!(at("path"), "\"/a\\\"c?x=\\x01\"");
    }

    #[test]
    fn a_json_line_has_every_field() {
        let text = one_line(LogFormat::Json, |r| r.termination = Termination::NoNode);
        let v: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(v["termination"], "no_node");
        assert_eq!(v["tls"]["sni"], "example.com");
        assert_eq!(v["path"], "/a\"c?x=\u{1}");
        assert!(v["status"].is_null() && v["node"].is_null());
        assert_eq!(v["attempts"], serde_json::json!([]));
    }
}
