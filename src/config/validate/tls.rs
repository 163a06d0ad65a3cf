//! Validation of `listeners[].tls`: every certificate chain and key is read, parsed and
//! checked to belong together now, so `check` and reload report a bad certificate instead of
//! the first handshake failing.

use std::path::Path;
use std::sync::Arc;

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_yaml::Value;

use super::Validator;
use crate::config::file::RawTls;
use crate::config::TlsConfig;

impl Validator {
    pub(super) fn tls(&mut self, path: &str, value: Value) -> Option<TlsConfig> {
        let raw: RawTls = self.item(path, value)?;
        if raw.certificates.is_empty() {
            self.err(
                &format!("{path}.certificates"),
                "at least one { cert, key } is required",
            );
            return None;
        }
        let mut certificates = Vec::new();
        for (i, pair) in raw.certificates.iter().enumerate() {
            let cp = format!("{path}.certificates[{i}]");
            match load_pair(&self.base.join(&pair.cert), &self.base.join(&pair.key)) {
                Ok(ck) => certificates.push(Arc::new(ck)),
                Err((field, reason)) => self.err(&format!("{cp}.{field}"), reason),
            }
        }
        let rotate = raw.session_tickets.and_then(|t| t.rotate);
        let ticket_rotation = self.duration(
            &format!("{path}.session_tickets.rotate"),
            rotate.as_deref(),
            crate::config::defaults::TICKET_ROTATION,
            crate::config::limits::TICKET_ROTATION,
        );
        (certificates.len() == raw.certificates.len()).then_some(TlsConfig {
            certificates,
            ticket_rotation,
        })
    }
}

/// Loads a chain and its key; the error names the field (`cert` or `key`) and the reason.
fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, (&'static str, String)> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| ("cert", format!("cannot read {}: {e}", cert.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| ("cert", format!("invalid PEM in {}: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(("cert", format!("{} holds no certificate", cert.display())));
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        (
            "key",
            format!("cannot read a private key from {}: {e}", key.display()),
        )
    })?;
    let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&der).map_err(|e| {
        (
            "key",
            format!("unsupported private key in {}: {e}", key.display()),
        )
    })?;
    let pair = CertifiedKey::new(chain, signing);
    pair.keys_match().map_err(|e| {
        (
            "key",
            format!(
                "{} does not belong to {}: {e}",
                key.display(),
                cert.display()
            ),
        )
    })?;
    Ok(pair)
}
