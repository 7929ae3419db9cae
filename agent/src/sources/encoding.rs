//! The decode pipeline for cloud-init VMware datasource values: `<key>.encoding`, base64, gzip
//! (sniffed by magic), the 64 KiB guestinfo limit, a bound on inflated size, and the
//! `## template: jinja` header with cloud-init's instance-data variables.
//!
//! Everything here is pure: bytes in, text out. The callers add the source and key to errors.

use crate::encoding::CodecError;
pub use crate::encoding::{base64_decode, gunzip_bounded, is_gzip, Encoding};

/// vSphere refuses a guestinfo value larger than this; anything larger did not come from
/// vSphere and is rejected before decoding.
pub const GUESTINFO_VALUE_LIMIT: usize = 64 * 1024;

/// The most a gzip value may inflate to. CAPV's largest user-data (control plane with
/// certificates) is well under 1 MiB; 8 MiB leaves room and stops a gzip bomb.
pub const INFLATED_LIMIT: usize = 8 * 1024 * 1024;

/// cloud-init writes this into a redacted key; it means "no value", like an empty string.
pub const EMPTY_YAML_VALUE: &str = "---";

impl Encoding {
    /// Parses the value of a `<key>.encoding` key with the VMware datasource's spellings
    /// (`base64` or `b64`, `gzip+base64` or `gz+b64`; case-sensitive, as cloud-init's); `None`
    /// and empty mean raw (gzip is still sniffed by [`decode`]).
    pub fn parse(value: Option<&str>) -> Result<Self, DecodeError> {
        match value.map(str::trim) {
            None | Some("") => Ok(Self::Raw),
            Some("base64" | "b64") => Ok(Self::Base64),
            Some("gzip+base64" | "gz+b64") => Ok(Self::GzipBase64),
            Some(other) => Err(DecodeError::UnknownEncoding(truncate(other, 40))),
        }
    }
}

/// Why a value could not be decoded. The caller wraps it with the source and key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Larger than a guestinfo value can be.
    #[error("value is {len} bytes, over the {limit}-byte guestinfo limit")]
    TooLarge {
        /// Bytes received.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The `.encoding` key names an encoding cloud-init does not know.
    #[error("unknown encoding {0:?} (expected base64, b64, gzip+base64 or gz+b64)")]
    UnknownEncoding(String),
    /// Not valid base64 or gzip, or inflates beyond [`INFLATED_LIMIT`].
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The decoded bytes are not UTF-8 text.
    #[error("decoded value is not UTF-8 text")]
    NotUtf8,
    /// The jinja template failed to render.
    #[error("jinja template: {0}")]
    Jinja(String),
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// Decodes a raw guestinfo value with its encoding. Returns `Ok(None)` for an absent value
/// (empty, whitespace, or `---`), as cloud-init does.
pub fn decode(raw: &[u8], encoding: Encoding) -> Result<Option<String>, DecodeError> {
    if raw.len() > GUESTINFO_VALUE_LIMIT {
        return Err(DecodeError::TooLarge { len: raw.len(), limit: GUESTINFO_VALUE_LIMIT });
    }
    if is_empty_value(raw) {
        return Ok(None);
    }
    // gzip is sniffed by magic under any encoding, as cloud-init does
    let mut bytes = encoding.decode(raw, INFLATED_LIMIT)?;
    if !encoding.is_gzip() && is_gzip(&bytes) {
        bytes = gunzip_bounded(&bytes, INFLATED_LIMIT)?;
    }
    let text = String::from_utf8(bytes).map_err(|_| DecodeError::NotUtf8)?;
    if is_empty_value(text.as_bytes()) {
        return Ok(None);
    }
    Ok(Some(text))
}

/// True for the values cloud-init treats as absent: empty after trimming trailing
/// whitespace, or `---`.
pub fn is_empty_value(raw: &[u8]) -> bool {
    let trimmed = raw.trim_ascii_end();
    trimmed.is_empty() || trimmed == EMPTY_YAML_VALUE.as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoding::testing::{b64, gz};

    #[test]
    fn encodings_parse_like_cloud_init() {
        assert_eq!(Encoding::parse(None).unwrap(), Encoding::Raw);
        assert_eq!(Encoding::parse(Some("")).unwrap(), Encoding::Raw);
        assert_eq!(Encoding::parse(Some("b64")).unwrap(), Encoding::Base64);
        assert_eq!(Encoding::parse(Some("base64")).unwrap(), Encoding::Base64);
        assert_eq!(Encoding::parse(Some("gz+b64")).unwrap(), Encoding::GzipBase64);
        assert_eq!(Encoding::parse(Some("gzip+base64")).unwrap(), Encoding::GzipBase64);
        let err = Encoding::parse(Some("rot13")).unwrap_err();
        assert!(err.to_string().contains("rot13"), "{err}");
    }

    #[test]
    fn raw_base64_and_gzip_roundtrip() {
        let text = "instance-id: i-1\nlocal-hostname: n1\n";
        assert_eq!(decode(text.as_bytes(), Encoding::Raw).unwrap().unwrap(), text);
        assert_eq!(
            decode(b64(text.as_bytes()).as_bytes(), Encoding::Base64).unwrap().unwrap(),
            text
        );
        let gzb = b64(&gz(text.as_bytes()));
        assert_eq!(decode(gzb.as_bytes(), Encoding::GzipBase64).unwrap().unwrap(), text);
        // gzip sniffed by magic under plain base64.
        assert_eq!(decode(gzb.as_bytes(), Encoding::Base64).unwrap().unwrap(), text);
        // line-wrapped base64 is accepted.
        let wrapped: String = b64(text.as_bytes())
            .as_bytes()
            .chunks(8)
            .map(|c| format!("{}\n", std::str::from_utf8(c).unwrap()))
            .collect();
        assert_eq!(decode(wrapped.as_bytes(), Encoding::Base64).unwrap().unwrap(), text);
    }

    #[test]
    fn empty_and_dashes_are_absent() {
        for v in ["", "  \n", "---", "---\n"] {
            assert_eq!(decode(v.as_bytes(), Encoding::Raw).unwrap(), None, "{v:?}");
            assert_eq!(decode(v.as_bytes(), Encoding::Base64).unwrap(), None, "{v:?}");
        }
    }

    #[test]
    fn hostile_values_fail_clearly() {
        assert!(matches!(
            decode(b"not base64!!", Encoding::Base64),
            Err(DecodeError::Codec(CodecError::Base64(_)))
        ));
        assert!(matches!(
            decode(b64(b"plain").as_bytes(), Encoding::GzipBase64),
            Err(DecodeError::Codec(CodecError::Gzip(_)))
        ));
        let big = vec![b'a'; GUESTINFO_VALUE_LIMIT + 1];
        assert!(matches!(decode(&big, Encoding::Raw), Err(DecodeError::TooLarge { .. })));
        // 64 MiB of zeros compresses to ~64 KiB of gzip; base64 of it is over the limit, so
        // build a bomb under the limit: 20 MiB of zeros.
        let bomb = gz(&vec![0u8; 20 * 1024 * 1024]);
        let enc = b64(&bomb);
        assert!(enc.len() < GUESTINFO_VALUE_LIMIT, "{}", enc.len());
        assert!(matches!(
            decode(enc.as_bytes(), Encoding::GzipBase64),
            Err(DecodeError::Codec(CodecError::Inflated { .. }))
        ));
        assert!(matches!(decode(&[0xff, 0xfe, 0x41], Encoding::Raw), Err(DecodeError::NotUtf8)));
    }
}
