//! A small synchronous QMP client (QEMU Machine Protocol, `docs/interop/qmp-spec.rst`): one
//! JSON object per line over the VM's unix socket; asynchronous `event` lines are skipped.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

/// A connected QMP session (capabilities negotiated).
#[derive(Debug)]
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    socket: String,
}

impl Qmp {
    /// Connects to `socket` (retrying while QEMU creates it, up to `timeout`) and leaves
    /// capabilities negotiation mode.
    pub fn connect(socket: &Path, timeout: Duration) -> anyhow::Result<Self> {
        let started = Instant::now();
        let stream = loop {
            match UnixStream::connect(socket) {
                Ok(s) => break s,
                Err(e) if started.elapsed() > timeout => {
                    return Err(e).with_context(|| {
                        format!("QMP socket {} did not accept a connection", socket.display())
                    })
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        // A QEMU busy loading a large incoming state still answers QMP; a minute is for a
        // machine loaded by other VMs.
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        let writer = stream.try_clone()?;
        let mut qmp =
            Self { reader: BufReader::new(stream), writer, socket: socket.display().to_string() };
        let greeting = qmp.read_message()?;
        if greeting.get("QMP").is_none() {
            bail!("{}: expected the QMP greeting, got {greeting}", qmp.socket);
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    fn read_message(&mut self) -> anyhow::Result<Value> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .with_context(|| format!("reading from QMP socket {}", self.socket))?;
        if n == 0 {
            bail!("QMP socket {} closed (QEMU exited?)", self.socket);
        }
        serde_json::from_str(&line)
            .with_context(|| format!("QMP socket {}: not JSON: {line:?}", self.socket))
    }

    /// Runs `command` and returns its `return` value; a QMP `error` becomes an error naming
    /// the command.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> anyhow::Result<Value> {
        let mut msg = json!({ "execute": command });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let mut text = msg.to_string();
        text.push('\n');
        self.writer
            .write_all(text.as_bytes())
            .with_context(|| format!("QMP {command}: writing to {}", self.socket))?;
        loop {
            let m = self.read_message()?;
            if m.get("event").is_some() {
                continue;
            }
            return response(command, m);
        }
    }
}

/// The `return` of a QMP response, or its `error` as an error naming the command.
pub fn response(command: &str, m: Value) -> anyhow::Result<Value> {
    if let Some(r) = m.get("return") {
        return Ok(r.clone());
    }
    if let Some(e) = m.get("error") {
        bail!(
            "QMP {command} failed: {} ({})",
            e["desc"].as_str().unwrap_or("no description"),
            e["class"].as_str().unwrap_or("?")
        );
    }
    bail!("QMP {command}: unexpected response {m}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_and_errors_are_told_apart() {
        let ok = response("query-status", json!({"return": {"status": "paused"}})).unwrap();
        assert_eq!(ok["status"], "paused");
        let err = response(
            "migrate",
            json!({"error": {"class": "GenericError", "desc": "no space left"}}),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("QMP migrate failed: no space left"), "{err}");
        assert!(response("cont", json!({"weird": 1})).is_err());
    }

    #[test]
    fn talks_to_a_qmp_server() {
        use std::os::unix::net::UnixListener;
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("qmp.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            let mut r = BufReader::new(s);
            w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n").unwrap();
            let mut seen = Vec::new();
            for reply in [
                "{\"return\": {}}\n",
                "{\"event\": \"RESUME\", \"timestamp\": {}}\n{\"return\": {}}\n",
            ] {
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                seen.push(line);
                w.write_all(reply.as_bytes()).unwrap();
            }
            seen
        });
        let mut q = Qmp::connect(&sock, Duration::from_secs(5)).unwrap();
        assert_eq!(q.execute("cont", None).unwrap(), json!({}));
        let seen = server.join().unwrap();
        assert!(seen[0].contains("qmp_capabilities"));
        assert!(seen[1].contains("\"cont\""));
    }
}
