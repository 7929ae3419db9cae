//! The API server's TLS material: a configured certificate or a generated self-signed one
//! ([`ensure_cert`]). Reading PEM and building the server configuration (with an optional
//! client CA for mutual TLS) is the shared [`crate::tls`].

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::state::{write_durable, StateError};
use crate::root::Root;

/// TLS setup failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// Reading the material or building the configuration failed.
    #[error(transparent)]
    Config(#[from] crate::tls::TlsError),
    /// Generating the self-signed certificate failed.
    #[error("generating the API certificate")]
    Generate(#[source] rcgen::Error),
    /// Writing the generated certificate failed.
    #[error("storing the generated API certificate")]
    Store(#[source] StateError),
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

/// The API's server configuration ([`crate::tls::server_config`]).
pub fn server_config(
    cert: &Path,
    key_path: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    Ok(crate::tls::server_config(cert, key_path, client_ca)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
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
