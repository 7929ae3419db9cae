//! `haproxy.cfg`, rendered from typed structs.
//!
//! The backend has one fixed block of server *slots* (`s1` … `sN`, N = [`SLOTS`]). A slot holds
//! one backend or is empty (`disabled`); the backend API changes slots at run time through the
//! runtime socket (`set server … addr … port …`, `set server … state ready|drain|maint`), so a
//! backend change never reloads HAProxy.
//!
//! Why explicit `server sK` lines and not `server-template`: a template gives every slot the same
//! placeholder address, so after a (re)start or a reload HAProxy would serve with zero backends
//! until the agent had replayed the set over the socket. Rendering the desired set into the slots
//! keeps the file on disk equal to the running state (the agent rewrites it, without a reload,
//! after each change), so a restart by systemd, a crash or a hitless reload starts with the right
//! backends. The slot lines are exactly what `server-template s 1-N` would create.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use super::settings::{Backend, HealthCheck, HealthKind, MAX_BACKENDS};

/// Number of server slots in the backend.
pub const SLOTS: usize = MAX_BACKENDS;

/// Name of the HAProxy backend (the runtime API addresses servers as `control_plane/sK`).
pub const BACKEND_NAME: &str = "control_plane";

/// What one slot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// No backend: the server is in maintenance.
    Empty,
    /// A backend in rotation, or draining (weight 0: no new connections, existing ones stay).
    Backend {
        /// The backend.
        backend: Backend,
        /// Draining.
        drain: bool,
    },
}

/// The whole HAProxy configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaproxyConfig {
    /// Runtime API socket (admin level, also passes listeners for hitless reloads).
    pub admin_socket: PathBuf,
    /// User and group the workers drop to (the master stays root to bind and reload).
    pub run_as: Option<String>,
    /// The control-plane frontend (VIP:port). Bound `transparent` so the standby can bind it
    /// before it holds the VIP.
    pub frontend: SocketAddr,
    /// Health (`/healthz`) and Prometheus (`/metrics`) listener.
    pub metrics: SocketAddr,
    /// Backend health check.
    pub health: HealthCheck,
    /// The slots, exactly [`SLOTS`] of them.
    pub slots: Vec<Slot>,
}

/// The server name of slot index `i` (0-based).
pub fn slot_name(i: usize) -> String {
    format!("s{}", i + 1)
}

fn addr(a: &SocketAddr) -> String {
    // IPv6 in brackets (`[fd00::1]:6443`): HAProxy accepts it and it cannot be misread.
    a.to_string()
}

impl HaproxyConfig {
    /// Renders the file.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let h = &self.health;
        let inter = h.interval.as_millis();
        // `writeln!` into a String cannot fail.
        let _ =
            writeln!(o, "# Rendered by capstan-agent (lb role). Backend slots change at run time");
        let _ = writeln!(o, "# through the runtime API; the agent rewrites this file to match.");
        o.push_str("global\n");
        o.push_str("    master-worker\n");
        o.push_str("    log stderr format raw daemon notice\n");
        let _ = writeln!(
            o,
            "    stats socket {} mode 600 level admin expose-fd listeners",
            self.admin_socket.display()
        );
        o.push_str("    stats timeout 30s\n");
        o.push_str("    maxconn 8000\n");
        if let Some(u) = &self.run_as {
            let _ = writeln!(o, "    user {u}");
            let _ = writeln!(o, "    group {u}");
        }
        o.push('\n');
        o.push_str("defaults\n");
        o.push_str("    mode tcp\n");
        o.push_str("    log global\n");
        o.push_str("    option dontlognull\n");
        o.push_str("    timeout connect 3s\n");
        // Long client/server timeouts: kubectl watches and exec sessions hold connections open.
        o.push_str("    timeout client 1h\n");
        o.push_str("    timeout server 1h\n");
        o.push_str("    timeout tunnel 1h\n");
        let _ = writeln!(o, "    timeout check {}ms", inter.min(2000));
        // A connection refused by a backend that just left is retried on another one.
        o.push_str("    retries 3\n");
        o.push_str("    option redispatch 1\n");
        o.push('\n');
        o.push_str("frontend control_plane\n");
        let _ = writeln!(o, "    bind {} transparent", addr(&self.frontend));
        o.push_str("    option tcplog\n");
        let _ = writeln!(o, "    default_backend {BACKEND_NAME}");
        o.push('\n');
        let _ = writeln!(o, "backend {BACKEND_NAME}");
        o.push_str("    balance roundrobin\n");
        let check = match &h.kind {
            HealthKind::Https { path } => {
                let _ = writeln!(o, "    option httpchk GET {path}");
                o.push_str("    http-check expect status 200\n");
                "check check-ssl verify none"
            }
            HealthKind::Http { path } => {
                let _ = writeln!(o, "    option httpchk GET {path}");
                o.push_str("    http-check expect status 200\n");
                "check"
            }
            HealthKind::Tcp => "check",
        };
        let _ = writeln!(
            o,
            "    default-server {check} inter {inter}ms rise {} fall {} weight 1",
            h.rise, h.fall
        );
        for (i, slot) in self.slots.iter().enumerate() {
            let name = slot_name(i);
            match slot {
                Slot::Empty => {
                    let _ =
                        writeln!(o, "    server {name} 0.0.0.0:{} disabled", self.frontend.port());
                }
                Slot::Backend { backend, drain: false } => {
                    let _ = writeln!(o, "    server {name} {}", addr(&backend.addr()));
                }
                Slot::Backend { backend, drain: true } => {
                    let _ = writeln!(o, "    server {name} {} weight 0", addr(&backend.addr()));
                }
            }
        }
        o.push('\n');
        o.push_str("frontend health\n");
        o.push_str("    mode http\n");
        let _ = writeln!(o, "    bind {}", addr(&self.metrics));
        o.push_str("    timeout client 10s\n");
        o.push_str("    monitor-uri /healthz\n");
        o.push_str("    http-request use-service prometheus-exporter if { path /metrics }\n");
        o.push_str("    http-request deny\n");
        o
    }
}

/// Whether going from the rendered file `old` to `new` needs a reload: true unless they differ
/// only in their server slot lines, which the runtime API changes in place.
pub fn needs_reload(old: &str, new: &str) -> bool {
    fn structure(s: &str) -> impl Iterator<Item = &str> {
        s.lines().filter(|l| !l.trim_start().starts_with("server s"))
    }
    !structure(old).eq(structure(new))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::roles::lb::settings::HealthCheck;

    fn cfg(slots: Vec<Slot>, health: HealthCheck) -> HaproxyConfig {
        let mut all = slots;
        all.resize(SLOTS, Slot::Empty);
        HaproxyConfig {
            admin_socket: "/run/haproxy/admin.sock".into(),
            run_as: Some("haproxy".into()),
            frontend: "10.0.0.100:6443".parse().unwrap(),
            metrics: "0.0.0.0:8404".parse().unwrap(),
            health,
            slots: all,
        }
    }

    #[test]
    fn slot_changes_need_no_reload_structure_changes_do() {
        let b = |s: &str| Slot::Backend { backend: s.parse().unwrap(), drain: false };
        let a = cfg(vec![b("10.0.0.1:6443")], HealthCheck::default()).render();
        let c = cfg(vec![b("10.0.0.2:6443"), b("10.0.0.3:6443")], HealthCheck::default()).render();
        assert!(!needs_reload(&a, &c));
        let h = HealthCheck { rise: 5, ..HealthCheck::default() };
        let d = cfg(vec![b("10.0.0.1:6443")], h).render();
        assert!(needs_reload(&a, &d));
        assert!(needs_reload(&a, ""));
    }

    #[test]
    fn every_slot_is_rendered_once() {
        let text = cfg(vec![], HealthCheck::default()).render();
        for i in 0..SLOTS {
            assert_eq!(text.matches(&format!("    server {} ", slot_name(i))).count(), 1);
        }
    }
}
