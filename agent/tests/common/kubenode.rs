//! A fake node for the kube preflight's local checks: `/proc` and `/sys` trees that pass
//! (swap off, modules loaded, sysctls set) and a real containerd on a private socket.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The `/proc` and `/sys` files the local checks read, as on a ready node, under `root`.
pub fn fake_node(root: &Path) {
    for d in [
        "proc/sys/net/ipv4",
        "proc/sys/net/bridge",
        "sys/module/br_netfilter",
        "sys/module/overlay",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("proc/swaps"), "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n")
        .unwrap();
    std::fs::write(root.join("proc/sys/net/ipv4/ip_forward"), "1\n").unwrap();
    std::fs::write(root.join("proc/sys/net/bridge/bridge-nf-call-iptables"), "1\n").unwrap();
}

/// A real containerd on a private socket (no CRI plugin: only the gRPC server is needed).
pub struct Containerd {
    child: std::process::Child,
}

impl Containerd {
    /// Starts it with its state and socket under `dir` (`dir/run/containerd/containerd.sock`).
    pub fn start(dir: &Path) -> Containerd {
        let cfg = dir.join("config.toml");
        std::fs::write(
            &cfg,
            format!(
                "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{0}/run/containerd/containerd.sock\"\n[ttrpc]\n  address = \"{0}/run/containerd/containerd.sock.ttrpc\"\n",
                dir.display()
            ),
        )
        .unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("containerd (scripts/setup installs it)");
        let sock = dir.join("run/containerd/containerd.sock");
        let t0 = Instant::now();
        while !sock.exists() {
            assert!(t0.elapsed() < Duration::from_secs(60), "containerd did not create its socket");
            std::thread::sleep(Duration::from_millis(100));
        }
        Containerd { child }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
