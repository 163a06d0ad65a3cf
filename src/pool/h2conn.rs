//! A node's HTTP/2 connection (`upstream.protocol: h2c | h2`): one, multiplexed, shared by
//! every request to the node. The data path loads it (an `ArcSwap` load and a clone of the
//! sender); whoever finds none or a closed one connects and stores a new one. A drain start
//! or a node going down drops the stored sender: the connection then ends once its last
//! stream does (hyper sends GOAWAY when no sender is left).

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;

/// The request body sent upstream over HTTP/2 (a client's streamed body, boxed).
pub type UpBody = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub type H2Sender = hyper::client::conn::http2::SendRequest<UpBody>;

#[derive(Default, Clone)]
pub struct H2Conn {
    sender: Arc<ArcSwapOption<H2Sender>>,
}

impl H2Conn {
    /// The node's connection, if it has one that is still open.
    pub fn get(&self) -> Option<H2Sender> {
        let current = self.sender.load();
        current
            .as_ref()
            .filter(|s| !s.is_closed())
            .map(|s| H2Sender::clone(s))
    }

    pub fn put(&self, sender: H2Sender) {
        self.sender.store(Some(Arc::new(sender)));
    }

    /// Forgets the connection: no new stream goes on it; it closes after its last stream.
    pub fn clear(&self) {
        self.sender.store(None);
    }
}
