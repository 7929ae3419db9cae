//! A filesystem handle rooted at a directory: `/` in production, a temp dir under `--root`.
//!
//! Every file effect of every first-boot step goes through [`Root`], so tests run each step
//! against a temp root and `--root DIR` can promise that nothing lands outside `DIR`.
//!
//! Guest paths are resolved component by component, like a `chroot` would: a symlink is followed
//! *inside* the root (an absolute target such as `/run` on a merged-`/usr` system means
//! `ROOT/run`), and a `..` — in the path or in a symlink target — that would climb above the
//! root is refused, not clamped, because a path that tries to is hostile and the operator should
//! hear about it. Resolution and the later open are two system calls, so a process racing us
//! inside the root could swap a directory for a symlink in between; first boot runs before any
//! such process exists, which is why plain path resolution is enough here.
//!
//! Writes are atomic: a temp file in the same directory, written, mode and owner set, then
//! renamed over the target, so a reader sees the old file or the new one, never a torn one.
//!
//! Durability is batched, because fsync is most of what first boot costs (it writes dozens of
//! files; one fsync was ~7 ms on a busy host, the rest of a whole run ~10 ms):
//! - a write that *replaces* an existing file fsyncs the temp file before the rename, so a
//!   crash cannot leave `/etc/passwd` empty;
//! - a write that *creates* a file defers its fsync; [`Root::sync`] then fsyncs every file
//!   created and every directory renamed into since the last call. The steps call it at the end
//!   of a run, before the caller records the run: a crash before that only means the steps run
//!   again and write the files again. (`syncfs` would be one call, but it flushes every other
//!   process's dirty data on the filesystem too.)

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// How many symlinks one resolution may follow (Linux's `MAXSYMLINKS`).
const MAX_SYMLINKS: usize = 40;

/// Why a rooted file operation failed. Each variant names the guest path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RootError {
    /// The path (or a symlink on it) leads outside the root.
    #[error("{path}: escapes the root ({why})")]
    Escape {
        /// The guest path as given.
        path: String,
        /// What made it escape.
        why: String,
    },
    /// Too many symlinks, or a loop.
    #[error("{path}: too many levels of symbolic links")]
    SymlinkLoop {
        /// The guest path as given.
        path: String,
    },
    /// The path is not usable (empty, or names the root itself where a file is needed).
    #[error("{path}: {why}")]
    BadPath {
        /// The guest path as given.
        path: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// An I/O operation failed.
    #[error("{op} {path}")]
    Io {
        /// What we were doing (`"write"`, `"rename"`, ...).
        op: &'static str,
        /// The guest path.
        path: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Mode and owner for a file or directory we create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileOpts {
    /// Permission bits.
    pub mode: u32,
    /// Owner uid and gid; `None` keeps the creating process's (root at first boot).
    pub owner: Option<(u32, u32)>,
}

impl FileOpts {
    /// A file with `mode`, owned by whoever runs the agent.
    pub fn mode(mode: u32) -> Self {
        FileOpts { mode, owner: None }
    }
}

impl Default for FileOpts {
    fn default() -> Self {
        FileOpts::mode(0o644)
    }
}

/// A filesystem rooted at a host directory.
#[derive(Debug, Clone)]
pub struct Root {
    base: PathBuf,
    /// Files created and directories renamed into, not yet made durable (see [`Root::sync`]).
    dirty: Arc<Mutex<BTreeSet<PathBuf>>>,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> RootError + 'a {
    move |source| RootError::Io { op, path: path.display().to_string(), source }
}

impl Root {
    /// A root at `dir`, which must exist. `/` is the live system.
    pub fn new(dir: impl AsRef<Path>) -> Result<Self, RootError> {
        let dir = dir.as_ref();
        let base = fs::canonicalize(dir).map_err(io_err("open root", dir))?;
        if !base.is_dir() {
            return Err(RootError::BadPath {
                path: dir.display().to_string(),
                why: "root is not a directory",
            });
        }
        Ok(Root { base, dirty: Arc::default() })
    }

    /// The host directory this root stands for.
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// True when this root is the live system's `/`.
    pub fn is_live(&self) -> bool {
        self.base == Path::new("/")
    }

    /// Resolves a guest path (absolute, or relative to the root) to a host path under the root,
    /// following symlinks inside the root. The last component need not exist; missing
    /// intermediate directories are fine too (they are taken literally).
    pub fn resolve(&self, guest: impl AsRef<Path>) -> Result<PathBuf, RootError> {
        let guest = guest.as_ref();
        let shown = guest.display().to_string();
        if guest.as_os_str().is_empty() {
            return Err(RootError::BadPath { path: shown, why: "empty path" });
        }
        // Components still to walk, in reverse so that pop() gives the next one.
        let mut todo: Vec<OsString> = Vec::new();
        push_components(&mut todo, guest, &shown)?;
        let mut stack: Vec<OsString> = Vec::new(); // resolved components below the root
        let mut links = 0usize;
        while let Some(c) = todo.pop() {
            if c == ".." {
                if stack.pop().is_none() {
                    return Err(RootError::Escape {
                        path: shown,
                        why: "'..' climbs above the root".into(),
                    });
                }
                continue;
            }
            let mut candidate = self.base.clone();
            candidate.extend(&stack);
            candidate.push(&c);
            match fs::symlink_metadata(&candidate) {
                Ok(m) if m.file_type().is_symlink() => {
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return Err(RootError::SymlinkLoop { path: shown });
                    }
                    let target = fs::read_link(&candidate).map_err(io_err("readlink", guest))?;
                    if target.is_absolute() {
                        stack.clear();
                    }
                    push_components(&mut todo, &target, &shown)?;
                }
                Ok(_) => stack.push(c),
                Err(e) if e.kind() == io::ErrorKind::NotFound => stack.push(c),
                Err(e) if e.raw_os_error() == Some(20) => {
                    // ENOTDIR: a file in the middle of the path
                    return Err(RootError::Io { op: "resolve", path: shown, source: e });
                }
                Err(e) => return Err(RootError::Io { op: "resolve", path: shown, source: e }),
            }
        }
        let mut out = self.base.clone();
        out.extend(&stack);
        Ok(out)
    }

    fn resolve_file(&self, guest: &Path) -> Result<PathBuf, RootError> {
        let p = self.resolve(guest)?;
        if p == self.base {
            return Err(RootError::BadPath {
                path: guest.display().to_string(),
                why: "names the root directory, not a file",
            });
        }
        Ok(p)
    }

    /// Makes every write so far durable: fsyncs each file created and each directory renamed
    /// into since the last call (on ext4 the first fsync commits the journal for all of them,
    /// the others are cheap). Call it before recording that the writes happened.
    pub fn sync(&self) -> Result<(), RootError> {
        let paths = std::mem::take(&mut *self.dirty.lock().unwrap_or_else(|p| p.into_inner()));
        for p in paths {
            match File::open(&p).and_then(|f| f.sync_all()) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {} // removed since
                Err(e) => {
                    return Err(RootError::Io { op: "fsync", path: self.guest_of(&p), source: e })
                }
            }
        }
        Ok(())
    }

    /// Reads a file; `Ok(None)` when it does not exist.
    pub fn read(&self, guest: impl AsRef<Path>) -> Result<Option<Vec<u8>>, RootError> {
        let guest = guest.as_ref();
        let p = self.resolve_file(guest)?;
        match fs::read(&p) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => {
                Err(RootError::Io { op: "read", path: guest.display().to_string(), source: e })
            }
        }
    }

    /// Reads a UTF-8 text file (lossily); `Ok(None)` when it does not exist.
    pub fn read_string(&self, guest: impl AsRef<Path>) -> Result<Option<String>, RootError> {
        Ok(self.read(guest)?.map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    /// True when the path exists (following symlinks inside the root).
    pub fn exists(&self, guest: impl AsRef<Path>) -> Result<bool, RootError> {
        Ok(self.resolve(guest)?.exists())
    }

    /// `mkdir -p`: creates the directory and missing parents with `mode` (existing ones are left
    /// as they are). `owner` applies to the directories this call creates.
    pub fn mkdir_all(&self, guest: impl AsRef<Path>, opts: FileOpts) -> Result<(), RootError> {
        let guest = guest.as_ref();
        let p = self.resolve(guest)?;
        let rel = p.strip_prefix(&self.base).unwrap_or(Path::new("")).to_path_buf();
        let mut cur = self.base.clone();
        for c in rel.components() {
            cur.push(c);
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.is_dir() => continue,
                Ok(_) => {
                    return Err(RootError::Io {
                        op: "mkdir",
                        path: guest.display().to_string(),
                        source: io::Error::new(
                            io::ErrorKind::AlreadyExists,
                            format!("{} exists and is not a directory", self.guest_of(&cur)),
                        ),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::DirBuilder::new()
                        .mode(opts.mode)
                        .create(&cur)
                        .map_err(io_err("mkdir", guest))?;
                    // the umask may have cut bits from the mode
                    fs::set_permissions(&cur, fs::Permissions::from_mode(opts.mode))
                        .map_err(io_err("chmod", guest))?;
                    if let Some((u, g)) = opts.owner {
                        std::os::unix::fs::chown(&cur, Some(u), Some(g))
                            .map_err(io_err("chown", guest))?;
                    }
                    // the new entry in the parent becomes durable with the next sync
                    let mut dirty = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
                    dirty.insert(cur.clone());
                    if let Some(parent) = cur.parent() {
                        dirty.insert(parent.to_path_buf());
                    }
                }
                Err(e) => {
                    return Err(RootError::Io {
                        op: "mkdir",
                        path: guest.display().to_string(),
                        source: e,
                    })
                }
            }
        }
        Ok(())
    }

    /// Writes a whole file atomically with the given mode and owner, creating missing parent
    /// directories (mode 0755, owned by the agent). Returns the host path written.
    pub fn write(
        &self,
        guest: impl AsRef<Path>,
        contents: &[u8],
        opts: FileOpts,
    ) -> Result<PathBuf, RootError> {
        let guest = guest.as_ref();
        let target = self.resolve_file(guest)?;
        let dir = target.parent().unwrap_or(&self.base).to_path_buf();
        if !dir.is_dir() {
            self.mkdir_all(self.guest_of(&dir), FileOpts::mode(0o755))?;
        }
        if target.is_dir() {
            return Err(RootError::BadPath {
                path: guest.display().to_string(),
                why: "is a directory",
            });
        }
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = dir.join(format!(
            ".{name}.capstan-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io_err("create", guest))?;
            f.write_all(contents).map_err(io_err("write", guest))?;
            if let Some((u, g)) = opts.owner {
                std::os::unix::fs::fchown(&f, Some(u), Some(g)).map_err(io_err("chown", guest))?;
            }
            // after chown: chown clears setuid/setgid bits
            f.set_permissions(fs::Permissions::from_mode(opts.mode))
                .map_err(io_err("chmod", guest))?;
            let replacing = target.exists();
            if replacing {
                f.sync_all().map_err(io_err("fsync", guest))?;
            }
            fs::rename(&tmp, &target).map_err(io_err("rename", guest))?;
            let mut dirty = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
            if !replacing {
                dirty.insert(target.clone());
            }
            dirty.insert(dir.clone());
            Ok(())
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map(|()| target)
    }

    /// Appends to a file (creating it with `opts` if missing). Done as read + atomic rewrite so
    /// that a crash leaves either the old or the new content; an existing file keeps its mode and
    /// owner unless `opts.owner` is set.
    pub fn append(
        &self,
        guest: impl AsRef<Path>,
        contents: &[u8],
        opts: FileOpts,
    ) -> Result<PathBuf, RootError> {
        use std::os::unix::fs::MetadataExt;
        let guest = guest.as_ref();
        let target = self.resolve_file(guest)?;
        let (mut data, opts) = match fs::metadata(&target) {
            Ok(m) => {
                let old = fs::read(&target).map_err(io_err("read", guest))?;
                let owner = opts.owner.or(Some((m.uid(), m.gid())));
                (old, FileOpts { mode: m.mode() & 0o7777, owner })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => (Vec::new(), opts),
            Err(e) => {
                return Err(RootError::Io {
                    op: "stat",
                    path: guest.display().to_string(),
                    source: e,
                })
            }
        };
        data.extend_from_slice(contents);
        self.write(guest, &data, opts)
    }

    /// Removes a file; a missing file is not an error. Returns whether something was removed.
    pub fn remove(&self, guest: impl AsRef<Path>) -> Result<bool, RootError> {
        let guest = guest.as_ref();
        let p = self.resolve_file(guest)?;
        match fs::remove_file(&p) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => {
                Err(RootError::Io { op: "remove", path: guest.display().to_string(), source: e })
            }
        }
    }

    /// Lists the file names in a directory (sorted); empty when it does not exist.
    pub fn list(&self, guest: impl AsRef<Path>) -> Result<Vec<String>, RootError> {
        let guest = guest.as_ref();
        let p = self.resolve(guest)?;
        let rd = match fs::read_dir(&p) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(RootError::Io {
                    op: "list",
                    path: guest.display().to_string(),
                    source: e,
                })
            }
        };
        let mut names = Vec::new();
        for e in rd {
            let e = e.map_err(io_err("list", guest))?;
            names.push(e.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    /// The guest path of a host path under the root (for messages).
    pub fn guest_of(&self, host: &Path) -> String {
        match host.strip_prefix(&self.base) {
            Ok(rel) => format!("/{}", rel.display()),
            Err(_) => host.display().to_string(),
        }
    }
}

/// Pushes the components of `p` onto `todo` (reversed, so they pop in order). Root and `.`
/// components vanish; `..` is kept for the walker to judge.
fn push_components(todo: &mut Vec<OsString>, p: &Path, shown: &str) -> Result<(), RootError> {
    let mut comps = Vec::new();
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Prefix(_) => {
                return Err(RootError::BadPath { path: shown.to_owned(), why: "path prefix" })
            }
            Component::ParentDir => comps.push(OsString::from("..")),
            Component::Normal(n) => comps.push(n.to_os_string()),
        }
    }
    todo.extend(comps.into_iter().rev());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn resolves_inside_and_refuses_escapes() {
        let t = tempfile::tempdir().unwrap();
        let r = Root::new(t.path()).unwrap();
        let b = r.base().to_path_buf();
        fs::create_dir_all(b.join("usr/bin")).unwrap();
        symlink("/usr/bin", b.join("bin")).unwrap();
        symlink("../../..", b.join("usr/bin/up")).unwrap();
        symlink("/", b.join("slash")).unwrap();
        assert_eq!(r.resolve("/bin/x").unwrap(), b.join("usr/bin/x"));
        assert_eq!(r.resolve("/etc/../etc/x").unwrap(), b.join("etc/x"));
        assert_eq!(r.resolve("/slash/etc/passwd").unwrap(), b.join("etc/passwd"));
        assert!(matches!(r.resolve("/../etc/x"), Err(RootError::Escape { .. })));
        assert!(matches!(r.resolve("../../etc/x"), Err(RootError::Escape { .. })));
        assert!(matches!(r.resolve("/usr/bin/up/x"), Err(RootError::Escape { .. })));
        symlink("loop", b.join("loop")).unwrap();
        assert!(matches!(r.resolve("/loop"), Err(RootError::SymlinkLoop { .. })));
    }

    #[test]
    fn atomic_write_modes_and_append() {
        let t = tempfile::tempdir().unwrap();
        let r = Root::new(t.path()).unwrap();
        let p = r.write("/etc/a/b/c.conf", b"one\n", FileOpts::mode(0o600)).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o7777, 0o600);
        assert_eq!(fs::metadata(p.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o755);
        r.append("/etc/a/b/c.conf", b"two\n", FileOpts::mode(0o644)).unwrap();
        assert_eq!(r.read_string("/etc/a/b/c.conf").unwrap().unwrap(), "one\ntwo\n");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
            0o600,
            "append keeps mode"
        );
        assert_eq!(r.list("/etc/a/b").unwrap(), vec!["c.conf"], "no temp file left");
        r.write("/etc/a/new", b"n", FileOpts::default()).unwrap();
        // the root and three created directories, c.conf (created first) and the new file
        assert_eq!(r.dirty.lock().unwrap().len(), 6);
        r.sync().unwrap();
        assert!(r.dirty.lock().unwrap().is_empty());
        r.write("/etc/a/gone", b"n", FileOpts::default()).unwrap();
        r.remove("/etc/a/gone").unwrap();
        r.sync().unwrap(); // a file removed before the sync is fine
        assert!(r.remove("/etc/a/b/c.conf").unwrap());
        assert!(!r.remove("/etc/a/b/c.conf").unwrap());
        assert!(r.read("/nope").unwrap().is_none());
        assert!(matches!(r.write("/", b"x", FileOpts::default()), Err(RootError::BadPath { .. })));
    }
}
