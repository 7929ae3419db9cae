//! What a certificate says, for display and for the validity and self-signed findings.

use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;

/// One certificate of a `.cert` chain, as `capstan ova verify` prints it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CertInfo {
    /// The subject (RFC 4514 order as OpenSSL prints it: `CN=..., O=...`).
    pub subject: String,
    /// The issuer.
    pub issuer: String,
    /// Start of validity, RFC 3339 UTC.
    pub not_before: String,
    /// End of validity, RFC 3339 UTC.
    pub not_after: String,
    /// Start of validity, seconds since the epoch.
    #[serde(skip)]
    pub not_before_unix: i64,
    /// End of validity, seconds since the epoch.
    #[serde(skip)]
    pub not_after_unix: i64,
    /// Issued by itself: the issuer is the subject and its own key verifies its signature.
    pub self_signed: bool,
    /// The RSA modulus size, if the key is RSA.
    pub rsa_bits: Option<usize>,
    /// SHA-256 of the DER certificate (lowercase hex), as `openssl x509 -fingerprint -sha256`.
    pub sha256: String,
}

/// The parts of a certificate the signer and the verifier use.
pub(super) struct Parsed {
    pub info: CertInfo,
    /// The DER `RSAPublicKey` (the SubjectPublicKeyInfo's key bits), when RSA.
    pub rsa_public_key: Option<Vec<u8>>,
}

/// Parses one DER certificate; the error says what the parser found.
pub(super) fn parse(der: &[u8]) -> Result<Parsed, String> {
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        return Err(format!("{} bytes after the certificate", rest.len()));
    }
    let spki = cert.public_key();
    let rsa_bits = match spki.parsed() {
        Ok(PublicKey::RSA(k)) => Some(k.key_size()),
        _ => None,
    };
    let validity = cert.validity();
    let self_signed =
        cert.subject().as_raw() == cert.issuer().as_raw() && cert.verify_signature(None).is_ok();
    let info = CertInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        not_before: rfc3339(&validity.not_before),
        not_after: rfc3339(&validity.not_after),
        not_before_unix: validity.not_before.timestamp(),
        not_after_unix: validity.not_after.timestamp(),
        self_signed,
        rsa_bits,
        sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(der)),
    };
    let rsa_public_key = rsa_bits.map(|_| spki.subject_public_key.data.to_vec());
    Ok(Parsed { info, rsa_public_key })
}

/// Checks that each certificate of `chain` is signed by the next one, and that one whose
/// issuer is its own subject is signed by its own key: a `.cert` whose certificates were
/// edited fails here even when no trust store is given.
pub(super) fn check_links(chain: &[Vec<u8>]) -> Result<(), String> {
    let parse = |i: usize| {
        X509Certificate::from_der(&chain[i])
            .map(|(_, c)| c)
            .map_err(|e| format!("certificate {} does not parse: {e}", i + 1))
    };
    for i in 0..chain.len() {
        let cert = parse(i)?;
        let claims_self = cert.subject().as_raw() == cert.issuer().as_raw();
        if claims_self && cert.verify_signature(None).is_err() {
            return Err(format!(
                "certificate {} ({}) names itself as issuer but its signature does not verify",
                i + 1,
                cert.subject()
            ));
        }
        if i + 1 < chain.len() {
            let next = parse(i + 1)?;
            if cert.verify_signature(Some(next.public_key())).is_err() {
                return Err(format!(
                    "certificate {} ({}) is not signed by certificate {} ({})",
                    i + 1,
                    cert.subject(),
                    i + 2,
                    next.subject()
                ));
            }
        }
    }
    Ok(())
}

/// A certificate time as `YYYY-MM-DDTHH:MM:SSZ` (X.509 times are UTC).
fn rfc3339(t: &x509_parser::time::ASN1Time) -> String {
    let d = t.to_datetime();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        d.year(),
        u8::from(d.month()),
        d.day(),
        d.hour(),
        d.minute(),
        d.second()
    )
}
