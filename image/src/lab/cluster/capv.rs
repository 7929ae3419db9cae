//! `guestinfo.metadata` as CAPV renders it for a VM (cluster-api-provider-vsphere,
//! `pkg/util/constants.go` `metadataFormat`): instance-id and local-hostname both the VM's
//! name, `wait-on-network`, and a netplan v2 `network` with one `id<i>` per NIC matched by MAC,
//! renamed `eth<i>`, `wakeonlan: true`, the DHCP keys only when DHCP is on, then the static
//! addresses. Written in CAPV's own layout (its text template), not through a YAML
//! serialiser, so that the agent sees the document CAPV would deliver; every value comes from
//! [`plan`](super::plan)'s checked types.
//!
//! As CAPV does, the lab delivers it base64-encoded with `guestinfo.metadata.encoding`.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use super::plan::{VmPlan, PREFIX};

/// The metadata document of `vm`: its one NIC static in the cluster's subnet, the default
/// route through `gateway` (the namespace's bridge; the lab network reaches nothing else,
/// but kubeadm and the kubelet pick the node's address from the default route).
pub fn render(vm: &VmPlan, gateway: Ipv4Addr) -> String {
    let mut s = String::new();
    // writing to a String cannot fail
    let _ = write!(
        s,
        "\ninstance-id: \"{name}\"\nlocal-hostname: \"{name}\"\nwait-on-network:\n  ipv4: true\n  ipv6: false\nnetwork:\n  version: 2\n  ethernets:\n    id0:\n      match:\n        macaddress: \"{mac}\"\n      set-name: \"eth0\"\n      wakeonlan: true\n      addresses:\n      - \"{ip}/{PREFIX}\"\n      gateway4: \"{gw}\"\n",
        name = vm.name,
        mac = vm.mac,
        ip = vm.ip,
        gw = gateway,
    );
    s
}

#[cfg(test)]
mod tests {
    use super::super::plan::{plan, Role};
    use super::*;
    use capstan_agent::cloudinit::parse_metadata;

    #[test]
    fn the_agents_parser_reads_the_mac_matched_static_address() {
        let p = plan(&"lab".parse().unwrap(), 3, 2).unwrap();
        for vm in &p.vms {
            let text = render(vm, p.bridge_ip);
            let md = parse_metadata(&text).unwrap_or_else(|e| panic!("{}: {e}\n{text}", vm.name));
            assert_eq!(md.instance_id.as_ref().unwrap().as_str(), vm.name);
            assert_eq!(md.local_hostname.as_ref().unwrap().as_str(), vm.name);
            assert!(md.warnings.is_empty(), "{:?}", md.warnings);
            let net = md.network.expect("network");
            let [nic] = &net.nics[..] else { panic!("one NIC: {net:?}") };
            assert_eq!(nic.mac.as_ref().unwrap().to_string(), vm.mac);
            assert_eq!(nic.set_name.as_ref().unwrap().as_str(), "eth0");
            assert!(!nic.dhcp4 && !nic.dhcp6 && nic.wakeonlan);
            assert_eq!(nic.gateway4, Some(p.bridge_ip));
            let want = format!("{}/24", vm.ip);
            assert_eq!(nic.addresses.iter().map(ToString::to_string).collect::<Vec<_>>(), [want]);
        }
        // the agent's guestinfo reader (vmware source) takes it as a mapping too
        let cp = p.of(Role::ControlPlane).next().unwrap();
        let m = capstan_agent::sources::vmware::parse_metadata(&render(cp, p.bridge_ip)).unwrap();
        assert_eq!(m["network"]["ethernets"]["id0"]["match"]["macaddress"], "52:54:00:4c:02:00");
    }

    #[test]
    fn golden() {
        let p = plan(&"lab".parse().unwrap(), 1, 0).unwrap();
        assert_eq!(
            render(&p.vms[2], p.bridge_ip),
            r#"
instance-id: "lab-cp-0"
local-hostname: "lab-cp-0"
wait-on-network:
  ipv4: true
  ipv6: false
network:
  version: 2
  ethernets:
    id0:
      match:
        macaddress: "52:54:00:4c:02:00"
      set-name: "eth0"
      wakeonlan: true
      addresses:
      - "10.77.0.21/24"
      gateway4: "10.77.0.1"
"#
        );
    }
}
