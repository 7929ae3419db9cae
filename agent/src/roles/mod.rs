//! Node roles: what a node runs beyond first boot (`lb`, and the Kubernetes roles
//! `control-plane` and `worker`). Each role is one [`Role`] implementation in its own folder, registered in [`all`];
//! nothing outside `roles/` names a role.
//!
//! A role contributes, through its trait:
//! - its settings: the schema rows it owns ([`Role::settings`]) and their typed form
//!   ([`Role::configure`], kept in [`crate::schema::Config::role_settings`]);
//! - the files it renders for `capstan-agent render` ([`Role::render`]);
//! - steps it adds to first boot ([`Role::steps`]);
//! - what `capstan-agent run` starts ([`Role::run`]) and the capabilities that needs
//!   ([`Role::capabilities`]);
//! - its live health for `capstan-agent status` ([`Role::health`]) and, as named pass/fail
//!   checks, for heartbeats ([`Role::checks`]).
//!
//! Import rule: roles never import `cli`, `daemon`, `boot` or `sources`; they get their
//! settings from the schema and do their effects through `root`, `steps` and their own seams.

pub mod kube;
pub mod lb;

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::schema::Setting;
use crate::steps::{Plan, Step};

/// The role a node is told to take (`role`), as `status` records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RoleId {
    /// Nothing beyond first boot.
    #[default]
    None,
    /// HA control-plane load balancer ([`lb`]).
    Lb,
    /// Kubernetes control plane ([`kube`]).
    ControlPlane,
    /// Kubernetes worker ([`kube`]).
    Worker,
}

impl RoleId {
    /// Every role, in the schema's order.
    pub const ALL: [RoleId; 4] = [RoleId::None, RoleId::Lb, RoleId::ControlPlane, RoleId::Worker];
    /// Their names, as the `role` setting accepts them.
    pub const NAMES: &'static [&'static str] = &["none", "lb", "control-plane", "worker"];

    /// The name (`none`, `lb`, ...).
    pub fn as_str(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    /// The role named `s`; `None` for an unknown name.
    pub fn parse(s: &str) -> Option<RoleId> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for RoleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role's typed settings, as its [`Role::configure`] built them; the role downcasts them.
#[derive(Clone)]
pub struct RoleSettings(Arc<dyn Any + Send + Sync>);

impl RoleSettings {
    /// Wraps a role's settings.
    pub fn new<T: Any + Send + Sync>(t: T) -> Self {
        RoleSettings(Arc::new(t))
    }
    /// The settings as `T`, when they are.
    pub fn get<T: Any>(&self) -> Option<&T> {
        self.0.downcast_ref()
    }
    /// The settings as the role's first-boot steps get them ([`crate::steps::Ctx::role`]).
    pub fn as_step_data(&self) -> crate::steps::RoleData<'_> {
        crate::steps::RoleData(&*self.0)
    }
}

impl fmt::Debug for RoleSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // may hold secrets: never printed
        f.write_str("RoleSettings(..)")
    }
}

/// Why a role's settings could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigureError {
    /// A required key is unset (set at deploy time): the role is not started, which is not
    /// an error in the values themselves.
    #[error("role {role} not configured: {why}")]
    Unconfigured {
        /// The role.
        role: RoleId,
        /// What is missing.
        why: String,
    },
    /// A value is refused.
    #[error("{reason}")]
    Invalid {
        /// The schema path of the refused value (or the role's name).
        key: String,
        /// What is wrong, naming the key.
        reason: String,
    },
}

/// A file a role installs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedFile {
    /// Absolute path on the node.
    pub path: PathBuf,
    /// Contents.
    pub contents: String,
    /// Unix mode.
    pub mode: u32,
}

/// What [`Role::run`] gets besides its settings.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// A label for the node (the short host name).
    pub node_label: String,
}

/// One named health check of a role (the daemon sends them in heartbeats: a failing one makes
/// the node `degraded` at the hub).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthCheck {
    /// What was checked (`haproxy`, `vrrp`, `backends`): short, stable.
    pub name: &'static str,
    /// Whether it passed.
    pub ok: bool,
    /// A short human explanation.
    pub detail: String,
}

/// A role's run, until it stops.
pub type RunFuture = Pin<Box<dyn Future<Output = Result<(), RunError>> + Send>>;

/// The signal a role's run stops on.
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Why a role's run stopped with an error.
#[derive(Debug, thiserror::Error)]
#[error("role {role}")]
pub struct RunError {
    /// The role.
    pub role: RoleId,
    /// The cause.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// One node role. Methods default to "nothing here", as Afterburn's providers do, so a role
/// implements only what it has.
pub trait Role: Send + Sync {
    /// Its id.
    fn id(&self) -> RoleId;

    /// The appliance profile built for it (`capstan build` writes that profile's OVF
    /// properties), if any.
    fn profile(&self) -> Option<&'static str> {
        None
    }

    /// The schema rows it owns (category, label, type, default, secrecy).
    fn settings(&self) -> Vec<Setting> {
        Vec::new()
    }

    /// Builds its typed settings from the schema's valid values (`get(path)`).
    fn configure<'a>(
        &self,
        get: &dyn Fn(&str) -> Option<&'a str>,
    ) -> Result<RoleSettings, ConfigureError>;

    /// Every file it installs, for `capstan-agent render`; nothing is started.
    fn render(&self, _settings: &RoleSettings) -> Vec<RenderedFile> {
        Vec::new()
    }

    /// Steps it adds to first boot, run after the built-in ones of their stage (or where
    /// [`Step::before`] places them); they get the settings as [`crate::steps::Ctx::role`].
    fn steps(&self) -> &'static [Step] {
        &[]
    }

    /// Steps it adds to a node whose plan asks for them, whatever `role` says: Cluster API
    /// delivers `kubeadm join` in user-data and sets no role, yet the kube preflight must run
    /// before it. They get no settings ([`crate::steps::Ctx::role`] is the configured role's).
    fn plan_steps(&self, _plan: &Plan) -> &'static [Step] {
        &[]
    }

    /// What `capstan-agent run` starts, until `shutdown`.
    fn run(&self, settings: RoleSettings, opts: RunOptions, shutdown: Shutdown) -> RunFuture;

    /// Its live state for `capstan-agent status` on the node itself.
    fn health(&self, _settings: &RoleSettings) -> Option<serde_json::Value> {
        None
    }

    /// Its health as named checks, read now (may block briefly: files, netlink, sockets).
    fn checks(&self, _settings: &RoleSettings) -> Vec<HealthCheck> {
        Vec::new()
    }

    /// The capabilities its run needs, besides the daemon's own.
    fn capabilities(&self) -> &'static [caps::Capability] {
        &[]
    }
}

/// Every role with an implementation.
pub fn all() -> &'static [&'static dyn Role] {
    &[
        &lb::role_impl::LbRole,
        &kube::role_impl::KubeRole::CONTROL_PLANE,
        &kube::role_impl::KubeRole::WORKER,
    ]
}

/// Every role's [`Role::plan_steps`] for `plan`, each step once.
pub fn plan_steps(plan: &Plan) -> Vec<Step> {
    let mut out: Vec<Step> = Vec::new();
    for s in all().iter().flat_map(|r| r.plan_steps(plan)) {
        if !out.iter().any(|o| o.id == s.id) {
            out.push(*s);
        }
    }
    out
}

/// The implementation of `id`, if it has one.
pub fn get(id: RoleId) -> Option<&'static dyn Role> {
    all().iter().copied().find(|r| r.id() == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_serialise_as_their_names() {
        for id in RoleId::ALL {
            assert_eq!(RoleId::parse(id.as_str()), Some(id));
            assert_eq!(serde_json::to_value(id).unwrap(), id.as_str());
        }
        assert_eq!(RoleId::parse("kube"), None);
        assert_eq!(RoleId::default(), RoleId::None);
    }

    #[test]
    fn every_registered_role_is_found_by_its_id() {
        for r in all() {
            assert_eq!(get(r.id()).map(|g| g.id()), Some(r.id()));
        }
        assert!(get(RoleId::None).is_none());
    }
}
