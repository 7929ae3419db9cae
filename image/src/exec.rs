//! Running the external tools the builder drives (mmdebstrap, mkfs, mtools, qemu-img),
//! with errors that name the command and show the end of its output.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};

/// Renders a command line for messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion; on failure the error names the command and holds the last
/// lines of its output.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    run_with_lines(cmd, |_| {})
}

/// Like [`run`] but calls `on_line` for every line the command prints (stdout and stderr),
/// so long stages can show progress.
pub fn run_with_lines(cmd: &mut Command, on_line: impl Fn(&str) + Sync) -> anyhow::Result<()> {
    let desc = describe(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{desc}` (is it installed? see scripts/setup)"))?;
    let tail = Arc::new(Mutex::new(Vec::<String>::new()));
    let out = child.stdout.take().expect("piped");
    let err = child.stderr.take().expect("piped");
    std::thread::scope(|s| {
        for stream in [Box::new(out) as Box<dyn Read + Send>, Box::new(err)] {
            let tail = Arc::clone(&tail);
            let on_line = &on_line;
            s.spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    on_line(&line);
                    let mut t = tail.lock().expect("tail lock");
                    t.push(line);
                    if t.len() > 30 {
                        t.remove(0);
                    }
                }
            });
        }
    });
    let status = child.wait().with_context(|| format!("waiting for `{desc}`"))?;
    if !status.success() {
        let tail = tail.lock().expect("tail lock").join("\n");
        bail!("`{desc}` failed ({status}):\n{tail}");
    }
    Ok(())
}

/// Runs `cmd` and returns its stdout.
pub fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let desc = describe(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start `{desc}` (is it installed? see scripts/setup)"))?;
    if !out.status.success() {
        bail!(
            "`{desc}` failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
