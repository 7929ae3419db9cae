//! Reproducible across machines, and the signed build end to end: `scripts/check-reproducible`
//! builds lb twice, cold, signed, from copies of the inputs in different directories, under a
//! different TZ, umask, hostname (UTS namespace), locale and with one stage cache on a tmpfs,
//! and every artefact (raw, VMDK, OVA, qcow2, both SBOMs) must be the same bytes. The signed
//! OVA then verifies with `capstan ova verify --trust` and with OpenSSL as the oracle, the key
//! is nowhere in either cache or output directory, and the script's own diagnosis is checked
//! on a copy of the outputs with one byte of one file of the root filesystem changed.
//!
//! Two cold lb builds: about 2-3 minutes on an idle machine (the rootfs is downloaded twice).

#[path = "image_support.rs"]
mod support;

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use capstan_e2e::{run, workspace_bin, workspace_root};
use support::{capstan, e2e_dir, s};

/// A root CA and a signer certificate it issued (RSA 2048), made with OpenSSL:
/// (CA certificate, signer key, signer certificate).
fn ca_and_signer(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let p = |n: &str| dir.join(n);
    let ossl = |args: &[&str]| {
        run(Command::new("openssl").args(args)).unwrap_or_else(|e| panic!("openssl: {e:#}"));
    };
    ossl(
        &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", s(&p("ca.key"))]
            .into_iter()
            .chain(["-out", s(&p("ca.pem")), "-days", "3", "-subj", "/CN=Capstan repro test CA"])
            .chain(["-addext", "basicConstraints=critical,CA:TRUE"])
            .chain(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
            .collect::<Vec<_>>(),
    );
    ossl(
        &["req", "-newkey", "rsa:2048", "-nodes", "-keyout", s(&p("signer.key"))]
            .into_iter()
            .chain(["-out", s(&p("signer.csr")), "-subj", "/CN=Capstan repro test signer"])
            .collect::<Vec<_>>(),
    );
    fs::write(
        p("signer.ext"),
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n",
    )
    .unwrap();
    ossl(
        &["x509", "-req", "-in", s(&p("signer.csr")), "-CA", s(&p("ca.pem"))]
            .into_iter()
            .chain(["-CAkey", s(&p("ca.key")), "-CAcreateserial", "-days", "2"])
            .chain(["-extfile", s(&p("signer.ext")), "-out", s(&p("signer.pem"))])
            .collect::<Vec<_>>(),
    );
    (p("ca.pem"), p("signer.key"), p("signer.pem"))
}

fn script(args: &[&str]) -> Output {
    Command::new(workspace_root().join("scripts/check-reproducible"))
        .args(args)
        .output()
        .expect("run scripts/check-reproducible")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Every regular file under `dir` whose bytes contain `needle` (`grep -F`/`-P` on the bytes:
/// several GB of caches, so not in a debug-built Rust loop).
fn files_containing(dir: &Path, grep_args: &[&str]) -> Vec<String> {
    let o =
        Command::new("grep").args(["-r", "-l", "-a"]).args(grep_args).arg(dir).output().unwrap();
    assert!(o.status.code().is_some_and(|c| c <= 1), "grep failed: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).lines().map(str::to_string).collect()
}

/// Needles for the private key: one base64 line of its PEM, and 24 bytes of its DER from the
/// middle (the private exponent and primes), as a `grep -P` pattern.
fn key_needles(key: &Path, dir: &Path) -> (String, String) {
    let pem = fs::read_to_string(key).unwrap();
    let line = pem.lines().nth(5).expect("a PEM body").to_string();
    let der = dir.join("signer.der");
    run(Command::new("openssl").args(["pkey", "-in", s(key), "-outform", "DER", "-out", s(&der)]))
        .unwrap();
    let der = fs::read(der).unwrap();
    let window = der[der.len() / 2..]
        .windows(24)
        .find(|w| !w.contains(&b'\n'))
        .expect("24 bytes without a newline");
    let pattern: String = window.iter().map(|b| format!("\\x{b:02x}")).collect();
    (line, pattern)
}

/// The signature and certificate of a signed OVA checked with OpenSSL alone: the first line
/// of `lb.cert` is `SHA256(lb.mf)= HEX`, the rest the signer's PEM; its public key must verify
/// the signature over the extracted `lb.mf`, and each `.mf` line must match `sha256sum`.
fn openssl_accepts(ova: &Path, dir: &Path) {
    run(Command::new("tar").arg("-xf").arg(ova).arg("-C").arg(dir)).unwrap();
    let cert = fs::read_to_string(dir.join("lb.cert")).unwrap();
    let (first, pem) = cert.split_once('\n').unwrap();
    let hex = first.strip_prefix("SHA256(lb.mf)= ").unwrap_or_else(|| panic!("{first:?}"));
    assert!(hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{hex}");
    let sig: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    assert_eq!(sig.len(), 256, "RSA 2048");
    fs::write(dir.join("sig.bin"), sig).unwrap();
    fs::write(dir.join("signer-from-ova.pem"), pem).unwrap();
    let pubkey = run(Command::new("openssl").args([
        "x509",
        "-pubkey",
        "-noout",
        "-in",
        s(&dir.join("signer-from-ova.pem")),
    ]))
    .unwrap();
    fs::write(dir.join("pub.pem"), pubkey).unwrap();
    let ok = run(Command::new("openssl")
        .args(["dgst", "-sha256", "-verify", s(&dir.join("pub.pem"))])
        .args(["-signature", s(&dir.join("sig.bin")), s(&dir.join("lb.mf"))]))
    .unwrap();
    assert_eq!(ok.trim(), "Verified OK");
    let mf = fs::read_to_string(dir.join("lb.mf")).unwrap();
    assert!(mf.lines().count() >= 2, "{mf}");
    for line in mf.lines() {
        let (name, digest) = line
            .strip_prefix("SHA256(")
            .and_then(|r| r.split_once(")= "))
            .unwrap_or_else(|| panic!("manifest line {line:?}"));
        let sum = run(Command::new("sha256sum").arg(dir.join(name))).unwrap();
        assert_eq!(sum.split_whitespace().next(), Some(digest), "{name}");
    }
}

/// Changes one byte of `/etc/capstan/agent.toml` in the root filesystem of a copy of `out`;
/// returns the copy.
fn copy_with_one_file_changed(out: &Path, to: &Path) -> PathBuf {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(out).unwrap() {
        let e = e.unwrap();
        run(Command::new("cp").arg("--sparse=always").arg(e.path()).arg(to)).unwrap();
    }
    let raw = to.join("lb.raw");
    let parts = run(Command::new("sfdisk").arg("--json").arg(&raw)).unwrap();
    let parts: serde_json::Value = serde_json::from_str(&parts).unwrap();
    let root = parts["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "root")
        .unwrap_or_else(|| panic!("no root partition in {parts}"));
    let offset = root["start"].as_u64().unwrap() * 512;
    let bmap = run(Command::new("debugfs")
        .arg("-R")
        .arg("bmap /etc/capstan/agent.toml 0")
        .arg(format!("{}?offset={offset}", raw.display())))
    .unwrap();
    let block: u64 = bmap.trim().parse().unwrap_or_else(|_| panic!("debugfs bmap: {bmap:?}"));
    let mut f = fs::OpenOptions::new().read(true).write(true).open(&raw).unwrap();
    f.seek(SeekFrom::Start(offset + block * 4096)).unwrap();
    f.write_all(b"!").unwrap();
    to.to_path_buf()
}

#[test]
#[ignore = "two cold signed lb builds (~3-4 min) kept out of CI's time budget; the same check \
            by scripts/check-reproducible lb gave 6 of 6 artefacts identical on 2026-12-03 after \
            the s_kbytes_written fix (builder/ext4.rs): run with --ignored"]
fn two_cold_signed_builds_on_different_machines_are_identical_and_verify() {
    let base = e2e_dir();
    fs::create_dir_all(&base).unwrap();
    let keys = tempfile::tempdir_in(&base).unwrap();
    let (ca, key, cert) = ca_and_signer(keys.path());
    let work = base.join("repro-lb");
    let agent = workspace_bin("capstan-agent", "capstan-agent");
    let o = script(&[
        "lb",
        "--json",
        "--keep",
        "--work",
        s(&work),
        "--capstan",
        s(&capstan()),
        "--agent-bin",
        s(&agent),
        "--sign-key",
        s(&key),
        "--sign-cert",
        s(&cert),
    ]);
    assert!(o.status.success(), "check-reproducible failed ({}):\n{}", o.status, text(&o));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("--json output ({e}):\n{}", text(&o)));
    assert_eq!(summary["identical"], true, "{summary:#}");
    assert_eq!(summary["first_stage_key_that_differs"], serde_json::Value::Null, "{summary:#}");
    let mut names: Vec<&str> = summary["artefacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            assert_eq!(a["same"], true, "{a}");
            assert_eq!(a["sha256_a"].as_str().unwrap().len(), 64, "{a}");
            a["name"].as_str().unwrap()
        })
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["lb.cdx.json", "lb.ova", "lb.qcow2", "lb.raw", "lb.spdx.json", "lb.vmdk"]);

    // The rootfs stage's package record: exact versions, the same in both builds.
    let report: serde_json::Value =
        serde_json::from_slice(&fs::read(work.join("a/out/lb.build.json")).unwrap()).unwrap();
    let pkgs = report["image"]["rootfs_packages"].as_array().unwrap();
    let haproxy = pkgs.iter().find(|p| p["name"] == "haproxy").expect("haproxy recorded");
    assert!(haproxy["version"].as_str().unwrap().starts_with("2.6."), "{haproxy}");
    assert!(pkgs.len() > 100, "{} packages", pkgs.len());

    // The signed OVA: our verifier with the CA, and OpenSSL as the oracle.
    let ova = work.join("a/out/lb.ova");
    let v = run(Command::new(capstan()).args(["ova", "verify", "--require-signature"]).args([
        "--trust",
        s(&ca),
        s(&ova),
    ]))
    .unwrap_or_else(|e| panic!("ova verify --trust: {e:#}"));
    assert!(v.contains("CN=Capstan repro test signer"), "{v}");
    let extracted = tempfile::tempdir_in(&base).unwrap();
    openssl_accepts(&ova, extracted.path());

    // The key never reached a cache entry, an output or a report.
    let (pem_line, der_pattern) = key_needles(&key, keys.path());
    for dir in [work.join("a"), work.join("b")] {
        let hits = files_containing(&dir, &["-F", "-e", &pem_line]);
        assert!(hits.is_empty(), "the key's PEM is in {hits:?}");
        let hits = files_containing(&dir, &["-P", "-e", &der_pattern]);
        assert!(hits.is_empty(), "the key's DER is in {hits:?}");
        assert!(!files_containing(&dir, &["-F", "-e", "SHA256(lb.mf)="]).is_empty(), "sanity");
    }

    // The diagnosis: one byte of one file changed in B's raw image is named as such.
    let changed = copy_with_one_file_changed(&work.join("b/out"), &work.join("b-changed"));
    let o = script(&["lb", "--json", "--compare", s(&work.join("a/out")), s(&changed)]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let differ: Vec<&str> = summary["artefacts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["same"] == false)
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(differ, ["lb.raw"], "{summary:#}");
    let why = summary["report"].as_str().unwrap();
    assert!(why.contains("partition 2 (root"), "{why}");
    assert!(why.contains("1 differing bytes in 1 ranges"), "{why}");
    assert!(why.contains("/etc/capstan/agent.toml"), "{why}");
    assert!(why.contains("partition 1 (ESP") && why.contains("0 differing bytes"), "{why}");

    fs::remove_dir_all(&work).unwrap();
}
