//! Stage 5, outputs: raw, qcow2, streamOptimized VMDK and the OVA from the one raw disk.
//!
//! A format may write several files (an OVA and its `.cert`, an SBOM): [`Format::artefacts`]
//! names them, [`Format::write`] writes them into the stage's cache entry, and the build copies
//! each into the output directory and lists it in the report.

use std::fs;
use std::io::BufWriter;
use std::path::Path;
use std::process::Command;

use anyhow::Context;

use super::ovadesc::{self, DescriptorInputs};
use super::sbom;
use crate::exec;

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The OVA for vSphere (descriptor, manifest, streamOptimized VMDK).
    Ova,
    /// qcow2 for QEMU/KVM clouds.
    Qcow2,
    /// The raw disk.
    Raw,
    /// The streamOptimized VMDK alone.
    Vmdk,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ova" => Ok(Self::Ova),
            "qcow2" => Ok(Self::Qcow2),
            "raw" => Ok(Self::Raw),
            "vmdk" => Ok(Self::Vmdk),
            _ => Err(format!("unknown format {s:?} (ova, qcow2, raw, vmdk)")),
        }
    }
}

impl Format {
    /// File extension.
    pub fn ext(self) -> &'static str {
        match self {
            Self::Ova => "ova",
            Self::Qcow2 => "qcow2",
            Self::Raw => "raw",
            Self::Vmdk => "vmdk",
        }
    }
}

/// What one file written by an output format is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ArtefactKind {
    /// The format's image itself (`lb.ova`, `lb.qcow2`, ...).
    Image,
    /// The image's SBOM (`lb.spdx.json`, `lb.cdx.json`): every format names it, the build
    /// publishes it once.
    Sbom,
}

impl ArtefactKind {
    /// Whether this is the format's image (the report leaves `kind` out for it, so reports of
    /// one-file formats read as before).
    pub fn is_image(&self) -> bool {
        *self == ArtefactKind::Image
    }
}

/// One file an output format writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artefact {
    /// The format that writes it.
    pub format: Format,
    /// What it is.
    pub kind: ArtefactKind,
    /// Its file name, the same in the cache entry and in the output directory.
    pub name: String,
}

impl Artefact {
    /// Copies the artefact from the cache entry `from` to the output directory `to` (hard link
    /// where possible, a sparse copy for the raw disk) and returns the copy's path.
    pub fn publish(&self, from: &Path, to: &Path) -> anyhow::Result<std::path::PathBuf> {
        let src = from.join(&self.name);
        let dst = to.join(&self.name);
        if dst.exists() {
            fs::remove_file(&dst)?;
        }
        if self.format == Format::Raw && self.kind.is_image() {
            sparse_copy(&src, &dst)?;
        } else if fs::hard_link(&src, &dst).is_err() {
            fs::copy(&src, &dst)?;
        }
        Ok(dst)
    }
}

impl Artefact {
    /// Whether a signing key applies to this artefact: the OVA's image.
    pub fn is_signable(&self) -> bool {
        self.format == Format::Ova && self.kind.is_image()
    }

    /// Writes the artefact into `to` signed with `key` (`ovf::ova::sign_ova`: `.ovf`, `.mf`,
    /// `.cert`, disks byte for byte) from the unsigned copy in the cache entry `from`, and
    /// returns its path. Nothing of the key is written but the certificate chain.
    pub fn publish_signed(
        &self,
        from: &Path,
        to: &Path,
        key: &crate::sign::SigningKey,
    ) -> anyhow::Result<std::path::PathBuf> {
        let dst = to.join(&self.name);
        let tmp = to.join(format!(".{}.partial", self.name));
        let out = BufWriter::new(fs::File::create(&tmp)?);
        ovf::ova::sign_ova(&from.join(&self.name), out, key, None, &mut |_, _| {})
            .with_context(|| format!("signing {}", dst.display()))?;
        if dst.exists() {
            fs::remove_file(&dst)?;
        }
        fs::rename(&tmp, &dst)?;
        Ok(dst)
    }
}

/// What the formats are written from.
pub struct Sources<'a> {
    /// The raw disk.
    pub raw: &'a Path,
    /// The directory with the SBOM documents (the customize stage's entry).
    pub sbom: &'a Path,
    /// The image's name (the stem of every file name).
    pub name: &'a str,
    /// What shapes the OVA's descriptor.
    pub descriptor: &'a DescriptorInputs,
}

impl Format {
    /// The files this format writes for an image named `stem`, its image first.
    pub fn artefacts(self, stem: &str) -> Vec<Artefact> {
        let file = |kind, name: String| Artefact { format: self, kind, name };
        vec![
            file(ArtefactKind::Image, format!("{stem}.{}", self.ext())),
            file(ArtefactKind::Sbom, format!("{stem}.spdx.json")),
            file(ArtefactKind::Sbom, format!("{stem}.cdx.json")),
        ]
    }

    /// Writes this format's artefacts into `dir` (those already there are kept: an entry
    /// that gains a format keeps the others) and returns them.
    pub fn write(
        self,
        src: &Sources,
        dir: &Path,
        progress: &dyn Fn(&str),
    ) -> anyhow::Result<Vec<Artefact>> {
        let artefacts = self.artefacts(src.name);
        let dst = dir.join(&artefacts[0].name);
        if !dst.is_file() {
            progress(&format!("writing {}", dst.display()));
            match self {
                Format::Raw => sparse_copy(src.raw, &dst)?,
                Format::Qcow2 => qcow2(src.raw, &dst)?,
                Format::Vmdk => {
                    vmdk(src.raw, &dst, &format!("{}-disk1.vmdk", src.name), &mut |r, t| {
                        progress(&format!("vmdk {}%", r * 100 / t.max(1)))
                    })?;
                }
                Format::Ova => ovadesc::write_ova(src.descriptor, src.raw, &dst, progress)?,
            }
        }
        for a in artefacts.iter().filter(|a| a.kind == ArtefactKind::Sbom) {
            let dst = dir.join(&a.name);
            let from = src.sbom.join(if a.name.ends_with(".cdx.json") {
                sbom::CDX_FILE
            } else {
                sbom::SPDX_FILE
            });
            if !dst.is_file() && fs::hard_link(&from, &dst).is_err() {
                fs::copy(&from, &dst)
                    .with_context(|| format!("copying {} to {}", from.display(), dst.display()))?;
            }
        }
        Ok(artefacts)
    }
}

/// Copies a raw disk keeping holes (GNU cp finds them with SEEK_DATA, so the 90% of a
/// template that is empty is never read).
pub fn sparse_copy(src: &Path, dst: &Path) -> anyhow::Result<()> {
    let tmp = dst.with_extension("raw.partial");
    exec::run(Command::new("cp").args(["--sparse=always", "--reflink=auto"]).arg(src).arg(&tmp))?;
    fs::rename(&tmp, dst)?;
    Ok(())
}

/// Writes qcow2 with qemu-img (uncompressed: the format clouds import fastest).
pub fn qcow2(raw: &Path, dst: &Path) -> anyhow::Result<()> {
    let tmp = dst.with_extension("qcow2.partial");
    exec::run(
        Command::new("qemu-img").args(["convert", "-f", "raw", "-O", "qcow2"]).arg(raw).arg(&tmp),
    )?;
    fs::rename(&tmp, dst)?;
    Ok(())
}

/// Writes a streamOptimized VMDK with `ovf::vmdk` (VMware's profile).
pub fn vmdk(
    raw: &Path,
    dst: &Path,
    extent_name: &str,
    progress: &mut dyn FnMut(u64, u64),
) -> anyhow::Result<ovf::vmdk::WriteSummary> {
    let input = fs::File::open(raw).with_context(|| format!("opening {}", raw.display()))?;
    let len = input.metadata()?.len();
    let tmp = dst.with_extension("vmdk.partial");
    let out = BufWriter::new(fs::File::create(&tmp)?);
    let opts = ovf::vmdk::WriteOptions {
        extent_name: extent_name.to_string(),
        adapter_type: ovf::vmdk::AdapterType::LsiLogic,
        // A template is written once and copied many times: libdeflate level 10 makes the lb
        // VMDK 1.3 MB (2.3 %) smaller than level 6 for ~7 s more CPU on the outputs stage
        // (measured on the lb disk; level 12 saves only 0.07 MB more at twice the CPU).
        compression_level: 10,
        ..Default::default()
    };
    let summary = ovf::vmdk::write_stream_optimized(input, len, out, &opts, &mut |p| {
        progress(p.read, p.total)
    })
    .with_context(|| format!("writing {}", dst.display()))?;
    fs::rename(&tmp, dst)?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    fn openssl(dir: &Path, args: &[&str]) {
        let out = Command::new("openssl").current_dir(dir).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Every file under `dir`, read.
    fn contents(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(contents(&p));
            } else {
                out.push((p.display().to_string(), fs::read(&p).unwrap()));
            }
        }
        out
    }

    #[test]
    fn a_signed_ova_is_published_from_the_unsigned_cached_one_and_no_key_is_written() {
        let t = tempfile::tempdir().unwrap();
        let (entry, out, keys) =
            (t.path().join("outputs-x"), t.path().join("out"), t.path().join("keys"));
        for d in [&entry, &out, &keys] {
            fs::create_dir(d).unwrap();
        }
        openssl(
            &keys,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "k.pem",
                "-out",
                "c.pem",
                "-days",
                "2",
                "-subj",
                "/CN=Builder Test",
            ],
        );
        // The cached OVA, unsigned, as the outputs stage leaves it.
        fs::write(entry.join("disk.img"), vec![7u8; 5000]).unwrap();
        let ovf_xml = r#"<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"><References><File ovf:id="f" ovf:href="disk.img" ovf:size="5000"/></References><VirtualSystem ovf:id="v"><Info>x</Info></VirtualSystem></Envelope>"#;
        let files = [ovf::ova::OvaFile::new("disk.img", entry.join("disk.img"))];
        let opts = ovf::ova::OvaOptions { mtime: 1, manifest: true };
        let ova = fs::File::create(entry.join("lb.ova")).unwrap();
        ovf::ova::write_ova(ova, "lb.ovf", ovf_xml, &files, &opts, &mut |_, _| {}).unwrap();
        fs::remove_file(entry.join("disk.img")).unwrap();
        let cached = fs::read(entry.join("lb.ova")).unwrap();

        let key = crate::sign::SigningKey::load(&keys.join("k.pem"), &keys.join("c.pem")).unwrap();
        let a = Format::Ova.artefacts("lb").remove(0);
        assert!(a.is_signable() && !Format::Qcow2.artefacts("lb")[0].is_signable());
        // An unsigned build published before: a hard link to the entry, which signing must
        // replace, not write through.
        a.publish(&entry, &out).unwrap();
        let path = a.publish_signed(&entry, &out, &key).unwrap();
        assert_eq!(fs::read(entry.join("lb.ova")).unwrap(), cached, "the cached OVA changed");
        let r = ovf::ova::verify_path(&path).unwrap();
        assert_eq!(r.certificate.as_deref(), Some("lb.cert"));
        assert_eq!(fs::read_dir(&out).unwrap().count(), 1, "no partial file left");

        // No line of the key's PEM, and not its DER, in the cache entry or the output.
        let pem = fs::read_to_string(keys.join("k.pem")).unwrap();
        let body: Vec<&str> = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = base64_decode(&body.concat());
        for (file, bytes) in contents(&entry).into_iter().chain(contents(&out)) {
            for line in &body {
                assert!(!bytes.windows(line.len()).any(|w| w == line.as_bytes()), "{file}");
            }
            assert!(!bytes.windows(64).any(|w| der.windows(64).any(|d| d == w)), "{file}");
        }
    }

    fn base64_decode(s: &str) -> Vec<u8> {
        let out = Command::new("base64")
            .arg("-d")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        out.stdin.as_ref().unwrap().write_all(s.as_bytes()).unwrap();
        out.wait_with_output().unwrap().stdout
    }
}
