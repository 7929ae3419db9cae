//! What a systemd-networkd `.network` file says, as sets, so two renderers' files (ours and
//! cloud-init's, in the oracle tests) compare by meaning: address order, `Gateway=` in
//! `[Network]` against a default `[Route]`, and a route's spelling of its destination do not
//! matter; every address, gateway, route, DNS server, domain, DHCP mode and MTU does.

use std::collections::{BTreeMap, BTreeSet};

use capstan_agent::types::IpCidr;

/// What one `.network` file says, keyed elsewhere by its MAC match.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Facts {
    pub dhcp: String,
    pub mtu: Option<String>,
    pub addresses: BTreeSet<String>,
    pub gateways: BTreeSet<String>,
    pub routes: BTreeSet<(String, String)>,
    pub dns: BTreeSet<String>,
    pub domains: BTreeSet<String>,
}

/// Reads the keys of a networkd file into (MAC, facts). A `[Route]` to the default network (or
/// without a destination) is a gateway, as `Gateway=` in `[Network]` is.
pub fn facts(text: &str) -> (String, Facts) {
    let mut mac = String::new();
    let mut f = Facts { dhcp: "no".into(), ..Facts::default() };
    let mut section = String::new();
    let mut route: Option<(Option<String>, String)> = None;
    let flush = |route: &mut Option<(Option<String>, String)>, f: &mut Facts| {
        if let Some((dest, gw)) = route.take() {
            let dest = dest.map(|d| IpCidr::parse_or_host(&d).unwrap().network().to_string());
            match dest.as_deref() {
                None | Some("0.0.0.0/0") | Some("::/0") => f.gateways.insert(gw),
                Some(d) => f.routes.insert((d.to_string(), gw)),
            };
        }
    };
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            flush(&mut route, &mut f);
            section = s.to_string();
            if section == "Route" {
                route = Some((None, String::new()));
            }
            continue;
        }
        let (k, v) = line.split_once('=').expect("key=value");
        let words = || v.split_whitespace().map(str::to_string);
        match (section.as_str(), k) {
            ("Match", "MACAddress") => mac = v.to_lowercase(),
            ("Link", "MTUBytes") => f.mtu = Some(v.to_string()),
            ("Network", "DHCP") => f.dhcp = v.to_string(),
            ("Network" | "Address", "Address") => {
                f.addresses.insert(v.parse::<IpCidr>().unwrap().to_string());
            }
            ("Network", "Gateway") => {
                f.gateways.insert(v.to_string());
            }
            ("Network", "DNS") => f.dns.extend(words()),
            ("Network", "Domains") => f.domains.extend(words()),
            ("Route", "Destination") => route.as_mut().unwrap().0 = Some(v.to_string()),
            ("Route", "Gateway") => route.as_mut().unwrap().1 = v.to_string(),
            _ => {}
        }
    }
    flush(&mut route, &mut f);
    (mac, f)
}

/// The `.network` files among `(name, content)` pairs, by MAC match.
pub fn by_mac<'a>(files: impl IntoIterator<Item = (&'a str, &'a str)>) -> BTreeMap<String, Facts> {
    files
        .into_iter()
        .filter(|(name, _)| name.ends_with(".network"))
        .map(|(_, t)| facts(t))
        .collect()
}

/// Asserts that `mine` and `theirs` (cloud-init's) say the same of every NIC.
pub fn assert_same(what: &str, mine: &BTreeMap<String, Facts>, theirs: &BTreeMap<String, Facts>) {
    assert!(!theirs.is_empty(), "{what}: cloud-init rendered nothing");
    assert_eq!(mine.keys().collect::<Vec<_>>(), theirs.keys().collect::<Vec<_>>(), "{what}: MACs");
    for (mac, t) in theirs {
        assert_eq!(&mine[mac], t, "{what}: NIC {mac} differs from cloud-init");
    }
}
