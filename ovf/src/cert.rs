//! The `.cert` member of a signed OVF package: the manifest's signature and the signer's
//! certificate chain (DSP0243 §5.3, in the form ovftool writes and vCenter reads).
//!
//! ```text
//! SHA256(node.mf)= <lowercase hex RSA PKCS#1 v1.5 signature over node.mf's bytes>
//! -----BEGIN CERTIFICATE-----
//! <the signer's certificate>
//! -----END CERTIFICATE-----
//! -----BEGIN CERTIFICATE-----
//! <intermediates, signer's issuer first>
//! -----END CERTIFICATE-----
//! ```
//!
//! This module is the text format only: no cryptography, no trust. The first line uses the
//! manifest's spelling of the digest (`SHA256`); OpenSSL 3's `dgst` prints `SHA2-256(`, which
//! vCenter 8 rejects, so it is refused by name when read and never written.
//!
//! ```
//! use ovf::cert::CertFile;
//! use ovf::manifest::Algorithm;
//! let c = CertFile {
//!     algorithm: Algorithm::Sha256,
//!     manifest: "node.mf".into(),
//!     signature: vec![0xab; 256],
//!     chain: vec![b"not really DER".to_vec()],
//! };
//! let text = c.render();
//! assert!(text.starts_with(b"SHA256(node.mf)= abab"));
//! assert_eq!(CertFile::parse(&text).unwrap(), c);
//! ```

use base64::Engine;

use crate::manifest::{check_name, Algorithm};

/// A parsed `.cert` member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFile {
    /// The digest the signature was made with (the first line's `ALG(`).
    pub algorithm: Algorithm,
    /// The manifest the first line names (`<stem>.mf`).
    pub manifest: String,
    /// The raw signature bytes (hex in the file).
    pub signature: Vec<u8>,
    /// DER certificates in file order: the signer's first, then intermediates.
    pub chain: Vec<Vec<u8>>,
}

/// Why a `.cert` member does not parse. Line numbers count from 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// The member is not UTF-8 text.
    #[error("not UTF-8 text")]
    NotText,
    /// The first line is not `ALG(name.mf)= hex`.
    #[error("line 1: expected `SHA256(<name>.mf)= <hex signature>`: {reason}")]
    SignatureLine {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The first line spells the digest as OpenSSL 3's `dgst` does.
    #[error("line 1: `{spelling}(` is OpenSSL 3's spelling, which vCenter 8 rejects; the line must start `SHA256(`")]
    OpenSsl3Spelling {
        /// What the line has (`SHA2-256`, ...).
        spelling: String,
    },
    /// A PEM block that is not a certificate (a private key, most often: never ship one).
    #[error("line {line}: a `{label}` PEM block; only CERTIFICATE blocks belong in a .cert")]
    UnexpectedBlock {
        /// The block's first line.
        line: usize,
        /// Its label.
        label: String,
    },
    /// A PEM block without its END line, or whose body is not base64.
    #[error("line {line}: broken PEM block: {reason}")]
    BadPem {
        /// The block's first line.
        line: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// Text that is neither the signature line nor part of a PEM block.
    #[error("line {line}: text outside a PEM block")]
    StrayText {
        /// Where.
        line: usize,
    },
    /// No certificate after the signature line.
    #[error("no CERTIFICATE block after the signature line")]
    NoCertificate,
}

const BEGIN: &str = "-----BEGIN ";
const END: &str = "-----END ";
const DASHES: &str = "-----";

impl CertFile {
    /// The member's bytes: the signature line, then each certificate as PEM (64 columns).
    pub fn render(&self) -> Vec<u8> {
        let mut out = format!(
            "{}({})= {}\n",
            self.algorithm.as_str(),
            self.manifest,
            hex::encode(&self.signature)
        );
        let b64 = base64::engine::general_purpose::STANDARD;
        for der in &self.chain {
            out.push_str("-----BEGIN CERTIFICATE-----\n");
            let body = b64.encode(der);
            for chunk in body.as_bytes().chunks(64) {
                out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
                out.push('\n');
            }
            out.push_str("-----END CERTIFICATE-----\n");
        }
        out.into_bytes()
    }

    /// Parses a `.cert` member: CRLF line ends and blank lines are accepted; anything else
    /// that is not the signature line or a CERTIFICATE block is an error naming the line.
    pub fn parse(bytes: &[u8]) -> Result<Self, CertError> {
        let text = std::str::from_utf8(bytes).map_err(|_| CertError::NotText)?;
        let mut lines = text.lines().map(|l| l.trim_end_matches('\r')).enumerate();
        let first = lines.next().map(|(_, l)| l).unwrap_or_default();
        let (algorithm, manifest, signature) = signature_line(first)?;
        let mut chain = Vec::new();
        while let Some((i, line)) = lines.next() {
            let line_no = i + 1;
            if line.trim().is_empty() {
                continue;
            }
            let Some(label) = line.strip_prefix(BEGIN).and_then(|l| l.strip_suffix(DASHES)) else {
                return Err(CertError::StrayText { line: line_no });
            };
            if label != "CERTIFICATE" {
                return Err(CertError::UnexpectedBlock { line: line_no, label: label.into() });
            }
            let bad = |reason| CertError::BadPem { line: line_no, reason };
            let mut body = String::new();
            let end = format!("{END}{label}{DASHES}");
            loop {
                match lines.next() {
                    None => return Err(bad("no END line")),
                    Some((_, l)) if l.trim() == end => break,
                    Some((_, l)) if l.starts_with(DASHES) => {
                        return Err(bad("mismatched END line"))
                    }
                    Some((_, l)) => body.push_str(l.trim()),
                }
            }
            let der = base64::engine::general_purpose::STANDARD
                .decode(body.as_bytes())
                .map_err(|_| bad("the body is not base64"))?;
            if der.is_empty() {
                return Err(bad("empty body"));
            }
            chain.push(der);
        }
        if chain.is_empty() {
            return Err(CertError::NoCertificate);
        }
        Ok(CertFile { algorithm, manifest, signature, chain })
    }
}

/// `ALG(name)= hex`, exactly as a manifest line, but the hex is a signature of any length.
fn signature_line(line: &str) -> Result<(Algorithm, String, Vec<u8>), CertError> {
    let bad = |reason| CertError::SignatureLine { reason };
    let (alg, rest) = line.split_once('(').ok_or(bad("no `(`"))?;
    let algorithm = match alg {
        "SHA1" => Algorithm::Sha1,
        "SHA256" => Algorithm::Sha256,
        "SHA512" => Algorithm::Sha512,
        s if s.starts_with("SHA2-") || s.starts_with("SHA3-") => {
            return Err(CertError::OpenSsl3Spelling { spelling: s.to_string() })
        }
        _ => return Err(bad("unknown digest (SHA1, SHA256 or SHA512)")),
    };
    let (name, hex_sig) = rest.split_once(")= ").ok_or(bad("no `)= ` after the name"))?;
    check_name(name).map_err(bad)?;
    if !name.ends_with(".mf") || name.contains('/') {
        return Err(bad("the name must be a top-level .mf"));
    }
    if hex_sig.is_empty() || hex_sig.len() % 2 != 0 {
        return Err(bad("the signature is not whole hex bytes"));
    }
    let signature = hex::decode(hex_sig).map_err(|_| bad("the signature is not hex"))?;
    Ok((algorithm, name.to_string(), signature))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str =
        "SHA256(a.mf)= 00ff\n-----BEGIN CERTIFICATE-----\nAAEC\n-----END CERTIFICATE-----\n";

    #[test]
    fn parses_what_it_renders_and_ovftool_style_variants() {
        let c = CertFile::parse(GOOD.as_bytes()).unwrap();
        assert_eq!((c.manifest.as_str(), c.signature.as_slice()), ("a.mf", &[0, 255][..]));
        assert_eq!(c.chain, [vec![0, 1, 2]]);
        assert_eq!(c.render(), GOOD.as_bytes());
        // CRLF, blank lines, uppercase hex, two certificates.
        let crlf = "SHA256(a.mf)= 00FF\r\n\r\n-----BEGIN CERTIFICATE-----\r\nAAEC\r\n-----END CERTIFICATE-----\r\n-----BEGIN CERTIFICATE-----\nAw==\n-----END CERTIFICATE-----\n";
        let c = CertFile::parse(crlf.as_bytes()).unwrap();
        assert_eq!(c.chain, [vec![0, 1, 2], vec![3]]);
        assert_eq!(c.signature, [0, 255]);
    }

    #[test]
    fn long_certificates_wrap_at_64_columns() {
        let c = CertFile {
            algorithm: Algorithm::Sha256,
            manifest: "x.mf".into(),
            signature: vec![1; 256],
            chain: vec![vec![7; 1000]],
        };
        let text = String::from_utf8(c.render()).unwrap();
        assert!(text.lines().skip(2).all(|l| l.len() <= 64), "{text}");
        assert_eq!(CertFile::parse(text.as_bytes()).unwrap(), c);
    }

    #[test]
    fn hostile_and_malformed_members_name_the_problem() {
        let cases: &[(&str, &str)] = &[
            ("", "line 1"),
            ("SHA2-256(a.mf)= 00\n", "OpenSSL 3's spelling"),
            ("MD5(a.mf)= 00\n", "unknown digest"),
            ("SHA256(a.mf)=00\n", "no `)= `"),
            ("SHA256(../a.mf)= 00\n", "relative"),
            ("SHA256(a.ovf)= 00\n", "top-level .mf"),
            ("SHA256(a.mf)= 0\n", "whole hex bytes"),
            ("SHA256(a.mf)= zz\n", "not hex"),
            ("SHA256(a.mf)= 00\n", "no CERTIFICATE"),
            ("SHA256(a.mf)= 00\nhello\n", "line 2: text outside"),
            (
                "SHA256(a.mf)= 00\n-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----\n",
                "line 2: a `PRIVATE KEY` PEM block",
            ),
            ("SHA256(a.mf)= 00\n-----BEGIN CERTIFICATE-----\nAAEC\n", "no END line"),
            (
                "SHA256(a.mf)= 00\n-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
                "not base64",
            ),
            (
                "SHA256(a.mf)= 00\n-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
                "empty body",
            ),
            (
                "SHA256(a.mf)= 00\n-----BEGIN CERTIFICATE-----\nAA==\n-----END PRIVATE KEY-----\n",
                "mismatched",
            ),
        ];
        for (text, want) in cases {
            let e = CertFile::parse(text.as_bytes()).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        assert_eq!(CertFile::parse(&[0xff, 0xfe]).unwrap_err(), CertError::NotText);
    }
}
