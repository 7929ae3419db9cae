//! The rooted filesystem never resolves a path outside its root, whatever the path and
//! whatever symlinks the root holds (absolute, relative, climbing, looping).

use std::os::unix::fs::symlink;
use std::path::Path;

use capstan_agent::root::{FileOpts, Root, RootError};
use proptest::prelude::*;

fn hostile_root() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let b = t.path();
    std::fs::create_dir_all(b.join("usr/lib")).unwrap();
    std::fs::create_dir_all(b.join("etc/a")).unwrap();
    symlink("/usr/lib", b.join("lib")).unwrap(); // merged-usr style, absolute
    symlink("/", b.join("etc/slash")).unwrap();
    symlink("/etc", b.join("etc/a/abs")).unwrap();
    symlink("../..", b.join("etc/a/up2")).unwrap(); // == root, allowed
    symlink("../../..", b.join("etc/a/up3")).unwrap(); // above the root
    symlink("/../../../tmp", b.join("etc/dotdot-abs")).unwrap();
    symlink("loop2", b.join("etc/loop1")).unwrap();
    symlink("loop1", b.join("etc/loop2")).unwrap();
    t
}

const PARTS: &[&str] = &[
    "etc",
    "a",
    "abs",
    "up2",
    "up3",
    "slash",
    "lib",
    "usr",
    "..",
    ".",
    "dotdot-abs",
    "loop1",
    "x",
    "y",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]
    #[test]
    fn resolution_stays_under_the_root(parts in proptest::collection::vec(0..PARTS.len(), 1..8), absolute in any::<bool>()) {
        let t = hostile_root();
        let root = Root::new(t.path()).unwrap();
        let mut p = if absolute { String::from("/") } else { String::new() };
        p.push_str(&parts.iter().map(|i| PARTS[*i]).collect::<Vec<_>>().join("/"));
        match root.resolve(&p) {
            Ok(host) => {
                prop_assert!(host.starts_with(root.base()), "{p} -> {}", host.display());
                // and no component of the result is a symlink any more (nothing left to follow
                // outside): walk it
                let rel = host.strip_prefix(root.base()).unwrap();
                let mut cur = root.base().to_path_buf();
                for c in rel.components() {
                    cur.push(c);
                    if let Ok(m) = std::fs::symlink_metadata(&cur) {
                        prop_assert!(!m.file_type().is_symlink(), "{p}: {} is a symlink", cur.display());
                    }
                }
            }
            Err(RootError::Escape { .. } | RootError::SymlinkLoop { .. } | RootError::Io { .. }) => {}
            Err(e) => prop_assert!(false, "{p}: unexpected {e}"),
        }
    }
}

#[test]
fn writes_through_hostile_symlinks_land_inside() {
    let t = hostile_root();
    let root = Root::new(t.path()).unwrap();
    let p = root.write("/etc/slash/etc/a/abs/hosts", b"x", FileOpts::default()).unwrap();
    assert_eq!(p, root.base().join("etc/hosts"));
    let e = root.write("/etc/a/up3/escape", b"x", FileOpts::default()).unwrap_err();
    assert!(e.to_string().contains("escapes the root"), "{e}");
    let e = root.write("/etc/dotdot-abs/escape", b"x", FileOpts::default()).unwrap_err();
    assert!(e.to_string().contains("escapes the root"), "{e}");
    assert!(!Path::new("/tmp/escape").exists());
    assert!(matches!(root.resolve("/etc/loop1/x"), Err(RootError::SymlinkLoop { .. })));
}
