//! The shape of the cloud-config Cluster API's kubeadm bootstrap provider (CABPK) renders,
//! and a check of a rendered document against it, independent of who rendered it: the lab's
//! CABPK-shaped user-data (`capstan lab cluster`) calls [`check`] so that it stays what CAPV
//! would deliver, and `tests/kube_cabpk_shape.rs` holds these constants to the facts recorded
//! from CABPK's templates (`tests/fixtures/cabpk/shape.toml`, naming the upstream files).
//!
//! What is checked, per [`Kind`]: the two header lines (`## template: jinja`,
//! `#cloud-config`); each file CABPK writes (kubeadm's configuration, the PKI of a control
//! plane, the `/run/cluster-api` placeholder) with its `owner` and quoted `permissions`, and no
//! key CABPK does not write; the kubeadm document's kinds; `runcmd` holding CABPK's one kubeadm
//! command (with its optional `--v=N`) and the sentinel, between the pre- and post-kubeadm
//! commands, which [`check`] returns.

use serde_yaml::Value;

/// Which of CABPK's templates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `controlplane_init.go`: the first control plane.
    Init,
    /// `controlplane_join.go`: another control plane.
    JoinControlPlane,
    /// `node.go`: a worker.
    JoinWorker,
}

impl Kind {
    /// All three.
    pub const ALL: [Kind; 3] = [Kind::Init, Kind::JoinControlPlane, Kind::JoinWorker];
    /// The fixture's name for it (`init`, `join-control-plane`, `join-worker`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Init => "init",
            Kind::JoinControlPlane => "join-control-plane",
            Kind::JoinWorker => "join-worker",
        }
    }
}

/// A file CABPK writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileShape {
    /// `path`.
    pub path: &'static str,
    /// `owner`.
    pub owner: &'static str,
    /// `permissions` (a quoted string in the document: `'0640'`).
    pub permissions: &'static str,
}

/// One template's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Which.
    pub kind: Kind,
    /// The first two lines.
    pub header: [&'static str; 2],
    /// The files it writes, in no particular order (the user's own files come too).
    pub files: &'static [FileShape],
    /// kubeadm's configuration among them, and the kinds of its documents.
    pub kubeadm_config: (&'static str, &'static [&'static str]),
    /// The kubeadm item of `runcmd` without verbosity (`{v}` stands for `--v=N` or nothing).
    pub kubeadm_command: &'static str,
}

/// The header of every CABPK cloud-config.
pub const HEADER: [&str; 2] = ["## template: jinja", "#cloud-config"];
/// The command CABPK runs after kubeadm succeeded.
pub const SENTINEL_COMMAND: &str = "echo success > /run/cluster-api/bootstrap-success.complete";
/// The keys CABPK writes in a `write_files` entry.
pub const FILE_KEYS: &[&str] = &["path", "encoding", "owner", "permissions", "append", "content"];

const fn f(path: &'static str, permissions: &'static str) -> FileShape {
    FileShape { path, owner: "root:root", permissions }
}

/// The control-plane PKI CABPK writes on init and control-plane join (stacked etcd, its
/// default): certificates 0640, keys 0600.
pub const PKI: [FileShape; 8] = [
    f("/etc/kubernetes/pki/ca.crt", "0640"),
    f("/etc/kubernetes/pki/ca.key", "0600"),
    f("/etc/kubernetes/pki/etcd/ca.crt", "0640"),
    f("/etc/kubernetes/pki/etcd/ca.key", "0600"),
    f("/etc/kubernetes/pki/front-proxy-ca.crt", "0640"),
    f("/etc/kubernetes/pki/front-proxy-ca.key", "0600"),
    f("/etc/kubernetes/pki/sa.pub", "0640"),
    f("/etc/kubernetes/pki/sa.key", "0600"),
];

const PLACEHOLDER: FileShape = f("/run/cluster-api/placeholder", "0640");
const INIT_CONFIG: FileShape = f("/run/kubeadm/kubeadm.yaml", "0640");
const JOIN_CONFIG: FileShape = f("/run/kubeadm/kubeadm-join-config.yaml", "0640");

const INIT_FILES: [FileShape; 10] =
    [PKI[0], PKI[1], PKI[2], PKI[3], PKI[4], PKI[5], PKI[6], PKI[7], INIT_CONFIG, PLACEHOLDER];
const JOIN_CP_FILES: [FileShape; 9] =
    [PKI[0], PKI[1], PKI[2], PKI[3], PKI[4], PKI[5], PKI[6], PKI[7], JOIN_CONFIG];

/// The three shapes.
pub const SHAPES: [Shape; 3] = [
    Shape {
        kind: Kind::Init,
        header: HEADER,
        files: &INIT_FILES,
        kubeadm_config: (INIT_CONFIG.path, &["ClusterConfiguration", "InitConfiguration"]),
        kubeadm_command: "kubeadm init --config /run/kubeadm/kubeadm.yaml {v} && echo success > /run/cluster-api/bootstrap-success.complete",
    },
    Shape {
        kind: Kind::JoinControlPlane,
        header: HEADER,
        files: &JOIN_CP_FILES,
        kubeadm_config: (JOIN_CONFIG.path, &["JoinConfiguration"]),
        kubeadm_command: "kubeadm join --config /run/kubeadm/kubeadm-join-config.yaml {v} && echo success > /run/cluster-api/bootstrap-success.complete",
    },
    Shape {
        kind: Kind::JoinWorker,
        header: HEADER,
        files: &[JOIN_CONFIG, PLACEHOLDER],
        kubeadm_config: (JOIN_CONFIG.path, &["JoinConfiguration"]),
        kubeadm_command: "kubeadm join --config /run/kubeadm/kubeadm-join-config.yaml {v} && echo success > /run/cluster-api/bootstrap-success.complete",
    },
];

/// The shape of `kind`.
pub fn shape(kind: Kind) -> &'static Shape {
    &SHAPES[kind as usize]
}

/// What the document has around CABPK's kubeadm command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parts {
    /// `preKubeadmCommands`, in order.
    pub pre_kubeadm: Vec<String>,
    /// `postKubeadmCommands`, in order.
    pub post_kubeadm: Vec<String>,
}

/// Every way a document differs from the shape, each naming where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not CABPK's {kind} cloud-config: {}", problems.join("; "))]
pub struct ShapeError {
    /// The template's name.
    pub kind: &'static str,
    /// What differs.
    pub problems: Vec<String>,
}

/// Checks `user_data` against the shape of `kind`; the pre- and post-kubeadm commands.
pub fn check(user_data: &str, kind: Kind) -> Result<Parts, ShapeError> {
    let s = shape(kind);
    let mut p = Vec::new();
    let mut lines = user_data.lines();
    for want in s.header {
        let got = lines.next().unwrap_or("");
        if got != want {
            p.push(format!("header: {got:?} where CABPK writes {want:?}"));
        }
    }
    let parts = match serde_yaml::from_str::<Value>(user_data) {
        Ok(doc) => {
            check_files(&doc, s, &mut p);
            check_runcmd(&doc, s, &mut p)
        }
        Err(e) => {
            p.push(format!("not YAML: {e}"));
            Parts::default()
        }
    };
    if p.is_empty() {
        Ok(parts)
    } else {
        Err(ShapeError { kind: kind.name(), problems: p })
    }
}

fn text(v: &Value) -> Option<&str> {
    v.as_str()
}

fn check_files(doc: &Value, s: &Shape, p: &mut Vec<String>) {
    let Some(files) = doc.get("write_files").and_then(Value::as_sequence) else {
        p.push("write_files: missing or not a list".into());
        return;
    };
    for (i, entry) in files.iter().enumerate() {
        let Some(map) = entry.as_mapping() else {
            p.push(format!("write_files[{i}]: not a mapping"));
            continue;
        };
        for k in map.keys() {
            let k = k.as_str().unwrap_or("?");
            if !FILE_KEYS.contains(&k) {
                p.push(format!("write_files[{i}]: key {k:?} is not one CABPK writes"));
            }
        }
    }
    for want in s.files {
        let found = files.iter().find(|e| e.get("path").and_then(text) == Some(want.path));
        let Some(e) = found else {
            p.push(format!("write_files: no {}", want.path));
            continue;
        };
        match e.get("owner").and_then(text) {
            Some(o) if o == want.owner => {}
            o => p.push(format!("{}: owner {o:?}, CABPK writes {:?}", want.path, want.owner)),
        }
        match e.get("permissions") {
            Some(Value::String(m)) if m == want.permissions => {}
            m => p.push(format!(
                "{}: permissions {m:?}, CABPK writes '{}' (quoted)",
                want.path, want.permissions
            )),
        }
        if e.get("content").and_then(text).is_none() {
            p.push(format!("{}: no content", want.path));
        }
    }
    let (path, kinds) = s.kubeadm_config;
    let content = files
        .iter()
        .find(|e| e.get("path").and_then(text) == Some(path))
        .and_then(|e| e.get("content"))
        .and_then(text);
    if let Some(c) = content {
        // stop at the first document that does not parse: serde_yaml's document iterator
        // would yield the same error forever (found by the kubeadm_join_config fuzz target)
        let got: Vec<String> = serde_yaml::Deserializer::from_str(c)
            .map_while(|d| <Value as serde::Deserialize>::deserialize(d).ok())
            .filter_map(|d| d.get("kind").and_then(text).map(str::to_owned))
            .collect();
        for k in kinds {
            if !got.iter().any(|g| g == k) {
                p.push(format!("{path}: no {k} document (kinds: {got:?})"));
            }
        }
    }
}

/// Whether `item` is the shape's kubeadm command, with no or one `--v=N` verbosity.
fn is_kubeadm_command(item: &str, template: &str) -> bool {
    let (head, tail) = template.split_once("{v}").unwrap_or((template, ""));
    let Some(mid) = item.strip_prefix(head).and_then(|r| r.strip_suffix(tail)) else {
        return false;
    };
    mid.is_empty()
        || mid
            .strip_prefix("--v=")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn check_runcmd(doc: &Value, s: &Shape, p: &mut Vec<String>) -> Parts {
    let Some(items) = doc.get("runcmd").and_then(Value::as_sequence) else {
        p.push("runcmd: missing or not a list".into());
        return Parts::default();
    };
    let strings: Vec<Option<&str>> = items.iter().map(text).collect();
    let at: Vec<usize> = strings
        .iter()
        .enumerate()
        .filter(|(_, c)| c.is_some_and(|c| is_kubeadm_command(c, s.kubeadm_command)))
        .map(|(i, _)| i)
        .collect();
    let [at] = at[..] else {
        p.push(format!(
            "runcmd: {} item(s) are CABPK's {:?}, not one",
            at.len(),
            s.kubeadm_command.replace("{v}", "")
        ));
        return Parts::default();
    };
    let list = |r: std::ops::Range<usize>| {
        strings[r].iter().map(|c| c.unwrap_or_default().to_owned()).collect::<Vec<_>>()
    };
    if let Some(i) = strings.iter().position(Option::is_none) {
        p.push(format!("runcmd[{i}]: not a string (CABPK quotes every command)"));
    }
    Parts { pre_kubeadm: list(0..at), post_kubeadm: list(at + 1..strings.len()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kubeadm_command_allows_only_cabpks_verbosity() {
        let t = shape(Kind::JoinWorker).kubeadm_command;
        let plain = t.replace("{v}", "");
        assert!(is_kubeadm_command(&plain, t));
        assert!(plain.contains("yaml  && echo"), "CABPK's double space: {plain}");
        assert!(is_kubeadm_command(&t.replace("{v}", "--v=5"), t));
        for bad in ["--v=", "--v=x", "-v=5", "--ignore-preflight-errors=all"] {
            assert!(!is_kubeadm_command(&t.replace("{v}", bad), t), "{bad}");
        }
        assert!(!is_kubeadm_command(&plain.replace("success", "ok"), t));
        assert_eq!(Kind::ALL.map(|k| shape(k).kind), Kind::ALL);
    }
}
