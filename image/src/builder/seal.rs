//! Stage 3, seal: remove everything that identifies one machine or one boot, so that every
//! clone starts as a new instance. The rules are those `capstan image check` verifies
//! (`crate::check`); after sealing the builder runs the check on the tree and fails the
//! build on any finding.

use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::Context;

use crate::check;
use crate::exec;

fn clear_dir(dir: &Path) -> anyhow::Result<()> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Ok(());
    };
    for e in rd {
        let e = e?;
        if e.file_type()?.is_dir() {
            fs::remove_dir_all(e.path())?;
        } else {
            fs::remove_file(e.path())?;
        }
    }
    Ok(())
}

/// Removes regular files under `dir`, keeping the directory tree (journald and friends
/// expect their directories).
fn remove_files_keep_dirs(dir: &Path) -> anyhow::Result<()> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Ok(());
    };
    for e in rd {
        let e = e?;
        if e.file_type()?.is_dir() {
            remove_files_keep_dirs(&e.path())?;
        } else {
            fs::remove_file(e.path())?;
        }
    }
    Ok(())
}

/// Seals the tree at `root`; `epoch` clamps every timestamp.
pub fn run(root: &Path, root_locked: bool, epoch: u64) -> anyhow::Result<()> {
    // Identity.
    fs::write(root.join("etc/machine-id"), "").context("emptying /etc/machine-id")?;
    fs::write(root.join("etc/hostname"), "localhost\n")?;
    fs::write(
        root.join("etc/hosts"),
        "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n",
    )?;
    for (_, path) in check::STATE_FILES {
        let p = root.join(path);
        if p.symlink_metadata().is_ok() {
            fs::remove_file(&p).with_context(|| format!("removing /{path}"))?;
        }
    }
    if let Ok(rd) = fs::read_dir(root.join("etc/ssh")) {
        for e in rd {
            let e = e?;
            if e.file_name().to_string_lossy().starts_with("ssh_host_") {
                fs::remove_file(e.path())?;
            }
        }
    }
    // State, leases, logs, caches, history.
    for (_, dir) in check::STATE_DIRS {
        clear_dir(&root.join(dir))?;
    }
    remove_files_keep_dirs(&root.join("var/log"))?;
    for dir in ["tmp", "var/tmp", "var/cache/apt", "var/lib/apt/lists", "var/cache/ldconfig"] {
        clear_dir(&root.join(dir))?;
    }
    fs::create_dir_all(root.join("var/lib/apt/lists/partial"))?;
    for name in [
        "var/cache/debconf/config.dat-old",
        "var/cache/debconf/templates.dat-old",
        "var/lib/dpkg/status-old",
        "var/lib/dpkg/diversions-old",
        "etc/passwd-",
        "etc/shadow-",
        "etc/group-",
        "etc/gshadow-",
    ] {
        let p = root.join(name);
        if p.exists() {
            fs::remove_file(p)?;
        }
    }
    let mut homes = vec![root.join("root")];
    if let Ok(rd) = fs::read_dir(root.join("home")) {
        homes.extend(rd.filter_map(Result::ok).map(|e| e.path()));
    }
    for home in homes {
        if let Ok(rd) = fs::read_dir(&home) {
            for e in rd.filter_map(Result::ok) {
                if e.file_name().to_string_lossy().ends_with("_history") {
                    fs::remove_file(e.path())?;
                }
            }
        }
    }
    if root_locked {
        lock_root(&root.join("etc/shadow"))?;
    }
    // The template is up to date with its /usr: without these, systemd's
    // ConditionNeedsUpdate= runs ldconfig.service, systemd-journal-catalog-update.service and
    // systemd-update-done.service on every clone's first boot, all before sysinit.target.
    // The clamp below gives them /usr's mtime, which systemd counts as up to date. The loader
    // cache is dpkg's (its trigger ran ldconfig after every purge; path prunes remove only
    // libraries nothing links). Not `ldconfig -r` here: its aux-cache records inodes and
    // ctimes, which broke bit-identical rebuilds.
    for updated in ["etc/.updated", "var/.updated"] {
        fs::write(root.join(updated), "# Written by capstan build: this template is up to date.\n")
            .with_context(|| format!("writing /{updated}"))?;
    }
    // Clamp every timestamp (symlinks too) so the filesystem is reproducible.
    exec::run(
        Command::new("find")
            .arg(root)
            .args(["-exec", "touch", "-h", "-d"])
            .arg(format!("@{epoch}"))
            .args(["{}", "+"]),
    )?;
    Ok(())
}

/// Sets root's password field to `!*` (locked, no password).
fn lock_root(shadow: &Path) -> anyhow::Result<()> {
    let text = fs::read_to_string(shadow).context("reading /etc/shadow")?;
    let out: Vec<String> = text
        .lines()
        .map(|l| match l.split_once(':') {
            Some(("root", rest)) => {
                let rest = rest.split_once(':').map_or("", |(_, r)| r);
                format!("root:!*:{rest}")
            }
            _ => l.to_string(),
        })
        .collect();
    fs::write(shadow, out.join("\n") + "\n").context("writing /etc/shadow")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealing_makes_a_dirty_root_pass_the_check() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        for d in ["etc/ssh", "var/log/apt", "var/lib/dhcp", "var/lib/systemd", "root"] {
            fs::create_dir_all(r.join(d)).unwrap();
        }
        fs::write(r.join("etc/machine-id"), "0123456789abcdef0123456789abcdef\n").unwrap();
        fs::write(r.join("etc/ssh/ssh_host_rsa_key"), "k").unwrap();
        fs::write(r.join("var/log/apt/history.log"), "x").unwrap();
        fs::write(r.join("var/lib/dhcp/l.leases"), "x").unwrap();
        fs::write(r.join("var/lib/systemd/random-seed"), "x").unwrap();
        fs::write(r.join("root/.bash_history"), "x").unwrap();
        fs::write(r.join("etc/shadow"), "root:$6$x$y:1:0:99999:7:::\nbin:*:1:0:99999:7:::\n")
            .unwrap();
        assert!(!check::check_root(r).is_empty());
        run(r, true, 1_700_000_000).unwrap();
        assert_eq!(check::check_root(r), vec![]);
        assert!(r.join("var/log/apt").is_dir());
        assert_eq!(
            fs::read_to_string(r.join("etc/shadow")).unwrap(),
            "root:!*:1:0:99999:7:::\nbin:*:1:0:99999:7:::\n"
        );
        let m = fs::metadata(r.join("etc/shadow")).unwrap();
        assert_eq!(
            m.modified().unwrap(),
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000)
        );
    }
}
