//! The `lb` role's [`Role`] implementation: the glue between the agent and the rest of this
//! folder, which holds the role itself (settings, rendering, HAProxy and keepalived, the
//! backend API).

use crate::roles::lb::settings::SettingsError;
use crate::roles::lb::{self, LbPaths, LbSettings};
use crate::schema::{Applies, Kind, Setting, BASE_SETTING};

use crate::roles::{
    ConfigureError, HealthCheck, RenderedFile, Role, RoleId, RoleSettings, RunError, RunFuture,
    RunOptions, Shutdown,
};

/// The appliance profile and the category of the role's settings.
const PROFILE: &str = "lb";
const CATEGORY: &str = "Load balancer";

/// The `lb` role.
#[derive(Debug, Clone, Copy)]
pub struct LbRole;

/// Label and type of each `lb.*` key. The keys, defaults, secrecy and help come from
/// `lb::settings::KEYS` (the role owns them); this adds what the OVF wizard needs.
fn kind_and_label(key: &str) -> (Kind, &'static str) {
    match key {
        "lb.vip" => (Kind::RoleText, "Virtual IP (CIDR)"),
        "lb.interface" => (Kind::IfName, "VIP interface"),
        "lb.port" => (Kind::Int { min: 1, max: 65535 }, "Frontend port"),
        "lb.backends" => (Kind::RoleText, "Backends"),
        "lb.health" => (Kind::RoleText, "Health check"),
        "lb.health-interval" => (Kind::RoleText, "Health check interval"),
        "lb.health-rise" => (Kind::Int { min: 1, max: 100 }, "Health checks to rise"),
        "lb.health-fall" => (Kind::Int { min: 1, max: 100 }, "Health checks to fall"),
        "lb.vrrp.router-id" => (Kind::Int { min: 1, max: 255 }, "VRRP router id"),
        "lb.vrrp.priority" => (Kind::Int { min: 1, max: 254 }, "VRRP priority"),
        "lb.vrrp.peers" => (Kind::RoleText, "VRRP unicast peers"),
        "lb.vrrp.secret" => (Kind::Text { min_len: 0, max_len: 8 }, "VRRP secret"),
        "lb.api.listen" => (Kind::RoleText, "API listen address"),
        "lb.api.token" => (Kind::RoleText, "API bearer token"),
        "lb.api.client-ca" => (Kind::RoleText, "API client CA file"),
        "lb.api.cert" => (Kind::RoleText, "API certificate file"),
        "lb.api.key" => (Kind::RoleText, "API key file"),
        "lb.metrics.listen" => (Kind::RoleText, "Metrics listen address"),
        _ => (Kind::RoleText, "Load balancer setting"),
    }
}

fn settings_of(s: &RoleSettings) -> Option<&LbSettings> {
    s.get::<LbSettings>()
}

impl Role for LbRole {
    fn id(&self) -> RoleId {
        RoleId::Lb
    }

    fn profile(&self) -> Option<&'static str> {
        Some(PROFILE)
    }

    fn settings(&self) -> Vec<Setting> {
        lb::settings::KEYS
            .iter()
            .map(|spec| {
                let (kind, label) = kind_and_label(spec.key);
                Setting {
                    path: spec.key,
                    kind,
                    label,
                    description: spec.help,
                    default: spec.default.filter(|d| !d.is_empty()),
                    category: CATEGORY,
                    secret: spec.secret,
                    applies: Applies::Profiles(&[PROFILE]),
                    // Paths to files inside the appliance are for the override file, not the
                    // wizard.
                    user_configurable: !matches!(
                        spec.key,
                        "lb.api.client-ca" | "lb.api.cert" | "lb.api.key"
                    ),
                    ..BASE_SETTING
                }
            })
            .collect()
    }

    fn configure<'a>(
        &self,
        get: &dyn Fn(&str) -> Option<&'a str>,
    ) -> Result<RoleSettings, ConfigureError> {
        match LbSettings::from_flat(|k| get(k)) {
            Ok(s) => Ok(RoleSettings::new(s)),
            // Not set yet (the VIP and credentials come at deploy time).
            Err(e @ (SettingsError::Missing { .. } | SettingsError::Conflict { .. })) => {
                Err(ConfigureError::Unconfigured { role: RoleId::Lb, why: e.to_string() })
            }
            Err(e) => {
                let key = match &e {
                    SettingsError::Invalid { key, .. } => (*key).to_owned(),
                    _ => PROFILE.to_owned(),
                };
                Err(ConfigureError::Invalid { key, reason: e.to_string() })
            }
        }
    }

    fn render(&self, settings: &RoleSettings) -> Vec<RenderedFile> {
        let Some(s) = settings_of(settings) else {
            return Vec::new();
        };
        lb::render(s)
            .into_iter()
            .map(|f| RenderedFile { path: f.path, contents: f.contents, mode: f.mode })
            .collect()
    }

    fn run(&self, settings: RoleSettings, opts: RunOptions, shutdown: Shutdown) -> RunFuture {
        let role_opts = lb::RoleOptions {
            paths: LbPaths::appliance(),
            tools: lb::Tools::default(),
            processes: lb::Processes::Systemd,
            node_label: opts.node_label,
        };
        Box::pin(async move {
            let Some(s) = settings_of(&settings).cloned() else {
                return Ok(());
            };
            lb::run_role(s, role_opts, shutdown)
                .await
                .map_err(|e| RunError { role: RoleId::Lb, source: Box::new(e) })
        })
    }

    fn health(&self, settings: &RoleSettings) -> Option<serde_json::Value> {
        let s = settings_of(settings)?;
        serde_json::to_value(lb::status(s, &LbPaths::appliance())).ok()
    }

    fn checks(&self, settings: &RoleSettings) -> Vec<HealthCheck> {
        settings_of(settings)
            .map(|s| checks_of(&lb::status(s, &LbPaths::appliance())))
            .unwrap_or_default()
    }

    /// - `CAP_NET_ADMIN`: keepalived's VIP;
    /// - `CAP_NET_RAW`: keepalived's VRRP socket when it runs as our child;
    /// - `CAP_NET_BIND_SERVICE`: HAProxy's frontend and the backend API on ports below 1024 if
    ///   configured so;
    /// - `CAP_KILL`: signalling HAProxy and keepalived (reload, stop).
    fn capabilities(&self) -> &'static [caps::Capability] {
        &[
            caps::Capability::CAP_NET_ADMIN,
            caps::Capability::CAP_NET_RAW,
            caps::Capability::CAP_NET_BIND_SERVICE,
            caps::Capability::CAP_KILL,
        ]
    }
}

/// The heartbeat checks of a status: HAProxy up; VRRP in a steady state (MASTER holding the
/// VIP, or BACKUP); at least one ready backend UP (or none configured: nothing to serve).
fn checks_of(st: &lb::LbStatus) -> Vec<HealthCheck> {
    use lb::VrrpState::*;
    let haproxy = HealthCheck {
        name: "haproxy",
        ok: st.haproxy_running,
        detail: if st.haproxy_running { "running" } else { "not running" }.into(),
    };
    let (ok, detail) = match (st.vrrp, st.holds_vip) {
        (Master, true) => (true, "MASTER, holds the VIP".to_owned()),
        (Master, false) => (false, "MASTER but the VIP is not here".to_owned()),
        (Backup, _) => (true, "BACKUP".to_owned()),
        (Fault, _) => (false, "FAULT".to_owned()),
        (Stopped, _) => (false, "keepalived not running".to_owned()),
        (Starting, _) => (false, "keepalived has not reported a state yet".to_owned()),
    };
    let vrrp = HealthCheck { name: "vrrp", ok, detail };
    let ready: Vec<_> = st.backends.iter().filter(|b| b.state == "ready").collect();
    let up = ready.iter().filter(|b| b.health.as_deref() == Some("UP")).count();
    let mut detail = format!("{up}/{} ready backends up", ready.len());
    let down: Vec<&str> = ready
        .iter()
        .filter(|b| b.health.as_deref() != Some("UP"))
        .map(|b| b.address.as_str())
        .take(4)
        .collect();
    if !down.is_empty() {
        detail.push_str(&format!("; not up: {}", down.join(", ")));
    }
    let backends = HealthCheck { name: "backends", ok: ready.is_empty() || up > 0, detail };
    vec![haproxy, vrrp, backends]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{Config, Flat, Source};

    fn flat(pairs: &[(&str, &str)]) -> Flat {
        crate::schema::flat_from(Source::Defaults, pairs)
    }

    #[test]
    fn the_schema_builds_lb_settings_through_the_registry_or_names_the_key() {
        let c = Config::from_flat(&flat(&[("role", "lb")]), false);
        assert!(c.role_settings.is_none());
        assert!(c.errors.is_empty(), "{:?}", c.errors);
        assert!(c.role_unconfigured.as_deref().unwrap().contains("lb.vip"));
        let c = Config::from_flat(&flat(&[("role", "lb"), ("lb.vip", "10.0.0.1/99")]), false);
        assert!(c.errors.iter().any(|e| e.path == "lb.vip"), "{:?}", c.errors);
        let c = Config::from_flat(
            &flat(&[
                ("role", "lb"),
                ("lb.vip", "10.0.0.100/24"),
                ("lb.vrrp.secret", "s3cret"),
                ("lb.api.token", "0123456789abcdef0123"),
            ]),
            false,
        );
        assert!(c.errors.is_empty(), "{:?}", c.errors);
        assert!(c.role_settings.is_some());
    }

    #[test]
    fn checks_say_what_is_wrong() {
        let b = |address: &str, state, health: Option<&str>| lb::BackendStatus {
            address: address.into(),
            state,
            health: health.map(str::to_owned),
            check: None,
        };
        let mut st = lb::LbStatus {
            vrrp: lb::VrrpState::Master,
            holds_vip: true,
            haproxy_running: true,
            backends: vec![
                b("10.0.0.11:6443", "ready", Some("UP")),
                b("10.0.0.12:6443", "ready", Some("DOWN")),
            ],
            errors: vec![],
        };
        let c = checks_of(&st);
        assert_eq!(
            c.iter().map(|c| (c.name, c.ok)).collect::<Vec<_>>(),
            [("haproxy", true), ("vrrp", true), ("backends", true)]
        );
        assert_eq!(c[2].detail, "1/2 ready backends up; not up: 10.0.0.12:6443");
        st.holds_vip = false;
        st.haproxy_running = false;
        st.backends =
            vec![b("10.0.0.11:6443", "ready", None), b("10.0.0.13:6443", "drain", Some("UP"))];
        let c = checks_of(&st);
        assert!(c.iter().all(|c| !c.ok), "{c:?}");
        assert_eq!(c[1].detail, "MASTER but the VIP is not here");
        st.backends.clear();
        assert!(checks_of(&st)[2].ok, "no backends: nothing to serve, nothing wrong");
    }

    /// A new user's mistake: a VRRP secret of 13 characters. The error names the rule (the
    /// length and the limit) and the role then reports which key is missing; the value never
    /// appears.
    #[test]
    fn a_too_long_secret_names_the_rule_not_the_value() {
        let secret = "0123456789abc";
        let c = Config::from_flat(
            &flat(&[
                ("role", "lb"),
                ("lb.vip", "10.0.0.100/24"),
                ("lb.vrrp.secret", secret),
                ("lb.api.token", "0123456789abcdef0123"),
            ]),
            false,
        );
        let e = c.errors.iter().find(|e| e.path == "lb.vrrp.secret").expect("refused");
        assert!(e.reason.contains("length 13 is outside 0-8"), "{}", e.reason);
        assert!(e.reason.contains("secret, not shown"), "{}", e.reason);
        assert!(!format!("{c:?}").contains(secret), "the secret leaked: {c:?}");
        assert!(c.role_unconfigured.as_deref().unwrap().contains("lb.vrrp.secret"));
    }

    #[test]
    fn configure_builds_settings_or_names_the_key() {
        let r = LbRole;
        let none = |_: &str| -> Option<&'static str> { None };
        let e = r.configure(&none).unwrap_err();
        assert!(
            matches!(&e, ConfigureError::Unconfigured { role: RoleId::Lb, why } if why.contains("lb.vip")),
            "{e:?}"
        );
        let bad = |k: &str| -> Option<&'static str> { (k == "lb.vip").then_some("10.0.0.1/99") };
        let e = r.configure(&bad).unwrap_err();
        assert!(matches!(&e, ConfigureError::Invalid { key, .. } if key == "lb.vip"), "{e:?}");
        let good = |k: &str| -> Option<&'static str> {
            match k {
                "lb.vip" => Some("10.0.0.100/24"),
                "lb.vrrp.secret" => Some("s3cret"),
                "lb.api.token" => Some("0123456789abcdef0123"),
                _ => None,
            }
        };
        let s = r.configure(&good).unwrap();
        assert!(s.get::<LbSettings>().is_some());
        assert!(r.render(&s).iter().any(|f| f.path.ends_with("haproxy.cfg")));
    }

    #[test]
    fn every_lb_key_is_a_setting_of_the_lb_profile() {
        let settings = LbRole.settings();
        assert_eq!(settings.len(), lb::settings::KEYS.len());
        for s in &settings {
            assert!(s.path.starts_with("lb."), "{}", s.path);
            assert!(s.applies.includes(PROFILE) && !s.applies.includes("node"), "{}", s.path);
        }
    }
}
