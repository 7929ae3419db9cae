//! What the stage cache holds, and pruning it (`capstan cache list|prune`).
//!
//! An entry is a real directory directly under the cache directory named `<stage>-<24 hex>`
//! for one of the builder's [`STAGES`]; nothing else there is ever listed or removed (the KVM
//! probe's verdict files, the lock, a stray file, a symlink of any name). Removal never
//! follows a symlink and refuses an entry with a mount point inside.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};

use super::{LAST_USED, MARKER};

/// The stages that keep entries, in build order.
pub const STAGES: [&str; 4] = ["rootfs", "customize", "disk", "outputs"];

/// How many hex digits of the key name an entry's directory.
const NAME_KEY_LEN: usize = 24;

/// One cache entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CachedStage {
    /// The stage (`rootfs`, `customize`, `disk`, `outputs`).
    pub stage: &'static str,
    /// The full key (from `.complete`), or the 24 digits of the name for an incomplete entry.
    pub key: String,
    /// The entry's directory.
    pub dir: PathBuf,
    /// Finished (`.complete` holds its key); an incomplete entry is an interrupted build's.
    pub complete: bool,
    /// Bytes allocated on disk (sparse files count what they use; hard links once).
    pub bytes: u64,
    /// Of `bytes`, those in files also linked outside the entry (the build's outputs are
    /// hard links into `-o DIR`): removing the entry does not free them.
    pub shared_bytes: u64,
    /// When a build last made or reused it, RFC 3339 UTC.
    pub last_used: String,
    /// The same, in seconds since the epoch.
    pub last_used_unix: u64,
    /// A path inside that is another filesystem's mount point (the entry is never removed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mount_point: Option<PathBuf>,
}

impl CachedStage {
    /// What removing the entry frees.
    pub fn freed_bytes(&self) -> u64 {
        self.bytes - self.shared_bytes
    }
}

/// The stage of a directory name `<stage>-<24 lowercase hex digits>`, if it names an entry.
pub fn parse_name(name: &str) -> Option<(&'static str, &str)> {
    let (stage, key) = name.rsplit_once('-')?;
    let stage = STAGES.iter().find(|s| **s == stage)?;
    let hex = key.len() == NAME_KEY_LEN
        && key.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    hex.then_some((stage, key))
}

/// Every entry of the cache at `cache`, by stage (build order), most recently used first. A
/// cache directory that does not exist holds nothing.
pub fn list(cache: &Path) -> anyhow::Result<Vec<CachedStage>> {
    let root = match fs::canonicalize(cache) {
        Ok(root) => root,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cache {}", cache.display())),
    };
    let root_meta = fs::metadata(&root).with_context(|| format!("cache {}", root.display()))?;
    if !root_meta.is_dir() {
        bail!("cache {}: not a directory", cache.display());
    }
    let mut out = Vec::new();
    for e in fs::read_dir(&root).with_context(|| format!("reading {}", root.display()))? {
        let e = e.with_context(|| format!("reading {}", root.display()))?;
        let name = e.file_name();
        let Some((stage, name_key)) = name.to_str().and_then(parse_name) else { continue };
        let dir = e.path();
        // Never followed: a symlink named like an entry is not one, wherever it points.
        let meta =
            fs::symlink_metadata(&dir).with_context(|| format!("reading {}", dir.display()))?;
        if !meta.is_dir() {
            continue;
        }
        out.push(read_entry(&dir, stage, name_key, root_meta.dev())?);
    }
    sort(&mut out);
    Ok(out)
}

/// By stage in build order, then most recently used first.
fn sort(entries: &mut [CachedStage]) {
    let order = |s: &str| STAGES.iter().position(|x| *x == s);
    entries.sort_by(|a, b| {
        (order(a.stage), b.last_used_unix, &a.key).cmp(&(order(b.stage), a.last_used_unix, &b.key))
    });
}

fn read_entry(
    dir: &Path,
    stage: &'static str,
    name_key: &str,
    dev: u64,
) -> anyhow::Result<CachedStage> {
    let marker = dir.join(MARKER);
    // The marker must be a regular file holding a key the name is the start of.
    let key = match fs::symlink_metadata(&marker) {
        Ok(m) if m.is_file() && m.len() <= 256 => fs::read_to_string(&marker)
            .ok()
            .map(|k| k.trim().to_string())
            .filter(|k| k.len() == 64 && k.starts_with(name_key)),
        _ => None,
    };
    let complete = key.is_some();
    let used = [dir.join(LAST_USED), marker, dir.to_path_buf()]
        .iter()
        .find_map(|p| {
            fs::symlink_metadata(p).ok().filter(|m| !m.file_type().is_symlink())?.modified().ok()
        })
        .unwrap_or(UNIX_EPOCH);
    let last_used_unix = used.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let usage = usage(dir, dev).with_context(|| format!("measuring {}", dir.display()))?;
    Ok(CachedStage {
        stage,
        key: key.unwrap_or_else(|| name_key.to_string()),
        dir: dir.to_path_buf(),
        complete,
        bytes: usage.bytes,
        shared_bytes: usage.shared,
        last_used: rfc3339(last_used_unix),
        last_used_unix,
        mount_point: usage.mount_point,
    })
}

#[derive(Debug, Default)]
struct Usage {
    bytes: u64,
    shared: u64,
    mount_point: Option<PathBuf>,
}

/// Disk use of a tree, symlinks not followed, not crossing into another filesystem.
fn usage(dir: &Path, dev: u64) -> anyhow::Result<Usage> {
    let mut u = Usage::default();
    // inode -> (links, links seen inside, bytes)
    let mut inodes: HashMap<u64, (u64, u64, u64)> = HashMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let m = fs::symlink_metadata(&path).with_context(|| format!("{}", path.display()))?;
        if m.dev() != dev {
            u.mount_point.get_or_insert(path);
            continue;
        }
        let bytes = m.blocks() * 512;
        if m.is_dir() {
            u.bytes += bytes;
            for e in fs::read_dir(&path).with_context(|| format!("{}", path.display()))? {
                stack.push(e.with_context(|| format!("{}", path.display()))?.path());
            }
        } else {
            let i = inodes.entry(m.ino()).or_insert((m.nlink(), 0, bytes));
            i.1 += 1;
        }
    }
    for (links, seen, bytes) in inodes.into_values() {
        u.bytes += bytes;
        if seen < links {
            u.shared += bytes;
        }
    }
    Ok(u)
}

/// `secs` since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Why an entry goes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Removal {
    /// The entry.
    #[serde(flatten)]
    pub entry: CachedStage,
    /// Why.
    pub reason: String,
}

/// What prune does: entries to remove and to keep.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Plan {
    /// Removed (or, with `--dry-run`, to be removed).
    pub remove: Vec<Removal>,
    /// Kept.
    pub keep: Vec<CachedStage>,
}

/// Decides, from [`list`]'s entries: incomplete entries go (prune runs with the cache
/// locked, so no build is writing them: they are interrupted builds'); of each stage's
/// complete entries the `keep` most recently used stay, and of the others those last used
/// within `older_than` (when given) stay too. An entry with a mount point inside always stays.
pub fn plan(
    entries: Vec<CachedStage>,
    keep: usize,
    older_than: Option<Duration>,
    now: SystemTime,
) -> Plan {
    let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut p = Plan::default();
    let mut kept_per_stage: HashMap<&str, usize> = HashMap::new();
    let mut entries = entries;
    sort(&mut entries);
    for e in entries {
        if e.mount_point.is_some() {
            p.keep.push(e);
            continue;
        }
        if !e.complete {
            p.remove.push(Removal { entry: e, reason: "incomplete (an interrupted build)".into() });
            continue;
        }
        let rank = kept_per_stage.entry(e.stage).or_default();
        if *rank < keep {
            *rank += 1;
            p.keep.push(e);
            continue;
        }
        let age = now.saturating_sub(e.last_used_unix);
        let reason = match older_than {
            Some(limit) if age < limit.as_secs() => {
                p.keep.push(e);
                continue;
            }
            Some(_) => format!(
                "not among the {keep} most recently used {} entries, last used {} days ago",
                e.stage,
                age / 86_400
            ),
            None => format!("not among the {keep} most recently used {} entries", e.stage),
        };
        p.remove.push(Removal { entry: e, reason });
    }
    p
}

/// Removes one planned entry, re-checking first that it still is one: a real directory
/// (not a symlink) directly under `cache`, named like an entry, with no mount point inside.
/// `fs::remove_dir_all` removes symlinks inside it, never what they point to.
pub fn remove(cache: &Path, e: &CachedStage) -> anyhow::Result<()> {
    let root = fs::canonicalize(cache).with_context(|| format!("cache {}", cache.display()))?;
    let name = e.dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    if e.dir.parent() != Some(root.as_path()) || parse_name(name).is_none() {
        bail!("{}: not an entry of the cache {}; not removed", e.dir.display(), root.display());
    }
    let meta =
        fs::symlink_metadata(&e.dir).with_context(|| format!("reading {}", e.dir.display()))?;
    if !meta.is_dir() {
        bail!("{}: not a directory (a symlink?); not removed", e.dir.display());
    }
    if let Some(m) = usage(&e.dir, fs::metadata(&root)?.dev())?.mount_point {
        bail!("{}: {} is a mount point; not removed", e.dir.display(), m.display());
    }
    fs::remove_dir_all(&e.dir).with_context(|| format!("removing {}", e.dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Entry;
    use std::os::unix::fs::symlink;
    use std::process::Command;

    fn key(c: char) -> String {
        c.to_string().repeat(64)
    }

    /// A finished entry with `bytes` of data, last used `days_ago`.
    fn entry(cache: &Path, stage: &str, c: char, bytes: usize, days_ago: u64) -> Entry {
        let e = Entry::new(cache, stage, key(c));
        e.begin().unwrap();
        fs::write(e.dir.join("data"), vec![1u8; bytes]).unwrap();
        e.commit().unwrap();
        set_used(&e, days_ago);
        e
    }

    fn set_used(e: &Entry, days_ago: u64) {
        e.mark_used_at(SystemTime::now() - Duration::from_secs(days_ago * 86_400)).unwrap();
    }

    fn names(v: &[CachedStage]) -> Vec<String> {
        v.iter().map(|e| e.dir.file_name().unwrap().to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn names_are_strict() {
        assert_eq!(
            parse_name(&format!("rootfs-{}", "a".repeat(24))),
            Some(("rootfs", "aaaaaaaaaaaaaaaaaaaaaaaa"))
        );
        assert!(parse_name(&format!("rootfs-{}", "a".repeat(23))).is_none());
        assert!(parse_name(&format!("rootfs-{}", "A".repeat(24))).is_none());
        assert!(parse_name(&format!("kvm-probe-{}", "a".repeat(24))).is_none());
        assert!(parse_name(&format!("boot-{}", "a".repeat(24))).is_none());
        assert!(parse_name(&format!("../rootfs-{}", "a".repeat(24))).is_none());
        assert!(parse_name(".lock").is_none());
    }

    #[test]
    fn dates_are_utc_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        // Checked against coreutils `date -u -d @N`.
        for n in [951_782_400u64, 4_102_444_799, 1_795_000_123] {
            let want = crate::exec::output(Command::new("date").args([
                "-u",
                "-d",
                &format!("@{n}"),
                "+%FT%TZ",
            ]))
            .unwrap();
            assert_eq!(rfc3339(n), want.trim(), "{n}");
        }
    }

    #[test]
    fn a_hit_marks_the_entry_used() {
        let t = tempfile::tempdir().unwrap();
        let e = entry(t.path(), "disk", 'a', 10, 30);
        let before = list(t.path()).unwrap()[0].last_used_unix;
        e.mark_used().unwrap();
        let after = list(t.path()).unwrap()[0].last_used_unix;
        assert!(after >= before + 29 * 86_400, "{before} -> {after}");
        // An entry from an older builder (no .last-used) falls back to its marker's time.
        fs::remove_file(e.dir.join(LAST_USED)).unwrap();
        assert!(list(t.path()).unwrap()[0].last_used_unix >= before + 29 * 86_400);
    }

    #[test]
    fn list_measures_and_orders_entries() {
        let t = tempfile::tempdir().unwrap();
        let c = t.path();
        entry(c, "disk", 'a', 100_000, 3);
        entry(c, "disk", 'b', 10, 1);
        entry(c, "rootfs", 'c', 10, 9);
        // An output hard-linked to the build's -o DIR: listed, but not freed by removing.
        let o = entry(c, "outputs", 'd', 64 * 1024, 0);
        fs::hard_link(o.dir.join("data"), c.join("out-link")).unwrap();
        // Incomplete: no marker.
        let i = Entry::new(c, "customize", key('e'));
        i.begin().unwrap();
        // Not entries: a lock, a probe verdict, a file and a directory named otherwise.
        fs::write(c.join(".lock"), "").unwrap();
        fs::write(c.join("kvm-probe-0123456789abcdef"), "kvm").unwrap();
        fs::write(c.join(format!("disk-{}", "f".repeat(24))), "a file").unwrap();
        fs::create_dir(c.join("disk-notakey")).unwrap();
        let l = list(c).unwrap();
        assert_eq!(
            names(&l),
            [
                format!("rootfs-{}", "c".repeat(24)),
                format!("customize-{}", "e".repeat(24)),
                format!("disk-{}", "b".repeat(24)),
                format!("disk-{}", "a".repeat(24)),
                format!("outputs-{}", "d".repeat(24)),
            ]
        );
        assert_eq!(l[0].key, key('c'));
        assert!(l[0].complete && !l[1].complete);
        assert_eq!(l[1].key, "e".repeat(24));
        // Allocated bytes, as du counts them.
        let du =
            crate::exec::output(Command::new("du").args(["-s", "-B1"]).arg(&l[3].dir)).unwrap();
        assert_eq!(du.split_whitespace().next().unwrap(), l[3].bytes.to_string());
        assert!(l[3].bytes >= 100_000);
        assert_eq!(l[3].shared_bytes, 0);
        assert_eq!(l[4].shared_bytes, 64 * 1024);
        assert!(l[4].freed_bytes() < l[4].bytes);
        assert!(list(&c.join("nothing-here")).unwrap().is_empty());
    }

    #[test]
    fn plan_keeps_the_newest_per_stage() {
        let t = tempfile::tempdir().unwrap();
        let c = t.path();
        for (i, ch) in ['a', 'b', 'c', 'd'].into_iter().enumerate() {
            entry(c, "disk", ch, 10, [5, 1, 40, 20][i]);
        }
        entry(c, "rootfs", 'e', 10, 100);
        let inc = Entry::new(c, "outputs", key('f'));
        inc.begin().unwrap();
        let now = SystemTime::now();
        let p = plan(list(c).unwrap(), 2, None, now);
        let d = |ch: char| format!("disk-{}", ch.to_string().repeat(24));
        let removed: Vec<CachedStage> = p.remove.iter().map(|r| r.entry.clone()).collect();
        assert_eq!(names(&removed), [d('d'), d('c'), format!("outputs-{}", "f".repeat(24))]);
        assert_eq!(p.remove[1].entry.key, key('c'));
        assert_eq!(p.remove[2].reason, "incomplete (an interrupted build)");
        assert_eq!(p.remove[0].reason, "not among the 2 most recently used disk entries");
        // The old rootfs is its stage's newest: kept.
        assert_eq!(names(&p.keep), [format!("rootfs-{}", "e".repeat(24)), d('b'), d('a')]);
        // --older-than 30: of the rest, only what is older than 30 days goes.
        let p = plan(list(c).unwrap(), 2, Some(Duration::from_secs(30 * 86_400)), now);
        let removed: Vec<CachedStage> = p.remove.iter().map(|r| r.entry.clone()).collect();
        assert_eq!(names(&removed), [d('c'), format!("outputs-{}", "f".repeat(24))]);
        assert!(p.remove[0].reason.contains("last used 40 days ago"), "{}", p.remove[0].reason);
        // --keep 0 --older-than 30: everything older than 30 days, the rootfs too.
        let p = plan(list(c).unwrap(), 0, Some(Duration::from_secs(30 * 86_400)), now);
        assert_eq!(p.remove.len(), 3);
        assert_eq!(p.keep.len(), 3);
    }

    #[test]
    fn hostile_symlinks_are_never_followed_or_removed() {
        let t = tempfile::tempdir().unwrap();
        let cache = t.path().join("cache");
        fs::create_dir(&cache).unwrap();
        // Precious data outside the cache, with a fake entry in it.
        let outside = t.path().join("precious");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("thesis.tex"), "years of work").unwrap();
        fs::write(outside.join(MARKER), key('a')).unwrap();
        // 1. A symlink named like an entry, pointing out of the cache.
        symlink(&outside, cache.join(format!("rootfs-{}", "a".repeat(24)))).unwrap();
        // 2. A real, old entry with symlinks inside pointing out (a rootfs has absolute
        //    links), among them its marker.
        let e = entry(&cache, "disk", 'b', 10, 50);
        symlink(&outside, e.dir.join("link-to-dir")).unwrap();
        symlink(outside.join("thesis.tex"), e.dir.join("link-to-file")).unwrap();
        entry(&cache, "disk", 'c', 10, 1);
        let l = list(&cache).unwrap();
        assert_eq!(l.len(), 2, "the symlink is not an entry: {:?}", names(&l));
        let p = plan(l, 1, None, SystemTime::now());
        assert_eq!(p.remove.len(), 1);
        remove(&cache, &p.remove[0].entry).unwrap();
        assert!(!e.dir.exists());
        assert_eq!(fs::read_to_string(outside.join("thesis.tex")).unwrap(), "years of work");
        assert!(cache.join(format!("rootfs-{}", "a".repeat(24))).symlink_metadata().is_ok());
        // 3. remove itself refuses what is not an entry of this cache, even if asked.
        let mut fake = list(&cache).unwrap()[0].clone();
        fake.dir = outside.clone();
        let err = remove(&cache, &fake).unwrap_err().to_string();
        assert!(err.contains("not an entry of the cache"), "{err}");
        fake.dir = cache.join(format!("rootfs-{}", "a".repeat(24)));
        let err = remove(&cache, &fake).unwrap_err().to_string();
        assert!(err.contains("not a directory (a symlink?)"), "{err}");
        fake.dir = cache.join("..").join(format!("disk-{}", "c".repeat(24)));
        assert!(remove(&cache, &fake).is_err());
        assert!(outside.join("thesis.tex").is_file());
        assert!(cache.join(format!("disk-{}", "c".repeat(24))).is_dir());
    }
}
