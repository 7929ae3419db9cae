//! `capstan-hub`: a thin shell over the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use capstan_hub::remedy::{Action, RemedyConfig};
use capstan_hub::server::ServeOptions;
use capstan_hub::tracker::node::Policy;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "capstan-hub",
    version,
    about = "Receives Capstan heartbeats, tracks node health, remediates once per episode"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Certificates for the hub and its nodes.
    #[command(subcommand)]
    Certs(CertsCmd),
    /// Runs the hub.
    Serve(Box<Serve>),
    /// Lists the nodes a hub knows.
    Nodes(Nodes),
    /// Simulates nodes against a hub (load and tests).
    Simulate(Simulate),
}

#[derive(Subcommand)]
enum CertsCmd {
    /// A CA and the hub's serving certificate: DIR/ca.pem, ca-key.pem, hub.pem, hub-key.pem.
    Init {
        /// The directory.
        dir: PathBuf,
        /// A name or address the hub is reached by (repeat).
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
    },
    /// A node's client certificate: DIR/NAME.pem and DIR/NAME-key.pem.
    Node {
        /// The directory of `certs init`.
        dir: PathBuf,
        /// The node's instance-id.
        name: String,
    },
}

/// A duration: `200ms`, `10s`, `5m`, `1h`, or plain seconds.
fn duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.find(|c: char| c.is_ascii_alphabetic()).map_or((s, "s"), |i| s.split_at(i));
    let n: f64 =
        n.trim().parse().map_err(|_| format!("{s:?} is not a duration (200ms, 10s, 5m, 1h)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?}")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{s:?} is not a duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[derive(clap::Args)]
struct Serve {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:7443")]
    listen: SocketAddr,
    /// `sqlite:PATH` or `postgres://…`.
    #[arg(long)]
    db: String,
    /// The serving certificate (PEM).
    #[arg(long)]
    tls_cert: PathBuf,
    /// Its key.
    #[arg(long)]
    tls_key: PathBuf,
    /// The CA that signs node certificates.
    #[arg(long)]
    client_ca: PathBuf,
    /// Bearer tokens: `NAME TOKEN` per line (`@read` for read-only).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// none | exec:CMD | vsphere:CONFIG.json | lab:DIR
    #[arg(long, default_value = "none")]
    remediate: String,
    /// The nodes' heartbeat interval.
    #[arg(long, default_value = "10s", value_parser = duration)]
    interval: Duration,
    /// Intervals of silence before unhealthy.
    #[arg(long, default_value_t = 6)]
    unhealthy_after: u32,
    /// No judgement for this long after a remediation.
    #[arg(long, default_value = "120s", value_parser = duration)]
    grace: Duration,
    /// Remediations per node per window before it is flagged for a person.
    #[arg(long, default_value_t = 3)]
    max_actions: usize,
    /// The per-node window.
    #[arg(long, default_value = "1h", value_parser = duration)]
    action_window: Duration,
    /// Remediations running at once.
    #[arg(long, default_value_t = 5)]
    max_in_flight: usize,
    /// Remediations started per minute.
    #[arg(long, default_value_t = 10)]
    per_minute: usize,
    /// An action's time limit.
    #[arg(long, default_value = "60s", value_parser = duration)]
    action_timeout: Duration,
}

#[derive(clap::Args)]
struct Nodes {
    /// The hub.
    #[arg(long, default_value = "https://127.0.0.1:7443")]
    hub: String,
    /// The hub's CA.
    #[arg(long)]
    ca: PathBuf,
    /// A client certificate (with --key).
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// Its key.
    #[arg(long)]
    key: Option<PathBuf>,
    /// A file holding a bearer token.
    #[arg(long, conflicts_with = "cert")]
    token_file: Option<PathBuf>,
    /// Print the JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct Simulate {
    /// The hub.
    #[arg(long)]
    hub: String,
    /// The directory of `certs init`.
    #[arg(long)]
    certs: PathBuf,
    /// Nodes.
    #[arg(long, default_value_t = 10)]
    nodes: usize,
    /// Mean interval.
    #[arg(long, default_value = "1s", value_parser = duration)]
    interval: Duration,
    /// How long.
    #[arg(long, default_value = "10s", value_parser = duration)]
    duration: Duration,
    /// Nodes that fall silent halfway.
    #[arg(long, default_value_t = 0)]
    kill: usize,
    /// Longest gap between sends, in intervals.
    #[arg(long, default_value_t = 1.0)]
    gap_max: f64,
    /// Fraction of heartbeats dropped.
    #[arg(long, default_value_t = 0.0)]
    drop: f64,
    /// Node id prefix.
    #[arg(long, default_value = "sim")]
    prefix: String,
    /// Role reported.
    #[arg(long, default_value = "sim")]
    role: String,
    /// Send as fast as possible (benches).
    #[arg(long)]
    flood: bool,
    /// Print the JSON report.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("capstan-hub: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Certs(CertsCmd::Init { dir, hosts }) => {
            capstan_hub::certs::init(&dir, &hosts)?;
            println!("{}: ca.pem ca-key.pem hub.pem hub-key.pem", dir.display());
        }
        Cmd::Certs(CertsCmd::Node { dir, name }) => {
            let (c, k) = capstan_hub::certs::node(&dir, &name)?;
            println!(
                "heartbeat.ca = {}\nheartbeat.cert = {}\nheartbeat.key = {}",
                dir.join("ca.pem").display(),
                c.display(),
                k.display()
            );
        }
        Cmd::Serve(s) => {
            let mut remedy = RemedyConfig::new(Action::parse(&s.remediate)?);
            remedy.grace = s.grace;
            remedy.max_per_window = s.max_actions;
            remedy.window = s.action_window;
            remedy.max_in_flight = s.max_in_flight;
            remedy.per_minute = s.per_minute;
            remedy.timeout = s.action_timeout;
            anyhow::ensure!(!s.interval.is_zero(), "--interval must be more than 0");
            anyhow::ensure!(
                s.unhealthy_after > 2,
                "--unhealthy-after must be more than 2 (suspect comes at 2)"
            );
            let policy = Policy {
                interval: s.interval,
                suspect_after: 2,
                unhealthy_after: s.unhealthy_after,
                recover_after: 3,
            };
            let opts = ServeOptions {
                listen: s.listen,
                db: s.db,
                tls_cert: s.tls_cert,
                tls_key: s.tls_key,
                client_ca: s.client_ca,
                token_file: s.token_file,
                policy,
                remedy,
            };
            runtime()?.block_on(capstan_hub::server::run(opts))?;
        }
        Cmd::Nodes(n) => runtime()?.block_on(nodes(n))?,
        Cmd::Simulate(s) => {
            let json = s.json;
            let opts = capstan_hub::simulate::SimOptions {
                hub: s.hub,
                certs: s.certs,
                nodes: s.nodes,
                interval: s.interval,
                duration: s.duration,
                kill: s.kill,
                gap_max: s.gap_max,
                drop: s.drop,
                prefix: s.prefix,
                role: s.role,
                flood: s.flood,
            };
            let r = runtime()?.block_on(capstan_hub::simulate::run(opts))?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "sent {} accepted {} refused {} failed {} dropped {}; {:.0}/s; p50 {} µs p99 {} µs",
                    r.sent, r.accepted, r.refused, r.failed, r.dropped, r.per_second, r.p50_us, r.p99_us
                );
            }
        }
    }
    Ok(())
}

async fn nodes(n: Nodes) -> anyhow::Result<()> {
    use capstan_agent::heartbeat::client::{read_certs, Client, Credential};
    let ca = read_certs(&n.ca)?;
    let cred = match (&n.cert, &n.key, &n.token_file) {
        (Some(c), Some(k), _) => Credential::from_files(c, k)?,
        (_, _, Some(t)) => {
            let tok =
                std::fs::read_to_string(t).with_context(|| format!("reading {}", t.display()))?;
            Credential::Token(tok.trim().to_owned())
        }
        _ => Credential::None,
    };
    let mut client = Client::new(&n.hub, &ca, cred, Duration::from_secs(10))?;
    let (status, body) = client.request(hyper::Method::GET, "/v1/nodes", Vec::new()).await?;
    anyhow::ensure!(
        status.is_success(),
        "{}: {status}: {}",
        n.hub,
        String::from_utf8_lossy(&body).trim()
    );
    if n.json {
        println!("{}", String::from_utf8_lossy(&body).trim());
        return Ok(());
    }
    let v: serde_json::Value = serde_json::from_slice(&body).context("the hub's answer")?;
    let now = v["now_ms"].as_u64().unwrap_or(0);
    println!(
        "{:<24} {:<16} {:<8} {:<10} {:>8} {:>5}  WHY",
        "NODE", "HOSTNAME", "ROLE", "STATE", "LAST", "REM"
    );
    for node in v["nodes"].as_array().into_iter().flatten() {
        let ago = now.saturating_sub(node["last_seen_ms"].as_u64().unwrap_or(0)) / 1000;
        println!(
            "{:<24} {:<16} {:<8} {:<10} {:>7}s {:>5}  {}",
            node["id"].as_str().unwrap_or(""),
            node["hostname"].as_str().unwrap_or(""),
            node["role"].as_str().unwrap_or(""),
            node["state"].as_str().unwrap_or(""),
            ago,
            node["remediations"].as_u64().unwrap_or(0),
            node["reason"].as_str().unwrap_or(""),
        );
    }
    Ok(())
}
