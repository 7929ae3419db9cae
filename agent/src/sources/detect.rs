//! Which provider a node reads, in a fixed order, each check cheap:
//!
//! 1. `--provider nocloud:DIR|configdrive:DIR|ec2[:URL]` ([`SourceOptions::provider`]);
//! 2. the `provider` setting of `/etc/capstan/agent.toml` or the override file (`vmware`,
//!    `nocloud`, `configdrive`, `ec2`; `auto`, the default, detects);
//! 3. VMware, when any of its sources is there (an OVF environment, guestinfo keys): a
//!    Capstan template's own platform, and what Cluster API vSphere sets on every clone;
//! 4. an OpenStack config drive: a device labelled `config-2`;
//! 5. NoCloud: a device labelled `cidata`/`CIDATA`, or the SMBIOS serial `ds=nocloud`;
//! 6. EC2, only on the live system and only when the DMI says Amazon (`sys_vendor`,
//!    `product_uuid` or `product_serial`); no request is made to find out;
//! 7. none: VMware's (empty) reading, schema defaults only.
//!
//! 4-6 follow cloud-init's `ds-identify` (`ConfigDrive NoCloud … Ec2`); VMware comes first
//! here, where ds-identify lists it late, because a node with VMware data must keep being
//! configured exactly as before. A detected provider whose data is refused is not skipped for
//! the next one: the node applies nothing and says why (a bad seed must not leave a node
//! configured from another, unexpected source).

use super::configdrive::ConfigDrive;
use super::ec2::Ec2;
use super::imds::{ImdsOptions, DEFAULT_BASE};
use super::nocloud::NoCloud;
use super::provider_spec::ProviderSpec;
use super::vmware::Vmware;
use super::{Found, Identity, Layer, Provider, SourceError, SourceOptions, SourceReport};
use crate::guestinfo::Guestinfo;

/// The provider chosen for a node (VMware's reads through the guestinfo transport of the
/// gathering).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chosen {
    /// VMware's sources (also when nothing at all was found).
    Vmware,
    /// A NoCloud seed.
    NoCloud(NoCloud),
    /// An OpenStack config drive.
    ConfigDrive(ConfigDrive),
    /// The EC2 metadata service.
    Ec2(Ec2),
}

impl Chosen {
    /// The provider's name (`vmware`, `nocloud`, `configdrive`, `ec2`).
    pub fn name(&self) -> &'static str {
        self.with(None, |p| p.name())
    }

    /// Runs `f` on the provider.
    fn with<T>(&self, gi: Option<&dyn Guestinfo>, f: impl FnOnce(&dyn Provider) -> T) -> T {
        match self {
            Chosen::Vmware => f(&Vmware::new(gi)),
            Chosen::NoCloud(p) => f(p),
            Chosen::ConfigDrive(p) => f(p),
            Chosen::Ec2(p) => f(p),
        }
    }

    /// Reads the provider.
    pub fn read(&self, opts: &SourceOptions, gi: Option<&dyn Guestinfo>) -> Found {
        self.with(gi, |p| p.read(opts))
    }

    /// The provider's cheap identity.
    pub fn identity(&self, gi: Option<&dyn Guestinfo>) -> Identity {
        self.with(gi, |p| p.identity())
    }
}

impl From<&ProviderSpec> for Chosen {
    fn from(spec: &ProviderSpec) -> Self {
        match spec {
            ProviderSpec::NoCloud(d) => Chosen::NoCloud(NoCloud::dir(d)),
            ProviderSpec::ConfigDrive(d) => Chosen::ConfigDrive(ConfigDrive::dir(d)),
            ProviderSpec::Ec2(url) => Chosen::Ec2(Ec2::new(url, ImdsOptions::default())),
        }
    }
}

/// The `provider` setting of the baked defaults and the override file (the override wins),
/// with where it was set.
pub fn forced(defaults: &Layer, overrides: &Layer) -> Option<(String, String)> {
    defaults
        .iter()
        .chain(overrides)
        .rfind(|(p, v)| p == "provider" && !v.value.trim().is_empty())
        .map(|(_, v)| (v.value.trim().to_owned(), v.origin.key.clone()))
}

/// Chooses the provider (the order of the module's doc) and reads it. `forced` is
/// [`forced`]'s answer.
pub fn choose_and_read(
    opts: &SourceOptions,
    gi: Option<&dyn Guestinfo>,
    forced: Option<(String, String)>,
) -> (Chosen, Found) {
    if let Some(spec) = &opts.provider {
        let chosen = Chosen::from(spec);
        let found = chosen.read(opts, gi);
        return (chosen, found);
    }
    match forced {
        Some((name, key)) if name != "auto" => forced_read(opts, gi, &name, &key),
        _ => detect_and_read(opts, gi),
    }
}

/// The provider named by the `provider` setting; one that is not there is refused (nothing
/// applied) rather than replaced by another.
fn forced_read(
    opts: &SourceOptions,
    gi: Option<&dyn Guestinfo>,
    name: &str,
    key: &str,
) -> (Chosen, Found) {
    let chosen = match name {
        "nocloud" => NoCloud::detect(&opts.dev_dir, &opts.sys_dir).map(Chosen::NoCloud),
        "configdrive" => ConfigDrive::detect(&opts.dev_dir).map(Chosen::ConfigDrive),
        "ec2" => Some(Chosen::Ec2(Ec2::new(DEFAULT_BASE, ImdsOptions::default()))),
        // `vmware`; any other value was refused by the schema, and VMware is what ran before
        _ => Some(Chosen::Vmware),
    };
    match chosen {
        Some(c) => {
            let found = c.read(opts, gi);
            (c, found)
        }
        None => {
            let what = if name == "nocloud" {
                "no cidata drive and no ds=nocloud SMBIOS serial"
            } else {
                "no config-2 drive"
            };
            let found = Found {
                reports: vec![SourceReport { name: name.into(), location: key.into(), values: 0 }],
                errors: vec![SourceError {
                    source_name: name.into(),
                    key: key.into(),
                    reason: format!("forced, but {what} is attached; nothing applied"),
                }],
                refused: true,
                ..Found::default()
            };
            (Chosen::Vmware, found)
        }
    }
}

/// Detection in order: VMware when it found anything, then the devices, then the DMI.
fn detect_and_read(opts: &SourceOptions, gi: Option<&dyn Guestinfo>) -> (Chosen, Found) {
    let vmware = Chosen::Vmware.read(opts, gi);
    if !vmware.reports.is_empty() || !vmware.errors.is_empty() {
        return (Chosen::Vmware, vmware);
    }
    let other = ConfigDrive::detect(&opts.dev_dir)
        .map(Chosen::ConfigDrive)
        .or_else(|| NoCloud::detect(&opts.dev_dir, &opts.sys_dir).map(Chosen::NoCloud))
        // the metadata service is outside a --root: asked on the live system only
        .or_else(|| opts.live.then(|| Ec2::detect(&opts.sys_dir)).flatten().map(Chosen::Ec2));
    match other {
        Some(c) => {
            // debug: `status` gathers too, and its JSON must stay alone on stdout and stderr quiet
            tracing::debug!(provider = c.name(), "metadata provider detected");
            let found = c.read(opts, gi);
            (c, found)
        }
        None => (Chosen::Vmware, vmware),
    }
}
