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
//! such process exists, which is why plain path resolution is enough here. Once a component is
//! missing, the ones below it cannot exist, so they are taken literally without asking the
//! kernel (first boot creates most of what it writes; probing each missing path was most of its
//! system calls). Under an open staging, the directories a resolution walked through are
//! remembered until the staging flushes or closes, so twenty files in `/etc/kubernetes/pki`
//! cost one `statx` each, not four; the staging's owner promises no other process changes the
//! tree meanwhile (first boot flushes before it starts any process).
//!
//! # Writes: atomic, staged, and durable in batches
//!
//! Every write is a temp file in the target's directory (written, owner and mode set) renamed
//! over the target, so a reader sees the old file or the new one, never a torn one.
//!
//! fsync is most of what first boot costs (it writes ~45 files; one fsync forces one journal
//! commit), so durability is batched instead of paid per file:
//!
//! - **Staging** ([`Root::stage`]): while a [`Staging`] is open, writes, appends and removals
//!   are only prepared — temp files written, nothing renamed — and reads, `exists` and `list`
//!   see the staged result. [`Staging::commit`] then, if any staged file replaces an existing
//!   one, makes the temp files durable with one [`Root::sync`] *before* the first rename, and
//!   renames them all; dropping the staging instead deletes the temps and changes nothing. The
//!   first-boot runner stages each step, so a failed step leaves no file changed and a step's
//!   related files (`passwd`, `shadow`, `group`, `gshadow`) are renamed together.
//! - **Outside a staging**, a write that replaces an existing file fsyncs its temp before the
//!   rename (one commit); a write that creates a file defers its durability.
//! - Both skip that first sync where the filesystem itself commits a replacing rename only
//!   after the new data (journalled ext4 in its default modes: see `renames_order_data`).
//! - [`Root::sync`] makes everything written so far durable: one `syncfs(2)` per filesystem
//!   written to (a guest `/var` or `/home` may be its own mount). The runner calls it after the
//!   last step and before the run is recorded in state, so the record never claims a write that
//!   a crash could lose.
//!
//! What a crash can leave, at any point: a file that existed before holds its old content or
//! its new content, whole (its new content was durable before the rename); a file the run
//! created may be missing or empty, and directories may be half created — but the run was not
//! recorded, so the next boot runs the steps again and they rewrite it. `syncfs` also flushes
//! other processes' dirty data on the same filesystem; at first boot there is next to none.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::ThreadId;

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
    /// The device number of the filesystem `base` is on.
    base_dev: u64,
    /// Filesystems written to since the last [`Root::sync`]: device number -> a directory on it.
    dirty: Arc<Mutex<BTreeMap<u64, PathBuf>>>,
    /// Per device: does a rename that replaces a file wait for the new file's data there
    /// (see [`renames_order_data`])? Asked once per filesystem.
    orders_renames: Arc<Mutex<HashMap<u64, bool>>>,
    /// Open stagings, one per thread (see [`Root::stage`]): a clone of this handle used by
    /// another thread at the same time writes directly, not into this thread's staging.
    stage: Arc<Mutex<HashMap<ThreadId, Stage>>>,
}

/// Staged changes, in the order they were made. A later change of the same target shadows an
/// earlier one (so that an inner level can be rolled back to what the outer level staged).
#[derive(Debug, Default)]
struct Stage {
    /// One entry per open [`Staging`] guard: how many changes were staged when it opened.
    levels: Vec<usize>,
    ops: Vec<Staged>,
    /// Real directories (not symlinks) resolution has seen or created while this staging is
    /// open: host path -> device number. Only this process changes the tree until the staging
    /// is flushed or closed (see [`Root::stage`]), so a directory seen once is not asked about
    /// again: resolving `/etc/kubernetes/pki/x` costs one `statx`, not four.
    dirs: HashMap<PathBuf, u64>,
}

#[derive(Debug)]
struct Staged {
    /// Host path of the file to replace or remove.
    target: PathBuf,
    /// `Some(temp)`: rename `temp` over `target`; `None`: remove `target`.
    temp: Option<PathBuf>,
    /// The target existed when this was staged.
    replacing: bool,
    /// The device number of the target's directory.
    dev: u64,
}

impl Stage {
    /// The latest change staged for `target`.
    fn find(&self, target: &Path) -> Option<usize> {
        // Byte equality: both paths come from resolution, so they are spelled the same way
        // (`Path`'s `==` compares component by component, and this runs for every write).
        self.ops.iter().rposition(|o| o.target.as_os_str() == target.as_os_str())
    }

    /// The latest change for `target` if the innermost level staged it (it may be changed in
    /// place: rolling that level back discards it anyway).
    fn find_in_level(&self, target: &Path) -> Option<usize> {
        let mark = self.levels.last().copied().unwrap_or(0);
        self.find(target).filter(|&i| i >= mark)
    }

    /// Stages a change of `target`: in place when this level already changed it, else on top.
    fn put(&mut self, op: Staged) {
        match self.find_in_level(&op.target) {
            Some(i) => {
                let old = std::mem::replace(&mut self.ops[i], op);
                discard(std::slice::from_ref(&old));
            }
            None => self.ops.push(op),
        }
    }
}

/// What resolution found at the end of a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    /// The last component does not exist; its directory does.
    Missing,
    /// A directory above the last component does not exist either.
    ParentMissing,
    /// Something that is not a directory.
    File,
    /// A directory.
    Dir,
}

impl Found {
    fn exists(self) -> bool {
        matches!(self, Found::File | Found::Dir)
    }
}

/// A guest path resolved to a host path.
#[derive(Debug)]
struct Resolved {
    /// The host path under the root.
    host: PathBuf,
    /// What is at the end of it.
    found: Found,
    /// The device of the filesystem its directory is on (or will be, once created).
    dir_dev: u64,
}

/// The process's umask, read once from `/proc/self/status` (reading it with `umask(2)` would
/// change it for a moment under other threads). Unknown: every permission bit may be cut.
fn umask() -> u32 {
    static UMASK: OnceLock<u32> = OnceLock::new();
    *UMASK.get_or_init(|| {
        fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                let line = s.lines().find(|l| l.starts_with("Umask:"))?;
                u32::from_str_radix(line["Umask:".len()..].trim(), 8).ok()
            })
            .unwrap_or(0o777)
    })
}

/// Starts writing a file's data to disk now, without waiting (`sync_file_range(2)` with
/// `SYNC_FILE_RANGE_WRITE`), as dpkg does for what it unpacks: by the time the next
/// [`Root::sync`] runs, the data is on its way and the sync mostly waits for the journal. A
/// hint only: a filesystem that does not support it (or an error) changes nothing.
#[allow(unsafe_code)]
fn start_writeback(f: &File) {
    // SAFETY: sync_file_range only reads its integer arguments; the descriptor is open for
    // the duration of the call (borrowed from `f`).
    let _ = unsafe {
        nix::libc::sync_file_range(f.as_raw_fd(), 0, 0, nix::libc::SYNC_FILE_RANGE_WRITE)
    };
}

/// True when the filesystem on device `dev` itself makes a rename that replaces a file wait
/// for the new file's data: ext4 with a journal in `data=ordered` (its default) or
/// `data=journal` mode, with `auto_da_alloc` (also its default). There, a rename over an
/// existing file allocates and orders the new file's blocks so that the journal commit holding
/// the rename comes after its data (ext4(5), `auto_da_alloc`: the fix for replace-via-rename
/// losing data). The sync before such renames is then not needed: a crash still leaves the
/// old content or the new, whole. Anything else, or anything unknown (no journal, another
/// filesystem, `/proc/fs/ext4` unreadable), gets the sync.
fn renames_order_data(dev: u64) -> bool {
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    let Ok(link) = fs::read_link(format!("/sys/dev/block/{major}:{minor}")) else {
        return false;
    };
    let Some(name) = link.file_name() else { return false };
    let path = Path::new("/proc/fs/ext4").join(name).join("options");
    fs::read_to_string(path).is_ok_and(|opts| ext4_options_order_renames(&opts))
}

/// [`renames_order_data`] for the text of `/proc/fs/ext4/<device>/options` (one option a line;
/// `data=` only appears when the filesystem has a journal).
fn ext4_options_order_renames(options: &str) -> bool {
    let (mut ordered, mut auto_da_alloc) = (false, false);
    for o in options.lines().map(str::trim) {
        match o {
            "data=ordered" | "data=journal" => ordered = true,
            "auto_da_alloc" => auto_da_alloc = true,
            "noauto_da_alloc" | "data=writeback" => return false,
            _ => {}
        }
    }
    ordered && auto_da_alloc
}

/// True when a file or directory created with `mode` does not end up with exactly `mode`: the
/// umask cuts some of its bits, or it has setuid/setgid/sticky bits (which creation and a
/// later chown drop).
fn needs_chmod(mode: u32) -> bool {
    mode & 0o7000 != 0 || mode & umask() != 0
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> RootError + 'a {
    move |source| RootError::Io { op, path: path.display().to_string(), source }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Root {
    /// A root at `dir`, which must exist. `/` is the live system.
    pub fn new(dir: impl AsRef<Path>) -> Result<Self, RootError> {
        let dir = dir.as_ref();
        let base = fs::canonicalize(dir).map_err(io_err("open root", dir))?;
        let m = fs::metadata(&base).map_err(io_err("open root", dir))?;
        if !m.is_dir() {
            return Err(RootError::BadPath {
                path: dir.display().to_string(),
                why: "root is not a directory",
            });
        }
        Ok(Root {
            base,
            base_dev: m.dev(),
            dirty: Arc::default(),
            orders_renames: Arc::default(),
            stage: Arc::default(),
        })
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
        self.resolve_found(guest.as_ref()).map(|r| r.host)
    }

    /// [`Root::resolve`], also saying what is at the end of the path and which filesystem its
    /// directory is on.
    fn resolve_found(&self, guest: &Path) -> Result<Resolved, RootError> {
        let shown = || guest.display().to_string();
        if guest.as_os_str().is_empty() {
            return Err(RootError::BadPath { path: shown(), why: "empty path" });
        }
        // Components still to walk, in reverse so that pop() gives the next one.
        let mut todo: Vec<OsString> = Vec::new();
        push_components(&mut todo, guest, guest)?;
        let mut stack: Vec<OsString> = Vec::new(); // resolved components below the root
                                                   // the device of each component on `stack` (a missing one: its parent's, as it would
                                                   // be created there)
        let mut devs: Vec<u64> = Vec::new();
        let mut links = 0usize;
        let mut found = Found::Dir; // the root itself
                                    // Depth of the first component that does not exist: nothing below it can exist.
        let mut missing_at: Option<usize> = None;
        while let Some(c) = todo.pop() {
            if c == ".." {
                devs.pop();
                if stack.pop().is_none() {
                    return Err(RootError::Escape {
                        path: shown(),
                        why: "'..' climbs above the root".into(),
                    });
                }
                if missing_at.is_some_and(|m| stack.len() <= m) {
                    missing_at = None;
                }
                found = if missing_at.is_some() { Found::ParentMissing } else { Found::Dir };
                continue;
            }
            let parent_dev = devs.last().copied().unwrap_or(self.base_dev);
            if let Some(m) = missing_at {
                stack.push(c);
                devs.push(parent_dev);
                found = if stack.len() == m + 1 { Found::Missing } else { Found::ParentMissing };
                continue;
            }
            let mut candidate = self.base.clone();
            candidate.extend(&stack);
            candidate.push(&c);
            if let Some(dev) = self.known_dir(&candidate) {
                found = Found::Dir;
                stack.push(c);
                devs.push(dev);
                continue;
            }
            match fs::symlink_metadata(&candidate) {
                Ok(m) if m.file_type().is_symlink() => {
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return Err(RootError::SymlinkLoop { path: shown() });
                    }
                    let target = fs::read_link(&candidate).map_err(io_err("readlink", guest))?;
                    if target.is_absolute() {
                        stack.clear();
                        devs.clear();
                    }
                    push_components(&mut todo, &target, guest)?;
                    found = Found::Dir; // a target of `/` or `.` ends at a directory
                }
                Ok(m) => {
                    found = if m.is_dir() { Found::Dir } else { Found::File };
                    if m.is_dir() {
                        self.remember_dir(&candidate, m.dev());
                    }
                    stack.push(c);
                    devs.push(m.dev());
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    missing_at = Some(stack.len());
                    found = Found::Missing;
                    stack.push(c);
                    devs.push(parent_dev);
                }
                // ENOTDIR (a file in the middle of the path) and anything else
                Err(e) => return Err(RootError::Io { op: "resolve", path: shown(), source: e }),
            }
        }
        let mut host = self.base.clone();
        host.extend(&stack);
        let dir_dev = devs.len().checked_sub(2).map_or(self.base_dev, |i| devs[i]);
        Ok(Resolved { host, found, dir_dev })
    }

    fn resolve_file(&self, guest: &Path) -> Result<Resolved, RootError> {
        let r = self.resolve_found(guest)?;
        if r.host == self.base {
            return Err(RootError::BadPath {
                path: guest.display().to_string(),
                why: "names the root directory, not a file",
            });
        }
        Ok(r)
    }

    /// The device of a directory this thread's open staging has already seen, if any.
    fn known_dir(&self, host: &Path) -> Option<u64> {
        self.with_stage(|st| st.and_then(|s| s.dirs.get(host).copied()))
    }

    /// Remembers a real directory for the rest of this thread's open staging (if any).
    fn remember_dir(&self, host: &Path, dev: u64) {
        self.with_stage(|st| {
            if let Some(s) = st {
                s.dirs.insert(host.to_path_buf(), dev);
            }
        });
    }

    /// Makes every write so far durable: one `syncfs(2)` for each filesystem written to since
    /// the last call, and always the root's own (so renames done outside this handle inside
    /// the root are covered too). Call it before recording that the writes happened.
    pub fn sync(&self) -> Result<(), RootError> {
        let mut dirty = std::mem::take(&mut *lock(&self.dirty));
        dirty.insert(self.base_dev, self.base.clone());
        for dir in dirty.values() {
            let syncfs = File::open(dir)
                .and_then(|d| nix::unistd::syncfs(d.as_raw_fd()).map_err(io::Error::from));
            if let Err(source) = syncfs {
                return Err(RootError::Io { op: "syncfs", path: self.guest_of(dir), source });
            }
        }
        Ok(())
    }

    /// [`renames_order_data`] for device `dev`, asked once per device.
    fn renames_order_data(&self, dev: u64) -> bool {
        *lock(&self.orders_renames).entry(dev).or_insert_with(|| renames_order_data(dev))
    }

    fn mark_dirty(&self, dev: u64, dir: &Path) {
        lock(&self.dirty).entry(dev).or_insert_with(|| dir.to_path_buf());
    }

    /// Opens a staging: until the returned guard is committed, [`Root::write`],
    /// [`Root::append`] and [`Root::remove`] only prepare their change (temp files written,
    /// nothing renamed or removed), and reads through this handle see the prepared state.
    /// [`Staging::commit`] applies them all; dropping the guard discards them. Opening a
    /// staging while one is open starts an inner level: committing it hands its changes to the
    /// level around it (only the outermost commit applies anything), dropping it discards its
    /// own changes and keeps the outer level's (the first-boot runner stages the whole run and
    /// each step inside it).
    ///
    /// While a staging is open, this thread's resolutions remember the directories they walk
    /// through (see `Stage::dirs`): the staging's owner promises that no other process changes
    /// those directories until it flushes ([`Root::flush_staged`], which forgets them) or
    /// closes the staging, as first boot can — it flushes before it starts any process.
    pub fn stage(&self) -> Staging<'_> {
        let mut all = lock(&self.stage);
        let st = all.entry(std::thread::current().id()).or_default();
        st.levels.push(st.ops.len());
        Staging { root: self, done: false }
    }

    /// Runs `f` with this thread's staging set aside: what `f` writes through this handle lands
    /// at once. For what must survive the step's failure, such as the log of the commands a
    /// step ran.
    pub fn unstaged<R>(&self, f: impl FnOnce() -> R) -> R {
        let id = std::thread::current().id();
        let saved = lock(&self.stage).remove(&id);
        let r = f();
        if let Some(s) = saved {
            lock(&self.stage).insert(id, s);
        }
        r
    }

    /// Runs `f` on this thread's open staging, or on `None` when there is none.
    fn with_stage<R>(&self, f: impl FnOnce(Option<&mut Stage>) -> R) -> R {
        let mut all = lock(&self.stage);
        f(all.get_mut(&std::thread::current().id()))
    }

    /// The staged change for a host path, if any: `Some(Some(temp))` for a write,
    /// `Some(None)` for a removal.
    fn staged(&self, target: &Path) -> Option<Option<PathBuf>> {
        self.with_stage(|st| {
            let st = st?;
            st.find(target).map(|i| st.ops[i].temp.clone())
        })
    }

    /// Reads a file; `Ok(None)` when it does not exist.
    pub fn read(&self, guest: impl AsRef<Path>) -> Result<Option<Vec<u8>>, RootError> {
        let guest = guest.as_ref();
        let r = self.resolve_file(guest)?;
        let from = match self.staged(&r.host) {
            Some(Some(temp)) => temp,
            Some(None) => return Ok(None),
            None if !r.found.exists() => return Ok(None),
            None => r.host,
        };
        match fs::read(&from) {
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
        let r = self.resolve_found(guest.as_ref())?;
        Ok(match self.staged(&r.host) {
            Some(staged) => staged.is_some(),
            None => r.found.exists(),
        })
    }

    /// `mkdir -p`: creates the directory and missing parents with `mode` (existing ones are left
    /// as they are). `owner` applies to the directories this call creates. Directories are
    /// created at once, staging or not (an empty directory is harmless).
    pub fn mkdir_all(&self, guest: impl AsRef<Path>, opts: FileOpts) -> Result<(), RootError> {
        let guest = guest.as_ref();
        let r = self.resolve_found(guest)?;
        match r.found {
            Found::Dir => Ok(()),
            Found::File => Err(RootError::Io {
                op: "mkdir",
                path: guest.display().to_string(),
                source: io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "exists and is not a directory",
                ),
            }),
            Found::Missing | Found::ParentMissing => {
                self.mkdir_host(guest, &r.host, opts).map(|_| ())
            }
        }
    }

    /// Creates the missing directories of a resolved host path `p` (whose existing components
    /// are real directories) and returns the device of `p`.
    fn mkdir_host(&self, guest: &Path, p: &Path, opts: FileOpts) -> Result<u64, RootError> {
        let rel = p.strip_prefix(&self.base).unwrap_or(Path::new("")).to_path_buf();
        let mut cur = self.base.clone();
        let mut dev = self.base_dev;
        for c in rel.components() {
            cur.push(c);
            if let Some(d) = self.known_dir(&cur) {
                dev = d;
                continue;
            }
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.is_dir() => {
                    dev = m.dev();
                    self.remember_dir(&cur, dev);
                    continue;
                }
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
                    if let Some((u, g)) = opts.owner {
                        std::os::unix::fs::chown(&cur, Some(u), Some(g))
                            .map_err(io_err("chown", guest))?;
                    }
                    // after chown (it clears setgid); the umask may have cut bits too
                    if needs_chmod(opts.mode) {
                        fs::set_permissions(&cur, fs::Permissions::from_mode(opts.mode))
                            .map_err(io_err("chmod", guest))?;
                    }
                    // a new directory is on its parent's filesystem; its entry in the parent
                    // becomes durable with the next sync
                    self.mark_dirty(dev, &cur);
                    self.remember_dir(&cur, dev);
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
        Ok(dev)
    }

    /// Writes a whole file atomically with the given mode and owner, creating missing parent
    /// directories (mode 0755, owned by the agent). Returns the host path of the file (under a
    /// staging, the file is there once the staging is committed).
    pub fn write(
        &self,
        guest: impl AsRef<Path>,
        contents: &[u8],
        opts: FileOpts,
    ) -> Result<PathBuf, RootError> {
        self.put(guest.as_ref(), contents, opts, false)
    }

    /// [`Root::write`] outside any staging, made durable before returning: an fsync of the file
    /// and of its directory. For a running service's single writes (the lb role's state on an
    /// API change or a failover, a guestinfo value), where [`Root::sync`] — a `syncfs` of whole
    /// filesystems, right for first boot's batch — would also flush every other process's dirty
    /// data.
    pub fn write_durable(
        &self,
        guest: impl AsRef<Path>,
        contents: &[u8],
        opts: FileOpts,
    ) -> Result<PathBuf, RootError> {
        let guest = guest.as_ref();
        let host = self.unstaged(|| self.write(guest, contents, opts))?;
        let dir = host.parent().unwrap_or(&self.base);
        for p in [host.as_path(), dir] {
            File::open(p).and_then(|f| f.sync_all()).map_err(io_err("fsync", guest))?;
        }
        Ok(host)
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
        self.put(guest.as_ref(), contents, opts, true)
    }

    /// The write behind [`Root::write`] and [`Root::append`]: a temp file next to the target
    /// (holding the current content first when appending), then a rename now (fsynced first
    /// when it replaces a file) or at commit when staging.
    fn put(
        &self,
        guest: &Path,
        contents: &[u8],
        opts: FileOpts,
        append: bool,
    ) -> Result<PathBuf, RootError> {
        let Resolved { host: target, found, dir_dev } = self.resolve_file(guest)?;
        let mut opts = opts;
        let mut appended: Vec<u8>;
        // appending: the current content is a staged version, the file, or nothing
        let current = match (append, self.staged(&target)) {
            (false, _) => None,
            (true, Some(staged)) => staged,
            (true, None) => found.exists().then(|| target.clone()),
        };
        let contents = match current {
            Some(from) => {
                let m = fs::metadata(&from).map_err(io_err("stat", guest))?;
                appended = fs::read(&from).map_err(io_err("read", guest))?;
                appended.extend_from_slice(contents);
                opts = FileOpts {
                    mode: m.mode() & 0o7777,
                    owner: opts.owner.or(Some((m.uid(), m.gid()))),
                };
                &appended[..]
            }
            None => contents,
        };
        if found == Found::Dir {
            return Err(RootError::BadPath {
                path: guest.display().to_string(),
                why: "is a directory",
            });
        }
        let dir = target.parent().unwrap_or(&self.base).to_path_buf();
        let dev = match found {
            Found::ParentMissing => self.mkdir_host(guest, &dir, FileOpts::mode(0o755))?,
            _ => dir_dev,
        };
        let (tmp, f) = self.write_temp(guest, &dir, &target, contents, opts)?;
        self.mark_dirty(dev, &dir);
        let tmp = match self.with_stage(|st| match st {
            Some(st) => {
                st.put(Staged {
                    target: target.clone(),
                    temp: Some(tmp),
                    replacing: found == Found::File,
                    dev,
                });
                None
            }
            None => Some(tmp),
        }) {
            Some(tmp) => tmp,
            None => return Ok(target), // staged
        };
        let result = (|| {
            if found == Found::File && !self.renames_order_data(dev) {
                // replacing: the new content must be on disk before the name points at it
                f.sync_all().map_err(io_err("fsync", guest))?;
            }
            fs::rename(&tmp, &target).map_err(io_err("rename", guest))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map(|()| target)
    }

    /// Creates a uniquely named temp file in `dir` with `contents`, owner and mode set.
    fn write_temp(
        &self,
        guest: &Path,
        dir: &Path,
        target: &Path,
        contents: &[u8],
        opts: FileOpts,
    ) -> Result<(PathBuf, File), RootError> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        static PID: OnceLock<u32> = OnceLock::new();
        let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = dir.join(format!(
            ".{name}.capstan-{}-{}",
            PID.get_or_init(std::process::id),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        // Created with its final mode when creation gives exactly that (no chmod needed);
        // otherwise 0600 until the chmod below, so no one reads it meanwhile.
        let chmod = needs_chmod(opts.mode);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(if chmod { 0o600 } else { opts.mode })
            .open(&tmp)
            .map_err(io_err("create", guest))?;
        let result = (|| {
            f.write_all(contents).map_err(io_err("write", guest))?;
            start_writeback(&f);
            if let Some((u, g)) = opts.owner {
                std::os::unix::fs::fchown(&f, Some(u), Some(g)).map_err(io_err("chown", guest))?;
            }
            // after chown: chown clears setuid/setgid bits
            if chmod {
                f.set_permissions(fs::Permissions::from_mode(opts.mode))
                    .map_err(io_err("chmod", guest))?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => Ok((tmp, f)),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    /// Removes a file; a missing file is not an error. Returns whether something was removed.
    /// Under a staging, the removal happens at commit.
    pub fn remove(&self, guest: impl AsRef<Path>) -> Result<bool, RootError> {
        let guest = guest.as_ref();
        let Resolved { host: p, found, dir_dev } = self.resolve_file(guest)?;
        let staged = self.with_stage(|st| {
            let st = st?;
            // what is there now: the latest staged change, or the disk
            let there = match st.find(&p) {
                Some(i) => st.ops[i].temp.is_some(),
                None => found.exists(),
            };
            if there {
                st.put(Staged {
                    target: p.clone(),
                    temp: None,
                    replacing: found.exists(),
                    dev: dir_dev,
                });
            }
            Some(there)
        });
        if let Some(removed) = staged {
            return Ok(removed);
        }
        if !found.exists() {
            return Ok(false);
        }
        match fs::remove_file(&p) {
            Ok(()) => {
                self.mark_dirty(dir_dev, p.parent().unwrap_or(&self.base));
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => {
                Err(RootError::Io { op: "remove", path: guest.display().to_string(), source: e })
            }
        }
    }

    /// Lists the file names in a directory (sorted); empty when it does not exist. Under a
    /// staging, staged files are listed and staged removals are not.
    pub fn list(&self, guest: impl AsRef<Path>) -> Result<Vec<String>, RootError> {
        let guest = guest.as_ref();
        let Resolved { host: p, found, .. } = self.resolve_found(guest)?;
        let mut names = Vec::new();
        if found.exists() {
            let rd = fs::read_dir(&p).map_err(io_err("list", guest))?;
            for e in rd {
                let e = e.map_err(io_err("list", guest))?;
                names.push(e.file_name().to_string_lossy().into_owned());
            }
        }
        self.with_stage(|st| {
            let ops = st.map(|s| &s.ops[..]).unwrap_or_default();
            for op in ops.iter().filter(|o| o.target.parent() == Some(p.as_path())) {
                let name = op.target.file_name().map(|n| n.to_string_lossy().into_owned());
                let temp = op.temp.as_ref().and_then(|t| t.file_name());
                if let Some(t) = temp {
                    names.retain(|n| n.as_str() != t.to_string_lossy());
                }
                match (name, temp) {
                    (Some(n), Some(_)) => names.push(n),
                    (Some(n), None) => names.retain(|x| *x != n),
                    (None, _) => {}
                }
            }
        });
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// The guest path of a host path under the root (for messages).
    pub fn guest_of(&self, host: &Path) -> String {
        match host.strip_prefix(&self.base) {
            Ok(rel) => format!("/{}", rel.display()),
            Err(_) => host.display().to_string(),
        }
    }

    /// Closes the innermost level of this thread's staging. Committing keeps its changes for
    /// the level around it, or returns them all when it was the outermost; rolling back
    /// discards the changes it staged.
    fn close_stage(&self, commit: bool) -> Option<Vec<Staged>> {
        let mut all = lock(&self.stage);
        let id = std::thread::current().id();
        let st = all.get_mut(&id)?;
        let mark = st.levels.pop().unwrap_or(0);
        if !commit {
            discard(&st.ops.split_off(mark.min(st.ops.len())));
        }
        if !st.levels.is_empty() {
            return None;
        }
        all.remove(&id).map(|s| s.ops)
    }

    /// Applies everything this thread has staged so far, now, and keeps its stagings open:
    /// for a step that is about to let another process read the files (a unit reload, a
    /// command). What is flushed can no longer be rolled back. Returns how many changes.
    pub fn flush_staged(&self) -> Result<usize, RootError> {
        let ops = self.with_stage(|st| {
            let st = st?;
            st.levels.iter_mut().for_each(|m| *m = 0);
            // other processes may change the tree from now on
            st.dirs.clear();
            Some(std::mem::take(&mut st.ops))
        });
        match ops {
            Some(ops) => self.commit_ops(ops, false),
            None => Ok(0),
        }
    }

    /// Applies staged changes in order (a change shadowed by a later one of the same target
    /// is dropped). When one replaces an existing file, or `sync_first` asks, everything
    /// written so far is made durable first, so no rename can point a name at content a crash
    /// loses.
    fn commit_ops(&self, mut ops: Vec<Staged>, sync_first: bool) -> Result<usize, RootError> {
        let mut seen = std::collections::HashSet::new();
        let mut shadowed = Vec::new();
        for i in (0..ops.len()).rev() {
            if !seen.insert(ops[i].target.clone()) {
                shadowed.push(ops.remove(i));
            }
        }
        discard(&shadowed);
        let unordered_replace =
            ops.iter().any(|o| o.replacing && o.temp.is_some() && !self.renames_order_data(o.dev));
        if sync_first || unordered_replace {
            if let Err(e) = self.sync() {
                discard(&ops);
                return Err(e);
            }
        }
        for (i, op) in ops.iter().enumerate() {
            let (what, r) = match &op.temp {
                Some(temp) => ("rename", fs::rename(temp, &op.target)),
                None => match fs::remove_file(&op.target) {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => ("remove", Ok(())),
                    r => ("remove", r),
                },
            };
            if let Err(source) = r {
                discard(&ops[i..]);
                return Err(RootError::Io { op: what, path: self.guest_of(&op.target), source });
            }
            if op.temp.is_none() {
                self.mark_dirty(op.dev, op.target.parent().unwrap_or(&self.base));
            }
        }
        Ok(ops.len())
    }
}

/// Deletes the temp files of staged changes that will not be applied.
fn discard(ops: &[Staged]) {
    for t in ops.iter().filter_map(|o| o.temp.as_ref()) {
        let _ = fs::remove_file(t);
    }
}

/// An open staging of a [`Root`] (see [`Root::stage`]). Dropping it discards what it staged.
#[derive(Debug)]
#[must_use = "dropping a staging discards its changes; call commit()"]
pub struct Staging<'a> {
    root: &'a Root,
    done: bool,
}

impl Staging<'_> {
    /// Applies the staged changes (see [`Root::stage`]) and returns how many there were. On
    /// error the changes not yet applied are discarded. An inner staging applies nothing: its
    /// changes stay staged for the level around it.
    pub fn commit(self) -> Result<usize, RootError> {
        self.finish(false)
    }

    /// [`Staging::commit`], with one [`Root::sync`] before the first rename whatever the
    /// changes are: everything written before through this root (files, renames, and these
    /// changes' temp files) is durable before any of these renames happens. For a record of
    /// work, which must never survive a crash that the work did not. The renames themselves
    /// become durable with the next sync or the filesystem's own commit. An inner staging
    /// neither syncs nor applies anything.
    pub fn commit_after_sync(self) -> Result<usize, RootError> {
        self.finish(true)
    }

    fn finish(mut self, sync_first: bool) -> Result<usize, RootError> {
        self.done = true;
        match self.root.close_stage(true) {
            Some(ops) => self.root.commit_ops(ops, sync_first),
            None => Ok(0),
        }
    }

    /// Discards the changes staged at this level (as dropping the guard does).
    pub fn rollback(self) {}
}

impl Drop for Staging<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if let Some(ops) = self.root.close_stage(false) {
            discard(&ops);
        }
    }
}

/// Pushes the components of `p` onto `todo` (reversed, so they pop in order). Root and `.`
/// components vanish; `..` is kept for the walker to judge.
fn push_components(todo: &mut Vec<OsString>, p: &Path, shown: &Path) -> Result<(), RootError> {
    let mut comps = Vec::new();
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Prefix(_) => {
                return Err(RootError::BadPath {
                    path: shown.display().to_string(),
                    why: "path prefix",
                })
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
        assert_eq!(lock(&r.dirty).len(), 1, "one filesystem written to");
        r.sync().unwrap();
        assert!(lock(&r.dirty).is_empty());
        r.write("/etc/a/gone", b"n", FileOpts::default()).unwrap();
        r.remove("/etc/a/gone").unwrap();
        r.sync().unwrap(); // a file removed before the sync is fine
        assert!(r.remove("/etc/a/b/c.conf").unwrap());
        assert!(!r.remove("/etc/a/b/c.conf").unwrap());
        assert!(r.read("/nope").unwrap().is_none());
        assert!(matches!(r.write("/", b"x", FileOpts::default()), Err(RootError::BadPath { .. })));
    }

    #[test]
    fn missing_components_are_not_probed_but_dotdot_still_is() {
        let t = tempfile::tempdir().unwrap();
        let r = Root::new(t.path()).unwrap();
        let b = r.base().to_path_buf();
        fs::create_dir_all(b.join("etc")).unwrap();
        symlink("../../..", b.join("etc/up")).unwrap();
        assert_eq!(r.resolve_found(Path::new("/etc/x")).unwrap().found, Found::Missing);
        assert_eq!(r.resolve_found(Path::new("/etc/x/y/z")).unwrap().found, Found::ParentMissing);
        assert_eq!(r.resolve_found(Path::new("/etc")).unwrap().found, Found::Dir);
        assert_eq!(r.resolve_found(Path::new("/etc/x/..")).unwrap().found, Found::Dir);
        // climbing back out of a missing directory walks real components again
        assert!(matches!(r.resolve("/etc/x/../up/y"), Err(RootError::Escape { .. })));
        fs::write(b.join("etc/f"), "f").unwrap();
        assert_eq!(r.resolve_found(Path::new("/etc/x/../f")).unwrap().found, Found::File);
        r.write("/etc/x/y/z", b"z", FileOpts::default()).unwrap();
        assert_eq!(fs::read(b.join("etc/x/y/z")).unwrap(), b"z");
    }

    #[test]
    fn only_journalled_ordered_ext4_with_auto_da_alloc_orders_renames() {
        let journalled = "rw\nbsddf\ndelalloc\nbarrier\nauto_da_alloc\ncommit=5\ndata=ordered\n";
        assert!(ext4_options_order_renames(journalled));
        assert!(ext4_options_order_renames(&journalled.replace("ordered", "journal")));
        assert!(!ext4_options_order_renames(&journalled.replace("ordered", "writeback")));
        assert!(!ext4_options_order_renames(
            &journalled.replace("auto_da_alloc", "noauto_da_alloc")
        ));
        // no journal: ext4 lists no data= mode
        assert!(!ext4_options_order_renames("rw\ndelalloc\nauto_da_alloc\n"));
        assert!(!ext4_options_order_renames(""));
        // a device that is not ext4 (tmpfs has no /sys/dev/block entry; 0:0 none at all)
        assert!(!renames_order_data(0));
        let t = tempfile::tempdir_in("/dev/shm").unwrap();
        assert!(!renames_order_data(fs::metadata(t.path()).unwrap().dev()));
    }

    #[test]
    fn modes_are_exact_whatever_the_umask_cuts() {
        let t = tempfile::tempdir().unwrap();
        let r = Root::new(t.path()).unwrap();
        for (i, mode) in
            [0o600, 0o644, 0o664, 0o666, 0o4755, 0o2750, 0o1777, 0o000].into_iter().enumerate()
        {
            let p = r.write(format!("/f{i}"), b"x", FileOpts::mode(mode)).unwrap();
            assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, mode, "file mode {mode:o}");
            r.mkdir_all(format!("/d{i}/sub"), FileOpts::mode(mode | 0o700)).unwrap();
            let d = r.base().join(format!("d{i}/sub"));
            assert_eq!(fs::metadata(&d).unwrap().mode() & 0o7777, mode | 0o700, "dir {mode:o}");
        }
    }

    #[test]
    fn a_staging_remembers_directories_until_it_flushes() {
        let t = tempfile::tempdir().unwrap();
        let r = Root::new(t.path()).unwrap();
        let b = r.base().to_path_buf();
        let outside = tempfile::tempdir().unwrap();
        fs::create_dir_all(b.join("etc/app")).unwrap();
        // without a staging, a directory swapped for an escaping symlink is seen at once
        r.write("/etc/app/a", b"a", FileOpts::default()).unwrap();
        fs::remove_dir_all(b.join("etc/app")).unwrap();
        symlink("../../../..", b.join("etc/app")).unwrap();
        assert!(matches!(
            r.write("/etc/app/a", b"a", FileOpts::default()),
            Err(RootError::Escape { .. })
        ));
        fs::remove_file(b.join("etc/app")).unwrap();
        fs::create_dir(b.join("etc/app")).unwrap();

        let run = r.stage();
        r.write("/etc/app/a", b"a", FileOpts::default()).unwrap();
        assert!(r.known_dir(&b.join("etc/app")).is_some(), "walked directories are remembered");
        r.mkdir_all("/var/lib/new", FileOpts::mode(0o700)).unwrap();
        assert!(r.known_dir(&b.join("var/lib/new")).is_some(), "created ones too");
        assert!(r.known_dir(&b.join("etc/app/a")).is_none(), "files are not");
        // a flush lets other processes in: what it remembered is forgotten
        r.flush_staged().unwrap();
        assert!(r.known_dir(&b.join("etc/app")).is_none());
        fs::rename(b.join("etc/app"), b.join("etc/app.old")).unwrap();
        symlink(outside.path(), b.join("etc/app")).unwrap(); // absolute: stays inside the root
        r.write("/etc/app/b", b"b", FileOpts::default()).unwrap();
        assert_eq!(run.commit().unwrap(), 1);
        assert!(!outside.path().join("b").exists(), "the symlink was followed inside the root");
        assert!(b.join(outside.path().strip_prefix("/").unwrap()).join("b").exists());
        // another thread's handle never sees this thread's memory
        let s = r.stage();
        r.write("/etc/app.old/c", b"c", FileOpts::default()).unwrap();
        let r2 = r.clone();
        let dir = b.join("etc/app.old");
        assert!(std::thread::spawn(move || r2.known_dir(&dir)).join().unwrap().is_none());
        drop(s);
        assert!(r.known_dir(&b.join("etc/app.old")).is_none(), "closed stagings forget");
    }

    #[test]
    fn staged_writes_land_at_commit_and_vanish_on_drop() {
        let t = tempfile::tempdir().unwrap();
        let r = Root::new(t.path()).unwrap();
        let b = r.base().to_path_buf();
        r.write("/etc/passwd", b"old\n", FileOpts::mode(0o644)).unwrap();
        r.write("/etc/gone", b"bye", FileOpts::mode(0o644)).unwrap();
        {
            let s = r.stage();
            r.write("/etc/passwd", b"new\n", FileOpts::mode(0o644)).unwrap();
            r.append("/etc/passwd", b"more\n", FileOpts::mode(0o600)).unwrap();
            r.write("/etc/new/file", b"n", FileOpts::mode(0o600)).unwrap();
            assert!(r.remove("/etc/gone").unwrap());
            // this handle sees the staged state, the disk does not have it yet
            assert_eq!(r.read_string("/etc/passwd").unwrap().unwrap(), "new\nmore\n");
            assert!(r.exists("/etc/new/file").unwrap() && !r.exists("/etc/gone").unwrap());
            assert_eq!(r.list("/etc").unwrap(), vec!["new", "passwd"], "no temp names listed");
            assert_eq!(fs::read(b.join("etc/passwd")).unwrap(), b"old\n");
            assert!(!b.join("etc/new/file").exists() && b.join("etc/gone").exists());
            // a nested staging joins the outer one
            let inner = r.stage();
            r.write("/etc/hosts", b"h", FileOpts::default()).unwrap();
            assert_eq!(inner.commit().unwrap(), 0);
            assert!(!b.join("etc/hosts").exists());
            drop(s); // discarded
        }
        assert_eq!(fs::read(b.join("etc/passwd")).unwrap(), b"old\n");
        assert!(b.join("etc/gone").exists() && !b.join("etc/hosts").exists());
        assert_eq!(r.list("/etc").unwrap(), vec!["gone", "new", "passwd"], "no temp left");
        assert!(r.list("/etc/new").unwrap().is_empty());

        let s = r.stage();
        r.write("/etc/passwd", b"new\n", FileOpts::mode(0o640)).unwrap();
        r.write("/etc/new/file", b"n", FileOpts::mode(0o600)).unwrap();
        r.write("/etc/tmpfile", b"t", FileOpts::mode(0o600)).unwrap();
        assert!(r.remove("/etc/tmpfile").unwrap(), "a staged creation removed again");
        assert!(r.remove("/etc/gone").unwrap());
        assert!(!r.remove("/etc/gone").unwrap());
        // passwd, new/file, gone, and tmpfile's removal (a no-op: it never reached the disk)
        assert_eq!(s.commit().unwrap(), 4);
        assert_eq!(fs::read(b.join("etc/passwd")).unwrap(), b"new\n");
        assert_eq!(fs::metadata(b.join("etc/passwd")).unwrap().permissions().mode() & 0o777, 0o640);
        assert_eq!(fs::read(b.join("etc/new/file")).unwrap(), b"n");
        assert!(!b.join("etc/gone").exists() && !b.join("etc/tmpfile").exists());
        assert_eq!(r.list("/etc").unwrap(), vec!["new", "passwd"]);
        r.sync().unwrap();
    }

    #[test]
    fn a_durable_write_lands_at_once_even_under_a_staging() {
        let t = tempfile::tempdir().unwrap();
        let r = Root::new(t.path()).unwrap();
        let staging = r.stage();
        r.write("/etc/staged", b"later", FileOpts::default()).unwrap();
        let host = r.write_durable("/var/lib/x/state.json", b"{}", FileOpts::mode(0o600)).unwrap();
        assert_eq!(fs::read(&host).unwrap(), b"{}");
        assert_eq!(fs::metadata(&host).unwrap().mode() & 0o7777, 0o600);
        assert!(!t.path().join("etc/staged").exists(), "the staged write stays staged");
        drop(staging);
        assert!(!t.path().join("etc/staged").exists());
        assert!(r.write_durable("/../escape", b"x", FileOpts::default()).is_err());
        assert!(!t.path().parent().unwrap().join("escape").exists());
    }

    #[test]
    fn a_failed_commit_discards_the_rest() {
        let t = tempfile::tempdir().unwrap();
        let r = Root::new(t.path()).unwrap();
        let b = r.base().to_path_buf();
        let s = r.stage();
        r.write("/a", b"a", FileOpts::default()).unwrap();
        r.write("/d/b", b"b", FileOpts::default()).unwrap();
        r.write("/c", b"c", FileOpts::default()).unwrap();
        // the target of the second rename becomes a non-empty directory before the commit
        fs::remove_dir_all(b.join("d")).unwrap();
        let e = s.commit().unwrap_err();
        assert!(e.to_string().contains("rename /d/b"), "{e}");
        assert!(b.join("a").exists() && !b.join("c").exists());
        assert_eq!(r.list("/").unwrap(), vec!["a"], "no temp file left");
    }

    #[test]
    fn another_thread_writes_through_a_clone_directly() {
        let t = tempfile::tempdir().unwrap();
        let r = Root::new(t.path()).unwrap();
        let s = r.stage();
        r.write("/mine", b"1", FileOpts::default()).unwrap();
        let r2 = r.clone();
        std::thread::spawn(move || r2.write("/theirs", b"2", FileOpts::default()).unwrap())
            .join()
            .unwrap();
        assert!(r.base().join("theirs").exists() && !r.base().join("mine").exists());
        drop(s);
        assert!(!r.base().join("mine").exists());
        let s = r.stage();
        r.write("/staged", b"1", FileOpts::default()).unwrap();
        r.unstaged(|| r.append("/log", b"x", FileOpts::default())).unwrap();
        assert!(r.base().join("log").exists() && !r.base().join("staged").exists());
        drop(s);
        assert!(r.base().join("log").exists() && !r.base().join("staged").exists());
    }

    #[test]
    fn an_inner_level_rolls_back_alone_and_flush_applies_early() {
        let t = tempfile::tempdir().unwrap();
        let r = Root::new(t.path()).unwrap();
        let b = r.base().to_path_buf();
        r.write("/x", b"0", FileOpts::default()).unwrap();
        let run = r.stage();
        r.write("/x", b"1", FileOpts::default()).unwrap();
        r.write("/y", b"1", FileOpts::default()).unwrap();
        {
            let _step = r.stage();
            r.write("/x", b"2", FileOpts::default()).unwrap();
            assert!(r.remove("/y").unwrap());
            r.write("/z", b"2", FileOpts::default()).unwrap();
            assert_eq!(r.read("/x").unwrap().unwrap(), b"2");
            assert_eq!(r.list("/").unwrap(), vec!["x", "z"]);
        } // rolled back: the outer level's changes are back
        assert_eq!(r.read("/x").unwrap().unwrap(), b"1");
        assert_eq!(r.read("/y").unwrap().unwrap(), b"1");
        assert!(!r.exists("/z").unwrap());
        let step = r.stage();
        r.append("/x", b"+", FileOpts::default()).unwrap();
        assert_eq!(step.commit().unwrap(), 0);
        assert_eq!(fs::read(b.join("x")).unwrap(), b"0", "nothing applied before the outer commit");
        // a flush applies what is staged now; the staging stays open
        assert_eq!(r.flush_staged().unwrap(), 2);
        assert_eq!(fs::read(b.join("x")).unwrap(), b"1+");
        r.write("/w", b"w", FileOpts::default()).unwrap();
        assert!(!b.join("w").exists());
        assert_eq!(run.commit().unwrap(), 1);
        assert_eq!(fs::read(b.join("w")).unwrap(), b"w");
        assert_eq!(r.list("/").unwrap(), vec!["w", "x", "y"], "no temp left");
    }
}
