//! Overlays a `#cloud-config` document (parsed by [`crate::cloudinit`]) onto the plan built
//! from the schema, with the precedence of DESIGN.md: the cloud-config is source 3, so it
//! replaces host name and NTP that came from baked defaults, the OVF environment or the
//! metadata, but not what direct `guestinfo.capstan.*` keys or the override file set.

use crate::schema::Flat;
use crate::steps::{Plan, User};

/// Why a cloud-config document was not used.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// A `#!` script.
    #[error("user-data scripts (#!) are not supported; use #cloud-config runcmd")]
    Script,
    /// Multi-part MIME.
    #[error("multi-part MIME user-data is not supported; use one #cloud-config")]
    Mime,
    /// The cloud-config does not parse (the error names the key).
    #[error(transparent)]
    Parse(#[from] crate::cloudinit::CloudInitError),
}

/// Sources a cloud-config value overrides.
fn overridable(flat: &Flat, path: &str) -> bool {
    flat.get(path).is_none_or(|v| v.origin.source.below_cloud_config())
}

/// Applies `text` to `plan`. Errors name the key inside the document.
pub fn overlay(plan: &mut Plan, text: &str, flat: &Flat) -> Result<Vec<String>, OverlayError> {
    let t = text.trim_start_matches('\u{feff}').trim_start();
    if t.starts_with("#!") {
        return Err(OverlayError::Script);
    }
    if t.starts_with("Content-Type:") || t.starts_with("MIME-Version:") {
        return Err(OverlayError::Mime);
    }
    let cc = crate::cloudinit::parse_cloud_config(text)?;
    let mut notes = cc.warnings.clone();
    if let Some(h) = cc.hostname.clone() {
        if overridable(flat, "hostname") {
            plan.hostname = Some(h);
        }
    }
    if let Some(f) = cc.fqdn.clone() {
        if overridable(flat, "fqdn") && overridable(flat, "hostname") {
            plan.fqdn = Some(f);
        }
    }
    if let Some(m) = cc.manage_etc_hosts {
        plan.manage_etc_hosts = m;
    }
    if cc.users.is_some() || !cc.ssh_authorized_keys.is_empty() {
        let (users, note) = cc.resolved_users(&User::default_user());
        notes.extend(note);
        for u in users {
            match plan.users.iter_mut().find(|p| p.name == u.name) {
                Some(existing) => {
                    for k in u.ssh_authorized_keys {
                        if !existing.ssh_authorized_keys.contains(&k) {
                            existing.ssh_authorized_keys.push(k);
                        }
                    }
                }
                None => plan.users.push(u),
            }
        }
    }
    plan.groups.extend(cc.groups.iter().cloned());
    if let Some(ntp) = cc.ntp.clone() {
        if plan.ntp.is_none() || overridable(flat, "ntp.servers") {
            plan.ntp = Some(ntp);
        }
    }
    plan.files.extend(cc.write_files.iter().cloned());
    plan.bootcmd.extend(cc.bootcmd.iter().cloned());
    plan.runcmd.extend(cc.runcmd.iter().cloned());
    Ok(notes)
}
