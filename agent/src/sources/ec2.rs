//! The EC2 provider: the instance metadata service read over IMDSv2 ([`super::imds`]) into the
//! agent's types. Fetching and parsing are apart: [`fetch`] collects the responses into an
//! [`Ec2Responses`] map (IMDS path → body; a 404 is absent), [`parse`] turns that map into a
//! [`ProviderData`] and is pure, so tests and the fuzzer drive it without a server.
//!
//! The network is what cloud-init 22.4's Ec2 datasource derives
//! (`convert_ec2_metadata_network_config`, full configuration): DHCPv4 on every NIC the metadata
//! lists, matched by MAC; DHCPv6 where the NIC has IPv6 addresses; the secondary private IPv4
//! addresses with the subnet's prefix (`/24` when the subnet is unknown) and the secondary IPv6
//! addresses as `/128`. NICs are ordered by `device-number`, the primary (0) first. Not carried:
//! cloud-init's per-NIC DHCP route metrics (the network model has none).

use std::collections::BTreeMap;
use std::net::IpAddr;

use std::path::Path;

use super::imds::{ImdsClient, ImdsOptions, DEFAULT_BASE};
use super::provider_data::{refused, utf8, ProviderData, ProviderError, ProviderKeys};
use super::{Found, Identity, Provider, SourceOptions};
use crate::steps::network::{NetworkConfig, Nic};
use crate::types::{IpCidr, MacAddr};

const PROVIDER: &str = "ec2";

/// IMDS path (under `/latest/`) → response body, for the paths that answered 200.
pub type Ec2Responses = BTreeMap<String, Vec<u8>>;

/// Paths read for every instance.
pub const INSTANCE_ID: &str = "meta-data/instance-id";
/// The private DNS name.
pub const LOCAL_HOSTNAME: &str = "meta-data/local-hostname";
/// The key listing (`0=name` lines).
pub const PUBLIC_KEYS: &str = "meta-data/public-keys/";
/// The NIC listing (`<mac>/` lines).
pub const MACS: &str = "meta-data/network/interfaces/macs/";
/// The user-data (absent = none).
pub const USER_DATA: &str = "user-data";
/// Per-NIC fields read.
pub const MAC_FIELDS: &[&str] =
    &["device-number", "local-ipv4s", "subnet-ipv4-cidr-block", "ipv6s"];

/// Most NICs or keys we read (an instance has at most a few dozen).
const MAX_LIST: usize = 256;

/// The lines of a listing response, each a safe path component (`..`, `/` inside, control
/// characters and over-long names are refused).
pub fn parse_listing(path: &str, body: &[u8]) -> Result<Vec<String>, ProviderError> {
    let text = utf8(PROVIDER, path, body)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().map(str::trim).filter(|l| !l.is_empty()).enumerate() {
        let name = line.strip_suffix('/').unwrap_or(line);
        let ok = !name.is_empty()
            && name.len() <= 255
            && name != "."
            && name != ".."
            && name.bytes().all(|b| b.is_ascii_graphic() && b != b'/' && b != b'\\');
        if !ok {
            return Err(ProviderError::invalid(
                PROVIDER,
                path,
                format!("line {}", i + 1),
                format!(
                    "{:?} is not a metadata entry name",
                    line.chars().take(80).collect::<String>()
                ),
            ));
        }
        out.push(name.to_owned());
        if out.len() > MAX_LIST {
            return Err(ProviderError::invalid(
                PROVIDER,
                path,
                "(document)",
                format!("more than {MAX_LIST} entries"),
            ));
        }
    }
    Ok(out)
}

/// The key indices of the `public-keys/` listing (`0=my-key` → `0`).
fn key_indices(body: &[u8]) -> Result<Vec<u32>, ProviderError> {
    parse_listing(PUBLIC_KEYS, body)?
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let idx = l.split_once('=').map_or(l.as_str(), |(n, _)| n);
            idx.parse().map_err(|_| {
                ProviderError::invalid(
                    PROVIDER,
                    PUBLIC_KEYS,
                    format!("line {}", i + 1),
                    format!("{idx:?} is not a key index"),
                )
            })
        })
        .collect()
}

/// The MACs of the `macs/` listing, in the listing's spelling (used in paths) and parsed.
fn macs(body: &[u8]) -> Result<Vec<(String, MacAddr)>, ProviderError> {
    parse_listing(MACS, body)?
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            let mac = l.parse().map_err(|e| {
                ProviderError::invalid(PROVIDER, MACS, format!("line {}", i + 1), format!("{e}"))
            })?;
            Ok((l, mac))
        })
        .collect()
}

/// The paths to read after the listings, given what has been read so far.
pub fn second_round(got: &Ec2Responses) -> Result<Vec<String>, ProviderError> {
    let mut paths = Vec::new();
    if let Some(b) = got.get(PUBLIC_KEYS) {
        for i in key_indices(b)? {
            paths.push(format!("{PUBLIC_KEYS}{i}/openssh-key"));
        }
    }
    if let Some(b) = got.get(MACS) {
        for (m, _) in macs(b)? {
            for f in MAC_FIELDS {
                paths.push(format!("{MACS}{m}/{f}"));
            }
        }
    }
    Ok(paths)
}

/// Reads everything from the service at `base` and parses it. Nothing is returned half.
pub async fn fetch(base: &str, opts: ImdsOptions) -> Result<ProviderData, ProviderError> {
    let client = ImdsClient::new(base, opts)?;
    let mut got = Ec2Responses::new();
    for p in [INSTANCE_ID, LOCAL_HOSTNAME, PUBLIC_KEYS, MACS, USER_DATA] {
        if let Some(b) = client.get(p).await? {
            got.insert(p.to_owned(), b);
        }
    }
    for p in second_round(&got)? {
        if let Some(b) = client.get(&p).await? {
            got.insert(p, b);
        }
    }
    parse(&got, client.base())
}

fn text<'a>(got: &'a Ec2Responses, path: &str) -> Result<Option<&'a str>, ProviderError> {
    got.get(path).map(|b| utf8(PROVIDER, path, b).map(str::trim)).transpose()
}

/// Turns the responses into provider data; errors name `ec2`, the IMDS path and the line.
pub fn parse(got: &Ec2Responses, location: &str) -> Result<ProviderData, ProviderError> {
    let bad = |path: &str, p: String| ProviderError::invalid(PROVIDER, path, "(value)", p);
    let mut out = ProviderData::new(PROVIDER, location);
    let id = text(got, INSTANCE_ID)?.ok_or_else(|| bad(INSTANCE_ID, "missing".into()))?;
    out.instance_id = Some(id.parse().map_err(|e| bad(INSTANCE_ID, format!("{e}")))?);
    if let Some(h) = text(got, LOCAL_HOSTNAME)?.filter(|h| !h.is_empty()) {
        // several names (a NIC per subnet) come space-separated: the first is the primary
        let h = h.split_whitespace().next().unwrap_or(h);
        out.hostname = Some(h.parse().map_err(|e| bad(LOCAL_HOSTNAME, format!("{e}")))?);
    }
    if let Some(b) = got.get(PUBLIC_KEYS) {
        for i in key_indices(b)? {
            let p = format!("{PUBLIC_KEYS}{i}/openssh-key");
            for key in text(got, &p)?.unwrap_or("").lines().map(str::trim).filter(|k| !k.is_empty())
            {
                if !out.public_keys.iter().any(|k| k == key) {
                    out.public_keys.push(key.to_owned());
                }
            }
        }
    }
    if let Some(b) = got.get(MACS) {
        out.network = Some(network(got, b)?);
    }
    out.user_data = got.get(USER_DATA).cloned();
    Ok(out)
}

/// One NIC of the metadata.
struct Ec2Nic {
    device: u32,
    mac: MacAddr,
    ipv4s: Vec<IpAddr>,
    ipv4_prefix: u8,
    ipv6s: Vec<IpAddr>,
}

fn read_nic(got: &Ec2Responses, listed: &str, mac: MacAddr) -> Result<Ec2Nic, ProviderError> {
    let path = |f: &str| format!("{MACS}{listed}/{f}");
    let bad = |f: &str, p: String| ProviderError::invalid(PROVIDER, path(f), "(value)", p);
    let device = match text(got, &path("device-number"))? {
        Some(d) => d.parse::<u32>().ok().filter(|d| *d < 1024).ok_or_else(|| {
            bad("device-number", format!("{d:?} is not a device number (0-1023)"))
        })?,
        None => return Err(bad("device-number", "missing".into())),
    };
    let ips = |f: &str, v6: bool| -> Result<Vec<IpAddr>, ProviderError> {
        let mut out = Vec::new();
        for line in
            text(got, &path(f))?.unwrap_or("").lines().map(str::trim).filter(|l| !l.is_empty())
        {
            let ip: IpAddr =
                line.parse().map_err(|_| bad(f, format!("{line:?} is not an IP address")))?;
            if ip.is_ipv6() != v6 {
                return Err(bad(
                    f,
                    format!("{ip} is not an IPv{} address", if v6 { 6 } else { 4 }),
                ));
            }
            out.push(ip);
        }
        if out.len() > MAX_LIST {
            return Err(bad(f, format!("more than {MAX_LIST} addresses")));
        }
        Ok(out)
    };
    let ipv4s = ips("local-ipv4s", false)?;
    let ipv6s = ips("ipv6s", true)?;
    let ipv4_prefix = match text(got, &path("subnet-ipv4-cidr-block"))? {
        Some(c) => {
            c.parse::<IpCidr>().ok().filter(IpCidr::is_ipv4).map(|c| c.prefix()).ok_or_else(
                || bad("subnet-ipv4-cidr-block", format!("{c:?} is not an IPv4 CIDR")),
            )?
        }
        None => 24,
    };
    Ok(Ec2Nic { device, mac, ipv4s, ipv4_prefix, ipv6s })
}

fn network(got: &Ec2Responses, listing: &[u8]) -> Result<NetworkConfig, ProviderError> {
    let mut nics = Vec::new();
    for (listed, mac) in macs(listing)? {
        nics.push((listed.clone(), read_nic(got, &listed, mac)?));
    }
    nics.sort_by_key(|(_, n)| n.device);
    let mut cfg = NetworkConfig::default();
    for (i, (listed, n)) in nics.iter().enumerate() {
        if i > 0 && nics[i - 1].1.device == n.device {
            return Err(ProviderError::invalid(
                PROVIDER,
                format!("{MACS}{listed}/device-number"),
                "(value)",
                format!("{} is also the device number of {}", n.device, nics[i - 1].0),
            ));
        }
        let mut nic = Nic::new(format!("ec2-dev{}", n.device));
        nic.mac = Some(n.mac);
        nic.dhcp4 = true;
        nic.dhcp6 = !n.ipv6s.is_empty();
        // the first address of each family comes from DHCP; the others are static
        for ip in n.ipv4s.iter().skip(1) {
            nic.addresses.push(cidr(*ip, n.ipv4_prefix, listed)?);
        }
        for ip in n.ipv6s.iter().skip(1) {
            nic.addresses.push(cidr(*ip, 128, listed)?);
        }
        nic.addresses.sort();
        cfg.nics.push(nic);
    }
    cfg.validate("network.interfaces.macs")
        .map_err(|e| ProviderError::invalid(PROVIDER, MACS, e.key, e.problem))?;
    Ok(cfg)
}

fn cidr(ip: IpAddr, prefix: u8, listed: &str) -> Result<IpCidr, ProviderError> {
    IpCidr::new(ip, prefix).map_err(|e| {
        ProviderError::invalid(PROVIDER, format!("{MACS}{listed}"), "(value)", e.to_string())
    })
}

/// The EC2 provider: an IMDS base URL and how to ask it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ec2 {
    base: String,
    opts: ImdsOptions,
}

const KEYS: ProviderKeys = ProviderKeys {
    instance_id: INSTANCE_ID,
    hostname: LOCAL_HOSTNAME,
    user_data: USER_DATA,
    vendor_data: "vendor-data",
};

impl Ec2 {
    /// The service at `base` (`http://169.254.169.254`, or a test's fake).
    pub fn new(base: impl Into<String>, opts: ImdsOptions) -> Self {
        Ec2 { base: base.into(), opts }
    }

    /// Detection, as cloud-init's ds-identify does it for AWS: the DMI says Amazon
    /// (`sys_vendor` `Amazon EC2`, or a `product_uuid`/`product_serial` starting `ec2`, which
    /// the Xen instances have). No request is made.
    pub fn detect(sys_dir: &Path) -> Option<Self> {
        let dmi = |f: &str| {
            std::fs::read_to_string(sys_dir.join("class/dmi/id").join(f))
                .map(|s| s.trim().to_ascii_lowercase())
                .unwrap_or_default()
        };
        let aws = dmi("sys_vendor") == "amazon ec2"
            || dmi("product_uuid").starts_with("ec2")
            || dmi("product_serial").starts_with("ec2");
        aws.then(|| Ec2::new(DEFAULT_BASE, ImdsOptions::default()))
    }

    /// Reads and parses the metadata, all of it or an error (on a thread of its own with its
    /// own runtime: the engine is synchronous, and may be called from inside a runtime).
    pub fn read_data(&self) -> Result<ProviderData, ProviderError> {
        let (base, opts) = (self.base.clone(), self.opts.clone());
        block_on(async move { fetch(&base, opts).await })
    }
}

/// Runs `fut` to completion on a fresh current-thread runtime in a scoped thread.
fn block_on<T: Send>(
    fut: impl std::future::Future<Output = Result<T, ProviderError>> + Send,
) -> Result<T, ProviderError> {
    let fail = |problem: String| ProviderError::Fetch {
        provider: PROVIDER,
        url: "(client)".into(),
        problem,
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| fail(format!("cannot start the HTTP client: {e}")))?
                .block_on(fut)
        })
        .join()
        .unwrap_or_else(|_| Err(fail("the HTTP client panicked".into())))
    })
}

impl Provider for Ec2 {
    fn name(&self) -> &'static str {
        PROVIDER
    }

    fn read(&self, _opts: &SourceOptions) -> Found {
        match self.read_data() {
            Ok(d) => d.into_found(&KEYS),
            Err(e) => refused(PROVIDER, &self.base, &e),
        }
    }

    /// One token request and one `GET meta-data/instance-id`, each tried once with a short
    /// timeout (the watch asks every poll; a slow service is a poll without an answer).
    fn identity(&self) -> Identity {
        let opts = ImdsOptions {
            attempts: 1,
            timeout: std::time::Duration::from_secs(1),
            budget: std::time::Duration::from_secs(2),
            ..self.opts.clone()
        };
        let base = self.base.clone();
        let id = block_on(async move {
            let client = ImdsClient::new(&base, opts)?;
            client.get(INSTANCE_ID).await
        });
        let id = id.ok().flatten().and_then(|b| String::from_utf8(b).ok());
        Identity(vec![id.map(|s| s.trim().to_owned())])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn responses(kv: &[(&str, &str)]) -> Ec2Responses {
        kv.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect()
    }

    const M0: &str = "0a:00:00:00:00:01";
    const M1: &str = "0a:00:00:00:00:02";

    fn base() -> Vec<(String, String)> {
        [
            (INSTANCE_ID, "i-0123456789abcdef0"),
            (LOCAL_HOSTNAME, "ip-10-0-0-5.ec2.internal"),
            (PUBLIC_KEYS, "0=my-key\n1=other\n"),
            ("meta-data/public-keys/0/openssh-key", "ssh-ed25519 AAAA my-key\n"),
            ("meta-data/public-keys/1/openssh-key", "ssh-rsa BBBB other"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
    }

    fn with_nics() -> Ec2Responses {
        let mut kv = base();
        let mut add = |k: String, v: &str| kv.push((k, v.to_string()));
        add(MACS.into(), &format!("{M1}/\n{M0}/\n"));
        add(format!("{MACS}{M0}/device-number"), "0");
        add(format!("{MACS}{M0}/local-ipv4s"), "10.0.0.5\n10.0.0.6\n");
        add(format!("{MACS}{M0}/subnet-ipv4-cidr-block"), "10.0.0.0/20");
        add(format!("{MACS}{M0}/ipv6s"), "2600:1f18::5\n2600:1f18::6");
        add(format!("{MACS}{M1}/device-number"), "1");
        add(format!("{MACS}{M1}/local-ipv4s"), "10.0.1.5");
        kv.iter().map(|(k, v)| (k.clone(), v.as_bytes().to_vec())).collect()
    }

    #[test]
    fn identity_keys_network() {
        let d = parse(&with_nics(), "http://imds").unwrap();
        assert_eq!(d.instance_id.unwrap().as_str(), "i-0123456789abcdef0");
        assert_eq!(d.hostname.unwrap().short(), "ip-10-0-0-5");
        assert_eq!(d.public_keys, ["ssh-ed25519 AAAA my-key", "ssh-rsa BBBB other"]);
        let n = d.network.unwrap();
        assert_eq!(n.nics[0].mac.unwrap().to_string(), M0, "primary first");
        assert!(n.nics[0].dhcp4 && n.nics[0].dhcp6);
        let a: Vec<String> = n.nics[0].addresses.iter().map(ToString::to_string).collect();
        assert_eq!(a, ["10.0.0.6/20", "2600:1f18::6/128"]);
        assert!(n.nics[1].dhcp4 && !n.nics[1].dhcp6 && n.nics[1].addresses.is_empty());
        assert!(d.user_data.is_none());
        let paths = second_round(&with_nics()).unwrap();
        assert!(paths.contains(&format!("{MACS}{M1}/ipv6s")));
        assert!(paths.contains(&"meta-data/public-keys/1/openssh-key".to_string()));
    }

    #[test]
    fn hostile_responses() {
        let mk = |extra: &[(&str, &str)]| {
            let mut r = with_nics();
            for (k, v) in extra {
                r.insert(k.to_string(), v.as_bytes().to_vec());
            }
            parse(&r, "x").unwrap_err().to_string()
        };
        let dev1 = format!("{MACS}{M1}/device-number");
        let ip0 = format!("{MACS}{M0}/local-ipv4s");
        let cases = [
            (mk(&[(INSTANCE_ID, "../../etc/passwd")]), "ec2 meta-data/instance-id: (value): invalid instance-id"),
            (mk(&[(LOCAL_HOSTNAME, "bad_host")]), "ec2 meta-data/local-hostname: (value): invalid hostname"),
            (mk(&[(PUBLIC_KEYS, "0=a\n../x=b\n")]), "ec2 meta-data/public-keys/: line 2: \"../x=b\" is not a metadata entry name"),
            (mk(&[(PUBLIC_KEYS, "0=a\nx=b\n")]), "ec2 meta-data/public-keys/: line 2: \"x\" is not a key index"),
            (mk(&[(MACS, "zz:00:00:00:00:01/\n")]), "ec2 meta-data/network/interfaces/macs/: line 1: invalid MAC address"),
            (mk(&[(MACS, "../../../etc/\n")]), "ec2 meta-data/network/interfaces/macs/: line 1: \"../../../etc/\" is not a metadata entry name"),
            (mk(&[(dev1.as_str(), "0")]), "is also the device number of"),
            (mk(&[(dev1.as_str(), "-1")]), "device-number: (value): \"-1\" is not a device number"),
            (mk(&[(ip0.as_str(), "10.0.0.5\n10.0.0.300")]), "local-ipv4s: (value): \"10.0.0.300\" is not an IP address"),
            (mk(&[(ip0.as_str(), "2001:db8::1")]), "local-ipv4s: (value): 2001:db8::1 is not an IPv4 address"),
            (mk(&[(&format!("{MACS}{M0}/subnet-ipv4-cidr-block"), "10.0.0.0/99")]), "subnet-ipv4-cidr-block: (value): \"10.0.0.0/99\" is not an IPv4 CIDR"),
        ];
        for (got, want) in &cases {
            assert!(got.contains(want), "got {got}\nwant {want}");
        }
        let mut r = with_nics();
        r.remove(INSTANCE_ID);
        assert_eq!(
            parse(&r, "x").unwrap_err().to_string(),
            "ec2 meta-data/instance-id: (value): missing"
        );
        r.insert(INSTANCE_ID.into(), vec![0xff, 0xfe]);
        assert!(parse(&r, "x").unwrap_err().to_string().contains("not UTF-8"));
        let many: String = (0..300).map(|i| format!("{i}=k\n")).collect();
        let r = responses(&[(INSTANCE_ID, "i-1"), (PUBLIC_KEYS, &many)]);
        assert!(parse(&r, "x").unwrap_err().to_string().contains("more than 256 entries"));
    }
}
