//! The kube roles' first-boot steps, both in the final stage (after the network is online and
//! containerd is up):
//!
//! - `kubeadm` ([`VAPP_STEPS`], the vApp path, after `runcmd`): the carried kubeadm's version →
//!   the preflight (`kube-preflight/<check>` records) → the kubeadm configuration in that
//!   version's API (`kubeadm/config`, mode 0600) → `kubeadm init|join` (`kubeadm/init` or
//!   `kubeadm/join`) → the sentinel CABPK writes too (`kubeadm/sentinel`). When kubeadm
//!   started and failed: `kubeadm reset -f`, then what reset leaves behind (our CNI conflist,
//!   the configuration with its secrets, the `KUBE-*`/`CNI-*` iptables chains)
//!   (`kubeadm/reset`), so nothing is half-joined; the failure names the key where the output
//!   says it is a key's fault.
//! - `kube-preflight` ([`CABPK_STEPS`], the Cluster API path, before `runcmd`, which it gates):
//!   when `runcmd` runs `kubeadm init|join --config FILE` (CABPK's cloud-config), the same
//!   preflight, with the endpoint, token and pin read from FILE's `JoinConfiguration`
//!   ([`super::preflight::Target::from_join_config`]); a failure names FILE and the field, and
//!   `runcmd` (kubeadm) does not run. CABPK's file and commands are otherwise left as they are.
//!
//! Under `--root` without `--run-commands` nothing is run (the preflight neither: it reaches
//! the network); with it, kubeadm is `DIR/usr/bin/kubeadm`, run on the host like `runcmd`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command as Proc, Stdio};
use std::time::Instant;

use super::kubeadm::{self, KubeadmConfig, NodeFacts};
use super::preflight::{self, Target};
use super::settings::{Action, KubeSettings};
use super::{cni, podnet};
use crate::root::FileOpts;
use crate::steps::{
    Command, Ctx, Flush, Mode, Outcome, Step, StepError, StepId, StepRecord, StepStatus,
};

/// The vApp path's step.
pub const VAPP_STEPS: &[Step] =
    &[Step::late(StepId::Kubeadm, vapp).flushing(Flush::WhenCommandsRun)];

/// The Cluster API path's preflight, before (and gating) `runcmd`.
pub const CABPK_STEPS: &[Step] = &[Step::late(StepId::KubePreflight, cabpk).gating(StepId::Runcmd)];

/// Where kubeadm's output goes (with the commands'; mode 0600).
const LOG: &str = crate::steps::commands::LOG;
/// The largest kubeadm configuration the Cluster API preflight reads (CABPK's are a few KiB).
const MAX_CONFIG: usize = 1 << 20;
/// Bytes of kubeadm's output kept in a failure message.
const TAIL: usize = 600;
/// The control-plane images come preloaded; Debian's template carries no CoreDNS to preload.
const SKIP_PHASES: &str = "--skip-phases=addon/coredns";
/// Without crictl, kubeadm 1.20's init (and control-plane join) preflight phase fails hard:
/// its image-pull check needs crictl to talk to the runtime (`crictl is required for
/// container runtime`, not an ignorable check). The agent's own preflight has checked the
/// runtime, swap, modules and sysctls; kubeadm's phase is skipped.
const SKIP_PHASES_NO_CRICTL: &str = "--skip-phases=preflight,addon/coredns";
const SKIP_PREFLIGHT: &str = "--skip-phases=preflight";
/// Where crictl would be: Debian packages no cri-tools, and kubeadm 1.20's preflight wants it
/// (and pulls images with it).
const CRICTL: &[&str] = &["/usr/bin/crictl", "/usr/local/bin/crictl"];
const IGNORE_NO_CRICTL: &str = "--ignore-preflight-errors=FileExisting-crictl,ImagePull";

/// The kubeadm command `runcmd` holds, if any: `(init|join, --config FILE)`.
pub fn kubeadm_in_runcmd(runcmd: &[Command]) -> Option<(&'static str, Option<String>)> {
    runcmd.iter().find_map(|c| {
        let words: Vec<String> = match c {
            Command::Exec(v) => v.clone(),
            Command::Shell(s) => s.split_whitespace().map(str::to_owned).collect(),
        };
        // kubeadm where a command starts (not `echo kubeadm join`)
        let starts = |i: usize| {
            i == 0
                || words[i - 1].ends_with(';')
                || matches!(
                    words[i - 1].as_str(),
                    "&&" | "||" | "|" | "then" | "do" | "else" | "sudo" | "exec" | "time"
                )
        };
        let at = (0..words.len().saturating_sub(1)).find(|&i| {
            starts(i)
                && words[i].rsplit('/').next() == Some("kubeadm")
                && matches!(words[i + 1].as_str(), "init" | "join")
        })?;
        let action = if words[at + 1] == "init" { "init" } else { "join" };
        let config = words[at + 2..]
            .iter()
            .take_while(|w| !matches!(w.as_str(), "&&" | "||" | ";" | "|"))
            .enumerate()
            .find_map(|(i, w)| match w.strip_prefix("--config") {
                Some("") => words.get(at + 3 + i).cloned(),
                Some(rest) => rest.strip_prefix('=').map(str::to_owned),
                None => None,
            });
        Some((action, config))
    })
}

fn commands_run(ctx: &Ctx<'_>) -> bool {
    matches!(ctx.mode, Mode::Live | Mode::Rooted { run_commands: true })
}

fn preflight_opts(ctx: &Ctx<'_>) -> preflight::Options {
    preflight::Options { root: ctx.root.base().to_owned(), ..preflight::Options::default() }
}

fn ms(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn record(ctx: &Ctx<'_>, name: &str, t: Instant, r: &Result<String, String>) {
    let (status, detail, error) = match r {
        Ok(d) => (StepStatus::Ok, d.clone(), None),
        Err(e) => (StepStatus::Failed, String::new(), Some(e.clone())),
    };
    ctx.record(StepRecord { name: name.into(), status, detail, error, duration_ms: ms(t) });
}

/// The Cluster API path: the preflight before CABPK's `kubeadm init|join`.
fn cabpk(ctx: &Ctx<'_>) -> Result<Outcome, StepError> {
    let Some((action, config)) = kubeadm_in_runcmd(&ctx.plan.runcmd) else {
        return Ok(Outcome::Skipped("runcmd runs no kubeadm init|join".into()));
    };
    if ctx.state.is_done("runcmd") {
        return Ok(Outcome::Skipped("runcmd already ran for this instance".into()));
    }
    if !commands_run(ctx) {
        return Ok(Outcome::Skipped("not run under --root (runcmd is not run either)".into()));
    }
    let path = config.unwrap_or_else(|| match action {
        "init" => kubeadm::INIT_CONFIG_PATH.to_owned(),
        _ => kubeadm::JOIN_CONFIG_PATH.to_owned(),
    });
    let target = if action == "join" {
        let bytes = ctx
            .root
            .read(&path)
            .map_err(|e| StepError::wrap(format!("read {path}"), e))?
            .ok_or_else(|| {
            StepError::msg(format!(
                "{path}: runcmd's kubeadm join reads it, but it is not there (write_files)"
            ))
        })?;
        if bytes.len() > MAX_CONFIG {
            return Err(StepError::msg(format!(
                "{path}: {} bytes, more than a kubeadm configuration's {MAX_CONFIG}",
                bytes.len()
            )));
        }
        let yaml = String::from_utf8_lossy(&bytes);
        Target::from_join_config(&yaml).map_err(|e| StepError::msg(format!("{path}: {e}")))?
    } else {
        None
    };
    // an init, or a join with file discovery: this node's own checks only
    let target = target.unwrap_or_default();
    let report = preflight::run_blocking(&target, &preflight_opts(ctx));
    let field = |key: &str| match key {
        "kube.endpoint" => "discovery.bootstrapToken.apiServerEndpoint",
        "kube.token" => "discovery.bootstrapToken.token",
        "kube.ca-cert-hash" => "discovery.bootstrapToken.caCertHashes",
        _ => "",
    };
    for mut r in report.records() {
        // name the file's field, not the vApp key
        if let Some(e) = r.error.take() {
            let (key, why) = e.split_once(": ").unwrap_or(("", &e));
            r.error = Some(match field(key) {
                "" => e.clone(),
                f => format!("{path}: {f}: {why}"),
            });
        }
        ctx.record(r);
    }
    match report.failure() {
        Some(f) => Err(StepError::msg(match field(f.key) {
            "" => {
                format!("preflight {}: {}: {}; kubeadm {action} not run", f.check, f.key, f.reason)
            }
            fld => format!(
                "preflight {}: {path}: {fld}: {}; kubeadm {action} not run",
                f.check, f.reason
            ),
        })),
        None => Ok(Outcome::Ok(format!(
            "{} check(s) passed before kubeadm {action} --config {path}",
            report.checks.iter().filter(|c| matches!(c.outcome, preflight::Outcome::Ok(_))).count()
        ))),
    }
}

/// The target of the vApp path's preflight: nothing remote to check on the first control plane.
fn target_of(s: &KubeSettings) -> Target {
    match s.action() {
        Action::Init => {
            Target { endpoint: s.endpoint.to_string(), token: None, ca_cert_hash: None }
        }
        Action::JoinWorker | Action::JoinControlPlane => Target {
            endpoint: s.endpoint.to_string(),
            token: s.token.as_ref().map(|t| t.expose().to_owned()),
            ca_cert_hash: s.ca_cert_hash.as_ref().map(ToString::to_string),
        },
    }
}

/// The flags the carried template needs besides the config: see [`SKIP_PHASES`], [`CRICTL`].
pub fn extra_flags(action: &Action, root: &Path) -> Vec<String> {
    let crictl = CRICTL.iter().any(|c| root.join(c.trim_start_matches('/')).exists());
    let flag = match (action, crictl) {
        (Action::Init, true) => SKIP_PHASES,
        (Action::Init, false) => SKIP_PHASES_NO_CRICTL,
        (Action::JoinControlPlane, false) => SKIP_PREFLIGHT,
        (Action::JoinWorker, false) => IGNORE_NO_CRICTL,
        (_, true) => return Vec::new(),
    };
    vec![flag.to_owned()]
}

/// The vApp path (see the module doc).
fn vapp(ctx: &Ctx<'_>) -> Result<Outcome, StepError> {
    let Some(s) = ctx.role_settings::<KubeSettings>() else {
        return Ok(Outcome::Skipped("no kube settings (the role record says why)".into()));
    };
    if let Some((action, _)) = kubeadm_in_runcmd(&ctx.plan.runcmd) {
        return Ok(Outcome::Skipped(format!(
            "the user-data's runcmd runs kubeadm {action} (the Cluster API path)"
        )));
    }
    if ctx.state.is_done(StepId::Kubeadm.as_str()) {
        return Ok(Outcome::Skipped("kubeadm already ran for this instance".into()));
    }
    let done = ctx.root.exists(kubeadm::SENTINEL_PATH).unwrap_or(false);
    if done {
        return Ok(Outcome::Skipped(format!("{} exists", kubeadm::SENTINEL_PATH)));
    }
    if !commands_run(ctx) {
        return Ok(Outcome::Skipped("kubeadm not run under --root".into()));
    }
    let bin = ctx.root.base().join(kubeadm::KUBEADM.trim_start_matches('/'));
    let t = Instant::now();
    let version = kubeadm::carried_version(&bin);
    let r = version.as_ref().map(|v| format!("{} {}", bin.display(), v.text));
    record(ctx, "kubeadm/version", t, &r.map_err(|e| crate::error::chain(e)));
    let version = version.map_err(|e| StepError::wrap("the carried kubeadm", e))?;
    let report = preflight::run_blocking(&target_of(s), &preflight_opts(ctx));
    for r in report.records() {
        ctx.record(r);
    }
    if let Some(f) = report.failure() {
        return Err(StepError::msg(format!("{f}; kubeadm not run")));
    }
    let name = ctx.plan.hostname.as_ref().map(|h| h.to_string());
    let facts = NodeFacts { name, version };
    let t = Instant::now();
    let cfg = kubeadm::render(s, &facts).map_err(|e| StepError::wrap("kubeadm configuration", e));
    let cfg = cfg.and_then(|c| write_config(ctx, &c).map(|_| c));
    let r =
        cfg.as_ref().map(|c| format!("wrote {} ({})", c.path, c.api)).map_err(|e| e.to_string());
    record(ctx, "kubeadm/config", t, &r);
    let cfg = cfg?;
    run_kubeadm(ctx, s, &cfg, &bin)?;
    let t = Instant::now();
    let w = ctx
        .root
        .unstaged(|| ctx.root.write(kubeadm::SENTINEL_PATH, b"success\n", FileOpts::mode(0o644)));
    let r = w.as_ref().map(|_| format!("wrote {}", kubeadm::SENTINEL_PATH));
    record(ctx, "kubeadm/sentinel", t, &r.map_err(|e| crate::error::chain(e)));
    w.map_err(|e| StepError::wrap(format!("write {}", kubeadm::SENTINEL_PATH), e))?;
    if ctx.live() {
        pod_network(ctx, &podnet::node_name(facts.name.as_deref()))?;
    }
    Ok(Outcome::Ok(format!("kubeadm {} done ({})", verb(s), cfg.api.short())))
}

/// After kubeadm (live only: it needs the node's kubelet and API server): the node's pod
/// CIDR → the conflist (`kubeadm/pod-network`), then the kubelet's `Ready`
/// (`kubeadm/node-ready`). See [`podnet`].
fn pod_network(ctx: &Ctx<'_>, node: &str) -> Result<(), StepError> {
    let k = podnet::Kubectl::for_node(ctx.root.base());
    let t = Instant::now();
    tracing::info!("waiting for node {node}'s spec.podCIDR");
    let cidr = k
        .wait_for(node, podnet::POD_CIDR_WAIT, |n| n.pod_cidr)
        .map_err(|e| format!("node {node}: spec.podCIDR: {e}"));
    let written = cidr.and_then(|c| {
        let conf = cni::Conflist::for_node(c).map_err(|e| e.to_string())?;
        ctx.root
            .unstaged(|| {
                ctx.root.write(cni::CONFLIST_PATH, conf.to_json().as_bytes(), FileOpts::mode(0o644))
            })
            .map_err(|e| format!("write {}: {}", cni::CONFLIST_PATH, crate::error::chain(&e)))?;
        Ok(format!("node {node}: pod CIDR {c}; wrote {}", cni::CONFLIST_PATH))
    });
    record(ctx, "kubeadm/pod-network", t, &written);
    written.map_err(StepError::msg)?;
    let t = Instant::now();
    tracing::info!("waiting for node {node} to be Ready");
    let ready = k
        .wait_for(node, podnet::READY_WAIT, |n| n.is_ready().then_some(()))
        .map(|()| format!("node {node} Ready"))
        .map_err(|e| format!("node {node}: Ready: {e}"));
    record(ctx, "kubeadm/node-ready", t, &ready);
    ready.map(|_| ()).map_err(StepError::msg)
}

fn verb(s: &KubeSettings) -> &'static str {
    match s.action() {
        Action::Init => "init",
        Action::JoinWorker => "join",
        Action::JoinControlPlane => "join (control plane)",
    }
}

fn write_config(ctx: &Ctx<'_>, c: &KubeadmConfig) -> Result<PathBuf, StepError> {
    // unstaged: kubeadm reads it now; 0600: it holds the token and the certificate key
    ctx.root
        .unstaged(|| ctx.root.write(c.path, c.yaml.as_bytes(), FileOpts::mode(0o600)))
        .map_err(|e| StepError::wrap(format!("write {}", c.path), e))
}

/// Secrets kubeadm may print (init prints the join command with the token, `--upload-certs`
/// the certificate key) are replaced before output reaches the log or a record.
fn redact(text: &str, s: &KubeSettings) -> String {
    let mut out = text.to_owned();
    if let Some(t) = &s.token {
        out = out.replace(&t.expose()[7..], "<secret>");
    }
    if let Some(k) = &s.certificate_key {
        out = out.replace(k.expose(), "<secret>");
    }
    out
}

/// Runs `bin ARGS`; `Ok(output)` when it exits 0. Output is appended to [`LOG`] (redacted).
fn run_logged(
    ctx: &Ctx<'_>,
    s: &KubeSettings,
    bin: &Path,
    args: &[String],
) -> Result<String, String> {
    let label = format!("kubeadm {}", args.first().map(String::as_str).unwrap_or(""));
    tracing::info!("running {label}");
    let out = Proc::new(bin).args(args).current_dir(ctx.root.base()).stdin(Stdio::null()).output();
    let (ok, text) = match out {
        Ok(o) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            (o.status.success(), redact(&text, s) + &format!("\n(exit: {})", o.status))
        }
        Err(e) => (false, format!("could not start {}: {e}", bin.display())),
    };
    let mut log = String::new();
    let _ = writeln!(log, "=== {label} (capstan kubeadm step)\n{text}");
    if let Err(e) =
        ctx.root.unstaged(|| ctx.root.append(LOG, log.as_bytes(), FileOpts::mode(0o600)))
    {
        tracing::warn!("could not keep kubeadm's output in {LOG}: {}", crate::error::chain(&e));
    }
    if ok {
        Ok(text)
    } else {
        Err(tail(&text).to_owned())
    }
}

fn tail(text: &str) -> &str {
    let start = text.len().saturating_sub(TAIL);
    let start = (start..text.len()).find(|&j| text.is_char_boundary(j)).unwrap_or(text.len());
    text[start..].trim()
}

/// The key kubeadm's failure output points at, if it does (kubeadm's own messages).
pub fn key_of_failure(output: &str) -> Option<&'static str> {
    let o = output.to_ascii_lowercase();
    const PATTERNS: &[(&str, &str)] = &[
        ("none of the public keys", "kube.ca-cert-hash"),
        ("cacerthashes", "kube.ca-cert-hash"),
        ("ca-cert-hash", "kube.ca-cert-hash"),
        ("could not find a jws signature", "kube.token"),
        ("failed to verify jws signature", "kube.token"),
        ("token id", "kube.token"),
        ("bootstrap token", "kube.token"),
        ("certificate-key", "kube.certificate-key"),
        ("certificate key", "kube.certificate-key"),
        ("kubeadm-certs", "kube.certificate-key"),
        ("connection refused", "kube.endpoint"),
        ("no route to host", "kube.endpoint"),
        ("i/o timeout", "kube.endpoint"),
        ("podsubnet", "kube.pod-cidr"),
        ("servicesubnet", "kube.service-cidr"),
        ("node-labels", "kube.node-labels"),
        ("taint", "kube.node-taints"),
    ];
    PATTERNS.iter().find(|(p, _)| o.contains(p)).map(|(_, k)| *k)
}

/// `kubeadm init|join`, and on its failure the reset (see the module doc).
fn run_kubeadm(
    ctx: &Ctx<'_>,
    s: &KubeSettings,
    cfg: &KubeadmConfig,
    bin: &Path,
) -> Result<(), StepError> {
    let mut args: Vec<String> = cfg.argv[1..].to_vec();
    // the file as this process sees it (the same path on a node; under DIR with --root)
    let host = ctx.root.base().join(cfg.path.trim_start_matches('/'));
    for a in args.iter_mut().filter(|a| a.as_str() == cfg.path) {
        *a = host.display().to_string();
    }
    args.extend(extra_flags(&s.action(), ctx.root.base()));
    let name = format!("kubeadm/{}", args[0]);
    let t = Instant::now();
    let r = run_logged(ctx, s, bin, &args);
    let Err(why) = r else {
        record(ctx, &name, t, &Ok(format!("{} ok; output in {LOG}", cfg.argv[..2].join(" "))));
        return Ok(());
    };
    let key = key_of_failure(&why);
    let msg = match key {
        Some(k) => format!("{k}: {} failed: {why}", cfg.argv[..2].join(" ")),
        None => format!("{} failed: {why}", cfg.argv[..2].join(" ")),
    };
    record(ctx, &name, t, &Err(msg.clone()));
    let t = Instant::now();
    let reset = reset(ctx, s, bin, cfg);
    record(ctx, "kubeadm/reset", t, &reset);
    Err(StepError::msg(match reset {
        Ok(_) => format!("{msg}; reset (kubeadm reset -f), nothing half-joined is left"),
        Err(e) => format!("{msg}; and the reset failed too: {e}"),
    }))
}

/// `kubeadm reset -f`, then what it leaves: our conflist, the configuration (secrets), the
/// iptables chains of kube-proxy and the CNI plugins (live only).
fn reset(
    ctx: &Ctx<'_>,
    s: &KubeSettings,
    bin: &Path,
    cfg: &KubeadmConfig,
) -> Result<String, String> {
    let kubeadm = run_logged(ctx, s, bin, &["reset".into(), "-f".into()]);
    let mut done = vec!["kubeadm reset -f"];
    let mut errors = Vec::new();
    for p in [cni::CONFLIST_PATH, cfg.path] {
        match ctx.root.unstaged(|| ctx.root.remove(p)) {
            Ok(true) => done.push(p),
            Ok(false) => {}
            Err(e) => errors.push(format!("remove {p}: {}", crate::error::chain(&e))),
        }
    }
    if ctx.live() {
        match flush_iptables() {
            Ok(0) => {}
            Ok(_) => done.push("KUBE-*/CNI-* iptables chains"),
            Err(e) => errors.push(e),
        }
    }
    if let Err(e) = kubeadm {
        errors.insert(0, format!("kubeadm reset -f: {e}"));
    }
    if errors.is_empty() {
        Ok(format!("removed: {}", done.join(", ")))
    } else {
        Err(errors.join("; "))
    }
}

/// `iptables-save` without the `KUBE-*` and `CNI-*` chains and every rule that jumps to
/// them (what kube-proxy and the CNI plugins add; `kubeadm reset` leaves them). Returns
/// `None` when there are none.
pub fn without_kube_chains(save: &str) -> Option<String> {
    let ours = |w: &str| w.starts_with("KUBE-") || w.starts_with("CNI-");
    let mut changed = false;
    let mut out = String::new();
    for line in save.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let drop = match words.as_slice() {
            [chain, ..] if chain.starts_with(':') => ours(&chain[1..]),
            ["-A", chain, rest @ ..] => {
                ours(chain) || rest.windows(2).any(|w| matches!(w[0], "-j" | "-g") && ours(w[1]))
            }
            _ => false,
        };
        if drop {
            changed = true;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    changed.then_some(out)
}

fn flush_iptables() -> Result<usize, String> {
    let save = match Proc::new("iptables-save").stdin(Stdio::null()).output() {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => return Err(format!("iptables-save: {}", o.status)),
        // no iptables on the node: nothing of kube-proxy's either
        Err(_) => return Ok(0),
    };
    let Some(clean) = without_kube_chains(&save) else {
        return Ok(0);
    };
    let mut c = Proc::new("iptables-restore")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("iptables-restore: {e}"))?;
    if let Some(mut stdin) = c.stdin.take() {
        use std::io::Write as _;
        stdin.write_all(clean.as_bytes()).map_err(|e| format!("iptables-restore: {e}"))?;
    }
    let o = c.wait_with_output().map_err(|e| format!("iptables-restore: {e}"))?;
    if !o.status.success() {
        return Err(format!(
            "iptables-restore: {}: {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    Ok(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeadm_is_found_in_cabpk_and_plain_runcmds() {
        let sh = |s: &str| Command::Shell(s.into());
        let cabpk = sh("kubeadm join --config /run/kubeadm/kubeadm-join-config.yaml  && echo success > /run/cluster-api/bootstrap-success.complete");
        assert_eq!(
            kubeadm_in_runcmd(&[sh("echo pre"), cabpk]),
            Some(("join", Some("/run/kubeadm/kubeadm-join-config.yaml".into())))
        );
        let exec = Command::Exec(
            ["/usr/bin/kubeadm", "init", "--config=/tmp/k.yaml", "--upload-certs"]
                .map(String::from)
                .to_vec(),
        );
        assert_eq!(kubeadm_in_runcmd(&[exec]), Some(("init", Some("/tmp/k.yaml".into()))));
        assert_eq!(kubeadm_in_runcmd(&[sh("kubeadm join && x --config /y")]), Some(("join", None)));
        assert_eq!(kubeadm_in_runcmd(&[sh("kubeadm version"), sh("echo kubeadm init")]), None);
        assert_eq!(kubeadm_in_runcmd(&[sh("set -e; sudo kubeadm join")]), Some(("join", None)));
        assert_eq!(kubeadm_in_runcmd(&[sh("--config")]), None);
        assert_eq!(kubeadm_in_runcmd(&[sh("kubeadm init --config")]), Some(("init", None)));
    }

    #[test]
    fn failures_name_the_key_kubeadm_points_at() {
        let hash = "error execution phase preflight: couldn't validate the identity of the API Server: cluster CA found in cluster-info ConfigMap is invalid: none of the public keys \"sha256:aa\" are pinned";
        assert_eq!(key_of_failure(hash), Some("kube.ca-cert-hash"));
        let tok = "couldn't validate the identity of the API Server: could not find a JWS signature in the cluster-info ConfigMap for token ID \"abcdef\"";
        assert_eq!(key_of_failure(tok), Some("kube.token"));
        assert_eq!(
            key_of_failure("dial tcp 10.0.0.1:6443: connect: connection refused"),
            Some("kube.endpoint")
        );
        assert_eq!(key_of_failure("[ERROR Swap]: running with swap on is not supported"), None);
    }

    #[test]
    fn iptables_loses_only_the_kube_and_cni_chains_and_jumps_to_them() {
        let save = "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:CNI-abc - [0:0]\n-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n-A POSTROUTING -s 10.244.1.0/24 -j CNI-abc\n-A POSTROUTING -o eth0 -j MASQUERADE\n-A KUBE-SERVICES -j RETURN\nCOMMIT\n";
        let clean = without_kube_chains(save).unwrap();
        assert_eq!(
            clean,
            "*nat\n:PREROUTING ACCEPT [0:0]\n-A POSTROUTING -o eth0 -j MASQUERADE\nCOMMIT\n"
        );
        assert_eq!(without_kube_chains(&clean), None);
        // a chain whose name merely contains KUBE is someone else's
        assert_eq!(
            without_kube_chains("*filter\n:MYKUBE-X - [0:0]\n-A INPUT -j MYKUBE-X\nCOMMIT\n"),
            None
        );
    }

    #[test]
    fn the_template_without_crictl_gets_kubeadm_told_so() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(extra_flags(&Action::Init, d.path()), vec![SKIP_PHASES_NO_CRICTL]);
        assert_eq!(extra_flags(&Action::JoinControlPlane, d.path()), vec![SKIP_PREFLIGHT]);
        assert_eq!(extra_flags(&Action::JoinWorker, d.path()), vec![IGNORE_NO_CRICTL]);
        std::fs::create_dir_all(d.path().join("usr/bin")).unwrap();
        std::fs::write(d.path().join("usr/bin/crictl"), "").unwrap();
        assert_eq!(extra_flags(&Action::Init, d.path()), vec![SKIP_PHASES]);
        assert!(extra_flags(&Action::JoinWorker, d.path()).is_empty());
        assert!(extra_flags(&Action::JoinControlPlane, d.path()).is_empty());
    }
}
