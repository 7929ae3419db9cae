//! What each VM of a lab clone gets, decided before anything starts (pure): its guestinfo,
//! MAC, VM generation id and SMBIOS UUID, and the QEMU arguments `lab clone` adds to
//! [`qemu::args`](super::super::qemu::args).
//!
//! Why guestinfo keys are constrained: a child resumes with the parent's kernel, whose
//! `qemu_fw_cfg` driver read fw_cfg's file directory (names, sizes, selectors) once, at the
//! parent's boot. The child's QEMU builds its directory from its own command line; the guest
//! reads a file by the parent's selector and at most the parent's size (and QEMU pads a short
//! file with NULs). So every VM gets the same set of keys and, per key, values of one length:
//! shorter values are padded with trailing newlines, which YAML, JSON and the agent's
//! trailing-whitespace rule ignore. A child may only change a key the parent has.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context};
use uuid::Uuid;

use super::super::{GuestinfoArg, GUESTINFO_MAX};

/// The most children one `lab clone` starts (each is a QEMU with the parent's memory size).
pub const MAX_CHILDREN: usize = 16;

/// One `--guestinfo-for I KEY=VALUE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildGuestinfo {
    /// Child number, 1-based.
    pub child: usize,
    /// The key and value.
    pub arg: GuestinfoArg,
}

/// Parses the flat `I KEY=VALUE` pairs clap collected for `--guestinfo-for`.
pub fn parse_guestinfo_for(
    values: &[String],
    children: usize,
) -> anyhow::Result<Vec<ChildGuestinfo>> {
    if values.len() % 2 != 0 {
        bail!("--guestinfo-for takes two values: a child number and KEY=VALUE");
    }
    values
        .chunks(2)
        .map(|pair| {
            let (i, kv) = (&pair[0], &pair[1]);
            let child: usize = i.parse().map_err(|_| {
                anyhow::anyhow!("--guestinfo-for {i:?} {kv:?}: {i:?} is not a child number")
            })?;
            if child == 0 || child > children {
                bail!("--guestinfo-for {child}: children are numbered 1 to {children}");
            }
            let arg =
                GuestinfoArg::parse(kv).with_context(|| format!("--guestinfo-for {child}"))?;
            Ok(ChildGuestinfo { child, arg })
        })
        .collect()
}

/// The identity one VM of the clone is started with.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VmPlan {
    /// `parent`, `child-1`, ...
    pub name: String,
    /// 0 for the parent, else the child number.
    pub index: usize,
    /// The NIC's MAC on the QEMU command line.
    pub mac: String,
    /// The VM generation id (`-device vmgenid,guid=`).
    pub vmgenid: Uuid,
    /// The SMBIOS system UUID (`-uuid`).
    pub uuid: Uuid,
    /// guestinfo as delivered through fw_cfg (padded, see the module docs).
    #[serde(skip)]
    pub guestinfo: Vec<GuestinfoArg>,
}

/// Child `i`'s MAC: `52:54:00:c1:00:II` (QEMU's locally administered prefix, `c1` for clone).
pub fn child_mac(i: usize) -> String {
    format!("52:54:00:c1:{:02x}:{:02x}", (i >> 8) & 0xff, i & 0xff)
}

/// Plans the parent (index 0) and `children` children.
pub fn plan(
    parent_mac: &str,
    parent_guestinfo: &[GuestinfoArg],
    per_child: &[ChildGuestinfo],
    children: usize,
) -> anyhow::Result<Vec<VmPlan>> {
    if children == 0 || children > MAX_CHILDREN {
        bail!("--children {children}: between 1 and {MAX_CHILDREN}");
    }
    let mut base: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for g in parent_guestinfo {
        base.insert(g.key.clone(), g.value.clone());
    }
    let mut maps = vec![base.clone()];
    for i in 1..=children {
        let mut m = base.clone();
        for c in per_child.iter().filter(|c| c.child == i) {
            if !base.contains_key(&c.arg.key) {
                bail!(
                    "--guestinfo-for {i} {}: the parent has no guestinfo key {:?}; a child \
                     resumes with the parent's fw_cfg directory, so it can only change the \
                     values of keys the parent has (add --guestinfo {}=...)",
                    c.arg.key,
                    c.arg.key,
                    c.arg.key
                );
            }
            m.insert(c.arg.key.clone(), c.arg.value.clone());
        }
        maps.push(m);
    }
    pad(&mut maps)?;
    let mut vms: Vec<VmPlan> = Vec::with_capacity(children + 1);
    for (index, m) in maps.into_iter().enumerate() {
        let mac = if index == 0 { parent_mac.to_ascii_lowercase() } else { child_mac(index) };
        if index > 0 && mac == vms[0].mac {
            bail!("--mac {parent_mac}: that is child {index}'s MAC; pick another for the parent");
        }
        vms.push(VmPlan {
            name: if index == 0 { "parent".into() } else { format!("child-{index}") },
            index,
            mac,
            vmgenid: Uuid::new_v4(),
            uuid: Uuid::new_v4(),
            guestinfo: m.into_iter().map(|(key, value)| GuestinfoArg { key, value }).collect(),
        });
    }
    Ok(vms)
}

/// Pads each key's values to the longest (trailing newlines) when they differ in length.
fn pad(maps: &mut [BTreeMap<String, Vec<u8>>]) -> anyhow::Result<()> {
    let keys: Vec<String> = maps[0].keys().cloned().collect();
    for key in keys {
        let longest = maps.iter().map(|m| m[&key].len()).max().unwrap_or(0);
        if longest > GUESTINFO_MAX {
            bail!("guestinfo {key}: {longest} bytes; vSphere allows at most {GUESTINFO_MAX}");
        }
        for m in maps.iter_mut() {
            let v = m.get_mut(&key).expect("every VM has the parent's keys");
            v.resize(longest, b'\n');
        }
    }
    Ok(())
}

/// The fw_cfg file that asks the image's `capstan-agent-freeze.service` to run
/// `capstan-agent freeze` at the end of boot (docs/instant-clone.md). The parent gets `1`;
/// children get `0`, one byte too, so that their fw_cfg directory is the parent's (module docs).
pub const FW_CFG_FREEZE: &str = "opt/capstan/freeze";

/// Where one VM's QMP socket is and, for a child, the saved state it starts from.
#[derive(Debug, Clone, Copy)]
pub struct Wiring<'a> {
    /// QMP unix socket.
    pub qmp: &'a Path,
    /// The parent's saved memory and device state (children only).
    pub incoming: Option<&'a Path>,
}

/// The arguments `lab clone` adds after [`qemu::args`](super::super::qemu::args): the
/// generation id, the UUID, QMP, and for a child `-incoming file:` (paused: `-S`, resumed by
/// `cont` once loaded, so the time to re-identify is measured from the resume alone).
pub fn extra_args(vm: &VmPlan, wiring: Wiring<'_>) -> anyhow::Result<Vec<String>> {
    let path = |p: &Path| -> anyhow::Result<String> {
        let s = p.to_str().with_context(|| format!("{}: not UTF-8", p.display()))?;
        if s.contains(',') {
            bail!("{s}: QEMU option values cannot hold ','");
        }
        Ok(s.to_string())
    };
    let mut a = vec![
        "-device".to_string(),
        format!("vmgenid,id=vmgenid0,guid={}", vm.vmgenid),
        "-uuid".into(),
        vm.uuid.to_string(),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", path(wiring.qmp)?),
        "-fw_cfg".into(),
        format!("name={FW_CFG_FREEZE},string={}", if wiring.incoming.is_some() { 0 } else { 1 }),
    ];
    if let Some(state) = wiring.incoming {
        a.extend(["-incoming".into(), format!("file:{}", path(state)?), "-S".into()]);
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gi(key: &str, value: &str) -> GuestinfoArg {
        GuestinfoArg { key: key.into(), value: value.as_bytes().to_vec() }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn guestinfo_for_is_numbered_from_one_and_checked() {
        let ok = parse_guestinfo_for(&strings(&["1", "metadata=a", "3", "userdata=b"]), 3).unwrap();
        assert_eq!(ok[0], ChildGuestinfo { child: 1, arg: gi("metadata", "a") });
        assert_eq!(ok[1].child, 3);
        let err = |v: &[&str]| format!("{:#}", parse_guestinfo_for(&strings(v), 3).unwrap_err());
        assert!(err(&["0", "metadata=a"]).contains("numbered 1 to 3"));
        assert!(err(&["4", "metadata=a"]).contains("numbered 1 to 3"));
        assert!(err(&["-1", "metadata=a"]).contains("not a child number"));
        assert!(err(&["two", "metadata=a"]).contains("not a child number"));
        assert!(err(&["1", "novalue"]).contains("expected KEY=VALUE"));
        assert!(err(&["1", "bad key=x"]).contains("--guestinfo-for 1"));
        assert!(err(&["1"]).contains("two values"));
    }

    #[test]
    fn children_inherit_override_and_get_one_length_per_key() {
        let parent = [gi("metadata", "instance-id: p\n"), gi("metadata.encoding", "")];
        let per = [
            ChildGuestinfo { child: 1, arg: gi("metadata", "instance-id: child-one\n") },
            ChildGuestinfo { child: 2, arg: gi("metadata", "instance-id: c2\n") },
        ];
        let vms = plan("52:54:00:12:34:56", &parent, &per, 3).unwrap();
        assert_eq!(vms.len(), 4);
        let md = |i: usize| vms[i].guestinfo.iter().find(|g| g.key == "metadata").unwrap();
        let len = md(1).value.len();
        for (i, vm) in vms.iter().enumerate() {
            assert_eq!(md(i).value.len(), len, "vm {i}");
            assert_eq!(vm.guestinfo.len(), 2, "same keys everywhere");
        }
        assert_eq!(md(1).value, b"instance-id: child-one\n");
        assert!(md(0).value.starts_with(b"instance-id: p\n\n"));
        assert!(md(2).value.starts_with(b"instance-id: c2\n"));
        // child 3 has no override: the parent's value, padded like it
        assert_eq!(md(3).value, md(0).value);
        assert!(md(0).value[15..].iter().all(|&b| b == b'\n'));
    }

    #[test]
    fn every_vm_is_distinct() {
        let vms = plan("52:54:00:12:34:56", &[], &[], 3).unwrap();
        let macs: std::collections::BTreeSet<_> = vms.iter().map(|v| &v.mac).collect();
        let gens: std::collections::BTreeSet<_> = vms.iter().map(|v| v.vmgenid).collect();
        let uuids: std::collections::BTreeSet<_> = vms.iter().map(|v| v.uuid).collect();
        assert_eq!((macs.len(), gens.len(), uuids.len()), (4, 4, 4));
        assert_eq!(vms[2].mac, "52:54:00:c1:00:02");
        assert_eq!(vms[2].name, "child-2");
    }

    #[test]
    fn hostile_plans_are_refused() {
        let err = |r: anyhow::Result<Vec<VmPlan>>| format!("{:#}", r.unwrap_err());
        let extra = [ChildGuestinfo { child: 1, arg: gi("userdata", "x") }];
        let e = err(plan("52:54:00:12:34:56", &[gi("metadata", "m")], &extra, 1));
        assert!(e.contains("no guestinfo key \"userdata\""), "{e}");
        assert!(err(plan("52:54:00:12:34:56", &[], &[], 0)).contains("between 1 and 16"));
        assert!(err(plan("52:54:00:12:34:56", &[], &[], 17)).contains("between 1 and 16"));
        assert!(err(plan("52:54:00:C1:00:01", &[], &[], 1)).contains("child 1's MAC"));
    }

    #[test]
    fn children_start_paused_from_the_saved_state() {
        let vms = plan("52:54:00:12:34:56", &[], &[], 1).unwrap();
        let qmp = Path::new("/tmp/w/child-1/qmp.sock");
        let state = Path::new("/tmp/w/parent.state");
        let child = extra_args(&vms[1], Wiring { qmp, incoming: Some(state) }).unwrap();
        let at =
            |a: &[String], flag: &str| a[a.iter().position(|x| x == flag).unwrap() + 1].clone();
        assert_eq!(at(&child, "-device"), format!("vmgenid,id=vmgenid0,guid={}", vms[1].vmgenid));
        assert_eq!(at(&child, "-uuid"), vms[1].uuid.to_string());
        assert_eq!(at(&child, "-qmp"), "unix:/tmp/w/child-1/qmp.sock,server=on,wait=off");
        assert_eq!(at(&child, "-incoming"), "file:/tmp/w/parent.state");
        assert_eq!(child.last().unwrap(), "-S");
        assert_eq!(at(&child, "-fw_cfg"), "name=opt/capstan/freeze,string=0");
        let parent = extra_args(&vms[0], Wiring { qmp, incoming: None }).unwrap();
        assert!(!parent.iter().any(|a| a == "-incoming" || a == "-S"), "{parent:?}");
        // The parent is asked to freeze; the file has the same size in every VM.
        assert_eq!(at(&parent, "-fw_cfg"), "name=opt/capstan/freeze,string=1");
        let bad = Wiring { qmp: Path::new("/tmp/a,b/qmp"), incoming: None };
        assert!(extra_args(&vms[0], bad).is_err());
    }
}
