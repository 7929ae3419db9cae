//! The OVF environment source: `--ovf-env FILE`, the `OVF ENV` CD-ROM (live only), or
//! `guestinfo.ovfEnv`. Properties `capstan.<path>` become settings; the VMware
//! `EthernetAdapterSection` supplies `net.nicN.mac` for NICs whose MAC is not set.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

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

/// The environment this process last read from a CD-ROM: the device (its canonical path), its
/// media sequence number then, and what was read.
#[derive(Debug, Clone)]
struct CdromRead {
    device: PathBuf,
    seq: u64,
    bytes: Option<Vec<u8>>,
}

static LAST_CDROM: Mutex<Option<CdromRead>> = Mutex::new(None);

/// The media sequence number of the block device `device` (its node, or a link to it):
/// `/sys/class/block/<name>/diskseq`, which the kernel raises at every media change it sees
/// (at an open, and at udev's 2 s poll of removable drives). `None` where there is none (a
/// kernel before 5.15, a file that is not a device node).
pub fn media_seq(sys_dir: &Path, device: &Path) -> Option<u64> {
    let real = std::fs::canonicalize(device).ok()?;
    let name = real.file_name()?.to_str()?;
    let file = sys_dir.join("class/block").join(name).join("diskseq");
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

/// `read(device)`, unless this process read the same medium before: the same device with the
/// same media sequence number ([`media_seq`]). An instant clone keeps its parent's CD-ROM, so
/// a child's gathering does not go to the drive again (the daemon read it at its first poll).
/// Without a sequence number the drive is always read; an error is never remembered.
fn read_cdrom_once(
    device: &Path,
    sys_dir: &Path,
    read: impl FnOnce(&Path) -> Result<Option<Vec<u8>>, iso9660::IsoError>,
) -> Result<Option<Vec<u8>>, iso9660::IsoError> {
    let Some(seq) = media_seq(sys_dir, device) else {
        return read(device);
    };
    let real = std::fs::canonicalize(device).unwrap_or_else(|_| device.to_owned());
    let known = LAST_CDROM.lock().ok().and_then(|last| {
        last.as_ref().filter(|l| l.device == real && l.seq == seq).map(|l| l.bytes.clone())
    });
    if let Some(bytes) = known {
        return Ok(bytes);
    }
    let bytes = read(device)?;
    if let Ok(mut last) = LAST_CDROM.lock() {
        *last = Some(CdromRead { device: real, seq, bytes: bytes.clone() });
    }
    Ok(bytes)
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
        match read_cdrom_once(&dev, &opts.sys_dir, read_ovf_env_cdrom) {
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
    let (layer, vcenter) = match env_layer(&bytes) {
        Ok(v) => v,
        Err(e) => {
            errors.push(SourceError::new("ovf-env", &location, &e));
            return (Vec::new(), None);
        }
    };
    reports.push(SourceReport {
        name: "ovf-env".into(),
        location,
        values: layer.iter().filter(|(_, v)| !v.value.trim().is_empty()).count(),
    });
    (layer, vcenter)
}

/// The environments this process parsed, by their bytes: their layer and `ve:vCenterId` (a few:
/// a node sees one environment, maybe a second after a change).
type Parsed = std::collections::BTreeMap<Vec<u8>, (Layer, Option<String>)>;

static PARSED: Mutex<Parsed> = Mutex::new(std::collections::BTreeMap::new());

/// How many parsed environments are kept.
const PARSED_KEPT: usize = 4;

/// The layer and the `ve:vCenterId` of an environment; bytes parsed before are not parsed again
/// (a clone reads its parent's environment). Errors are not kept.
fn env_layer(bytes: &[u8]) -> Result<(Layer, Option<String>), ovf::env::EnvError> {
    let kept = PARSED.lock().ok().and_then(|m| m.get(bytes).cloned());
    if let Some(k) = kept {
        return Ok(k);
    }
    let env = ovf::env::Environment::from_bytes(bytes)?;
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
    let vcenter = env.vcenter_id.filter(|v| !v.is_empty());
    if let Ok(mut m) = PARSED.lock() {
        if m.len() >= PARSED_KEPT {
            m.clear();
        }
        m.insert(bytes.to_vec(), (layer.clone(), vcenter.clone()));
    }
    Ok((layer, vcenter))
}

fn read_limited(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let f = File::open(path)?;
    let mut buf = Vec::new();
    // One byte past the limit so the parser reports "too large".
    f.take(ovf::env::MAX_ENV_SIZE as u64 + 1).read_to_end(&mut buf)?;
    Ok(Some(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unchanged_medium_is_read_once_and_a_changed_one_again() {
        let t = tempfile::tempdir().unwrap();
        let dev = t.path().join("dev");
        std::fs::create_dir_all(dev.join("disk/by-label")).unwrap();
        std::fs::write(dev.join("sr7"), b"iso").unwrap();
        std::os::unix::fs::symlink(dev.join("sr7"), dev.join("disk/by-label/OVF\\x20ENV")).unwrap();
        let link = dev.join("disk/by-label/OVF\\x20ENV");
        let sys = t.path().join("sys");
        let reads = std::cell::Cell::new(0);
        let read = |body: &'static [u8]| {
            let reads = &reads;
            move |_: &Path| -> Result<Option<Vec<u8>>, iso9660::IsoError> {
                reads.set(reads.get() + 1);
                Ok(Some(body.to_vec()))
            }
        };
        // no sequence number (an old kernel): the drive is read every time
        assert_eq!(read_cdrom_once(&link, &sys, read(b"a")).unwrap().unwrap(), b"a");
        assert_eq!(read_cdrom_once(&link, &sys, read(b"a")).unwrap().unwrap(), b"a");
        assert_eq!(reads.get(), 2);
        // the kernel's sequence number, found through the by-label link
        std::fs::create_dir_all(sys.join("class/block/sr7")).unwrap();
        std::fs::write(sys.join("class/block/sr7/diskseq"), "9\n").unwrap();
        assert_eq!(media_seq(&sys, &link), Some(9));
        assert_eq!(read_cdrom_once(&link, &sys, read(b"b")).unwrap().unwrap(), b"b");
        assert_eq!(read_cdrom_once(&link, &sys, read(b"c")).unwrap().unwrap(), b"b", "same medium");
        assert_eq!(reads.get(), 3);
        // a media change: read again
        std::fs::write(sys.join("class/block/sr7/diskseq"), "10\n").unwrap();
        assert_eq!(read_cdrom_once(&link, &sys, read(b"d")).unwrap().unwrap(), b"d");
        assert_eq!(reads.get(), 4);
        // an error is not remembered
        std::fs::write(sys.join("class/block/sr7/diskseq"), "11\n").unwrap();
        let failing = |_: &Path| Err(iso9660::IsoError::NotIso);
        assert!(read_cdrom_once(&link, &sys, failing).is_err());
        assert_eq!(read_cdrom_once(&link, &sys, read(b"e")).unwrap().unwrap(), b"e");
        // hostile sequence files are no sequence number
        for bad in ["", "x", "-1", "99999999999999999999999"] {
            std::fs::write(sys.join("class/block/sr7/diskseq"), bad).unwrap();
            assert_eq!(media_seq(&sys, &link), None, "{bad:?}");
        }
    }

    const ENV: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1" xmlns:oe="http://schemas.dmtf.org/ovf/environment/1" oe:id="">
  <PropertySection>
    <Property oe:key="capstan.hostname" oe:value="env-node"/>
    <Property oe:key="other.key" oe:value="x"/>
  </PropertySection>
</Environment>
"#;

    #[test]
    fn the_same_environment_is_not_parsed_again() {
        let (layer, _) = env_layer(ENV.as_bytes()).unwrap();
        assert_eq!(layer.len(), 1, "{layer:?}");
        assert_eq!(layer[0].0, "hostname");
        // the kept layer answers for the same bytes (planted, to tell), never for others
        let planted = vec![("hostname".to_owned(), fv("planted", Source::OvfEnv, "k"))];
        PARSED.lock().unwrap().insert(ENV.as_bytes().to_vec(), (planted.clone(), None));
        assert_eq!(env_layer(ENV.as_bytes()).unwrap().0, planted);
        let other = ENV.replace("env-node", "env-two");
        assert_eq!(env_layer(other.as_bytes()).unwrap().0[0].1.value, "env-two");
        // a broken environment is refused every time
        assert!(env_layer(b"<Environment").is_err());
        assert!(env_layer(b"<Environment").is_err());
    }
}
