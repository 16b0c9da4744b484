//! TLS for any listener: rustls with a certificate chain and key from PEM files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};

/// Where a worker's certificate chain and private key live.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct TlsFiles {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
    /// ALPN protocols to offer (`http/1.1` for HTTP and WebSocket workers).
    pub(crate) alpn: Vec<String>,
}

fn fail(what: &str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Config,
        format!("cannot load the TLS {what} {}: {e}", path.display()),
    )
}

impl TlsFiles {
    /// Reads and checks the files; called by the master at start (so that a bad certificate is
    /// an error then, not at the first connection) and by each worker process as it starts
    /// (so that a reload picks up new files).
    pub(crate) fn load(&self) -> Result<Arc<rustls::ServerConfig>> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.cert)
            .map_err(|e| fail("certificate", &self.cert, e))?
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| fail("certificate", &self.cert, e))?;
        if certs.is_empty() {
            return Err(fail(
                "certificate",
                &self.cert,
                "no certificate in the file",
            ));
        }
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|e| fail("key", &self.key, e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::new(ErrorKind::Config, format!("TLS: {e}")))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| {
                Error::new(
                    ErrorKind::Config,
                    format!("TLS certificate and key do not fit: {e}"),
                )
            })?;
        config.alpn_protocols = self.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Ok(Arc::new(config))
    }
}
