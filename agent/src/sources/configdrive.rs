//! The OpenStack config drive provider: a filesystem labelled `config-2` (ISO 9660 or vfat)
//! holding `openstack/latest/meta_data.json`, `network_data.json`, `user_data` and
//! `vendor_data.json`, read from a directory (`--provider configdrive:DIR`, or where the drive is
//! mounted, or from the drive's ISO 9660 image without mounting it). Everything is read and parsed before a [`ProviderData`] is returned; a bad value is
//! a [`ProviderError`] naming `configdrive`, the file and the key.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::iso9660;
use super::provider_data::{
    open_labelled_iso, read_seed_file, refused, utf8, ProviderData, ProviderError, ProviderKeys,
};
use super::{Found, Identity, Provider, SourceOptions};
use crate::cloudinit::openstack::{self, META_DATA, NETWORK_DATA, USER_DATA, VENDOR_DATA};
use crate::cloudinit::MAX_DOCUMENT_BYTES;

const PROVIDER: &str = "configdrive";

/// Volume labels of a config drive.
pub const LABELS: &[&str] = &["config-2", "CONFIG-2"];

/// The drive's files, as bytes; only `meta_data.json` is required.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DriveFiles {
    /// `openstack/latest/meta_data.json`.
    pub meta_data: Vec<u8>,
    /// `openstack/latest/network_data.json`.
    pub network_data: Option<Vec<u8>>,
    /// `openstack/latest/user_data`.
    pub user_data: Option<Vec<u8>>,
    /// `openstack/latest/vendor_data.json`.
    pub vendor_data: Option<Vec<u8>>,
}

/// Parses the drive's files. `location` says where they came from, for `status`.
pub fn parse_drive(files: &DriveFiles, location: &str) -> Result<ProviderData, ProviderError> {
    let md = openstack::parse_meta_data(utf8(PROVIDER, META_DATA, &files.meta_data)?)
        .map_err(|e| ProviderError::from_cloudinit(PROVIDER, META_DATA, e))?;
    let mut out = ProviderData::new(PROVIDER, location);
    out.warnings = md.warnings;
    out.instance_id = md.instance_id;
    out.hostname = md.hostname;
    out.public_keys = md.public_keys;
    if let Some(b) = &files.network_data {
        out.network = openstack::parse_network_data(utf8(PROVIDER, NETWORK_DATA, b)?)
            .map_err(|e| ProviderError::from_cloudinit(PROVIDER, NETWORK_DATA, e))?;
    }
    if let Some(b) = &files.vendor_data {
        // vendor_data.json is JSON (cloud-init reads a "cloud-init" key out of it): refuse a
        // broken one here rather than later, after other steps ran
        serde_json::from_slice::<serde_json::Value>(b).map_err(|e| {
            ProviderError::invalid(
                PROVIDER,
                VENDOR_DATA,
                "(document)",
                format!("not valid JSON: {e}"),
            )
        })?;
    }
    out.user_data = files.user_data.clone();
    out.vendor_data = files.vendor_data.clone();
    Ok(out)
}

/// Reads a config drive's files from `dir` (its root). Only the fixed paths are opened, and
/// only as regular files.
pub fn read_drive_dir(dir: &Path) -> Result<ProviderData, ProviderError> {
    let read = |rel: &str| read_seed_file(PROVIDER, dir, rel, MAX_DOCUMENT_BYTES);
    // a symlinked openstack/ or latest/ directory could lead anywhere: refuse it
    for d in ["openstack", "openstack/latest"] {
        if std::fs::symlink_metadata(dir.join(d)).is_ok_and(|m| !m.is_dir()) {
            return Err(ProviderError::invalid(
                PROVIDER,
                d,
                "(directory)",
                "not a directory (symlinks are refused)",
            ));
        }
    }
    let meta_data = read(META_DATA)?.ok_or_else(|| {
        ProviderError::invalid(PROVIDER, META_DATA, "(document)", "missing from the drive")
    })?;
    let files = DriveFiles {
        meta_data,
        network_data: read(NETWORK_DATA)?,
        user_data: read(USER_DATA)?,
        vendor_data: read(VENDOR_DATA)?,
    };
    parse_drive(&files, &dir.display().to_string())
}

/// Finds the drive: `/dev/disk/by-label/config-2` (or `CONFIG-2`) when udev made it, else the
/// first `/dev/sr*` whose ISO 9660 label is `config-2`.
pub fn find_drive(dev_dir: &Path) -> Option<PathBuf> {
    iso9660::find_labelled(dev_dir, LABELS)
}

/// Opens an ISO 9660 image or device and checks that its label is `config-2`.
fn open_drive_iso(device: &Path) -> Result<(File, iso9660::Volume), ProviderError> {
    open_labelled_iso(PROVIDER, device, LABELS)
}

/// Reads `rel` (`openstack/latest/…`) from an opened drive image.
fn read_iso_file(
    f: &mut File,
    vol: &iso9660::Volume,
    rel: &str,
) -> Result<Option<Vec<u8>>, ProviderError> {
    let parts: Vec<[&str; 1]> = rel.split('/').map(|p| [p]).collect();
    let path: Vec<&[&str]> = parts.iter().map(|p| &p[..]).collect();
    iso9660::read_path(f, vol, &path, MAX_DOCUMENT_BYTES)
        .map_err(|e| ProviderError::invalid(PROVIDER, rel, "(document)", crate::error::chain(&e)))
}

/// Reads a config drive from an ISO 9660 image or device labelled `config-2`, without mounting
/// it (the directory tree is walked by the ISO reader; Rock Ridge names, as OpenStack's
/// `genisoimage -r` writes them).
pub fn read_drive_iso(device: &Path) -> Result<ProviderData, ProviderError> {
    let (mut f, vol) = open_drive_iso(device)?;
    let meta_data = read_iso_file(&mut f, &vol, META_DATA)?.ok_or_else(|| {
        ProviderError::invalid(PROVIDER, META_DATA, "(document)", "missing from the drive")
    })?;
    let files = DriveFiles {
        meta_data,
        network_data: read_iso_file(&mut f, &vol, NETWORK_DATA)?,
        user_data: read_iso_file(&mut f, &vol, USER_DATA)?,
        vendor_data: read_iso_file(&mut f, &vol, VENDOR_DATA)?,
    };
    parse_drive(&files, &device.display().to_string())
}

/// Where a config drive's files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drive {
    /// A directory holding them (`--provider configdrive:DIR`).
    Dir(PathBuf),
    /// An ISO 9660 image or device labelled `config-2`.
    Iso(PathBuf),
}

/// The OpenStack config drive provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigDrive {
    drive: Drive,
}

const KEYS: ProviderKeys = ProviderKeys {
    instance_id: "openstack/latest/meta_data.json uuid",
    hostname: "openstack/latest/meta_data.json hostname",
    user_data: USER_DATA,
    vendor_data: VENDOR_DATA,
};

impl ConfigDrive {
    /// A drive's files in a directory (`--provider configdrive:DIR`).
    pub fn dir(dir: impl Into<PathBuf>) -> Self {
        ConfigDrive { drive: Drive::Dir(dir.into()) }
    }

    /// Detection: a `config-2` device under `dev_dir`.
    pub fn detect(dev_dir: &Path) -> Option<Self> {
        find_drive(dev_dir).map(|p| ConfigDrive { drive: Drive::Iso(p) })
    }

    /// Where the drive is, for `status`.
    pub fn location(&self) -> String {
        match &self.drive {
            Drive::Dir(p) | Drive::Iso(p) => p.display().to_string(),
        }
    }

    /// Reads and parses the drive, all of it or an error.
    pub fn read_data(&self) -> Result<ProviderData, ProviderError> {
        match &self.drive {
            Drive::Dir(d) => read_drive_dir(d),
            Drive::Iso(dev) => read_drive_iso(dev),
        }
    }
}

impl Provider for ConfigDrive {
    fn name(&self) -> &'static str {
        PROVIDER
    }

    fn read(&self, _opts: &SourceOptions) -> Found {
        match self.read_data() {
            Ok(d) => d.into_found(&KEYS),
            Err(e) => refused(PROVIDER, &self.location(), &e),
        }
    }

    /// `meta_data.json`'s `uuid`: one small file read.
    fn identity(&self) -> Identity {
        let bytes = match &self.drive {
            Drive::Dir(d) => read_seed_file(PROVIDER, d, META_DATA, MAX_DOCUMENT_BYTES).ok(),
            Drive::Iso(dev) => {
                open_drive_iso(dev).and_then(|(mut f, v)| read_iso_file(&mut f, &v, META_DATA)).ok()
            }
        };
        let uuid = bytes.flatten().and_then(|b| {
            let v: serde_json::Value = serde_json::from_slice(&b).ok()?;
            v.get("uuid")?.as_str().map(str::to_owned)
        });
        Identity(vec![uuid])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendor_data_must_be_json_and_meta_data_is_required() {
        let files = DriveFiles {
            meta_data: br#"{"uuid": "u-1"}"#.to_vec(),
            vendor_data: Some(b"{nope".to_vec()),
            ..DriveFiles::default()
        };
        let e = parse_drive(&files, "x").unwrap_err().to_string();
        assert!(
            e.starts_with(
                "configdrive openstack/latest/vendor_data.json: (document): not valid JSON"
            ),
            "{e}"
        );
        let d = tempfile::tempdir().unwrap();
        let e = read_drive_dir(d.path()).unwrap_err().to_string();
        assert_eq!(
            e,
            "configdrive openstack/latest/meta_data.json: (document): missing from the drive"
        );
        std::os::unix::fs::symlink("/etc", d.path().join("openstack")).unwrap();
        let e = read_drive_dir(d.path()).unwrap_err().to_string();
        assert_eq!(e, "configdrive openstack: (directory): not a directory (symlinks are refused)");
    }
}
