//! Identity: host name and `/etc/hosts`, `/etc/machine-id`, SSH host keys.

use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command as Proc, Stdio};

use serde::{Deserialize, Serialize};

use super::{Ctx, Outcome, StepError};
use crate::root::{FileOpts, Root};

/// How `/etc/hosts` is managed (cloud-config `manage_etc_hosts`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ManageEtcHosts {
    /// Leave `/etc/hosts` alone.
    Off,
    /// Keep the file, replace only the `127.0.1.1` line (Debian's convention for the own name).
    /// Capstan's default: a clone must not keep its template's name there.
    #[default]
    Localhost,
    /// Rewrite the whole file (cloud-init's `manage_etc_hosts: true`).
    Template,
}

/// SSH host key types to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostKeyType {
    /// Ed25519: instant to generate even under TCG.
    Ed25519,
    /// ECDSA P-256: fast.
    Ecdsa,
    /// RSA 3072: the slow one (~0.2 s on this host, seconds under TCG); opt-in.
    Rsa,
}

impl HostKeyType {
    fn name(self) -> &'static str {
        match self {
            HostKeyType::Ed25519 => "ed25519",
            HostKeyType::Ecdsa => "ecdsa",
            HostKeyType::Rsa => "rsa",
        }
    }
}

/// Ed25519 only: every OpenSSH client since 6.5 (2014) takes it, it generates in a millisecond,
/// and each extra type costs one more `ssh-keygen` process at boot (RSA costs seconds under
/// TCG). ECDSA and RSA are opt-in for old clients.
pub fn default_host_key_types() -> Vec<HostKeyType> {
    vec![HostKeyType::Ed25519]
}

const HEADER: &str = "# Written by capstan-agent firstboot.\n";

/// Renders `/etc/hosts` for `manage_etc_hosts`, from the current content.
pub fn render_hosts(
    mode: ManageEtcHosts,
    current: Option<&str>,
    fqdn: Option<&str>,
    short: &str,
) -> Option<String> {
    let own = match fqdn {
        Some(f) if f != short => format!("127.0.1.1\t{f} {short}"),
        _ => format!("127.0.1.1\t{short}"),
    };
    match mode {
        ManageEtcHosts::Off => None,
        ManageEtcHosts::Template => {
            let mut s = String::from(HEADER);
            let _ = writeln!(s, "127.0.0.1\tlocalhost\n{own}\n");
            s.push_str("::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n");
            Some(s)
        }
        ManageEtcHosts::Localhost => {
            let cur = current.unwrap_or("127.0.0.1\tlocalhost\n");
            let mut out = String::new();
            let mut placed = false;
            for line in cur.lines() {
                if line.split_whitespace().next() == Some("127.0.1.1") {
                    if !placed {
                        out.push_str(&own);
                        out.push('\n');
                        placed = true;
                    }
                    continue;
                }
                out.push_str(line);
                out.push('\n');
                // put ours right after the 127.0.0.1 line, where Debian has it
                if !placed && line.split_whitespace().next() == Some("127.0.0.1") {
                    out.push_str(&own);
                    out.push('\n');
                    placed = true;
                }
            }
            if !placed {
                out.push_str(&own);
                out.push('\n');
            }
            Some(out)
        }
    }
}

pub(crate) fn hostname(ctx: &Ctx<'_>) -> Result<Outcome, StepError> {
    let Some(h) = &ctx.plan.hostname else {
        return Ok(Outcome::Skipped("no hostname given".into()));
    };
    let short = h.short();
    let fqdn = ctx
        .plan
        .fqdn
        .as_ref()
        .map(|f| f.as_str().to_owned())
        .or_else(|| h.as_fqdn().map(|f| f.as_str().to_owned()));
    let mut did = Vec::new();
    let want = format!("{short}\n");
    let cur =
        ctx.root.read("/etc/hostname").map_err(|e| StepError::wrap("read /etc/hostname", e))?;
    if cur.as_deref() != Some(want.as_bytes()) {
        ctx.root
            .write("/etc/hostname", want.as_bytes(), FileOpts::mode(0o644))
            .map_err(|e| StepError::wrap("write /etc/hostname", e))?;
        did.push("wrote /etc/hostname".to_string());
    }
    let cur =
        ctx.root.read_string("/etc/hosts").map_err(|e| StepError::wrap("read /etc/hosts", e))?;
    if let Some(hosts) =
        render_hosts(ctx.plan.manage_etc_hosts, cur.as_deref(), fqdn.as_deref(), short)
    {
        if cur.as_deref() != Some(hosts.as_str()) {
            ctx.root
                .write("/etc/hosts", hosts.as_bytes(), FileOpts::mode(0o644))
                .map_err(|e| StepError::wrap("write /etc/hosts", e))?;
            did.push("updated /etc/hosts".into());
        }
    }
    if ctx.live() {
        let now = nix::unistd::gethostname().ok().and_then(|s| s.into_string().ok());
        if now.as_deref() != Some(short) {
            nix::unistd::sethostname(short)
                .map_err(|e| StepError::wrap(format!("sethostname {short}"), e))?;
            did.push("set the kernel hostname".into());
        }
    } else {
        did.push("kernel hostname skipped (--root)".into());
    }
    Ok(Outcome::Ok(format!(
        "{short}: {}",
        if did.is_empty() { "unchanged".to_string() } else { did.join(", ") }
    )))
}

/// 32 lowercase hex digits from the kernel's random source, formatted as systemd does
/// (a version-4 UUID without dashes).
pub fn new_machine_id() -> std::io::Result<String> {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    Ok(b.iter().fold(String::with_capacity(32), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    }))
}

pub(crate) fn machine_id(ctx: &Ctx<'_>) -> Result<Outcome, StepError> {
    if !ctx.plan.machine_id {
        return Ok(Outcome::Skipped("disabled by configuration".into()));
    }
    if ctx.state.is_done("machine-id") {
        return Ok(Outcome::Skipped("already regenerated for this instance".into()));
    }
    let id = new_machine_id().map_err(|e| StepError::wrap("read /dev/urandom", e))?;
    let line = format!("{id}\n");
    ctx.root
        .write("/etc/machine-id", line.as_bytes(), FileOpts::mode(0o444))
        .map_err(|e| StepError::wrap("write /etc/machine-id", e))?;
    let mut detail = format!("new machine-id {id}");
    // D-Bus keeps its own copy on older systems; a regular file there must follow.
    let dbus = ctx
        .root
        .resolve("/var/lib/dbus/machine-id")
        .map_err(|e| StepError::wrap("resolve /var/lib/dbus/machine-id", e))?;
    if std::fs::symlink_metadata(&dbus).map(|m| m.is_file()).unwrap_or(false) {
        ctx.root
            .write("/var/lib/dbus/machine-id", line.as_bytes(), FileOpts::mode(0o444))
            .map_err(|e| StepError::wrap("write /var/lib/dbus/machine-id", e))?;
        detail.push_str(", /var/lib/dbus/machine-id too");
    }
    if ctx.live() {
        detail.push_str(" (running services keep the old one until restarted)");
    }
    Ok(Outcome::Ok(detail))
}

/// A host key ready to install: guest path of the private key, its bytes, the public line.
type HostKey = (String, Vec<u8>, Vec<u8>);

/// An `ssh-keygen` writing a temp key next to its final place.
struct Keygen {
    kind: HostKeyType,
    tmp: PathBuf,
    child: std::process::Child,
}

/// Removes ssh-keygen's temp files.
fn remove_temp(tmp: &Path) {
    let _ = std::fs::remove_file(tmp);
    let _ = std::fs::remove_file(tmp.with_extension("pub"));
}

/// Starts one `ssh-keygen` per key type other than Ed25519, into temp names under `dir` (so a
/// failing one leaves the old keys in place); all start before any is waited for.
fn spawn_keygens(dir: &Path, types: &[HostKeyType]) -> Result<Vec<Keygen>, StepError> {
    let mut running: Vec<Keygen> = Vec::new();
    for t in types.iter().filter(|t| **t != HostKeyType::Ed25519) {
        let tmp = dir.join(format!(".capstan-keygen-{}-{}", t.name(), std::process::id()));
        remove_temp(&tmp);
        let mut cmd = Proc::new("ssh-keygen");
        cmd.args(["-q", "-t", t.name(), "-N", "", "-C", ""]);
        if *t == HostKeyType::Rsa {
            cmd.args(["-b", "3072"]);
        }
        cmd.arg("-f").arg(&tmp).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        match cmd.spawn() {
            Ok(child) => running.push(Keygen { kind: *t, tmp, child }),
            Err(e) => {
                for mut k in running {
                    let _ = k.child.kill();
                    let _ = k.child.wait();
                    remove_temp(&k.tmp);
                }
                return Err(StepError::wrap("run ssh-keygen (is openssh-client installed?)", e));
            }
        }
    }
    Ok(running)
}

/// Waits for every `ssh-keygen` and reads what they wrote (as keys at their final guest
/// paths); the temp files are gone afterwards, whatever happened.
fn collect_keygens(
    root: &Root,
    dir: &Path,
    running: Vec<Keygen>,
) -> Result<Vec<HostKey>, StepError> {
    let mut failed = None;
    let mut made = Vec::new();
    for k in running {
        let dst = dir.join(format!("ssh_host_{}_key", k.kind.name()));
        match k.child.wait_with_output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                failed.get_or_insert(format!(
                    "ssh-keygen -t {} failed ({}): {}",
                    k.kind.name(),
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            Err(e) => {
                failed.get_or_insert(format!("ssh-keygen -t {}: {e}", k.kind.name()));
            }
        }
        made.push((k.tmp, dst));
    }
    let cleanup = || made.iter().for_each(|(tmp, _)| remove_temp(tmp));
    if let Some(msg) = failed {
        cleanup();
        return Err(StepError::msg(msg));
    }
    let mut keys = Vec::new();
    for (tmp, dst) in &made {
        let read =
            std::fs::read(tmp).and_then(|k| Ok((k, std::fs::read(tmp.with_extension("pub"))?)));
        match read {
            Ok((k, p)) => keys.push((root.guest_of(dst), k, p)),
            Err(e) => {
                cleanup();
                return Err(StepError::wrap(format!("read the new {}", root.guest_of(dst)), e));
            }
        }
    }
    cleanup();
    Ok(keys)
}

/// Removes every old host key (they are the template's, shared by all its clones) and writes
/// `keys`; returns the private keys' paths.
fn replace_host_keys(root: &Root, keys: &[HostKey]) -> Result<Vec<String>, StepError> {
    for name in root.list("/etc/ssh").map_err(|e| StepError::wrap("list /etc/ssh", e))? {
        let path = format!("/etc/ssh/{name}");
        let stale = name.starts_with("ssh_host_")
            && (name.ends_with("_key") || name.ends_with("_key.pub"))
            && !keys.iter().any(|(k, _, _)| path == *k || path == format!("{k}.pub"));
        if stale {
            root.remove(&path).map_err(|e| StepError::wrap(format!("remove {path}"), e))?;
        }
    }
    let mut names = Vec::new();
    for (path, key, line) in keys {
        root.write(path, key, FileOpts::mode(0o600))
            .map_err(|e| StepError::wrap(format!("write {path}"), e))?;
        root.write(format!("{path}.pub"), line, FileOpts::mode(0o644))
            .map_err(|e| StepError::wrap(format!("write {path}.pub"), e))?;
        names.push(path.clone());
    }
    Ok(names)
}

pub(crate) fn ssh_host_keys(ctx: &Ctx<'_>) -> Result<Outcome, StepError> {
    let types = &ctx.plan.ssh_host_key_types;
    if types.is_empty() {
        return Ok(Outcome::Skipped("no host key types configured".into()));
    }
    if ctx.state.is_done("ssh-host-keys") {
        return Ok(Outcome::Skipped("already regenerated for this instance".into()));
    }
    let root = ctx.root;
    let dir = root.resolve("/etc/ssh").map_err(|e| StepError::wrap("resolve /etc/ssh", e))?;
    if !dir.is_dir() {
        return Ok(Outcome::Skipped("no /etc/ssh (OpenSSH server not installed)".into()));
    }
    // Ed25519 in process, while ssh-keygen makes the others.
    let ed25519 = if types.contains(&HostKeyType::Ed25519) {
        Some(
            super::sshkey::ed25519("")
                .map_err(|e| StepError::wrap("generate the Ed25519 host key", e))?,
        )
    } else {
        None
    };
    let running = spawn_keygens(&dir, types)?;
    // The generated keys go through the root like every other write (staged: they land
    // together when the step succeeds); ssh-keygen's own files are only read.
    let mut keys: Vec<HostKey> = Vec::new();
    if let Some((key, line)) = ed25519 {
        keys.push(("/etc/ssh/ssh_host_ed25519_key".into(), key.into_bytes(), line.into_bytes()));
    }
    keys.extend(collect_keygens(root, &dir, running)?);
    let names = replace_host_keys(root, &keys)?;
    Ok(Outcome::Ok(format!("generated {}", names.join(", "))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_localhost_mode_replaces_only_the_own_line() {
        let cur = "127.0.0.1\tlocalhost\n127.0.1.1\ttemplate\n\n::1 localhost ip6-localhost\n";
        let out = render_hosts(ManageEtcHosts::Localhost, Some(cur), Some("n1.example.com"), "n1")
            .unwrap();
        assert_eq!(
            out,
            "127.0.0.1\tlocalhost\n127.0.1.1\tn1.example.com n1\n\n::1 localhost ip6-localhost\n"
        );
        let again =
            render_hosts(ManageEtcHosts::Localhost, Some(&out), Some("n1.example.com"), "n1")
                .unwrap();
        assert_eq!(again, out, "idempotent");
        let out =
            render_hosts(ManageEtcHosts::Localhost, Some("127.0.0.1 localhost\n"), None, "n1")
                .unwrap();
        assert_eq!(out, "127.0.0.1 localhost\n127.0.1.1\tn1\n");
        assert!(render_hosts(ManageEtcHosts::Off, Some(cur), None, "n1").is_none());
    }

    #[test]
    fn machine_ids_are_fresh_v4() {
        let a = new_machine_id().unwrap();
        let b = new_machine_id().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_eq!(&a[12..13], "4");
    }
}
