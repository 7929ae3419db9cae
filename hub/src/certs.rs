//! `capstan-hub certs`: a CA, the hub's serving certificate, and one client certificate per
//! node whose common name is the node's instance-id (what the hub checks a heartbeat's
//! identity against), as `nomad tls` and `consul tls` do.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use capstan_agent::types::InstanceId;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// The CA certificate.
pub const CA: &str = "ca.pem";
/// The CA key (0600).
pub const CA_KEY: &str = "ca-key.pem";
/// The hub's serving certificate.
pub const HUB: &str = "hub.pem";
/// Its key (0600).
pub const HUB_KEY: &str = "hub-key.pem";

/// Certificate generation failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// A file could not be read or written.
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `certs init` found a CA already there.
    #[error("{0} exists: refusing to replace a CA that nodes may trust")]
    Exists(PathBuf),
    /// A name is not usable.
    #[error("{what} {name:?}: {reason}")]
    Name {
        /// What the name is for.
        what: &'static str,
        /// The name.
        name: String,
        /// Why not.
        reason: String,
    },
    /// rcgen refused.
    #[error("{what}")]
    Generate {
        /// What was being made or read.
        what: String,
        /// The cause.
        #[source]
        source: rcgen::Error,
    },
}

fn gen(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> CertError {
    let what = what.into();
    move |source| CertError::Generate { what, source }
}

/// Writes a file atomically (temp, fsync, rename, fsync the directory) with `mode`.
pub fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CertError> {
    let io = |source| CertError::Io { path: path.into(), source };
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{}.tmp", path.file_name().unwrap_or_default().to_string_lossy()));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)?;
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)
}

/// Validity: from an hour ago (clock skew) for `years`.
fn validity(params: &mut CertificateParams, years: i32) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let year = 1970 + (now / 31_556_952) as i32;
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + years, 1, 1);
}

fn named(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Capstan");
    dn.push(DnType::CommonName, cn);
    dn
}

/// A loaded CA that can sign.
pub struct Authority {
    cert: rcgen::Certificate,
    key: KeyPair,
    /// The CA certificate, PEM.
    pub pem: String,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authority(..)")
    }
}

impl Authority {
    /// Loads `DIR/ca.pem` and `DIR/ca-key.pem`.
    pub fn load(dir: &Path) -> Result<Self, CertError> {
        let read = |name: &str| {
            let path = dir.join(name);
            fs::read_to_string(&path).map_err(|source| CertError::Io { path, source })
        };
        let (pem, key_pem) = (read(CA)?, read(CA_KEY)?);
        let key = KeyPair::from_pem(&key_pem)
            .map_err(gen(format!("reading {}", dir.join(CA_KEY).display())))?;
        let params = CertificateParams::from_ca_cert_pem(&pem)
            .map_err(gen(format!("reading {}", dir.join(CA).display())))?;
        // Re-signing the parsed parameters gives an issuer with the same name and key: what
        // signing needs. The original PEM stays the one handed out.
        let cert = params.self_signed(&key).map_err(gen("loading the CA"))?;
        Ok(Authority { cert, key, pem })
    }

    /// A client certificate for node `name` (common name = instance-id): (cert PEM, key PEM).
    pub fn node_cert(&self, name: &str) -> Result<(String, String), CertError> {
        name.parse::<InstanceId>().map_err(|e| CertError::Name {
            what: "node",
            name: name.into(),
            reason: e.to_string(),
        })?;
        let mut params = CertificateParams::default();
        params.distinguished_name = named(name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        validity(&mut params, 2);
        let key = KeyPair::generate().map_err(gen("a node key"))?;
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .map_err(gen(format!("the certificate of node {name}")))?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// `certs init DIR --host NAME|IP...`: a new CA and the hub's serving certificate for `hosts`.
pub fn init(dir: &Path, hosts: &[String]) -> Result<(), CertError> {
    if hosts.is_empty() {
        return Err(CertError::Name {
            what: "host",
            name: String::new(),
            reason: "give at least one --host".into(),
        });
    }
    fs::create_dir_all(dir).map_err(|source| CertError::Io { path: dir.into(), source })?;
    if dir.join(CA).exists() {
        return Err(CertError::Exists(dir.join(CA)));
    }
    let mut ca = CertificateParams::default();
    ca.distinguished_name = named("Capstan hub CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut ca, 10);
    let ca_key = KeyPair::generate().map_err(gen("the CA key"))?;
    let ca_cert = ca.self_signed(&ca_key).map_err(gen("the CA"))?;

    let mut hub = CertificateParams::new(hosts.to_vec()).map_err(|source| CertError::Name {
        what: "host",
        name: hosts.join(","),
        reason: source.to_string(),
    })?;
    hub.distinguished_name = named(&hosts[0]);
    hub.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    hub.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    validity(&mut hub, 2);
    let hub_key = KeyPair::generate().map_err(gen("the hub key"))?;
    let hub_cert =
        hub.signed_by(&hub_key, &ca_cert, &ca_key).map_err(gen("the hub certificate"))?;

    // Keys first: a directory with a ca.pem is "initialised", so it must be complete.
    write_file(&dir.join(CA_KEY), ca_key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&dir.join(HUB_KEY), hub_key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&dir.join(HUB), hub_cert.pem().as_bytes(), 0o644)?;
    write_file(&dir.join(CA), ca_cert.pem().as_bytes(), 0o644)
}

/// `certs node DIR NAME`: writes `DIR/NAME.pem` and `DIR/NAME-key.pem` (0600), signed by the
/// CA in DIR. Returns the two paths (the agent's `heartbeat.cert` and `heartbeat.key`).
pub fn node(dir: &Path, name: &str) -> Result<(PathBuf, PathBuf), CertError> {
    let (cert, key) = Authority::load(dir)?.node_cert(name)?;
    let (c, k) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}-key.pem")));
    write_file(&k, key.as_bytes(), 0o600)?;
    write_file(&c, cert.as_bytes(), 0o644)?;
    Ok((c, k))
}

/// The common name of a DER certificate (the node's instance-id in a node certificate).
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?.to_owned();
    Some(cn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn init_then_node_gives_a_chain_rustls_accepts_with_the_node_id_as_cn() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), &["hub.example".into(), "127.0.0.1".into()]).unwrap();
        for (f, mode) in [(CA, 0o644), (CA_KEY, 0o600), (HUB, 0o644), (HUB_KEY, 0o600)] {
            let m = fs::metadata(dir.path().join(f)).unwrap().permissions().mode() & 0o777;
            assert_eq!(m, mode, "{f}");
        }
        let e = init(dir.path(), &["x".into()]).unwrap_err();
        assert!(matches!(e, CertError::Exists(_)), "{e}");
        let (c, k) = node(dir.path(), "iid-7").unwrap();
        assert_eq!(fs::metadata(&k).unwrap().permissions().mode() & 0o777, 0o600);
        let der = capstan_agent::heartbeat::client::read_certs(&c).unwrap();
        assert_eq!(common_name(&der[0]).as_deref(), Some("iid-7"));

        let ca = capstan_agent::heartbeat::client::read_certs(&dir.path().join(CA)).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca[0].clone()).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let v = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
            .build()
            .unwrap();
        let now = rustls::pki_types::UnixTime::now();
        v.verify_client_cert(&der[0], &[], now).expect("the node cert chains to the CA");
        let hub = capstan_agent::heartbeat::client::read_certs(&dir.path().join(HUB)).unwrap();
        assert_eq!(common_name(&hub[0]).as_deref(), Some("hub.example"));
    }

    #[test]
    fn bad_names_and_missing_cas_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let e = node(dir.path(), "n").unwrap_err();
        assert!(e.to_string().contains("ca.pem"), "{e}");
        init(dir.path(), &["h".into()]).unwrap();
        let e = node(dir.path(), "../evil").unwrap_err();
        assert!(e.to_string().contains("node \"../evil\""), "{e}");
        assert!(init(&dir.path().join("sub"), &[]).unwrap_err().to_string().contains("--host"));
    }
}
