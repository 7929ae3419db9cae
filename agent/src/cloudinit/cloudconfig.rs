//! The `#cloud-config` subset that Cluster API's kubeadm bootstrap (CABPK) renders:
//! `write_files`, `runcmd`, `bootcmd`, `users` (with `default`), `groups`, `ntp`, `hostname`,
//! `fqdn`, `manage_etc_hosts` and top-level `ssh_authorized_keys`.

use serde_yaml::Value;

use super::{kind, CloudInitError, Cx};
use crate::steps::files::{Encoding, Owner, WriteFile};
use crate::steps::timedns::{Ntp, NtpServer};
use crate::steps::users::{valid_account_name, valid_field, Group, User};
use crate::steps::{Command, ManageEtcHosts};
use crate::types::{Fqdn, Hostname, UnixMode};

/// A `users` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserEntry {
    /// `default`: the image's default user.
    Default,
    /// A user spelled out.
    User(Box<User>),
}

/// The parsed cloud-config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CloudConfig {
    /// `hostname`.
    pub hostname: Option<Hostname>,
    /// `fqdn`.
    pub fqdn: Option<Fqdn>,
    /// `manage_etc_hosts`.
    pub manage_etc_hosts: Option<ManageEtcHosts>,
    /// `users`; `None` when the key is absent (cloud-init then creates the default user).
    pub users: Option<Vec<UserEntry>>,
    /// `groups`.
    pub groups: Vec<Group>,
    /// Top-level `ssh_authorized_keys` (for the default user).
    pub ssh_authorized_keys: Vec<String>,
    /// `ntp`.
    pub ntp: Option<Ntp>,
    /// `write_files`, decoded.
    pub write_files: Vec<WriteFile>,
    /// `bootcmd`.
    pub bootcmd: Vec<Command>,
    /// `runcmd`.
    pub runcmd: Vec<Command>,
    /// Ignored keys and other remarks.
    pub warnings: Vec<String>,
}

impl CloudConfig {
    /// The users to create, with `default` expanded to `default_user` and the top-level
    /// `ssh_authorized_keys` given to the default user (as cloud-init does). Returns a remark
    /// when top-level keys had no default user to go to.
    pub fn resolved_users(&self, default_user: &User) -> (Vec<User>, Option<String>) {
        let entries = self.users.clone().unwrap_or_else(|| vec![UserEntry::Default]);
        let mut out = Vec::new();
        let mut has_default = false;
        for e in entries {
            match e {
                UserEntry::Default if !has_default => {
                    let mut u = default_user.clone();
                    u.ssh_authorized_keys.extend(self.ssh_authorized_keys.iter().cloned());
                    out.push(u);
                    has_default = true;
                }
                UserEntry::Default => {}
                UserEntry::User(u) => out.push(*u),
            }
        }
        let note = (!has_default && !self.ssh_authorized_keys.is_empty()).then(|| {
            "userdata: ssh_authorized_keys: no default user in users, keys not installed"
                .to_string()
        });
        (out, note)
    }
}

/// Parses a `#cloud-config` document.
pub fn parse_cloud_config(text: &str) -> Result<CloudConfig, CloudInitError> {
    let mut cx = Cx::new("userdata");
    let body = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = body.lines().skip_while(|l| l.trim().is_empty());
    let mut first = lines.next().unwrap_or("").trim();
    if first.starts_with("## template:") {
        first = lines.next().unwrap_or("").trim();
    }
    if first != "#cloud-config" {
        return Err(cx.err("(document)", "does not start with #cloud-config"));
    }
    let doc = cx.document(body)?;
    let mut cc = CloudConfig::default();
    for (k, v) in cx.entries(&doc, "(document)") {
        let key = k.as_str();
        match key {
            "hostname" => {
                cc.hostname = Some(
                    cx.string(v, key)?.trim().parse().map_err(|e| cx.err(key, format!("{e}")))?,
                )
            }
            "fqdn" => {
                cc.fqdn = Some(
                    cx.string(v, key)?.trim().parse().map_err(|e| cx.err(key, format!("{e}")))?,
                )
            }
            "manage_etc_hosts" => {
                cc.manage_etc_hosts = Some(match v {
                    Value::String(s) if s == "localhost" => ManageEtcHosts::Localhost,
                    Value::String(s) if s == "template" => ManageEtcHosts::Template,
                    v => {
                        if cx.boolean(v, key)? {
                            ManageEtcHosts::Template
                        } else {
                            ManageEtcHosts::Off
                        }
                    }
                })
            }
            "users" => cc.users = Some(parse_users(v, &mut cx)?),
            "groups" => cc.groups = parse_groups(v, &cx)?,
            "ssh_authorized_keys" => cc.ssh_authorized_keys = keys(v, key, &cx)?,
            "ntp" => cc.ntp = parse_ntp(v, &mut cx)?,
            "write_files" => {
                let Value::Sequence(items) = v else {
                    return Err(cx.err(key, format!("expected a list, got {}", kind(v))));
                };
                for (i, f) in items.iter().enumerate() {
                    cc.write_files.push(parse_file(i, f, &mut cx)?);
                }
            }
            "bootcmd" | "runcmd" => {
                let cmds = parse_commands(v, key, &cx)?;
                if key == "bootcmd" {
                    cc.bootcmd = cmds
                } else {
                    cc.runcmd = cmds
                }
            }
            "preserve_hostname"
            | "prefer_fqdn_over_hostname"
            | "disable_root"
            | "ssh_pwauth"
            | "final_message" => cx.warn(key, "not supported, ignored"),
            _ => cx.warn(key, "unknown or unsupported key, ignored"),
        }
    }
    cc.warnings = cx.warnings;
    Ok(cc)
}

fn keys(v: &Value, key: &str, cx: &Cx) -> Result<Vec<String>, CloudInitError> {
    let ks = cx.strings(v, key)?;
    for (i, k) in ks.iter().enumerate() {
        if k.contains(['\n', '\r', '\0']) {
            return Err(cx.err(format!("{key}[{i}]"), "an SSH key must be one line"));
        }
    }
    Ok(ks.into_iter().map(|k| k.trim().to_owned()).filter(|k| !k.is_empty()).collect())
}

fn parse_commands(v: &Value, key: &str, cx: &Cx) -> Result<Vec<Command>, CloudInitError> {
    let Value::Sequence(items) = v else {
        return Err(cx.err(key, format!("expected a list of commands, got {}", kind(v))));
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let ikey = format!("{key}[{i}]");
        out.push(match item {
            Value::Sequence(args) => {
                let args: Vec<String> = args
                    .iter()
                    .enumerate()
                    .map(|(j, a)| cx.string(a, &format!("{ikey}[{j}]")))
                    .collect::<Result<_, _>>()?;
                if args.is_empty() {
                    return Err(cx.err(&ikey, "empty command"));
                }
                Command::Exec(args)
            }
            Value::String(s) => Command::Shell(s.clone()),
            other => {
                return Err(
                    cx.err(&ikey, format!("expected a string or a list, got {}", kind(other)))
                )
            }
        });
    }
    Ok(out)
}

fn parse_file(i: usize, v: &Value, cx: &mut Cx) -> Result<WriteFile, CloudInitError> {
    let base = format!("write_files[{i}]");
    let m = cx.mapping(v, &base)?;
    let path = m.get("path").ok_or_else(|| cx.err(format!("{base}.path"), "missing"))?;
    let path = cx.string(path, &format!("{base}.path"))?;
    // name the file in every later message
    let base = format!("{base} ({path})");
    if !path.starts_with('/') || path.contains('\0') {
        return Err(cx.err(format!("{base}.path"), "must be an absolute path"));
    }
    let mut content = String::new();
    let mut encoding = Encoding::Raw;
    let mut permissions = UnixMode::new(0o644).map_err(|e| cx.err(&base, e.to_string()))?;
    let mut owner = Owner::default();
    let (mut append, mut defer) = (false, false);
    for (k, v) in cx.entries(m, &base) {
        let key = format!("{base}.{k}");
        match k.as_str() {
            "path" => {}
            "content" => {
                content = match v {
                    Value::Null => String::new(),
                    v => cx.string(v, &key)?,
                }
            }
            "encoding" => {
                encoding = cx.string(v, &key)?.parse().map_err(|e| cx.err(&key, format!("{e}")))?
            }
            "permissions" => {
                permissions = match v {
                    Value::Number(n) => n.to_string().parse(),
                    v => cx.string(v, &key)?.parse(),
                }
                .map_err(|e| cx.err(&key, format!("{e}")))?
            }
            "owner" => {
                owner =
                    cx.string(v, &key)?.trim().parse().map_err(|e| cx.err(&key, format!("{e}")))?
            }
            "append" => append = cx.boolean(v, &key)?,
            "defer" => defer = cx.boolean(v, &key)?,
            "source" => return Err(cx.err(&key, "fetching content from a URL is not supported")),
            _ => cx.warn(&key, "unknown key, ignored"),
        }
    }
    let content = crate::steps::files::decode(encoding, &content)
        .map_err(|e| cx.err(format!("{base}.content"), crate::error::chain(&e)))?;
    Ok(WriteFile { path, content, permissions, owner, append, defer })
}

fn parse_users(v: &Value, cx: &mut Cx) -> Result<Vec<UserEntry>, CloudInitError> {
    let items: Vec<Value> = match v {
        Value::Sequence(s) => s.clone(),
        Value::String(s) => s.split(',').map(|x| Value::String(x.trim().to_owned())).collect(),
        Value::Null => Vec::new(),
        other => return Err(cx.err("users", format!("expected a list, got {}", kind(other)))),
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let base = format!("users[{i}]");
        match item {
            Value::String(s) if s == "default" => out.push(UserEntry::Default),
            Value::String(s) => {
                if !valid_account_name(s) {
                    return Err(cx.err(&base, format!("{s:?} is not a valid user name")));
                }
                out.push(UserEntry::User(Box::new(User::new(s.clone()))));
            }
            Value::Mapping(m) => out.push(UserEntry::User(Box::new(parse_user(&base, m, cx)?))),
            other => {
                return Err(
                    cx.err(&base, format!("expected a name or a mapping, got {}", kind(other)))
                )
            }
        }
    }
    Ok(out)
}

fn parse_user(base: &str, m: &serde_yaml::Mapping, cx: &mut Cx) -> Result<User, CloudInitError> {
    let name = m.get("name").ok_or_else(|| cx.err(format!("{base}.name"), "missing"))?;
    let name = cx.string(name, &format!("{base}.name"))?;
    if !valid_account_name(&name) {
        return Err(cx.err(format!("{base}.name"), format!("{name:?} is not a valid user name")));
    }
    let base = format!("{base} ({name})");
    let mut u = User::new(name);
    let field = |v: &Value, key: &str, cx: &Cx| -> Result<String, CloudInitError> {
        let s = cx.string(v, key)?;
        if !valid_field(&s) {
            return Err(cx.err(key, "must not contain ':' or a line break"));
        }
        Ok(s)
    };
    let name_list = |v: &Value, key: &str, cx: &Cx| -> Result<Vec<String>, CloudInitError> {
        let raw = match v {
            Value::String(s) => {
                s.split(',').map(|x| x.trim().to_owned()).filter(|x| !x.is_empty()).collect()
            }
            v => cx.strings(v, key)?,
        };
        for g in &raw {
            if !valid_account_name(g) {
                return Err(cx.err(key, format!("{g:?} is not a valid group name")));
            }
        }
        Ok(raw)
    };
    for (k, v) in cx.entries(m, &base) {
        let key = format!("{base}.{k}");
        match k.as_str() {
            "name" => {}
            "gecos" => u.gecos = Some(field(v, &key, cx)?),
            "groups" => u.groups = name_list(v, &key, cx)?,
            "primary_group" | "primary-group" => {
                let g = cx.string(v, &key)?;
                if !valid_account_name(&g) {
                    return Err(cx.err(&key, format!("{g:?} is not a valid group name")));
                }
                u.primary_group = Some(g);
            }
            "sudo" => {
                u.sudo = match v {
                    Value::Null | Value::Bool(false) => Vec::new(),
                    Value::Bool(true) => {
                        return Err(cx.err(
                            &key,
                            "expected a sudo rule such as \"ALL=(ALL) NOPASSWD:ALL\", got true",
                        ))
                    }
                    v => cx.strings(v, &key)?,
                };
                if let Some(r) =
                    u.sudo.iter().find(|r| r.contains(['\n', '\r', '\0']) || r.trim().is_empty())
                {
                    return Err(cx.err(&key, format!("rule {r:?} must be one non-empty line")));
                }
            }
            "shell" => {
                let s = field(v, &key, cx)?;
                if !s.starts_with('/') {
                    return Err(cx.err(&key, format!("{s:?} is not an absolute path")));
                }
                u.shell = Some(s);
            }
            "homedir" => {
                let s = field(v, &key, cx)?;
                if !s.starts_with('/') {
                    return Err(cx.err(&key, format!("{s:?} is not an absolute path")));
                }
                u.homedir = Some(s);
            }
            "lock_passwd" | "lock-passwd" => u.lock_passwd = cx.boolean(v, &key)?,
            "passwd" | "hashed_passwd" => {
                let s = cx.string(v, &key)?;
                if !valid_field(&s) || s.contains(char::is_whitespace) {
                    // the value is a secret: do not echo it
                    return Err(cx.err(&key, "not a crypt(3) hash (contains ':' or whitespace)"));
                }
                u.passwd = Some(s);
            }
            "ssh_authorized_keys" | "ssh-authorized-keys" => {
                u.ssh_authorized_keys = keys(v, &key, cx)?
            }
            "no_create_home" | "no-create-home" => u.no_create_home = cx.boolean(v, &key)?,
            "system" => u.system = cx.boolean(v, &key)?,
            "uid" => u.uid = Some(cx.uint(v, &key)?),
            "plain_text_passwd" | "ssh_import_id" | "ssh_redirect_user" | "selinux_user"
            | "expiredate" | "inactive" | "snapuser" | "create_groups" => {
                cx.warn(&key, "not supported, ignored")
            }
            _ => cx.warn(&key, "unknown key, ignored"),
        }
    }
    Ok(u)
}

fn parse_groups(v: &Value, cx: &Cx) -> Result<Vec<Group>, CloudInitError> {
    let mut out = Vec::new();
    let mut add = |name: &str, members: Vec<String>, key: &str| -> Result<(), CloudInitError> {
        if !valid_account_name(name) {
            return Err(cx.err(key, format!("{name:?} is not a valid group name")));
        }
        if let Some(m) = members.iter().find(|m| !valid_account_name(m)) {
            return Err(cx.err(key, format!("member {m:?} is not a valid user name")));
        }
        out.push(Group { name: name.to_owned(), members });
        Ok(())
    };
    let items = match v {
        Value::Sequence(s) => s.clone(),
        Value::String(s) => s.split(',').map(|x| Value::String(x.trim().to_owned())).collect(),
        Value::Mapping(_) => vec![v.clone()],
        other => return Err(cx.err("groups", format!("expected a list, got {}", kind(other)))),
    };
    for (i, item) in items.iter().enumerate() {
        let key = format!("groups[{i}]");
        match item {
            Value::String(s) => add(s, Vec::new(), &key)?,
            Value::Mapping(m) => {
                for (g, members) in m {
                    let g = super::scalar_string(g)
                        .ok_or_else(|| cx.err(&key, "group name must be a string"))?;
                    let members = match members {
                        Value::String(s) => s
                            .split(',')
                            .map(|x| x.trim().to_owned())
                            .filter(|x| !x.is_empty())
                            .collect(),
                        v => cx.strings(v, &format!("{key}.{g}"))?,
                    };
                    add(&g, members, &format!("{key}.{g}"))?;
                }
            }
            other => {
                return Err(
                    cx.err(&key, format!("expected a name or a mapping, got {}", kind(other)))
                )
            }
        }
    }
    Ok(out)
}

fn parse_ntp(v: &Value, cx: &mut Cx) -> Result<Option<Ntp>, CloudInitError> {
    let m = match v {
        Value::Null => return Ok(None),
        v => cx.mapping(v, "ntp")?,
    };
    let mut ntp = Ntp { enabled: true, servers: Vec::new(), pools: Vec::new() };
    for (k, v) in cx.entries(m, "ntp") {
        let key = format!("ntp.{k}");
        match k.as_str() {
            "enabled" => ntp.enabled = cx.boolean(v, &key)?,
            "servers" | "pools" => {
                let mut list = Vec::new();
                for (i, s) in cx.strings(v, &key)?.iter().enumerate() {
                    list.push(
                        s.trim()
                            .parse::<NtpServer>()
                            .map_err(|e| cx.err(format!("{key}[{i}]"), format!("{e}")))?,
                    );
                }
                if k == "servers" {
                    ntp.servers = list
                } else {
                    ntp.pools = list
                }
            }
            "ntp_client" => {
                let c = cx.string(v, &key)?;
                if c != "auto" && c != "systemd-timesyncd" {
                    cx.warn(
                        &key,
                        &format!("{c:?} requested; Capstan configures systemd-timesyncd"),
                    );
                }
            }
            _ => cx.warn(&key, "not supported, ignored"),
        }
    }
    Ok(Some(ntp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capv_kubeadm_subset() {
        let cc = parse_cloud_config(
            r#"## template: jinja
#cloud-config
hostname: cp-0
fqdn: cp-0.example.com
users:
  - default
  - name: capv
    sudo: ALL=(ALL) NOPASSWD:ALL
    ssh_authorized_keys: ["ssh-ed25519 AAAA capv"]
    groups: "adm, docker"
ssh_authorized_keys: ["ssh-ed25519 BBBB ops"]
write_files:
  - path: /etc/kubernetes/pki/ca.crt
    encoding: base64
    content: aGVsbG8=
    permissions: '0640'
    owner: root:root
  - path: /run/kubeadm/kubeadm.yaml
    content: |
      kind: ClusterConfiguration
runcmd:
  - kubeadm init --config /run/kubeadm/kubeadm.yaml && echo success > /run/cluster-api/bootstrap-success.complete
  - [systemctl, restart, kubelet]
bootcmd: ["echo boot"]
ntp: {enabled: true, servers: [10.0.0.1, time.example.com]}
packages: [foo]
"#,
        )
        .unwrap();
        assert_eq!(cc.write_files[0].content, b"hello");
        assert_eq!(cc.write_files[0].permissions.bits(), 0o640);
        assert_eq!(
            cc.runcmd[1],
            Command::Exec(vec!["systemctl".into(), "restart".into(), "kubelet".into()])
        );
        assert!(matches!(cc.runcmd[0], Command::Shell(_)));
        let (users, note) = cc.resolved_users(&User::default_user());
        assert_eq!(users.len(), 2);
        assert_eq!(users[0].ssh_authorized_keys, vec!["ssh-ed25519 BBBB ops"]);
        assert_eq!(users[1].groups, vec!["adm", "docker"]);
        assert!(note.is_none());
        assert_eq!(cc.ntp.unwrap().servers.len(), 2);
        assert!(cc.warnings.iter().any(|w| w.contains("packages")));
    }

    #[test]
    fn hostile_values_name_the_key() {
        let cases = [
            ("- a\n- b", "userdata: (document): top level is a list, not a mapping"),
            (
                "write_files: [{path: /x, encoding: rot13, content: a}]",
                "userdata: write_files[0] (/x).encoding: invalid encoding \"rot13\"",
            ),
            (
                "write_files: [{path: /x, permissions: '0999'}]",
                "userdata: write_files[0] (/x).permissions: invalid permissions \"0999\"",
            ),
            (
                "write_files: [{path: /x, encoding: b64, content: '!!!'}]",
                "userdata: write_files[0] (/x).content: invalid base64",
            ),
            (
                "write_files: [{path: x/y}]",
                "userdata: write_files[0] (x/y).path: must be an absolute path",
            ),
            ("write_files: [{content: a}]", "userdata: write_files[0].path: missing"),
            (
                "users: [{name: 'Bad:Name'}]",
                "userdata: users[0].name: \"Bad:Name\" is not a valid user name",
            ),
            ("users: [{name: u, sudo: \"ALL\\nroot ALL\"}]", "userdata: users[0] (u).sudo: rule"),
            (
                "users: [{name: u, passwd: 'a:b'}]",
                "userdata: users[0] (u).passwd: not a crypt(3) hash",
            ),
            ("runcmd: [{a: b}]", "userdata: runcmd[0]: expected a string or a list, got a mapping"),
            ("runcmd: echo hi", "userdata: runcmd: expected a list of commands, got a string"),
            ("ntp: {servers: ['bad host']}", "userdata: ntp.servers[0]: invalid hostname"),
            ("hostname: -x", "userdata: hostname: invalid hostname"),
        ];
        for (body, want) in cases {
            let e =
                parse_cloud_config(&format!("#cloud-config\n{body}\n")).unwrap_err().to_string();
            assert!(e.starts_with(want), "{body}: {e}");
        }
        assert!(parse_cloud_config("#!/bin/sh\necho hi\n")
            .unwrap_err()
            .to_string()
            .contains("#cloud-config"));
        let e = parse_cloud_config("#cloud-config\nusers: [{name: u, passwd: 'sec ret'}]\n")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("sec ret"), "secret echoed: {e}");
    }
}
