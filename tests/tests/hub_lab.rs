//! Issue 12's first "done when", end to end: the lb appliance booted with `capstan lab run
//! --detach --state-dir` and heartbeat settings pointing at a `capstan-hub` on this machine
//! (QEMU user networking: the host is 10.0.2.2 from the guest) appears healthy with its role
//! checks; its QEMU is killed; the hub marks it unhealthy within `unhealthy-after` + 1 s (read
//! from the hub's own timestamps, not a stopwatch), runs the `lab` action once from the record
//! the lab kept, the VM boots again and the node returns to healthy; exactly one remediation.
//! It also shows the lab's SMBIOS UUID arriving as the agent's instance-id.

#[path = "image_support.rs"]
mod support;

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use capstan_e2e::run;
use support::{boot_lock, capstan, lb_image, s, step};

const INTERVAL_S: u64 = 2;
const UNHEALTHY_AFTER: u64 = 6;

/// The hub process; killed on drop.
struct Hub {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Stops the lab VM (whoever started it last) and removes its state on every exit path.
struct LabVm {
    state: PathBuf,
    uuid: String,
}

impl Drop for LabVm {
    fn drop(&mut self) {
        let _ = Command::new(capstan())
            .args(["lab", "stop", &self.uuid, "--state-dir", s(&self.state), "--remove"])
            .status();
    }
}

fn start_hub(certs: &Path, db: &Path, lab: &Path) -> Hub {
    let bin = capstan_e2e::workspace_bin("capstan-hub", "capstan-hub");
    let log = certs.parent().unwrap().join("hub.log");
    let interval = format!("{INTERVAL_S}s");
    let mut child = Command::new(bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--db", &format!("sqlite:{}", db.display())])
        .args(["--tls-cert", s(&certs.join("hub.pem")), "--tls-key", s(&certs.join("hub-key.pem"))])
        .args(["--client-ca", s(&certs.join("ca.pem"))])
        .args(["--remediate", &format!("lab:{}", lab.display())])
        .args(["--interval", &interval, "--unhealthy-after", &UNHEALTHY_AFTER.to_string()])
        // Longer than a second boot under TCG on a loaded machine: judged again only after.
        .args(["--grace", "900s", "--action-timeout", "60s"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start capstan-hub");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.trim().strip_prefix("listening on ").unwrap_or_else(|| {
        panic!("hub did not start: {line:?}\n{}", std::fs::read_to_string(&log).unwrap_or_default())
    });
    let port = addr.rsplit(':').next().unwrap().to_owned();
    Hub { child, url: format!("https://127.0.0.1:{port}"), log }
}

/// GET `path` from the hub (loopback: no credential needed to read), as text.
fn get(hub: &Hub, certs: &Path, path: &str) -> String {
    run(Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "10", "--cacert", s(&certs.join("ca.pem"))])
        .arg(format!("{}{path}", hub.url)))
    .unwrap_or_else(|e| panic!("GET {path}: {e:#}"))
}

fn node(hub: &Hub, certs: &Path, id: &str) -> serde_json::Value {
    let (status, body) = {
        let o = Command::new("curl")
            .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
            .args(["--cacert", s(&certs.join("ca.pem"))])
            .arg(format!("{}/v1/nodes/{id}", hub.url))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
        (code.to_owned(), body.to_owned())
    };
    if status != "200" {
        return serde_json::Value::Null;
    }
    serde_json::from_str::<serde_json::Value>(&body).unwrap()["node"].clone()
}

/// Polls until `cond` holds for the node (returns that view), or panics after `limit`.
fn wait_node(
    hub: &Hub,
    certs: &Path,
    id: &str,
    limit: Duration,
    what: &str,
    cond: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let end = Instant::now() + limit;
    loop {
        let n = node(hub, certs, id);
        if cond(&n) {
            return n;
        }
        assert!(
            Instant::now() < end,
            "timed out ({}s) waiting for {what}; node: {n:#}\nhub log tail:\n{}",
            limit.as_secs(),
            tail(&std::fs::read_to_string(&hub.log).unwrap_or_default(), 30)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn healthy_with_role_checks(n: &serde_json::Value) -> bool {
    let names: Vec<&str> = n["checks"]
        .as_array()
        .map(|a| a.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default();
    n["state"] == "healthy" && ["haproxy", "vrrp", "backends"].iter().all(|c| names.contains(c))
}

fn pid_of(vm: &Path) -> u32 {
    std::fs::read_to_string(vm.join("qemu.pid")).unwrap().trim().parse().unwrap()
}

fn cmdline(pid: u32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    raw.split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

#[test]
fn a_killed_lab_vm_is_judged_unhealthy_restarted_once_and_healthy_again() {
    let ova = lb_image().join("lb.ova");
    let _guard = boot_lock();
    let t = tempfile::tempdir().unwrap();
    let certs = t.path().join("certs");
    let hub_bin = capstan_e2e::workspace_bin("capstan-hub", "capstan-hub");
    run(Command::new(&hub_bin).args([
        "certs",
        "init",
        s(&certs),
        "--host",
        "10.0.2.2",
        "--host",
        "127.0.0.1",
    ]))
    .unwrap();
    // A fresh UUID per run: the node's certificate is minted for it before the boot.
    let uuid = std::fs::read_to_string("/proc/sys/kernel/random/uuid").unwrap().trim().to_owned();
    run(Command::new(&hub_bin).args(["certs", "node", s(&certs), &uuid])).unwrap();
    let state = t.path().join("lab");
    let vm_guard = LabVm { state: state.clone(), uuid: uuid.clone() };
    let hub = start_hub(&certs, &t.path().join("hub.db"), &state);
    let port = hub.url.rsplit(':').next().unwrap().to_owned();

    let gi = |k: &str, v: String| ["--guestinfo".to_string(), format!("capstan.heartbeat.{k}={v}")];
    let file = |name: &str| format!("@{}", certs.join(name).display());
    let mut args: Vec<String> = [
        "capstan.hostname=lb-hub-e2e",
        "capstan.net.nic0.address=10.0.2.15/24",
        "capstan.net.nic0.gateway=10.0.2.2",
        "capstan.lb.vip=10.0.2.100/24",
        "capstan.lb.vrrp.secret=e2e-vrrp",
        // The backend API needs a token or a client CA, or the role does not start (degraded).
        "capstan.lb.api.token=e2e-api-token-0123456789",
    ]
    .iter()
    .flat_map(|p| ["--prop".to_string(), p.to_string()])
    .collect();
    args.extend(gi("url", format!("https://10.0.2.2:{port}")));
    args.extend(gi("interval", format!("{INTERVAL_S}s")));
    args.extend(gi("ca", file("ca.pem")));
    args.extend(gi("client-cert", file(&format!("{uuid}.pem"))));
    args.extend(gi("client-key", file(&format!("{uuid}-key.pem"))));
    let o = Command::new(capstan())
        .args(["lab", "run", s(&ova), "--uuid", &uuid, "--state-dir", s(&state), "--detach"])
        .args(&args)
        .args(["--wait-ready", "--json", "--timeout", "600"])
        .output()
        .unwrap();
    assert!(o.status.success(), "capstan lab run failed:\n{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["ready"], true, "{r:#}");
    assert_eq!(r["uuid"], uuid.as_str());
    let vm = PathBuf::from(r["state"].as_str().unwrap());
    assert_eq!(vm, std::fs::canonicalize(state.join(&uuid)).unwrap());
    let pid = r["pid"].as_u64().unwrap() as u32;
    assert_eq!(pid, pid_of(&vm));
    // The record: argv.json is the running QEMU's command line, with the UUID.
    let argv: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(vm.join("argv.json")).unwrap()).unwrap();
    assert_eq!(cmdline(pid), argv);
    assert!(argv.windows(2).any(|w| w[0] == "-uuid" && w[1] == uuid), "{argv:?}");
    // The lab's UUID is the agent's instance-id (SMBIOS product_uuid), not iid-unknown.
    let st = &r["status"];
    assert_eq!(st["instance_id"], uuid.as_str(), "{st:#}");
    assert_eq!(step(st, "hostname")["status"], "ok");

    let boot1 = wait_node(&hub, &certs, &uuid, Duration::from_secs(180), "healthy", |n| {
        healthy_with_role_checks(n)
    });
    assert_eq!(boot1["bios_uuid"], uuid.as_str(), "{boot1:#}");
    assert_eq!(boot1["hostname"], "lb-hub-e2e");
    assert_eq!(boot1["remediations"], 0);
    for c in boot1["checks"].as_array().unwrap() {
        assert_eq!(c["ok"], true, "{boot1:#}");
    }

    // Power failure: QEMU killed. The hub's verdict comes from its own clock.
    run(Command::new("kill").args(["-KILL", &pid.to_string()])).unwrap();
    let down = wait_node(&hub, &certs, &uuid, Duration::from_secs(120), "unhealthy", |n| {
        n["state"] == "unhealthy"
    });
    let silent_ms = down["since_ms"].as_u64().unwrap() - down["last_seen_ms"].as_u64().unwrap();
    let deadline_ms = UNHEALTHY_AFTER * INTERVAL_S * 1000;
    assert!(
        silent_ms >= deadline_ms && silent_ms <= deadline_ms + 1000,
        "unhealthy {silent_ms} ms after the last heartbeat (deadline {deadline_ms} ms): {down:#}"
    );
    // The lab action restarts the recorded command line: a new QEMU, same disk, same UUID.
    let acted = wait_node(&hub, &certs, &uuid, Duration::from_secs(90), "the remediation", |n| {
        n["remediations"] == 1
    });
    let result = acted["last_result"].as_str().unwrap();
    assert!(result.starts_with(&format!("lab ok: restarted {uuid}")), "{acted:#}");
    let pid2 = pid_of(&vm);
    assert_ne!(pid2, pid);
    assert_eq!(cmdline(pid2), argv, "the restarted QEMU runs the recorded command line");

    let boot2 = wait_node(&hub, &certs, &uuid, Duration::from_secs(900), "healthy again", |n| {
        healthy_with_role_checks(n) && n["boot_id"] != boot1["boot_id"]
    });
    assert_eq!(boot2["remediations"], 1, "{boot2:#}");
    assert_eq!(boot2["episode"], serde_json::Value::Null, "the episode closed: {boot2:#}");
    assert_eq!(boot2["flagged"], "", "{boot2:#}");
    let metrics = get(&hub, &certs, "/metrics");
    assert!(
        metrics.contains("capstan_hub_remediations_total{action=\"lab\",result=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(!metrics.contains("result=\"failed\"} 1"), "{metrics}");
    eprintln!(
        "unhealthy {silent_ms} ms after the last heartbeat; {result}; healthy again, boot {}",
        boot2["boot_id"]
    );
    drop(hub);
    drop(vm_guard);
    assert!(!state.join(&uuid).exists(), "capstan lab stop --remove left the VM's directory");
    assert!(cmdline(pid2).is_empty(), "capstan lab stop left QEMU running");
}
