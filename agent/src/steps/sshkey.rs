//! Ed25519 SSH host keys generated in process, in OpenSSH's own file formats.
//!
//! First boot is on every clone's critical path; `ssh-keygen` is a process start per key type
//! (tens of milliseconds on a busy host, more under TCG). Ed25519 needs only 32 random bytes
//! and one scalar multiplication, which *ring* (already here for TLS) provides. The private key
//! file is the unencrypted `openssh-key-v1` format (PROTOCOL.key in OpenSSH); the tests check
//! it with `ssh-keygen -y` and `-l`. Other key types still go through `ssh-keygen`.

use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair};

/// Could not get randomness from the kernel.
#[derive(Debug, thiserror::Error)]
#[error("no randomness for an Ed25519 key")]
pub struct KeyGenError;

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    // lengths here are at most a few hundred bytes
    out.extend_from_slice(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(s);
}

/// A new Ed25519 key pair: (private key file, public key line), both newline-terminated.
pub fn ed25519(comment: &str) -> Result<(String, String), KeyGenError> {
    let rng = SystemRandom::new();
    let mut seed = [0u8; 32];
    rng.fill(&mut seed).map_err(|_| KeyGenError)?;
    let mut check = [0u8; 4];
    rng.fill(&mut check).map_err(|_| KeyGenError)?;
    let pair = Ed25519KeyPair::from_seed_unchecked(&seed).map_err(|_| KeyGenError)?;
    let public = pair.public_key().as_ref();

    let mut pub_blob = Vec::with_capacity(51);
    put_string(&mut pub_blob, b"ssh-ed25519");
    put_string(&mut pub_blob, public);

    let mut private = Vec::with_capacity(160);
    private.extend_from_slice(&check);
    private.extend_from_slice(&check);
    put_string(&mut private, b"ssh-ed25519");
    put_string(&mut private, public);
    let mut secret = Vec::with_capacity(64);
    secret.extend_from_slice(&seed);
    secret.extend_from_slice(public);
    put_string(&mut private, &secret);
    put_string(&mut private, comment.as_bytes());
    let mut pad = 1u8;
    while private.len() % 8 != 0 {
        private.push(pad);
        pad += 1;
    }

    let mut file = Vec::with_capacity(300);
    file.extend_from_slice(b"openssh-key-v1\0");
    put_string(&mut file, b"none"); // cipher
    put_string(&mut file, b"none"); // kdf
    put_string(&mut file, b""); // kdf options
    file.extend_from_slice(&1u32.to_be_bytes());
    put_string(&mut file, &pub_blob);
    put_string(&mut file, &private);
    seed.fill(0);
    secret.fill(0);

    let b64 = base64::engine::general_purpose::STANDARD;
    let body = b64.encode(&file);
    let mut pem = String::from("-----BEGIN OPENSSH PRIVATE KEY-----\n");
    for chunk in body.as_bytes().chunks(70) {
        pem.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END OPENSSH PRIVATE KEY-----\n");
    private.fill(0);
    file.fill(0);
    let line = if comment.is_empty() {
        format!("ssh-ed25519 {}\n", b64.encode(&pub_blob))
    } else {
        format!("ssh-ed25519 {} {comment}\n", b64.encode(&pub_blob))
    };
    Ok((pem, line))
}
