//! `write_files`: files from the cloud-config, decoded at parse time, written through the root.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Ctx, Outcome, StepError};
use crate::root::FileOpts;
use crate::types::{UnixMode, ValueError};

/// Largest decoded file we accept (a gzip bomb stops here).
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// One file to write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteFile {
    /// Absolute guest path.
    pub path: String,
    /// Decoded content (base64 in serialized form).
    #[serde(with = "b64")]
    pub content: Vec<u8>,
    /// Permission bits (default 0644).
    #[serde(default = "default_mode")]
    pub permissions: UnixMode,
    /// Owner (default `root:root`).
    #[serde(default)]
    pub owner: Owner,
    /// Append instead of replacing.
    #[serde(default)]
    pub append: bool,
    /// Write after users are created (cloud-init's `defer`).
    #[serde(default)]
    pub defer: bool,
}

fn default_mode() -> UnixMode {
    UnixMode::new(0o644).unwrap_or_else(|_| unreachable!("0644 is a valid mode"))
}

mod b64 {
    use super::*;
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD.decode(s).map_err(serde::de::Error::custom)
    }
}

/// A file owner, `user:group` (or `user`, group then the same name), names or numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// User name or uid.
    pub user: String,
    /// Group name or gid.
    pub group: String,
}

impl Default for Owner {
    fn default() -> Self {
        Owner { user: "root".into(), group: "root".into() }
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "._-$".contains(c))
        && !s.starts_with('-')
}

impl FromStr for Owner {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        let (u, g) = s.split_once(':').unwrap_or((s, s));
        for part in [u, g] {
            if !valid_name(part) {
                return Err(ValueError {
                    kind: "owner",
                    value: s.to_owned(),
                    reason: format!("{part:?} is not a user or group name"),
                });
            }
        }
        Ok(Owner { user: u.to_owned(), group: g.to_owned() })
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.user, self.group)
    }
}

impl Serialize for Owner {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Owner {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

use crate::encoding::CodecError;
pub use crate::encoding::Encoding;

/// Decodes cloud-config `content` (whitespace in base64 is ignored, as cloud-init's decoder
/// does); gzip inflates to at most [`MAX_FILE_BYTES`].
pub fn decode(encoding: Encoding, content: &str) -> Result<Vec<u8>, CodecError> {
    encoding.decode(content.as_bytes(), MAX_FILE_BYTES as usize)
}

pub(crate) fn write_files(ctx: &Ctx<'_>, deferred: bool) -> Result<Outcome, StepError> {
    let name = if deferred { "write-files-deferred" } else { "write-files" };
    let files: Vec<&WriteFile> = ctx.plan.files.iter().filter(|f| f.defer == deferred).collect();
    if files.is_empty() {
        return Ok(Outcome::Skipped("no files".into()));
    }
    if ctx.state.is_done(name) {
        return Ok(Outcome::Skipped("already written for this instance".into()));
    }
    // Check every file before writing any: a bad path or owner fails the step with nothing written.
    let db =
        super::users::Accounts::load(ctx.root).map_err(|e| StepError::wrap("read accounts", e))?;
    let mut ready = Vec::with_capacity(files.len());
    for (i, f) in files.iter().enumerate() {
        let what = |m: &str| format!("write_files[{i}] {}: {m}", f.path);
        if !f.path.starts_with('/') {
            return Err(StepError::msg(what("path must be absolute; no file written")));
        }
        ctx.root
            .resolve(&f.path)
            .map_err(|e| StepError::wrap(what("refused; no file written"), e))?;
        let uid = db.uid(&f.owner.user).ok_or_else(|| {
            StepError::msg(what(&format!("unknown user {:?}; no file written", f.owner.user)))
        })?;
        let gid = db.gid(&f.owner.group).ok_or_else(|| {
            StepError::msg(what(&format!("unknown group {:?}; no file written", f.owner.group)))
        })?;
        ready.push((f, FileOpts { mode: f.permissions.bits(), owner: Some((uid, gid)) }));
    }
    for (f, opts) in &ready {
        let r = if f.append {
            ctx.root.append(&f.path, &f.content, *opts)
        } else {
            ctx.root.write(&f.path, &f.content, *opts)
        };
        r.map_err(|e| StepError::wrap(format!("write {}", f.path), e))?;
    }
    Ok(Outcome::Ok(format!("wrote {} file(s)", ready.len())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn encodings() {
        assert_eq!(decode(Encoding::from_str("B64").unwrap(), "aGVs\nbG8=").unwrap(), b"hello");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(b"hi there").unwrap();
        let b = base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap());
        assert_eq!(decode(Encoding::from_str("gzip+base64").unwrap(), &b).unwrap(), b"hi there");
        assert!(Encoding::from_str("rot13").unwrap_err().to_string().contains("unknown"));
        assert!(matches!(decode(Encoding::Base64, "!!!"), Err(CodecError::Base64(_))));
        assert!(matches!(decode(Encoding::GzipBase64, "aGVsbG8="), Err(CodecError::Gzip(_))));
    }

    #[test]
    fn gzip_bomb_is_cut() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..17 {
            gz.write_all(&zeros).unwrap();
        }
        let b = base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap());
        assert!(matches!(decode(Encoding::GzipBase64, &b), Err(CodecError::Inflated { .. })));
    }

    #[test]
    fn owners() {
        assert_eq!(Owner::from_str("capv:adm").unwrap().to_string(), "capv:adm");
        assert_eq!(Owner::from_str("1000").unwrap().group, "1000");
        assert!(Owner::from_str("a b:c").is_err());
        assert!(Owner::from_str("root:").is_err());
    }
}
