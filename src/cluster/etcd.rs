//! Talking to etcd: a client on one endpoint that answers (in touch with the quorum's
//! leader), and every call bounded in time and named in its error. Used by the session,
//! the writes and the elections alike.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, GetOptions, Identity, TlsOptions};
use tokio::time::timeout;

use super::REQUEST_TIMEOUT;
use crate::config::ClusterTls;

type Result<T> = std::result::Result<T, String>;

/// A client on the first endpoint, in turn from the one after the last used, that answers
/// a linearizable read (so it is in touch with the quorum's leader). One endpoint per
/// session: when its member goes, the session fails and the next one tries the others
/// (tonic's balancing across endpoints keeps sending to a dead one).
pub(super) async fn connect_to(etcd: &[String], tls: Option<&ClusterTls>) -> Result<Client> {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let first = NEXT.fetch_add(1, SeqCst);
    let mut errors = Vec::new();
    for i in 0..etcd.len() {
        let endpoint = &etcd[(first + i) % etcd.len()];
        match connect_one(endpoint, tls).await {
            Ok(client) => {
                NEXT.store((first + i) % etcd.len(), SeqCst);
                return Ok(client);
            }
            Err(e) => errors.push(e),
        }
    }
    Err(errors.join("; "))
}

pub(super) async fn connect_one(endpoint: &str, tls: Option<&ClusterTls>) -> Result<Client> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(REQUEST_TIMEOUT)
        .with_timeout(REQUEST_TIMEOUT)
        .with_keep_alive(Duration::from_secs(1), REQUEST_TIMEOUT)
        .with_keep_alive_while_idle(true)
        .with_require_leader(true);
    if let Some(tls) = tls {
        let mut t = TlsOptions::new().ca_certificate(Certificate::from_pem(&tls.ca));
        if let Some((cert, key)) = &tls.identity {
            t = t.identity(Identity::from_pem(cert, key));
        }
        if let Some(name) = &tls.server_name {
            t = t.domain_name(name.clone());
        }
        options = options.with_tls(t);
    }
    let mut client = timeout(REQUEST_TIMEOUT, Client::connect([endpoint], Some(options)))
        .await
        .map_err(|_| format!("{endpoint}: no answer within {REQUEST_TIMEOUT:?}"))?
        .map_err(|e| format!("{endpoint}: {e}"))?;
    call(
        endpoint,
        client.get("/", Some(GetOptions::new().with_count_only())),
    )
    .await?;
    Ok(client)
}

/// Bounds an etcd call and names it in the error.
pub(super) async fn call<T, F>(what: &str, f: F) -> Result<T>
where
    F: std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
{
    match timeout(REQUEST_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer within {REQUEST_TIMEOUT:?}")),
    }
}
