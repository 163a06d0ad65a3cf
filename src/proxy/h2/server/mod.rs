//! handoff's own HTTP/2 server connection (RFC 9113), for clients of HTTP listeners.
//!
//! hyper's server (on the `h2` crate) spent about 25,000 of the 42,000 instructions of a
//! proxied HTTP/2 request (h2load, 32 streams a connection): per stream a task, a lock on
//! the connection's stream store for every frame, a priority queue for every send. Here
//! one task owns the connection: it reads frames, runs each stream's handler in a set of
//! its own (a slow one holds up no other), and writes responses as the client's windows
//! allow, from plain state it owns. Handlers share with it only what must cross: the
//! request body, and the flags that stop them, lock-free ([`stream`]).
//!
//! What the RFC requires of a server is here: flow control both ways, header blocks split
//! over CONTINUATION, the stream state rules, malformed requests refused per stream (§8.1.1,
//! [`request`]), HPACK with the client's dynamic table ([`hpack`]), graceful close with a
//! GOAWAY, a PING and a final GOAWAY (streams already on the wire still count), and limits
//! on what a client can make it hold: streams, header blocks, unread writes, resets.
//! Server push, priorities (deprecated by RFC 9113) and extended CONNECT are not.

mod conn;
mod frame;
mod handler;
mod hpack;
mod recv;
mod request;
mod send;
mod stream;

pub use conn::{Connection, Error};
pub use handler::Service;
pub use stream::{BodyCut, RequestBody, Waiter};

#[cfg(test)]
mod tests;
