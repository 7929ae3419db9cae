//! Guestinfo: the key/value store a hypervisor hands a guest, behind one trait.
//!
//! Keys are named without the `guestinfo.` prefix (`metadata`, `metadata.encoding`,
//! `capstan.hostname`, `ovfEnv`); each transport adds what it needs. Three transports:
//! - [`backdoor::Backdoor`]: VMware's RPCI over the backdoor I/O port (read and write);
//! - [`FwCfg`]: QEMU fw_cfg files under `opt/capstan/guestinfo/` (read-only; the lab);
//! - [`DirGuestinfo`]: a directory of files named after the keys (tests and operators).

pub mod backdoor;

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::sources::encoding::GUESTINFO_VALUE_LIMIT;

/// Reading and writing guestinfo keys.
pub trait Guestinfo: std::fmt::Debug + Send + Sync {
    /// A short name of the transport, recorded as the source of values (`vmware-backdoor`).
    fn transport(&self) -> &'static str;
    /// The value of `key`, or `None` when the key is not set. Values longer than the
    /// guestinfo limit are returned truncated to one byte past it, so the caller can reject
    /// them without reading an unbounded file.
    fn get(&self, key: &str) -> Result<Option<String>, GuestinfoError>;
    /// Sets `key` (used to scrub consumed secrets and to publish status).
    fn set(&self, key: &str, value: &str) -> Result<(), GuestinfoError>;
    /// The keys set right now, when the transport can list them in one cheap call (a
    /// directory); `None` when it cannot (VMware's backdoor has no listing RPC), and callers
    /// ask for each key they want. Lets first boot skip asking for every schema key by name.
    fn keys(&self) -> Option<BTreeSet<String>> {
        None
    }
}

/// A transport shared by its owners: the daemon's watch opens one and hands it to each of its
/// gatherings, rather than each gathering probing for a transport again.
impl<G: Guestinfo + ?Sized> Guestinfo for std::sync::Arc<G> {
    fn transport(&self) -> &'static str {
        (**self).transport()
    }
    fn get(&self, key: &str) -> Result<Option<String>, GuestinfoError> {
        (**self).get(key)
    }
    fn set(&self, key: &str, value: &str) -> Result<(), GuestinfoError> {
        (**self).set(key, value)
    }
    fn keys(&self) -> Option<BTreeSet<String>> {
        (**self).keys()
    }
}

/// A transport with some answers already known: the values the watch's identity probe read a
/// moment before the gathering that follows it. Each known value answers the first `get` of its
/// key, and only that one (later reads, and every key not primed, go to the transport); a
/// `set` forgets the key's value.
#[derive(Debug)]
pub struct Primed {
    inner: std::sync::Arc<dyn Guestinfo>,
    known: std::sync::Mutex<std::collections::BTreeMap<String, String>>,
}

impl Primed {
    /// `inner`, with `known` values (key, value) read from it just now.
    pub fn new(
        inner: std::sync::Arc<dyn Guestinfo>,
        known: impl IntoIterator<Item = (String, String)>,
    ) -> Self {
        Primed { inner, known: std::sync::Mutex::new(known.into_iter().collect()) }
    }

    fn take(&self, key: &str) -> Option<String> {
        self.known.lock().ok()?.remove(key)
    }
}

impl Guestinfo for Primed {
    fn transport(&self) -> &'static str {
        self.inner.transport()
    }
    fn get(&self, key: &str) -> Result<Option<String>, GuestinfoError> {
        check_key(key)?;
        match self.take(key) {
            Some(v) => Ok(Some(v)),
            None => self.inner.get(key),
        }
    }
    fn set(&self, key: &str, value: &str) -> Result<(), GuestinfoError> {
        let _ = self.take(key);
        self.inner.set(key, value)
    }
    fn keys(&self) -> Option<BTreeSet<String>> {
        self.inner.keys()
    }
}

/// The keys named by the entries of `dir` (`guestinfo.` prefix removed); empty when `dir`
/// does not exist, `None` when it cannot be read.
fn list_keys(dir: &Path) -> Option<BTreeSet<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Some(BTreeSet::new()),
        Err(_) => return None,
    };
    let mut keys = BTreeSet::new();
    for entry in entries {
        let name = entry.ok()?.file_name();
        let name = name.to_string_lossy();
        keys.insert(name.strip_prefix("guestinfo.").unwrap_or(&name).to_owned());
    }
    Some(keys)
}

/// Errors from a guestinfo transport.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GuestinfoError {
    /// A key with characters no transport allows (path separators, control characters).
    #[error("invalid guestinfo key {0:?}")]
    InvalidKey(String),
    /// Reading or writing a file-backed key failed.
    #[error("{op} {path}")]
    Io {
        /// `read` or `write`.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Writing a key into a guestinfo directory failed.
    #[error("write guestinfo.{key}")]
    Write {
        /// The key.
        key: String,
        /// The cause.
        #[source]
        source: crate::root::RootError,
    },
    /// The value is not UTF-8 text.
    #[error("value of guestinfo.{0} is not UTF-8 text")]
    NotUtf8(String),
    /// This transport cannot write.
    #[error("{0} is read-only")]
    ReadOnly(&'static str),
    /// Not running on VMware (CPUID check failed) or not on x86_64.
    #[error("not a VMware virtual machine")]
    NotVmware,
    /// The RPCI exchange failed.
    #[error("VMware backdoor: {0}")]
    Rpc(#[from] backdoor::rpci::RpciError),
    /// The hypervisor answered an RPC with an error.
    #[error("VMware backdoor: {command} refused: {reply}")]
    Refused {
        /// `info-get` or `info-set`.
        command: &'static str,
        /// The hypervisor's message.
        reply: String,
    },
}

/// Checks a key before it becomes part of a path or an RPC line.
pub fn check_key(key: &str) -> Result<(), GuestinfoError> {
    let ok = !key.is_empty()
        && key.len() <= 200
        && !key.starts_with('.')
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(GuestinfoError::InvalidKey(key.chars().take(60).collect()))
    }
}

fn read_bounded(path: &Path, key: &str) -> Result<Option<String>, GuestinfoError> {
    let file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(GuestinfoError::Io { op: "read", path: path.to_owned(), source })
        }
    };
    let mut buf = Vec::new();
    file.take(GUESTINFO_VALUE_LIMIT as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|source| GuestinfoError::Io { op: "read", path: path.to_owned(), source })?;
    String::from_utf8(buf).map(Some).map_err(|_| GuestinfoError::NotUtf8(key.to_owned()))
}

/// Guestinfo from a directory: key `metadata` is the file `DIR/guestinfo.metadata` or
/// `DIR/metadata` (the prefixed name wins when both exist).
#[derive(Debug, Clone)]
pub struct DirGuestinfo {
    dir: PathBuf,
}

impl DirGuestinfo {
    /// Uses `dir`; it need not exist (then every key is unset).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    fn candidates(&self, key: &str) -> [PathBuf; 2] {
        [self.dir.join(format!("guestinfo.{key}")), self.dir.join(key)]
    }
}

impl Guestinfo for DirGuestinfo {
    fn transport(&self) -> &'static str {
        "guestinfo-dir"
    }

    fn get(&self, key: &str) -> Result<Option<String>, GuestinfoError> {
        check_key(key)?;
        for path in self.candidates(key) {
            if let Some(v) = read_bounded(&path, key)? {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    fn set(&self, key: &str, value: &str) -> Result<(), GuestinfoError> {
        check_key(key)?;
        let [prefixed, bare] = self.candidates(key);
        let path = if bare.exists() && !prefixed.exists() { bare } else { prefixed };
        // Through the rooted handle: a unique temp file and a rename, so a reader never sees
        // half a value; 0600 because the values written here are scrubbed secrets or status.
        let name = path.file_name().map(PathBuf::from).unwrap_or_default();
        let write = |source| GuestinfoError::Write { key: key.to_owned(), source };
        let root = crate::root::Root::new(&self.dir).map_err(write)?;
        root.write_durable(&name, value.as_bytes(), crate::root::FileOpts::mode(0o600))
            .map_err(write)?;
        Ok(())
    }

    fn keys(&self) -> Option<BTreeSet<String>> {
        list_keys(&self.dir)
    }
}

/// The default fw_cfg directory QEMU's `-fw_cfg name=opt/capstan/guestinfo/<key>` shows up in.
pub const FW_CFG_DIR: &str = "/sys/firmware/qemu_fw_cfg/by_name/opt/capstan/guestinfo";

/// QEMU fw_cfg guestinfo: key `metadata` is `<dir>/metadata/raw` (or
/// `<dir>/guestinfo.metadata/raw`). fw_cfg names are limited to 55 bytes, so the lab passes
/// keys without the `guestinfo.` prefix. Read-only.
#[derive(Debug, Clone)]
pub struct FwCfg {
    dir: PathBuf,
}

impl FwCfg {
    /// Uses `dir` (normally [`FW_CFG_DIR`]).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// True when the directory exists (QEMU passed at least one key and the `qemu_fw_cfg`
    /// module is loaded).
    pub fn is_present(&self) -> bool {
        self.dir.is_dir()
    }
}

impl Guestinfo for FwCfg {
    fn transport(&self) -> &'static str {
        "fw_cfg"
    }

    fn get(&self, key: &str) -> Result<Option<String>, GuestinfoError> {
        check_key(key)?;
        for name in [key.to_owned(), format!("guestinfo.{key}")] {
            if let Some(v) = read_bounded(&self.dir.join(name).join("raw"), key)? {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    fn set(&self, _key: &str, _value: &str) -> Result<(), GuestinfoError> {
        Err(GuestinfoError::ReadOnly("fw_cfg"))
    }

    fn keys(&self) -> Option<BTreeSet<String>> {
        list_keys(&self.dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_accepts_both_names_and_sets_atomically() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("guestinfo.metadata"), "a").unwrap();
        fs::write(d.path().join("userdata"), "b").unwrap();
        let g = DirGuestinfo::new(d.path());
        assert_eq!(g.get("metadata").unwrap().as_deref(), Some("a"));
        assert_eq!(g.get("userdata").unwrap().as_deref(), Some("b"));
        assert_eq!(g.get("vendordata").unwrap(), None);
        g.set("userdata", "---").unwrap();
        assert_eq!(fs::read_to_string(d.path().join("userdata")).unwrap(), "---");
        assert!(!d.path().join("guestinfo.userdata").exists());
        assert!(matches!(g.get("../etc/passwd"), Err(GuestinfoError::InvalidKey(_))));
        let keys = g.keys().expect("a directory lists its keys");
        assert_eq!(keys.into_iter().collect::<Vec<_>>(), ["metadata", "userdata"]);
        assert_eq!(DirGuestinfo::new(d.path().join("absent")).keys(), Some(BTreeSet::new()));
    }

    #[test]
    fn dir_bounds_reads_and_rejects_binary() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("big"), vec![b'x'; 200_000]).unwrap();
        fs::write(d.path().join("bin"), [0xff, 0x00]).unwrap();
        let g = DirGuestinfo::new(d.path());
        assert_eq!(g.get("big").unwrap().unwrap().len(), GUESTINFO_VALUE_LIMIT + 1);
        assert!(matches!(g.get("bin"), Err(GuestinfoError::NotUtf8(_))));
    }

    #[test]
    fn primed_values_answer_once_and_a_set_forgets_them() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("metadata"), "instance-id: now").unwrap();
        fs::write(d.path().join("userdata"), "u").unwrap();
        let inner: std::sync::Arc<dyn Guestinfo> = std::sync::Arc::new(DirGuestinfo::new(d.path()));
        let known = [("metadata".to_owned(), "instance-id: probed".to_owned())];
        let g = Primed::new(inner.clone(), known.clone());
        assert_eq!(g.transport(), "guestinfo-dir");
        assert_eq!(g.get("metadata").unwrap().as_deref(), Some("instance-id: probed"));
        // once: the next read is the transport's
        assert_eq!(g.get("metadata").unwrap().as_deref(), Some("instance-id: now"));
        assert_eq!(g.get("userdata").unwrap().as_deref(), Some("u"));
        assert!(matches!(g.get("../x"), Err(GuestinfoError::InvalidKey(_))));
        let g = Primed::new(inner.clone(), known);
        g.set("metadata", "---").unwrap();
        assert_eq!(g.get("metadata").unwrap().as_deref(), Some("---"), "a set forgets the value");
        assert_eq!(g.keys(), inner.keys());
        // a shared transport is the transport
        assert_eq!(inner.get("userdata").unwrap().as_deref(), Some("u"));
    }

    #[test]
    fn fw_cfg_reads_raw_files_and_refuses_writes() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("metadata")).unwrap();
        fs::write(d.path().join("metadata/raw"), "instance-id: x").unwrap();
        let g = FwCfg::new(d.path());
        assert!(g.is_present());
        assert_eq!(g.get("metadata").unwrap().as_deref(), Some("instance-id: x"));
        assert_eq!(g.get("userdata").unwrap(), None);
        assert!(matches!(g.set("metadata", ""), Err(GuestinfoError::ReadOnly(_))));
        fs::create_dir_all(d.path().join("guestinfo.capstan.hostname")).unwrap();
        let keys = g.keys().expect("fw_cfg lists its keys");
        assert_eq!(keys.into_iter().collect::<Vec<_>>(), ["capstan.hostname", "metadata"]);
    }
}
