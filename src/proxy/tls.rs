//! TLS termination: a rustls server config per listener (ring provider only), certificates
//! chosen by SNI, ALPN offering h2 and http/1.1. Built with each snapshot, so a reload
//! reloads certificates.

use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::ServerName;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

/// Picks the first certificate valid for the client's SNI name, else the first one.
#[derive(Debug)]
struct SniResolver {
    certificates: Vec<Arc<CertifiedKey>>,
}

impl SniResolver {
    fn valid_for(ck: &CertifiedKey, name: &str) -> bool {
        let (Some(leaf), Ok(name)) = (ck.cert.first(), ServerName::try_from(name)) else {
            return false;
        };
        webpki::EndEntityCert::try_from(leaf)
            .is_ok_and(|ee| ee.verify_is_valid_for_subject_name(&name).is_ok())
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let chosen = hello.server_name().and_then(|name| {
            self.certificates
                .iter()
                .find(|ck| Self::valid_for(ck, name))
        });
        chosen.or_else(|| self.certificates.first()).cloned()
    }
}

/// The acceptor for a listener's TLS settings.
pub fn acceptor(tls: &TlsConfig) -> Result<TlsAcceptor, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver {
            certificates: tls.certificates.clone(),
        }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
