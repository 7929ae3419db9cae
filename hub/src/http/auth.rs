//! Who is calling: a node (by its client certificate's common name or its bearer token), a
//! reader (the token file's `@read` token), or nobody.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use capstan_agent::types::InstanceId;

/// The token file's name for read-only access.
pub const READER: &str = "@read";
/// Shortest token accepted.
pub const MIN_TOKEN: usize = 16;

/// A token file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Unreadable.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A bad line.
    #[error("{path} line {line}: {reason}")]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// Bearer tokens: token → name (an instance-id or [`READER`]).
#[derive(Default, Clone)]
pub struct Tokens(HashMap<String, String>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} entries)", self.0.len())
    }
}

impl Tokens {
    /// Parses a token file: `NAME TOKEN` per line (NAME an instance-id or `@read`), `#`
    /// comments and blank lines ignored.
    pub fn parse(path: &Path, text: &str) -> Result<Tokens, TokenError> {
        let mut map = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |reason: String| TokenError::Line { path: path.into(), line: i + 1, reason };
            let mut parts = line.split_whitespace();
            let (Some(name), Some(token), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(bad("expected NAME TOKEN".into()));
            };
            if name != READER {
                name.parse::<InstanceId>().map_err(|e| bad(e.to_string()))?;
            }
            if token.len() < MIN_TOKEN {
                return Err(bad(format!(
                    "the token of {name} is shorter than {MIN_TOKEN} characters"
                )));
            }
            if map.insert(token.to_owned(), name.to_owned()).is_some() {
                return Err(bad(format!("the token of {name} is used twice")));
            }
        }
        Ok(Tokens(map))
    }

    /// Reads a token file.
    pub fn load(path: &Path) -> Result<Tokens, TokenError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| TokenError::Read { path: path.into(), source })?;
        Tokens::parse(path, &text)
    }

    /// The name a token belongs to. (A hash lookup: its timing reveals nothing about how
    /// close a guess was, unlike a byte-wise comparison.)
    pub fn name(&self, token: &str) -> Option<&str> {
        self.0.get(token).map(String::as_str)
    }
}

/// The authenticated caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A node, by instance-id.
    Node(String),
    /// Read-only access.
    Reader,
    /// A bearer token that is not in the token file.
    BadToken,
    /// No credential.
    Anonymous,
}

impl Caller {
    /// Works out the caller from the `Authorization` header and the client certificate's
    /// common name. A token, when given, is what counts.
    pub fn identify(
        tokens: &Tokens,
        authorization: Option<&[u8]>,
        cert_cn: Option<&str>,
    ) -> Caller {
        if let Some(h) = authorization {
            let Some(t) = std::str::from_utf8(h).ok().and_then(|h| h.strip_prefix("Bearer "))
            else {
                return Caller::BadToken;
            };
            return match tokens.name(t.trim()) {
                Some(READER) => Caller::Reader,
                Some(n) => Caller::Node(n.to_owned()),
                None => Caller::BadToken,
            };
        }
        match cert_cn {
            Some(cn) => Caller::Node(cn.to_owned()),
            None => Caller::Anonymous,
        }
    }

    /// Whether the caller may read the hub's views.
    pub fn can_read(&self) -> bool {
        matches!(self, Caller::Node(_) | Caller::Reader)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_files_are_strict_and_name_the_line() {
        let p = Path::new("/etc/hub/tokens");
        let t = Tokens::parse(p, "# nodes\niid-1 aaaaaaaaaaaaaaaa\n\n@read rrrrrrrrrrrrrrrr\n")
            .unwrap();
        assert_eq!(t.name("aaaaaaaaaaaaaaaa"), Some("iid-1"));
        assert_eq!(Caller::identify(&t, Some(b"Bearer rrrrrrrrrrrrrrrr"), None), Caller::Reader);
        assert_eq!(
            Caller::identify(&t, Some(b"Bearer aaaaaaaaaaaaaaaa"), Some("iid-2")),
            Caller::Node("iid-1".into())
        );
        assert_eq!(Caller::identify(&t, Some(b"Bearer nope"), Some("iid-2")), Caller::BadToken);
        assert_eq!(Caller::identify(&t, Some(b"Basic x"), None), Caller::BadToken);
        assert_eq!(Caller::identify(&t, Some(&[0xff]), None), Caller::BadToken);
        assert_eq!(Caller::identify(&t, None, Some("iid-2")), Caller::Node("iid-2".into()));
        assert_eq!(Caller::identify(&t, None, None), Caller::Anonymous);
        for (text, msg) in [
            ("iid-1", "line 1: expected NAME TOKEN"),
            ("a b c", "line 1: expected NAME TOKEN"),
            ("\nx/y aaaaaaaaaaaaaaaa", "line 2: invalid instance-id"),
            ("iid-1 short", "shorter than 16"),
            ("a aaaaaaaaaaaaaaaa\nb aaaaaaaaaaaaaaaa", "line 2: the token of b is used twice"),
        ] {
            let e = Tokens::parse(p, text).unwrap_err().to_string();
            assert!(e.contains("/etc/hub/tokens") && e.contains(msg), "{text:?}: {e}");
        }
    }
}
