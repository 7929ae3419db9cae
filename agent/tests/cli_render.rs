//! `capstan-agent render --root DIR`: every file the configuration produces, nothing started,
//! checked by the real `haproxy -c` and `keepalived -t`; and a refused value is reported with
//! its source and key.

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_capstan-agent");

const DEFAULTS: &str = r#"version = 1
role = "lb"
[net.nic0]
mac = "00:50:56:00:00:11"
dhcp4 = false
address = "10.0.0.11/24"
gateway = "10.0.0.1"
[lb]
vip = "10.0.0.100/24"
backends = "10.0.0.21:6443,10.0.0.22:6443"
api.token = "0123456789abcdef0123"
[lb.vrrp]
secret = "s3cret"
peers = "10.0.0.12"
"#;

fn tool(name: &str) -> String {
    for dir in ["/usr/sbin", "/usr/bin", "/sbin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p.display().to_string();
        }
    }
    panic!("{name} is required for this test (apt-get install {name}; scripts/setup installs it)");
}

#[test]
fn render_writes_checked_lb_and_network_files() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    std::fs::create_dir_all(root.join("etc/capstan")).unwrap();
    std::fs::write(root.join("etc/capstan/agent.toml"), DEFAULTS).unwrap();
    // A direct guestinfo key overrides the baked priority.
    std::fs::create_dir_all(t.path().join("gi")).unwrap();
    std::fs::write(t.path().join("gi/capstan.lb.vrrp.priority"), "150").unwrap();
    let out = Command::new(BIN)
        .arg("render")
        .arg("--root")
        .arg(&root)
        .arg("--guestinfo-dir")
        .arg(t.path().join("gi"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let listed = String::from_utf8_lossy(&out.stdout);
    for f in [
        "/etc/systemd/network/10-capstan-nic0.network",
        "/etc/haproxy/haproxy.cfg",
        "/etc/keepalived/keepalived.conf",
    ] {
        assert!(listed.lines().any(|l| l == f), "{f} not rendered: {listed}");
    }
    let net =
        std::fs::read_to_string(root.join("etc/systemd/network/10-capstan-nic0.network")).unwrap();
    assert!(net.contains("Address=10.0.0.11/24") && net.contains("MACAddress=00:50:56:00:00:11"));
    let ka = root.join("etc/keepalived/keepalived.conf");
    let ka_text = std::fs::read_to_string(&ka).unwrap();
    assert!(ka_text.contains("priority 150"), "guestinfo override applied: {ka_text}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&ka).unwrap().permissions().mode() & 0o777, 0o600);

    let h = Command::new(tool("haproxy"))
        .arg("-c")
        .arg("-f")
        .arg(root.join("etc/haproxy/haproxy.cfg"))
        .output()
        .unwrap();
    assert!(h.status.success(), "haproxy -c: {}", String::from_utf8_lossy(&h.stderr));
    let k = Command::new(tool("keepalived")).arg("-t").arg("-f").arg(&ka).output().unwrap();
    assert!(k.status.success(), "keepalived -t: {}", String::from_utf8_lossy(&k.stderr));
    // Nothing outside the root and no daemon: render only writes.
    assert!(!root.join("var/lib/capstan").exists(), "render records no first boot");
}

#[test]
fn render_reports_refused_lb_values_by_key() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    std::fs::create_dir_all(root.join("etc/capstan")).unwrap();
    std::fs::write(
        root.join("etc/capstan/agent.toml"),
        DEFAULTS.replace("10.0.0.100/24", "10.0.0.100/99"),
    )
    .unwrap();
    let out = Command::new(BIN).arg("render").arg("--root").arg(&root).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("lb.vip"), "{err}");
    assert!(err.contains("agent.toml"), "names the source file: {err}");
    assert!(!root.join("etc/haproxy/haproxy.cfg").exists(), "no lb files from refused settings");
}
