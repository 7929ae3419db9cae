//! The stage cache: every stage's output lives under a directory named by a digest of
//! everything that went into it (the previous stage's key included), with a completion
//! marker written last, so an interrupted stage is never mistaken for a finished one.
//!
//! Each entry also holds `.last-used`, whose mtime is the last time a build made or reused
//! it: that is what `capstan cache prune` keeps the newest of ([`inventory`]). Builds hold a
//! shared lock on `CACHE/.lock` while they run; prune takes it exclusively, so it never
//! removes an entry a build is reading or writing.

pub mod inventory;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use std::time::SystemTime;

use anyhow::{bail, Context};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest as _, Sha256};

/// Where cached stages live: `$CAPSTAN_CACHE`, else `$XDG_CACHE_HOME/capstan`, else
/// `~/.cache/capstan`.
pub fn default_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CAPSTAN_CACHE") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("capstan");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/capstan")
}

/// A running digest of a stage's inputs. Every input is labelled so that moving a value
/// from one field to another changes the key.
#[derive(Debug, Clone, Default)]
pub struct Key {
    hasher: Sha256,
}

impl Key {
    /// Starts a key for `stage`.
    pub fn new(stage: &str) -> Self {
        let mut k = Self::default();
        k.str("stage", stage);
        k
    }

    /// Adds a labelled string.
    pub fn str(&mut self, label: &str, value: &str) -> &mut Self {
        for part in [label.as_bytes(), value.as_bytes()] {
            self.hasher.update((part.len() as u64).to_le_bytes());
            self.hasher.update(part);
        }
        self
    }

    /// Adds a labelled serializable value (as JSON).
    pub fn json(&mut self, label: &str, value: &impl serde::Serialize) -> &mut Self {
        let text = serde_json::to_string(value).expect("serializable");
        self.str(label, &text)
    }

    /// Adds a file's content.
    pub fn file(&mut self, label: &str, path: &Path) -> anyhow::Result<&mut Self> {
        let digest = file_sha256(path)?;
        Ok(self.str(label, &digest))
    }

    /// Adds a directory tree: sorted relative paths, modes as git keeps them ([`tree_mode`]:
    /// not the umask of the checkout), symlink targets and contents.
    pub fn dir(&mut self, label: &str, root: &Path) -> anyhow::Result<&mut Self> {
        self.str("dir", label);
        let mut entries = Vec::new();
        walk(root, root, &mut entries)?;
        entries.sort();
        for rel in entries {
            let path = root.join(&rel);
            let meta = fs::symlink_metadata(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            self.str("path", &rel);
            let kind = if meta.file_type().is_symlink() {
                "link"
            } else if meta.is_dir() {
                "dir"
            } else {
                "file"
            };
            self.str("kind", kind);
            if meta.is_file() {
                self.str("mode", &format!("{:o}", tree_mode(&meta)));
            }
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&path)?;
                self.str("link", &target.to_string_lossy());
            } else if meta.is_file() {
                self.file("content", &path)?;
            }
        }
        Ok(self)
    }

    /// The hex digest.
    pub fn finish(&self) -> String {
        hex::encode(self.hasher.clone().finalize())
    }
}

/// The mode a file of a source tree (an overlay, the agent's units) has as an input: what git
/// records and checks out, 0755 when the owner may execute it and 0644 otherwise, and 0755 for
/// a directory. Everything else in the mode on disk comes from the umask of whoever checked
/// the tree out or copied it, so an image (and a cache key) that kept it would differ between
/// two machines with the same commit.
pub fn tree_mode(meta: &fs::Metadata) -> u32 {
    if meta.is_dir() || meta.permissions().mode() & 0o100 != 0 {
        0o755
    } else {
        0o644
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> anyhow::Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        let rel = path.strip_prefix(root).expect("under root").to_string_lossy().into_owned();
        let ft = entry.file_type()?;
        out.push(rel);
        if ft.is_dir() {
            walk(root, &path, out)?;
        }
    }
    Ok(())
}

/// SHA-256 of a file, streamed.
pub fn file_sha256(path: &Path) -> anyhow::Result<String> {
    let f = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let (digest, _) =
        sha256_of(f, std::io::sink()).with_context(|| format!("reading {}", path.display()))?;
    Ok(digest)
}

/// Streams `from` into `to`, returning the hex SHA-256 and the length of what passed: one
/// read serves a digest and a copy. `to` is flushed.
pub fn sha256_of(mut from: impl Read, mut to: impl Write) -> std::io::Result<(String, u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
        to.write_all(&buf[..n])?;
        total += n as u64;
    }
    to.flush()?;
    Ok((hex::encode(h.finalize()), total))
}

/// One stage's cache entry.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The directory holding the stage's output.
    pub dir: PathBuf,
    /// The full key.
    pub key: String,
}

/// Written last into a finished entry; holds the full key.
pub const MARKER: &str = ".complete";
/// Its mtime is when a build last made or reused the entry.
pub const LAST_USED: &str = ".last-used";
/// The lock builds hold shared and prune exclusively.
pub const LOCK: &str = ".lock";

impl Entry {
    /// The entry for `stage` with `key` under `cache`.
    pub fn new(cache: &Path, stage: &str, key: String) -> Self {
        Self { dir: cache.join(format!("{stage}-{}", &key[..24])), key }
    }

    /// Whether a finished output exists.
    pub fn is_complete(&self) -> bool {
        self.dir.join(MARKER).is_file()
    }

    /// Clears any partial output and creates the directory.
    pub fn begin(&self) -> anyhow::Result<()> {
        if self.dir.exists() {
            fs::remove_dir_all(&self.dir)
                .with_context(|| format!("clearing {}", self.dir.display()))?;
        }
        fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))
    }

    /// Marks the output finished (and used now).
    pub fn commit(&self) -> anyhow::Result<()> {
        fs::write(self.dir.join(MARKER), &self.key)
            .with_context(|| format!("writing marker in {}", self.dir.display()))?;
        self.mark_used()
    }

    /// Records that a build used the entry now (the mtime of `.last-used`, created if an
    /// older builder made the entry): a cache hit counts as much as a fresh build for
    /// `capstan cache prune`, and file access times (often `noatime`) do not matter.
    pub fn mark_used(&self) -> anyhow::Result<()> {
        self.mark_used_at(SystemTime::now())
    }

    /// [`Entry::mark_used`] at a given time (tests age entries with it).
    pub(crate) fn mark_used_at(&self, t: SystemTime) -> anyhow::Result<()> {
        let path = self.dir.join(LAST_USED);
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        f.set_modified(t).with_context(|| format!("setting the time of {}", path.display()))
    }
}

/// A lock on the cache directory, released when dropped.
#[derive(Debug)]
pub struct CacheLock {
    _lock: Flock<fs::File>,
}

fn lock_file(cache: &Path) -> anyhow::Result<fs::File> {
    let path = cache.join(LOCK);
    fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening the cache lock {}", path.display()))
}

/// Taken by a build for its whole run (any number of builds share it); waits while
/// `capstan cache prune` removes entries.
pub fn lock_shared(cache: &Path) -> anyhow::Result<CacheLock> {
    let file = match Flock::lock(lock_file(cache)?, FlockArg::LockSharedNonblock) {
        Ok(lock) => return Ok(CacheLock { _lock: lock }),
        Err((file, Errno::EWOULDBLOCK)) => {
            eprintln!("capstan build: waiting for capstan cache prune on {}", cache.display());
            file
        }
        Err((_, e)) => bail!("locking the cache {}: {e}", cache.display()),
    };
    let lock = Flock::lock(file, FlockArg::LockShared)
        .map_err(|(_, e)| anyhow::anyhow!("locking the cache {}: {e}", cache.display()))?;
    Ok(CacheLock { _lock: lock })
}

/// Taken by `capstan cache prune`: fails at once while a build holds the cache.
pub fn lock_exclusive(cache: &Path) -> anyhow::Result<CacheLock> {
    match Flock::lock(lock_file(cache)?, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(CacheLock { _lock: lock }),
        Err((_, Errno::EWOULDBLOCK)) => bail!(
            "{}: a capstan build is using the cache; prune when it has finished",
            cache.display()
        ),
        Err((_, e)) => bail!("locking the cache {}: {e}", cache.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_change_the_key() {
        let a = Key::new("s").str("a", "xy").finish();
        let b = Key::new("s").str("ax", "y").finish();
        assert_ne!(a, b);
    }

    #[test]
    fn dir_key_sees_content_and_mode() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir(t.path().join("d")).unwrap();
        fs::write(t.path().join("d/f"), "1").unwrap();
        let k1 = Key::new("s").dir("o", t.path()).unwrap().finish();
        fs::write(t.path().join("d/f"), "2").unwrap();
        let k2 = Key::new("s").dir("o", t.path()).unwrap().finish();
        assert_ne!(k1, k2);
        fs::set_permissions(t.path().join("d/f"), fs::Permissions::from_mode(0o755)).unwrap();
        let k3 = Key::new("s").dir("o", t.path()).unwrap().finish();
        assert_ne!(k2, k3);
    }

    #[test]
    fn dir_key_ignores_what_the_umask_decides_and_the_readdir_order() {
        // The same tree made twice, under umask 022 and 077, in opposite creation orders.
        let make = |modes: (u32, u32, u32), names: &[&str]| {
            let t = tempfile::tempdir().unwrap();
            for n in names {
                fs::create_dir_all(t.path().join("d")).unwrap();
                fs::write(t.path().join("d").join(n), n).unwrap();
                fs::set_permissions(
                    t.path().join("d").join(n),
                    fs::Permissions::from_mode(modes.0),
                )
                .unwrap();
            }
            fs::write(t.path().join("run"), "#!/bin/sh\n").unwrap();
            fs::set_permissions(t.path().join("run"), fs::Permissions::from_mode(modes.1)).unwrap();
            fs::set_permissions(t.path().join("d"), fs::Permissions::from_mode(modes.2)).unwrap();
            let k = Key::new("s").dir("o", t.path()).unwrap().finish();
            (t, k)
        };
        let (_a, ka) = make((0o644, 0o755, 0o755), &["a", "B", "c", "_d", "e.conf"]);
        let (_b, kb) = make((0o600, 0o700, 0o700), &["e.conf", "_d", "c", "B", "a"]);
        assert_eq!(ka, kb);
        // What git keeps still counts: the execute bit.
        let (_c, kc) = make((0o755, 0o755, 0o755), &["a", "B", "c", "_d", "e.conf"]);
        assert_ne!(ka, kc);
        assert_eq!(tree_mode(&fs::metadata(_b.path().join("d/a")).unwrap()), 0o644);
        assert_eq!(tree_mode(&fs::metadata(_b.path().join("run")).unwrap()), 0o755);
        assert_eq!(tree_mode(&fs::metadata(_b.path().join("d")).unwrap()), 0o755);
    }

    #[test]
    fn entry_needs_commit() {
        let t = tempfile::tempdir().unwrap();
        let e = Entry::new(t.path(), "rootfs", "ab".repeat(32));
        assert!(!e.is_complete());
        e.begin().unwrap();
        assert!(!e.is_complete());
        e.commit().unwrap();
        assert!(e.is_complete());
    }

    #[test]
    fn builds_share_the_lock_and_prune_waits_for_none() {
        let t = tempfile::tempdir().unwrap();
        let a = lock_shared(t.path()).unwrap();
        let b = lock_shared(t.path()).unwrap();
        let err = lock_exclusive(t.path()).unwrap_err().to_string();
        assert!(err.contains("a capstan build is using the cache"), "{err}");
        drop(a);
        assert!(lock_exclusive(t.path()).is_err(), "one build still holds it");
        drop(b);
        let p = lock_exclusive(t.path()).unwrap();
        assert!(lock_exclusive(t.path()).is_err());
        drop(p);
        lock_exclusive(t.path()).unwrap();
    }

    #[test]
    fn commit_and_hits_set_last_used() {
        let t = tempfile::tempdir().unwrap();
        let e = Entry::new(t.path(), "disk", "cd".repeat(32));
        e.begin().unwrap();
        assert!(!e.dir.join(LAST_USED).exists());
        e.commit().unwrap();
        let used = || fs::metadata(e.dir.join(LAST_USED)).unwrap().modified().unwrap();
        let old = SystemTime::now() - std::time::Duration::from_secs(86_400);
        e.mark_used_at(old).unwrap();
        assert_eq!(used(), old);
        e.mark_used().unwrap();
        assert!(used() > old + std::time::Duration::from_secs(86_000));
        // The marker is still the key: marking used does not touch it.
        assert_eq!(fs::read_to_string(e.dir.join(MARKER)).unwrap(), "cd".repeat(32));
    }
}
