//! The one codec for encoded values from outside: base64 (whitespace ignored, padding optional),
//! bounded gzip inflation, and the [`Encoding`] a value declares.
//!
//! Two readers use it, each with the spellings its format defines:
//! - cloud-config (`write_files[].encoding`, and the metadata's `network.encoding`) through
//!   [`Encoding`]'s `FromStr`: cloud-init's `cc_write_files` spellings;
//! - the VMware datasource's `<key>.encoding` keys through `sources::encoding`, which adds the
//!   guestinfo limits and gzip sniffing around [`Encoding::decode`].
//!
//! Everything here is pure: bytes in, bytes out. Callers add the source and key to errors.

use std::fmt;
use std::io::Read;
use std::str::FromStr;

use base64::Engine as _;

use crate::types::ValueError;

/// How a value is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// The value is the content itself (`text/plain`, or no encoding given).
    Raw,
    /// Base64.
    Base64,
    /// Gzip: the value holds the compressed bytes themselves.
    Gzip,
    /// Gzip, then base64.
    GzipBase64,
}

/// The `write_files` spellings, as the error message lists them.
const CLOUD_CONFIG_KNOWN: &str = "b64, base64, gz, gzip, gz+b64, gzip+base64, text/plain";

impl FromStr for Encoding {
    type Err = ValueError;
    /// cloud-config's spellings (cloud-init `cc_write_files`), case-insensitive: empty,
    /// `text/plain`, `text` or `plain`; `b64` or `base64`; `gz` or `gzip`; `gz+b64`,
    /// `gzip+base64`, `gz+base64` or `gzip+b64`.
    fn from_str(s: &str) -> Result<Self, ValueError> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "" | "text/plain" | "text" | "plain" => Encoding::Raw,
            "b64" | "base64" => Encoding::Base64,
            "gz" | "gzip" => Encoding::Gzip,
            "gz+b64" | "gzip+base64" | "gz+base64" | "gzip+b64" => Encoding::GzipBase64,
            _ => {
                return Err(ValueError::new(
                    "encoding",
                    s,
                    format!("unknown (known: {CLOUD_CONFIG_KNOWN})"),
                ))
            }
        })
    }
}

impl Encoding {
    /// Whether the value is base64 text.
    pub fn is_base64(self) -> bool {
        matches!(self, Encoding::Base64 | Encoding::GzipBase64)
    }

    /// Whether the (base64-decoded) bytes are a gzip stream.
    pub fn is_gzip(self) -> bool {
        matches!(self, Encoding::Gzip | Encoding::GzipBase64)
    }

    /// Decodes `value`; a gzip stream may inflate to at most `limit` bytes.
    pub fn decode(self, value: &[u8], limit: usize) -> Result<Vec<u8>, CodecError> {
        let bytes = if self.is_base64() { base64_decode(value)? } else { value.to_vec() };
        if self.is_gzip() {
            gunzip_bounded(&bytes, limit)
        } else {
            Ok(bytes)
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Encoding::Raw => "text/plain",
            Encoding::Base64 => "base64",
            Encoding::Gzip => "gzip",
            Encoding::GzipBase64 => "gzip+base64",
        })
    }
}

/// Why encoded bytes could not be decoded. The caller wraps it with the source and key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// Not valid base64.
    #[error("invalid base64")]
    Base64(#[source] base64::DecodeError),
    /// Not a valid gzip stream.
    #[error("invalid gzip data")]
    Gzip(#[source] std::io::Error),
    /// Inflates beyond the caller's limit.
    #[error("gzip data inflates beyond {limit} bytes (gzip bomb?)")]
    Inflated {
        /// The limit.
        limit: usize,
    },
}

/// gzip's magic number.
pub fn is_gzip(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0x1f, 0x8b])
}

/// Standard base64, ignoring ASCII whitespace (line-wrapped output of `base64`, YAML block
/// scalars), padding optional.
pub fn base64_decode(raw: &[u8]) -> Result<Vec<u8>, CodecError> {
    let compact: Vec<u8> = raw.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    engine.decode(&compact).map_err(CodecError::Base64)
}

/// Inflates a gzip stream (concatenated members allowed), refusing to produce more than
/// `limit` bytes.
pub fn gunzip_bounded(bytes: &[u8], limit: usize) -> Result<Vec<u8>, CodecError> {
    let decoder = flate2::read::MultiGzDecoder::new(bytes);
    let mut out = Vec::new();
    // Read one byte past the limit to tell "exactly at the limit" from "over it".
    let read = decoder.take(limit as u64 + 1).read_to_end(&mut out).map_err(CodecError::Gzip)?;
    if read > limit {
        return Err(CodecError::Inflated { limit });
    }
    Ok(out)
}

/// Encoders for the tests of this codec's readers.
#[cfg(test)]
pub(crate) mod testing {
    use base64::Engine as _;
    use std::io::Write as _;

    /// gzip of `data`.
    pub(crate) fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// Standard base64 of `data`.
    pub(crate) fn b64(data: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(data)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{b64, gz};
    use super::*;

    #[test]
    fn cloud_config_spellings() {
        for (s, want) in [
            ("", Encoding::Raw),
            ("text/plain", Encoding::Raw),
            ("B64", Encoding::Base64),
            ("base64", Encoding::Base64),
            ("gz", Encoding::Gzip),
            ("GZIP", Encoding::Gzip),
            ("gz+b64", Encoding::GzipBase64),
            ("gzip+base64", Encoding::GzipBase64),
            ("gz+base64", Encoding::GzipBase64),
            ("gzip+b64", Encoding::GzipBase64),
        ] {
            assert_eq!(s.parse::<Encoding>().unwrap(), want, "{s:?}");
        }
        assert_eq!(
            "rot13".parse::<Encoding>().unwrap_err().to_string(),
            format!("invalid encoding \"rot13\": unknown (known: {CLOUD_CONFIG_KNOWN})")
        );
    }

    #[test]
    fn decodes_each_encoding() {
        let text = b"hi there\n";
        assert_eq!(Encoding::Raw.decode(text, 100).unwrap(), text);
        assert_eq!(Encoding::Base64.decode(b"aGVs\nbG8=", 100).unwrap(), b"hello");
        assert_eq!(Encoding::Base64.decode(b"aGVsbG8", 100).unwrap(), b"hello", "unpadded");
        assert_eq!(Encoding::Gzip.decode(&gz(text), 100).unwrap(), text);
        assert_eq!(Encoding::GzipBase64.decode(b64(&gz(text)).as_bytes(), 100).unwrap(), text);
        // Raw and Base64 never inflate, even when the bytes look like gzip.
        assert_eq!(Encoding::Raw.decode(&gz(text), 100).unwrap(), gz(text));
    }

    #[test]
    fn hostile_bytes_fail_clearly() {
        assert!(matches!(Encoding::Base64.decode(b"!!!", 100), Err(CodecError::Base64(_))));
        assert!(matches!(Encoding::GzipBase64.decode(b"aGVsbG8=", 100), Err(CodecError::Gzip(_))));
        let bomb = gz(&vec![0u8; 1 << 20]);
        let e = Encoding::Gzip.decode(&bomb, 1 << 19).unwrap_err();
        assert!(matches!(e, CodecError::Inflated { limit } if limit == 1 << 19), "{e:?}");
        assert_eq!(gunzip_bounded(&gz(b"12345"), 5).unwrap(), b"12345", "exactly at the limit");
        assert!(is_gzip(&gz(b"x")) && !is_gzip(b"x"));
    }

    proptest::proptest! {
        #[test]
        fn roundtrips(data in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let enc = b64(&gz(&data));
            proptest::prop_assert_eq!(Encoding::GzipBase64.decode(enc.as_bytes(), 512).unwrap(), data.clone());
            proptest::prop_assert_eq!(Encoding::Base64.decode(b64(&data).as_bytes(), 0).unwrap(), data);
        }

        #[test]
        fn any_bytes_decode_or_fail(raw in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            for e in [Encoding::Raw, Encoding::Base64, Encoding::Gzip, Encoding::GzipBase64] {
                if let Ok(out) = e.decode(&raw, 1024) {
                    proptest::prop_assert!(out.len() <= 1024 || !e.is_gzip());
                }
            }
        }
    }
}
