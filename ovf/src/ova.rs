//! OVA archives: a tar with the `.ovf` first, then the `.mf`, then (signed) the `.cert`, then
//! the referenced files.
//!
//! Writing ([`write_ova`], [`pack`]) is deterministic — ustar headers with a fixed mode
//! (0644), uid/gid 0 (`root`), and an mtime from the caller (`SOURCE_DATE_EPOCH`) — and uses a
//! pax extended header only for a member that needs one (a name ustar cannot hold, or 8 GiB or
//! more). Member data is copied from disk in chunks, so a 20 GiB disk never sits in memory;
//! since the manifest comes before the data, digests are computed in a first streaming pass
//! unless the caller already has them. [`write_signed_ova`] adds a `.cert` member right after
//! the manifest, made by a [`Signer`] from the manifest's exact bytes.
//!
//! Reading ([`verify`]) is one streaming pass too: structure (descriptor first, manifest
//! second), every member's size against its `ovf:size`, every digest against the manifest,
//! and members that are missing or not referenced. A `<stem>.cert` right after the manifest
//! must parse ([`crate::cert`]) and name the manifest; [`verify_with`] hands it and the
//! manifest's bytes to the caller's signature check before anything else is compared (this
//! crate does no cryptography). [`sign_ova`] signs an existing OVA, its files copied byte for
//! byte. The first problem is the error, and it names the member.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use ovf::ova::{self, OvaFile, OvaOptions};
//! let xml = std::fs::read_to_string("node.ovf")?;
//! let out = std::fs::File::create("node.ova")?;
//! let files = [OvaFile::new("node-disk1.vmdk", "out/node-disk1.vmdk")];
//! ova::write_ova(out, "node.ovf", &xml, &files, &OvaOptions::from_env(), &mut |_, _| {})?;
//! let report = ova::verify_path("node.ova".as_ref())?;
//! assert_eq!(report.members.len(), 1);
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use crate::descriptor::Envelope;
use crate::manifest::{self, check_name, Algorithm, Hasher, Manifest, ManifestError};

/// The largest descriptor read from an archive.
pub const MAX_OVF_BYTES: u64 = 16 << 20;
/// The largest `.cert` member read from an archive (a signature and a certificate chain are a
/// few KiB).
pub const MAX_CERT_BYTES: u64 = 1 << 20;
const CHUNK: usize = 1 << 20;

/// Something wrong with an OVA or with the files going into one. Every variant about a
/// member names it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OvaError {
    /// The tar structure is broken.
    #[error("bad tar archive at byte {offset}: {reason}")]
    Tar {
        /// Offset of the broken header or data.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// Reading the archive failed.
    #[error("reading the archive at byte {offset}")]
    Read {
        /// Where.
        offset: u64,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A member that is not a regular file (link, device, directory).
    #[error("member {name}: type '{kind}' is not a regular file")]
    UnsupportedMember {
        /// The member.
        name: String,
        /// Its tar type flag.
        kind: char,
    },
    /// The archive is empty or its first member is not the descriptor.
    #[error("the first member must be the .ovf descriptor, found {}", name.as_deref().unwrap_or("nothing"))]
    FirstNotOvf {
        /// The first member, if any.
        name: Option<String>,
    },
    /// The descriptor does not parse.
    #[error("member {name}: invalid descriptor")]
    Descriptor {
        /// The descriptor's name.
        name: String,
        /// The parse error.
        #[source]
        source: crate::descriptor::ParseError,
    },
    /// The manifest does not parse.
    #[error("member {name}: invalid manifest")]
    Manifest {
        /// The manifest's name.
        name: String,
        /// The parse error.
        #[source]
        source: ManifestError,
    },
    /// A member that is too large to be what it claims (descriptor, manifest).
    #[error("member {name}: {size} bytes is more than the {limit} allowed")]
    TooLarge {
        /// The member.
        name: String,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The manifest is not named after the descriptor.
    #[error("member {name}: the manifest must be named {expected}")]
    ManifestName {
        /// The member.
        name: String,
        /// `<descriptor stem>.mf`.
        expected: String,
    },
    /// A member that the descriptor does not reference.
    #[error("member {name}: not referenced by the descriptor")]
    Unreferenced {
        /// The member.
        name: String,
    },
    /// A member that appears twice.
    #[error("member {name}: appears twice in the archive")]
    Duplicate {
        /// The member.
        name: String,
    },
    /// A member the manifest has no line for.
    #[error("member {name}: not listed in the manifest")]
    NotInManifest {
        /// The member.
        name: String,
    },
    /// A member whose size differs from its `ovf:size`.
    #[error("member {name}: size is {actual} bytes but the descriptor's ovf:size says {declared}")]
    SizeMismatch {
        /// The member.
        name: String,
        /// `ovf:size`.
        declared: u64,
        /// The real size.
        actual: u64,
    },
    /// A member whose digest differs from the manifest.
    #[error("member {name}: {algorithm} digest {actual} does not match the manifest's {expected}")]
    DigestMismatch {
        /// The member.
        name: String,
        /// The manifest's algorithm.
        algorithm: Algorithm,
        /// Digest in the manifest (hex).
        expected: String,
        /// Digest of the data (hex).
        actual: String,
    },
    /// A `.vmdk` member that is not a sound streamOptimized VMDK.
    #[error("member {name}: not a valid streamOptimized VMDK")]
    Vmdk {
        /// The member.
        name: String,
        /// What the VMDK reader found.
        #[source]
        source: crate::vmdk::VmdkError,
    },
    /// A file the descriptor or the manifest lists that the archive lacks.
    #[error("member {name}: listed in the {listed_in} but missing from the archive")]
    Missing {
        /// The file.
        name: String,
        /// `descriptor` or `manifest`.
        listed_in: &'static str,
    },
    /// A member name that is not a safe relative path.
    #[error("member {name:?}: {reason}")]
    BadName {
        /// The name.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// A file to pack could not be read.
    #[error("{}: cannot read", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A file to pack changed size while it was being packed.
    #[error("{}: changed while being packed ({expected} bytes expected)", path.display())]
    FileChanged {
        /// The file.
        path: PathBuf,
        /// The size at the start.
        expected: u64,
    },
    /// The descriptor references a file that was not given and is not next to it.
    #[error("{name}: referenced by the descriptor but not found (looked in {})", dir.display())]
    FileNotFound {
        /// The `ovf:href`.
        name: String,
        /// Where it was looked for.
        dir: PathBuf,
    },
    /// A file to pack that the descriptor does not reference.
    #[error("{}: not referenced by the descriptor", path.display())]
    NotReferenced {
        /// The file.
        path: PathBuf,
    },
    /// Writing the archive failed.
    #[error("writing the archive")]
    Write(#[source] io::Error),
    /// A signed OVA was asked for without a manifest (the signature signs the manifest).
    #[error("member {name}: a signature needs the manifest, which the options turn off")]
    SignatureWithoutManifest {
        /// The `.cert` member that could not be written.
        name: String,
    },
    /// The `.cert` member does not parse.
    #[error("member {name}: invalid certificate file")]
    Certificate {
        /// The `.cert` member.
        name: String,
        /// What is wrong with it.
        #[source]
        source: crate::cert::CertError,
    },
    /// The `.cert` member signs another manifest than the archive's, or there is no manifest.
    #[error("member {name}: signs {signed}, but the archive's manifest is {}", manifest.as_deref().unwrap_or("missing"))]
    CertificateManifest {
        /// The `.cert` member.
        name: String,
        /// The manifest its first line names.
        signed: String,
        /// The archive's manifest member, if any.
        manifest: Option<String>,
    },
    /// The signature check found the `.cert` member's certificate unusable.
    #[error("member {name}: unusable signing certificate")]
    CertificateRejected {
        /// The `.cert` member.
        name: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The signature does not verify over the manifest: one of them changed after signing.
    #[error("member {manifest}: the signature in {certificate} does not verify over it (the manifest or the signature changed after signing)")]
    SignatureMismatch {
        /// The manifest member.
        manifest: String,
        /// The `.cert` member.
        certificate: String,
        /// What the check found.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The [`Signer`] failed.
    #[error("member {name}: signing the manifest failed")]
    Sign {
        /// The `.cert` member.
        name: String,
        /// What the signer reported.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Makes the `.cert` member of a signed OVA from the manifest it signs.
///
/// In an OVF package the certificate file holds the manifest's signature and the signer's
/// X.509 certificate (DSP0243 §5.3; ovftool writes `SHA256(<stem>.mf)= <hex>` followed by the
/// PEM certificate). The writer calls the signer once, with the exact manifest bytes it then
/// writes, so the signature covers what is in the archive.
pub trait Signer {
    /// The `.cert` member's bytes for `manifest`, the member named `mf_name`.
    fn certificate(
        &self,
        mf_name: &str,
        manifest: &[u8],
    ) -> Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>>;
}

/// A file going into an OVA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OvaFile {
    /// The member name (the `ovf:href`).
    pub name: String,
    /// Where its bytes are.
    pub path: PathBuf,
    /// Its SHA-256, if already known (saves the hashing pass).
    pub sha256: Option<Vec<u8>>,
}

impl OvaFile {
    /// A file whose digest is computed while packing.
    pub fn new(name: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        OvaFile { name: name.into(), path: path.into(), sha256: None }
    }
}

/// How to write an OVA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OvaOptions {
    /// Modification time of every member (seconds since the epoch).
    pub mtime: u64,
    /// Write a SHA256 `.mf` manifest (default true; vCenter verifies it when present).
    pub manifest: bool,
}

impl Default for OvaOptions {
    fn default() -> Self {
        OvaOptions { mtime: 0, manifest: true }
    }
}

impl OvaOptions {
    /// Defaults with `mtime` from `SOURCE_DATE_EPOCH` (0 when unset or not a number).
    pub fn from_env() -> Self {
        let mtime = std::env::var("SOURCE_DATE_EPOCH")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        OvaOptions { mtime, ..OvaOptions::default() }
    }
}

/// What [`write_ova`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteSummary {
    /// Archive size in bytes.
    pub written: u64,
    /// The manifest text written (empty without a manifest).
    pub manifest: String,
}

/// Writes an OVA: `ovf_name` with `descriptor` first, then `<stem>.mf` (SHA256 lines for the
/// descriptor and every file), then `files` in the given order (pass them in References
/// order). The descriptor is written as given: fill `ovf:size` first (see [`pack`]).
/// `progress(done, total)` counts file bytes copied.
pub fn write_ova<W: Write>(
    out: W,
    ovf_name: &str,
    descriptor: &str,
    files: &[OvaFile],
    opts: &OvaOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<WriteSummary, OvaError> {
    let contents = Contents { ovf_name, descriptor, files };
    write_archive(out, &contents, opts, None, progress)
}

/// Writes a signed OVA: as [`write_ova`], with `<stem>.cert` from `signer` right after the
/// manifest (`.ovf`, `.mf`, `.cert`, then the files). Needs `opts.manifest`.
pub fn write_signed_ova<W: Write>(
    out: W,
    ovf_name: &str,
    descriptor: &str,
    files: &[OvaFile],
    opts: &OvaOptions,
    signer: &dyn Signer,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<WriteSummary, OvaError> {
    let contents = Contents { ovf_name, descriptor, files };
    write_archive(out, &contents, opts, Some(signer), progress)
}

/// What goes into an archive.
struct Contents<'a> {
    ovf_name: &'a str,
    descriptor: &'a str,
    files: &'a [OvaFile],
}

/// The member names beside the descriptor and the size of every file, once every name is
/// checked.
struct Layout {
    mf_name: String,
    cert_name: String,
    sizes: Vec<u64>,
}

fn write_archive<W: Write>(
    out: W,
    c: &Contents,
    opts: &OvaOptions,
    signer: Option<&dyn Signer>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<WriteSummary, OvaError> {
    let layout = layout(c, opts, signer.is_some())?;
    // Pass 1: digests (streaming) for files that do not bring one.
    let text = if opts.manifest { manifest_text(c)? } else { String::new() };
    let cert = match signer {
        Some(signer) => Some(
            signer
                .certificate(&layout.mf_name, text.as_bytes())
                .map_err(|source| OvaError::Sign { name: layout.cert_name.clone(), source })?,
        ),
        None => None,
    };

    // Pass 2: the archive.
    let mut out = Counting { out, written: 0 };
    let w = OvaError::Write;
    write_small(&mut out, c.ovf_name, c.descriptor.as_bytes(), opts.mtime).map_err(w)?;
    if opts.manifest {
        write_small(&mut out, &layout.mf_name, text.as_bytes(), opts.mtime).map_err(w)?;
    }
    if let Some(cert) = &cert {
        write_small(&mut out, &layout.cert_name, cert, opts.mtime).map_err(w)?;
    }
    copy_files(&mut out, c.files, &layout.sizes, opts.mtime, progress)?;
    tar::finish(&mut out).map_err(w)?;
    out.out.flush().map_err(w)?;
    Ok(WriteSummary { written: out.written, manifest: text })
}

/// Checks every member name (safe, unique, a top-level `.ovf`) and reads each file's size.
fn layout(c: &Contents, opts: &OvaOptions, signed: bool) -> Result<Layout, OvaError> {
    let bad = |name: &str, reason| OvaError::BadName { name: name.to_string(), reason };
    check_name(c.ovf_name).map_err(|r| bad(c.ovf_name, r))?;
    let Some(stem) = c.ovf_name.strip_suffix(".ovf").filter(|s| !s.contains('/')) else {
        return Err(bad(c.ovf_name, "the descriptor must be a top-level *.ovf name"));
    };
    let mf_name = format!("{stem}.mf");
    let cert_name = format!("{stem}.cert");
    let mut names = vec![c.ovf_name.to_string()];
    if opts.manifest {
        names.push(mf_name.clone());
    }
    if signed {
        if !opts.manifest {
            return Err(OvaError::SignatureWithoutManifest { name: cert_name });
        }
        names.push(cert_name.clone());
    }
    let mut sizes = Vec::with_capacity(c.files.len());
    for f in c.files {
        check_name(&f.name).map_err(|r| bad(&f.name, r))?;
        if names.contains(&f.name) {
            return Err(OvaError::Duplicate { name: f.name.clone() });
        }
        names.push(f.name.clone());
        let meta = std::fs::metadata(&f.path)
            .map_err(|source| OvaError::File { path: f.path.clone(), source })?;
        sizes.push(meta.len());
    }
    Ok(Layout { mf_name, cert_name, sizes })
}

/// The SHA256 manifest of the descriptor and every file (digesting those without one).
fn manifest_text(c: &Contents) -> Result<String, OvaError> {
    let mut mf = Manifest::default();
    mf.push(
        Algorithm::Sha256,
        c.ovf_name,
        manifest::digest(Algorithm::Sha256, c.descriptor.as_bytes()).expect("in-memory read"),
    );
    for f in c.files {
        let d = match &f.sha256 {
            Some(d) => d.clone(),
            None => {
                let file = File::open(&f.path)
                    .map_err(|source| OvaError::File { path: f.path.clone(), source })?;
                manifest::digest(Algorithm::Sha256, file)
                    .map_err(|source| OvaError::File { path: f.path.clone(), source })?
            }
        };
        mf.push(Algorithm::Sha256, f.name.clone(), d);
    }
    Ok(mf.render())
}

/// One member whose data is in memory: header, data, padding.
fn write_small<W: Write>(out: &mut W, name: &str, data: &[u8], mtime: u64) -> io::Result<()> {
    tar::write_header(out, name, data.len() as u64, mtime)?;
    out.write_all(data)?;
    tar::pad(out, data.len() as u64)?;
    Ok(())
}

/// The files' members, streamed from disk in chunks; each must still have the size it had
/// when its header was planned.
fn copy_files<W: Write>(
    out: &mut W,
    files: &[OvaFile],
    sizes: &[u64],
    mtime: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(), OvaError> {
    let w = OvaError::Write;
    let total: u64 = sizes.iter().sum();
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    for (f, &size) in files.iter().zip(sizes) {
        let file = File::open(&f.path)
            .map_err(|source| OvaError::File { path: f.path.clone(), source })?;
        tar::write_header(out, &f.name, size, mtime).map_err(w)?;
        let mut src = file.take(size);
        let mut copied = 0u64;
        loop {
            let n = match src.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(OvaError::File { path: f.path.clone(), source }),
            };
            out.write_all(&buf[..n]).map_err(w)?;
            copied += n as u64;
            done += n as u64;
            progress(done, total);
        }
        // The header already promised `size` bytes: a file that shrank (or grew, when the
        // digest was computed on other bytes) cannot be packed consistently.
        let grew = src.into_inner().read(&mut [0u8; 1]).map(|n| n > 0).unwrap_or(false);
        if copied != size || (grew && f.sha256.is_none()) {
            return Err(OvaError::FileChanged { path: f.path.clone(), expected: size });
        }
        tar::pad(out, size).map_err(w)?;
    }
    Ok(())
}

/// What [`pack`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackSummary {
    /// The descriptor as written into the archive (sizes filled in).
    pub descriptor: String,
    /// The files packed, in order: (name, size).
    pub files: Vec<(String, u64)>,
    /// Archive size in bytes.
    pub written: u64,
}

/// Packs a descriptor and its files: every `References/File` is looked up among `files` (by
/// file name) or else next to the descriptor; its `ovf:size` is set to the real size; the
/// archive is written with [`write_ova`] in References order. A file given that the descriptor
/// does not reference is an error.
pub fn pack<W: Write>(
    ovf_path: &Path,
    files: &[PathBuf],
    out: W,
    opts: &OvaOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<PackSummary, OvaError> {
    let ovf_name = ovf_path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| OvaError::BadName {
            name: ovf_path.display().to_string(),
            reason: "the descriptor path has no UTF-8 file name",
        })?
        .to_string();
    let bytes = std::fs::read(ovf_path)
        .map_err(|source| OvaError::File { path: ovf_path.to_path_buf(), source })?;
    let mut env = Envelope::from_bytes(&bytes)
        .map_err(|source| OvaError::Descriptor { name: ovf_name.clone(), source })?;
    let dir = match ovf_path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut given: HashMap<String, &PathBuf> = HashMap::new();
    for f in files {
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        given.insert(name, f);
    }
    let mut members = Vec::new();
    let mut listed = Vec::new();
    if let Some(refs) = env.references.as_mut() {
        for file in &mut refs.files {
            let href = file.href.clone();
            check_name(&href).map_err(|reason| OvaError::BadName { name: href.clone(), reason })?;
            let base = href.rsplit('/').next().unwrap_or(&href).to_string();
            let path = match given.remove(&base) {
                Some(p) => p.clone(),
                None => {
                    let p = dir.join(&href);
                    if !p.is_file() {
                        return Err(OvaError::FileNotFound { name: href, dir: dir.clone() });
                    }
                    p
                }
            };
            let size = std::fs::metadata(&path)
                .map_err(|source| OvaError::File { path: path.clone(), source })?
                .len();
            file.size = Some(size);
            listed.push((href.clone(), size));
            members.push(OvaFile::new(href, path));
        }
    }
    if let Some((_, path)) = given.into_iter().next() {
        return Err(OvaError::NotReferenced { path: path.clone() });
    }
    let descriptor = env.to_xml();
    let summary = write_ova(out, &ovf_name, &descriptor, &members, opts, progress)?;
    Ok(PackSummary { descriptor, files: listed, written: summary.written })
}

/// What [`sign_ova`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignSummary {
    /// Archive size in bytes.
    pub written: u64,
    /// The manifest written (SHA256, descriptor first, then the files in archive order).
    pub manifest: String,
    /// The `.cert` member written.
    pub certificate: String,
    /// Whether the input was signed already (its `.cert` is replaced).
    pub replaced_certificate: bool,
    /// The files copied, in order: (name, size).
    pub files: Vec<(String, u64)>,
}

/// Signs an existing OVA: checks it ([`verify_path`]), then writes `.ovf`, a SHA256 `.mf`,
/// the `.cert` from `signer`, and the files in their archive order. Member bytes are copied
/// unchanged (each file's SHA-256 is checked again as it is copied); a `.cert` already there is
/// replaced, and a SHA1 or missing manifest becomes a SHA256 one. Every member gets `mtime`,
/// or the input descriptor's mtime, so signing our own deterministic OVA gives the bytes
/// [`write_signed_ova`] would have written.
pub fn sign_ova<W: Write>(
    input: &Path,
    out: W,
    signer: &dyn Signer,
    mtime: Option<u64>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<SignSummary, OvaError> {
    let report = verify_path(input)?;
    let stem = report.descriptor.trim_end_matches(".ovf");
    let (mf_name, cert_name) = (format!("{stem}.mf"), format!("{stem}.cert"));
    let mtime = mtime.unwrap_or(report.descriptor_mtime);
    // Pass 1: the SHA-256 of every file (the manifest may be SHA1 or absent).
    let digests = archived_files(input, &report, &mut |_, data| {
        let mut h = Hasher::new(Algorithm::Sha256);
        stream_data(data, &mut |chunk| {
            h.update(chunk);
            Ok(())
        })?;
        Ok(h.finish())
    })?;
    let mut mf = Manifest::default();
    let ovf_bytes = report.descriptor_xml.as_bytes();
    let ovf_digest = manifest::digest(Algorithm::Sha256, ovf_bytes).expect("in-memory read");
    mf.push(Algorithm::Sha256, report.descriptor.clone(), ovf_digest);
    for (m, d) in report.members.iter().zip(&digests) {
        mf.push(Algorithm::Sha256, m.name.clone(), d.clone());
    }
    let text = mf.render();
    let cert = signer
        .certificate(&mf_name, text.as_bytes())
        .map_err(|source| OvaError::Sign { name: cert_name.clone(), source })?;

    // Pass 2: the archive, the files copied from the input's members.
    let mut out = Counting { out, written: 0 };
    let w = OvaError::Write;
    write_small(&mut out, &report.descriptor, ovf_bytes, mtime).map_err(w)?;
    write_small(&mut out, &mf_name, text.as_bytes(), mtime).map_err(w)?;
    write_small(&mut out, &cert_name, &cert, mtime).map_err(w)?;
    let total: u64 = report.members.iter().map(|m| m.size).sum();
    let mut done = 0;
    let mut index = 0;
    archived_files(input, &report, &mut |m, data| {
        tar::write_header(&mut out, &m.name, m.size, mtime).map_err(w)?;
        let mut h = Hasher::new(Algorithm::Sha256);
        stream_data(data, &mut |chunk| {
            h.update(chunk);
            out.write_all(chunk).map_err(w)?;
            done += chunk.len() as u64;
            progress(done, total);
            Ok(())
        })?;
        if h.finish() != digests[index] {
            return Err(OvaError::FileChanged { path: input.to_path_buf(), expected: m.size });
        }
        index += 1;
        tar::pad(&mut out, m.size).map_err(w)?;
        Ok(())
    })?;
    tar::finish(&mut out).map_err(w)?;
    out.out.flush().map_err(w)?;
    Ok(SignSummary {
        written: out.written,
        manifest: text,
        certificate: cert_name,
        replaced_certificate: report.certificate.is_some(),
        files: report.members.iter().map(|m| (m.name.clone(), m.size)).collect(),
    })
}

/// Runs `each` on every file member of the OVA at `input` that `report` lists (the
/// descriptor, manifest and certificate skipped), in archive order, with the member's data.
fn archived_files<T>(
    input: &Path,
    report: &Report,
    each: &mut dyn FnMut(&tar::Member, &mut MemberData<'_>) -> Result<T, OvaError>,
) -> Result<Vec<T>, OvaError> {
    let f =
        File::open(input).map_err(|source| OvaError::File { path: input.to_path_buf(), source })?;
    let mut ar = tar::Reader::new(BufReader::with_capacity(CHUNK, f));
    let mut results = Vec::new();
    while let Some(m) = ar.next_member()? {
        if !report.members.iter().any(|r| r.name == m.name) {
            continue;
        }
        results.push(each(&m, &mut |buf| ar.read_data(buf))?);
    }
    if results.len() != report.members.len() {
        return Err(OvaError::FileChanged { path: input.to_path_buf(), expected: 0 });
    }
    Ok(results)
}

/// Reads the current member's data into a buffer; 0 at its end.
type MemberData<'a> = dyn FnMut(&mut [u8]) -> Result<usize, OvaError> + 'a;

/// Feeds a member's data to `sink` in chunks until `read` reports its end.
fn stream_data(
    read: &mut MemberData<'_>,
    sink: &mut dyn FnMut(&[u8]) -> Result<(), OvaError>,
) -> Result<(), OvaError> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        sink(&buf[..n])?;
    }
}

/// One verified member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberReport {
    /// The member name.
    pub name: String,
    /// Its size in the archive.
    pub size: u64,
    /// The digest algorithm it was checked with (`None` without a manifest).
    pub checked_with: Option<Algorithm>,
}

/// The result of a successful [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The descriptor member.
    pub descriptor: String,
    /// The descriptor member's mtime (what [`sign_ova`] keeps for every member).
    pub descriptor_mtime: u64,
    /// The manifest member, if any.
    pub manifest: Option<String>,
    /// The manifest's bytes as archived (what a signature covers).
    pub manifest_data: Option<Vec<u8>>,
    /// A certificate member (`.cert`), if any.
    pub certificate: Option<String>,
    /// The certificate member's bytes (at most [`MAX_CERT_BYTES`]), as read. They parse as a
    /// [`CertFile`](crate::cert::CertFile) naming the manifest; the signature is checked only
    /// by [`verify_with`]'s check.
    pub certificate_data: Option<Vec<u8>>,
    /// The referenced files, in archive order.
    pub members: Vec<MemberReport>,
    /// The descriptor text.
    pub descriptor_xml: String,
}

/// What a signature check gets: the manifest as archived and the parsed `.cert`.
#[derive(Debug, Clone, Copy)]
pub struct Signed<'a> {
    /// The manifest member's name.
    pub manifest_name: &'a str,
    /// The manifest's exact bytes.
    pub manifest: &'a [u8],
    /// The `.cert` member's name.
    pub certificate_name: &'a str,
    /// The `.cert` member, parsed.
    pub certificate: &'a crate::cert::CertFile,
}

/// Why a signature check refused a signed OVA (see [`verify_with`]).
#[derive(Debug)]
pub enum Rejection {
    /// The `.cert` member's certificate cannot be used (does not parse, unsupported key).
    Certificate(Box<dyn std::error::Error + Send + Sync>),
    /// The signature does not verify over the manifest.
    Signature(Box<dyn std::error::Error + Send + Sync>),
}

/// A signature check for [`verify_with`].
pub type SignatureCheck<'c> = dyn FnMut(&Signed<'_>) -> Result<(), Rejection> + 'c;

/// Verifies an OVA read as a stream; see the module docs for what is checked. A `.cert`
/// member must parse and name the manifest; its signature is not checked (see
/// [`verify_with`]).
pub fn verify<R: Read>(input: R) -> Result<Report, OvaError> {
    verify_with(input, &mut |_| Ok(()))
}

/// Verifies an OVA as [`verify`] and, when it has a `.cert`, runs `check` on the manifest and
/// the certificate file before anything else is compared: a manifest changed after signing
/// is then reported as that (naming the manifest) rather than as a digest mismatch of the
/// member whose line changed. An unsigned OVA never calls `check`.
pub fn verify_with<R: Read>(input: R, check: &mut SignatureCheck<'_>) -> Result<Report, OvaError> {
    let mut ar = tar::Reader::new(input);
    let ovf = match ar.next_member()? {
        Some(m) if m.name.ends_with(".ovf") && !m.name.contains('/') => m,
        other => return Err(OvaError::FirstNotOvf { name: other.map(|m| m.name) }),
    };
    let ovf_bytes = read_small(&mut ar, &ovf.name, ovf.size, MAX_OVF_BYTES)?;
    let env = Envelope::from_bytes(&ovf_bytes)
        .map_err(|source| OvaError::Descriptor { name: ovf.name.clone(), source })?;
    let refs: Vec<(String, Option<u64>)> = env
        .references
        .iter()
        .flat_map(|r| r.files.iter())
        .map(|f| (f.href.clone(), f.size))
        .collect();
    let stem = ovf.name.trim_end_matches(".ovf");
    let mut seen = vec![ovf.name.clone()];
    let mut next = ar.next_member()?;

    let mut manifest = None;
    if let Some(m) = next.take_if(|m| m.name.ends_with(".mf")) {
        let (mf, bytes) = read_manifest(&mut ar, &m, stem)?;
        seen.push(m.name.clone());
        manifest = Some((m.name, mf, bytes));
        next = ar.next_member()?;
    }
    let mut certificate = None;
    if let Some(m) = next.take_if(|m| m.name == format!("{stem}.cert")) {
        let data = read_small(&mut ar, &m.name, m.size, MAX_CERT_BYTES)?;
        check_signature(&m.name, &data, manifest.as_ref().map(|(n, _, b)| (n, b)), check)?;
        seen.push(m.name.clone());
        certificate = Some((m.name, data));
        next = ar.next_member()?;
    }
    let mf = manifest.as_ref().map(|(_, mf, _)| mf);
    check_digest(mf, &ovf.name, |alg| {
        manifest::digest(alg, &ovf_bytes[..]).expect("in-memory read")
    })?;

    let mut members = Vec::new();
    let mut buf = vec![0u8; CHUNK];
    while let Some(m) = next {
        members.push(verify_member(&mut ar, m, &refs, &seen, mf, &mut buf)?);
        seen.push(members.last().expect("just pushed").name.clone());
        next = ar.next_member()?;
    }
    check_complete(&refs, mf, &seen)?;
    let (certificate, certificate_data) = certificate.unzip();
    let (manifest, manifest_data) = manifest.map(|(name, _, bytes)| (name, bytes)).unzip();
    Ok(Report {
        descriptor: ovf.name,
        descriptor_mtime: ovf.mtime,
        manifest,
        manifest_data,
        certificate,
        certificate_data,
        members,
        descriptor_xml: String::from_utf8_lossy(&ovf_bytes).into_owned(),
    })
}

/// The `.cert` member `name`: it parses, names the archive's manifest, and passes `check`.
fn check_signature(
    name: &str,
    data: &[u8],
    manifest: Option<(&String, &Vec<u8>)>,
    check: &mut SignatureCheck<'_>,
) -> Result<(), OvaError> {
    let cert = crate::cert::CertFile::parse(data)
        .map_err(|source| OvaError::Certificate { name: name.to_string(), source })?;
    let Some((mf_name, mf_bytes)) = manifest.filter(|(n, _)| **n == cert.manifest) else {
        return Err(OvaError::CertificateManifest {
            name: name.to_string(),
            signed: cert.manifest,
            manifest: manifest.map(|(n, _)| n.clone()),
        });
    };
    let signed = Signed {
        manifest_name: mf_name,
        manifest: mf_bytes,
        certificate_name: name,
        certificate: &cert,
    };
    check(&signed).map_err(|r| match r {
        Rejection::Certificate(source) => {
            OvaError::CertificateRejected { name: name.to_string(), source }
        }
        Rejection::Signature(source) => OvaError::SignatureMismatch {
            manifest: mf_name.clone(),
            certificate: name.to_string(),
            source,
        },
    })
}

/// The manifest member `m`, which must be named after the descriptor's `stem`.
fn read_manifest<R: Read>(
    ar: &mut tar::Reader<R>,
    m: &tar::Member,
    stem: &str,
) -> Result<(Manifest, Vec<u8>), OvaError> {
    let expected = format!("{stem}.mf");
    if m.name != expected {
        return Err(OvaError::ManifestName { name: m.name.clone(), expected });
    }
    let bytes = read_small(ar, &m.name, m.size, manifest::MAX_MANIFEST_BYTES as u64)?;
    let mf = Manifest::parse_bytes(&bytes)
        .map_err(|source| OvaError::Manifest { name: m.name.clone(), source })?;
    Ok((mf, bytes))
}

/// One referenced member: its name, its size against `ovf:size`, its digest against the
/// manifest, and a `.vmdk` walked as a VMDK in the same pass.
fn verify_member<R: Read>(
    ar: &mut tar::Reader<R>,
    m: tar::Member,
    refs: &[(String, Option<u64>)],
    seen: &[String],
    manifest: Option<&Manifest>,
    buf: &mut [u8],
) -> Result<MemberReport, OvaError> {
    check_name(&m.name).map_err(|reason| OvaError::BadName { name: m.name.clone(), reason })?;
    if seen.contains(&m.name) {
        return Err(OvaError::Duplicate { name: m.name });
    }
    let Some((_, declared)) = refs.iter().find(|(href, _)| *href == m.name) else {
        return Err(OvaError::Unreferenced { name: m.name });
    };
    if let Some(declared) = *declared {
        if declared != m.size {
            return Err(OvaError::SizeMismatch { name: m.name, declared, actual: m.size });
        }
    }
    let algorithm = match manifest {
        Some(mf) => Some(
            mf.get(&m.name)
                .ok_or_else(|| OvaError::NotInManifest { name: m.name.clone() })?
                .algorithm,
        ),
        None => None,
    };
    let mut hasher = algorithm.map(Hasher::new);
    // A disk is also walked as a VMDK in the same pass (every grain inflated and checked),
    // so a corrupt disk is caught even when its manifest line was computed over it.
    let mut vmdk_result = Ok(());
    if m.name.to_ascii_lowercase().ends_with(".vmdk") {
        let mut member = MemberRead { ar: &mut *ar, hasher: hasher.as_mut() };
        vmdk_result =
            crate::vmdk::StreamReader::new(&mut member).and_then(|r| r.check()).map(|_| ());
    }
    loop {
        let n = ar.read_data(buf)?;
        if n == 0 {
            break;
        }
        if let Some(h) = hasher.as_mut() {
            h.update(&buf[..n]);
        }
    }
    // A digest mismatch (tampering) is the more precise report; then the disk's own error.
    if let Some(h) = hasher {
        let d = h.finish();
        check_digest(manifest, &m.name, |_| d.clone())?;
    }
    if let Err(source) = vmdk_result {
        return Err(match source {
            crate::vmdk::VmdkError::Read { source, .. }
                if source.get_ref().is_some_and(|e| e.is::<OvaError>()) =>
            {
                *source.into_inner().expect("checked").downcast::<OvaError>().expect("checked")
            }
            source => OvaError::Vmdk { name: m.name, source },
        });
    }
    Ok(MemberReport { name: m.name, size: m.size, checked_with: algorithm })
}

/// Every file the descriptor references and every manifest line has its member.
fn check_complete(
    refs: &[(String, Option<u64>)],
    manifest: Option<&Manifest>,
    seen: &[String],
) -> Result<(), OvaError> {
    for (href, _) in refs {
        if !seen.contains(href) {
            return Err(OvaError::Missing { name: href.clone(), listed_in: "descriptor" });
        }
    }
    if let Some(mf) = manifest {
        for e in &mf.entries {
            if !seen.contains(&e.name) {
                return Err(OvaError::Missing { name: e.name.clone(), listed_in: "manifest" });
            }
        }
    }
    Ok(())
}

/// Verifies the OVA at `path` (see [`verify`]).
pub fn verify_path(path: &Path) -> Result<Report, OvaError> {
    let f =
        File::open(path).map_err(|source| OvaError::File { path: path.to_path_buf(), source })?;
    verify(BufReader::with_capacity(CHUNK, f))
}

/// Reads the descriptor of an OVA (its first member) without reading the rest.
pub fn read_descriptor<R: Read>(input: R) -> Result<(String, Vec<u8>), OvaError> {
    let mut ar = tar::Reader::new(input);
    match ar.next_member()? {
        Some(m) if m.name.ends_with(".ovf") && !m.name.contains('/') => {
            let bytes = read_small(&mut ar, &m.name, m.size, MAX_OVF_BYTES)?;
            Ok((m.name, bytes))
        }
        other => Err(OvaError::FirstNotOvf { name: other.map(|m| m.name) }),
    }
}

fn check_digest(
    mf: Option<&Manifest>,
    name: &str,
    compute: impl FnOnce(Algorithm) -> Vec<u8>,
) -> Result<(), OvaError> {
    let Some(mf) = mf else { return Ok(()) };
    let entry = mf.get(name).ok_or_else(|| OvaError::NotInManifest { name: name.to_string() })?;
    let actual = compute(entry.algorithm);
    if actual != entry.digest {
        return Err(OvaError::DigestMismatch {
            name: name.to_string(),
            algorithm: entry.algorithm,
            expected: hex::encode(&entry.digest),
            actual: hex::encode(actual),
        });
    }
    Ok(())
}

fn read_small<R: Read>(
    ar: &mut tar::Reader<R>,
    name: &str,
    size: u64,
    limit: u64,
) -> Result<Vec<u8>, OvaError> {
    if size > limit {
        return Err(OvaError::TooLarge { name: name.to_string(), size, limit });
    }
    let mut v = vec![0u8; size as usize];
    let mut got = 0;
    while got < v.len() {
        got += ar.read_data(&mut v[got..])?;
    }
    Ok(v)
}

/// The current member's data as a `Read`, digesting what is read.
struct MemberRead<'a, R> {
    ar: &'a mut tar::Reader<R>,
    hasher: Option<&'a mut Hasher>,
}

impl<R: Read> Read for MemberRead<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.ar.read_data(buf).map_err(io::Error::other)?;
        if let Some(h) = self.hasher.as_mut() {
            h.update(&buf[..n]);
        }
        Ok(n)
    }
}

/// A `Write` that counts.
struct Counting<W> {
    out: W,
    written: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

mod tar {
    // The minimal tar both directions need: deterministic ustar headers, with a pax extended
    // header only for a member that needs one (a name ustar cannot hold, a size of 8 GiB or more),
    // and a streaming reader that understands ustar, pax (`path`, `size`) and GNU long names and
    // base-256 sizes.

    use std::io::{self, Read, Write};

    use super::OvaError;

    pub(crate) const BLOCK: usize = 512;
    /// The largest size the 11 octal digits of a ustar header hold (8 GiB - 1).
    const USTAR_MAX_SIZE: u64 = 0o77777777777;
    /// Longest pax or GNU long-name payload we accept when reading.
    const MAX_EXT_HEADER: u64 = 64 * 1024;

    fn octal(field: &mut [u8], value: u64) {
        // width-1 digits, zero padded, NUL terminated.
        let digits = field.len() - 1;
        let s = format!("{value:0digits$o}");
        field[..digits].copy_from_slice(s.as_bytes());
        field[digits] = 0;
    }

    fn header_block(name: &[u8], prefix: &[u8], size: u64, mtime: u64, kind: u8) -> [u8; BLOCK] {
        let mut h = [0u8; BLOCK];
        h[..name.len()].copy_from_slice(name);
        octal(&mut h[100..108], 0o644);
        octal(&mut h[108..116], 0);
        octal(&mut h[116..124], 0);
        octal(&mut h[124..136], size);
        octal(&mut h[136..148], mtime);
        h[156] = kind;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        // uname/gname: "root", as ovftool and GNU tar write for uid/gid 0.
        h[265..269].copy_from_slice(b"root");
        h[297..301].copy_from_slice(b"root");
        h[345..345 + prefix.len()].copy_from_slice(prefix);
        h[148..156].fill(b' ');
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        let s = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(s.as_bytes());
        h
    }

    /// Splits a name into ustar `prefix` / `name` when it does not fit in 100 bytes.
    fn split_name(name: &str) -> Option<(&[u8], &[u8])> {
        let b = name.as_bytes();
        if b.len() <= 100 {
            return Some((b, &[]));
        }
        // The prefix ends at a '/', is at most 155 bytes, and the rest at most 100.
        for (i, c) in b.iter().enumerate().rev() {
            if *c == b'/' && i <= 155 && b.len() - i - 1 <= 100 && i > 0 {
                return Some((&b[i + 1..], &b[..i]));
            }
        }
        None
    }

    fn pax_record(key: &str, value: &str) -> String {
        // "len key=value\n" where len counts itself.
        let body = format!(" {key}={value}\n");
        let mut len = body.len() + 1;
        loop {
            let candidate = len.to_string().len() + body.len();
            if candidate == len {
                return format!("{len}{body}");
            }
            len = candidate;
        }
    }

    /// Writes the header(s) of one regular-file member. The caller writes `size` bytes of data
    /// and then [`pad`].
    pub(crate) fn write_header<W: Write>(
        out: &mut W,
        name: &str,
        size: u64,
        mtime: u64,
    ) -> io::Result<u64> {
        let split = split_name(name);
        let mut pax = String::new();
        if split.is_none() {
            pax.push_str(&pax_record("path", name));
        }
        if size > USTAR_MAX_SIZE {
            pax.push_str(&pax_record("size", &size.to_string()));
        }
        let mut written = 0u64;
        if !pax.is_empty() {
            let short: String = name.chars().rev().take(90).collect::<String>();
            let short: String = short.chars().rev().collect();
            let pax_name = format!("PaxHeaders/{}", short.trim_start_matches('/'));
            let pax_name = &pax_name.as_bytes()[..pax_name.len().min(100)];
            out.write_all(&header_block(pax_name, &[], pax.len() as u64, mtime, b'x'))?;
            out.write_all(pax.as_bytes())?;
            written += BLOCK as u64 + pax.len() as u64 + pad(out, pax.len() as u64)?;
        }
        let (n, p) = split.unwrap_or_else(|| {
            let b = name.as_bytes();
            (&b[b.len().saturating_sub(100)..], &[][..])
        });
        let ustar_size = if size > USTAR_MAX_SIZE { 0 } else { size };
        out.write_all(&header_block(n, p, ustar_size, mtime, b'0'))?;
        Ok(written + BLOCK as u64)
    }

    /// Zero padding after `len` bytes of member data, to the next block.
    pub(crate) fn pad<W: Write>(out: &mut W, len: u64) -> io::Result<u64> {
        let rem = (len % BLOCK as u64) as usize;
        if rem == 0 {
            return Ok(0);
        }
        out.write_all(&[0u8; BLOCK][..BLOCK - rem])?;
        Ok((BLOCK - rem) as u64)
    }

    /// The end-of-archive marker: two zero blocks.
    pub(crate) fn finish<W: Write>(out: &mut W) -> io::Result<u64> {
        out.write_all(&[0u8; 2 * BLOCK])?;
        Ok(2 * BLOCK as u64)
    }

    /// One member's header as read.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(crate) struct Member {
        pub name: String,
        pub size: u64,
        /// The ustar header's mtime (0 when the field does not parse).
        pub mtime: u64,
        /// Offset of the member's header in the archive.
        pub offset: u64,
    }

    /// A streaming tar reader.
    #[derive(Debug)]
    pub(crate) struct Reader<R> {
        inner: R,
        pub offset: u64,
        /// Data bytes (plus padding) of the current member not yet consumed.
        remaining: u64,
        padding: u64,
    }

    impl<R: Read> Reader<R> {
        pub fn new(inner: R) -> Self {
            Reader { inner, offset: 0, remaining: 0, padding: 0 }
        }

        fn bad(&self, at: u64, reason: impl Into<String>) -> OvaError {
            OvaError::Tar { offset: at, reason: reason.into() }
        }

        fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), OvaError> {
            let at = self.offset;
            self.inner.read_exact(buf).map_err(|e| {
                if e.kind() == io::ErrorKind::UnexpectedEof {
                    OvaError::Tar { offset: at, reason: "archive truncated".into() }
                } else {
                    OvaError::Read { offset: at, source: e }
                }
            })?;
            self.offset += buf.len() as u64;
            Ok(())
        }

        fn skip(&mut self, mut n: u64) -> Result<(), OvaError> {
            let mut buf = [0u8; 8192];
            while n > 0 {
                let k = n.min(buf.len() as u64) as usize;
                self.read_exact(&mut buf[..k])?;
                n -= k as u64;
            }
            Ok(())
        }

        /// Skips what is left of the current member and reads the next header; `None` at the
        /// end-of-archive marker (or a clean end of input).
        pub fn next_member(&mut self) -> Result<Option<Member>, OvaError> {
            self.skip(self.remaining + self.padding)?;
            self.remaining = 0;
            self.padding = 0;
            let mut ext = Extended::default();
            loop {
                let at = self.offset;
                let Some(h) = self.read_header_block(at, ext.is_empty())? else {
                    return Ok(None);
                };
                let size =
                    parse_size(&h[124..136]).ok_or_else(|| self.bad(at, "bad size field"))?;
                match h[156] {
                    kind @ (b'x' | b'L') => self.read_extended(kind, size, at, &mut ext)?,
                    b'g' => {
                        // Global pax header: nothing we need; skip it.
                        self.skip(size + padding(size))?;
                    }
                    b'0' | 0 | b'7' => {
                        let name = match ext.name.take() {
                            Some(n) => n,
                            None => ustar_name(&h).map_err(|r| self.bad(at, r))?,
                        };
                        let size = ext.size.take().unwrap_or(size);
                        self.remaining = size;
                        self.padding = padding(size);
                        let mtime = parse_octal(&h[136..148]).unwrap_or(0);
                        return Ok(Some(Member { name, size, mtime, offset: at }));
                    }
                    other => {
                        let name = String::from_utf8_lossy(cstr(&h[0..100])).into_owned();
                        return Err(OvaError::UnsupportedMember { name, kind: char::from(other) });
                    }
                }
            }
        }

        /// The next header block, its checksum checked; `None` at the end-of-archive marker,
        /// or at a clean end of input where one may end (`may_end`: no extended header pending;
        /// some writers omit the two zero blocks).
        fn read_header_block(
            &mut self,
            at: u64,
            may_end: bool,
        ) -> Result<Option<[u8; BLOCK]>, OvaError> {
            let mut h = [0u8; BLOCK];
            let mut got = 0;
            while got < BLOCK {
                match self.inner.read(&mut h[got..]) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(source) => return Err(OvaError::Read { offset: at, source }),
                }
            }
            self.offset += got as u64;
            if got == 0 && may_end {
                return Ok(None);
            }
            if got < BLOCK {
                return Err(self.bad(at, "archive truncated in a header"));
            }
            if h.iter().all(|b| *b == 0) {
                return Ok(None);
            }
            let stored =
                parse_octal(&h[148..156]).ok_or_else(|| self.bad(at, "bad checksum field"))?;
            let mut sum: u64 = h.iter().map(|b| u64::from(*b)).sum();
            sum =
                sum - h[148..156].iter().map(|b| u64::from(*b)).sum::<u64>() + 8 * u64::from(b' ');
            if sum != stored {
                return Err(
                    self.bad(at, format!("header checksum {stored:o} does not match {sum:o}"))
                );
            }
            Ok(Some(h))
        }

        /// A pax (`x`: `path`, `size`) or GNU long-name (`L`) header for the next member.
        fn read_extended(
            &mut self,
            kind: u8,
            size: u64,
            at: u64,
            ext: &mut Extended,
        ) -> Result<(), OvaError> {
            if size > MAX_EXT_HEADER {
                return Err(self.bad(at, format!("extended header of {size} bytes")));
            }
            let mut data = vec![0u8; size as usize];
            self.read_exact(&mut data)?;
            self.skip(padding(size))?;
            if kind == b'L' {
                let end = data.iter().position(|b| *b == 0).unwrap_or(data.len());
                ext.name = Some(
                    String::from_utf8(data[..end].to_vec())
                        .map_err(|_| self.bad(at, "long name is not UTF-8"))?,
                );
                return Ok(());
            }
            for (k, v) in parse_pax(&data).map_err(|r| self.bad(at, r))? {
                match k.as_str() {
                    "path" => ext.name = Some(v),
                    "size" => ext.size = Some(v.parse().map_err(|_| self.bad(at, "bad pax size"))?),
                    _ => {}
                }
            }
            Ok(())
        }

        /// Reads up to `buf.len()` bytes of the current member's data; 0 at its end.
        pub fn read_data(&mut self, buf: &mut [u8]) -> Result<usize, OvaError> {
            if self.remaining == 0 {
                return Ok(0);
            }
            let k = self.remaining.min(buf.len() as u64) as usize;
            let at = self.offset;
            let n = loop {
                match self.inner.read(&mut buf[..k]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(source) => return Err(OvaError::Read { offset: at, source }),
                }
            };
            if n == 0 {
                return Err(self.bad(at, "archive truncated in member data"));
            }
            self.offset += n as u64;
            self.remaining -= n as u64;
            Ok(n)
        }
    }

    /// What extended headers said about the member that follows them.
    #[derive(Debug, Default)]
    struct Extended {
        name: Option<String>,
        size: Option<u64>,
    }

    impl Extended {
        fn is_empty(&self) -> bool {
            self.name.is_none() && self.size.is_none()
        }
    }

    /// A ustar member name: `prefix/name` when the header has a prefix.
    fn ustar_name(h: &[u8; BLOCK]) -> Result<String, &'static str> {
        let name = cstr(&h[0..100]);
        let prefix = cstr(&h[345..500]);
        let joined = if &h[257..262] == b"ustar" && !prefix.is_empty() {
            [prefix, b"/", name].concat()
        } else {
            name.to_vec()
        };
        String::from_utf8(joined).map_err(|_| "member name is not UTF-8")
    }

    fn padding(size: u64) -> u64 {
        (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
    }

    fn cstr(b: &[u8]) -> &[u8] {
        let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
        &b[..end]
    }

    fn parse_octal(field: &[u8]) -> Option<u64> {
        let s = std::str::from_utf8(cstr(field)).ok()?.trim_matches(|c| c == ' ' || c == '\0');
        if s.is_empty() {
            return Some(0);
        }
        u64::from_str_radix(s, 8).ok()
    }

    /// Octal, or GNU base-256 (high bit of the first byte set).
    fn parse_size(field: &[u8]) -> Option<u64> {
        if field[0] & 0x80 != 0 {
            if field[0] != 0x80 || field[1..4].iter().any(|b| *b != 0) {
                return None; // negative or beyond 64 bits
            }
            return Some(field[4..].iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)));
        }
        parse_octal(field)
    }

    fn parse_pax(data: &[u8]) -> Result<Vec<(String, String)>, String> {
        let mut out = Vec::new();
        let mut rest = data;
        while !rest.is_empty() {
            let sp = rest.iter().position(|b| *b == b' ').ok_or("pax record without a length")?;
            let len: usize = std::str::from_utf8(&rest[..sp])
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or("bad pax record length")?;
            if len <= sp + 1 || len > rest.len() || rest[len - 1] != b'\n' {
                return Err("bad pax record".into());
            }
            let rec =
                std::str::from_utf8(&rest[sp + 1..len - 1]).map_err(|_| "pax record not UTF-8")?;
            let (k, v) = rec.split_once('=').ok_or("pax record without '='")?;
            out.push((k.to_string(), v.to_string()));
            rest = &rest[len..];
        }
        Ok(out)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn member(name: &str, data: &[u8]) -> Vec<u8> {
            let mut v = Vec::new();
            write_header(&mut v, name, data.len() as u64, 1_700_000_000).unwrap();
            v.extend_from_slice(data);
            pad(&mut v, data.len() as u64).unwrap();
            v
        }

        #[test]
        fn pax_record_length_counts_itself() {
            assert_eq!(pax_record("path", "a"), "9 path=a\n");
            let r = pax_record("path", &"x".repeat(95));
            assert_eq!(r.len().to_string(), r.split(' ').next().unwrap());
        }

        #[test]
        fn short_prefixed_and_pax_names_read_back() {
            let long_dir = format!("{}/{}", "d".repeat(120), "f".repeat(60));
            let huge = "n".repeat(300);
            let mut ar = Vec::new();
            for name in ["a.ovf", long_dir.as_str(), huge.as_str()] {
                ar.extend(member(name, name.as_bytes()));
            }
            finish(&mut ar).unwrap();
            let mut r = Reader::new(&ar[..]);
            for name in ["a.ovf", long_dir.as_str(), huge.as_str()] {
                let m = r.next_member().unwrap().unwrap();
                assert_eq!(m.name, name);
                let mut buf = vec![0u8; m.size as usize];
                let mut got = 0;
                while got < buf.len() {
                    got += r.read_data(&mut buf[got..]).unwrap();
                }
                assert_eq!(buf, name.as_bytes());
            }
            assert!(r.next_member().unwrap().is_none());
        }

        #[test]
        fn gnu_tar_reads_our_headers() {
            // Cross-check with GNU tar when it is there (it is on Debian).
            let dir = tempfile::tempdir().unwrap();
            let long = format!("{}.vmdk", "z".repeat(150));
            let mut ar = member("x.ovf", b"<Envelope/>");
            ar.extend(member(&long, b"data"));
            finish(&mut ar).unwrap();
            let p = dir.path().join("t.tar");
            std::fs::write(&p, &ar).unwrap();
            let out = std::process::Command::new("tar")
                .args(["-tvf", p.to_str().unwrap()])
                .output()
                .expect("GNU tar");
            assert!(out.status.success(), "{out:?}");
            let list = String::from_utf8(out.stdout).unwrap();
            assert!(
                list.contains("root/root") && list.contains(&long) && list.contains("x.ovf"),
                "{list}"
            );
        }

        #[test]
        fn sizes_over_8_gib_get_a_pax_size_record() {
            let big = 9u64 << 30;
            let mut v = Vec::new();
            write_header(&mut v, "disk.vmdk", big, 0).unwrap();
            assert_eq!(v[156], b'x', "pax header first");
            assert!(String::from_utf8_lossy(&v[512..1024]).contains(&format!("size={big}\n")));
            let m = Reader::new(&v[..]).next_member().unwrap().unwrap();
            assert_eq!((m.name.as_str(), m.size), ("disk.vmdk", big));
            // At the ustar limit: a single plain header.
            let mut v = Vec::new();
            write_header(&mut v, "disk.vmdk", 0o77777777777, 0).unwrap();
            assert_eq!((v.len(), v[156]), (512, b'0'));
        }

        #[test]
        fn base256_and_bad_checksum() {
            let mut f = [0u8; 12];
            f[0] = 0x80;
            f[11] = 5;
            f[10] = 1;
            assert_eq!(parse_size(&f), Some(261));
            let mut ar = member("a", b"x");
            ar[0] = b'b';
            let e = Reader::new(&ar[..]).next_member().unwrap_err().to_string();
            assert!(e.contains("checksum"), "{e}");
        }
    }
}
