//! The signing key and its certificate chain, read from PEM files.

use std::path::{Path, PathBuf};

use ring::rand::SystemRandom;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use rustls_pemfile::Item;

use super::x509::{self, CertInfo};

/// The smallest RSA modulus accepted for signing (what vCenter and ring accept).
pub const MIN_RSA_BITS: usize = 2048;

/// Why a signing key or certificate cannot be used. Every variant names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// A file could not be read.
    #[error("{}: cannot read", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not PEM, or a PEM block in it is broken.
    #[error("{}: not a PEM file", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What the PEM reader found.
        #[source]
        source: std::io::Error,
    },
    /// No private key in the key file.
    #[error("{}: no PRIVATE KEY or RSA PRIVATE KEY block", path.display())]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// A key that is not RSA (an EC key, an Ed25519 key).
    #[error("{}: a {kind} key; OVA signatures are RSA (vCenter verifies RSA PKCS#1 v1.5 SHA-256)", path.display())]
    NotRsa {
        /// The file.
        path: PathBuf,
        /// What it holds.
        kind: &'static str,
    },
    /// An RSA key under [`MIN_RSA_BITS`].
    #[error("{}: a {bits}-bit RSA key; OVA signatures need at least {MIN_RSA_BITS} bits", path.display())]
    TooSmall {
        /// The key (or certificate) file.
        path: PathBuf,
        /// Its modulus size.
        bits: usize,
    },
    /// ring refused the key.
    #[error("{}: the RSA key is not usable: {reason}", path.display())]
    Rejected {
        /// The file.
        path: PathBuf,
        /// ring's reason (`InvalidEncoding`, `InconsistentComponents`, ...).
        reason: String,
    },
    /// No certificate in the certificate file.
    #[error("{}: no CERTIFICATE block", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A certificate that does not parse.
    #[error("{}: certificate {index} does not parse: {reason}", path.display())]
    Certificate {
        /// The file.
        path: PathBuf,
        /// Its position in the file, from 1.
        index: usize,
        /// What the parser found.
        reason: String,
    },
    /// The first certificate is not the key's.
    #[error("{}: the first certificate ({subject}) is not for the key in {}", cert.display(), key.display())]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// The certificate's subject.
        subject: String,
    },
}

/// An RSA key and the certificate chain that goes into every `.cert` it signs. It implements
/// [`ovf::ova::Signer`]; its `Debug` shows the signer's subject, never the key.
pub struct SigningKey {
    key: RsaKeyPair,
    chain: Vec<Vec<u8>>,
    signer: CertInfo,
    rng: SystemRandom,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey").field("signer", &self.signer.subject).finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Reads the private key from `key` (PEM: PKCS#1 `RSA PRIVATE KEY` or PKCS#8 `PRIVATE
    /// KEY`) and the chain from `cert` (PEM: the signer's certificate first, then any
    /// intermediates). The key must be RSA of at least [`MIN_RSA_BITS`] and match the first
    /// certificate.
    pub fn load(key: &Path, cert: &Path) -> Result<Self, KeyError> {
        let chain = read_chain(cert)?;
        let leaf = x509::parse(&chain[0]).map_err(|reason| KeyError::Certificate {
            path: cert.to_path_buf(),
            index: 1,
            reason,
        })?;
        for (i, der) in chain.iter().enumerate().skip(1) {
            x509::parse(der).map_err(|reason| KeyError::Certificate {
                path: cert.to_path_buf(),
                index: i + 1,
                reason,
            })?;
        }
        let Some(bits) = leaf.info.rsa_bits else {
            return Err(KeyError::NotRsa { path: cert.to_path_buf(), kind: "non-RSA" });
        };
        if bits < MIN_RSA_BITS {
            return Err(KeyError::TooSmall { path: key.to_path_buf(), bits });
        }
        let pair = read_key(key)?;
        if Some(pair_public(&pair)) != leaf.rsa_public_key.as_deref() {
            return Err(KeyError::Mismatch {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
                subject: leaf.info.subject,
            });
        }
        Ok(SigningKey { key: pair, chain, signer: leaf.info, rng: SystemRandom::new() })
    }

    /// The signer's certificate.
    pub fn signer(&self) -> &CertInfo {
        &self.signer
    }

    /// The RSA PKCS#1 v1.5 SHA-256 signature of `data`.
    pub fn sign(&self, data: &[u8]) -> Result<Vec<u8>, ring::error::Unspecified> {
        let mut sig = vec![0u8; self.key.public().modulus_len()];
        self.key.sign(&RSA_PKCS1_SHA256, &self.rng, data, &mut sig)?;
        Ok(sig)
    }
}

impl ovf::ova::Signer for SigningKey {
    fn certificate(
        &self,
        mf_name: &str,
        manifest: &[u8],
    ) -> Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>> {
        let signature = self.sign(manifest).map_err(|_| "ring could not sign the manifest")?;
        let cert = ovf::cert::CertFile {
            algorithm: ovf::manifest::Algorithm::Sha256,
            manifest: mf_name.to_string(),
            signature,
            chain: self.chain.clone(),
        };
        Ok(cert.render())
    }
}

fn pair_public(pair: &RsaKeyPair) -> &[u8] {
    use ring::signature::KeyPair;
    pair.public_key().as_ref()
}

/// Every CERTIFICATE block of `path`, in order.
pub(super) fn read_chain(path: &Path) -> Result<Vec<Vec<u8>>, KeyError> {
    let bytes = std::fs::read(path)
        .map_err(|source| KeyError::Read { path: path.to_path_buf(), source })?;
    let mut chain = Vec::new();
    for item in rustls_pemfile::read_all(&mut &bytes[..]) {
        // A key next to the certificate is not an error here, and it is not copied.
        let item = item.map_err(|source| KeyError::Pem { path: path.to_path_buf(), source })?;
        if let Item::X509Certificate(der) = item {
            chain.push(der.to_vec());
        }
    }
    if chain.is_empty() {
        return Err(KeyError::NoCertificate { path: path.to_path_buf() });
    }
    Ok(chain)
}

/// The first private key of `path`. The file's bytes are zeroed once the key is parsed.
fn read_key(path: &Path) -> Result<RsaKeyPair, KeyError> {
    let mut bytes = std::fs::read(path)
        .map_err(|source| KeyError::Read { path: path.to_path_buf(), source })?;
    let result = parse_key(path, &bytes);
    bytes.fill(0);
    result
}

fn parse_key(path: &Path, bytes: &[u8]) -> Result<RsaKeyPair, KeyError> {
    let p = || path.to_path_buf();
    let rejected = |e: ring::error::KeyRejected| match e.to_string().as_str() {
        "TooSmall" => {
            KeyError::Rejected { path: p(), reason: format!("smaller than {MIN_RSA_BITS} bits") }
        }
        "WrongAlgorithm" => KeyError::NotRsa { path: p(), kind: "non-RSA PKCS#8" },
        reason => KeyError::Rejected { path: p(), reason: reason.to_string() },
    };
    for item in rustls_pemfile::read_all(&mut &bytes[..]) {
        match item.map_err(|source| KeyError::Pem { path: p(), source })? {
            Item::Pkcs1Key(k) => {
                return RsaKeyPair::from_der(k.secret_pkcs1_der()).map_err(rejected)
            }
            Item::Pkcs8Key(k) => {
                return RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()).map_err(rejected)
            }
            Item::Sec1Key(_) => return Err(KeyError::NotRsa { path: p(), kind: "EC (SEC1)" }),
            _ => {}
        }
    }
    Err(KeyError::NoKey { path: p() })
}
