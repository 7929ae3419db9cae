//! The record of a lab cluster: `<state dir>/clusters/<name>/cluster.json` (mode 0600; the
//! directory 0700, it also holds the PKI and the kubeconfig). It names the namespace, the
//! VIP and the host's forwarded port, the images, and each VM with its MAC, address, tap,
//! directory and QEMU pid: what `list`, `scale`, `kubeconfig` and `delete` work from. Written
//! atomically (temp file, fsync, rename) after every change, so an interrupted `create`
//! still leaves a record `delete` can clean up from.

use std::fs;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::plan::{ClusterName, Role, VmPlan};

/// The record's file name.
pub const RECORD: &str = "cluster.json";

/// One VM of the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmRecord {
    /// Name, role, MAC, address and tap, from the plan.
    #[serde(flatten)]
    pub plan: VmPlan,
    /// Its SMBIOS UUID.
    pub uuid: String,
    /// Its directory (overlay, OVF environment, guestinfo, serial log).
    pub dir: PathBuf,
    /// QEMU's pid while it runs.
    pub pid: Option<u32>,
    /// Registered as a backend with the lb pair (control planes).
    #[serde(default)]
    pub backend: bool,
    /// Seconds from QEMU's start to its ready report, once seen.
    pub ready_seconds: Option<f64>,
}

/// The cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterRecord {
    /// Name.
    pub name: ClusterName,
    /// Its network namespace.
    pub netns: String,
    /// The bridge's address in the namespace.
    pub bridge_ip: Ipv4Addr,
    /// The control-plane VIP.
    pub vip: Ipv4Addr,
    /// The host's loopback port forwarded to `VIP:6443`.
    pub host_port: u16,
    /// The forwarder's pid.
    pub forwarder_pid: Option<u32>,
    /// The lb template.
    pub lb_image: PathBuf,
    /// The node template.
    pub node_image: PathBuf,
    /// The VMs, in boot order.
    pub vms: Vec<VmRecord>,
}

impl ClusterRecord {
    /// The VMs of `role`.
    pub fn of(&self, role: Role) -> impl Iterator<Item = &VmRecord> {
        self.vms.iter().filter(move |v| v.plan.role == role)
    }
}

/// Where the records of `state_dir` live.
pub fn clusters_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("clusters")
}

/// The directory of cluster `name`.
pub fn cluster_dir(state_dir: &Path, name: &ClusterName) -> PathBuf {
    clusters_dir(state_dir).join(name.as_str())
}

/// Creates the cluster's directory (0700); fails if it exists.
pub fn create_dir(state_dir: &Path, name: &ClusterName) -> anyhow::Result<PathBuf> {
    let dir = cluster_dir(state_dir, name);
    fs::create_dir_all(clusters_dir(state_dir))?;
    fs::create_dir(&dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => anyhow::anyhow!(
            "lab cluster {name} exists already ({}): delete it first",
            dir.display()
        ),
        _ => anyhow::Error::new(e).context(format!("creating {}", dir.display())),
    })?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
    Ok(dir)
}

/// Writes `bytes` to `path` atomically, mode 0600.
pub fn write_secret(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().context("a file in a directory")?;
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Saves the record in `dir`.
pub fn save(dir: &Path, r: &ClusterRecord) -> anyhow::Result<()> {
    let mut text = serde_json::to_vec_pretty(r)?;
    text.push(b'\n');
    write_secret(&dir.join(RECORD), &text)
}

/// Loads the record of `name`.
pub fn load(state_dir: &Path, name: &ClusterName) -> anyhow::Result<(PathBuf, ClusterRecord)> {
    let dir = cluster_dir(state_dir, name);
    let path = dir.join(RECORD);
    let text = match fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            anyhow::bail!("no lab cluster {name} (no {})", path.display())
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let r = serde_json::from_slice(&text)
        .with_context(|| format!("{}: not a cluster record", path.display()))?;
    Ok((dir, r))
}

/// The names of the clusters with a record, sorted.
pub fn list(state_dir: &Path) -> anyhow::Result<Vec<ClusterName>> {
    let dir = clusters_dir(state_dir);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut names: Vec<ClusterName> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().join(RECORD).is_file())
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::super::plan::plan;
    use super::*;

    #[test]
    fn records_round_trip_and_strangers_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let name: ClusterName = "lab".parse().unwrap();
        let p = plan(&name, 1, 1).unwrap();
        let dir = create_dir(t.path(), &name).unwrap();
        assert!(create_dir(t.path(), &name).unwrap_err().to_string().contains("exists already"));
        let r = ClusterRecord {
            name: name.clone(),
            netns: name.netns(),
            bridge_ip: p.bridge_ip,
            vip: p.vip,
            host_port: 40001,
            forwarder_pid: Some(7),
            lb_image: "lb.ova".into(),
            node_image: "node.ova".into(),
            vms: p
                .vms
                .iter()
                .map(|v| VmRecord {
                    plan: v.clone(),
                    uuid: "u".into(),
                    dir: dir.join(&v.name),
                    pid: None,
                    backend: false,
                    ready_seconds: None,
                })
                .collect(),
        };
        save(&dir, &r).unwrap();
        assert_eq!(load(t.path(), &name).unwrap().1, r);
        let mode = fs::metadata(dir.join(RECORD)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(list(t.path()).unwrap(), std::slice::from_ref(&name));
        assert_eq!(r.of(Role::Worker).count(), 1);
        let e = load(t.path(), &"other".parse().unwrap()).unwrap_err().to_string();
        assert!(e.starts_with("no lab cluster other"), "{e}");
        fs::write(dir.join(RECORD), "{\"name\":\"lab\",\"extra\":1}").unwrap();
        let e = format!("{:#}", load(t.path(), &name).unwrap_err());
        assert!(e.contains("not a cluster record"), "{e}");
    }
}
