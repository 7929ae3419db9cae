//! `capstan ova sign` and `capstan ova verify` against OpenSSL: every key, certificate and
//! chain here is made by the `openssl` command line (`req`, `x509`, `ca` for back-dated
//! validity), and OpenSSL checks our signature (`dgst -sha256 -verify`) and coreutils our
//! manifest (`sha256sum -c`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn capstan(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_capstan")).args(args).output().expect("run capstan")
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn openssl(dir: &Path, args: &[&str]) -> String {
    run(Command::new("openssl").current_dir(dir).args(args))
}

fn sha256(path: &Path) -> String {
    run(Command::new("sha256sum").arg(path)).split_whitespace().next().unwrap().to_string()
}

const EXT: &str = "\
[v3_ca]
basicConstraints=critical,CA:TRUE
keyUsage=critical,keyCertSign,cRLSign
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
[v3_leaf]
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=codeSigning
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
";

/// A root CA, an intermediate, and certificates made with them, in a temp dir.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let pki = Pki { dir: tempfile::tempdir().unwrap() };
        std::fs::write(pki.path("v3.ext"), EXT).unwrap();
        pki.self_signed("root", "/CN=Test Root CA");
        pki.self_signed("other", "/CN=Some Other CA");
        // Long-lived, as a real intermediate is: it outlives the signers made below.
        pki.issue(
            "int",
            "/CN=Test Intermediate",
            "root",
            "v3_ca",
            Some(("20190101000000Z", "20450101000000Z")),
        );
        pki.issue("signer", "/O=Capstan/CN=Capstan Release Signing", "int", "v3_leaf", None);
        pki.concat("chain.pem", &["signer.pem", "int.pem"]);
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn key(&self, name: &str, bits: u32) {
        openssl(
            self.dir.path(),
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                &format!("rsa_keygen_bits:{bits}"),
                "-out",
                &format!("{name}.key"),
            ],
        );
    }

    fn self_signed(&self, name: &str, subject: &str) {
        self.key(name, 2048);
        openssl(
            self.dir.path(),
            &[
                "req",
                "-x509",
                "-key",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.pem"),
                "-days",
                "30",
                "-subj",
                subject,
            ],
        );
    }

    /// `name.key` and `name.pem` issued by `ca` with the `ext` section; `dates` back-dates
    /// or post-dates the validity through `openssl ca -startdate/-enddate`.
    fn issue(&self, name: &str, subject: &str, ca: &str, ext: &str, dates: Option<(&str, &str)>) {
        self.key(name, 2048);
        let d = self.dir.path();
        let (key, csr, pem) = (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"));
        openssl(d, &["req", "-new", "-key", &key, "-out", &csr, "-subj", subject]);
        let (cacert, cakey) = (format!("{ca}.pem"), format!("{ca}.key"));
        match dates {
            None => {
                openssl(
                    d,
                    &[
                        "x509",
                        "-req",
                        "-in",
                        &csr,
                        "-CA",
                        &cacert,
                        "-CAkey",
                        &cakey,
                        "-CAcreateserial",
                        "-out",
                        &pem,
                        "-days",
                        "30",
                        "-extfile",
                        "v3.ext",
                        "-extensions",
                        ext,
                    ],
                );
            }
            Some((start, end)) => {
                let db = self.path(&format!("{name}.db"));
                std::fs::write(&db, "").unwrap();
                let conf = format!(
                    "[ca]\ndefault_ca=c\n[c]\ndatabase={}\nnew_certs_dir={}\nserial={}\ndefault_md=sha256\npolicy=p\nunique_subject=no\n[p]\ncommonName=supplied\n",
                    db.display(),
                    d.display(),
                    self.path(&format!("{name}.srl")).display()
                );
                std::fs::write(self.path(&format!("{name}.srl")), "1000\n").unwrap();
                std::fs::write(self.path(&format!("{name}.cnf")), conf + EXT).unwrap();
                openssl(
                    d,
                    &[
                        "ca",
                        "-batch",
                        "-config",
                        &format!("{name}.cnf"),
                        "-cert",
                        &cacert,
                        "-keyfile",
                        &cakey,
                        "-in",
                        &csr,
                        "-out",
                        &pem,
                        "-startdate",
                        start,
                        "-enddate",
                        end,
                        "-extensions",
                        ext,
                        "-notext",
                    ],
                );
            }
        }
    }

    fn concat(&self, out: &str, parts: &[&str]) {
        let text: String =
            parts.iter().map(|f| std::fs::read_to_string(self.path(f)).unwrap()).collect();
        std::fs::write(self.path(out), text).unwrap();
    }

    /// A small unsigned OVA (`capstan vmdk convert` + `capstan ova pack`).
    fn ova(&self) -> PathBuf {
        let raw = self.path("app.raw");
        let data: Vec<u8> =
            (0..3u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        std::fs::write(&raw, data).unwrap();
        let out = capstan(&["vmdk", "convert", p(&raw), p(&self.path("app-disk1.vmdk"))]);
        assert!(out.status.success(), "{out:?}");
        std::fs::write(self.path("app.ovf"), DESCRIPTOR).unwrap();
        let ova = self.path("app.ova");
        let out = capstan(&[
            "ova",
            "pack",
            "--ovf",
            p(&self.path("app.ovf")),
            "-o",
            p(&ova),
            "--mtime",
            "1700000000",
        ]);
        assert!(out.status.success(), "{out:?}");
        ova
    }

    fn sign(&self, ova: &Path, key: &str, cert: &str, out: &str) -> Output {
        capstan(&[
            "ova",
            "sign",
            p(ova),
            "--key",
            p(&self.path(key)),
            "--cert",
            p(&self.path(cert)),
            "-o",
            p(&self.path(out)),
        ])
    }

    fn signed(&self, key: &str, cert: &str, out: &str) -> PathBuf {
        let ova = self.ova();
        let o = self.sign(&ova, key, cert, out);
        assert!(o.status.success(), "{o:?}");
        self.path(out)
    }

    /// The members of `ova` extracted into a fresh directory `into`, with their order.
    fn extract(&self, ova: &Path, into: &str) -> (PathBuf, Vec<String>) {
        let dir = self.path(into);
        std::fs::create_dir_all(&dir).unwrap();
        run(Command::new("tar").arg("-xf").arg(ova).arg("-C").arg(&dir));
        let list = run(Command::new("tar").arg("-tf").arg(ova));
        (dir, list.lines().map(str::to_string).collect())
    }
}

const DESCRIPTOR: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
  <References>
    <File ovf:id="file1" ovf:href="app-disk1.vmdk"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:capacity="3" ovf:capacityAllocationUnits="byte * 2^20" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <VirtualSystem ovf:id="app">
    <Info>A virtual machine</Info>
  </VirtualSystem>
</Envelope>
"#;

fn verify(ova: &Path, extra: &[&str]) -> (Option<i32>, String, String) {
    let mut args = vec!["ova", "verify", p(ova)];
    args.extend_from_slice(extra);
    let out = capstan(&args);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn openssl_verifies_the_signature_and_sha256sum_every_manifest_line() {
    let pki = Pki::new();
    let signed = pki.signed("signer.key", "chain.pem", "signed.ova");
    let (x, order) = pki.extract(&signed, "x");
    assert_eq!(order, ["app.ovf", "app.mf", "app.cert", "app-disk1.vmdk"]);

    let cert = std::fs::read_to_string(x.join("app.cert")).unwrap();
    let first = cert.lines().next().unwrap();
    let hex_sig = first.strip_prefix("SHA256(app.mf)= ").expect(first);
    assert!(!cert.contains("SHA2-256"), "{cert}");
    assert_eq!(hex_sig.len(), 512, "a 2048-bit signature in lowercase hex");
    assert!(hex_sig.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    std::fs::write(x.join("sig.bin"), hex::decode(hex_sig).unwrap()).unwrap();
    // The .cert's own certificates: the signer's, then the intermediate, as given.
    let pem_part = &cert[first.len() + 1..];
    assert_eq!(pem_part, std::fs::read_to_string(pki.path("chain.pem")).unwrap());
    std::fs::write(x.join("leaf.pem"), pem_part).unwrap();
    let pubkey = openssl(&x, &["x509", "-in", "leaf.pem", "-pubkey", "-noout"]);
    std::fs::write(x.join("pub.pem"), pubkey).unwrap();
    let ok =
        openssl(&x, &["dgst", "-sha256", "-verify", "pub.pem", "-signature", "sig.bin", "app.mf"]);
    assert_eq!(ok.trim(), "Verified OK");

    let mf = std::fs::read_to_string(x.join("app.mf")).unwrap();
    let sums: String = mf
        .lines()
        .map(|l| {
            let (name, digest) = l.strip_prefix("SHA256(").unwrap().split_once(")= ").unwrap();
            format!("{digest}  {name}\n")
        })
        .collect();
    assert_eq!(sums.lines().count(), 2, "{mf}");
    std::fs::write(x.join("SHA256SUMS"), sums).unwrap();
    run(Command::new("sha256sum").current_dir(&x).args(["-c", "--strict", "SHA256SUMS"]));

    // The disk member is byte for byte the unsigned OVA's.
    let (u, _) = pki.extract(&pki.path("app.ova"), "u");
    assert_eq!(sha256(&u.join("app-disk1.vmdk")), sha256(&x.join("app-disk1.vmdk")));
    assert_eq!(sha256(&pki.path("app-disk1.vmdk")), sha256(&x.join("app-disk1.vmdk")));

    // OpenSSL's word against a signature over other bytes: the oracle can fail.
    std::fs::write(x.join("other.mf"), mf.replace("SHA256(app.ovf)", "SHA256(app.OVF)")).unwrap();
    let out = Command::new("openssl")
        .current_dir(&x)
        .args(["dgst", "-sha256", "-verify", "pub.pem", "-signature", "sig.bin", "other.mf"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn a_chain_to_the_root_is_trusted_and_one_to_another_ca_is_not() {
    let pki = Pki::new();
    let signed = pki.signed("signer.key", "chain.pem", "signed.ova");
    let (code, out, err) = verify(&signed, &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    for want in [
        "signer       O=Capstan, CN=Capstan Release Signing",
        "issuer       CN=Test Intermediate",
        "self-signed  no",
        "chain        CN=Test Intermediate (issuer CN=Test Root CA",
        "trust        not checked",
    ] {
        assert!(out.contains(want), "{want}: {out}");
    }
    // Validity as OpenSSL reads it.
    let end = openssl(
        pki.dir.path(),
        &["x509", "-in", "signer.pem", "-noout", "-enddate", "-dateopt", "iso_8601"],
    );
    let end = end.trim().strip_prefix("notAfter=").unwrap().replace(' ', "T");
    assert!(out.contains(&format!("not after    {end}")), "{end}: {out}");
    let fp = openssl(
        pki.dir.path(),
        &["x509", "-in", "signer.pem", "-noout", "-fingerprint", "-sha256"],
    );
    let fp = fp.trim().rsplit('=').next().unwrap().replace(':', "").to_lowercase();
    assert!(out.contains(&fp), "{fp}: {out}");

    let (code, out, err) = verify(&signed, &["--trust", p(&pki.path("root.pem"))]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("trusted: chains to a certificate in"), "{out}");

    let (code, out, err) = verify(&signed, &["--trust", p(&pki.path("other.pem"))]);
    assert_eq!(code, Some(3), "{out}{err}");
    assert!(out.contains("untrusted: no chain to a certificate in"), "{out}");
    assert!(err.contains("the signer is not trusted: untrusted:"), "{err}");

    // Without the intermediate in the .cert, there is no path to the root either.
    let leaf_only = pki.signed("signer.key", "signer.pem", "leaf-only.ova");
    let (code, _, err) = verify(&leaf_only, &["--trust", p(&pki.path("root.pem"))]);
    assert_eq!(code, Some(3), "{err}");

    // A trust file without a certificate is refused naming it, before the OVA is read.
    std::fs::write(
        pki.path("junk.pem"),
        "-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let (code, _, err) = verify(&signed, &["--trust", p(&pki.path("junk.pem"))]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("junk.pem: no CERTIFICATE block"), "{err}");

    let (code, out, _) = verify(&signed, &["--trust", p(&pki.path("root.pem")), "--json"]);
    assert_eq!(code, Some(0));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["signature"]["signer"]["subject"], "O=Capstan, CN=Capstan Release Signing");
    assert_eq!(v["signature"]["signer"]["self_signed"], false);
    assert_eq!(v["signature"]["trust"]["status"], "trusted");
    assert_eq!(v["signature"]["intermediates"][0]["subject"], "CN=Test Intermediate");
    assert_eq!(v["signature"]["findings"], serde_json::json!([]));
}

#[test]
fn expired_not_yet_valid_and_self_signed_signers_are_named() {
    let pki = Pki::new();
    pki.issue(
        "old",
        "/CN=Expired Signer",
        "int",
        "v3_leaf",
        Some(("20200101000000Z", "20210101000000Z")),
    );
    pki.issue(
        "new",
        "/CN=Future Signer",
        "int",
        "v3_leaf",
        Some(("20400101000000Z", "20410101000000Z")),
    );
    pki.concat("old-chain.pem", &["old.pem", "int.pem"]);
    pki.concat("new-chain.pem", &["new.pem", "int.pem"]);
    pki.self_signed("self", "/CN=Self Signer");
    let root = pki.path("root.pem");
    let cases = [
        ("old.key", "old-chain.pem", "expired: CN=Expired Signer (not after 2021-01-01T00:00:00Z)"),
        (
            "new.key",
            "new-chain.pem",
            "not yet valid: CN=Future Signer (not before 2040-01-01T00:00:00Z)",
        ),
        ("self.key", "self.pem", "self-signed: CN=Self Signer"),
    ];
    for (key, cert, finding) in cases {
        let ova = pki.signed(key, cert, &format!("{key}.ova"));
        // Integrity holds: without --trust the finding is a warning.
        let (code, out, err) = verify(&ova, &[]);
        assert_eq!(code, Some(0), "{out}{err}");
        assert!(out.contains(&format!("warning: {finding}")), "{finding}: {out}");
        // Under --trust it is a refusal, named.
        let (code, out, err) = verify(&ova, &["--trust", p(&root)]);
        assert_eq!(code, Some(3), "{out}{err}");
        assert!(err.contains(finding), "{finding}: {err}");
    }
    // The dated ones still chain to the root (only the dates are wrong).
    let (_, out, _) = verify(&pki.path("old.key.ova"), &["--trust", p(&root)]);
    assert!(out.contains("trusted: chains to a certificate in"), "{out}");
    let (_, out, err) = verify(&pki.path("self.key.ova"), &["--trust", p(&root)]);
    assert!(out.contains("self-signed  yes") && err.contains("untrusted"), "{out}{err}");
    // A self-signed signer named in the trust file is trusted (pinned), still reported.
    let (code, out, err) =
        verify(&pki.path("self.key.ova"), &["--trust", p(&pki.path("self.pem"))]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("warning: self-signed") && out.contains("the signer's certificate is in"));
}

/// The offset of `skip` bytes past the first `needle` in `bytes`.
fn at(bytes: &[u8], needle: &[u8], skip: usize) -> usize {
    bytes.windows(needle.len()).position(|w| w == needle).expect("needle") + skip
}

#[test]
fn a_tampered_manifest_certificate_or_disk_fails_naming_the_member() {
    let pki = Pki::new();
    let signed = pki.signed("signer.key", "chain.pem", "signed.ova");
    let bytes = std::fs::read(&signed).unwrap();
    let bad = pki.path("bad.ova");
    let disk = at(&bytes, b"KDMV", 70_000);
    let cases = [
        // The manifest's line for the disk and for the descriptor.
        (at(&bytes, b"SHA256(app-disk1.vmdk)= ", 30), "member app.mf", "does not verify"),
        (at(&bytes, b"SHA256(app.ovf)= ", 20), "member app.mf", "does not verify"),
        // The signature, and the signer's certificate.
        (at(&bytes, b"SHA256(app.mf)= ", 40), "app.cert", "does not verify"),
        (at(&bytes, b"-----BEGIN CERTIFICATE-----\n", 200), "member app.cert", "certificate"),
        // A grain of the disk, and the descriptor.
        (disk, "member app-disk1.vmdk", "does not match the manifest"),
        (at(&bytes, b"<Info>A virtual", 6), "member app.ovf", "does not match the manifest"),
    ];
    for (offset, member, what) in cases {
        let mut b = bytes.clone();
        b[offset] = match b[offset] {
            b'0' => b'1',
            c if c.is_ascii_alphanumeric() => b'0',
            c => c ^ 0x40,
        };
        std::fs::write(&bad, b).unwrap();
        let (code, out, err) = verify(&bad, &[]);
        assert_eq!(code, Some(1), "{member}: {out}{err}");
        assert!(err.contains(member) && err.contains(what), "{member}/{what}: {err}");
    }
}

#[test]
fn pkcs1_and_pkcs8_keys_sign_alike_and_unusable_keys_are_refused() {
    let pki = Pki::new();
    let d = pki.dir.path();
    openssl(d, &["rsa", "-in", "signer.key", "-traditional", "-out", "signer-pkcs1.key"]);
    let pkcs1 = std::fs::read_to_string(pki.path("signer-pkcs1.key")).unwrap();
    let pkcs8 = std::fs::read_to_string(pki.path("signer.key")).unwrap();
    assert!(pkcs1.starts_with("-----BEGIN RSA PRIVATE KEY-----"), "{pkcs1}");
    assert!(pkcs8.starts_with("-----BEGIN PRIVATE KEY-----"), "{pkcs8}");
    let a = pki.signed("signer.key", "chain.pem", "pkcs8.ova");
    let o = pki.sign(&pki.path("app.ova"), "signer-pkcs1.key", "chain.pem", "pkcs1.ova");
    assert!(o.status.success(), "{o:?}");
    // RSA PKCS#1 v1.5 is deterministic: one key, one signature, the same archive.
    assert_eq!(sha256(&a), sha256(&pki.path("pkcs1.ova")));

    // A 1024-bit key, refused by name (its own certificate, self-signed).
    pki.key("small", 1024);
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-key",
            "small.key",
            "-out",
            "small.pem",
            "-days",
            "3",
            "-subj",
            "/CN=small",
        ],
    );
    openssl(
        d,
        &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "ec.key"],
    );
    std::fs::write(pki.path("junk.key"), "not a key\n").unwrap();
    let cases = [
        (
            "small.key",
            "small.pem",
            "small.key: a 1024-bit RSA key; OVA signatures need at least 2048 bits",
        ),
        ("ec.key", "chain.pem", "ec.key: a non-RSA PKCS#8 key"),
        ("junk.key", "chain.pem", "junk.key: no PRIVATE KEY"),
        ("root.key", "chain.pem", "is not for the key in"),
        ("signer.key", "signer.key", "signer.key: no CERTIFICATE block"),
        ("signer.key", "missing.pem", "missing.pem: cannot read"),
    ];
    for (key, cert, want) in cases {
        let out = pki.sign(&pki.path("app.ova"), key, cert, "refused.ova");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{key}: {err}");
        assert!(err.contains(want), "{key}/{cert}: want {want:?}: {err}");
        assert!(!pki.path("refused.ova").exists());
    }
    // The key never reaches what was written: no PEM body line of it in the OVA.
    let ova = std::fs::read(&a).unwrap();
    for line in pkcs8.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!ova.windows(line.len()).any(|w| w == line.as_bytes()), "key line in the OVA");
    }
}

#[test]
fn signing_again_replaces_the_certificate_and_verify_requires_one_when_asked() {
    let pki = Pki::new();
    let first = pki.signed("signer.key", "chain.pem", "first.ova");
    pki.self_signed("self", "/CN=Second Signer");
    let o = pki.sign(&first, "self.key", "self.pem", "second.ova");
    assert!(o.status.success(), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stdout).contains("its old .cert replaced"));
    let (code, out, _) = verify(&pki.path("second.ova"), &["--require-signature"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("signer       CN=Second Signer"), "{out}");
    let (_, order) = pki.extract(&pki.path("second.ova"), "x");
    assert_eq!(order, ["app.ovf", "app.mf", "app.cert", "app-disk1.vmdk"]);

    let (code, out, err) = verify(&pki.path("app.ova"), &["--require-signature"]);
    assert_eq!(code, Some(3), "{out}{err}");
    assert!(out.contains("unsigned: no .cert member"), "{out}");
    assert!(err.contains("unsigned (no .cert member), and --require-signature"), "{err}");
    let (code, _, _) = verify(&pki.path("app.ova"), &[]);
    assert_eq!(code, Some(0));
}
