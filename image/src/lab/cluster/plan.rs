//! The shape of a lab cluster, decided before anything starts: names, roles, MACs and
//! addresses for the lb pair, N control planes and M workers. Pure and deterministic: the same
//! name and counts give the same plan, so `scale` recomputes it and keeps what exists.
//!
//! Every cluster has its own network namespace, so every cluster uses the same private /24
//! ([`SUBNET`]): the bridge in the namespace is `.1`, the control-plane VIP `.10`, the lb pair
//! `.11`/`.12`, control planes from `.21`, workers from `.101`.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The network of every lab cluster (inside its own namespace).
pub const SUBNET: [u8; 3] = [10, 77, 0];
/// Prefix length of [`SUBNET`].
pub const PREFIX: u8 = 24;
/// Longest cluster name: `<name>-w-49` stays a short host name and `capstan-<name>` a short
/// namespace name.
pub const NAME_MAX: usize = 20;
/// Most control planes (stacked etcd: an odd count, as Cluster API's control plane requires).
pub const CONTROL_PLANES_MAX: u32 = 7;
/// Most workers (addresses `.101`..`.150`).
pub const WORKERS_MAX: u32 = 50;
/// The API server port on the VIP and on every control plane.
pub const API_PORT: u16 = 6443;
/// The lb appliances' backend API port (`lb.api.listen`).
pub const LB_API_PORT: u16 = 9443;

/// Why a plan was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// The cluster name breaks a rule.
    #[error("cluster name {name:?}: {why}")]
    Name {
        /// What was given.
        name: String,
        /// The rule.
        why: &'static str,
    },
    /// A count is out of range.
    #[error("{flag} {count}: {why}")]
    Count {
        /// `--control-planes` or `--workers`.
        flag: &'static str,
        /// What was given.
        count: u32,
        /// The rule.
        why: String,
    },
}

/// A cluster name: a DNS label of at most [`NAME_MAX`] characters, starting with a letter.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ClusterName(String);

impl FromStr for ClusterName {
    type Err = PlanError;
    fn from_str(s: &str) -> Result<Self, PlanError> {
        let err = |why| PlanError::Name { name: s.to_owned(), why };
        if s.is_empty() {
            return Err(err("empty"));
        }
        if s.len() > NAME_MAX {
            return Err(err("longer than 20 characters (it prefixes host and namespace names)"));
        }
        if !s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
            return Err(err("use lower-case letters, digits and '-' (a DNS label)"));
        }
        if !s.as_bytes()[0].is_ascii_lowercase() {
            return Err(err("must start with a letter"));
        }
        if s.ends_with('-') {
            return Err(err("must not end with '-'"));
        }
        Ok(ClusterName(s.to_owned()))
    }
}

impl TryFrom<String> for ClusterName {
    type Error = PlanError;
    fn try_from(s: String) -> Result<Self, PlanError> {
        s.parse()
    }
}

impl From<ClusterName> for String {
    fn from(n: ClusterName) -> String {
        n.0
    }
}

impl ClusterName {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The cluster's network namespace.
    pub fn netns(&self) -> String {
        format!("capstan-{}", self.0)
    }
}

impl fmt::Display for ClusterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a VM is in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// An lb appliance (VIP + backend API).
    Lb,
    /// A control plane (the first one initialises the cluster).
    ControlPlane,
    /// A worker.
    Worker,
}

impl Role {
    fn short(self) -> &'static str {
        match self {
            Role::Lb => "lb",
            Role::ControlPlane => "cp",
            Role::Worker => "w",
        }
    }
    fn mac_byte(self) -> u8 {
        match self {
            Role::Lb => 1,
            Role::ControlPlane => 2,
            Role::Worker => 3,
        }
    }
    fn first_host(self) -> u8 {
        match self {
            Role::Lb => 11,
            Role::ControlPlane => 21,
            Role::Worker => 101,
        }
    }
}

/// One VM of the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmPlan {
    /// Host name and instance-id (`<cluster>-cp-0`), as CAPV names VMs after their machine.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Index within the role.
    pub index: u32,
    /// MAC of its NIC (QEMU's 52:54:00 prefix; role and index in the last bytes).
    pub mac: String,
    /// Its static address in [`SUBNET`].
    pub ip: Ipv4Addr,
    /// Its tap device in the namespace (at most 15 bytes, as IFNAMSIZ allows).
    pub tap: String,
}

/// The whole cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The cluster.
    pub name: ClusterName,
    /// The bridge's address in the namespace (what the host's forwarder connects from).
    pub bridge_ip: Ipv4Addr,
    /// The control-plane VIP the lb pair holds.
    pub vip: Ipv4Addr,
    /// The lb pair, then the control planes, then the workers: the order `create` boots them.
    pub vms: Vec<VmPlan>,
}

fn host(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], n)
}

fn vm(cluster: &ClusterName, role: Role, index: u32) -> VmPlan {
    // counts are checked first: index < 100, the host byte fits
    let i = u8::try_from(index).expect("checked count");
    VmPlan {
        name: format!("{cluster}-{}-{index}", role.short()),
        role,
        index,
        mac: format!("52:54:00:4c:{:02x}:{i:02x}", role.mac_byte()),
        ip: host(role.first_host() + i),
        tap: format!("tap-{}-{index}", role.short()),
    }
}

/// Checks the counts against the rules.
pub fn check_counts(control_planes: u32, workers: u32) -> Result<(), PlanError> {
    if control_planes == 0 || control_planes > CONTROL_PLANES_MAX {
        return Err(PlanError::Count {
            flag: "--control-planes",
            count: control_planes,
            why: format!("between 1 and {CONTROL_PLANES_MAX}"),
        });
    }
    if control_planes % 2 == 0 {
        return Err(PlanError::Count {
            flag: "--control-planes",
            count: control_planes,
            why: "must be odd: stacked etcd needs a majority (Cluster API refuses even counts)"
                .into(),
        });
    }
    if workers > WORKERS_MAX {
        return Err(PlanError::Count {
            flag: "--workers",
            count: workers,
            why: format!("at most {WORKERS_MAX}"),
        });
    }
    Ok(())
}

/// The plan for `name` with `control_planes` and `workers`.
pub fn plan(name: &ClusterName, control_planes: u32, workers: u32) -> Result<Plan, PlanError> {
    check_counts(control_planes, workers)?;
    let vms = (0..2)
        .map(|i| vm(name, Role::Lb, i))
        .chain((0..control_planes).map(|i| vm(name, Role::ControlPlane, i)))
        .chain((0..workers).map(|i| vm(name, Role::Worker, i)))
        .collect();
    Ok(Plan { name: name.clone(), bridge_ip: host(1), vip: host(10), vms })
}

impl Plan {
    /// The VMs of `role`.
    pub fn of(&self, role: Role) -> impl Iterator<Item = &VmPlan> {
        self.vms.iter().filter(move |v| v.role == role)
    }
    /// `VIP:6443`, the control-plane endpoint.
    pub fn endpoint(&self) -> String {
        format!("{}:{API_PORT}", self.vip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> ClusterName {
        s.parse().unwrap()
    }

    #[test]
    fn plans_are_deterministic_and_ordered_lb_first() {
        let p = plan(&n("lab"), 3, 2).unwrap();
        assert_eq!(p, plan(&n("lab"), 3, 2).unwrap());
        let names: Vec<&str> = p.vms.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(
            names,
            ["lab-lb-0", "lab-lb-1", "lab-cp-0", "lab-cp-1", "lab-cp-2", "lab-w-0", "lab-w-1"]
        );
        let cp1 = &p.vms[3];
        assert_eq!((cp1.mac.as_str(), cp1.ip), ("52:54:00:4c:02:01", Ipv4Addr::new(10, 77, 0, 22)));
        assert_eq!(p.vms[6].ip, Ipv4Addr::new(10, 77, 0, 102));
        assert_eq!(p.endpoint(), "10.77.0.10:6443");
        // scaling keeps the names and addresses of what exists
        let bigger = plan(&n("lab"), 3, 5).unwrap();
        assert_eq!(bigger.vms[..7], p.vms[..]);
        // every MAC, address and tap is unique; taps fit IFNAMSIZ
        let big = plan(&n("a2345678901234567890"), CONTROL_PLANES_MAX, WORKERS_MAX).unwrap();
        let mut macs: Vec<&str> = big.vms.iter().map(|v| v.mac.as_str()).collect();
        macs.sort();
        macs.dedup();
        assert_eq!(macs.len(), big.vms.len());
        let mut ips: Vec<Ipv4Addr> = big.vms.iter().map(|v| v.ip).collect();
        ips.push(big.vip);
        ips.push(big.bridge_ip);
        ips.sort();
        ips.dedup();
        assert_eq!(ips.len(), big.vms.len() + 2);
        assert!(big.vms.iter().all(|v| v.tap.len() <= 15 && v.name.len() <= 63));
    }

    #[test]
    fn hostile_names_are_refused_with_the_rule() {
        for (bad, rule) in [
            ("", "empty"),
            ("Lab", "lower-case"),
            ("1lab", "start with a letter"),
            ("lab-", "end with"),
            ("lab_x", "lower-case"),
            ("lab/../x", "lower-case"),
            ("a;rm -rf", "lower-case"),
            ("a234567890123456789012", "longer than 20"),
        ] {
            let e = bad.parse::<ClusterName>().unwrap_err().to_string();
            assert!(e.starts_with(&format!("cluster name {bad:?}: ")) && e.contains(rule), "{e}");
        }
        assert_eq!(n("lab-1").netns(), "capstan-lab-1");
        assert!(serde_json::from_str::<ClusterName>("\"BAD\"").is_err());
    }

    #[test]
    fn hostile_counts_are_refused_with_the_flag() {
        for (cp, w, want) in [
            (0, 1, "--control-planes 0: between 1 and 7"),
            (9, 1, "--control-planes 9: between 1 and 7"),
            (2, 1, "--control-planes 2: must be odd"),
            (1, 51, "--workers 51: at most 50"),
            (1, u32::MAX, "--workers 4294967295"),
        ] {
            let e = plan(&n("lab"), cp, w).unwrap_err().to_string();
            assert!(e.starts_with(want), "{e}");
        }
        assert_eq!(plan(&n("lab"), 1, 0).unwrap().vms.len(), 3);
    }
}
