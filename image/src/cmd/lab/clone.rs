//! `capstan lab clone IMAGE --children N [--guestinfo KEY=VALUE]... [--guestinfo-for I
//! KEY=VALUE]... [--json]`: boot a parent, wait until it is frozen, save it, start N children
//! from its memory and report how each re-identified.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::{accel, firmware, parse_mac, AccelArg, FirmwareArg};
use crate::lab::clone::{self, plan, CloneOptions, CloneResult};
use crate::lab::{self, GuestinfoArg};

/// Arguments of `capstan lab clone`.
#[derive(Debug, Args)]
pub struct CloneArgs {
    /// The image: OVA, qcow2, raw or VMDK (never modified).
    pub image: PathBuf,
    /// How many children to start from the frozen parent (1 to 16).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=plan::MAX_CHILDREN as i64))]
    pub children: u16,
    /// A guestinfo key for the parent (KEY=VALUE or KEY=@FILE); children inherit it.
    #[arg(long = "guestinfo", value_name = "KEY=VALUE|KEY=@FILE", value_parser = GuestinfoArg::parse)]
    pub guestinfo: Vec<GuestinfoArg>,
    /// A guestinfo value for child I (1-based) over the parent's, e.g. `--guestinfo-for 2
    /// metadata=@child2.yaml`. Only keys the parent has can be changed.
    #[arg(long = "guestinfo-for", num_args = 2, value_names = ["I", "KEY=VALUE"])]
    pub guestinfo_for: Vec<String>,
    /// A vApp property value (KEY=VALUE) for the parent's OVF environment.
    #[arg(long = "prop", value_name = "KEY=VALUE", value_parser = lab::parse_prop)]
    pub props: Vec<(String, String)>,
    /// The parent's MAC; child I gets 52:54:00:c1:00:II (hex).
    #[arg(long, default_value = "52:54:00:12:34:56", value_parser = parse_mac)]
    pub mac: String,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Seconds to wait for the parent to be ready and frozen (and for each save or load).
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Seconds to wait, per child, from resume to its report after re-identifying.
    #[arg(long, default_value_t = 180)]
    pub reidentify_timeout: u64,
    /// Accelerator.
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: AccelArg,
    /// Firmware.
    #[arg(long, value_enum, default_value = "auto")]
    pub firmware: FirmwareArg,
    /// Guest memory in MiB, per VM.
    #[arg(long, default_value_t = 1024)]
    pub memory: u64,
    /// vCPUs per VM.
    #[arg(long, default_value_t = 2)]
    pub cpus: u32,
    /// Copy every VM's serial log and QEMU stderr into this directory (also on failure).
    #[arg(long, value_name = "DIR")]
    pub log_dir: Option<PathBuf>,
}

/// Parses the arguments into options (the `--guestinfo-for` pairs are checked here).
pub fn options(a: CloneArgs) -> anyhow::Result<(CloneOptions, bool)> {
    let children = usize::from(a.children);
    let per_child = plan::parse_guestinfo_for(&a.guestinfo_for, children)?;
    let opts = CloneOptions {
        image: a.image,
        props: a.props,
        guestinfo: a.guestinfo,
        per_child,
        children,
        mac: a.mac,
        timeout: Duration::from_secs(a.timeout),
        reidentify_timeout: Duration::from_secs(a.reidentify_timeout),
        accel: accel(a.accel),
        firmware: firmware(a.firmware),
        memory_mib: a.memory,
        cpus: a.cpus,
        log_dir: a.log_dir,
        cache: crate::cache::default_dir(),
    };
    Ok((opts, a.json))
}

/// Runs `capstan lab clone`.
pub fn run(a: CloneArgs) -> anyhow::Result<ExitCode> {
    let (opts, json) = options(a)?;
    let result = clone::run(&opts)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        print_table(&result);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(r: &CloneResult) {
    println!(
        "parent ready and frozen after {:.1}s ({:?}, {:?}), saved in {:.1}s ({} MiB)",
        r.parent_boot_seconds,
        r.accel,
        r.firmware,
        r.save_seconds,
        r.state_bytes >> 20
    );
    let dash = || "-".to_string();
    println!(
        "{:<8} {:>9} {:<20} {:<18} {:<18} boot id",
        "vm", "resume→ms", "hostname", "mac", "address"
    );
    for v in std::iter::once(&r.parent).chain(&r.children) {
        println!(
            "{:<8} {:>9} {:<20} {:<18} {:<18} {}",
            v.name,
            v.reidentify_ms.map(|m| format!("{m:.0}")).unwrap_or_else(dash),
            v.identity.hostname.clone().unwrap_or_else(dash),
            v.identity.mac.clone().unwrap_or_else(dash),
            v.identity.address.clone().unwrap_or_else(dash),
            v.identity.boot_id.clone().unwrap_or_else(dash),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        a: CloneArgs,
    }

    fn parse(args: &[&str]) -> Result<CloneArgs, String> {
        let argv = std::iter::once("lab-clone").chain(args.iter().copied());
        Cli::try_parse_from(argv).map(|c| c.a).map_err(|e| e.to_string())
    }

    #[test]
    fn guestinfo_for_takes_a_child_and_a_value() {
        let a = parse(&[
            "lb.ova",
            "--children",
            "3",
            "--guestinfo",
            "metadata=p",
            "--guestinfo-for",
            "1",
            "metadata=one",
            "--guestinfo-for",
            "3",
            "metadata=three",
        ])
        .unwrap();
        let (o, json) = options(a).unwrap();
        assert!(!json);
        assert_eq!(o.children, 3);
        assert_eq!(o.per_child.len(), 2);
        assert_eq!((o.per_child[1].child, o.per_child[1].arg.value.as_slice()), (3, &b"three"[..]));
    }

    #[test]
    fn bad_children_and_guestinfo_for_are_refused() {
        let err = |args: &[&str]| match parse(args) {
            Err(e) => e,
            Ok(a) => format!("{:#}", options(a).unwrap_err()),
        };
        assert!(err(&["lb.ova", "--children", "0"]).contains("0"));
        assert!(err(&["lb.ova", "--children", "17"]).contains("17"));
        assert!(err(&["lb.ova"]).contains("--children"));
        let e = err(&["lb.ova", "--children", "2", "--guestinfo-for", "3", "metadata=x"]);
        assert!(e.contains("numbered 1 to 2"), "{e}");
        let e = err(&["lb.ova", "--children", "2", "--guestinfo-for", "x", "metadata=x"]);
        assert!(e.contains("not a child number"), "{e}");
        let e = err(&["lb.ova", "--children", "2", "--guestinfo-for", "1", "metadata"]);
        assert!(e.contains("KEY=VALUE"), "{e}");
        // one value only: clap wants two
        let e = err(&["lb.ova", "--children", "2", "--guestinfo-for", "1"]);
        assert!(e.contains("--guestinfo-for"), "{e}");
        let e = err(&["lb.ova", "--children", "1", "--mac", "52:54:00:zz:00:01"]);
        assert!(e.contains("not a MAC"), "{e}");
    }
}
