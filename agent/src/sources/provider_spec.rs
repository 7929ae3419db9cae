//! The forced-provider form of the command line and `agent.toml`:
//! `nocloud:DIR`, `configdrive:DIR` or `ec2:URL` (`ec2` alone means AWS's address), and reading
//! the provider it names.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use super::imds::{ImdsOptions, DEFAULT_BASE};
use super::provider_data::{ProviderData, ProviderError};
use super::{configdrive, ec2, nocloud};

/// A provider named explicitly, with where to read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderSpec {
    /// A directory holding a NoCloud seed's files.
    NoCloud(PathBuf),
    /// A directory holding a config drive's files (`openstack/latest/...`).
    ConfigDrive(PathBuf),
    /// An IMDS base URL.
    Ec2(String),
}

/// A `--provider` value that is not one of the forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--provider {value:?}: {problem}")]
pub struct SpecError {
    /// The value given.
    pub value: String,
    /// What is wrong.
    pub problem: &'static str,
}

impl FromStr for ProviderSpec {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        let err = |problem| SpecError { value: s.to_owned(), problem };
        let (kind, arg) = s.split_once(':').unwrap_or((s, ""));
        match (kind, arg) {
            ("nocloud", "") | ("configdrive", "") => Err(err("give the directory: KIND:DIR")),
            ("nocloud", dir) => Ok(ProviderSpec::NoCloud(dir.into())),
            ("configdrive", dir) => Ok(ProviderSpec::ConfigDrive(dir.into())),
            ("ec2", "") => Ok(ProviderSpec::Ec2(DEFAULT_BASE.to_owned())),
            ("ec2", url) => Ok(ProviderSpec::Ec2(url.to_owned())),
            _ => Err(err("expected nocloud:DIR, configdrive:DIR or ec2[:URL]")),
        }
    }
}

impl fmt::Display for ProviderSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProviderSpec::NoCloud(d) => write!(f, "nocloud:{}", d.display()),
            ProviderSpec::ConfigDrive(d) => write!(f, "configdrive:{}", d.display()),
            ProviderSpec::Ec2(u) => write!(f, "ec2:{u}"),
        }
    }
}

impl ProviderSpec {
    /// Reads and parses the provider (all of it, or an error).
    pub async fn read(&self, imds: ImdsOptions) -> Result<ProviderData, ProviderError> {
        match self {
            ProviderSpec::NoCloud(d) => nocloud::read_seed_dir(d),
            ProviderSpec::ConfigDrive(d) => configdrive::read_drive_dir(d),
            ProviderSpec::Ec2(u) => ec2::fetch(u, imds).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        assert_eq!("nocloud:/seed".parse(), Ok(ProviderSpec::NoCloud("/seed".into())));
        assert_eq!("configdrive:d".parse(), Ok(ProviderSpec::ConfigDrive("d".into())));
        assert_eq!(
            "ec2:http://127.0.0.1:8080".parse(),
            Ok(ProviderSpec::Ec2("http://127.0.0.1:8080".into()))
        );
        assert_eq!("ec2".parse(), Ok(ProviderSpec::Ec2(DEFAULT_BASE.into())));
        let e = "nocloud".parse::<ProviderSpec>().unwrap_err().to_string();
        assert_eq!(e, "--provider \"nocloud\": give the directory: KIND:DIR");
        assert!("azure:x".parse::<ProviderSpec>().is_err());
        let s: ProviderSpec = "configdrive:/mnt/cd".parse().unwrap();
        assert_eq!(s.to_string(), "configdrive:/mnt/cd");
    }
}
