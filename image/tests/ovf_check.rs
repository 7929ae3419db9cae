//! `capstan ovf check` on the real corpus, the strict mode, hostile files and real file sizes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn capstan(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_capstan")).args(args).output().expect("run capstan")
}

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/ovf-corpus")
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            walk(&p, out);
        } else if p.extension().is_some_and(|e| e.eq_ignore_ascii_case("ovf")) {
            out.push(p);
        }
    }
}

fn is_negative(p: &Path) -> bool {
    let s = p.to_string_lossy();
    s.contains("/Neg/")
        || ["invalid", "neg-", "negative", "corrupted"].iter().any(|m| s.to_lowercase().contains(m))
}

/// HTTP 404 pages saved as `.ovf` upstream: not descriptors at all.
fn is_html(p: &Path) -> bool {
    p.to_string_lossy().contains("DeleteHDTestdata/") && p.to_string_lossy().contains("_old/")
}

/// Every output line is `FILE:LINE: [warning: ]<element>: message`.
fn assert_line_format(stdout: &str) {
    for line in stdout.lines() {
        let (file, rest) = line.split_once(".ovf:").unwrap_or_else(|| panic!("no FILE: {line}"));
        assert!(!file.is_empty());
        let (num, rest) = rest.split_once(": ").unwrap_or_else(|| panic!("no LINE: {line}"));
        num.parse::<u32>().unwrap_or_else(|_| panic!("bad line number in {line}"));
        let rest = rest.strip_prefix("warning: ").unwrap_or(rest);
        assert!(rest.starts_with('<') && rest.contains(">: "), "no <element>: {line}");
    }
}

#[test]
fn every_positive_descriptor_passes() {
    let mut files = Vec::new();
    walk(&corpus(), &mut files);
    assert_eq!(files.len(), 957);
    let positives: Vec<_> =
        files.iter().filter(|p| !is_negative(p) && !is_html(p)).map(|p| p.as_os_str()).collect();
    assert_eq!(positives.len(), 806);
    let mut args = vec![std::ffi::OsStr::new("ovf"), "check".as_ref()];
    args.extend(positives);
    let out = capstan(&args);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{stdout}");
    assert_line_format(&stdout);
    assert!(stdout.lines().all(|l| l.contains(": warning: <")), "{stdout}");
}

#[test]
fn html_pages_saved_as_ovf_are_rejected_clearly() {
    let mut files = Vec::new();
    walk(&corpus(), &mut files);
    for p in files.iter().filter(|p| is_html(p)) {
        let out = capstan(&["ovf".as_ref(), "check".as_ref(), p.as_os_str()]);
        assert_eq!(out.status.code(), Some(1));
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert!(stdout.ends_with(":1: <HTML>: root element is not an OVF Envelope\n"), "{stdout}");
    }
}

#[test]
fn strict_fails_unsupported_items_naming_instance_3() {
    for name in ["unsupported-resourcetype.ovf", "unsupported-resourcesubtype.ovf"] {
        let path = corpus().join(name);
        let lax = capstan(&["ovf".as_ref(), "check".as_ref(), path.as_os_str()]);
        assert!(lax.status.success());
        let lax_out = String::from_utf8(lax.stdout).unwrap();
        assert!(lax_out.contains(":45: warning: <Item>: InstanceID 3:"), "{lax_out}");

        let strict =
            capstan(&["ovf".as_ref(), "check".as_ref(), "--strict".as_ref(), path.as_os_str()]);
        assert_eq!(strict.status.code(), Some(1));
        let out = String::from_utf8(strict.stdout).unwrap();
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(
            out.starts_with(&format!("{}:45: <Item>: InstanceID 3: Resource", path.display())),
            "{out}"
        );
    }
}

#[test]
fn negatives_never_panic_and_say_where() {
    let mut files = Vec::new();
    walk(&corpus(), &mut files);
    let negatives: Vec<_> = files.iter().filter(|p| is_negative(p)).collect();
    assert_eq!(negatives.len(), 148);
    let mut rejected = 0;
    for p in negatives {
        let out = capstan(&["ovf".as_ref(), "check".as_ref(), "--strict".as_ref(), p.as_os_str()]);
        let code = out.status.code();
        assert!(
            matches!(code, Some(0 | 1)),
            "{}: exit {code:?}: {}",
            p.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert_line_format(&stdout);
        if code == Some(1) {
            rejected += 1;
            assert!(stdout.lines().any(|l| !l.contains(": warning: ")), "{stdout}");
        }
    }
    // The rest need the disk files, certificates or a full schema validator (see docs/ovf.md).
    assert!(rejected >= 124, "only {rejected} of 148 negatives rejected");
}

#[test]
fn unreadable_and_empty_files() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.ovf");
    std::fs::write(&empty, b"").unwrap();
    let missing = dir.path().join("missing.ovf");
    let out = capstan(&["ovf".as_ref(), "check".as_ref(), empty.as_os_str(), missing.as_os_str()]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("empty.ovf:1: <xml>: not readable XML: no root element"), "{stdout}");
    assert!(stdout.contains("missing.ovf:0: <file>: cannot read:"), "{stdout}");
    // Usage errors are clap's exit 2.
    assert_eq!(capstan(&["ovf".as_ref(), "check".as_ref()]).status.code(), Some(2));
}

#[test]
fn ovf_size_is_checked_against_files_next_to_the_descriptor() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = ovf::descriptor::builder::VmBuilder::new("vm")
        .disk(ovf::descriptor::builder::DiskSpec::new("disk.vmdk", 1 << 30))
        .build();
    env.file_mut("file1").unwrap().size = Some(10);
    let ovf_path = dir.path().join("vm.ovf");
    std::fs::write(&ovf_path, env.to_xml()).unwrap();
    let check = |extra: &[&str]| {
        let mut args: Vec<&std::ffi::OsStr> = vec!["ovf".as_ref(), "check".as_ref()];
        args.extend(extra.iter().map(|s| std::ffi::OsStr::new(*s)));
        args.push(ovf_path.as_os_str());
        capstan(&args)
    };
    assert!(check(&[]).status.success(), "missing files are fine unless required");
    let out = check(&["--require-files"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8(out.stdout)
        .unwrap()
        .contains("<File>: file \"file1\" (disk.vmdk) is missing"));
    std::fs::write(dir.path().join("disk.vmdk"), vec![0u8; 11]).unwrap();
    let out = check(&[]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains(
            ":4: <File>: file \"file1\" (disk.vmdk): ovf:size is 10 but the file has 11 bytes"
        ),
        "{stdout}"
    );
    std::fs::write(dir.path().join("disk.vmdk"), vec![0u8; 10]).unwrap();
    assert!(check(&["--require-files", "--strict"]).status.success());
}
