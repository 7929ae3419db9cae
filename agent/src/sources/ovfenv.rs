//! The OVF environment source: `--ovf-env FILE`, the `OVF ENV` CD-ROM (live only), or
//! `guestinfo.ovfEnv`. Properties `capstan.<path>` become settings; the VMware
//! `EthernetAdapterSection` supplies `net.nicN.mac` for NICs whose MAC is not set.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::{fv, iso9660, Layer, SourceError, SourceOptions, SourceReport};
use crate::guestinfo::Guestinfo;
use crate::schema::{self, Source, NIC_SLOTS};

/// File names vSphere and cloud-init use for the environment on the ISO.
pub const OVF_ENV_NAMES: &[&str] = &["ovf-env.xml", "ovf_env.xml"];

/// Finds the CD-ROM labelled `OVF ENV` (or `ovf-env`): `/dev/disk/by-label/OVF\x20ENV` when
/// udev made it, else the first `/dev/sr*` whose ISO 9660 volume label matches.
pub fn find_ovf_cdrom(dev_dir: &Path) -> Option<PathBuf> {
    for label in ["OVF\\x20ENV", "ovf-env", "OVF-ENV"] {
        let p = dev_dir.join("disk/by-label").join(label);
        if p.exists() {
            return Some(p);
        }
    }
    let mut srs: Vec<PathBuf> = std::fs::read_dir(dev_dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("sr")))
        .collect();
    srs.sort();
    srs.into_iter().find(|p| {
        File::open(p)
            .ok()
            .and_then(|mut f| iso9660::read_volume(&mut f).ok())
            .is_some_and(|v| is_ovf_label(&v.label))
    })
}

fn is_ovf_label(label: &str) -> bool {
    label.eq_ignore_ascii_case("OVF ENV") || label.eq_ignore_ascii_case("ovf-env")
}

/// Reads `ovf-env.xml` from an ISO 9660 image or device.
pub fn read_ovf_env_cdrom(device: &Path) -> Result<Option<Vec<u8>>, iso9660::IsoError> {
    let mut f = File::open(device)?;
    let vol = iso9660::read_volume(&mut f)?;
    iso9660::read_root_file(&mut f, &vol, OVF_ENV_NAMES, ovf::env::MAX_ENV_SIZE)
}

/// Reads the environment from wherever it is; returns the layer and the `ve:vCenterId`.
pub(super) fn read_layer(
    opts: &SourceOptions,
    gi: Option<&dyn Guestinfo>,
    errors: &mut Vec<SourceError>,
    reports: &mut Vec<SourceReport>,
) -> (Layer, Option<String>) {
    let (bytes, location) = if let Some(file) = &opts.ovf_env_file {
        let loc = file.display().to_string();
        // A file that looks like an ISO image is read as one.
        let looks_iso =
            File::open(file).ok().and_then(|mut f| iso9660::read_volume(&mut f).ok()).is_some();
        let r = if looks_iso {
            read_ovf_env_cdrom(file).map_err(|e| SourceError::new("ovf-env", &loc, &e))
        } else {
            read_limited(file).map_err(|e| SourceError::new("ovf-env", &loc, &e))
        };
        match r {
            Ok(Some(b)) => (Some(b), loc),
            Ok(None) => {
                errors.push(SourceError {
                    source_name: "ovf-env".into(),
                    key: loc,
                    reason: "no ovf-env.xml in the image".into(),
                });
                (None, String::new())
            }
            Err(e) => {
                errors.push(e);
                (None, String::new())
            }
        }
    } else if let Some(dev) = opts.live.then(|| find_ovf_cdrom(&opts.dev_dir)).flatten() {
        let loc = dev.display().to_string();
        match read_ovf_env_cdrom(&dev) {
            Ok(b) => (b, loc),
            Err(e) => {
                errors.push(SourceError::new("ovf-env", &loc, &e));
                (None, String::new())
            }
        }
    } else if let Some(g) = gi {
        match g.get("ovfEnv") {
            Ok(Some(v)) if !super::encoding::is_empty_value(v.as_bytes()) => {
                (Some(v.into_bytes()), format!("{} guestinfo.ovfEnv", g.transport()))
            }
            Ok(_) => (None, String::new()),
            Err(e) => {
                errors.push(SourceError::new(g.transport(), "guestinfo.ovfEnv", &e));
                (None, String::new())
            }
        }
    } else {
        (None, String::new())
    };
    let Some(bytes) = bytes else {
        return (Vec::new(), None);
    };
    let env = match ovf::env::Environment::from_bytes(&bytes) {
        Ok(e) => e,
        Err(e) => {
            errors.push(SourceError::new("ovf-env", &location, &e));
            return (Vec::new(), None);
        }
    };
    let mut layer: Layer = Vec::new();
    for p in &env.properties {
        let Some(path) = p.key.strip_prefix(schema::KEY_PREFIX) else {
            continue; // other products' properties are not ours
        };
        layer.push((path.to_owned(), fv(p.value.clone(), Source::OvfEnv, p.key.clone())));
    }
    // MACs of the VM's adapters, in order, for NIC slots that have no MAC property value.
    for (slot, a) in NIC_SLOTS.iter().zip(&env.ethernet_adapters) {
        let path = format!("net.{slot}.mac");
        let given = layer.iter().any(|(p, v)| *p == path && !v.value.trim().is_empty());
        let slot_used = layer
            .iter()
            .any(|(p, v)| p.starts_with(&format!("net.{slot}.")) && !v.value.trim().is_empty());
        if !given && slot_used {
            layer.push((
                path,
                fv(a.mac.clone(), Source::OvfEnv, format!("ve:Adapter[{slot}] ve:mac")),
            ));
        }
    }
    reports.push(SourceReport {
        name: "ovf-env".into(),
        location,
        values: layer.iter().filter(|(_, v)| !v.value.trim().is_empty()).count(),
    });
    let vcenter = env.vcenter_id.filter(|v| !v.is_empty());
    (layer, vcenter)
}

fn read_limited(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let f = File::open(path)?;
    let mut buf = Vec::new();
    // One byte past the limit so the parser reports "too large".
    f.take(ovf::env::MAX_ENV_SIZE as u64 + 1).read_to_end(&mut buf)?;
    Ok(Some(buf))
}
