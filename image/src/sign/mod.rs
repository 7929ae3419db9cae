//! OVA signatures: the signing key and certificate chain a build or `capstan ova sign` uses,
//! and the checks `capstan ova verify` runs on a `.cert` member.
//!
//! The `.cert` text format and where the member goes are the `ovf` crate's (`ovf::cert`,
//! `ovf::ova::write_signed_ova`, `ovf::ova::sign_ova`): they are defined by the OVF package
//! format. What is here is policy: which keys are acceptable (RSA of at least 2048 bits, read
//! from PEM, PKCS#1 or PKCS#8), the cryptography (ring, rustls' backend: RSA PKCS#1 v1.5 with
//! SHA-256) and what a trusted signer is (a chain to a given CA, built by webpki).
//!
//! Key material stays in this module: it is read from the file given, held by ring, and never
//! written anywhere (not to the stage cache, the build report or a log line).

mod key;
mod verify;
mod x509;

pub use key::SigningKey;
pub use verify::{check, SignatureCheck, Trust, TrustStore};
