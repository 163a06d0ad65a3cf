//! The rustls client config for `pools[].upstream.tls`, built from the PEM the config holds
//! (aws-lc-rs provider; the machine's roots when no `ca` is given).

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

use super::{UpstreamProtocol, UpstreamTls};

impl UpstreamTls {
    /// The client config: verification against `ca` (or the machine's roots), the client
    /// certificate when there is one, ALPN `h2` for protocol h2 and `http/1.1` otherwise.
    pub fn client_config(&self, protocol: UpstreamProtocol) -> Result<Arc<ClientConfig>, String> {
        let mut roots = RootCertStore::empty();
        match &self.ca {
            Some(pem) => {
                for cert in CertificateDer::pem_slice_iter(pem) {
                    let cert = cert.map_err(|e| format!("ca: invalid PEM: {e}"))?;
                    roots
                        .add(cert)
                        .map_err(|e| format!("ca: unusable certificate: {e}"))?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                for cert in found.certs {
                    // One bad system certificate does not make the others unusable.
                    let _ = roots.add(cert);
                }
                if roots.is_empty() {
                    return Err(
                        "no `ca` given and the machine has no CA certificates: set `ca`".into(),
                    );
                }
            }
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        let mut config = match &self.client_cert {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = CertificateDer::pem_slice_iter(cert)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("client_cert.cert: invalid PEM: {e}"))?;
                let key = PrivateKeyDer::from_pem_slice(key)
                    .map_err(|e| format!("client_cert.key: invalid PEM: {e}"))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("client_cert: {e}"))?
            }
        };
        config.alpn_protocols = match protocol {
            UpstreamProtocol::H2 => vec![b"h2".to_vec()],
            _ => vec![b"http/1.1".to_vec()],
        };
        Ok(Arc::new(config))
    }

    /// The name a node's certificate must carry: `server_name`, else the node's IP address.
    pub fn server_name(&self, addr: SocketAddr) -> ServerName<'static> {
        self.server_name
            .as_deref()
            .and_then(|n| ServerName::try_from(n.to_string()).ok())
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()))
    }
}
