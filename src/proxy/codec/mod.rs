//! The codec layer of the HTTP path: bytes in, messages out, and back. Heads are parsed by
//! httparse and written again for the next hop ([`head`], [`response`]), bodies framed by RFC 9112
//! ([`framing`]), HTTP/2 request parts written as HTTP/1.1 heads and back ([`translate`]),
//! all in buffers that exist only while a message is in flight ([`buf`]).
//!
//! Nothing here does I/O on its own or knows about pools and nodes: the layers above (the
//! upstream connections, the node walk, the front ends) use it, never the other way round.

pub mod buf;
pub mod framing;
pub mod head;
pub mod request_id;
pub mod response;
pub mod rules;
pub mod translate;
