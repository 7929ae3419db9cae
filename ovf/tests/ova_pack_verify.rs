//! OVA writing and verification through the public API: what vCenter checks (descriptor
//! first, manifest second, exact manifest lines, ovf:size equal to the member) and a clear,
//! member-naming error for each way an archive can be wrong.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use ovf::manifest::{Algorithm, Manifest};
use ovf::ova::{self, OvaError, OvaFile, OvaOptions};
use ovf::vmdk::{self, WriteOptions};

const OVF: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData">
  <References>
    <File ovf:id="file1" ovf:href="node-disk1.vmdk" ovf:size="1"/>
    <File ovf:id="file2" ovf:href="notes.txt"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:capacity="8" ovf:capacityAllocationUnits="byte * 2^20" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <VirtualSystem ovf:id="node">
    <Info>A virtual machine</Info>
    <Name>node</Name>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemType>vmx-15</vssd:VirtualSystemType>
      </System>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"#;

struct Fixture {
    dir: tempfile::TempDir,
    ovf: PathBuf,
    disk: PathBuf,
    notes: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let ovf = dir.path().join("node.ovf");
    std::fs::write(&ovf, OVF).unwrap();
    let raw: Vec<u8> = (0..(8u32 << 20))
        .map(|i| if i % 3_000_000 < 200_000 { (i % 199) as u8 } else { 0 })
        .collect();
    let disk = dir.path().join("node-disk1.vmdk");
    let f = std::fs::File::create(&disk).unwrap();
    vmdk::write_stream_optimized(
        &raw[..],
        raw.len() as u64,
        f,
        &WriteOptions { extent_name: "node-disk1.vmdk".into(), ..WriteOptions::default() },
        &mut |_| {},
    )
    .unwrap();
    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, "release notes\n").unwrap();
    Fixture { dir, ovf, disk, notes }
}

fn pack_to(fx: &Fixture, files: &[PathBuf], name: &str) -> PathBuf {
    let out = fx.dir.path().join(name);
    let f = std::fs::File::create(&out).unwrap();
    ova::pack(
        &fx.ovf,
        files,
        f,
        &OvaOptions { mtime: 1_700_000_000, manifest: true },
        &mut |_, _| {},
    )
    .unwrap();
    out
}

fn tar_list(path: &Path) -> Vec<String> {
    let out = Command::new("tar").args(["-tf", path.to_str().unwrap()]).output().expect("GNU tar");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_string).collect()
}

/// Extracts `ova` with GNU tar into the fixture's `x/`.
fn extract(fx: &Fixture, ova: &Path) -> PathBuf {
    extract_into(fx, ova, "x")
}

/// Extracts `ova` with GNU tar into the fixture's `dir/`.
fn extract_into(fx: &Fixture, ova: &Path, dir: &str) -> PathBuf {
    let x = fx.dir.path().join(dir);
    std::fs::create_dir(&x).unwrap();
    let st = Command::new("tar")
        .args(["-xf", ova.to_str().unwrap(), "-C", x.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(st.success());
    x
}

#[test]
fn pack_orders_members_fills_sizes_and_verifies() {
    let fx = fixture();
    // The disk is given explicitly, notes.txt is found next to the descriptor.
    let ova_path = pack_to(&fx, std::slice::from_ref(&fx.disk), "node.ova");
    assert_eq!(tar_list(&ova_path), ["node.ovf", "node.mf", "node-disk1.vmdk", "notes.txt"]);

    let report = ova::verify_path(&ova_path).unwrap();
    assert_eq!(report.descriptor, "node.ovf");
    assert_eq!(report.manifest.as_deref(), Some("node.mf"));
    let names: Vec<_> = report.members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["node-disk1.vmdk", "notes.txt"]);
    assert!(report.members.iter().all(|m| m.checked_with == Some(Algorithm::Sha256)));

    // ovf:size is the real size (the stale "1" was replaced, the missing one added).
    let disk_size = std::fs::metadata(&fx.disk).unwrap().len();
    assert!(report.descriptor_xml.contains(&format!("ovf:size=\"{disk_size}\"")));
    assert!(report.descriptor_xml.contains("ovf:size=\"14\""));

    // The manifest is exactly `SHA256(name)= hex` lines, checked independently with sha256sum.
    let x = extract(&fx, &ova_path);
    let mf = std::fs::read_to_string(x.join("node.mf")).unwrap();
    let lines: Vec<&str> = mf.lines().collect();
    assert_eq!(lines.len(), 3);
    for (line, name) in lines.iter().zip(["node.ovf", "node-disk1.vmdk", "notes.txt"]) {
        let sum = Command::new("sha256sum").arg(x.join(name)).output().unwrap();
        let hex = String::from_utf8(sum.stdout).unwrap().split(' ').next().unwrap().to_string();
        assert_eq!(*line, format!("SHA256({name})= {hex}"));
    }
    assert!(mf.ends_with('\n') && !mf.contains('\r'));
    // The extracted disk is still a good VMDK.
    let st = Command::new("qemu-img")
        .args(["check", x.join("node-disk1.vmdk").to_str().unwrap()])
        .status()
        .expect("qemu-img is required");
    assert!(st.success());
}

#[test]
fn packing_is_deterministic() {
    let fx = fixture();
    let a = std::fs::read(pack_to(&fx, &[], "a.ova")).unwrap();
    let b = std::fs::read(pack_to(&fx, &[], "b.ova")).unwrap();
    assert!(a == b, "two packs of the same inputs differ");
    // ustar header of the first member: mode 0644, uid/gid 0, our mtime.
    assert_eq!(&a[100..107], b"0000644");
    assert_eq!(&a[108..115], b"0000000");
    assert_eq!(&a[136..147], format!("{:011o}", 1_700_000_000).as_bytes());
    assert_eq!(&a[257..263], b"ustar\0");
}

#[test]
fn pack_errors_name_the_file() {
    let fx = fixture();
    std::fs::remove_file(&fx.notes).unwrap();
    let out = fx.dir.path().join("x.ova");
    let e = ova::pack(
        &fx.ovf,
        &[],
        std::fs::File::create(&out).unwrap(),
        &OvaOptions::default(),
        &mut |_, _| {},
    )
    .unwrap_err();
    assert!(matches!(e, OvaError::FileNotFound { ref name, .. } if name == "notes.txt"), "{e}");
    let stray = fx.dir.path().join("stray.iso");
    std::fs::write(&stray, "x").unwrap();
    std::fs::write(&fx.notes, "n").unwrap();
    let e = ova::pack(
        &fx.ovf,
        &[stray],
        std::fs::File::create(&out).unwrap(),
        &OvaOptions::default(),
        &mut |_, _| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("stray.iso: not referenced"), "{e}");
}

/// Writes an archive by hand-picking members, for the negative cases.
fn custom_ova(
    dir: &Path,
    name: &str,
    ovf: &str,
    mf: Option<&str>,
    files: &[(&str, &[u8])],
) -> PathBuf {
    let mut written = Vec::new();
    for (n, data) in files {
        let p = dir.join(format!("src-{n}"));
        std::fs::write(&p, data).unwrap();
        written.push(OvaFile::new(*n, p));
    }
    let path = dir.join(name);
    let mut out = std::fs::File::create(&path).unwrap();
    if let Some(mf) = mf {
        // Our own manifest off, a hand-written one as the second member.
        let mf_path = dir.join("node.mf");
        std::fs::write(&mf_path, mf).unwrap();
        let mut all = vec![OvaFile::new("node.mf", mf_path)];
        all.extend(written);
        ova::write_ova(
            &mut out,
            "node.ovf",
            ovf,
            &all,
            &OvaOptions { manifest: false, mtime: 0 },
            &mut |_, _| {},
        )
        .unwrap();
    } else {
        ova::write_ova(&mut out, "node.ovf", ovf, &written, &OvaOptions::default(), &mut |_, _| {})
            .unwrap();
    }
    out.flush().unwrap();
    path
}

fn simple_ovf(size: Option<u64>) -> String {
    let size = size.map(|s| format!(" ovf:size=\"{s}\"")).unwrap_or_default();
    format!(
        r#"<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"><References><File ovf:id="f" ovf:href="disk.img"{size}/></References><VirtualSystem ovf:id="v"><Info>x</Info></VirtualSystem></Envelope>"#
    )
}

fn verify_err(path: &Path) -> (OvaError, String) {
    let e = ova::verify_path(path).unwrap_err();
    let s = e.to_string();
    (e, s)
}

#[test]
fn verify_rejects_tampered_missing_resized_extra_and_misplaced_members() {
    let dir = tempfile::tempdir().unwrap();
    let ovf = simple_ovf(Some(4));
    let ok = custom_ova(dir.path(), "ok.ova", &ovf, None, &[("disk.img", b"DATA")]);
    ova::verify_path(&ok).unwrap();

    // Tampered: flip one byte of disk.img's data inside the archive.
    let mut bytes = std::fs::read(&ok).unwrap();
    let pos = bytes.windows(4).rposition(|w| w == b"DATA").unwrap();
    bytes[pos] = b'X';
    let tampered = dir.path().join("tampered.ova");
    std::fs::write(&tampered, &bytes).unwrap();
    let (e, s) = verify_err(&tampered);
    assert!(matches!(e, OvaError::DigestMismatch { ref name, .. } if name == "disk.img"), "{s}");
    assert!(s.contains("disk.img") && s.contains("SHA256"), "{s}");

    // Missing: the descriptor references disk.img but the archive lacks it.
    let missing = custom_ova(dir.path(), "missing.ova", &ovf, None, &[]);
    let (e, s) = verify_err(&missing);
    assert!(matches!(e, OvaError::Missing { ref name, .. } if name == "disk.img"), "{s}");

    // Wrong ovf:size.
    let resized =
        custom_ova(dir.path(), "resized.ova", &simple_ovf(Some(5)), None, &[("disk.img", b"DATA")]);
    let (e, s) = verify_err(&resized);
    assert!(matches!(e, OvaError::SizeMismatch { declared: 5, actual: 4, .. }), "{s}");
    assert!(s.contains("disk.img") && s.contains("ovf:size"), "{s}");

    // A member nobody references.
    let extra = custom_ova(
        dir.path(),
        "extra.ova",
        &ovf,
        None,
        &[("disk.img", b"DATA"), ("evil.sh", b"x")],
    );
    let (_, s) = verify_err(&extra);
    assert!(s.contains("evil.sh") && s.contains("not referenced"), "{s}");

    // The manifest lists a file the archive lacks / lacks a file the archive has.
    let sha = |d: &[u8]| hex::encode(ovf::manifest::digest(Algorithm::Sha256, d).unwrap());
    let mf = format!(
        "SHA256(node.ovf)= {}\nSHA256(disk.img)= {}\nSHA256(gone.iso)= {}\n",
        sha(ovf.as_bytes()),
        sha(b"DATA"),
        sha(b"")
    );
    let p = custom_ova(dir.path(), "mfextra.ova", &ovf, Some(&mf), &[("disk.img", b"DATA")]);
    let (_, s) = verify_err(&p);
    assert!(s.contains("gone.iso") && s.contains("manifest"), "{s}");
    let mf = format!("SHA256(node.ovf)= {}\n", sha(ovf.as_bytes()));
    let p = custom_ova(dir.path(), "mfshort.ova", &ovf, Some(&mf), &[("disk.img", b"DATA")]);
    let (_, s) = verify_err(&p);
    assert!(s.contains("disk.img") && s.contains("not listed in the manifest"), "{s}");
    // A tampered descriptor is caught by its manifest line.
    let mf = format!("SHA256(node.ovf)= {}\nSHA256(disk.img)= {}\n", sha(b"other"), sha(b"DATA"));
    let p = custom_ova(dir.path(), "ovfbad.ova", &ovf, Some(&mf), &[("disk.img", b"DATA")]);
    let (_, s) = verify_err(&p);
    assert!(s.contains("node.ovf") && s.contains("does not match"), "{s}");
    // A malformed manifest line is reported with its line number.
    let mf = format!("SHA256(node.ovf)={}\n", sha(ovf.as_bytes()));
    let p = custom_ova(dir.path(), "mfsyntax.ova", &ovf, Some(&mf), &[("disk.img", b"DATA")]);
    let e = ova::verify_path(&p).unwrap_err();
    let chain = format!("{e}: {}", std::error::Error::source(&e).unwrap());
    assert!(chain.contains("node.mf") && chain.contains("line 1"), "{chain}");
}

#[test]
fn verify_rejects_bad_structure() {
    let dir = tempfile::tempdir().unwrap();
    // The descriptor is not first.
    let p = dir.path().join("order.tar");
    std::fs::write(dir.path().join("b.vmdk"), "x").unwrap();
    std::fs::write(dir.path().join("a.ovf"), simple_ovf(None)).unwrap();
    let st = Command::new("tar")
        .current_dir(dir.path())
        .args(["-cf", "order.tar", "b.vmdk", "a.ovf"])
        .status()
        .expect("GNU tar");
    assert!(st.success());
    let (e, s) = verify_err(&p);
    assert!(matches!(e, OvaError::FirstNotOvf { name: Some(ref n) } if n == "b.vmdk"), "{s}");

    // Empty and truncated archives.
    let empty = dir.path().join("empty.ova");
    std::fs::write(&empty, b"").unwrap();
    assert!(verify_err(&empty).1.contains("found nothing"));
    let ok =
        custom_ova(dir.path(), "ok.ova", &simple_ovf(None), None, &[("disk.img", &[7u8; 3000])]);
    let bytes = std::fs::read(&ok).unwrap();
    let cut = dir.path().join("cut.ova");
    std::fs::write(&cut, &bytes[..bytes.len() - 1024 - 1500]).unwrap();
    let (_, s) = verify_err(&cut);
    assert!(s.contains("truncated"), "{s}");

    // A descriptor that is not XML names the member.
    let bad = custom_ova(dir.path(), "badxml.ova", "<Envelope", None, &[]);
    let (_, s) = verify_err(&bad);
    assert!(s.contains("node.ovf") && s.contains("descriptor"), "{s}");
}

#[test]
fn manifest_written_by_write_ova_parses_back() {
    let fx = fixture();
    let mut buf = Vec::new();
    let files = [OvaFile::new("node-disk1.vmdk", &fx.disk), OvaFile::new("notes.txt", &fx.notes)];
    let s =
        ova::write_ova(&mut buf, "node.ovf", OVF, &files, &OvaOptions::default(), &mut |_, _| {})
            .unwrap();
    assert_eq!(s.written, buf.len() as u64);
    assert_eq!(buf.len() % 512, 0);
    let m = Manifest::parse(&s.manifest).unwrap();
    assert_eq!(m.entries.len(), 3);
    // Precomputed digests are used as given (and a wrong one is then caught by verify).
    let files = [
        OvaFile { sha256: Some(vec![0u8; 32]), ..OvaFile::new("node-disk1.vmdk", &fx.disk) },
        OvaFile::new("notes.txt", &fx.notes),
    ];
    let mut buf = Vec::new();
    ova::write_ova(&mut buf, "node.ovf", OVF, &files, &OvaOptions::default(), &mut |_, _| {})
        .unwrap();
    // OVF here has a stale ovf:size="1": verification reports that first.
    let e = ova::verify(&buf[..]).unwrap_err();
    assert!(matches!(e, OvaError::SizeMismatch { declared: 1, .. }), "{e}");
}

#[test]
fn verify_walks_vmdk_members_and_names_a_corrupt_disk() {
    let fx = fixture();
    // Corrupt a grain of the disk *before* packing: the manifest then matches the bad bytes,
    // and only the VMDK walk can tell.
    let mut disk = std::fs::read(&fx.disk).unwrap();
    for b in &mut disk[65536 + 40..65536 + 400] {
        *b ^= 0x5a;
    }
    std::fs::write(&fx.disk, &disk).unwrap();
    let ova_path = pack_to(&fx, &[], "corrupt.ova");
    let e = ova::verify_path(&ova_path).unwrap_err();
    assert!(matches!(e, OvaError::Vmdk { ref name, .. } if name == "node-disk1.vmdk"), "{e}");
    let cause = std::error::Error::source(&e).unwrap().to_string();
    assert!(cause.contains("grain"), "{cause}");

    // A member named .vmdk that is not a VMDK at all.
    let dir = tempfile::tempdir().unwrap();
    let ovf = simple_ovf(None).replace("disk.img", "disk.vmdk");
    let p = custom_ova(dir.path(), "fake.ova", &ovf, None, &[("disk.vmdk", b"not a disk")]);
    let (_, s) = verify_err(&p);
    assert!(s.contains("disk.vmdk") && s.contains("VMDK"), "{s}");
}

/// The SHA-256 of `pack_to(fixture, [disk, notes])` as written before signatures existed
/// (computed with the tree at b0eb986): an OVA without a signer stays byte-identical.
const UNSIGNED_PACK_SHA256: &str =
    "fada1dc312af231ed73cc108d5f6169b69a3af81136cb4c072f211c20292f18e";

fn sha256_file(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().expect("sha256sum");
    String::from_utf8(out.stdout).unwrap().split(' ').next().unwrap().to_string()
}

#[test]
fn an_unsigned_ova_is_byte_identical_to_before_signatures() {
    let fx = fixture();
    let path = pack_to(&fx, &[fx.disk.clone(), fx.notes.clone()], "node.ova");
    assert_eq!(sha256_file(&path), UNSIGNED_PACK_SHA256);
}

/// Signs like ovftool's certificate file: the manifest's digest line, then a (fake) PEM block.
/// Not a real signature: what is tested here is where the member goes and what it is made from.
struct LineSigner;

impl ova::Signer for LineSigner {
    fn certificate(
        &self,
        mf_name: &str,
        manifest: &[u8],
    ) -> Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>> {
        let digest = ovf::manifest::digest(Algorithm::Sha256, manifest).unwrap();
        Ok(format!(
            "SHA256({mf_name})= {}\n-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
            hex_lower(&digest)
        )
        .into_bytes())
    }
}

fn hex_lower(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn write_to(fx: &Fixture, name: &str, signer: Option<&dyn ova::Signer>) -> PathBuf {
    let env = ovf::descriptor::Envelope::from_bytes(OVF.as_bytes()).unwrap();
    let mut env = env;
    for f in &mut env.references.as_mut().unwrap().files {
        let p = if f.href == "notes.txt" { &fx.notes } else { &fx.disk };
        f.size = Some(std::fs::metadata(p).unwrap().len());
    }
    let xml = env.to_xml();
    let files = [OvaFile::new("node-disk1.vmdk", &fx.disk), OvaFile::new("notes.txt", &fx.notes)];
    let opts = OvaOptions { mtime: 1_700_000_000, manifest: true };
    let path = fx.dir.path().join(name);
    let out = std::fs::File::create(&path).unwrap();
    match signer {
        Some(s) => ova::write_signed_ova(out, "node.ovf", &xml, &files, &opts, s, &mut |_, _| {}),
        None => ova::write_ova(out, "node.ovf", &xml, &files, &opts, &mut |_, _| {}),
    }
    .unwrap();
    path
}

#[test]
fn a_signed_ova_has_the_cert_right_after_the_manifest_and_verifies() {
    let fx = fixture();
    let signed = write_to(&fx, "signed.ova", Some(&LineSigner));
    assert_eq!(
        tar_list(&signed),
        ["node.ovf", "node.mf", "node.cert", "node-disk1.vmdk", "notes.txt"]
    );

    // The signer saw the manifest exactly as archived.
    let x = extract(&fx, &signed);
    let cert = std::fs::read_to_string(x.join("node.cert")).unwrap();
    assert!(cert.starts_with(&format!("SHA256(node.mf)= {}\n", sha256_file(&x.join("node.mf")))));
    // The manifest does not list the certificate (it signs the manifest, not the other way).
    assert!(!std::fs::read_to_string(x.join("node.mf")).unwrap().contains("node.cert"));

    let report = ova::verify_path(&signed).unwrap();
    assert_eq!(report.certificate.as_deref(), Some("node.cert"));
    assert_eq!(report.certificate_data.as_deref(), Some(cert.as_bytes()));
    let names: Vec<_> = report.members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["node-disk1.vmdk", "notes.txt"]);

    // Without a signer: the same archive minus the certificate member, and nothing to report.
    let unsigned = write_to(&fx, "unsigned.ova", None);
    assert_eq!(tar_list(&unsigned), ["node.ovf", "node.mf", "node-disk1.vmdk", "notes.txt"]);
    let report = ova::verify_path(&unsigned).unwrap();
    assert_eq!((report.certificate, report.certificate_data), (None, None));
}

#[test]
fn signing_errors_name_the_cert_member() {
    struct Failing;
    impl ova::Signer for Failing {
        fn certificate(
            &self,
            _: &str,
            _: &[u8],
        ) -> Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>> {
            Err("the key is locked".into())
        }
    }
    let fx = fixture();
    let files = [OvaFile::new("node-disk1.vmdk", &fx.disk)];
    let run = |signer: &dyn ova::Signer, opts: &OvaOptions, files: &[OvaFile]| {
        ova::write_signed_ova(Vec::new(), "node.ovf", OVF, files, opts, signer, &mut |_, _| {})
            .unwrap_err()
    };
    let e = run(&Failing, &OvaOptions::default(), &files);
    assert!(matches!(e, OvaError::Sign { ref name, .. } if name == "node.cert"), "{e:?}");
    assert_eq!(e.to_string(), "member node.cert: signing the manifest failed");
    assert_eq!(std::error::Error::source(&e).unwrap().to_string(), "the key is locked");

    let no_mf = OvaOptions { manifest: false, mtime: 0 };
    let e = run(&LineSigner, &no_mf, &files);
    assert!(matches!(e, OvaError::SignatureWithoutManifest { ref name } if name == "node.cert"));

    // A file named like the certificate would make two members of one name.
    let clash = [OvaFile::new("node.cert", &fx.notes)];
    let e = run(&LineSigner, &OvaOptions::default(), &clash);
    assert!(matches!(e, OvaError::Duplicate { ref name } if name == "node.cert"), "{e:?}");
}

#[test]
fn verify_refuses_an_oversized_or_misplaced_cert() {
    let dir = tempfile::tempdir().unwrap();
    let disk = b"disk bytes".as_slice();
    let ovf = simple_ovf(Some(disk.len() as u64));
    // Too large to be a certificate: refused by name before it is read.
    let big = vec![b'x'; ova::MAX_CERT_BYTES as usize + 1];
    let mf = format!(
        "SHA256(node.ovf)= {}\nSHA256(disk.img)= {}\n",
        hex_lower(&ovf::manifest::digest(Algorithm::Sha256, ovf.as_bytes()).unwrap()),
        hex_lower(&ovf::manifest::digest(Algorithm::Sha256, disk).unwrap())
    );
    let p = custom_ova(
        dir.path(),
        "big.ova",
        &ovf,
        Some(&mf),
        &[("node.cert", &big), ("disk.img", disk)],
    );
    let (e, _) = verify_err(&p);
    assert!(matches!(e, OvaError::TooLarge { ref name, .. } if name == "node.cert"), "{e:?}");
    // After the files it is just a member the descriptor does not reference.
    let p = custom_ova(
        dir.path(),
        "late.ova",
        &ovf,
        Some(&mf),
        &[("disk.img", disk), ("node.cert", b"c")],
    );
    let (e, _) = verify_err(&p);
    assert!(matches!(e, OvaError::Unreferenced { ref name } if name == "node.cert"), "{e:?}");
    // Right after the manifest it must parse as a certificate file naming the manifest...
    let p = custom_ova(
        dir.path(),
        "junk.ova",
        &ovf,
        Some(&mf),
        &[("node.cert", b"c"), ("disk.img", disk)],
    );
    let (e, _) = verify_err(&p);
    assert!(matches!(e, OvaError::Certificate { ref name, .. } if name == "node.cert"), "{e:?}");
    let other =
        b"SHA256(other.mf)= 00\n-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    let p = custom_ova(
        dir.path(),
        "other.ova",
        &ovf,
        Some(&mf),
        &[("node.cert", other), ("disk.img", disk)],
    );
    let (e, _) = verify_err(&p);
    assert_eq!(
        e.to_string(),
        "member node.cert: signs other.mf, but the archive's manifest is node.mf"
    );
    // ...and then it is accepted and returned (its signature is the caller's to check).
    let good =
        b"SHA256(node.mf)= 00\n-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    let p = custom_ova(
        dir.path(),
        "ok.ova",
        &ovf,
        Some(&mf),
        &[("node.cert", good), ("disk.img", disk)],
    );
    let r = ova::verify_path(&p).unwrap();
    assert_eq!(r.certificate_data.as_deref(), Some(&good[..]));
    assert_eq!(r.manifest_data.as_deref(), Some(mf.as_bytes()));
}

#[test]
fn signing_an_unsigned_ova_gives_the_bytes_of_writing_it_signed() {
    let fx = fixture();
    let unsigned = write_to(&fx, "unsigned.ova", None);
    let direct = write_to(&fx, "direct.ova", Some(&LineSigner));
    let out = fx.dir.path().join("resigned.ova");
    let summary = ova::sign_ova(
        &unsigned,
        std::fs::File::create(&out).unwrap(),
        &LineSigner,
        None,
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(sha256_file(&out), sha256_file(&direct));
    assert_eq!((summary.certificate.as_str(), summary.replaced_certificate), ("node.cert", false));
    assert_eq!(
        summary.files.iter().map(|f| f.0.as_str()).collect::<Vec<_>>(),
        ["node-disk1.vmdk", "notes.txt"]
    );
    // Signing the signed one again replaces its .cert and changes nothing else.
    let again = fx.dir.path().join("again.ova");
    let s = ova::sign_ova(
        &out,
        std::fs::File::create(&again).unwrap(),
        &LineSigner,
        None,
        &mut |_, _| {},
    )
    .unwrap();
    assert!(s.replaced_certificate);
    assert_eq!(sha256_file(&again), sha256_file(&direct));
    // Another mtime: other tar headers, the same member bytes.
    let later = fx.dir.path().join("later.ova");
    ova::sign_ova(
        &unsigned,
        std::fs::File::create(&later).unwrap(),
        &LineSigner,
        Some(5),
        &mut |_, _| {},
    )
    .unwrap();
    assert_ne!(sha256_file(&later), sha256_file(&direct));
    let (a, b) = (extract_into(&fx, &later, "later"), extract_into(&fx, &direct, "direct"));
    for name in ["node.ovf", "node.mf", "node.cert", "node-disk1.vmdk", "notes.txt"] {
        assert_eq!(sha256_file(&a.join(name)), sha256_file(&b.join(name)), "{name}");
    }
    // A broken input is refused before anything is written.
    let broken = fx.dir.path().join("broken.ova");
    let mut bytes = std::fs::read(&unsigned).unwrap();
    let n = bytes.len();
    bytes[n - 2000] ^= 1;
    std::fs::write(&broken, bytes).unwrap();
    let mut sink = Vec::new();
    assert!(ova::sign_ova(&broken, &mut sink, &LineSigner, None, &mut |_, _| {}).is_err());
    assert!(sink.is_empty());
}

#[test]
fn verify_with_checks_the_archived_manifest_before_the_members() {
    let fx = fixture();
    let signed = write_to(&fx, "signed.ova", Some(&LineSigner));
    let x = extract(&fx, &signed);
    let mf = std::fs::read(x.join("node.mf")).unwrap();
    let mut seen = None;
    let open = || std::fs::File::open(&signed).unwrap();
    ova::verify_with(open(), &mut |s| {
        seen = Some((
            s.manifest_name.to_string(),
            s.manifest.to_vec(),
            s.certificate_name.to_string(),
        ));
        Ok(())
    })
    .unwrap();
    assert_eq!(seen, Some(("node.mf".to_string(), mf, "node.cert".to_string())));
    let e =
        ova::verify_with(open(), &mut |_| Err(ova::Rejection::Signature("no".into()))).unwrap_err();
    assert_eq!(
        e.to_string(),
        "member node.mf: the signature in node.cert does not verify over it (the manifest or the signature changed after signing)"
    );
    let e = ova::verify_with(open(), &mut |_| Err(ova::Rejection::Certificate("bad".into())))
        .unwrap_err();
    assert_eq!(e.to_string(), "member node.cert: unusable signing certificate");
    // An unsigned OVA never calls the check.
    let unsigned = write_to(&fx, "unsigned.ova", None);
    ova::verify_with(std::fs::File::open(&unsigned).unwrap(), &mut |_| panic!("called")).unwrap();
}
