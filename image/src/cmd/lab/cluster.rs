//! `capstan lab cluster create|scale|delete|list|kubeconfig`: Cluster API + CAPV played on
//! this machine ([`crate::lab::cluster`]).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::AccelArg;
use crate::lab::cluster::ops::{self, Options};
use crate::lab::cluster::plan::ClusterName;
use crate::lab::{self, Accel};

/// `capstan lab cluster` subcommands.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Create a cluster and boot it: a network namespace `capstan-NAME` with a bridge (the
    /// VMs' private L2, 10.77.0.0/24), the two lb appliances holding the VIP 10.77.0.10,
    /// then the control planes (the first runs `kubeadm init`, each is added to the lb pair's
    /// backends through their API once ready), then the workers. Every node gets CAPV's
    /// guestinfo.metadata (static address, matched by MAC) and CABPK's guestinfo.userdata.
    /// Progress goes to stderr, one line per VM step.
    Create(CreateArgs),
    /// Add or remove workers (and control planes): new VMs boot as in `create`; a removed
    /// control plane leaves the lb pair's backends before it stops.
    Scale(ScaleArgs),
    /// Stop every VM and the port forwarder, remove the namespace (bridge, taps) and the
    /// cluster's directory. Safe to repeat, and after a failed `create`.
    Delete(NameArgs),
    /// The clusters in the state dir, with their VMs and whether each runs.
    List(CommonArgs),
    /// Print the path of the cluster's admin kubeconfig; it reaches the API through a
    /// loopback port on this host that the lab forwards to the VIP
    /// (`kubectl --kubeconfig "$(capstan lab cluster kubeconfig NAME)" get nodes`).
    Kubeconfig(NameArgs),
    /// (internal) The loopback → VIP forwarder `create` starts.
    #[command(hide = true)]
    Forward(ForwardArgs),
}

/// Flags every subcommand takes.
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// Where cluster records live (DIR/clusters/NAME/: cluster.json, PKI, kubeconfig, one
    /// directory per VM).
    #[arg(long, value_name = "DIR", default_value = lab::state::DEFAULT_DIR)]
    pub state_dir: PathBuf,
    /// Print the result as JSON (create/scale: each VM's timings).
    #[arg(long)]
    pub json: bool,
}

/// A cluster name and the common flags.
#[derive(Debug, Args)]
pub struct NameArgs {
    /// The cluster: a DNS label of at most 20 characters.
    pub name: ClusterName,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// How VMs run.
#[derive(Debug, Args)]
pub struct VmArgs {
    /// Accelerator.
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: AccelArg,
    /// Memory of each lb appliance, MiB.
    #[arg(long, default_value_t = 512)]
    pub lb_memory: u64,
    /// Memory of each node, MiB (kubeadm wants 1700 on a control plane).
    #[arg(long, default_value_t = 2048)]
    pub node_memory: u64,
    /// vCPUs per VM.
    #[arg(long, default_value_t = 2)]
    pub cpus: u32,
    /// Longest wait for one VM's ready report, seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
}

/// Arguments of `create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The cluster: a DNS label of at most 20 characters.
    pub name: ClusterName,
    /// The lb template (OVA from `capstan build lb`).
    #[arg(long, value_name = "OVA")]
    pub lb_image: PathBuf,
    /// The node template (OVA from `capstan build node`).
    #[arg(long, value_name = "OVA")]
    pub node_image: PathBuf,
    /// Control planes (odd, 1..7: stacked etcd).
    #[arg(long, default_value_t = 1)]
    pub control_planes: u32,
    /// Workers (0..50).
    #[arg(long, default_value_t = 1)]
    pub workers: u32,
    #[command(flatten)]
    pub vm: VmArgs,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Arguments of `scale`.
#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// The cluster.
    pub name: ClusterName,
    /// Workers wanted.
    #[arg(long)]
    pub workers: u32,
    /// Control planes wanted (default: as now).
    #[arg(long)]
    pub control_planes: Option<u32>,
    #[command(flatten)]
    pub vm: VmArgs,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Arguments of the forwarder.
#[derive(Debug, Args)]
pub struct ForwardArgs {
    /// The cluster's namespace.
    #[arg(long)]
    pub netns: String,
    /// Host address to listen on.
    #[arg(long)]
    pub listen: std::net::SocketAddr,
    /// Address in the namespace to connect to.
    #[arg(long)]
    pub to: std::net::SocketAddr,
}

fn options(common: &CommonArgs, vm: Option<&VmArgs>) -> Options {
    Options {
        state_dir: common.state_dir.clone(),
        accel: vm.map_or(Accel::Auto, |v| super::accel(v.accel)),
        lb_memory_mib: vm.map_or(512, |v| v.lb_memory),
        node_memory_mib: vm.map_or(2048, |v| v.node_memory),
        cpus: vm.map_or(2, |v| v.cpus),
        timeout: Duration::from_secs(vm.map_or(600, |v| v.timeout)),
        cache: crate::cache::default_dir(),
    }
}

fn progress(line: &str) {
    eprintln!("{line}");
}

fn print_report(r: &ops::Report, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(r)?);
        return Ok(());
    }
    for v in &r.vms {
        println!(
            "{:<24} {:<13} {:<11} ready after {:.1}s",
            v.name,
            format!("{:?}", v.role),
            v.ip,
            v.ready_seconds
        );
    }
    println!(
        "cluster {} ready in {:.1}s; VIP {} as 127.0.0.1:{}",
        r.name, r.seconds, r.vip, r.host_port
    );
    println!("kubeconfig {}", r.kubeconfig.display());
    Ok(())
}

/// Runs a `capstan lab cluster` subcommand.
pub fn run(command: ClusterCommand) -> anyhow::Result<ExitCode> {
    match command {
        ClusterCommand::Create(a) => {
            let opts = options(&a.common, Some(&a.vm));
            let images = (a.lb_image.as_path(), a.node_image.as_path());
            let r = ops::create(&opts, &a.name, images, (a.control_planes, a.workers), &progress)
                .map_err(|e| {
                // a record means something was made: say how to remove it
                match lab::cluster::state::load(&opts.state_dir, &a.name) {
                    Ok(_) => e.context(format!(
                        "creating lab cluster {0} (`capstan lab cluster delete {0}` cleans up)",
                        a.name
                    )),
                    Err(_) => e.context(format!("creating lab cluster {}", a.name)),
                }
            })?;
            print_report(&r, a.common.json)?;
        }
        ClusterCommand::Scale(a) => {
            let opts = options(&a.common, Some(&a.vm));
            let r = ops::scale(&opts, &a.name, a.control_planes, a.workers, &progress)?;
            print_report(&r, a.common.json)?;
        }
        ClusterCommand::Delete(a) => {
            let d = ops::delete(&options(&a.common, None), &a.name)?;
            if a.common.json {
                println!("{}", serde_json::to_string_pretty(&d)?);
            } else {
                println!("deleted {} ({} VMs)", d.name, d.vms.len());
            }
        }
        ClusterCommand::List(c) => {
            let l = ops::list(&options(&c, None))?;
            if c.json {
                println!("{}", serde_json::to_string_pretty(&l)?);
            }
            for x in l.iter().filter(|_| !c.json) {
                let up = x.vms.iter().filter(|v| v.2).count();
                println!(
                    "{:<20} VIP {} as 127.0.0.1:{:<5} {up}/{} VMs running",
                    x.name,
                    x.vip,
                    x.host_port,
                    x.vms.len()
                );
            }
        }
        ClusterCommand::Kubeconfig(a) => {
            let p = ops::kubeconfig(&options(&a.common, None), &a.name)?;
            if a.common.json {
                println!("{}", serde_json::json!({ "kubeconfig": p }));
            } else {
                println!("{}", p.display());
            }
        }
        ClusterCommand::Forward(a) => {
            let l = std::net::TcpListener::bind(a.listen)?;
            lab::cluster::forward::serve(l, &a.netns, a.to)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
