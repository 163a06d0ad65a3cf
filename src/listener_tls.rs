//! TLS termination: a rustls server config per listener (aws-lc-rs provider only), certificates
//! chosen by SNI, ALPN offering h2 and http/1.1. Built with each snapshot, so a reload
//! reloads certificates.

use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

/// Picks the first certificate whose DNS names cover the client's SNI name, else the first
/// one. The names are read from each certificate once, when the snapshot is built, not on
/// every handshake. This only selects what to offer (as NGINX's `server_name` does); the
/// client still verifies the certificate it gets.
#[derive(Debug)]
struct SniResolver {
    certificates: Vec<Offered>,
}

#[derive(Debug)]
struct Offered {
    /// The leaf's subject alternative DNS names, lower case; `*.example.com` for wildcards.
    names: Vec<String>,
    key: Arc<CertifiedKey>,
}

impl Offered {
    fn new(key: &Arc<CertifiedKey>) -> Offered {
        let names = key
            .cert
            .first()
            .and_then(|leaf| webpki::EndEntityCert::try_from(leaf).ok())
            .map(|ee| ee.valid_dns_names().map(str::to_ascii_lowercase).collect())
            .unwrap_or_default();
        Offered {
            names,
            key: Arc::clone(key),
        }
    }

    fn covers(&self, sni: &str) -> bool {
        self.names
            .iter()
            .any(|pattern| match pattern.strip_prefix("*.") {
                // A wildcard covers exactly one leftmost label (RFC 6125 §6.4.3).
                Some(parent) => sni.split_once('.').is_some_and(|(label, rest)| {
                    !label.is_empty() && rest.eq_ignore_ascii_case(parent)
                }),
                None => pattern.eq_ignore_ascii_case(sni),
            })
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let chosen = hello
            .server_name()
            .and_then(|name| self.certificates.iter().find(|c| c.covers(name)));
        chosen
            .or_else(|| self.certificates.first())
            .map(|c| Arc::clone(&c.key))
    }
}

/// The acceptor for a listener's TLS settings; `alpn`: offer h2 and http/1.1 (http
/// listeners; a tcp listener's bytes are not HTTP to handoff).
pub fn acceptor(
    tls: &TlsConfig,
    alpn: bool,
    tickets: &Arc<crate::tickets::Ticketer>,
) -> Result<TlsAcceptor, rustls::Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver {
            certificates: tls.certificates.iter().map(Offered::new).collect(),
        }));
    if alpn {
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    }
    // Stateless tickets under the process's keys (TLS 1.3 and 1.2): a client resumes on a
    // reloaded config, on the next generation after a takeover, and on any instance of a
    // cluster. The per-process session cache stays for TLS 1.2 clients without tickets.
    config.ticketer = Arc::clone(tickets) as Arc<dyn rustls::server::ProducesTickets>;
    // One TLS 1.3 ticket per handshake (rustls sends two by default): a client resuming
    // gets a fresh one each time, and each costs a seal and a record.
    config.send_tls13_tickets = 1;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offered(names: &[&str]) -> Offered {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.self_signed(&key).unwrap();
        let der = rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let signing = rustls::crypto::ring::sign::any_supported_type(&der).unwrap();
        Offered::new(&Arc::new(CertifiedKey::new(
            vec![cert.der().clone()],
            signing,
        )))
    }

    #[test]
    fn names_are_read_once_and_matched_like_a_client_would() {
        let exact = offered(&["api.example.com"]);
        assert!(exact.covers("api.example.com") && exact.covers("API.Example.com"));
        assert!(!exact.covers("www.example.com") && !exact.covers("example.com"));
        let wild = offered(&["*.example.com"]);
        assert!(wild.covers("www.example.com"));
        assert!(
            !wild.covers("example.com")
                && !wild.covers("a.b.example.com")
                && !wild.covers(".example.com")
        );
    }
}
