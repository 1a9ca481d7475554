//! TLS configuration: the crypto provider, and (with `tls_listen`) the
//! server configuration built from `tls_cert` / `tls_key`.

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::sync::{Arc, RwLock};

/// The crypto provider for every TLS connection: aws-lc-rs (see
/// Cargo.toml for why), with X25519MLKEM768 preferred, then X25519,
/// P-256, P-384.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The server configuration for `tls_listen`: the certificate chain in
/// `cert` (PEM, leaf first) and its private key in `key` (PEM: PKCS#8,
/// PKCS#1 RSA or SEC1 EC; RSA, ECDSA and Ed25519 keys), TLS 1.2 and 1.3,
/// ALPN `http/1.1`, resumption by session tickets (and the default
/// in-memory session-id cache for TLS 1.2 clients without tickets). The
/// certificate comes from the returned [`Certificates`], which
/// [`Certificates::reload`] replaces for new handshakes only (and without
/// a new ticket key, so resumption survives a reload).
pub fn server_config(
    cert: &str,
    key: &str,
) -> Result<(Arc<rustls::ServerConfig>, Arc<Certificates>), String> {
    let certs = Arc::new(Certificates {
        cert: cert.to_string(),
        key: key.to_string(),
        current: RwLock::new(load(cert, key)?),
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(certs.clone());
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.ticketer = ticketer()?;
    Ok((Arc::new(config), certs))
}

/// The certificate every new handshake presents, replaceable at run time
/// (`SIGHUP`). Connections already established keep theirs.
#[derive(Debug)]
pub struct Certificates {
    cert: String,
    key: String,
    current: RwLock<Arc<CertifiedKey>>,
}

impl Certificates {
    /// Reads `tls_cert` and `tls_key` again; on any error the previous
    /// certificate stays in use and the error is returned.
    pub fn reload(&self) -> Result<(), String> {
        let fresh = load(&self.cert, &self.key)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    fn get(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

/// The chain and key from their PEM files, checked to belong together.
fn load(cert: &str, key: &str) -> Result<Arc<CertifiedKey>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    if cert.is_empty() || key.is_empty() {
        return Err("tls_listen needs tls_cert and tls_key".into());
    }
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("tls_cert {cert:?}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("tls_cert {cert:?}: no CERTIFICATE in the file"));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("tls_key {key:?}: {e}"))?;
    let signing = provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| format!("tls_key {key:?}: {e}"))?;
    let ck = CertifiedKey::new(certs, signing);
    ck.keys_match()
        .map_err(|e| format!("tls_cert {cert:?} and tls_key {key:?}: {e}"))?;
    Ok(Arc::new(ck))
}

/// Session tickets (TLS 1.3 resumption, and TLS 1.2 tickets), keys
/// rotated every 6 hours by rustls.
fn ticketer() -> Result<Arc<dyn rustls::server::ProducesTickets>, String> {
    rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|e| format!("TLS tickets: {e}"))
}
