//! OCI images written from files on disk, deterministically: one uncompressed layer whose
//! entries are sorted by path, uid/gid 0, every mtime the build's `SOURCE_DATE_EPOCH`; the
//! config, manifest and index serialised from typed structs; all of it packed as an OCI
//! image layout tar (`oci-layout`, `index.json`, `blobs/sha256/*`) with a Docker
//! `manifest.json` beside it, so `ctr images import`, `docker load` and `podman load` all
//! take it. The same files and epoch give the same bytes.
//!
//! Used by `builder/kube` for the images the node template preloads; knows nothing of
//! Kubernetes.

pub mod tar;

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

/// What went wrong writing an image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OciError {
    /// A source file of the layer could not be read.
    #[error("image {image}: reading {}", path.display())]
    Source {
        /// The image reference.
        image: String,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The archive could not be written.
    #[error("image {image}: writing {}", path.display())]
    Write {
        /// The image reference.
        image: String,
        /// The archive.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A path in the layer is not a relative path without `..`.
    #[error("image {image}: layer path {path:?} must be relative and without '..'")]
    BadPath {
        /// The image reference.
        image: String,
        /// The path.
        path: String,
    },
}

/// One entry of a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A directory with this mode.
    Dir(u32),
    /// A regular file copied from the source path (symlinks followed), with this mode.
    File(PathBuf, u32),
    /// A file with this content and mode.
    Bytes(Vec<u8>, u32),
    /// A symlink to this target.
    Symlink(String),
}

/// A layer's tree: relative paths (no leading `/`) to nodes. Parent directories a path
/// needs are added (mode 0755) when the layer is written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layer {
    /// The entries.
    pub entries: BTreeMap<String, Node>,
}

impl Layer {
    /// Adds (or replaces) `path`.
    pub fn add(&mut self, path: &str, node: Node) -> &mut Self {
        self.entries.insert(path.trim_start_matches('/').trim_end_matches('/').to_string(), node);
        self
    }

    /// The entries with every missing parent directory added.
    fn closed(&self) -> BTreeMap<String, Node> {
        let mut all = self.entries.clone();
        for path in self.entries.keys() {
            let mut p = path.as_str();
            while let Some((parent, _)) = p.rsplit_once('/') {
                all.entry(parent.to_string()).or_insert(Node::Dir(0o755));
                p = parent;
            }
        }
        all
    }
}

/// An image to write: its reference and runtime config, and its one layer.
#[derive(Debug, Clone)]
pub struct Image {
    /// Repository, e.g. `k8s.gcr.io/etcd`.
    pub repository: String,
    /// Tag, e.g. `3.4.13-0`.
    pub tag: String,
    /// `Entrypoint`, if any.
    pub entrypoint: Vec<String>,
    /// `Cmd`, if any.
    pub cmd: Vec<String>,
    /// `Env` (`KEY=value`).
    pub env: Vec<String>,
    /// The layer.
    pub layer: Layer,
}

impl Image {
    /// `repository:tag`.
    pub fn reference(&self) -> String {
        format!("{}:{}", self.repository, self.tag)
    }
}

/// What was written: the archive and the digests a store will know the image by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Written {
    /// `repository:tag`.
    pub reference: String,
    /// The manifest's digest (`sha256:…`), what `ctr images ls` shows.
    pub digest: String,
    /// The config's digest (the image ID).
    pub config: String,
    /// The archive's size in bytes.
    pub bytes: u64,
    /// The archive.
    pub path: PathBuf,
}

const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MT_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

#[derive(Serialize)]
struct Descriptor<'a> {
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    digest: String,
    size: u64,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<&'a str, String>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct RunConfig<'a> {
    env: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    entrypoint: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    cmd: &'a [String],
    working_dir: &'a str,
}

#[derive(Serialize)]
struct Config<'a> {
    created: String,
    architecture: &'a str,
    os: &'a str,
    config: RunConfig<'a>,
    rootfs: RootFs,
}

#[derive(Serialize)]
struct RootFs {
    #[serde(rename = "type")]
    kind: &'static str,
    diff_ids: Vec<String>,
}

#[derive(Serialize)]
struct Manifest<'a> {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    config: Descriptor<'a>,
    layers: Vec<Descriptor<'a>>,
}

#[derive(Serialize)]
struct Index<'a> {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    manifests: Vec<Descriptor<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest<'a> {
    config: String,
    repo_tags: [&'a str; 1],
    layers: [String; 1],
}

/// A digest's `sha256:` form and a blob's path in the archive.
fn blob_path(hex: &str) -> String {
    format!("blobs/sha256/{hex}")
}

/// RFC 3339 UTC for epoch seconds (the config's `created`): the one the cache and the SBOM use.
pub use crate::cache::inventory::rfc3339;

/// Writes `layer` as a tar to `out`, every mtime `epoch`; returns its SHA-256 (hex) and size.
fn write_layer(image: &Image, epoch: u64, out: &Path) -> Result<(String, u64), OciError> {
    let name = image.reference();
    let werr = |source| OciError::Write { image: name.clone(), path: out.to_path_buf(), source };
    let file = fs::File::create(out).map_err(werr)?;
    let mut tar = tar::Tar::new(HashingWriter::new(BufWriter::new(file)), epoch);
    for path in image.layer.entries.keys() {
        if path.is_empty() || path.split('/').any(|c| c == ".." || c == "." || c.is_empty()) {
            return Err(OciError::BadPath { image: name.clone(), path: path.clone() });
        }
    }
    for (path, node) in image.layer.closed() {
        match node {
            Node::Dir(mode) => tar.dir(&path, mode).map_err(werr)?,
            Node::Symlink(target) => tar.symlink(&path, &target).map_err(werr)?,
            Node::Bytes(content, mode) => {
                tar.file(&path, mode, content.len() as u64, &content[..]).map_err(werr)?
            }
            Node::File(src, mode) => {
                let serr =
                    |source| OciError::Source { image: name.clone(), path: src.clone(), source };
                let f = fs::File::open(&src).map_err(serr)?;
                let size = f.metadata().map_err(serr)?.len();
                tar.file(&path, mode, size, f).map_err(|e| match e.kind() {
                    io::ErrorKind::UnexpectedEof => serr(e),
                    _ => werr(e),
                })?
            }
        }
    }
    let hashing = tar.finish().map_err(werr)?;
    Ok(hashing.finish())
}

/// Writes `image` as an OCI layout tar (plus Docker's `manifest.json`) at `out`, every time
/// in it `epoch`. Atomic: a temp file beside `out`, renamed when complete.
pub fn write_archive(image: &Image, epoch: u64, out: &Path) -> Result<Written, OciError> {
    let name = image.reference();
    let werr = |source| OciError::Write { image: name.clone(), path: out.to_path_buf(), source };
    let dir = out.parent().unwrap_or(Path::new("."));
    let work = tempfile::tempdir_in(dir).map_err(werr)?;
    let layer_path = work.path().join("layer.tar");
    let (layer_hex, layer_size) = write_layer(image, epoch, &layer_path)?;

    let config = serde_json::to_vec(&Config {
        created: rfc3339(epoch),
        architecture: "amd64",
        os: "linux",
        config: RunConfig {
            env: &image.env,
            entrypoint: &image.entrypoint,
            cmd: &image.cmd,
            working_dir: "/",
        },
        rootfs: RootFs { kind: "layers", diff_ids: vec![format!("sha256:{layer_hex}")] },
    })
    .expect("serialising plain structs");
    let config_hex = hex::encode(Sha256::digest(&config));
    let desc = |mt, hex: &str, size| Descriptor {
        media_type: mt,
        digest: format!("sha256:{hex}"),
        size,
        annotations: BTreeMap::new(),
    };
    let manifest = serde_json::to_vec(&Manifest {
        schema_version: 2,
        media_type: MT_MANIFEST,
        config: desc(MT_CONFIG, &config_hex, config.len() as u64),
        layers: vec![desc(MT_LAYER, &layer_hex, layer_size)],
    })
    .expect("serialising plain structs");
    let manifest_hex = hex::encode(Sha256::digest(&manifest));
    let mut mdesc = desc(MT_MANIFEST, &manifest_hex, manifest.len() as u64);
    mdesc.annotations.insert("io.containerd.image.name", name.clone());
    mdesc.annotations.insert("org.opencontainers.image.ref.name", image.tag.clone());
    let index = serde_json::to_vec(&Index {
        schema_version: 2,
        media_type: MT_INDEX,
        manifests: vec![mdesc],
    })
    .expect("serialising plain structs");
    let docker = serde_json::to_vec(&[DockerManifest {
        config: blob_path(&config_hex),
        repo_tags: [&name],
        layers: [blob_path(&layer_hex)],
    }])
    .expect("serialising plain structs");

    let tmp = work.path().join("archive.tar");
    let file = fs::File::create(&tmp).map_err(werr)?;
    let mut tar = tar::Tar::new(BufWriter::new(file), epoch);
    let mut blobs: Vec<(String, Blob)> = vec![
        (layer_hex, Blob::File(&layer_path, layer_size)),
        (config_hex.clone(), Blob::Bytes(&config)),
        (manifest_hex.clone(), Blob::Bytes(&manifest)),
    ];
    blobs.sort_by(|a, b| a.0.cmp(&b.0));
    tar.dir("blobs", 0o755).map_err(werr)?;
    tar.dir("blobs/sha256", 0o755).map_err(werr)?;
    for (hex, blob) in &blobs {
        let path = blob_path(hex);
        match blob {
            Blob::Bytes(b) => tar.file(&path, 0o644, b.len() as u64, &b[..]),
            Blob::File(p, size) => tar.file(&path, 0o644, *size, fs::File::open(p).map_err(werr)?),
        }
        .map_err(werr)?;
    }
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
    tar.file("index.json", 0o644, index.len() as u64, &index[..]).map_err(werr)?;
    tar.file("manifest.json", 0o644, docker.len() as u64, &docker[..]).map_err(werr)?;
    tar.file("oci-layout", 0o644, layout.len() as u64, &layout[..]).map_err(werr)?;
    let mut w = tar.finish().map_err(werr)?;
    w.get_mut().sync_all().map_err(werr)?;
    drop(w);
    let bytes = fs::metadata(&tmp).map_err(werr)?.len();
    fs::rename(&tmp, out).map_err(werr)?;
    Ok(Written {
        reference: name,
        digest: format!("sha256:{manifest_hex}"),
        config: format!("sha256:{config_hex}"),
        bytes,
        path: out.to_path_buf(),
    })
}

enum Blob<'a> {
    Bytes(&'a [u8]),
    File(&'a Path, u64),
}

/// A writer that hashes what passes through it.
struct HashingWriter<W: Write> {
    inner: W,
    hash: Sha256,
    len: u64,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        Self { inner, hash: Sha256::new(), len: 0 }
    }

    fn finish(self) -> (String, u64) {
        (hex::encode(self.hash.finalize()), self.len)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests;
