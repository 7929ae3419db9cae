//! The exit-code contract of docs/agent.md's command table, on the real binary: 1 for
//! arguments that cannot be used (clap's own usage errors included, which clap would exit 2
//! with, the code of a failed step), 0 for `--help` and `--version`, and the codes of each
//! command that no other test pins.

mod common;

use std::path::Path;
use std::process::Command;

use common::BIN;

/// Runs the agent with `args`; returns its exit code, stdout and stderr.
fn agent<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).env("CAPSTAN_LOG", "warn").output().unwrap();
    let code = out.status.code().expect("exited, not killed by a signal");
    (
        code,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The command is a usage error: exit 1, and stderr names every fragment.
fn usage_error(args: &[&str], fragments: &[&str]) {
    let (code, stdout, stderr) = agent(args);
    assert_eq!(code, 1, "{args:?}: exit {code}\nstdout: {stdout}\nstderr: {stderr}");
    for f in fragments {
        assert!(stderr.contains(f), "{args:?}: stderr does not name {f:?}: {stderr}");
    }
    assert!(stdout.is_empty(), "{args:?}: a usage error printed to stdout: {stdout}");
}

#[test]
fn argument_errors_exit_1_naming_the_argument_for_every_command() {
    // unknown flags
    usage_error(&["firstboot", "--bogus"], &["--bogus"]);
    usage_error(&["status", "--bogus"], &["--bogus"]);
    usage_error(&["config", "schema", "--bogus"], &["--bogus"]);
    usage_error(&["config", "check", "--bogus", "f.toml"], &["--bogus"]);
    usage_error(&["render", "--bogus"], &["--bogus"]);
    usage_error(&["run", "--bogus"], &["--bogus"]);
    usage_error(&["--bogus", "status"], &["--bogus"]);
    // a flag without its value
    usage_error(&["firstboot", "--root"], &["--root"]);
    usage_error(&["status", "--root"], &["--root"]);
    usage_error(&["render", "--guestinfo-dir"], &["--guestinfo-dir"]);
    usage_error(&["run", "--socket"], &["--socket"]);
    // a value clap refuses
    usage_error(&["firstboot", "--stage", "late"], &["--stage", "late"]);
    usage_error(&["run", "--poll", "0"], &["--poll"]);
    usage_error(&["--log-format", "xml", "status"], &["--log-format", "xml"]);
    usage_error(&["config", "schema", "--json", "--ovf"], &["--json", "--ovf"]);
    // a missing positional argument or subcommand, an unknown one, none at all
    usage_error(&["config", "check"], &["<FILE>"]);
    usage_error(&["config"], &["Usage"]);
    usage_error(&["frobnicate"], &["frobnicate"]);
    usage_error(&["config", "frobnicate"], &["frobnicate"]);
    usage_error(&[], &["Usage"]);
}

#[test]
fn help_and_version_exit_0_on_stdout() {
    for args in [&["--help"][..], &["-h"], &["firstboot", "--help"], &["config", "check", "--help"]]
    {
        let (code, stdout, stderr) = agent(args);
        assert_eq!(code, 0, "{args:?}: {stderr}");
        assert!(stdout.contains("Usage: capstan-agent"), "{args:?}: {stdout}");
    }
    let (code, stdout, stderr) = agent(&["--version"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.trim(), format!("capstan-agent {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn firstboot_with_a_root_that_is_not_a_directory_exits_1_naming_it() {
    let t = tempfile::tempdir().unwrap();
    let file = t.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let (code, _, stderr) = agent(&[Path::new("firstboot"), Path::new("--root"), &file]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains(&file.display().to_string()), "{stderr}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
}

#[test]
fn status_with_nothing_recorded_exits_1() {
    let t = tempfile::tempdir().unwrap();
    for json in [false, true] {
        let mut args = vec![Path::new("status"), Path::new("--root"), t.path()];
        if json {
            args.push(Path::new("--json"));
        }
        let (code, stdout, stderr) = agent(&args);
        assert_eq!(code, 1, "{stdout}{stderr}");
        assert!(stderr.contains("no first boot recorded"), "{stderr}");
        assert!(stdout.is_empty(), "{stdout}");
    }
}

#[test]
fn render_without_a_root_exits_1_and_writes_nothing() {
    let (code, stdout, stderr) = agent(&["render"]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stderr.contains("--root"), "{stderr}");
    assert!(stdout.is_empty(), "render wrote files: {stdout}");
}

#[test]
fn run_that_cannot_start_exits_1_naming_why() {
    let t = tempfile::tempdir().unwrap();
    let file = t.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let (code, _, stderr) = agent(&[Path::new("run"), Path::new("--root"), &file]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains(&file.display().to_string()), "{stderr}");
}
