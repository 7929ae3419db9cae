//! `keepalived.conf`, rendered from typed structs.
//!
//! One VRRP instance holds the VIP. Both peers start as `BACKUP` with `nopreempt`: the first to
//! time out the master (the higher priority, whose skew time is shorter) takes the VIP, and a
//! node that comes back (reboot, HAProxy restarted) rejoins as backup instead of taking the VIP
//! back — one move per failure, never a flap.
//!
//! The VIP follows HAProxy's health two ways:
//! - a `vrrp_track_file` the agent writes (`0` healthy, `1` failed): the agent sees its HAProxy
//!   exit at once, keepalived reads the file through inotify, so the node goes to FAULT and
//!   releases the VIP (sending a priority-0 advert, which makes the peer take over at once);
//! - a `vrrp_script` that checks HAProxy's master pid every second (shell builtins only), for when the agent itself is
//!   down.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use super::settings::{Priority, RouterId, Vip, VrrpSecret};
use crate::types::NicName;

/// The whole keepalived configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeepalivedConfig {
    /// `router_id` in `global_defs` (a label in logs).
    pub node_label: String,
    /// Interface for VRRP and the VIP.
    pub interface: NicName,
    /// The VIP.
    pub vip: Vip,
    /// Virtual router id.
    pub router_id: RouterId,
    /// This node's priority.
    pub priority: Priority,
    /// Unicast peers; empty means multicast.
    pub peers: Vec<Ipv4Addr>,
    /// VRRPv2 PASS secret (8 bytes at most).
    pub secret: VrrpSecret,
    /// File the agent writes with HAProxy's state (`0` healthy).
    pub track_file: PathBuf,
    /// File keepalived's notify scripts write the instance state to (`MASTER`, `BACKUP`,
    /// `FAULT`, `STOP`), read by `status`.
    pub state_file: PathBuf,
    /// HAProxy master pid file, checked by the script.
    pub haproxy_pidfile: PathBuf,
}

/// Name of the VRRP instance.
pub const INSTANCE: &str = "capstan_vip";

impl KeepalivedConfig {
    /// Renders the file. It holds the VRRP secret: install it with mode 0600.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "# Rendered by capstan-agent (lb role).");
        o.push_str("global_defs {\n");
        let _ = writeln!(o, "    router_id {}", self.node_label);
        o.push_str("    script_user root\n");
        o.push_str("    enable_script_security\n");
        // The interface may appear after keepalived starts (boot order, renamed NICs); this
        // also lets `keepalived -t` check a file rendered on another host.
        o.push_str("    dynamic_interfaces\n");
        // Announce the VIP at once and again after 5 s (switches that missed the first GARP).
        o.push_str("    vrrp_garp_master_delay 5\n");
        o.push_str("    vrrp_garp_master_repeat 3\n");
        o.push_str("}\n\n");
        o.push_str("vrrp_track_file haproxy_state {\n");
        let _ = writeln!(o, "    file {}", self.track_file.display());
        // weight 0: any non-zero value puts the instance in FAULT.
        o.push_str("    weight 0\n");
        o.push_str("    init_file 1\n");
        o.push_str("}\n\n");
        o.push_str("vrrp_script haproxy_alive {\n");
        // Shell builtins only (read, kill): nothing beyond the base system is needed.
        let _ = writeln!(
            o,
            "    script \"/bin/sh -c 'read pid < {} && kill -0 $pid'\"",
            self.haproxy_pidfile.display()
        );
        o.push_str("    interval 1\n");
        o.push_str("    timeout 1\n");
        o.push_str("    fall 2\n");
        o.push_str("    rise 1\n");
        o.push_str("}\n\n");
        let _ = writeln!(o, "vrrp_instance {INSTANCE} {{");
        o.push_str("    state BACKUP\n");
        o.push_str("    nopreempt\n");
        let _ = writeln!(o, "    interface {}", self.interface);
        let _ = writeln!(o, "    virtual_router_id {}", self.router_id.0);
        let _ = writeln!(o, "    priority {}", self.priority.0);
        o.push_str("    advert_int 1\n");
        if !self.peers.is_empty() {
            o.push_str("    unicast_peer {\n");
            for p in &self.peers {
                let _ = writeln!(o, "        {p}");
            }
            o.push_str("    }\n");
        }
        o.push_str("    authentication {\n");
        o.push_str("        auth_type PASS\n");
        let _ = writeln!(o, "        auth_pass {}", self.secret.expose());
        o.push_str("    }\n");
        o.push_str("    virtual_ipaddress {\n");
        let _ = writeln!(o, "        {} dev {}", self.vip, self.interface);
        o.push_str("    }\n");
        // Record each transition for `capstan-agent status` (and the tests).
        for (hook, state) in [
            ("notify_master", "MASTER"),
            ("notify_backup", "BACKUP"),
            ("notify_fault", "FAULT"),
            ("notify_stop", "STOP"),
        ] {
            let _ = writeln!(
                o,
                "    {hook} \"/bin/sh -c 'echo {state} > {}'\"",
                self.state_file.display()
            );
        }
        o.push_str("    track_file {\n");
        o.push_str("        haproxy_state\n");
        o.push_str("    }\n");
        o.push_str("    track_script {\n");
        o.push_str("        haproxy_alive\n");
        o.push_str("    }\n");
        o.push_str("}\n");
        o
    }
}
