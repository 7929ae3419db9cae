//! The API server's TLS configuration: a configured certificate or a generated self-signed
//! one, and an optional client CA for mutual TLS.

use std::fs;
use std::io::BufReader;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::state::{write_durable, StateError};
use crate::root::Root;

/// TLS setup failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A PEM file holds nothing usable.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is missing.
        reason: &'static str,
    },
    /// rustls refused the material.
    #[error("TLS configuration")]
    Rustls(#[source] rustls::Error),
    /// The client CA could not be used.
    #[error("client CA {path}")]
    ClientCa {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Generating the self-signed certificate failed.
    #[error("generating the API certificate")]
    Generate(#[source] rcgen::Error),
    /// Writing the generated certificate failed.
    #[error("storing the generated API certificate")]
    Store(#[source] StateError),
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let f = fs::File::open(path).map_err(|source| TlsError::Read { path: path.into(), source })?;
    let v = rustls_pemfile::certs(&mut BufReader::new(f))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Read { path: path.into(), source })?;
    if v.is_empty() {
        return Err(TlsError::Pem { path: path.into(), reason: "no CERTIFICATE block" });
    }
    Ok(v)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let f = fs::File::open(path).map_err(|source| TlsError::Read { path: path.into(), source })?;
    rustls_pemfile::private_key(&mut BufReader::new(f))
        .map_err(|source| TlsError::Read { path: path.into(), source })?
        .ok_or(TlsError::Pem { path: path.into(), reason: "no PRIVATE KEY block" })
}

/// Returns (cert, key) host paths: the configured ones, or a self-signed pair generated once
/// under `state_dir` in `root` (key mode 0600) for the given names and addresses.
pub fn ensure_cert(
    root: &Root,
    configured: Option<(&Path, &Path)>,
    state_dir: &Path,
    ips: &[IpAddr],
) -> Result<(PathBuf, PathBuf), TlsError> {
    if let Some((c, k)) = configured {
        return Ok((c.into(), k.into()));
    }
    let store = |e: crate::root::RootError| TlsError::Store(e.into());
    let (c, k) = (state_dir.join("api-cert.pem"), state_dir.join("api-key.pem"));
    let (host_c, host_k) = (root.resolve(&c).map_err(store)?, root.resolve(&k).map_err(store)?);
    if host_c.exists() && host_k.exists() {
        return Ok((host_c, host_k));
    }
    let mut names = vec!["localhost".to_string()];
    names.extend(ips.iter().filter(|ip| !ip.is_unspecified()).map(|ip| ip.to_string()));
    let ck = rcgen::generate_simple_self_signed(names).map_err(TlsError::Generate)?;
    write_durable(root, &k, ck.key_pair.serialize_pem().as_bytes(), 0o600)
        .map_err(TlsError::Store)?;
    write_durable(root, &c, ck.cert.pem().as_bytes(), 0o644).map_err(TlsError::Store)?;
    Ok((host_c, host_k))
}

/// The server configuration. With a client CA, client certificates are verified when
/// presented but not required at the TLS layer, so a request without credentials gets an
/// HTTP 401 with a message instead of a failed handshake.
pub fn server_config(
    cert: &Path,
    key_path: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Rustls)?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(ca)? {
                roots
                    .add(c)
                    .map_err(|e| TlsError::ClientCa { path: ca.into(), source: Box::new(e) })?;
            }
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsError::ClientCa { path: ca.into(), source: Box::new(e) })?;
            builder.with_client_cert_verifier(v)
        }
    };
    let mut cfg =
        builder.with_single_cert(certs(cert)?, key(key_path)?).map_err(TlsError::Rustls)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn generated_pair_is_stored_once_under_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path()).unwrap();
        let state = Path::new("/var/lib/capstan/lb");
        let ips = ["10.0.0.100".parse().unwrap(), "0.0.0.0".parse().unwrap()];
        let (c, k) = ensure_cert(&root, None, state, &ips).unwrap();
        assert_eq!(c, root.base().join("var/lib/capstan/lb/api-cert.pem"));
        assert_eq!(k, root.base().join("var/lib/capstan/lb/api-key.pem"));
        assert_eq!(fs::metadata(&k).unwrap().permissions().mode() & 0o7777, 0o600);
        assert_eq!(fs::metadata(&c).unwrap().permissions().mode() & 0o7777, 0o644);
        server_config(&c, &k, None).expect("the pair is usable");
        let pem = fs::read(&c).unwrap();
        assert_eq!(ensure_cert(&root, None, state, &ips).unwrap(), (c.clone(), k));
        assert_eq!(fs::read(&c).unwrap(), pem, "kept, not regenerated");
        assert_eq!(root.list(state).unwrap(), vec!["api-cert.pem", "api-key.pem"]);
    }
}
