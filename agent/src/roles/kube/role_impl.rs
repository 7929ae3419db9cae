//! The `control-plane` and `worker` roles' [`Role`] implementations: one type for both, the
//! id telling which. Both own the same `kube.*` settings (the schema lists them once).

use crate::roles::kube::settings::{self, KubeSettings, SettingsError};
use crate::roles::{ConfigureError, Role, RoleId, RoleSettings, RunFuture, RunOptions, Shutdown};
use crate::schema::Setting;
use crate::steps::{Plan, Step};

/// A Kubernetes role.
#[derive(Debug, Clone, Copy)]
pub struct KubeRole {
    id: RoleId,
}

impl KubeRole {
    /// `role = control-plane`.
    pub const CONTROL_PLANE: KubeRole = KubeRole { id: RoleId::ControlPlane };
    /// `role = worker`.
    pub const WORKER: KubeRole = KubeRole { id: RoleId::Worker };
}

impl Role for KubeRole {
    fn id(&self) -> RoleId {
        self.id
    }

    // The node profile is the core one: no profile of its own.

    fn settings(&self) -> Vec<Setting> {
        settings::KEYS.to_vec()
    }

    fn configure<'a>(
        &self,
        get: &dyn Fn(&str) -> Option<&'a str>,
    ) -> Result<RoleSettings, ConfigureError> {
        match KubeSettings::from_flat(self.id, |k| get(k)) {
            Ok(s) => Ok(RoleSettings::new(s)),
            Err(e @ SettingsError::Missing { .. }) => {
                Err(ConfigureError::Unconfigured { role: self.id, why: e.to_string() })
            }
            Err(e) => {
                let key = match &e {
                    SettingsError::Invalid { key, .. } => (*key).to_owned(),
                    _ => self.id.as_str().to_owned(),
                };
                Err(ConfigureError::Invalid { key, reason: e.to_string() })
            }
        }
    }

    /// The vApp path: preflight → kubeadm configuration → `kubeadm init|join` → sentinel.
    fn steps(&self) -> &'static [Step] {
        super::bootstrap::VAPP_STEPS
    }

    /// The Cluster API path: CABPK's `runcmd` runs kubeadm; the preflight goes before it.
    fn plan_steps(&self, plan: &Plan) -> &'static [Step] {
        match super::bootstrap::kubeadm_in_runcmd(&plan.runcmd) {
            Some(_) => super::bootstrap::CABPK_STEPS,
            None => &[],
        }
    }

    /// Nothing long-running yet: kubelet is systemd's, kubeadm runs in first boot. (The pod
    /// route controller will run here once it has the Node objects to follow.)
    fn run(&self, _settings: RoleSettings, _opts: RunOptions, shutdown: Shutdown) -> RunFuture {
        Box::pin(async move {
            shutdown.await;
            Ok(())
        })
    }

    fn health(&self, settings: &RoleSettings) -> Option<serde_json::Value> {
        settings.get::<KubeSettings>()?;
        serde_json::to_value(super::health::check_node()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{Config, Flat, Source};

    fn flat(pairs: &[(&str, &str)]) -> Flat {
        crate::schema::flat_from(Source::OvfEnv, pairs)
    }

    #[test]
    fn the_schema_builds_kube_settings_through_the_registry_or_names_the_key() {
        let c = Config::from_flat(&flat(&[("role", "worker")]), false);
        assert!(c.role_settings.is_none() && c.errors.is_empty(), "{:?}", c.errors);
        assert!(c.role_unconfigured.as_deref().unwrap().contains("kube.endpoint"));
        let token = "abcdef.0123456789abcdef";
        let c = Config::from_flat(
            &flat(&[
                ("role", "worker"),
                ("kube.endpoint", "10.0.0.100"),
                ("kube.token", "abcdef.0123456789ABCDEF"),
            ]),
            false,
        );
        let e = c.errors.iter().find(|e| e.path == "kube.token").expect("refused");
        assert_eq!(e.origin.key, "capstan.kube.token");
        assert!(
            e.reason.contains("secret, not shown") && !e.reason.contains("ABCDEF"),
            "{}",
            e.reason
        );
        let c = Config::from_flat(
            &flat(&[
                ("role", "worker"),
                ("kube.endpoint", "10.0.0.100"),
                ("kube.token", token),
                (
                    "kube.ca-cert-hash",
                    "sha256:7c5d8ca3bbcd0bb2bd9ae4d4ec5cf8b2d5d15e5c4f6b5c5a3e0c1e9f4b1a2d3e",
                ),
                ("kube.node-labels", "capstan.dev/pool=blue"),
            ]),
            false,
        );
        assert!(c.errors.is_empty(), "{:?}", c.errors);
        let s = c.role_settings.as_ref().unwrap().get::<KubeSettings>().unwrap();
        assert_eq!(s.role, RoleId::Worker);
        assert!(!format!("{c:?}").contains("0123456789abcdef"));
        let c = Config::from_flat(
            &flat(&[("role", "control-plane"), ("kube.endpoint", "10.0.0.100")]),
            false,
        );
        assert!(c.errors.is_empty() && c.role_settings.is_some(), "{:?}", c.errors);
    }

    #[test]
    fn both_roles_are_registered_and_share_the_node_settings() {
        for id in [RoleId::ControlPlane, RoleId::Worker] {
            let r = crate::roles::get(id).expect("registered");
            assert_eq!(r.settings().len(), settings::KEYS.len());
            assert!(r.profile().is_none());
        }
        for k in settings::KEYS {
            let s = crate::schema::lookup(k.path).expect("in the schema");
            assert!(s.applies.includes("node"), "{}", k.path);
            assert_eq!(crate::schema::settings().iter().filter(|x| x.path == k.path).count(), 1);
        }
    }
}
