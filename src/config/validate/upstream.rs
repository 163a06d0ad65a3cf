//! Validation of `pools[].upstream:`: the protocol to the nodes and TLS (files read and the
//! client config built now, so `check` and reload report a bad CA, certificate or key).

use serde_yaml::Value;

use super::Validator;
use crate::config::file::RawUpstream;
use crate::config::{UpstreamConfig, UpstreamProtocol, UpstreamTls};

impl Validator {
    pub(super) fn upstream(&mut self, path: &str, raw: Option<Value>) -> UpstreamConfig {
        let Some(raw) = raw.and_then(|v| self.item::<RawUpstream>(path, v)) else {
            return UpstreamConfig::default();
        };
        let protocol = match raw.protocol.as_deref() {
            None | Some("http1") => UpstreamProtocol::Http1,
            Some("h2c") => UpstreamProtocol::H2c,
            Some("h2") => UpstreamProtocol::H2,
            Some(other) => {
                self.err(
                    &format!("{path}.protocol"),
                    format!("unknown protocol {other:?}: expected \"http1\", \"h2c\" or \"h2\""),
                );
                UpstreamProtocol::Http1
            }
        };
        let tp = format!("{path}.tls");
        let tls = raw.tls.and_then(|t| {
            let ca = match &t.ca {
                Some(file) => Some(self.pem(&format!("{tp}.ca"), file, "CERTIFICATE")?),
                None => None,
            };
            let client_cert = match &t.client_cert {
                Some(pair) => Some((
                    self.pem(&format!("{tp}.client_cert.cert"), &pair.cert, "CERTIFICATE")?,
                    self.pem(&format!("{tp}.client_cert.key"), &pair.key, "PRIVATE KEY")?,
                )),
                None => None,
            };
            if let Some(name) = &t.server_name {
                if rustls::pki_types::ServerName::try_from(name.as_str()).is_err() {
                    self.err(
                        &format!("{tp}.server_name"),
                        format!(
                            "invalid server name {name:?}: expected a DNS name or an IP address"
                        ),
                    );
                }
            }
            let tls = UpstreamTls {
                ca,
                server_name: t.server_name,
                client_cert,
            };
            if let Err(e) = tls.client_config(protocol) {
                self.err(&tp, e);
                return None;
            }
            Some(tls)
        });
        match (protocol, &tls) {
            (UpstreamProtocol::H2, None) => self.err(
                path,
                "protocol h2 is HTTP/2 over TLS: add `tls:` (`ca`, `server_name`), or use h2c",
            ),
            (UpstreamProtocol::H2c, Some(_)) => self.err(
                &tp,
                "h2c is HTTP/2 in clear: use protocol h2 for HTTP/2 over TLS",
            ),
            _ => {}
        }
        UpstreamConfig { protocol, tls }
    }
}
