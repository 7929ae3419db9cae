//! `capstan cache list|prune` on a stage cache made in a temporary directory, with the
//! layout `capstan build` writes (`<stage>-<24 hex>/`, `.complete` holding the key,
//! `.last-used` whose mtime is the last use) and hostile things around it.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

fn capstan(args: &[&str], cache: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_capstan"))
        .args(args)
        .arg("--cache")
        .arg(cache)
        .output()
        .expect("run capstan")
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A finished entry holding `bytes` of data, last used `days_ago`.
fn entry(cache: &Path, stage: &str, c: char, bytes: usize, days_ago: u64) -> PathBuf {
    let key = c.to_string().repeat(64);
    let dir = cache.join(format!("{stage}-{}", &key[..24]));
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("data"), vec![1u8; bytes]).unwrap();
    fs::write(dir.join(".complete"), &key).unwrap();
    let used = fs::File::create(dir.join(".last-used")).unwrap();
    used.set_modified(SystemTime::now() - Duration::from_secs(days_ago * 86_400)).unwrap();
    dir
}

fn dirs(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            Path::new(e["dir"].as_str().unwrap()).file_name().unwrap().to_string_lossy().into()
        })
        .collect()
}

fn name(stage: &str, c: char) -> String {
    format!("{stage}-{}", c.to_string().repeat(24))
}

#[test]
fn list_shows_stage_key_size_and_last_use() {
    let t = tempfile::tempdir().unwrap();
    let c = t.path();
    entry(c, "rootfs", 'a', 200_000, 3);
    entry(c, "disk", 'b', 10, 0);
    let v = json(&capstan(&["cache", "list", "--json"], c));
    let e = &v["entries"];
    assert_eq!(dirs(e), [name("rootfs", 'a'), name("disk", 'b')]);
    assert_eq!(e[0]["stage"], "rootfs");
    assert_eq!(e[0]["key"], "a".repeat(64));
    assert_eq!(e[0]["complete"], true);
    assert!(e[0]["bytes"].as_u64().unwrap() >= 200_000, "{e:#}");
    let age = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()
        - e[0]["last_used_unix"].as_u64().unwrap();
    assert!(age.abs_diff(3 * 86_400) < 60, "last used {age} s ago");
    assert!(e[0]["last_used"].as_str().unwrap().ends_with('Z'));
    let text = String::from_utf8(capstan(&["cache", "list"], c).stdout).unwrap();
    assert!(text.starts_with("STAGE"), "{text}");
    assert!(text.contains(&format!("rootfs     {}", "a".repeat(24))), "{text}");
    assert!(text.contains("(3 days ago)") && text.contains("2 entries"), "{text}");
    // No cache at all: nothing, not an error, and nothing created.
    let none = c.join("absent");
    assert_eq!(
        json(&capstan(&["cache", "list", "--json"], &none))["entries"],
        serde_json::json!([])
    );
    let out = capstan(&["cache", "prune"], &none);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!none.exists());
}

#[test]
fn prune_keeps_the_most_recently_used_per_stage() {
    let t = tempfile::tempdir().unwrap();
    let c = t.path();
    for (ch, days) in [('a', 5), ('b', 1), ('c', 40), ('d', 20)] {
        entry(c, "customize", ch, 50_000, days);
    }
    entry(c, "rootfs", 'e', 10, 100);
    // An interrupted build: no marker.
    fs::create_dir(c.join(name("disk", 'f'))).unwrap();

    // --dry-run removes nothing and says the same as the real run.
    let dry = json(&capstan(&["cache", "prune", "--dry-run", "--json"], c));
    assert_eq!(dry["dry_run"], true);
    assert_eq!(
        dirs(&dry["removed"]),
        [name("customize", 'd'), name("customize", 'c'), name("disk", 'f')]
    );
    assert!(c.join(name("customize", 'c')).is_dir());
    let text = String::from_utf8(capstan(&["cache", "prune", "--dry-run"], c).stdout).unwrap();
    assert!(text.contains("would remove") && text.contains("would free"), "{text}");

    // --older-than 30: of the entries beyond the newest 2, only the one unused for 40 days.
    let v = json(&capstan(&["cache", "prune", "--older-than", "30", "--json"], c));
    assert_eq!(dirs(&v["removed"]), [name("customize", 'c'), name("disk", 'f')]);
    assert!(!c.join(name("customize", 'c')).exists());
    assert!(c.join(name("customize", 'd')).is_dir());
    let freed: u64 =
        v["removed"].as_array().unwrap().iter().map(|e| e["bytes"].as_u64().unwrap()).sum();
    assert_eq!(v["freed_bytes"], freed);
    assert!(freed >= 50_000);

    // Default --keep 2; the text names each entry and the bytes freed.
    let out = capstan(&["cache", "prune"], c);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains(&format!("removed {}", c.join(name("customize", 'd')).display())),
        "{text}"
    );
    assert!(text.contains("not among the 2 most recently used customize entries"), "{text}");
    assert!(text.contains("freed ") && text.contains("from 1 entries; kept 3 entries"), "{text}");
    let left = json(&capstan(&["cache", "list", "--json"], c));
    assert_eq!(
        dirs(&left["entries"]),
        [name("rootfs", 'e'), name("customize", 'b'), name("customize", 'a')]
    );
}

#[test]
fn prune_never_follows_a_hostile_symlink() {
    let t = tempfile::tempdir().unwrap();
    let cache = t.path().join("cache");
    fs::create_dir(&cache).unwrap();
    let precious = t.path().join("precious");
    fs::create_dir(&precious).unwrap();
    fs::write(precious.join("data"), "keep me").unwrap();
    fs::write(precious.join(".complete"), "a".repeat(64)).unwrap();
    // Named like an old entry, pointing out of the cache.
    symlink(&precious, cache.join(name("rootfs", 'a'))).unwrap();
    // An old real entry with links out of it (to a directory and to a file).
    let old = entry(&cache, "disk", 'b', 10, 90);
    symlink(&precious, old.join("root-link")).unwrap();
    symlink(precious.join("data"), old.join("file-link")).unwrap();
    // A file named like an entry, and a directory that is not one.
    fs::write(cache.join(name("disk", 'c')), "not a dir").unwrap();
    fs::create_dir(cache.join("disk-notakey")).unwrap();

    let v = json(&capstan(&["cache", "list", "--json"], &cache));
    assert_eq!(dirs(&v["entries"]), [name("disk", 'b')]);
    let v = json(&capstan(&["cache", "prune", "--keep", "0", "--json"], &cache));
    assert_eq!(dirs(&v["removed"]), [name("disk", 'b')]);
    assert!(!old.exists());
    assert_eq!(fs::read_to_string(precious.join("data")).unwrap(), "keep me");
    assert!(precious.join(".complete").is_file());
    assert!(cache.join(name("rootfs", 'a')).symlink_metadata().unwrap().file_type().is_symlink());
    assert!(cache.join(name("disk", 'c')).is_file());
    assert!(cache.join("disk-notakey").is_dir());
}

#[test]
fn prune_refuses_while_a_build_holds_the_cache() {
    let t = tempfile::tempdir().unwrap();
    let c = t.path();
    let old = entry(c, "disk", 'a', 10, 90);
    // A build holds a shared flock on CACHE/.lock; util-linux flock(1) takes the same lock
    // (--no-fork: the pid killed below is the one holding it).
    let mut holder = Command::new("flock")
        .args(["--shared", "--no-fork"])
        .arg(c.join(".lock"))
        .args(["sleep", "30"])
        .spawn()
        .expect("flock(1) (util-linux) is needed for this test");
    // Until flock has the lock, prune may still win: wait for the refusal, briefly.
    let mut refused = None;
    for _ in 0..50 {
        let out = capstan(&["cache", "prune", "--keep", "0"], c);
        if !out.status.success() {
            refused = Some(out);
            break;
        }
        // Prune won the race and removed the entry: recreate it and try again.
        entry(c, "disk", 'a', 10, 90);
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = refused.expect("prune never saw the build's lock");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("a capstan build is using the cache"), "{err}");
    assert!(old.is_dir(), "removed under a running build");
    // A dry run only reads: it still answers.
    let v = json(&capstan(&["cache", "prune", "--keep", "0", "--dry-run", "--json"], c));
    assert_eq!(dirs(&v["removed"]), [name("disk", 'a')]);
    holder.kill().unwrap();
    holder.wait().unwrap();
    let out = capstan(&["cache", "prune", "--keep", "0"], c);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!old.exists());
}
