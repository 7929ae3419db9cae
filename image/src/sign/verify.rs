//! Checking a `.cert` member: the signature over the manifest (ring), what the certificates
//! say (validity, self-signed), and with a trust store the chain to it (webpki).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ovf::manifest::Algorithm;
use ovf::ova::{Rejection, Signed};
use ring::signature::{UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_2048_8192_SHA512};
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};

use super::key::{self, KeyError, MIN_RSA_BITS};
use super::x509::{self, CertInfo};

/// id-kp-codeSigning (1.3.6.1.5.5.7.3.3), DER content octets: a signer certificate that
/// lists extended key usages must list this one.
const EKU_CODE_SIGNING: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x03];

/// The CA certificates `--trust` names.
#[derive(Debug)]
pub struct TrustStore {
    path: PathBuf,
    anchors: Vec<Vec<u8>>,
}

impl TrustStore {
    /// Every CERTIFICATE block of the PEM file `path`.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let anchors = key::read_chain(path)?;
        for (i, der) in anchors.iter().enumerate() {
            webpki::anchor_from_trusted_cert(&CertificateDer::from(der.as_slice())).map_err(
                |e| KeyError::Certificate {
                    path: path.to_path_buf(),
                    index: i + 1,
                    reason: format!("{e:?}"),
                },
            )?;
        }
        Ok(TrustStore { path: path.to_path_buf(), anchors })
    }
}

/// Whether the signer chains to the trust store.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "status", content = "detail")]
pub enum Trust {
    /// No trust store was given.
    NotChecked,
    /// A chain from the signer to a certificate of the store (validity aside: see the
    /// findings).
    Trusted(String),
    /// No such chain.
    Untrusted(String),
}

/// Something about the signer a human must weigh, named as vCenter's import warnings are.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "finding", content = "detail")]
pub enum Finding {
    /// A certificate of the chain is past its notAfter.
    Expired(String),
    /// A certificate of the chain is before its notBefore.
    NotYetValid(String),
    /// The signer's certificate is issued by itself.
    SelfSigned(String),
    /// The signer does not chain to the trust store.
    Untrusted(String),
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (name, detail) = match self {
            Finding::Expired(d) => ("expired", d),
            Finding::NotYetValid(d) => ("not yet valid", d),
            Finding::SelfSigned(d) => ("self-signed", d),
            Finding::Untrusted(d) => ("untrusted", d),
        };
        write!(f, "{name}: {detail}")
    }
}

/// A `.cert` whose signature verifies over the manifest, and what its certificates say.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SignatureCheck {
    /// The `.cert` member.
    pub certificate: String,
    /// The digest of the signature (`SHA256`).
    pub algorithm: String,
    /// The signer's certificate.
    pub signer: CertInfo,
    /// The other certificates of the `.cert`, in file order.
    pub intermediates: Vec<CertInfo>,
    /// The chain to the trust store.
    pub trust: Trust,
    /// What a human must weigh.
    pub findings: Vec<Finding>,
}

impl SignatureCheck {
    /// Whether the signer is acceptable under a trust store: trusted, and every certificate
    /// valid now (a self-signed signer is acceptable only as a certificate of the store).
    pub fn trusted(&self) -> bool {
        matches!(self.trust, Trust::Trusted(_))
            && !self
                .findings
                .iter()
                .any(|f| matches!(f, Finding::Expired(_) | Finding::NotYetValid(_)))
    }
}

/// Why a `.cert`'s signature was refused (the cause of an `ovf::ova::Rejection`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// A certificate of the `.cert` does not parse.
    #[error("certificate {index} does not parse: {reason}")]
    Certificate {
        /// Its position, from 1.
        index: usize,
        /// What the parser found.
        reason: String,
    },
    /// The signer's key is not RSA, or too small.
    #[error("the signer's key is {0}; OVA signatures are RSA of at least {MIN_RSA_BITS} bits")]
    Key(String),
    /// A digest this verifier refuses (SHA-1).
    #[error("{0} signatures are refused (SHA-1 is broken for signatures)")]
    Algorithm(Algorithm),
    /// The RSA signature does not verify with the signer's key.
    #[error("the RSA PKCS#1 v1.5 {0} signature does not verify with the key of {1}")]
    Mismatch(Algorithm, String),
}

/// Checks the signature of `signed` (the callback of `ovf::ova::verify_with`) and describes
/// its certificates at `now`, with `trust` the chain to a store.
pub fn check(
    signed: &Signed<'_>,
    trust: Option<&TrustStore>,
    now: SystemTime,
) -> Result<SignatureCheck, Rejection> {
    let cert = signed.certificate;
    let reject = |e: SignatureError| Rejection::Certificate(Box::new(e));
    let mut parsed = Vec::new();
    for (i, der) in cert.chain.iter().enumerate() {
        let p = x509::parse(der)
            .map_err(|reason| reject(SignatureError::Certificate { index: i + 1, reason }))?;
        parsed.push(p);
    }
    x509::check_links(&cert.chain).map_err(|e| Rejection::Certificate(e.into()))?;
    let leaf = &parsed[0];
    let (Some(bits), Some(public)) = (leaf.info.rsa_bits, leaf.rsa_public_key.as_deref()) else {
        return Err(reject(SignatureError::Key("not RSA".into())));
    };
    if bits < MIN_RSA_BITS {
        return Err(reject(SignatureError::Key(format!("a {bits}-bit RSA key"))));
    }
    let alg: &'static ring::signature::RsaParameters = match cert.algorithm {
        Algorithm::Sha256 => &RSA_PKCS1_2048_8192_SHA256,
        Algorithm::Sha512 => &RSA_PKCS1_2048_8192_SHA512,
        other => return Err(reject(SignatureError::Algorithm(other))),
    };
    UnparsedPublicKey::new(alg, public).verify(signed.manifest, &cert.signature).map_err(|_| {
        Rejection::Signature(Box::new(SignatureError::Mismatch(
            cert.algorithm,
            leaf.info.subject.clone(),
        )))
    })?;
    let now_unix = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let infos: Vec<CertInfo> = parsed.into_iter().map(|p| p.info).collect();
    let mut findings = time_findings(&infos, now_unix);
    if infos[0].self_signed {
        findings.push(Finding::SelfSigned(infos[0].subject.clone()));
    }
    let trust = match trust {
        None => Trust::NotChecked,
        Some(store) => chain_to(store, &cert.chain, &infos, now_unix),
    };
    if let Trust::Untrusted(why) = &trust {
        findings.push(Finding::Untrusted(why.clone()));
    }
    let mut infos = infos.into_iter();
    Ok(SignatureCheck {
        certificate: signed.certificate_name.to_string(),
        algorithm: cert.algorithm.to_string(),
        signer: infos.next().expect("a .cert holds a certificate"),
        intermediates: infos.collect(),
        trust,
        findings,
    })
}

fn time_findings(infos: &[CertInfo], now: i64) -> Vec<Finding> {
    let mut findings = Vec::new();
    for c in infos {
        if now > c.not_after_unix {
            findings.push(Finding::Expired(format!("{} (not after {})", c.subject, c.not_after)));
        } else if now < c.not_before_unix {
            findings
                .push(Finding::NotYetValid(format!("{} (not before {})", c.subject, c.not_before)));
        }
    }
    findings
}

/// The chain from the signer to `store`, judged apart from validity dates (those are
/// findings of their own): a date error at `now` is retried at a moment every certificate of
/// the `.cert` is valid, when there is one.
fn chain_to(store: &TrustStore, chain: &[Vec<u8>], infos: &[CertInfo], now: i64) -> Trust {
    let store_name = store.path.display();
    if store.anchors.iter().any(|a| *a == chain[0]) {
        return Trust::Trusted(format!("the signer's certificate is in {store_name}"));
    }
    let ders: Vec<CertificateDer<'_>> =
        store.anchors.iter().map(|d| CertificateDer::from(d.as_slice())).collect();
    let anchors: Vec<TrustAnchor<'_>> =
        ders.iter().filter_map(|d| webpki::anchor_from_trusted_cert(d).ok()).collect();
    let leaf_der = CertificateDer::from(chain[0].as_slice());
    let Ok(leaf) = webpki::EndEntityCert::try_from(&leaf_der) else {
        return Trust::Untrusted("webpki cannot read the signer's certificate".into());
    };
    let intermediates: Vec<CertificateDer<'_>> =
        chain[1..].iter().map(|d| CertificateDer::from(d.as_slice())).collect();
    let at = |t: i64| {
        leaf.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &intermediates,
            UnixTime::since_unix_epoch(Duration::from_secs(t.max(0) as u64)),
            webpki::KeyUsage::required_if_present(EKU_CODE_SIGNING),
            None,
            None,
        )
        .map(drop)
    };
    let dated = |e: &webpki::Error| {
        matches!(e, webpki::Error::CertExpired { .. } | webpki::Error::CertNotValidYet { .. })
    };
    let inside = infos.iter().map(|c| c.not_before_unix).max().unwrap_or(now);
    let result = match at(now) {
        Err(e) if dated(&e) && infos.iter().all(|c| c.not_after_unix >= inside) => at(inside),
        Err(e) if dated(&e) => {
            return Trust::Untrusted(
                "the certificates of the .cert are never valid at the same time".into(),
            )
        }
        r => r,
    };
    match result {
        Ok(()) => Trust::Trusted(format!("chains to a certificate in {store_name}")),
        Err(webpki::Error::UnknownIssuer) => {
            Trust::Untrusted(format!("no chain to a certificate in {store_name}"))
        }
        Err(e) => Trust::Untrusted(format!("the chain to {store_name} is invalid: {e:?}")),
    }
}
