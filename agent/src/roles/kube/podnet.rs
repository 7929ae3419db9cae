//! After `kubeadm init|join` on a live node: the node's pod network and its readiness.
//!
//! kubeadm's controller-manager (`--allocate-node-cidrs`, from `networking.podSubnet`) gives
//! each Node a `spec.podCIDR`; the agent waits for it, writes the CNI conflist for that range
//! ([`super::cni::Conflist`], where containerd's CRI plugin watches), and then waits until the
//! kubelet reports the node `Ready` (which it cannot before a CNI configuration exists). Both
//! reads go through the node's own credentials (`/etc/kubernetes/kubelet.conf`, which the
//! Node authorizer lets read its own Node object) with the carried kubectl.

use std::path::{Path, PathBuf};
use std::process::{Command as Proc, Stdio};
use std::time::{Duration, Instant};

use crate::types::IpCidr;

/// The carried kubectl.
pub const KUBECTL: &str = "/usr/bin/kubectl";
/// The kubelet's kubeconfig kubeadm writes (init and join alike).
pub const KUBELET_CONF: &str = "/etc/kubernetes/kubelet.conf";
/// How long the controller-manager may take to give the node its pod CIDR (under TCG it is
/// still starting when kubeadm init returns).
pub const POD_CIDR_WAIT: Duration = Duration::from_secs(240);
/// How long the kubelet may take to report `Ready` once the conflist is there.
pub const READY_WAIT: Duration = Duration::from_secs(240);
/// Between two reads.
const POLL: Duration = Duration::from_secs(5);
/// The largest Node object read (a Node is a few KiB; images lists make it grow).
const MAX_NODE_JSON: usize = 4 << 20;

/// What the agent reads of a Node object.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeState {
    /// `spec.podCIDR`, checked (an IPv4 or IPv6 network); `None` until allocated.
    pub pod_cidr: Option<IpCidr>,
    /// The `Ready` condition: `(status, reason, message)`; `None` until the kubelet posts one.
    pub ready: Option<(String, String, String)>,
}

impl NodeState {
    /// Whether the `Ready` condition is `True`.
    pub fn is_ready(&self) -> bool {
        self.ready.as_ref().is_some_and(|(s, _, _)| s == "True")
    }
}

/// Parses `kubectl get node NAME -o json`: hostile or odd output gives an error naming the
/// field, never a panic.
pub fn parse_node(json: &str) -> Result<NodeState, String> {
    if json.len() > MAX_NODE_JSON {
        return Err(format!("Node object of {} bytes, more than {MAX_NODE_JSON}", json.len()));
    }
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("Node object is not JSON: {e}"))?;
    if v.get("kind").and_then(|k| k.as_str()) != Some("Node") {
        return Err("not a Node object (kind)".into());
    }
    let pod_cidr = match v.pointer("/spec/podCIDR") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) if s.is_empty() => None,
        Some(serde_json::Value::String(s)) => {
            let c: IpCidr = s.parse().map_err(|e| format!("spec.podCIDR {s:?}: {e}"))?;
            if c.network() != c {
                return Err(format!("spec.podCIDR {s:?}: host bits set"));
            }
            Some(c)
        }
        Some(other) => return Err(format!("spec.podCIDR is not a string: {other}")),
    };
    let text = |c: &serde_json::Value, k: &str| {
        c.get(k).and_then(|x| x.as_str()).unwrap_or_default().to_owned()
    };
    let ready = match v.pointer("/status/conditions") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Array(cs)) => cs
            .iter()
            .find(|c| c.get("type").and_then(|t| t.as_str()) == Some("Ready"))
            .map(|c| (text(c, "status"), text(c, "reason"), text(c, "message"))),
        Some(_) => return Err("status.conditions is not a list".into()),
    };
    Ok(NodeState { pod_cidr, ready })
}

/// The carried kubectl with the node's credentials, under `root` (`/` on a node).
#[derive(Debug, Clone)]
pub struct Kubectl {
    bin: PathBuf,
    kubeconfig: PathBuf,
}

impl Kubectl {
    /// `ROOT/usr/bin/kubectl --kubeconfig ROOT/etc/kubernetes/kubelet.conf`.
    pub fn for_node(root: &Path) -> Kubectl {
        Kubectl {
            bin: root.join(KUBECTL.trim_start_matches('/')),
            kubeconfig: root.join(KUBELET_CONF.trim_start_matches('/')),
        }
    }

    /// One read of the Node object `name`.
    pub fn node(&self, name: &str) -> Result<NodeState, String> {
        let o = Proc::new(&self.bin)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["--request-timeout=20s", "get", "node", name, "-o", "json"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("could not start {}: {e}", self.bin.display()))?;
        if !o.status.success() {
            let err = String::from_utf8_lossy(&o.stderr);
            return Err(format!("kubectl get node {name}: {} ({})", err.trim(), o.status));
        }
        parse_node(&String::from_utf8_lossy(&o.stdout))
    }

    /// Reads the Node until `done` says what it waited for, or `bound` passes; the error
    /// says what the last read saw.
    pub fn wait_for<T>(
        &self,
        name: &str,
        bound: Duration,
        mut done: impl FnMut(&NodeState) -> Option<T>,
    ) -> Result<T, String> {
        let t = Instant::now();
        loop {
            let last = match self.node(name) {
                Ok(n) => match done(&n) {
                    Some(v) => return Ok(v),
                    None => format!("{n:?}"),
                },
                Err(e) => e,
            };
            if t.elapsed() >= bound {
                return Err(format!("not after {} s; last read: {last}", bound.as_secs()));
            }
            std::thread::sleep(POLL);
        }
    }
}

/// The node's name as the kubelet registers it: kubeadm's `nodeRegistration.name` (the host
/// name the agent set), else the kernel's host name, lower-cased as kubelet does.
pub fn node_name(configured: Option<&str>) -> String {
    match configured {
        Some(n) => n.to_owned(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: &str = r#"{"kind":"Node","apiVersion":"v1","metadata":{"name":"cp1"},
      "spec":{"podCIDR":"10.244.0.0/24","podCIDRs":["10.244.0.0/24"]},
      "status":{"conditions":[
        {"type":"MemoryPressure","status":"False","reason":"KubeletHasSufficientMemory"},
        {"type":"Ready","status":"False","reason":"KubeletNotReady",
         "message":"runtime network not ready: cni config uninitialized"}]}}"#;

    #[test]
    fn a_node_object_gives_its_pod_cidr_and_ready_condition() {
        let n = parse_node(NODE).unwrap();
        assert_eq!(n.pod_cidr, Some("10.244.0.0/24".parse().unwrap()));
        let (status, reason, message) = n.ready.clone().unwrap();
        assert_eq!((status.as_str(), reason.as_str()), ("False", "KubeletNotReady"));
        assert!(message.contains("cni config uninitialized"));
        assert!(!n.is_ready());
        let ready = NODE.replace(
            r#""status":"False","reason":"KubeletNotReady""#,
            r#""status":"True","reason":"KubeletReady""#,
        );
        assert!(parse_node(&ready).unwrap().is_ready());
        // not allocated yet, no conditions yet
        let fresh = r#"{"kind":"Node","spec":{},"status":{}}"#;
        assert_eq!(parse_node(fresh).unwrap(), NodeState::default());
        let empty = r#"{"kind":"Node","spec":{"podCIDR":""},"status":{"conditions":null}}"#;
        assert_eq!(parse_node(empty).unwrap(), NodeState::default());
    }

    #[test]
    fn hostile_node_objects_are_refused_naming_the_field() {
        let cases = [
            ("", "not JSON"),
            ("[]", "kind"),
            (r#"{"kind":"Pod"}"#, "kind"),
            (r#"{"kind":"Node","spec":{"podCIDR":"10.244.0.1/24"}}"#, "host bits"),
            (r#"{"kind":"Node","spec":{"podCIDR":"10.244.0.0/33"}}"#, "spec.podCIDR"),
            (r#"{"kind":"Node","spec":{"podCIDR":"; rm -rf /"}}"#, "spec.podCIDR"),
            (r#"{"kind":"Node","spec":{"podCIDR":24}}"#, "not a string"),
            (r#"{"kind":"Node","status":{"conditions":{"type":"Ready"}}}"#, "not a list"),
        ];
        for (json, want) in cases {
            let e = parse_node(json).unwrap_err();
            assert!(e.contains(want), "{json}: {e}");
        }
        let huge = format!(r#"{{"kind":"Node","x":"{}"}}"#, "a".repeat(MAX_NODE_JSON));
        assert!(parse_node(&huge).unwrap_err().contains("bytes"));
        // a condition without fields reads as empty strings, not a panic
        let odd = r#"{"kind":"Node","status":{"conditions":[{"type":"Ready","status":7}]}}"#;
        assert_eq!(
            parse_node(odd).unwrap().ready,
            Some((String::new(), String::new(), String::new()))
        );
    }

    #[test]
    fn a_missing_kubectl_is_an_error_naming_it() {
        let d = tempfile::tempdir().unwrap();
        let k = Kubectl::for_node(d.path());
        let e = k.node("cp1").unwrap_err();
        assert!(e.contains("usr/bin/kubectl"), "{e}");
        let e = k.wait_for("cp1", Duration::ZERO, |_| Some(())).unwrap_err();
        assert!(e.contains("not after 0 s") && e.contains("kubectl"), "{e}");
    }
}
