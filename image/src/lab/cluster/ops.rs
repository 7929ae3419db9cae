//! What `capstan lab cluster` does: `create` (namespace and bridge, forwarder, PKI, the lb
//! pair, then control planes registered with the lb pair, then workers), `scale`, `delete`
//! and the kubeconfig. Each step that changes something is saved in the record before the
//! next one, so `delete` can clean up after an interrupted `create`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use capstan_agent::cloudinit::cabpk::Kind;
use serde::{Deserialize, Serialize};

use super::plan::{self, ClusterName, Plan, Role, VmPlan, API_PORT, PREFIX};
use super::state::{self, ClusterRecord, VmRecord};
use super::{cabpk, capv, forward, lb, net, pki, vm};
use crate::lab::{qemu, Accel};

/// How the VMs run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The state dir (records under `clusters/`).
    pub state_dir: PathBuf,
    /// Accelerator (`Auto` probes KVM once).
    pub accel: Accel,
    /// Memory of an lb appliance, MiB.
    pub lb_memory_mib: u64,
    /// Memory of a node, MiB.
    pub node_memory_mib: u64,
    /// vCPUs per VM.
    pub cpus: u32,
    /// Longest wait for one VM's ready report.
    pub timeout: Duration,
    /// Cache dir (KVM probe verdict).
    pub cache: PathBuf,
}

/// The secrets of a cluster (`secrets.json`, 0600).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Secrets {
    token: String,
    lb_api_token: String,
    vrrp_secret: String,
}

/// What happened to one VM, for `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct VmReport {
    /// Name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Address.
    pub ip: std::net::Ipv4Addr,
    /// MAC.
    pub mac: String,
    /// QEMU's pid.
    pub pid: u32,
    /// Seconds from the command's start to QEMU's start.
    pub started_at: f64,
    /// Seconds from QEMU's start to the ready report.
    pub ready_seconds: f64,
    /// Seconds to register it with both lb appliances (control planes).
    pub backend_seconds: Option<f64>,
}

/// What `create` or `scale` did.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Cluster.
    pub name: String,
    /// Its namespace.
    pub netns: String,
    /// The VIP.
    pub vip: std::net::Ipv4Addr,
    /// The host's port to the VIP.
    pub host_port: u16,
    /// The kubeconfig.
    pub kubeconfig: PathBuf,
    /// The VMs this command started (`scale`: only the new ones).
    pub vms: Vec<VmReport>,
    /// The VMs this command stopped (`scale` down).
    pub removed: Vec<String>,
    /// Seconds the command took.
    pub seconds: f64,
}

/// A running command: the record, its directory, secrets and the clock.
struct Run<'a> {
    opts: &'a Options,
    dir: PathBuf,
    rec: ClusterRecord,
    secrets: Secrets,
    pki: pki::Pki,
    ca_hash: String,
    accel: Accel,
    clock: Instant,
    progress: &'a dyn Fn(&str),
    report: Vec<VmReport>,
}

fn random(n: usize) -> anyhow::Result<String> {
    let mut s = String::new();
    while s.len() < n {
        s.extend(pki::new_token()?.chars().filter(|c| *c != '.'));
    }
    s.truncate(n);
    Ok(s)
}

fn resolve_accel(opts: &Options, work: &Path) -> Accel {
    match opts.accel {
        Accel::Auto => qemu::probe_kvm(&qemu::host_kernel(), &opts.cache, work),
        a => a,
    }
}

fn kubeconfig_text(name: &str, port: u16, p: &pki::Pki) -> String {
    use base64::Engine as _;
    let b = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {name}\n  cluster:\n    server: https://127.0.0.1:{port}\n    certificate-authority-data: {}\nusers:\n- name: {name}-admin\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: {name}-admin@{name}\n  context:\n    cluster: {name}\n    user: {name}-admin\ncurrent-context: {name}-admin@{name}\n",
        b(&p.ca.cert),
        b(&p.admin.cert),
        b(&p.admin.key)
    )
}

/// The kubeconfig's path in a cluster's directory.
pub fn kubeconfig_path(dir: &Path) -> PathBuf {
    dir.join("kubeconfig")
}

fn header_path(dir: &Path) -> PathBuf {
    dir.join("lb-api.header")
}

/// Starts the forwarder (this binary, `lab cluster forward`) and waits until it listens.
fn start_forwarder(dir: &Path, netns: &str, port: u16, to: SocketAddr) -> anyhow::Result<u32> {
    use std::os::unix::process::CommandExt as _;
    let exe = std::env::current_exe().context("finding the capstan binary")?;
    let log = std::fs::File::create(dir.join("forward.log"))?;
    let child = Command::new(exe)
        .args(["lab", "cluster", "forward", "--netns", netns])
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--to")
        .arg(to.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting the forwarder")?;
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if started.elapsed() > Duration::from_secs(5) {
            bail!(
                "the forwarder does not listen on 127.0.0.1:{port}; see {}/forward.log",
                dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(child.id())
}

impl Run<'_> {
    fn save(&self) -> anyhow::Result<()> {
        state::save(&self.dir, &self.rec)
    }

    fn say(&self, vm: &str, what: &str) {
        (self.progress)(&format!("[{:6.1}s] {vm}: {what}", self.clock.elapsed().as_secs_f64()));
    }

    fn bootstrap(&self, v: &VmPlan) -> cabpk::Bootstrap<'_> {
        cabpk::Bootstrap {
            cluster: self.rec.name.as_str(),
            endpoint: format!("{}:{API_PORT}", self.rec.vip),
            node_ip: v.ip,
            token: &self.secrets.token,
            ca_cert_hash: &self.ca_hash,
            pod_cidr: capstan_agent::roles::kube::settings::DEFAULT_POD_CIDR,
            service_cidr: capstan_agent::roles::kube::settings::DEFAULT_SERVICE_CIDR,
            pki: &self.pki,
        }
    }

    /// Starts `v` (tap, QEMU) and records it.
    fn start(&mut self, v: &VmPlan, kind: Option<Kind>) -> anyhow::Result<vm::Started> {
        net::add_tap(&self.rec.netns, &v.tap)?;
        let (image, memory, userdata, guestinfo) = match (v.role, kind) {
            (Role::Lb, _) => {
                let peer =
                    self.lb_ips().into_iter().find(|ip| *ip != v.ip).context("the lb pair")?;
                let s = &self.secrets;
                let gi = lb::settings(v.index, self.rec.vip, peer, &s.vrrp_secret, &s.lb_api_token);
                (self.rec.lb_image.clone(), self.opts.lb_memory_mib, None, gi)
            }
            (_, Some(kind)) => {
                let ud = cabpk::render(kind, &self.bootstrap(v));
                (self.rec.node_image.clone(), self.opts.node_memory_mib, Some(ud), Vec::new())
            }
            (_, None) => bail!("{}: a node needs a bootstrap kind", v.name),
        };
        let boot = vm::Boot {
            image: &image,
            dir: self.dir.join(&v.name),
            vm: v,
            netns: &self.rec.netns,
            metadata: capv::render(v, self.rec.bridge_ip),
            userdata,
            guestinfo,
            accel: self.accel,
            memory_mib: memory,
            cpus: self.opts.cpus,
        };
        let s = vm::start(&boot)?;
        self.rec.vms.push(VmRecord {
            plan: v.clone(),
            uuid: s.uuid.clone(),
            dir: boot.dir.clone(),
            pid: Some(s.pid),
            backend: false,
            ready_seconds: None,
        });
        self.save()?;
        self.say(&v.name, &format!("started ({}, pid {}, {})", v.ip, s.pid, boot.dir.display()));
        Ok(s)
    }

    fn lb_ips(&self) -> Vec<std::net::Ipv4Addr> {
        plan::plan(&self.rec.name, 1, 0)
            .map(|p| p.of(Role::Lb).map(|l| l.ip).collect())
            .unwrap_or_default()
    }

    /// Waits for `v`'s ready report and (control planes) registers it with the lb pair.
    fn ready(&mut self, v: &VmPlan, s: &vm::Started) -> anyhow::Result<()> {
        let secs = vm::wait_ready(&v.name, s, self.opts.timeout)?;
        self.say(&v.name, &format!("ready after {secs:.1}s"));
        let mut backend_seconds = None;
        if v.role == Role::ControlPlane {
            let t = Instant::now();
            let backend = SocketAddr::from((v.ip, API_PORT));
            for l in self.lb_ips() {
                lb::add_backend(&self.rec.netns, &header_path(&self.dir), l, backend)?;
            }
            backend_seconds = Some(t.elapsed().as_secs_f64());
            self.say(&v.name, &format!("registered as backend {backend} with the lb pair"));
        }
        if v.role == Role::Lb {
            lb::wait_api(&self.rec.netns, &header_path(&self.dir), v.ip, Duration::from_secs(60))?;
            self.say(&v.name, "backend API answers");
        }
        if let Some(r) = self.rec.vms.iter_mut().find(|r| r.plan.name == v.name) {
            r.ready_seconds = Some(secs);
            r.backend = backend_seconds.is_some();
        }
        self.save()?;
        self.report.push(VmReport {
            name: v.name.clone(),
            role: v.role,
            ip: v.ip,
            mac: v.mac.clone(),
            pid: s.pid,
            started_at: (s.at - self.clock).as_secs_f64(),
            ready_seconds: secs,
            backend_seconds,
        });
        Ok(())
    }

    /// Starts `vms` together, then waits for each.
    fn batch(
        &mut self,
        vms: &[VmPlan],
        kind: impl Fn(&VmPlan) -> Option<Kind>,
    ) -> anyhow::Result<()> {
        let mut started = Vec::new();
        for v in vms {
            started.push((v.clone(), self.start(v, kind(v))?));
        }
        for (v, s) in &started {
            self.ready(v, s)?;
        }
        Ok(())
    }
}

/// Creates cluster `name` and boots it: the lb pair, the first control plane (init), the
/// other control planes (join), the workers (join).
pub fn create(
    opts: &Options,
    name: &ClusterName,
    images: (&Path, &Path),
    counts: (u32, u32),
    progress: &dyn Fn(&str),
) -> anyhow::Result<Report> {
    let clock = Instant::now();
    let plan = plan::plan(name, counts.0, counts.1)?;
    for image in [images.0, images.1] {
        if !image.is_file() {
            bail!("{}: no such template (build it with `capstan build`)", image.display());
        }
    }
    let netns = name.netns();
    if net::exists(&netns)? {
        bail!(
            "network namespace {netns} exists already: `capstan lab cluster delete {name}` first"
        );
    }
    let dir = state::create_dir(&opts.state_dir, name)?;
    let rec = ClusterRecord {
        name: name.clone(),
        netns: netns.clone(),
        bridge_ip: plan.bridge_ip,
        vip: plan.vip,
        host_port: 0,
        forwarder_pid: None,
        lb_image: std::path::absolute(images.0)?,
        node_image: std::path::absolute(images.1)?,
        vms: Vec::new(),
    };
    state::save(&dir, &rec)?;
    progress(&format!("cluster {name}: {} in {}, state {}", plan.vip, netns, dir.display()));
    let pki = pki::generate(&dir.join("pki"))?;
    let secrets =
        Secrets { token: pki::new_token()?, lb_api_token: random(32)?, vrrp_secret: random(8)? };
    state::write_secret(&dir.join("secrets.json"), &serde_json::to_vec(&secrets)?)?;
    state::write_secret(
        &header_path(&dir),
        format!("Authorization: Bearer {}\n", secrets.lb_api_token).as_bytes(),
    )?;
    let ca_hash = pki::ca_cert_hash(&pki.ca.cert)?;
    let accel = resolve_accel(opts, &dir);
    let mut run =
        Run { opts, dir, rec, secrets, pki, ca_hash, accel, clock, progress, report: Vec::new() };
    net::create(&netns, plan.bridge_ip, PREFIX)?;
    let port = forward::free_port()?;
    run.rec.forwarder_pid =
        Some(start_forwarder(&run.dir, &netns, port, SocketAddr::from((plan.vip, API_PORT)))?);
    run.rec.host_port = port;
    run.save()?;
    state::write_secret(
        &kubeconfig_path(&run.dir),
        kubeconfig_text(name.as_str(), port, &run.pki).as_bytes(),
    )?;
    progress(&format!(
        "cluster {name}: 127.0.0.1:{port} forwards to {}, accel {accel:?}",
        plan.endpoint()
    ));
    boot(&mut run, &plan)?;
    Ok(finish(run, Vec::new()))
}

fn boot(run: &mut Run<'_>, plan: &Plan) -> anyhow::Result<()> {
    let have: Vec<String> = run.rec.vms.iter().map(|v| v.plan.name.clone()).collect();
    let new = |role| -> Vec<VmPlan> {
        plan.of(role).filter(|v| !have.contains(&v.name)).cloned().collect()
    };
    run.batch(&new(Role::Lb), |_| None)?;
    let cps = new(Role::ControlPlane);
    let init = cps.first().filter(|v| v.index == 0).cloned();
    if let Some(first) = &init {
        run.batch(std::slice::from_ref(first), |_| Some(Kind::Init))?;
    }
    let joins: Vec<VmPlan> = cps.into_iter().filter(|v| Some(v) != init.as_ref()).collect();
    run.batch(&joins, |_| Some(Kind::JoinControlPlane))?;
    run.batch(&new(Role::Worker), |_| Some(Kind::JoinWorker))
}

fn finish(run: Run<'_>, removed: Vec<String>) -> Report {
    Report {
        name: run.rec.name.to_string(),
        netns: run.rec.netns.clone(),
        vip: run.rec.vip,
        host_port: run.rec.host_port,
        kubeconfig: kubeconfig_path(&run.dir),
        vms: run.report,
        removed,
        seconds: run.clock.elapsed().as_secs_f64(),
    }
}

fn open<'a>(
    opts: &'a Options,
    name: &ClusterName,
    progress: &'a dyn Fn(&str),
) -> anyhow::Result<Run<'a>> {
    let (dir, rec) = state::load(&opts.state_dir, name)?;
    let secrets: Secrets = serde_json::from_slice(&std::fs::read(dir.join("secrets.json"))?)
        .with_context(|| format!("{}/secrets.json", dir.display()))?;
    let pki = pki::load(&dir.join("pki"))?;
    let ca_hash = pki::ca_cert_hash(&pki.ca.cert)?;
    let accel = resolve_accel(opts, &dir);
    Ok(Run {
        opts,
        dir,
        rec,
        secrets,
        pki,
        ca_hash,
        accel,
        clock: Instant::now(),
        progress,
        report: Vec::new(),
    })
}

/// Stops one VM by its recorded pid (if it still runs the recorded command line) and
/// removes its tap and directory.
fn stop_vm(netns: &str, v: &VmRecord) -> anyhow::Result<()> {
    if let Some(pid) = v.pid {
        let argv = crate::lab::state::read_argv(&v.dir).unwrap_or_default();
        if !argv.is_empty() && crate::lab::state::runs(pid, &argv) {
            let p = nix::unistd::Pid::from_raw(i32::try_from(pid)?);
            let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
            let t = Instant::now();
            while crate::lab::state::runs(pid, &argv) && t.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    net::del_tap(netns, &v.plan.tap)?;
    match std::fs::remove_dir_all(&v.dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

/// Scales cluster `name` to `workers` (and `control_planes`, if given): new VMs boot as in
/// `create`; removed control planes leave the lb pair's backends first, then stop.
pub fn scale(
    opts: &Options,
    name: &ClusterName,
    control_planes: Option<u32>,
    workers: u32,
    progress: &dyn Fn(&str),
) -> anyhow::Result<Report> {
    let mut run = open(opts, name, progress)?;
    let now = u32::try_from(run.rec.of(Role::ControlPlane).count())?;
    let cps = control_planes.unwrap_or(now);
    let plan = plan::plan(name, cps, workers)?;
    let gone: Vec<VmRecord> =
        run.rec.vms.iter().filter(|v| !plan.vms.contains(&v.plan)).cloned().collect();
    let mut removed = Vec::new();
    // workers first, then control planes from the highest index, as Cluster API does
    for v in gone.iter().rev() {
        if v.backend {
            let backend = SocketAddr::from((v.plan.ip, API_PORT));
            for l in run.lb_ips() {
                lb::remove_backend(&run.rec.netns, &header_path(&run.dir), l, backend)?;
            }
            run.say(&v.plan.name, &format!("removed backend {backend} from the lb pair"));
        }
        stop_vm(&run.rec.netns, v)?;
        run.rec.vms.retain(|r| r.plan.name != v.plan.name);
        run.save()?;
        run.say(&v.plan.name, "stopped and removed");
        removed.push(v.plan.name.clone());
    }
    boot(&mut run, &plan)?;
    Ok(finish(run, removed))
}

/// What `delete` did.
#[derive(Debug, Clone, Serialize)]
pub struct Deleted {
    /// Cluster.
    pub name: String,
    /// VMs stopped.
    pub vms: Vec<String>,
    /// Whether the namespace existed.
    pub netns_removed: bool,
}

/// Stops every VM and the forwarder, removes the namespace (bridge and taps with it) and the
/// cluster's directory. Safe to repeat, and after a `create` that failed half way.
pub fn delete(opts: &Options, name: &ClusterName) -> anyhow::Result<Deleted> {
    let (dir, rec) = state::load(&opts.state_dir, name)?;
    let mut vms = Vec::new();
    for v in &rec.vms {
        stop_vm(&rec.netns, v)?;
        vms.push(v.plan.name.clone());
    }
    let existed = net::exists(&rec.netns)?;
    // the forwarder and anything else left in the namespace end with it
    net::delete(&rec.netns, Duration::from_secs(5))?;
    if let Some(pid) = rec.forwarder_pid {
        if std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| c.windows(7).any(|w| w == b"forward"))
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(i32::try_from(pid)?),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    Ok(Deleted { name: name.to_string(), vms, netns_removed: existed })
}

/// One line of `list`.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    /// Cluster.
    pub name: String,
    /// VIP.
    pub vip: std::net::Ipv4Addr,
    /// Host port to the VIP.
    pub host_port: u16,
    /// VMs by name, with whether QEMU still runs.
    pub vms: Vec<(String, Role, bool)>,
    /// The kubeconfig.
    pub kubeconfig: PathBuf,
}

/// The clusters in the state dir.
pub fn list(opts: &Options) -> anyhow::Result<Vec<Listed>> {
    let mut out = Vec::new();
    for name in state::list(&opts.state_dir)? {
        let (dir, rec) = state::load(&opts.state_dir, &name)?;
        let vms = rec
            .vms
            .iter()
            .map(|v| {
                let argv = crate::lab::state::read_argv(&v.dir).unwrap_or_default();
                let up =
                    v.pid.is_some_and(|p| !argv.is_empty() && crate::lab::state::runs(p, &argv));
                (v.plan.name.clone(), v.plan.role, up)
            })
            .collect();
        out.push(Listed {
            name: name.to_string(),
            vip: rec.vip,
            host_port: rec.host_port,
            vms,
            kubeconfig: kubeconfig_path(&dir),
        });
    }
    Ok(out)
}

/// The kubeconfig of `name` (it must exist).
pub fn kubeconfig(opts: &Options, name: &ClusterName) -> anyhow::Result<PathBuf> {
    let (dir, _) = state::load(&opts.state_dir, name)?;
    let p = kubeconfig_path(&dir);
    if !p.is_file() {
        bail!("cluster {name} has no kubeconfig yet ({} missing)", p.display());
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(dir: &Path) -> Options {
        Options {
            state_dir: dir.to_path_buf(),
            accel: Accel::Tcg,
            lb_memory_mib: 512,
            node_memory_mib: 2048,
            cpus: 1,
            timeout: Duration::from_secs(1),
            cache: dir.join("cache"),
        }
    }

    #[test]
    fn a_missing_template_is_refused_before_anything_is_made() {
        let t = tempfile::tempdir().unwrap();
        let name: ClusterName = "nothing".parse().unwrap();
        let missing = t.path().join("lb.ova");
        let e = create(&opts(t.path()), &name, (&missing, &missing), (1, 0), &|_| {})
            .unwrap_err()
            .to_string();
        assert!(e.contains("lb.ova: no such template"), "{e}");
        assert!(!state::cluster_dir(t.path(), &name).exists());
        assert!(!net::exists(&name.netns()).unwrap());
    }

    #[test]
    fn delete_cleans_up_after_a_create_that_stopped_half_way() {
        let t = tempfile::tempdir().unwrap();
        let name: ClusterName = "half".parse().unwrap();
        let dir = state::create_dir(t.path(), &name).unwrap();
        let p = plan::plan(&name, 1, 0).unwrap();
        let rec = ClusterRecord {
            name: name.clone(),
            netns: format!("capstan-half-{}", std::process::id()),
            bridge_ip: p.bridge_ip,
            vip: p.vip,
            host_port: 0,
            forwarder_pid: None,
            lb_image: "lb.ova".into(),
            node_image: "node.ova".into(),
            vms: vec![VmRecord {
                plan: p.vms[0].clone(),
                uuid: "u".into(),
                dir: dir.join("half-lb-0"),
                pid: None,
                backend: false,
                ready_seconds: None,
            }],
        };
        state::save(&dir, &rec).unwrap();
        // the namespace was made, the VM never started
        net::create(&rec.netns, p.bridge_ip, PREFIX).unwrap();
        let d = delete(&opts(t.path()), &name).unwrap();
        assert!(d.netns_removed);
        assert!(!net::exists(&rec.netns).unwrap());
        assert!(!dir.exists());
        let e = delete(&opts(t.path()), &name).unwrap_err().to_string();
        assert!(e.starts_with("no lab cluster half"), "{e}");
    }
}
