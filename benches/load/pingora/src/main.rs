//! A minimal Pingora load balancer for the benchmark: one upstream (the harness's origin),
//! plain HTTP, one worker thread (Pingora's default).

use std::sync::Arc;

use async_trait::async_trait;
use pingora::lb::{selection::RoundRobin, LoadBalancer};
use pingora::prelude::*;

struct Lb(Arc<LoadBalancer<RoundRobin>>);

#[async_trait]
impl ProxyHttp for Lb {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let upstream = self
            .0
            .select(b"", 256)
            .ok_or_else(|| Error::new(ErrorType::ConnectNoRoute))?;
        Ok(Box::new(HttpPeer::new(upstream, false, String::new())))
    }
}

fn main() {
    let listen = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9095".into());
    let origin = std::env::args().nth(2).unwrap_or_else(|| "127.0.0.1:18080".into());
    let mut server = Server::new(None).expect("server");
    server.bootstrap();
    let upstreams = LoadBalancer::try_from_iter([origin.as_str()]).expect("upstream");
    let mut lb = http_proxy_service(&server.configuration, Lb(Arc::new(upstreams)));
    lb.add_tcp(&listen);
    server.add_service(lb);
    server.run_forever();
}
