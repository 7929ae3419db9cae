//! `.mf` manifests: one `SHA256(name)= hex` line per file of an OVF package.
//!
//! We write exactly `SHA256(name)= <lowercase hex>\n` per file, the only form vCenter accepts.
//! We read SHA1, SHA256 and SHA512 lines (older ovftool versions wrote SHA1), strictly: any
//! line that is not `ALG(name)= hex` is an error naming the line, so a manifest cannot hide an
//! entry from a verifier.
//!
//! ```
//! use ovf::manifest::{Algorithm, Manifest};
//! let mut m = Manifest::default();
//! m.push(Algorithm::Sha256, "node.ovf", ovf::manifest::digest(Algorithm::Sha256, &b"<Envelope/>"[..]).unwrap());
//! let text = m.render();
//! assert!(text.starts_with("SHA256(node.ovf)= "));
//! assert_eq!(Manifest::parse(&text).unwrap(), m);
//! ```

use std::fmt;
use std::io::{self, Read};

use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};

/// A digest algorithm a manifest line can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Algorithm {
    /// `SHA1`: read only (vCenter 6.5+ still accepts it; we never write it).
    Sha1,
    /// `SHA256`: what we write.
    Sha256,
    /// `SHA512`.
    Sha512,
}

impl Algorithm {
    /// The spelling in a manifest line.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha1 => "SHA1",
            Algorithm::Sha256 => "SHA256",
            Algorithm::Sha512 => "SHA512",
        }
    }

    /// Digest length in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            Algorithm::Sha1 => 20,
            Algorithm::Sha256 => 32,
            Algorithm::Sha512 => 64,
        }
    }

    fn from_name(s: &str) -> Option<Self> {
        match s {
            "SHA1" => Some(Algorithm::Sha1),
            "SHA256" => Some(Algorithm::Sha256),
            "SHA512" => Some(Algorithm::Sha512),
            _ => None,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One manifest line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The digest algorithm.
    pub algorithm: Algorithm,
    /// The file name, relative to the descriptor (as in `ovf:href`).
    pub name: String,
    /// The digest bytes.
    pub digest: Vec<u8>,
}

/// A parsed or to-be-written manifest, in line order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    /// The entries, one per line.
    pub entries: Vec<Entry>,
}

/// A manifest that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// The manifest is not UTF-8.
    #[error("manifest line {line}: not UTF-8")]
    NotUtf8 {
        /// 1-based line number.
        line: usize,
    },
    /// A line is not `ALG(name)= hex`.
    #[error("manifest line {line}: {reason}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The same file is listed twice.
    #[error("manifest line {line}: {name:?} is listed twice (first on line {first})")]
    Duplicate {
        /// 1-based line number of the second entry.
        line: usize,
        /// The file name.
        name: String,
        /// Line of the first entry.
        first: usize,
    },
}

/// The largest manifest we parse: 1 MiB is thousands of lines.
pub const MAX_MANIFEST_BYTES: usize = 1 << 20;

impl Manifest {
    /// Adds an entry.
    pub fn push(&mut self, algorithm: Algorithm, name: impl Into<String>, digest: Vec<u8>) {
        self.entries.push(Entry { algorithm, name: name.into(), digest });
    }

    /// The entry for `name`, if any.
    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// Renders `ALG(name)= hex\n` lines, the exact form vCenter requires.
    pub fn render(&self) -> String {
        let mut s = String::new();
        for e in &self.entries {
            s.push_str(&format!("{}({})= {}\n", e.algorithm, e.name, hex::encode(&e.digest)));
        }
        s
    }

    /// Parses manifest bytes (must be UTF-8).
    pub fn parse_bytes(bytes: &[u8]) -> Result<Self, ManifestError> {
        match std::str::from_utf8(bytes) {
            Ok(text) => Self::parse(text),
            Err(e) => {
                let line = 1 + bytes[..e.valid_up_to()].iter().filter(|b| **b == b'\n').count();
                Err(ManifestError::NotUtf8 { line })
            }
        }
    }

    /// Parses manifest text strictly. Blank lines and a `\r` before `\n` are tolerated;
    /// anything else that is not `ALG(name)= hex` is an error naming the line.
    pub fn parse(text: &str) -> Result<Self, ManifestError> {
        let mut m = Manifest::default();
        let mut seen: Vec<(String, usize)> = Vec::new();
        if text.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::Line {
                line: 1,
                reason: format!("manifest larger than {MAX_MANIFEST_BYTES} bytes"),
            });
        }
        for (i, raw) in text.split('\n').enumerate() {
            let line = i + 1;
            let l = raw.strip_suffix('\r').unwrap_or(raw);
            if l.trim().is_empty() {
                continue;
            }
            let err = |reason: String| ManifestError::Line { line, reason };
            let open = l.find('(').ok_or_else(|| err("expected ALG(name)= hex".into()))?;
            let alg_name = &l[..open];
            let algorithm = Algorithm::from_name(alg_name).ok_or_else(|| {
                err(format!(
                    "unknown digest algorithm {alg_name:?} (expected SHA1, SHA256 or SHA512)"
                ))
            })?;
            let close = l
                .rfind(")= ")
                .filter(|c| *c > open)
                .ok_or_else(|| err("expected \")= \" after the file name".into()))?;
            let name = &l[open + 1..close];
            check_name(name).map_err(|r| err(r.to_string()))?;
            let hex_text = &l[close + 3..];
            if hex_text.len() != algorithm.digest_len() * 2 {
                return Err(err(format!(
                    "a {algorithm} digest is {} hex digits, found {}",
                    algorithm.digest_len() * 2,
                    hex_text.len()
                )));
            }
            let digest = hex::decode(hex_text)
                .map_err(|_| err(format!("digest {hex_text:?} is not hexadecimal")))?;
            if let Some((_, first)) = seen.iter().find(|(n, _)| n == name) {
                return Err(ManifestError::Duplicate {
                    line,
                    name: name.to_string(),
                    first: *first,
                });
            }
            seen.push((name.to_string(), line));
            m.entries.push(Entry { algorithm, name: name.to_string(), digest });
        }
        Ok(m)
    }
}

/// Checks a file name as it may appear in a manifest or an OVA: relative, no `..`, no control
/// characters.
pub fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty file name");
    }
    if name.starts_with('/') || name.split('/').any(|c| c == ".." || c.is_empty()) {
        return Err("file name must be relative, without \"..\" or empty components");
    }
    if name.chars().any(char::is_control) {
        return Err("file name contains a control character");
    }
    Ok(())
}

/// An incremental digest of one algorithm.
#[derive(Debug, Clone)]
pub enum Hasher {
    /// SHA-1.
    Sha1(Sha1),
    /// SHA-256.
    Sha256(Sha256),
    /// SHA-512.
    Sha512(Sha512),
}

impl Hasher {
    /// A fresh hasher for `algorithm`.
    pub fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Sha1 => Hasher::Sha1(Sha1::new()),
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(Sha512::new()),
        }
    }

    /// Feeds bytes.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha1(h) => h.update(data),
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    /// The digest.
    pub fn finish(self) -> Vec<u8> {
        match self {
            Hasher::Sha1(h) => h.finalize().to_vec(),
            Hasher::Sha256(h) => h.finalize().to_vec(),
            Hasher::Sha512(h) => h.finalize().to_vec(),
        }
    }
}

/// A `Write` that digests what passes through it: write a VMDK through it straight to disk
/// and hand the digest to [`crate::ova::OvaFile::sha256`], saving the OVA's hashing pass.
#[derive(Debug)]
pub struct HashingWriter<W> {
    inner: W,
    hasher: Hasher,
    written: u64,
}

impl<W: io::Write> HashingWriter<W> {
    /// Wraps `inner`, digesting with `algorithm`.
    pub fn new(inner: W, algorithm: Algorithm) -> Self {
        HashingWriter { inner, hasher: Hasher::new(algorithm), written: 0 }
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The inner writer, the digest and the byte count.
    pub fn finish(self) -> (W, Vec<u8>, u64) {
        (self.inner, self.hasher.finish(), self.written)
    }
}

impl<W: io::Write> io::Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Digests everything `reader` yields, streaming.
pub fn digest<R: Read>(algorithm: Algorithm, mut reader: R) -> io::Result<Vec<u8>> {
    let mut h = Hasher::new(algorithm);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
    }
    Ok(h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn renders_exactly_what_vcenter_wants() {
        let mut m = Manifest::default();
        m.push(Algorithm::Sha256, "a.ovf", hex::decode(A).unwrap());
        assert_eq!(m.render(), format!("SHA256(a.ovf)= {A}\n"));
    }

    #[test]
    fn parses_all_algorithms_crlf_and_names_with_parens() {
        let sha1 = "a94a8fe5ccb19ba61c4c0873d391e987982fbbd3";
        let sha512 = "ee26b0dd4af7e749aa1a8ee3c10ae9923f618980772e473f8819a5d4940e0db27ac185f8a0e1d5f84f88bc887fd67b143732c304cc5fa9ad8e6f57f50028a8ff";
        let text = format!(
            "SHA1(disk (1).vmdk)= {sha1}\r\nSHA256(x.ovf)= {}\n\nSHA512(dir/y.iso)= {sha512}",
            A.to_uppercase()
        );
        let m = Manifest::parse(&text).unwrap();
        assert_eq!(m.entries.len(), 3);
        assert_eq!(m.entries[0].name, "disk (1).vmdk");
        assert_eq!(m.get("x.ovf").unwrap().digest, hex::decode(A).unwrap());
        assert_eq!(m.entries[2].algorithm, Algorithm::Sha512);
    }

    #[test]
    fn strict_errors_name_the_line() {
        let cases = [
            (format!("SHA256(a)={A}"), "\")= \""),
            (format!("SHA256(a)=  {A}"), "hex digits"),
            (format!("MD5(a)= {A}"), "unknown digest algorithm"),
            ("SHA256(a)= 1234".to_string(), "64 hex digits"),
            (format!("SHA256(a)= {}", "zz".repeat(32)), "not hexadecimal"),
            (format!("SHA256(../a)= {A}"), "relative"),
            (format!("SHA256(/etc/a)= {A}"), "relative"),
            (format!("SHA256()= {A}"), "empty"),
            ("garbage".to_string(), "ALG(name)"),
        ];
        for (line, want) in cases {
            let text = format!("SHA256(ok.ovf)= {A}\n{line}\n");
            let e = Manifest::parse(&text).unwrap_err().to_string();
            assert!(e.starts_with("manifest line 2:"), "{line}: {e}");
            assert!(e.contains(want), "{line}: {e}");
        }
        let e =
            Manifest::parse(&format!("SHA256(a)= {A}\nSHA1(a)= {}\n", "0".repeat(40))).unwrap_err();
        assert!(matches!(e, ManifestError::Duplicate { line: 2, first: 1, .. }), "{e}");
        let e = Manifest::parse_bytes(b"SHA256(a)= x\n\xff").unwrap_err();
        assert_eq!(e, ManifestError::NotUtf8 { line: 2 });
    }

    #[test]
    fn hashing_writer_digests_what_passes() {
        use std::io::Write as _;
        let mut w = HashingWriter::new(Vec::new(), Algorithm::Sha256);
        w.write_all(b"te").unwrap();
        w.write_all(b"st").unwrap();
        let (inner, d, n) = w.finish();
        assert_eq!((inner.as_slice(), n), (&b"test"[..], 4));
        assert_eq!(hex::encode(d), A);
    }

    #[test]
    fn digest_streams() {
        let d = digest(Algorithm::Sha256, &b"test"[..]).unwrap();
        assert_eq!(hex::encode(d), A);
    }
}
