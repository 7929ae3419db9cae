//! The SBOM against its oracles: syft (packages and purls), pyspdxtools (SPDX 2.3) and
//! cyclonedx-python-lib (the CycloneDX 1.5 schema), on a root made of this machine's real
//! Debian 12 dpkg database and copyright files. `scripts/setup` installs the tools into
//! `~/.cache/capstan-tools/venv`; without them these tests fail and say so.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use super::*;

/// The venv `scripts/setup` makes (`$CAPSTAN_TOOLS_DIR/venv/bin/NAME`).
fn tool(name: &str) -> PathBuf {
    let dir = std::env::var_os("CAPSTAN_TOOLS_DIR").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/capstan-tools")
    });
    let path = dir.join("venv/bin").join(name);
    assert!(
        path.is_file(),
        "{} is missing: run scripts/setup (it installs the SBOM oracles)",
        path.display()
    );
    path
}

/// A root with this machine's `var/lib/dpkg/status`, `os-release` and every copyright file.
fn host_root() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    fs::create_dir_all(r.join("var/lib/dpkg")).unwrap();
    fs::create_dir_all(r.join("etc")).unwrap();
    fs::copy("/var/lib/dpkg/status", r.join("var/lib/dpkg/status")).unwrap();
    fs::copy("/etc/os-release", r.join("etc/os-release")).unwrap();
    for e in fs::read_dir("/usr/share/doc").unwrap().filter_map(Result::ok) {
        let src = e.path().join("copyright");
        if src.is_file() {
            let dst = r.join("usr/share/doc").join(e.file_name());
            fs::create_dir_all(&dst).unwrap();
            fs::copy(&src, dst.join("copyright")).unwrap();
        }
    }
    t
}

fn collect(root: &Path, manifest: Option<&Path>, seed: &str) -> Sbom {
    let licences = dpkg::read_licences(root);
    Sbom::collect(
        root,
        &Inputs {
            name: "lb",
            version: "0.1.0",
            epoch: 1_700_000_000,
            seed,
            deb_manifest: manifest,
            licences: &licences,
            files: vec![("kubeadm", &"b".repeat(64))],
            images: vec![("k8s.gcr.io/etcd:3.4.13-0", &format!("sha256:{}", "c".repeat(64)))],
        },
    )
    .unwrap()
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// (name, version, arch, purl) of every dpkg package in an SPDX document.
fn debs(doc: &Value) -> BTreeSet<(String, String, String, String)> {
    doc["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| {
            let purl =
                p["externalRefs"].as_array()?.iter().find(|r| r["referenceType"] == "purl")?
                    ["referenceLocator"]
                    .as_str()?
                    .to_string();
            let rest = purl.strip_prefix("pkg:deb/")?;
            let arch = rest.split("arch=").nth(1)?.split('&').next()?.to_string();
            let s = |k: &str| p[k].as_str().unwrap_or_default().to_string();
            Some((s("name"), s("versionInfo"), arch, purl))
        })
        .collect()
}

use serde_json::Value;

#[test]
fn packages_and_purls_equal_syfts_on_a_real_dpkg_database() {
    let root = host_root();
    let ours: Value = serde_json::from_slice(&collect(root.path(), None, "k").to_spdx()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let theirs_path = out.path().join("syft.spdx.json");
    run_ok(
        Command::new(tool("syft"))
            .arg(format!("dir:{}", root.path().display()))
            .arg("-o")
            .arg(format!("spdx-json={}", theirs_path.display()))
            .arg("-q")
            .env("SYFT_CHECK_FOR_APP_UPDATE", "false"),
    );
    let theirs: Value = serde_json::from_slice(&fs::read(&theirs_path).unwrap()).unwrap();
    let (ours, theirs) = (debs(&ours), debs(&theirs));
    assert!(theirs.len() > 100, "syft found {} packages", theirs.len());
    let only_ours: Vec<_> = ours.difference(&theirs).take(10).collect();
    let only_theirs: Vec<_> = theirs.difference(&ours).take(10).collect();
    assert!(
        only_ours.is_empty() && only_theirs.is_empty(),
        "only ours: {only_ours:#?}\nonly syft's: {only_theirs:#?}"
    );
}

#[test]
fn spdx_passes_pyspdxtools_and_cyclonedx_its_schema() {
    let root = host_root();
    let sbom = collect(root.path(), None, "k");
    assert!(sbom
        .components
        .iter()
        .any(|c| c.licence.as_deref().is_some_and(|l| l.contains("LicenseRef-"))));
    let out = tempfile::tempdir().unwrap();
    sbom.write(&out.path().join("root"), out.path()).unwrap();
    run_ok(Command::new(tool("pyspdxtools")).arg("-i").arg(out.path().join(SPDX_FILE)));
    let script = "import sys\nfrom cyclonedx.validation.json import JsonStrictValidator\n\
from cyclonedx.schema import SchemaVersion\n\
err = JsonStrictValidator(SchemaVersion.V1_5).validate_str(open(sys.argv[1]).read())\n\
if err:\n    print(err)\n    sys.exit(1)\nprint('valid')\n";
    let said =
        run_ok(Command::new(tool("python3")).arg("-c").arg(script).arg(out.path().join(CDX_FILE)));
    assert!(said.contains("valid"), "{said}");
    // The oracles can fail: a broken document is refused by each.
    let mut doc: Value =
        serde_json::from_slice(&fs::read(out.path().join(SPDX_FILE)).unwrap()).unwrap();
    doc["packages"][1]["SPDXID"] = "not an id".into();
    fs::write(out.path().join("bad.spdx.json"), serde_json::to_vec(&doc).unwrap()).unwrap();
    let bad = Command::new(tool("pyspdxtools"))
        .arg("-i")
        .arg(out.path().join("bad.spdx.json"))
        .output()
        .unwrap();
    assert!(!bad.status.success(), "pyspdxtools accepted a bad SPDXID");
    let mut doc: Value =
        serde_json::from_slice(&fs::read(out.path().join(CDX_FILE)).unwrap()).unwrap();
    doc["components"][0]["hashes"] = serde_json::json!([{"alg": "SHA-257", "content": "0"}]);
    fs::write(out.path().join("bad.cdx.json"), serde_json::to_vec(&doc).unwrap()).unwrap();
    let bad = Command::new(tool("python3"))
        .arg("-c")
        .arg(script)
        .arg(out.path().join("bad.cdx.json"))
        .output()
        .unwrap();
    assert!(!bad.status.success(), "the CycloneDX schema accepted SHA-257");
}

#[test]
fn same_inputs_give_the_same_bytes_and_the_spdx_reads_back() {
    let root = host_root();
    let status = fs::read_to_string(root.path().join("var/lib/dpkg/status")).unwrap();
    let installed = dpkg::parse_status(&status, Path::new("status")).unwrap();
    let (a, b) = (&installed[0], &installed[installed.len() - 1]);
    let manifest = root.path().join("debs.sha256");
    let file = |p: &dpkg::DebPackage| {
        format!("{}_{}_{}.deb", p.name, p.version.replace(':', "%3a"), p.arch)
    };
    fs::write(
        &manifest,
        format!("{}  {}\n{}  {}\n", "1".repeat(64), file(a), "2".repeat(64), file(b)),
    )
    .unwrap();
    let one = collect(root.path(), Some(&manifest), "key-1");
    let two = collect(root.path(), Some(&manifest), "key-1");
    assert_eq!(one.to_spdx(), two.to_spdx());
    assert_eq!(one.to_cyclonedx(), two.to_cyclonedx());
    assert_ne!(collect(root.path(), Some(&manifest), "key-2").to_spdx(), one.to_spdx());
    let sha =
        |name: &str| one.components.iter().find(|c| c.name == name).and_then(|c| c.sha256.clone());
    assert_eq!(sha(&a.name), Some("1".repeat(64)));
    assert_eq!(sha(&b.name), Some("2".repeat(64)));
    // The agent and the crates it links are there, with versions; dev-dependencies are not.
    let crate_version = |n: &str| {
        one.components
            .iter()
            .find(|c| c.kind == Kind::Crate && c.name == n)
            .map(|c| c.version.clone().unwrap())
    };
    assert_eq!(crate_version("capstan-agent").as_deref(), Some(env!("CARGO_PKG_VERSION")));
    assert!(crate_version("rustls").is_some() && crate_version("ovf").is_some());
    let agent = one.components.iter().find(|c| c.name == "capstan-agent").unwrap();
    assert_eq!(agent.sha256, None, "no agent binary in this root: {agent:?}");
    let with_agent = tempfile::tempdir().unwrap();
    fs::create_dir_all(with_agent.path().join("usr/bin")).unwrap();
    fs::create_dir_all(with_agent.path().join("var/lib/dpkg")).unwrap();
    fs::write(with_agent.path().join("var/lib/dpkg/status"), "").unwrap();
    fs::write(with_agent.path().join("usr/bin/capstan-agent"), "agent").unwrap();
    let sbom = collect(with_agent.path(), None, "k");
    let agent = sbom.components.iter().find(|c| c.name == "capstan-agent").unwrap();
    let sum = crate::exec::output(
        Command::new("sha256sum").arg(with_agent.path().join("usr/bin/capstan-agent")),
    )
    .unwrap();
    assert_eq!(agent.sha256.as_deref(), sum.split_whitespace().next());
    assert_eq!(agent.detail.as_deref(), Some("/usr/bin/capstan-agent"));
    assert_eq!(Sbom::from_spdx(&sbom.to_spdx()).unwrap(), sbom);
    let rustls = one.components.iter().find(|c| c.name == "rustls").unwrap();
    assert!(rustls.licence.as_deref().is_some_and(|l| l.contains("Apache-2.0")), "{rustls:?}");
    assert!(rustls.sha256.as_deref().is_some_and(|s| s.len() == 64), "{rustls:?}");
    assert_eq!(crate_version("proptest"), None, "a dev-dependency of the agent is listed");
    assert_eq!(crate_version("serde_derive"), None, "a proc-macro is listed");
    // `capstan image sbom --format cyclonedx` converts the image's SPDX: the same document
    // the build wrote.
    let back = Sbom::from_spdx(&one.to_spdx()).unwrap();
    assert_eq!(back, one);
    assert_eq!(back.to_cyclonedx(), one.to_cyclonedx());
    assert!(String::from_utf8(one.to_spdx())
        .unwrap()
        .contains("\"created\": \"2023-11-14T22:13:20Z\""));
}

#[test]
fn spdx_read_back_names_what_is_wrong() {
    let err = |s: &str| Sbom::from_spdx(s.as_bytes()).unwrap_err().to_string();
    assert!(err("not json").starts_with("SPDX document: (document)"));
    assert!(err(r#"{"spdxVersion": "SPDX-2.2"}"#).contains("spdxVersion: not SPDX-2.3"));
    let ok = String::from_utf8(collect(host_root().path(), None, "k").to_spdx()).unwrap();
    let e = err(&ok.replace("2023-11-14T22:13:20Z", "2023-13-14T22:13:20Z"));
    assert!(e.contains("creationInfo.created"), "{e}");
    let e = err(&ok.replace("SPDXRef-deb-", "SPDXRef-evil-"));
    assert!(e.contains("SPDXID is not one capstan writes"), "{e}");
}

#[test]
fn purls_escape_as_syft_does() {
    let p = dpkg::DebPackage {
        name: "busybox-static".into(),
        version: "1:1.35.0-4+deb12u1+b1".into(),
        arch: "amd64".into(),
        source: Some(dpkg::Source {
            name: "busybox".into(),
            version: Some("1:1.35.0-4+deb12u1".into()),
        }),
    };
    assert_eq!(
        deb_purl(&p, "debian-12"),
        "pkg:deb/debian/busybox-static@1:1.35.0-4%2Bdeb12u1%2Bb1?arch=amd64&distro=debian-12\
&upstream=busybox%401:1.35.0-4%2Bdeb12u1"
    );
    assert_eq!(purl_escape("a b&c=d?e#f/g~h"), "a%20b%26c%3Dd%3Fe%23f%2Fg~h");
}

#[test]
fn dates_are_rfc3339_utc() {
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
}

#[test]
fn the_image_carries_the_spdx_and_it_reads_back_from_raw_and_qcow2() {
    use crate::builder::disk::{self, DiskIds, DiskSpec};
    let t = tempfile::tempdir().unwrap();
    let root = host_root();
    let sbom = collect(root.path(), None, "k");
    let tree = t.path().join("root");
    fs::create_dir_all(tree.join("usr/lib/systemd/boot/efi")).unwrap();
    fs::write(tree.join("usr/lib/systemd/boot/efi/systemd-bootx64.efi"), b"MZ not really").unwrap();
    sbom.write(&tree, t.path()).unwrap();
    fs::write(t.path().join("vmlinuz"), vec![0x4b; 1000]).unwrap();
    fs::write(t.path().join("initrd.img"), vec![0x1f; 1000]).unwrap();
    let spec = DiskSpec {
        root: &tree,
        vmlinuz: &t.path().join("vmlinuz"),
        initrd: &t.path().join("initrd.img"),
        cmdline: "quiet",
        title: "Capstan test 1.0",
        size_mib: 160,
        esp_mib: 40,
        epoch: 1_767_225_600,
        firmware: crate::firmware::Firmware::Efi,
        // /usr on its own partition: the reader finds /usr's files there.
        verity: true,
    };
    let raw = disk::run(&spec, &DiskIds::derive("sbom-test"), t.path()).unwrap();
    let qcow2 = t.path().join("disk.qcow2");
    crate::builder::outputs::qcow2(&raw, &qcow2).unwrap();
    let want = fs::read(t.path().join(SPDX_FILE)).unwrap();
    for image in [&raw, &qcow2] {
        let got = crate::check::read_image_file(image, &format!("/{IMAGE_PATH}")).unwrap();
        assert_eq!(got.as_deref(), Some(&want[..]), "{}", image.display());
    }
    assert_eq!(crate::check::read_image_file(&raw, "/usr/share/capstan/none.json").unwrap(), None);
    for hostile in ["usr/share/capstan/sbom.spdx.json", "/x\"\ndump /etc/shadow /tmp/s", "/a\nb"] {
        let e = crate::check::read_image_file(&raw, hostile).unwrap_err().to_string();
        assert!(e.contains("not an absolute path"), "{e}");
    }
}
