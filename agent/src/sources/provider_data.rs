//! What every cloud provider (NoCloud, OpenStack config drive, EC2) hands the agent, in the
//! agent's own types, so the same cloud-config subset and the same steps apply whatever the
//! provider: the instance id, the host name, SSH keys, the network (already in the model of
//! [`crate::steps::network`]) and the raw user-data and vendor-data bytes (decoded and parsed
//! later, by the same code as VMware's).
//!
//! A provider's reader parses everything before it returns: a [`ProviderData`] is whole or there
//! is a [`ProviderError`] naming the provider, the file (or URL) and the key.

use serde::Serialize;

use super::{encoding, Found, Layer, SourceError, SourceReport};
use crate::error::chain;
use crate::schema::{FlatValue, NetworkSource, Origin, Source};
use crate::steps::NetworkConfig;
use crate::types::{Hostname, InstanceId};

/// The typed output of one provider.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProviderData {
    /// `nocloud`, `configdrive` or `ec2`.
    pub provider: &'static str,
    /// Where it was read from (a directory, a device, an IMDS base URL).
    pub location: String,
    /// The instance id (`instance-id`, `uuid`, EC2's `instance-id`).
    pub instance_id: Option<InstanceId>,
    /// The host name (`local-hostname`, `hostname`).
    pub hostname: Option<Hostname>,
    /// SSH public keys for the default user.
    pub public_keys: Vec<String>,
    /// The network; `None` when the provider gave none (or said `config: disabled`).
    pub network: Option<NetworkConfig>,
    /// The user-data as given (may be gzip, a `#cloud-config`, a script, a jinja template).
    pub user_data: Option<Vec<u8>>,
    /// The vendor-data as given.
    pub vendor_data: Option<Vec<u8>>,
    /// Keys ignored and other remarks, for `status`.
    pub warnings: Vec<String>,
}

impl ProviderData {
    /// Empty data for `provider` read from `location`.
    pub fn new(provider: &'static str, location: impl Into<String>) -> Self {
        ProviderData { provider, location: location.into(), ..ProviderData::default() }
    }
}

/// Why a provider's data cannot be used. Nothing of it is applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProviderError {
    /// A file of the seed could not be read.
    #[error("{provider} {file}: cannot read")]
    Read {
        /// `nocloud`, `configdrive`, `ec2`.
        provider: &'static str,
        /// The file (relative to the seed) or device.
        file: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A value in a document is not usable.
    #[error("{provider} {file}: {key}: {problem}")]
    Invalid {
        /// `nocloud`, `configdrive`, `ec2`.
        provider: &'static str,
        /// The document (`meta-data`, `openstack/latest/network_data.json`, an IMDS path).
        file: String,
        /// The key path inside it, `(document)` for the whole.
        key: String,
        /// What is wrong, with the offending value.
        problem: String,
    },
    /// The metadata service could not be asked (connection, timeout, HTTP status).
    #[error("{provider} {url}: {problem}")]
    Fetch {
        /// `ec2`.
        provider: &'static str,
        /// The URL asked.
        url: String,
        /// What happened, after the last attempt.
        problem: String,
    },
}

impl ProviderError {
    /// A bad value in `file` at `key`.
    pub fn invalid(
        provider: &'static str,
        file: impl Into<String>,
        key: impl Into<String>,
        problem: impl Into<String>,
    ) -> Self {
        ProviderError::Invalid {
            provider,
            file: file.into(),
            key: key.into(),
            problem: problem.into(),
        }
    }

    /// A cloud-init document error, placed in `provider`'s `file`.
    pub fn from_cloudinit(
        provider: &'static str,
        file: impl Into<String>,
        e: crate::cloudinit::CloudInitError,
    ) -> Self {
        ProviderError::invalid(provider, file, e.key, e.problem)
    }
}

/// A short summary for `status`: which provider, from where, what it gave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProviderSummary {
    /// `nocloud`, `configdrive`, `ec2`.
    pub provider: &'static str,
    /// Where it was read from.
    pub location: String,
    /// What it supplied, e.g. `["instance-id", "hostname", "network", "user-data"]`.
    pub supplied: Vec<&'static str>,
}

impl ProviderData {
    /// What this data supplies, for `status`.
    pub fn summary(&self) -> ProviderSummary {
        let mut supplied = Vec::new();
        let has = [
            ("instance-id", self.instance_id.is_some()),
            ("hostname", self.hostname.is_some()),
            ("public-keys", !self.public_keys.is_empty()),
            ("network", self.network.is_some()),
            ("user-data", self.user_data.is_some()),
            ("vendor-data", self.vendor_data.is_some()),
        ];
        for (name, present) in has {
            if present {
                supplied.push(name);
            }
        }
        ProviderSummary { provider: self.provider, location: self.location.clone(), supplied }
    }
}

impl ProviderData {
    /// The provider's source in `status` (the origin of its values).
    fn source(&self) -> Source {
        match self.provider {
            "nocloud" => Source::NoCloud,
            "configdrive" => Source::ConfigDrive,
            _ => Source::Ec2,
        }
    }

    /// The network's source in `status`.
    fn network_source(&self) -> NetworkSource {
        match self.provider {
            "nocloud" => NetworkSource::NoCloud,
            "configdrive" => NetworkSource::ConfigDrive,
            _ => NetworkSource::Ec2,
        }
    }

    /// What the engine takes from a provider: one layer (instance-id, hostname), the network,
    /// the keys for the default user, and the user-data and vendor-data as text (gzip
    /// inflated, as cloud-init does for every datasource). `keys` names the documents the
    /// values came from (`meta-data`, `meta_data.json`, `meta-data/instance-id`).
    pub fn into_found(self, keys: &ProviderKeys) -> Found {
        let source = self.source();
        let mut found = Found::default();
        let origin = |key: &str| Origin { source, key: key.to_owned() };
        let mut layer: Layer = Vec::new();
        if let Some(id) = &self.instance_id {
            layer.push((
                "instance-id".into(),
                FlatValue { value: id.to_string(), origin: origin(keys.instance_id) },
            ));
        }
        if let Some(h) = &self.hostname {
            layer.push((
                "hostname".into(),
                FlatValue { value: h.to_string(), origin: origin(keys.hostname) },
            ));
        }
        for w in &self.warnings {
            tracing::warn!(provider = self.provider, "{w}");
        }
        found.reports.push(SourceReport {
            name: self.provider.into(),
            location: self.location.clone(),
            values: layer.len(),
        });
        found.layers.push(layer);
        found.network = self.network.clone().map(|n| (self.network_source(), n));
        found.public_keys.clone_from(&self.public_keys);
        for (doc, bytes, slot) in [
            (keys.user_data, &self.user_data, &mut found.userdata),
            (keys.vendor_data, &self.vendor_data, &mut found.vendordata),
        ] {
            let Some(bytes) = bytes else { continue };
            match user_data_text(bytes) {
                Ok(t) => *slot = t,
                Err(e) => {
                    let e = ProviderError::invalid(self.provider, doc, "(document)", chain(&e));
                    return refused(self.provider, &self.location, &e);
                }
            }
        }
        found
    }
}

/// The names a provider's values are recorded under in `status`.
#[derive(Debug, Clone, Copy)]
pub struct ProviderKeys {
    /// Where the instance-id came from.
    pub instance_id: &'static str,
    /// Where the host name came from.
    pub hostname: &'static str,
    /// The user-data document.
    pub user_data: &'static str,
    /// The vendor-data document.
    pub vendor_data: &'static str,
}

/// A provider's user-data bytes as text: gzip inflated (bounded), then UTF-8; empty is none.
fn user_data_text(bytes: &[u8]) -> Result<Option<String>, encoding::DecodeError> {
    let bytes = if encoding::is_gzip(bytes) {
        encoding::gunzip_bounded(bytes, encoding::INFLATED_LIMIT)?
    } else {
        bytes.to_vec()
    };
    if encoding::is_empty_value(&bytes) {
        return Ok(None);
    }
    String::from_utf8(bytes).map(Some).map_err(|_| encoding::DecodeError::NotUtf8)
}

/// A provider that was found but whose data is refused: nothing of it is applied, and first
/// boot applies nothing at all ([`Found::refused`]).
pub fn refused(provider: &'static str, location: &str, e: &ProviderError) -> Found {
    let (file, reason) = match e {
        ProviderError::Read { file, source, .. } => {
            (file.clone(), format!("cannot read: {}", chain(source)))
        }
        ProviderError::Invalid { file, key, problem, .. } => {
            (file.clone(), format!("{key}: {problem}; nothing applied"))
        }
        ProviderError::Fetch { url, problem, .. } => (url.clone(), problem.clone()),
    };
    Found {
        reports: vec![SourceReport { name: provider.into(), location: location.into(), values: 0 }],
        errors: vec![SourceError { source_name: provider.into(), key: file, reason }],
        refused: true,
        ..Found::default()
    }
}

/// Opens an ISO 9660 image or device and checks that its volume label is one of `labels` (a
/// vfat drive with the label is found by detection but refused here: it would need a mount).
pub(crate) fn open_labelled_iso(
    provider: &'static str,
    device: &std::path::Path,
    labels: &[&str],
) -> Result<(std::fs::File, super::iso9660::Volume), ProviderError> {
    let file = device.display().to_string();
    let mut f = std::fs::File::open(device).map_err(|source| ProviderError::Read {
        provider,
        file: file.clone(),
        source,
    })?;
    let vol = super::iso9660::read_volume(&mut f)
        .map_err(|e| ProviderError::invalid(provider, file.clone(), "(filesystem)", chain(&e)))?;
    if !labels.contains(&vol.label.as_str()) {
        return Err(ProviderError::invalid(
            provider,
            file,
            "(volume label)",
            format!("{:?} is not {}", vol.label, labels[0]),
        ));
    }
    Ok((f, vol))
}

/// Reads at most `limit` bytes of a regular file; a symlink, a directory, a device or a larger
/// file is refused (a seed on removable media is untrusted: `user-data -> /etc/shadow` must not
/// be followed). `Ok(None)` when the file does not exist.
pub(crate) fn read_seed_file(
    provider: &'static str,
    dir: &std::path::Path,
    rel: &str,
    limit: usize,
) -> Result<Option<Vec<u8>>, ProviderError> {
    use std::io::Read as _;
    let path = dir.join(rel);
    let read_err = |source| ProviderError::Read { provider, file: rel.to_owned(), source };
    let meta = match std::fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_err(e)),
    };
    if !meta.file_type().is_file() {
        return Err(ProviderError::invalid(
            provider,
            rel,
            "(document)",
            "not a regular file (symlinks, directories and devices are refused)",
        ));
    }
    let f = std::fs::File::open(&path).map_err(read_err)?;
    let mut buf = Vec::new();
    f.take(limit as u64 + 1).read_to_end(&mut buf).map_err(read_err)?;
    if buf.len() > limit {
        return Err(ProviderError::invalid(
            provider,
            rel,
            "(document)",
            format!("larger than {limit} bytes"),
        ));
    }
    Ok(Some(buf))
}

/// The bytes as UTF-8 text, or an error naming the file.
pub(crate) fn utf8<'a>(
    provider: &'static str,
    file: &str,
    bytes: &'a [u8],
) -> Result<&'a str, ProviderError> {
    std::str::from_utf8(bytes).map_err(|e| {
        ProviderError::invalid(provider, file, "(document)", format!("not UTF-8 ({e})"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_files_refuse_symlinks_and_size() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("big"), vec![b'a'; 11]).unwrap();
        std::fs::write(d.path().join("ok"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("link")).unwrap();
        assert_eq!(read_seed_file("nocloud", d.path(), "ok", 10).unwrap().unwrap(), b"x");
        assert!(read_seed_file("nocloud", d.path(), "absent", 10).unwrap().is_none());
        let e = read_seed_file("nocloud", d.path(), "big", 10).unwrap_err().to_string();
        assert_eq!(e, "nocloud big: (document): larger than 10 bytes");
        let e = read_seed_file("nocloud", d.path(), "link", 10).unwrap_err().to_string();
        assert!(e.starts_with("nocloud link: (document): not a regular file"), "{e}");
        assert!(read_seed_file("nocloud", d.path(), "", 10).is_err(), "a directory");
    }

    #[test]
    fn summary_lists_what_is_present() {
        let mut d = ProviderData::new("ec2", "http://169.254.169.254");
        d.instance_id = Some("i-1".parse().unwrap());
        d.user_data = Some(Vec::new());
        assert_eq!(d.summary().supplied, vec!["instance-id", "user-data"]);
    }
}
