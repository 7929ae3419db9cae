//! The `capstan-agent` command line: clap types and printing only. `main.rs` calls [`parse`],
//! then [`run`]; the commands call the engine ([`crate::boot`]) and the daemon
//! ([`crate::daemon`]), print what they return, and map it to the exit code in one place
//! ([`commands::exit_code`]); errors are printed once with their causes.

mod commands;

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::PathBuf;

use clap::error::ErrorKind;
use clap::{Args, Parser, Subcommand, ValueEnum};

pub use commands::{
    config_check, exit_code, firstboot, human_status, render, schema_json, status, CliError, Done,
};

/// Exit code: every step succeeded or was skipped.
pub const EXIT_OK: i32 = 0;
/// Exit code: bad usage, an unreadable file, or an invalid configuration (`config check`).
pub const EXIT_ERROR: i32 = 1;
/// Exit code: at least one step failed (the others still ran).
pub const EXIT_STEP_FAILED: i32 = 2;

/// The Capstan node agent.
#[derive(Debug, Parser)]
#[command(name = "capstan-agent", version, about)]
pub struct Cli {
    /// Log format: `text` (default on a terminal), `plain` (default otherwise: no colours or
    /// timestamps, for journald) or `json`.
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human, with colours.
    Text,
    /// One line per event, no colours, no timestamps (journald adds them).
    Plain,
    /// One JSON object per line.
    Json,
}

/// Which steps `firstboot` runs (the engine's [`crate::steps::Stage`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StageArg {
    /// Identity, network files and addresses, DNS, NTP, `bootcmd`, `write_files`, users:
    /// before the network starts (`capstan-agent-firstboot.service`).
    Early,
    /// Wait (bounded) for a routable address, deferred `write_files`, `runcmd`: after
    /// `network-online.target` and the container runtime (`capstan-agent-final.service`).
    Final,
    /// Both, in order (tests, `--root` runs, the daemon's re-run for a new instance-id).
    All,
}

impl From<StageArg> for crate::steps::Stage {
    fn from(s: StageArg) -> Self {
        match s {
            StageArg::Early => crate::steps::Stage::Early,
            StageArg::Final => crate::steps::Stage::Final,
            StageArg::All => crate::steps::Stage::All,
        }
    }
}

/// Where sources are read from.
#[derive(Debug, Clone, Args)]
pub struct SourceArgs {
    /// Apply everything under DIR instead of `/` (files only; live effects are skipped).
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Read the OVF environment from FILE (an ovf-env.xml or an ISO image) instead of the
    /// `OVF ENV` CD-ROM.
    #[arg(long, value_name = "FILE")]
    pub ovf_env: Option<PathBuf>,
    /// Read guestinfo keys from files in DIR (`DIR/guestinfo.metadata` or `DIR/metadata`).
    #[arg(long, value_name = "DIR")]
    pub guestinfo_dir: Option<PathBuf>,
    /// Read this provider instead of detecting one: `nocloud:DIR` (a directory holding a
    /// NoCloud seed's meta-data, user-data, vendor-data, network-config), `configdrive:DIR` (a
    /// config drive's files, openstack/latest/...) or `ec2[:URL]` (an IMDS base URL, default
    /// http://169.254.169.254).
    #[arg(long, value_name = "KIND:WHERE")]
    pub provider: Option<crate::sources::ProviderSpec>,
}

impl SourceArgs {
    /// The engine's options.
    pub fn options(&self) -> crate::boot::Options {
        crate::boot::Options {
            root: self.root.clone(),
            ovf_env: self.ovf_env.clone(),
            guestinfo_dir: self.guestinfo_dir.clone(),
            provider: self.provider.clone(),
        }
    }
}

/// Arguments of `run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Sources (with `--root`, state and the socket live under DIR and the role is not started).
    #[command(flatten)]
    pub src: SourceArgs,
    /// The status socket (default `/run/capstan/agent.sock`, under `--root` if given).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Seconds between polls of the sources for a new instance-id.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub poll: u64,
    /// Keep all capabilities (for debugging).
    #[arg(long)]
    pub keep_caps: bool,
}

impl RunArgs {
    /// The daemon's options.
    pub fn options(&self) -> crate::daemon::Options {
        crate::daemon::Options {
            boot: self.src.options(),
            socket: self.socket.clone(),
            poll: std::time::Duration::from_secs(self.poll),
            keep_caps: self.keep_caps,
        }
    }
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Configure this node from its sources: the early stage (identity, network, DNS, NTP,
    /// bootcmd, write_files, users; the oneshot unit before systemd-networkd) and the final
    /// stage (a bounded wait for a routable address, deferred write_files, runcmd; the unit
    /// after network-online and the container runtime).
    Firstboot {
        /// Sources.
        #[command(flatten)]
        src: SourceArgs,
        /// Which steps to run: `early` (capstan-agent-firstboot.service), `final`
        /// (capstan-agent-final.service: the early stage's plan for this instance, merged into
        /// its record; every step when no early stage is recorded for the current instance-id)
        /// or `all`, in order. The final stage waits up to 120 s (CAPSTAN_ONLINE_TIMEOUT) for a
        /// routable address; not under --root.
        #[arg(long, value_enum, default_value = "all", value_name = "STAGE")]
        stage: StageArg,
        /// Under --root, also run bootcmd/runcmd (on the host, in DIR).
        #[arg(long)]
        run_commands: bool,
        /// Under --root, also overwrite consumed secrets in the guestinfo transport.
        #[arg(long)]
        scrub: bool,
    },
    /// Show what the last first boot applied, from which source, and how long each step took.
    Status {
        /// Read state under DIR.
        #[arg(long, value_name = "DIR")]
        root: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The configuration schema and files.
    Config {
        /// What to do.
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Write every file the configuration would produce under DIR, without starting anything.
    Render {
        /// Sources (`--root` is required).
        #[command(flatten)]
        src: SourceArgs,
    },
    /// The daemon: status socket, instance-id watch, role.
    Run(RunArgs),
    /// Prepare this running VM to be forked (vSphere Instant Clone, `capstan lab clone`):
    /// synchronize the journal and sync every filesystem, write the marker
    /// /run/capstan/frozen.json, print the `CAPSTAN-FROZEN {json}` console line, publish
    /// guestinfo.capstan.state, and on VMware call `instantclone.freeze`, which returns once
    /// the VM runs again. The daemon then polls for the child's new identity every 20 ms.
    Freeze {
        /// Apply under DIR instead of `/` (no journal, no RPC; the console line goes to
        /// DIR/dev/console).
        #[arg(long, value_name = "DIR")]
        root: Option<PathBuf>,
        /// Publish the state to guestinfo files in DIR instead of the detected transport.
        #[arg(long, value_name = "DIR")]
        guestinfo_dir: Option<PathBuf>,
        /// Do not call the hypervisor's freeze RPC, even on VMware.
        #[arg(long)]
        no_rpc: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the schema.
    Schema {
        /// As JSON.
        #[arg(long, group = "fmt")]
        json: bool,
        /// As the OVF ProductSection of a profile.
        #[arg(long, group = "fmt")]
        ovf: bool,
        /// As the Markdown reference page.
        #[arg(long, group = "fmt")]
        markdown: bool,
        /// Profile for --ovf (`node` or `lb`).
        #[arg(long, default_value = "node")]
        profile: String,
    },
    /// Check a TOML configuration file (baked-defaults format).
    Check {
        /// The file.
        file: PathBuf,
    },
}

/// The log filter: `CAPSTAN_LOG` (`info`, `debug`, `capstan_agent::steps=debug,warn`, ...) or
/// `info`. A [`Targets`](tracing_subscriber::filter::Targets) filter, not an `EnvFilter`: the
/// same target=level syntax without span and field matching, and without a regex engine in a
/// binary that every image carries and every boot pages in.
pub fn log_filter(env: Option<&str>) -> tracing_subscriber::filter::Targets {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    let default = || Targets::new().with_default(LevelFilter::INFO);
    match env.map(str::trim) {
        None | Some("") => default(),
        Some(s) => s.parse().unwrap_or_else(|e| {
            eprintln!("capstan-agent: CAPSTAN_LOG={s:?}: {e}; logging at info");
            default()
        }),
    }
}

/// Sets up tracing on stderr.
pub fn init_logging(format: Option<LogFormat>) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = log_filter(std::env::var("CAPSTAN_LOG").ok().as_deref());
    let format = format.unwrap_or(if std::io::stderr().is_terminal() {
        LogFormat::Text
    } else {
        LogFormat::Plain
    });
    // the builder's own level filter lets everything through: `filter` decides
    let builder = tracing_subscriber::fmt()
        .with_max_level(tracing_subscriber::filter::LevelFilter::TRACE)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.finish().with(filter).try_init(),
        LogFormat::Plain => {
            builder.with_ansi(false).without_time().finish().with(filter).try_init()
        }
        LogFormat::Json => builder.json().finish().with(filter).try_init(),
    };
}

/// Parses a command line (the program name first). On `--help`, `--version` or a usage error
/// clap's text is printed (help on stdout, errors on stderr) and the exit code returned.
pub fn parse<I, T>(args: I) -> Result<Cli, i32>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    Cli::try_parse_from(args).map_err(|e| {
        // Nothing better to do when stdout or stderr is gone (`--help | head -0`).
        let _ = e.print();
        usage_exit_code(e.kind())
    })
}

/// The exit code of a command line clap did not turn into a command: 0 for the help and the
/// version asked for, [`EXIT_ERROR`] for everything else. Not clap's own 2, which is
/// [`EXIT_STEP_FAILED`]: a script must tell bad usage from a failed step.
pub fn usage_exit_code(kind: ErrorKind) -> i32 {
    match kind {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => EXIT_OK,
        // `capstan-agent` or `capstan-agent config` alone: help on stderr, a usage error.
        _ => EXIT_ERROR,
    }
}

/// Runs a parsed command line; returns the exit code.
pub fn run(cli: Cli) -> i32 {
    init_logging(cli.log_format);
    let outcome = match cli.command {
        Command::Firstboot { src, run_commands, scrub, stage } => {
            firstboot(&src, run_commands, scrub, stage.into())
        }
        Command::Status { root, json } => status(root.as_deref(), json),
        Command::Config { command } => match command {
            ConfigCommand::Schema { json, ovf, markdown, profile } => {
                commands::config_schema(json, ovf, markdown, &profile)
            }
            ConfigCommand::Check { file } => config_check(&file),
        },
        Command::Render { src } => render(&src),
        Command::Freeze { root, guestinfo_dir, no_rpc, json } => {
            commands::freeze(root.as_deref(), guestinfo_dir.as_deref(), no_rpc, json)
        }
        Command::Run(args) => {
            crate::daemon::main(args.options()).map(|()| Done::Ok).map_err(CliError::from)
        }
    };
    exit_code(outcome)
}

#[cfg(test)]
mod tests {
    use tracing::Level;
    use tracing_subscriber::filter::LevelFilter;

    #[test]
    fn only_help_and_version_exit_0() {
        use clap::error::ErrorKind;
        assert_eq!(super::usage_exit_code(ErrorKind::DisplayHelp), super::EXIT_OK);
        assert_eq!(super::usage_exit_code(ErrorKind::DisplayVersion), super::EXIT_OK);
        for k in [
            ErrorKind::UnknownArgument,
            ErrorKind::InvalidValue,
            ErrorKind::InvalidSubcommand,
            ErrorKind::MissingRequiredArgument,
            ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand,
            ErrorKind::ArgumentConflict,
        ] {
            assert_eq!(super::usage_exit_code(k), super::EXIT_ERROR, "{k:?}");
        }
        let parsed = super::parse(["capstan-agent", "status", "--json"]).map(|c| c.command);
        assert!(matches!(parsed, Ok(super::Command::Status { json: true, root: None })));
        // a refused command line prints clap's error: tests/cli_exit_codes.rs runs those
    }

    #[test]
    fn log_filter_reads_levels_and_targets() {
        let f = super::log_filter(None);
        assert_eq!(f.default_level(), Some(LevelFilter::INFO));
        assert!(f.would_enable("capstan_agent::steps", &Level::INFO));
        assert!(!f.would_enable("capstan_agent::steps", &Level::DEBUG));
        let f = super::log_filter(Some("warn,capstan_agent::steps=debug"));
        assert!(f.would_enable("capstan_agent::steps::users", &Level::DEBUG));
        assert!(!f.would_enable("capstan_agent::sources", &Level::INFO));
        // a bad value falls back to info instead of silencing the log
        let f = super::log_filter(Some("capstan_agent=loud"));
        assert_eq!(f.default_level(), Some(LevelFilter::INFO));
        assert_eq!(super::log_filter(Some(" ")).default_level(), Some(LevelFilter::INFO));
    }
}
