//! The NoCloud provider: a seed (`meta-data`, `user-data`, `vendor-data`, `network-config`) on a
//! filesystem labelled `cidata`/`CIDATA`, in a directory (`--provider nocloud:DIR`), or the
//! SMBIOS system serial `ds=nocloud;i=<instance-id>;h=<hostname>;s=<seedfrom>`.
//!
//! Reading is all-or-nothing: every file is read and parsed before a [`ProviderData`] is
//! returned; any bad value is a [`ProviderError`] naming `nocloud`, the file and the key.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::iso9660;
use super::provider_data::{
    open_labelled_iso, read_seed_file, refused, utf8, ProviderData, ProviderError, ProviderKeys,
};
use super::{Found, Identity, Provider, SourceOptions};
use crate::cloudinit::{self, netv1, MAX_DOCUMENT_BYTES};
use crate::types::{Hostname, InstanceId};

const PROVIDER: &str = "nocloud";

/// Volume labels of a NoCloud seed, as cloud-init looks for them.
pub const LABELS: &[&str] = &["cidata", "CIDATA"];

/// The seed's files, as bytes; only `meta-data` is required.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeedFiles {
    /// `meta-data` (YAML).
    pub meta_data: Vec<u8>,
    /// `user-data`.
    pub user_data: Option<Vec<u8>>,
    /// `vendor-data`.
    pub vendor_data: Option<Vec<u8>>,
    /// `network-config` (version 1 or 2).
    pub network_config: Option<Vec<u8>>,
}

/// Parses a seed. `location` says where it came from, for `status`.
pub fn parse_seed(files: &SeedFiles, location: &str) -> Result<ProviderData, ProviderError> {
    let text = utf8(PROVIDER, "meta-data", &files.meta_data)?;
    let md = cloudinit::parse_metadata(text)
        .map_err(|e| ProviderError::from_cloudinit(PROVIDER, "meta-data", e))?;
    let mut out = ProviderData::new(PROVIDER, location);
    out.warnings = md.warnings;
    out.instance_id = md.instance_id;
    out.hostname = md.local_hostname;
    out.public_keys = md.public_keys;
    out.network = md.network;
    let legacy = md.raw.get("network-interfaces").is_some();
    match &files.network_config {
        Some(bytes) => {
            let text = utf8(PROVIDER, "network-config", bytes)?;
            let doc = netv1::parse_network_config(text, "network-config")
                .map_err(|e| ProviderError::from_cloudinit(PROVIDER, "network-config", e))?;
            out.warnings.extend(doc.warnings);
            // network-config wins over anything in meta-data, as in cloud-init
            out.network = doc.network;
            if legacy {
                out.warnings
                    .push("meta-data: network-interfaces: ignored, network-config is given".into());
            }
        }
        None if legacy => {
            return Err(ProviderError::invalid(
                PROVIDER,
                "meta-data",
                "network-interfaces",
                "ifupdown (ENI) network configuration is not supported; give network-config \
                 (version 1 or 2) instead; nothing applied",
            ))
        }
        None => {}
    }
    out.user_data = files.user_data.clone();
    out.vendor_data = files.vendor_data.clone();
    Ok(out)
}

/// Reads a seed directory (`--provider nocloud:DIR`, or a mounted `cidata` filesystem). Only the
/// four fixed names are opened, and only as regular files.
pub fn read_seed_dir(dir: &Path) -> Result<ProviderData, ProviderError> {
    let read = |name: &str| read_seed_file(PROVIDER, dir, name, MAX_DOCUMENT_BYTES);
    let meta_data = read("meta-data")?.ok_or_else(|| {
        ProviderError::invalid(PROVIDER, "meta-data", "(document)", "missing from the seed")
    })?;
    let files = SeedFiles {
        meta_data,
        user_data: read("user-data")?,
        vendor_data: read("vendor-data")?,
        network_config: read("network-config")?,
    };
    parse_seed(&files, &dir.display().to_string())
}

/// The seed's file names on an ISO 9660 image: the real name and the 8.3 form that
/// `genisoimage`/`xorriso -as mkisofs` write to the primary directory beside the Rock Ridge name
/// (our reader reads only the primary names).
const ISO_NAMES: [(&str, &[&str]); 4] = [
    ("meta-data", &["meta-data", "meta_dat"]),
    ("user-data", &["user-data", "user_dat"]),
    ("vendor-data", &["vendor-data", "vendor_d"]),
    ("network-config", &["network-config", "network_"]),
];

/// Opens an ISO 9660 image or device and checks that its label is `cidata`.
fn open_seed_iso(device: &Path) -> Result<(File, iso9660::Volume), ProviderError> {
    open_labelled_iso(PROVIDER, device, LABELS)
}

/// Reads one of the seed's files from an opened ISO.
fn read_iso_file(
    f: &mut File,
    vol: &iso9660::Volume,
    name: &str,
    aliases: &[&str],
) -> Result<Option<Vec<u8>>, ProviderError> {
    iso9660::read_root_file(f, vol, aliases, MAX_DOCUMENT_BYTES)
        .map_err(|e| ProviderError::invalid(PROVIDER, name, "(document)", crate::error::chain(&e)))
}

/// Reads a seed from an ISO 9660 image or device labelled `cidata`, without mounting it.
pub fn read_seed_iso(device: &Path) -> Result<ProviderData, ProviderError> {
    let (mut f, vol) = open_seed_iso(device)?;
    let mut got: Vec<Option<Vec<u8>>> = Vec::new();
    for (name, aliases) in ISO_NAMES {
        got.push(read_iso_file(&mut f, &vol, name, aliases)?);
    }
    let mut it = got.into_iter();
    let meta_data = it.next().flatten().ok_or_else(|| {
        ProviderError::invalid(PROVIDER, "meta-data", "(document)", "missing from the seed")
    })?;
    let files = SeedFiles {
        meta_data,
        user_data: it.next().flatten(),
        vendor_data: it.next().flatten(),
        network_config: it.next().flatten(),
    };
    parse_seed(&files, &device.display().to_string())
}

/// Finds the seed device: `/dev/disk/by-label/cidata` (or `CIDATA`) when udev made it, else the
/// first `/dev/sr*` whose ISO 9660 label is `cidata`. vfat seeds are found by label only.
pub fn find_seed_device(dev_dir: &Path) -> Option<PathBuf> {
    iso9660::find_labelled(dev_dir, LABELS)
}

/// What the SMBIOS serial (or kernel command line) says: `ds=nocloud[-net];i=…;h=…;s=…`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SerialSeed {
    /// `i=`: the instance id.
    pub instance_id: Option<InstanceId>,
    /// `h=`: the host name.
    pub hostname: Option<Hostname>,
    /// `s=`: where the rest of the seed is (`file://`, `http://`, `https://`); not fetched here.
    pub seedfrom: Option<String>,
    /// True for `ds=nocloud-net` (the seed is read after the network is up).
    pub net: bool,
}

/// Parses the `ds=nocloud` form out of an SMBIOS system serial (or a kernel command line), as
/// cloud-init's `parse_cmdline_data`: `Ok(None)` when it is not there.
pub fn parse_smbios_serial(serial: &str) -> Result<Option<SerialSeed>, ProviderError> {
    const FILE: &str = "smbios system-serial-number";
    let bad = |key: &str, p: String| ProviderError::invalid(PROVIDER, FILE, key, p);
    if serial.len() > 4096 {
        return Err(bad("(document)", "longer than 4096 bytes".into()));
    }
    let Some(token) = serial
        .split_whitespace()
        .find(|t| t.split(';').next().is_some_and(|h| h == "ds=nocloud" || h == "ds=nocloud-net"))
    else {
        return Ok(None);
    };
    let mut parts = token.split(';');
    let mut seed =
        SerialSeed { net: parts.next() == Some("ds=nocloud-net"), ..SerialSeed::default() };
    for item in parts.filter(|p| !p.is_empty()) {
        let (k, v) = item.split_once('=').unwrap_or((item, ""));
        match k {
            "i" | "instance-id" => {
                seed.instance_id = Some(v.parse().map_err(|e| bad("i", format!("{e}")))?)
            }
            "h" | "local-hostname" => {
                seed.hostname = Some(v.parse().map_err(|e| bad("h", format!("{e}")))?)
            }
            "s" | "seedfrom" => {
                if !["file://", "http://", "https://"].iter().any(|p| v.starts_with(p)) {
                    return Err(bad(
                        "s",
                        format!("{v:?} is not a file://, http:// or https:// URL"),
                    ));
                }
                seed.seedfrom = Some(v.to_owned());
            }
            "dsmode" => {}
            other => return Err(bad(other, "unknown key (known: i, h, s)".into())),
        }
    }
    Ok(Some(seed))
}

impl SerialSeed {
    /// Puts the serial's values over the seed's, as cloud-init does (the command line and the
    /// serial win over `meta-data`).
    pub fn apply(&self, data: &mut ProviderData) {
        if let Some(id) = &self.instance_id {
            data.instance_id = Some(id.clone());
        }
        if let Some(h) = &self.hostname {
            data.hostname = Some(h.clone());
        }
    }
}

/// Reads the SMBIOS system serial under `sys_dir` (`/sys`) and parses its `ds=nocloud` form;
/// `Ok(None)` when there is no serial (not root, no DMI) or it does not say `ds=nocloud`.
pub fn read_serial_seed(sys_dir: &Path) -> Result<Option<SerialSeed>, ProviderError> {
    let dmi = sys_dir.join("class/dmi/id");
    match read_seed_file(PROVIDER, &dmi, "product_serial", 4096) {
        Ok(Some(b)) => parse_smbios_serial(utf8(PROVIDER, "product_serial", &b)?.trim()),
        Ok(None) | Err(ProviderError::Read { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Where a NoCloud seed's files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seed {
    /// A directory holding them (`--provider nocloud:DIR`).
    Dir(PathBuf),
    /// An ISO 9660 image or device labelled `cidata`.
    Iso(PathBuf),
    /// No seed: the SMBIOS serial alone (`ds=nocloud;i=…;h=…`).
    SerialOnly,
}

/// The NoCloud provider: a seed and, when detected on the machine, the SMBIOS serial over it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoCloud {
    seed: Seed,
    /// `/sys`, for the serial (`None`: the serial is not read, as with `--provider`).
    sys_dir: Option<PathBuf>,
}

/// Where the values of a seed are recorded as coming from.
const KEYS: ProviderKeys = ProviderKeys {
    instance_id: "meta-data instance-id",
    hostname: "meta-data local-hostname",
    user_data: "user-data",
    vendor_data: "vendor-data",
};

impl NoCloud {
    /// A seed directory, read as it is (`--provider nocloud:DIR`).
    pub fn dir(dir: impl Into<PathBuf>) -> Self {
        NoCloud { seed: Seed::Dir(dir.into()), sys_dir: None }
    }

    /// Detection: a `cidata` device under `dev_dir`, or an SMBIOS serial under `sys_dir`
    /// that says `ds=nocloud` (a serial that says it badly counts: reading it reports why).
    pub fn detect(dev_dir: &Path, sys_dir: &Path) -> Option<Self> {
        let device = find_seed_device(dev_dir);
        let serial = read_serial_seed(sys_dir);
        if device.is_none() && matches!(serial, Ok(None)) {
            return None;
        }
        let seed = device.map_or(Seed::SerialOnly, Seed::Iso);
        Some(NoCloud { seed, sys_dir: Some(sys_dir.to_owned()) })
    }

    /// Where the seed is, for `status`.
    pub fn location(&self) -> String {
        match &self.seed {
            Seed::Dir(p) | Seed::Iso(p) => p.display().to_string(),
            Seed::SerialOnly => "/sys/class/dmi/id/product_serial".into(),
        }
    }

    /// Reads and parses the seed (and the serial over it), all of it or an error.
    pub fn read_data(&self) -> Result<ProviderData, ProviderError> {
        let serial = match &self.sys_dir {
            Some(sys) => read_serial_seed(sys)?,
            None => None,
        };
        let mut data = match &self.seed {
            Seed::Dir(d) => read_seed_dir(d)?,
            Seed::Iso(dev) => read_seed_iso(dev)?,
            Seed::SerialOnly => serial_only(serial.as_ref())?,
        };
        if let Some(s) = &serial {
            s.apply(&mut data);
        }
        Ok(data)
    }

    /// The seed's `meta-data` instance-id and the serial's `i=`: one small read each.
    fn instance_ids(&self) -> Vec<Option<String>> {
        let meta = match &self.seed {
            Seed::Dir(d) => read_seed_file(PROVIDER, d, "meta-data", MAX_DOCUMENT_BYTES).ok(),
            Seed::Iso(dev) => open_seed_iso(dev)
                .and_then(|(mut f, vol)| read_iso_file(&mut f, &vol, "meta-data", ISO_NAMES[0].1))
                .ok(),
            Seed::SerialOnly => None,
        };
        let from_meta = meta.flatten().and_then(|b| {
            let md = cloudinit::parse_metadata(std::str::from_utf8(&b).ok()?).ok()?;
            md.instance_id.map(|i| i.to_string())
        });
        let serial = self.sys_dir.as_deref().and_then(|s| read_serial_seed(s).ok().flatten());
        vec![from_meta, serial.and_then(|s| s.instance_id).map(|i| i.to_string())]
    }
}

/// The data of a serial without a seed device: its `i=` and `h=` (a `s=` seed URL is not
/// fetched: attach the seed as a `cidata` drive instead).
fn serial_only(serial: Option<&SerialSeed>) -> Result<ProviderData, ProviderError> {
    const FILE: &str = "smbios system-serial-number";
    let s = serial.ok_or_else(|| {
        ProviderError::invalid(PROVIDER, FILE, "(document)", "no ds=nocloud and no seed")
    })?;
    if let Some(url) = &s.seedfrom {
        return Err(ProviderError::invalid(
            PROVIDER,
            FILE,
            "s",
            format!("{url:?}: seeds are not fetched; attach a cidata drive; nothing applied"),
        ));
    }
    if s.instance_id.is_none() {
        return Err(ProviderError::invalid(
            PROVIDER,
            FILE,
            "i",
            "missing, and no cidata seed is attached; nothing applied",
        ));
    }
    Ok(ProviderData::new(PROVIDER, "/sys/class/dmi/id/product_serial"))
}

impl Provider for NoCloud {
    fn name(&self) -> &'static str {
        PROVIDER
    }

    fn read(&self, _opts: &SourceOptions) -> Found {
        match self.read_data() {
            Ok(d) => d.into_found(&KEYS),
            Err(e) => refused(PROVIDER, &self.location(), &e),
        }
    }

    fn identity(&self) -> Identity {
        Identity(self.instance_ids())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_forms() {
        let s = parse_smbios_serial("ds=nocloud;i=iid-01;h=node-1;s=http://10.0.0.1:8000/")
            .unwrap()
            .unwrap();
        assert_eq!(s.instance_id.unwrap().as_str(), "iid-01");
        assert_eq!(s.hostname.unwrap().as_str(), "node-1");
        assert_eq!(s.seedfrom.as_deref(), Some("http://10.0.0.1:8000/"));
        assert!(!s.net);
        let s = parse_smbios_serial("VMware-56 4d ds=nocloud-net;h=a;").unwrap().unwrap();
        assert!(s.net && s.instance_id.is_none());
        assert_eq!(parse_smbios_serial("ds=nocloud").unwrap(), Some(SerialSeed::default()));
        assert!(parse_smbios_serial("VMware-56 4d 3a").unwrap().is_none());
        assert!(parse_smbios_serial("ds=nocloudx;i=a").unwrap().is_none());
    }

    #[test]
    fn hostile_serials() {
        let cases = [
            (
                "ds=nocloud;i=../../etc",
                "nocloud smbios system-serial-number: i: invalid instance-id",
            ),
            ("ds=nocloud;h=a_b", "nocloud smbios system-serial-number: h: invalid hostname"),
            (
                "ds=nocloud;s=ftp://x/",
                "nocloud smbios system-serial-number: s: \"ftp://x/\" is not",
            ),
            ("ds=nocloud;z=1", "nocloud smbios system-serial-number: z: unknown key"),
            ("ds=nocloud;i=", "nocloud smbios system-serial-number: i: invalid instance-id"),
        ];
        for (s, want) in cases {
            let e = parse_smbios_serial(s).unwrap_err().to_string();
            assert!(e.starts_with(want), "{s}: {e}");
        }
        let long = format!("ds=nocloud;i={}", "a".repeat(5000));
        assert!(parse_smbios_serial(&long).unwrap_err().to_string().contains("longer than"));
    }

    #[test]
    fn serial_from_sys_overrides_the_seed() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(read_serial_seed(d.path()).unwrap(), None);
        let dmi = d.path().join("class/dmi/id");
        std::fs::create_dir_all(&dmi).unwrap();
        std::fs::write(dmi.join("product_serial"), "ds=nocloud;i=iid-serial;h=from-serial\n")
            .unwrap();
        let s = read_serial_seed(d.path()).unwrap().unwrap();
        let files = SeedFiles {
            meta_data: b"instance-id: iid-seed\nlocal-hostname: seed\n".to_vec(),
            ..SeedFiles::default()
        };
        let mut data = parse_seed(&files, "x").unwrap();
        s.apply(&mut data);
        assert_eq!(data.instance_id.unwrap().as_str(), "iid-serial");
        assert_eq!(data.hostname.unwrap().as_str(), "from-serial");
        std::fs::write(dmi.join("product_serial"), "ds=nocloud;h=bad_name").unwrap();
        assert!(read_serial_seed(d.path()).is_err());
    }

    #[test]
    fn yaml_alias_bombs_are_refused() {
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 0..9 {
            let prev = (b'a' + i) as char;
            let next = (b'a' + i + 1) as char;
            bomb.push_str(&format!("{next}: &{next} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
        }
        let files = SeedFiles {
            meta_data: bomb.clone().into_bytes(),
            network_config: Some(bomb.into_bytes()),
            ..SeedFiles::default()
        };
        let e = parse_seed(&files, "x").unwrap_err().to_string();
        assert!(e.starts_with("nocloud meta-data: (document): not valid YAML"), "{e}");
    }

    #[test]
    fn eni_refused_without_network_config() {
        let files = SeedFiles {
            meta_data: b"instance-id: a\nnetwork-interfaces: |\n  iface eth0 inet dhcp\n".to_vec(),
            ..SeedFiles::default()
        };
        let e = parse_seed(&files, "x").unwrap_err().to_string();
        assert!(e.starts_with("nocloud meta-data: network-interfaces: ifupdown (ENI)"), "{e}");
        let files = SeedFiles {
            network_config: Some(b"version: 2\nethernets: {eth0: {dhcp4: true}}\n".to_vec()),
            ..files
        };
        let d = parse_seed(&files, "x").unwrap();
        assert!(d.network.unwrap().nics[0].dhcp4);
        assert!(d.warnings.iter().any(|w| w.contains("network-interfaces")));
    }
}
