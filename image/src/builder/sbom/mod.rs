//! The image's software bill of materials: SPDX 2.3 and CycloneDX 1.5 JSON.
//!
//! Made in the customize stage from the finished root (after the prune, before the seal, which
//! leaves the dpkg database alone): the Debian packages of `var/lib/dpkg/status` with the
//! `.deb` digests the rootfs stage recorded and the licences of their DEP-5 copyright files
//! (read before the prune), the agent and every crate it links (resolved when this builder
//! was compiled: `image/build.rs`), and each `--kube-bin` binary. The SPDX document goes into
//! the image (`/usr/share/capstan/sbom.spdx.json`) and, with the CycloneDX one, beside the
//! other outputs. Everything is sorted and derived from the stage's inputs, so the same
//! inputs give the same bytes.

pub mod cyclonedx;
pub mod dpkg;
pub mod spdx;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use uuid::Uuid;

/// `SOURCE_DATE_EPOCH` as RFC 3339 UTC (`2023-11-14T22:13:20Z`), as the cache listing writes it.
pub use crate::cache::inventory::rfc3339;

/// Part of the customize stage's key: bump it whenever what the SBOM says changes.
pub const RECIPE: &str = "2026-12-03.2 spdx-2.3 cyclonedx-1.5 agent binary digest";

/// The agent and the crates it links, as `image/build.rs` resolved them from the workspace
/// (`[{name, version, sha256, license, workspace}]`, sorted). Part of the customize key too.
pub const AGENT_CRATES: &str = include_str!(concat!(env!("OUT_DIR"), "/agent-crates.json"));

/// Where the image carries its SPDX document.
pub const IMAGE_PATH: &str = "usr/share/capstan/sbom.spdx.json";

/// The SPDX document's name in a stage entry and the file suffix beside the outputs.
pub const SPDX_FILE: &str = "sbom.spdx.json";
/// The CycloneDX document's name in a stage entry.
pub const CDX_FILE: &str = "sbom.cdx.json";

/// UUIDv5 namespace of SBOM identifiers (random, fixed forever).
const NAMESPACE: Uuid = Uuid::from_u128(0x2f0c_7a91_5d3e_4b6a_8c1f_9e4d_b7a2_c305);

/// Why an SBOM could not be made or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SbomError {
    /// A file could not be read or written.
    #[error("{}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The dpkg status file is malformed.
    #[error("{}: paragraph at line {line}: {reason}", path.display())]
    Status {
        /// The file.
        path: PathBuf,
        /// First line of the paragraph.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The rootfs stage's `.deb` digest list is malformed.
    #[error("{}: line {line}: {reason}", path.display())]
    Manifest {
        /// The file.
        path: PathBuf,
        /// The line.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// An SPDX document read back is not one this builder wrote.
    #[error("SPDX document: {key}: {reason}")]
    Spdx {
        /// The JSON key.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

/// What a component is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// A Debian binary package.
    Deb,
    /// The agent or a crate it links.
    Crate,
    /// A binary installed as a file (`--kube-bin`).
    File,
}

/// One thing the image contains.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Component {
    /// What it is.
    pub kind: Kind,
    /// Package, crate or file name.
    pub name: String,
    /// Version, where known.
    pub version: Option<String>,
    /// The package URL.
    pub purl: Option<String>,
    /// SHA-256 of the `.deb`, the crate archive or the file.
    pub sha256: Option<String>,
    /// Declared licence (SPDX expression).
    pub licence: Option<String>,
    /// `Source: NAME (VERSION)` of a Debian package; the path of a file.
    pub detail: Option<String>,
}

/// The bill of materials of one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sbom {
    /// The profile's name.
    pub name: String,
    /// The product version.
    pub version: String,
    /// `SOURCE_DATE_EPOCH`.
    pub created: u64,
    /// Derived from the inputs: the SPDX namespace's last part and the CycloneDX serial.
    pub id: Uuid,
    /// `capstan` and its version.
    pub tool: String,
    /// Sorted.
    pub components: Vec<Component>,
}

/// What the build report says about the SBOM (`image.sbom`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Made {
    /// Components listed (Debian packages, crates, files).
    pub components: usize,
    /// Size of the SPDX document.
    pub spdx_bytes: u64,
    /// Size of the CycloneDX document.
    pub cyclonedx_bytes: u64,
    /// Time to collect and write both (part of the customize stage's time).
    pub seconds: f64,
}

/// What the SBOM is made from besides the root.
#[derive(Debug)]
pub struct Inputs<'a> {
    /// Profile name.
    pub name: &'a str,
    /// Product version.
    pub version: &'a str,
    /// `SOURCE_DATE_EPOCH`.
    pub epoch: u64,
    /// What the identifiers derive from (the customize stage's key).
    pub seed: &'a str,
    /// `debs.sha256` of the rootfs stage, if it has one.
    pub deb_manifest: Option<&'a Path>,
    /// Licences read before the prune ([`dpkg::read_licences`]).
    pub licences: &'a BTreeMap<String, String>,
    /// The `--kube-bin` binaries: (name, SHA-256).
    pub files: Vec<(&'a str, &'a str)>,
    /// Container images preloaded into containerd: (`repository:tag`, `sha256:` manifest
    /// digest).
    pub images: Vec<(&'a str, &'a str)>,
}

fn read(path: &Path) -> Result<String, SbomError> {
    fs::read_to_string(path).map_err(|source| SbomError::Io { path: path.to_path_buf(), source })
}

impl Sbom {
    /// Collects the SBOM of the tree at `root`.
    pub fn collect(root: &Path, inputs: &Inputs) -> Result<Sbom, SbomError> {
        let status = root.join("var/lib/dpkg/status");
        let packages = dpkg::parse_status(&read(&status)?, &status)?;
        let digests = match inputs.deb_manifest {
            Some(p) => dpkg::parse_deb_manifest(&read(p)?, p)?,
            None => BTreeMap::new(),
        };
        let distro = distro(root);
        let mut components: Vec<Component> = packages
            .into_iter()
            .map(|p| {
                let key = (p.name.clone(), p.version.clone(), p.arch.clone());
                Component {
                    kind: Kind::Deb,
                    purl: Some(deb_purl(&p, &distro)),
                    sha256: digests.get(&key).cloned(),
                    licence: inputs.licences.get(&p.name).cloned(),
                    detail: p.source.as_ref().map(|s| match &s.version {
                        Some(v) => format!("{} ({v})", s.name),
                        None => s.name.clone(),
                    }),
                    version: Some(p.version),
                    name: p.name,
                }
            })
            .collect();
        let mut crates = agent_crates();
        // The agent's own entry is the installed (stripped) binary: its digest, its path.
        let agent = root.join("usr/bin/capstan-agent");
        if let Some(c) = crates.iter_mut().find(|c| c.name == "capstan-agent") {
            if agent.is_file() {
                let io = |source| SbomError::Io { path: agent.clone(), source };
                let f = fs::File::open(&agent).map_err(io)?;
                let (sha256, _) = crate::cache::sha256_of(f, std::io::sink()).map_err(io)?;
                c.sha256 = Some(sha256);
                c.detail = Some("/usr/bin/capstan-agent".into());
            }
        }
        components.extend(crates);
        for (name, sha256) in &inputs.files {
            components.push(Component {
                kind: Kind::File,
                name: name.to_string(),
                version: None,
                purl: None,
                sha256: Some(sha256.to_string()),
                licence: None,
                detail: Some(format!("/usr/bin/{name}")),
            });
        }
        for (reference, digest) in &inputs.images {
            let (repo, tag) = reference.rsplit_once(':').unwrap_or((reference, ""));
            components.push(Component {
                kind: Kind::File,
                name: repo.to_string(),
                version: Some(tag.to_string()),
                purl: None,
                sha256: Some(digest.trim_start_matches("sha256:").to_string()),
                licence: None,
                detail: Some(format!("container image {reference} (containerd, k8s.io)")),
            });
        }
        components.sort();
        Ok(Sbom {
            name: inputs.name.to_string(),
            version: inputs.version.to_string(),
            created: inputs.epoch,
            id: Uuid::new_v5(&NAMESPACE, inputs.seed.as_bytes()),
            tool: format!("capstan-{}", env!("CARGO_PKG_VERSION")),
            components,
        })
    }

    /// Writes the SPDX document into the image (`root/`[`IMAGE_PATH`]) and both documents
    /// into `dir` ([`SPDX_FILE`], [`CDX_FILE`]); returns their sizes (`seconds` left 0).
    pub fn write(&self, root: &Path, dir: &Path) -> Result<Made, SbomError> {
        let spdx = self.to_spdx();
        let cdx = self.to_cyclonedx();
        for (path, bytes) in [
            (root.join(IMAGE_PATH), &spdx),
            (dir.join(SPDX_FILE), &spdx),
            (dir.join(CDX_FILE), &cdx),
        ] {
            let io = |source| SbomError::Io { path: path.clone(), source };
            fs::create_dir_all(path.parent().expect("has a parent")).map_err(io)?;
            fs::write(&path, bytes).map_err(io)?;
        }
        Ok(Made {
            components: self.components.len(),
            spdx_bytes: spdx.len() as u64,
            cyclonedx_bytes: cdx.len() as u64,
            seconds: 0.0,
        })
    }
}

/// `debian-12` from the root's `os-release` (`ID`, `VERSION_ID`), as syft names it.
fn distro(root: &Path) -> String {
    let text = ["etc/os-release", "usr/lib/os-release"]
        .iter()
        .find_map(|p| fs::read_to_string(root.join(p)).ok())
        .unwrap_or_default();
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
            .map(|v| v.trim().trim_matches('"').to_string())
    };
    match (field("ID"), field("VERSION_ID")) {
        (Some(id), Some(v)) => format!("{id}-{v}"),
        (Some(id), None) => id,
        _ => "debian".into(),
    }
}

/// The crates [`AGENT_CRATES`] lists, the agent itself among them.
fn agent_crates() -> Vec<Component> {
    #[derive(serde::Deserialize)]
    struct Crate {
        name: String,
        version: String,
        sha256: Option<String>,
        license: Option<String>,
    }
    let crates: Vec<Crate> =
        serde_json::from_str(AGENT_CRATES).expect("image/build.rs writes a valid list");
    crates
        .into_iter()
        .map(|c| Component {
            kind: Kind::Crate,
            purl: Some(format!("pkg:cargo/{}@{}", purl_escape(&c.name), purl_escape(&c.version))),
            name: c.name,
            version: Some(c.version),
            sha256: c.sha256,
            licence: c.license,
            detail: None,
        })
        .collect()
}

/// `pkg:deb/debian/NAME@VERSION?arch=ARCH&distro=DISTRO&upstream=SOURCE[@VERSION]`, the form
/// syft writes (qualifiers sorted; `upstream` only with a `Source:` field, its version only
/// when the field gives one).
pub fn deb_purl(p: &dpkg::DebPackage, distro: &str) -> String {
    let mut purl = format!(
        "pkg:deb/debian/{}@{}?arch={}&distro={}",
        purl_escape(&p.name),
        purl_escape(&p.version),
        purl_escape(&p.arch),
        purl_escape(distro)
    );
    if let Some(s) = &p.source {
        let upstream = match &s.version {
            Some(v) => format!("{}@{v}", s.name),
            None => s.name.clone(),
        };
        purl.push_str("&upstream=");
        purl.push_str(&purl_escape(&upstream));
    }
    purl
}

/// Percent-encodes everything but `A-Za-z0-9.-_~:` (the purl spec leaves `:` as is; syft
/// writes epochs that way), upper-case hex: `+` is `%2B`, `@` `%40`.
pub fn purl_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b".-_~:".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests;
