//! The pod network's CNI configuration, without a downloadable CNI: containernetworking-plugins'
//! `bridge` (Debian's `/usr/lib/cni`) on `cni0` with the node's pod CIDR handed out by
//! `host-local`, and `portmap` for `hostPort`. Pods on other nodes are reached through the
//! routes [`super::routes`] keeps (host-gw).
//!
//! `isGateway` puts the CIDR's first address on the bridge as the pods' default gateway;
//! `ipMasq` source-NATs what pods send outside their own /24 — also to other nodes' pods,
//! which still reach each other but see the node's address (the agent owning a masquerade
//! rule that spares the cluster's pod CIDR is the next step; see docs/kube.md).

use std::net::{IpAddr, Ipv4Addr};

use serde::Serialize;

use crate::types::IpCidr;

/// Where containerd reads CNI configurations (the node template's `conf_dir`).
pub const CONFLIST_PATH: &str = "/etc/cni/net.d/10-capstan.conflist";
/// The network's name.
pub const NETWORK_NAME: &str = "capstan";
/// The bridge.
pub const BRIDGE: &str = "cni0";
/// The CNI spec version written (understood by containerd 1.6/1.7 and plugins 1.1).
pub const CNI_VERSION: &str = "0.4.0";

/// Why a pod CIDR cannot be a node's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("node pod CIDR {cidr}: {reason}")]
pub struct CniError {
    /// The CIDR.
    pub cidr: String,
    /// Why.
    pub reason: String,
}

/// The conflist, as containerd reads it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Conflist {
    cni_version: &'static str,
    name: &'static str,
    plugins: (Bridge, Portmap),
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct Bridge {
    #[serde(rename = "type")]
    kind: &'static str,
    bridge: &'static str,
    is_gateway: bool,
    ip_masq: bool,
    hairpin_mode: bool,
    ipam: Ipam,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct Ipam {
    #[serde(rename = "type")]
    kind: &'static str,
    ranges: Vec<Vec<Range>>,
    routes: Vec<Route>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_dir: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct Range {
    subnet: String,
    gateway: String,
}

#[derive(Debug, Clone, Serialize)]
struct Route {
    dst: &'static str,
}

#[derive(Debug, Clone, Serialize)]
struct Portmap {
    #[serde(rename = "type")]
    kind: &'static str,
    capabilities: PortmapCaps,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct PortmapCaps {
    port_mappings: bool,
}

impl Conflist {
    /// The conflist for this node's pod CIDR (an IPv4 network of /16 to /28).
    pub fn for_node(pod_cidr: IpCidr) -> Result<Conflist, CniError> {
        let bad = |reason: &str| CniError { cidr: pod_cidr.to_string(), reason: reason.into() };
        let IpAddr::V4(net) = pod_cidr.addr() else { return Err(bad("not IPv4")) };
        if pod_cidr.network() != pod_cidr {
            return Err(bad("host bits set"));
        }
        if !(16..=28).contains(&pod_cidr.prefix()) {
            return Err(bad("a node's pod CIDR must be /16 to /28"));
        }
        let gateway = Ipv4Addr::from(u32::from(net) + 1);
        Ok(Conflist {
            cni_version: CNI_VERSION,
            name: NETWORK_NAME,
            plugins: (
                Bridge {
                    kind: "bridge",
                    bridge: BRIDGE,
                    is_gateway: true,
                    ip_masq: true,
                    hairpin_mode: true,
                    ipam: Ipam {
                        kind: "host-local",
                        ranges: vec![vec![Range {
                            subnet: pod_cidr.to_string(),
                            gateway: gateway.to_string(),
                        }]],
                        routes: vec![Route { dst: "0.0.0.0/0" }],
                        data_dir: None,
                    },
                },
                Portmap { kind: "portmap", capabilities: PortmapCaps { port_mappings: true } },
            ),
        })
    }

    /// Keeps host-local's leases in `dir` instead of `/var/lib/cni/networks` (tests).
    pub fn with_data_dir(mut self, dir: &str) -> Conflist {
        self.plugins.0.ipam.data_dir = Some(dir.to_owned());
        self
    }

    /// The file's contents.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("the conflist serialises");
        s.push('\n');
        s
    }

    /// The bridge plugin's configuration alone, as the runtime hands it to the plugin
    /// (`cniVersion` and `name` copied in), for running the plugin directly.
    pub fn bridge_plugin_json(&self) -> String {
        let mut v = serde_json::to_value(&self.plugins.0).expect("the plugin serialises");
        v["cniVersion"] = CNI_VERSION.into();
        v["name"] = NETWORK_NAME.into();
        v.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_conflist_names_the_nodes_range_and_gateway() {
        let c = Conflist::for_node("10.244.1.0/24".parse().unwrap()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&c.to_json()).unwrap();
        let b = &v["plugins"][0];
        assert_eq!(b["type"], "bridge");
        assert_eq!(b["isGateway"], true);
        assert_eq!(b["ipMasq"], true);
        assert_eq!(b["ipam"]["type"], "host-local");
        assert_eq!(b["ipam"]["ranges"][0][0]["subnet"], "10.244.1.0/24");
        assert_eq!(b["ipam"]["ranges"][0][0]["gateway"], "10.244.1.1");
        assert_eq!(v["plugins"][1]["type"], "portmap");
        for bad in ["10.244.1.1/24", "fd00::/64", "10.0.0.0/8", "10.244.1.0/30"] {
            assert!(Conflist::for_node(bad.parse().unwrap()).is_err(), "{bad}");
        }
    }
}
