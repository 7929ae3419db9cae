//! A network namespace of the test's own (`ip netns add`, deleted on drop), commands in it,
//! and code run from a thread that joined it. Needs root and iproute2; fails (does not skip)
//! without them.

use std::process::Command;

use serde_json::Value;

/// A named network namespace, deleted when dropped.
pub struct Netns(pub String);

impl Netns {
    /// A fresh namespace `capstan-TAG-PID` (an old one of that name is deleted first).
    pub fn new(tag: &str) -> Netns {
        let name = format!("capstan-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        ip(&["netns", "add", &name]);
        Netns(name)
    }

    /// `ip -n NS ARGS`, its stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut a = vec!["-n", &self.0];
        a.extend_from_slice(args);
        ip(&a)
    }

    /// `ip -n NS -j ARGS`, parsed.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["-j"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.ip(&a)).unwrap()
    }

    /// `ip -j addr show dev NAME`: the link with its addresses.
    pub fn link(&self, name: &str) -> Value {
        self.json(&["addr", "show", "dev", name]).as_array().unwrap()[0].clone()
    }

    /// Runs `f` in a thread that joined this namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let fd = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("setns (needs root)");
            f()
        })
        .join()
        .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// `ip ARGS` on the host, its stdout; a failure names the arguments and ip's stderr.
pub fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("iproute2 `ip` is required");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}
