//! The kube preflight's reading of Cluster API's kubeadm file (`/run/kubeadm/kubeadm-join-config.yaml`,
//! outside input): any text gives a target, none or an error, never a panic; the same text as a
//! `runcmd` line and as a whole cloud-config goes through the kubeadm-command finder and the CABPK
//! shape check.
#![no_main]

use capstan_agent::cloudinit::cabpk::{self, Kind};
use capstan_agent::roles::kube::bootstrap::kubeadm_in_runcmd;
use capstan_agent::roles::kube::preflight::Target;
use capstan_agent::steps::Command;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(Some(t)) = Target::from_join_config(text) {
        let _ = (t.endpoint, t.token, t.ca_cert_hash);
    }
    let lines: Vec<Command> = text.lines().map(|l| Command::Shell(l.to_owned())).collect();
    if let Some((action, config)) = kubeadm_in_runcmd(&lines) {
        assert!(action == "init" || action == "join");
        if let Some(c) = config {
            assert!(text.contains(c.as_str()));
        }
    }
    for kind in Kind::ALL {
        let _ = cabpk::check(text, kind);
    }
});
