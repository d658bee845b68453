//! The trust the broker's own TLS clients share (the proxy's upstream clients and the
//! PostgreSQL store): which roots to trust, and a rustls client setup on the ring provider.
//! (The issuers' HTTP client is reqwest's, which brings its own.)

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// Why a PEM file of trusted certificates cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CaFileError {
    #[error("cannot read it: {0}")]
    Unreadable(String),
    #[error("it holds no usable certificate")]
    NoCertificate,
}

/// The system's trusted roots and the bundled Mozilla ones. Unreadable system certificates
/// are skipped: the bundled roots remain.
pub fn system_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for certificate in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(certificate);
    }
    roots
}

/// Adds the certificates of the PEM file at `path` to `roots`.
pub fn add_pem_file(roots: &mut RootCertStore, path: &Path) -> Result<(), CaFileError> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| CaFileError::Unreadable(e.to_string()))?;
    match roots.add_parsable_certificates(certificates) {
        (0, _) => Err(CaFileError::NoCertificate),
        _ => Ok(()),
    }
}

/// A TLS client trusting `roots`, with rustls's safe default protocol versions.
pub fn client_config(roots: RootCertStore) -> Result<rustls::ClientConfig, rustls::Error> {
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth())
}
