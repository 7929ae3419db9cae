//! The one place TLS material is read and TLS server configurations are built, for the lb
//! role's backend API, `capstan-hub serve` and the heartbeat settings: PEM from files or from a
//! setting's text ([`normalize_pem`] accepts the forms a vApp property can carry), the client-CA
//! verifier, and the rustls server configuration. Always the ring provider.
//!
//! A leaf: it imports only [`crate::encoding`] (the one base64 decoder).

use std::fs;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// TLS setup failures with files.
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
}

/// What is wrong with PEM text given in a setting. Never carries the text (it may be a key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PemError {
    /// No `-----BEGIN …-----` block of the expected kind.
    #[error("no {0} block (expected PEM text, or base64 of it)")]
    Missing(&'static str),
    /// A block is cut short or its body is not base64.
    #[error("a {0} block is malformed (missing END line or bad base64)")]
    Malformed(&'static str),
    /// A block of another kind where this kind was expected.
    #[error("a {found} block where {expected} was expected")]
    Unexpected {
        /// The label found.
        found: String,
        /// The label expected.
        expected: &'static str,
    },
    /// A passphrase-protected key.
    #[error("the private key is encrypted (give it without a passphrase)")]
    Encrypted,
    /// More than one private key.
    #[error("more than one private key")]
    SeveralKeys,
    /// rustls cannot use the material (not X.509, unsupported key type, key does not match).
    #[error("{0}")]
    Unusable(String),
}

/// What a PEM setting holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PemKind {
    /// One or more `CERTIFICATE` blocks (a chain, or CA certificates).
    Certificates,
    /// One `PRIVATE KEY` (PKCS#8), `EC PRIVATE KEY` (SEC1) or `RSA PRIVATE KEY` (PKCS#1) block.
    PrivateKey,
}

impl PemKind {
    fn what(self) -> &'static str {
        match self {
            PemKind::Certificates => "CERTIFICATE",
            PemKind::PrivateKey => "PRIVATE KEY",
        }
    }
    fn accepts(self, label: &str) -> bool {
        match self {
            PemKind::Certificates => label == "CERTIFICATE",
            PemKind::PrivateKey => {
                matches!(label, "PRIVATE KEY" | "EC PRIVATE KEY" | "RSA PRIVATE KEY")
            }
        }
    }
}

/// The canonical PEM text (64-column base64, `\n` line ends) of `text`, which may be:
/// - PEM as `openssl` or `capstan-hub certs` writes it;
/// - the same with its line breaks turned into spaces, removed, or written as a literal `\n`
///   (what pasting into a one-line field or a shell `--prop` tends to do);
/// - base64 of a PEM file on one line (`base64 -w0 node.pem`), which every transport carries.
///
/// Each block's body must be valid base64; anything between blocks is ignored, as openssl does.
pub fn normalize_pem(text: &str, kind: PemKind) -> Result<String, PemError> {
    let trimmed = text.trim();
    let decoded;
    let text = if trimmed.contains("-----BEGIN ") {
        trimmed
    } else {
        decoded = crate::encoding::base64_decode(trimmed.as_bytes())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .filter(|s| s.contains("-----BEGIN "))
            .ok_or(PemError::Missing(kind.what()))?;
        decoded.as_str()
    };
    let text = text.replace("\\n", "\n");
    let mut out = String::new();
    let mut rest = text.as_str();
    let mut blocks = 0;
    while let Some(start) = rest.find("-----BEGIN ") {
        let after = &rest[start + "-----BEGIN ".len()..];
        let (label, after) = after.split_once("-----").ok_or(PemError::Malformed(kind.what()))?;
        let end = format!("-----END {label}-----");
        let (body, after) = after.split_once(&end).ok_or(PemError::Malformed(kind.what()))?;
        if label == "ENCRYPTED PRIVATE KEY" || body.contains("Proc-Type: 4,ENCRYPTED") {
            return Err(PemError::Encrypted);
        }
        if !kind.accepts(label) {
            return Err(PemError::Unexpected { found: short_label(label), expected: kind.what() });
        }
        let der = crate::encoding::base64_decode(body.as_bytes())
            .map_err(|_| PemError::Malformed(kind.what()))?;
        if der.is_empty() {
            return Err(PemError::Malformed(kind.what()));
        }
        let canon = base64::engine::general_purpose::STANDARD.encode(&der);
        out.push_str(&format!("-----BEGIN {label}-----\n"));
        for line in canon.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).unwrap_or_default());
            out.push('\n');
        }
        out.push_str(&end);
        out.push('\n');
        blocks += 1;
        rest = after;
    }
    match (blocks, kind) {
        (0, _) => Err(PemError::Missing(kind.what())),
        (n, PemKind::PrivateKey) if n > 1 => Err(PemError::SeveralKeys),
        _ => Ok(out),
    }
}

fn short_label(l: &str) -> String {
    l.chars().take(40).filter(|c| !c.is_control()).collect()
}

/// The certificates of canonical or loose PEM text, each checked to be X.509 that rustls can
/// use as a trust anchor or a chain element.
pub fn certs_from_pem(text: &str) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let pem = normalize_pem(text, PemKind::Certificates)?;
    let certs = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| PemError::Malformed("CERTIFICATE"))?;
    for c in &certs {
        webpki_check(c)?;
    }
    Ok(certs)
}

fn webpki_check(c: &CertificateDer<'_>) -> Result<(), PemError> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(c.clone())
        .map_err(|e| PemError::Unusable(format!("not a usable X.509 certificate: {e}")))
}

/// The private key of canonical or loose PEM text.
pub fn key_from_pem(text: &str) -> Result<PrivateKeyDer<'static>, PemError> {
    let pem = normalize_pem(text, PemKind::PrivateKey)?;
    let key = rustls_pemfile::private_key(&mut pem.as_bytes())
        .map_err(|_| PemError::Malformed("PRIVATE KEY"))?
        .ok_or(PemError::Missing("PRIVATE KEY"))?;
    provider()
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| PemError::Unusable(format!("unsupported private key: {e}")))?;
    Ok(key)
}

/// Checks that `key` belongs to the first certificate of `chain`.
pub fn check_pair(
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
) -> Result<(), PemError> {
    rustls::sign::CertifiedKey::from_der(chain.to_vec(), key.clone_key(), &provider())
        .map(|_| ())
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => {
                PemError::Unusable("the private key does not belong to the certificate".into())
            }
            e => PemError::Unusable(e.to_string()),
        })
}

/// The crypto provider everything here uses.
pub fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// Reads every certificate in a PEM file.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let f = fs::File::open(path).map_err(|source| TlsError::Read { path: path.into(), source })?;
    let v = rustls_pemfile::certs(&mut BufReader::new(f))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Read { path: path.into(), source })?;
    if v.is_empty() {
        return Err(TlsError::Pem { path: path.into(), reason: "no CERTIFICATE block" });
    }
    Ok(v)
}

/// Reads the private key in a PEM file.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let f = fs::File::open(path).map_err(|source| TlsError::Read { path: path.into(), source })?;
    rustls_pemfile::private_key(&mut BufReader::new(f))
        .map_err(|source| TlsError::Read { path: path.into(), source })?
        .ok_or(TlsError::Pem { path: path.into(), reason: "no PRIVATE KEY block" })
}

/// A verifier of client certificates signed by one of the CAs in the PEM file `ca`. Clients
/// without a certificate are let through the handshake (`allow_unauthenticated`), so a request
/// without credentials gets an HTTP 401 with a message instead of a failed handshake.
pub fn client_verifier(
    ca: &Path,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let bad = |e: Box<dyn std::error::Error + Send + Sync>| TlsError::ClientCa {
        path: ca.into(),
        source: e,
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in read_certs(ca)? {
        roots.add(c).map_err(|e| bad(Box::new(e)))?;
    }
    rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(provider()),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| bad(Box::new(e)))
}

/// A server configuration (HTTP/1.1, TLS 1.2/1.3) with the certificate chain and key in PEM
/// files and, with a client CA, [`client_verifier`].
pub fn server_config(
    cert: &Path,
    key_path: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let builder = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Rustls)?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => builder.with_client_cert_verifier(client_verifier(ca)?),
    };
    let mut cfg = builder
        .with_single_cert(read_certs(cert)?, read_key(key_path)?)
        .map_err(TlsError::Rustls)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (String, String) {
        let ck = rcgen::generate_simple_self_signed(vec!["n".into()]).unwrap();
        (ck.cert.pem(), ck.key_pair.serialize_pem())
    }

    #[test]
    fn every_accepted_form_normalises_to_the_same_pem() {
        let (cert, key) = pair();
        let canon = normalize_pem(&cert, PemKind::Certificates).unwrap();
        assert_eq!(canon, cert.replace("\r\n", "\n"));
        let spaced = cert.replace('\n', " ");
        let escaped = cert.trim().replace('\n', "\\n");
        let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_bytes());
        let crlf = cert.replace('\n', "\r\n");
        for form in [spaced, escaped, b64, crlf] {
            assert_eq!(normalize_pem(&form, PemKind::Certificates).unwrap(), canon, "{form}");
        }
        assert_eq!(certs_from_pem(&cert).unwrap().len(), 1);
        let k = key_from_pem(&key.replace('\n', " ")).unwrap();
        check_pair(&certs_from_pem(&cert).unwrap(), &k).unwrap();
    }

    #[test]
    fn hostile_pem_is_refused_without_echoing_it() {
        let (cert, key) = pair();
        let (other, _) = pair();
        let err = |t: &str, k: PemKind| normalize_pem(t, k).unwrap_err().to_string();
        assert!(err("hunter2", PemKind::PrivateKey).contains("no PRIVATE KEY block"));
        assert!(err(&key, PemKind::Certificates).contains("PRIVATE KEY block where CERTIFICATE"));
        assert!(err(&cert, PemKind::PrivateKey).contains("CERTIFICATE block where PRIVATE KEY"));
        let cut = &cert[..cert.len() - 20];
        assert!(err(cut, PemKind::Certificates).contains("malformed"));
        let bad = cert.replacen("MII", "M!I", 1);
        assert!(err(&bad, PemKind::Certificates).contains("malformed"));
        let enc =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----";
        assert!(err(enc, PemKind::PrivateKey).contains("encrypted"));
        assert!(err(&format!("{key}{key}"), PemKind::PrivateKey).contains("more than one"));
        let junk = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let e = certs_from_pem(junk).unwrap_err().to_string();
        assert!(e.contains("not a usable X.509"), "{e}");
        let k = key_from_pem(&key).unwrap();
        let e = check_pair(&certs_from_pem(&other).unwrap(), &k).unwrap_err().to_string();
        assert!(e.contains("does not belong"), "{e}");
        assert!(!e.contains("PRIVATE"), "{e}");
    }

    #[test]
    fn server_config_reads_files_and_names_them() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pair();
        let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        fs::write(&c, &cert).unwrap();
        fs::write(&k, &key).unwrap();
        server_config(&c, &k, Some(&c)).expect("usable");
        let e = server_config(&c, &k, Some(&dir.path().join("nope.pem"))).unwrap_err();
        assert!(crate::error::chain(&e).contains("nope.pem"), "{}", crate::error::chain(&e));
        let e = server_config(&k, &k, None).unwrap_err();
        assert!(e.to_string().contains("no CERTIFICATE block"), "{e}");
    }
}
