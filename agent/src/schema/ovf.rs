//! OVF ProductSection properties generated from the schema, for the builder and for
//! `capstan-agent config schema --ovf`.

use super::{profile, settings, Kind, Setting, KEY_PREFIX};

/// One vApp property, as the builder puts it into the descriptor's ProductSection.
pub use ovf::descriptor::builder::ProductProperty;
use ovf::descriptor::PropertyType;

fn ovf_type(kind: &Kind, has_default: bool) -> (PropertyType, Option<String>) {
    match kind {
        // vSphere's wizard insists on a number for an integer property; one with no default
        // must be allowed to stay empty (unset), so it is a short string instead.
        Kind::Int { max, .. } if !has_default => {
            (PropertyType::String, Some(format!("MinLen(0),MaxLen({})", max.to_string().len())))
        }
        Kind::Bool => (PropertyType::Boolean, None),
        Kind::Int { min, max } => {
            let ty = if *max <= u64::from(u8::MAX) {
                PropertyType::Uint8
            } else if *max <= u64::from(u16::MAX) {
                PropertyType::Uint16
            } else {
                PropertyType::Uint32
            };
            (ty, Some(format!("MinValue({min}),MaxValue({max})")))
        }
        Kind::Choice(c) => {
            let list: Vec<String> = c.iter().map(|v| format!("\"{v}\"")).collect();
            (PropertyType::String, Some(format!("ValueMap{{{}}}", list.join(","))))
        }
        Kind::Text { min_len, max_len } => {
            (PropertyType::String, Some(format!("MinLen({min_len}),MaxLen({max_len})")))
        }
        Kind::Hostname | Kind::Fqdn | Kind::InstanceId => {
            (PropertyType::String, Some("MinLen(0),MaxLen(255)".into()))
        }
        Kind::Mac => (PropertyType::String, Some("MinLen(0),MaxLen(17)".into())),
        Kind::IfName => (PropertyType::String, Some("MinLen(0),MaxLen(15)".into())),
        Kind::Ip => (PropertyType::String, Some("MinLen(0),MaxLen(45)".into())),
        Kind::SshKeys | Kind::PemCerts | Kind::PemKey => {
            (PropertyType::String, Some("MinLen(0),MaxLen(16384)".into()))
        }
        Kind::Token => (PropertyType::String, Some("MinLen(0),MaxLen(256)".into())),
        Kind::CidrList
        | Kind::IpList
        | Kind::DomainList
        | Kind::HostList
        | Kind::Url
        | Kind::PasswordHash
        | Kind::Duration
        | Kind::RoleText => (PropertyType::String, Some("MinLen(0),MaxLen(4096)".into())),
    }
}

fn property(s: &Setting, profile_name: &str, nic: Option<&str>) -> ProductProperty {
    let (ty, qualifiers) = ovf_type(&s.kind, s.default_for(profile_name).is_some());
    let (path, label) = match nic {
        Some(n) => (s.path_for(n), format!("{n}: {}", s.label)),
        None => (s.path.to_owned(), s.label.to_owned()),
    };
    let mut value = s.default_for(profile_name).unwrap_or("").to_owned();
    if ty == PropertyType::Boolean && value.is_empty() {
        value = "false".into();
    }
    ProductProperty {
        key: format!("{KEY_PREFIX}{path}"),
        ty,
        qualifiers,
        // vSphere shows an empty field for an empty default; keep it explicit.
        default: Some(value),
        user_configurable: s.user_configurable,
        password: s.secret,
        label: Some(label),
        description: Some(s.description.to_owned()),
        category: Some(match nic {
            Some(n) => format!("{} ({n})", s.category),
            None => s.category.to_owned(),
        }),
    }
}

/// The vApp properties of `profile`'s template (`node` or `lb`), in display order and grouped
/// by category. An unknown profile gets the settings common to all profiles with one NIC.
pub fn ovf_properties(profile_name: &str) -> Vec<ProductProperty> {
    let nics = profile(profile_name).map_or(&["nic0"][..], |p| p.nics);
    ovf_properties_for(profile_name, nics)
}

/// Like [`ovf_properties`] with an explicit list of NIC slots (`["nic0", "nic1"]`).
pub fn ovf_properties_for(profile_name: &str, nics: &[&str]) -> Vec<ProductProperty> {
    let mut out = Vec::new();
    let applicable: Vec<&Setting> =
        settings().iter().filter(|s| s.applies.includes(profile_name)).collect();
    // Global settings in table order; per-NIC settings grouped by NIC after the first NIC
    // setting's position.
    let mut nic_done = false;
    for s in &applicable {
        if s.is_per_nic() {
            if !nic_done {
                nic_done = true;
                for nic in nics {
                    for ns in applicable.iter().filter(|x| x.is_per_nic()) {
                        out.push(property(ns, profile_name, Some(nic)));
                    }
                }
            }
        } else {
            out.push(property(s, profile_name, None));
        }
    }
    // Stable grouping: categories in order of first appearance.
    let mut cats: Vec<Option<String>> = Vec::new();
    for p in &out {
        if !cats.contains(&p.category) {
            cats.push(p.category.clone());
        }
    }
    let mut grouped = Vec::with_capacity(out.len());
    for c in &cats {
        grouped.extend(out.iter().filter(|p| &p.category == c).cloned());
    }
    grouped
}

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            _ => o.push(c),
        }
    }
    o
}

/// The `<ProductSection>` XML for a profile (namespace prefix `ovf:` as in a descriptor).
pub fn product_section_xml(profile_name: &str) -> String {
    let props = ovf_properties(profile_name);
    let mut x = String::new();
    x.push_str("<ProductSection ovf:required=\"false\">\n");
    x.push_str("  <Info>Capstan node configuration (schema version 1)</Info>\n");
    x.push_str("  <Product>Capstan</Product>\n");
    let mut cat: Option<String> = None;
    for p in &props {
        if p.category != cat {
            cat.clone_from(&p.category);
            x.push_str(&format!("  <Category>{}</Category>\n", esc(cat.as_deref().unwrap_or(""))));
        }
        x.push_str(&format!(
            "  <Property ovf:key=\"{}\" ovf:type=\"{}\"",
            esc(&p.key),
            p.ty.as_str()
        ));
        if let Some(q) = &p.qualifiers {
            x.push_str(&format!(" ovf:qualifiers=\"{}\"", esc(q)));
        }
        x.push_str(&format!(
            " ovf:userConfigurable=\"{}\" ovf:value=\"{}\"",
            p.user_configurable,
            esc(p.default.as_deref().unwrap_or(""))
        ));
        if p.password {
            x.push_str(" ovf:password=\"true\"");
        }
        x.push_str(&format!(
            ">\n    <Label>{}</Label>\n    <Description>{}</Description>\n  </Property>\n",
            esc(p.label.as_deref().unwrap_or("")),
            esc(p.description.as_deref().unwrap_or(""))
        ));
    }
    x.push_str("</ProductSection>\n");
    x
}

/// Names of the known profiles (for CLI help).
pub fn profile_names() -> Vec<&'static str> {
    super::profiles().iter().map(|p| p.name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lb_profile_has_lb_keys_and_role_default() {
        let props = ovf_properties("lb");
        let role = props.iter().find(|p| p.key == "capstan.role").unwrap();
        assert_eq!(role.default.as_deref(), Some("lb"));
        assert!(role.qualifiers.as_deref().unwrap().starts_with("ValueMap{"));
        let secret = props.iter().find(|p| p.key == "capstan.lb.vrrp.secret").unwrap();
        assert!(secret.password);
        let port = props.iter().find(|p| p.key == "capstan.lb.port").unwrap();
        assert_eq!(port.ty, PropertyType::Uint16);
        assert_eq!(port.default.as_deref(), Some("6443"));
        let rid = props.iter().find(|p| p.key == "capstan.lb.vrrp.router-id").unwrap();
        assert_eq!(rid.ty, PropertyType::Uint8);
        assert!(props.iter().any(|p| p.key == "capstan.net.nic0.address"));
        assert!(!props.iter().any(|p| p.key.starts_with("capstan.kube.")));
        let node = ovf_properties("node");
        assert!(!node.iter().any(|p| p.key.starts_with("capstan.lb.")));
        let role = node.iter().find(|p| p.key == "capstan.role").unwrap();
        assert_eq!(role.default.as_deref(), Some("none"));
    }

    #[test]
    fn xml_escapes_and_marks_passwords() {
        let x = product_section_xml("lb");
        assert!(x.contains("ovf:key=\"capstan.lb.vrrp.secret\""));
        assert!(x.contains("ovf:password=\"true\""));
        assert!(x.contains("ValueMap{&quot;none&quot;"));
        assert_eq!(x.matches("<Property ").count(), ovf_properties("lb").len());
    }
}
