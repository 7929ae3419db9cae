//! The OVF environment the lab delivers: the descriptor's property defaults, overridden by
//! `--prop`, written as `ovf-env.xml` on an ISO labelled `OVF ENV` (vCenter's ISO transport).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use crate::check::{self, ImageFormat};
use crate::exec;

/// Reads the `.ovf` member of an OVA.
pub fn read_ova_descriptor(ova: &Path, work: &Path) -> anyhow::Result<ovf::descriptor::Envelope> {
    let list = exec::output(Command::new("tar").arg("-tf").arg(ova))?;
    let Some(member) = list.lines().find(|l| l.ends_with(".ovf")) else {
        bail!("{}: no .ovf member in the OVA", ova.display());
    };
    let dir = work.join("ovf");
    fs::create_dir_all(&dir)?;
    exec::run(Command::new("tar").arg("-xf").arg(ova).arg("-C").arg(&dir).arg(member))?;
    let bytes = fs::read(dir.join(member))?;
    ovf::descriptor::Envelope::from_bytes(&bytes)
        .with_context(|| format!("{}: parsing {member}", ova.display()))
}

/// The environment keys and default values an envelope declares, in order.
pub fn property_defaults(env: &ovf::descriptor::Envelope) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Some(content) = &env.content else {
        return out;
    };
    for vs in content.systems() {
        for ps in vs.products() {
            for p in ps.properties() {
                out.push((ps.env_key(p), p.value.clone().unwrap_or_default()));
            }
        }
    }
    out
}

/// Merges `--prop` values over `defaults`. With a descriptor, a key it does not declare is
/// an error (vCenter would never deliver it); without one (qcow2/raw), every key is taken.
pub fn merge(
    defaults: Option<Vec<(String, String)>>,
    props: &[(String, String)],
) -> anyhow::Result<Vec<(String, String)>> {
    let strict = defaults.is_some();
    let mut out = defaults.unwrap_or_default();
    for (k, v) in props {
        match out.iter_mut().find(|(dk, _)| dk == k) {
            Some(slot) => slot.1 = v.clone(),
            None if strict => {
                let known: Vec<&str> = out.iter().map(|(k, _)| k.as_str()).collect();
                bail!(
                    "--prop {k}: the OVA declares no such property (it has: {})",
                    known.join(", ")
                )
            }
            None => out.push((k.clone(), v.clone())),
        }
    }
    Ok(out)
}

/// The property values for `image`: the OVA's defaults plus `props`.
pub fn environment_for(
    image: &Path,
    props: &[(String, String)],
    work: &Path,
) -> anyhow::Result<Vec<(String, String)>> {
    let defaults = match check::sniff(image)? {
        ImageFormat::Ova => Some(property_defaults(&read_ova_descriptor(image, work)?)),
        _ => None,
    };
    merge(defaults, props)
}

/// The environment document as vSphere writes it for a VM with one NIC.
pub fn build_environment(props: &[(String, String)], mac: &str) -> ovf::env::Environment {
    let mut env = ovf::env::Environment::new()
        .with_platform(ovf::env::Platform {
            kind: Some("VMware ESXi".into()),
            version: Some("8.0.3".into()),
            vendor: Some("VMware, Inc.".into()),
            locale: Some("en".into()),
            timezone: None,
        })
        .with_adapter(ovf::env::EthernetAdapter::new(mac).network("VM Network"));
    for (k, v) in props {
        env.set_property(k.clone(), v.clone());
    }
    env
}

/// Writes `ovf-env.xml` into an ISO 9660 image labelled `OVF ENV`; returns its path.
pub fn write_iso(env: &ovf::env::Environment, work: &Path) -> anyhow::Result<PathBuf> {
    let dir = work.join("ovf-env");
    fs::create_dir_all(&dir)?;
    fs::write(dir.join("ovf-env.xml"), env.to_xml())?;
    let iso = work.join("ovf-env.iso");
    exec::run(
        Command::new("xorriso")
            .args(["-as", "mkisofs", "-quiet", "-V", "OVF ENV", "-J", "-r", "-o"])
            .arg(&iso)
            .arg(&dir),
    )
    .context("making the OVF environment ISO (Debian xorriso)")?;
    Ok(iso)
}

/// A cloud seed to attach as a CD-ROM (`capstan lab run --seed`): a NoCloud seed (volume label
/// `cidata`) or an OpenStack config drive (`config-2`), from a directory holding its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seed {
    /// `nocloud:DIR`: `meta-data`, `user-data`, `network-config`, ... at the top of DIR.
    NoCloud(PathBuf),
    /// `configdrive:DIR`: `openstack/latest/meta_data.json`, ... under DIR.
    ConfigDrive(PathBuf),
}

impl std::str::FromStr for Seed {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            Some(("nocloud", d)) if !d.is_empty() => Ok(Seed::NoCloud(d.into())),
            Some(("configdrive", d)) if !d.is_empty() => Ok(Seed::ConfigDrive(d.into())),
            _ => Err(format!("{s:?}: expected nocloud:DIR or configdrive:DIR")),
        }
    }
}

impl Seed {
    /// The volume label cloud-init (and the agent) look for.
    pub fn label(&self) -> &'static str {
        match self {
            Seed::NoCloud(_) => "cidata",
            Seed::ConfigDrive(_) => "config-2",
        }
    }

    fn dir(&self) -> &Path {
        match self {
            Seed::NoCloud(d) | Seed::ConfigDrive(d) => d,
        }
    }
}

/// Writes the seed's directory as an ISO 9660 image with Rock Ridge and Joliet names and the
/// seed's volume label, as `cloud-localds` and Nova's config drive writer do.
pub fn write_seed_iso(seed: &Seed, work: &Path) -> anyhow::Result<PathBuf> {
    let dir = seed.dir();
    anyhow::ensure!(dir.is_dir(), "seed {}: not a directory", dir.display());
    let iso = work.join(format!("{}.iso", seed.label()));
    exec::run(
        Command::new("xorriso")
            .args(["-as", "mkisofs", "-quiet", "-V", seed.label(), "-J", "-r", "-o"])
            .arg(&iso)
            .arg(dir),
    )
    .with_context(|| format!("making the {} seed ISO (Debian xorriso)", seed.label()))?;
    Ok(iso)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn props_override_defaults_and_unknown_keys_fail() {
        let d = vec![
            ("capstan.hostname".to_string(), String::new()),
            ("capstan.role".to_string(), "lb".to_string()),
        ];
        let m = merge(Some(d.clone()), &[("capstan.hostname".into(), "lb-1".into())]).unwrap();
        assert_eq!(m[0].1, "lb-1");
        assert_eq!(m[1].1, "lb");
        let err = merge(Some(d), &[("capstan.hostnme".into(), "x".into())]).unwrap_err();
        assert!(err.to_string().contains("capstan.hostnme"));
        let free = merge(None, &[("anything".into(), "1".into())]).unwrap();
        assert_eq!(free.len(), 1);
    }

    #[test]
    fn iso_has_the_label_and_the_file() {
        let t = tempfile::tempdir().unwrap();
        let env =
            build_environment(&[("capstan.hostname".into(), "lb-1".into())], "52:54:00:12:34:56");
        let iso = write_iso(&env, t.path()).unwrap();
        let bytes = fs::read(&iso).unwrap();
        // Primary volume descriptor at sector 16: volume id at offset 40 (32 bytes, padded).
        let pvd = &bytes[16 * 2048..17 * 2048];
        assert_eq!(&pvd[1..6], b"CD001");
        assert_eq!(std::str::from_utf8(&pvd[40..72]).unwrap().trim_end(), "OVF ENV");
        let listing =
            exec::output(Command::new("xorriso").args(["-indev"]).arg(&iso).args(["-ls", "/"]))
                .unwrap();
        assert!(listing.contains("ovf-env.xml"), "{listing}");
        let parsed = ovf::env::Environment::parse(&env.to_xml()).unwrap();
        assert_eq!(parsed.property("capstan.hostname"), Some("lb-1"));
        assert_eq!(parsed.ethernet_adapters[0].mac, "52:54:00:12:34:56");
    }

    #[test]
    fn seeds_parse_and_get_their_labels() {
        let s: Seed = "nocloud:/tmp/seed".parse().unwrap();
        assert_eq!(s, Seed::NoCloud("/tmp/seed".into()));
        assert_eq!(s.label(), "cidata");
        let c: Seed = "configdrive:d".parse().unwrap();
        assert_eq!(c.label(), "config-2");
        assert!("nocloud:".parse::<Seed>().is_err());
        assert!("ec2:http://x".parse::<Seed>().is_err());
        let w = tempfile::tempdir().unwrap();
        let e = write_seed_iso(&Seed::NoCloud(w.path().join("absent")), w.path()).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
    }
}
