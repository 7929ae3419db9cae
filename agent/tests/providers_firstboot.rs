//! `capstan-agent firstboot --root TMP --provider …` on the real binary: a NoCloud seed
//! directory, a config drive directory and EC2 (against the FAKE IMDS of `providers_imds`,
//! written from AWS's documentation: the real service runs only on EC2) each apply the host
//! name, the network files and the default user's keys, and `status` names the provider. A
//! bad seed fails naming the file and the key and changes no file. Detection finds a seed or
//! a config drive ISO (made by `xorriso`) under the root's `/dev`, and `agent.toml` forces one.

mod common;
mod providers_imds;

use std::path::Path;
use std::process::{Command, Output};

use common::{minimal_root, snapshot, status_json, BIN};

const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAISeedKey seed@example";

fn write(dir: &Path, files: &[(&str, &str)]) {
    for (name, body) in files {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
}

fn firstboot(root: &Path, extra: &[&str]) -> Output {
    let out = Command::new(BIN)
        .arg("firstboot")
        .arg("--root")
        .arg(root)
        .args(extra)
        .env("CAPSTAN_LOG", "warn")
        .output()
        .unwrap();
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    out
}

fn read(root: &Path, rel: &str) -> String {
    std::fs::read_to_string(root.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The one `.network` file written (the test seeds have one NIC).
fn network_file(root: &Path) -> String {
    let dir = root.join("etc/systemd/network");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "network"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .network file");
    std::fs::read_to_string(&files[0]).unwrap()
}

fn nocloud_seed(dir: &Path) {
    write(
        dir,
        &[
            ("meta-data", &format!("instance-id: iid-nocloud-1\nlocal-hostname: nc-node\npublic-keys:\n  - {KEY}\n")),
            (
                "network-config",
                "version: 1\nconfig:\n  - type: physical\n    name: eth0\n    mac_address: '52:54:00:12:34:56'\n    subnets:\n      - type: static\n        address: 10.20.0.5/24\n        gateway: 10.20.0.1\n        dns_nameservers: [10.20.0.2]\n",
            ),
            ("user-data", "#cloud-config\nwrite_files:\n  - path: /etc/from-user-data\n    content: hello\n"),
        ],
    );
}

fn configdrive(dir: &Path) {
    let meta = format!(
        r#"{{"uuid": "83679162-1378-4288-a2d4-70e13ec132aa", "hostname": "cd-node.novalocal", "public_keys": {{"k": "{KEY}"}}}}"#
    );
    let net = r#"{"links": [{"id": "tap1", "type": "phy", "ethernet_mac_address": "fa:16:3e:00:00:01", "mtu": 1450}],
        "networks": [{"id": "n1", "type": "ipv4", "link": "tap1", "ip_address": "10.30.0.7", "netmask": "255.255.255.0",
                      "routes": [{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "10.30.0.1"}]}],
        "services": [{"type": "dns", "address": "10.30.0.2"}]}"#;
    write(
        dir,
        &[
            ("openstack/latest/meta_data.json", &meta),
            ("openstack/latest/network_data.json", net),
            (
                "openstack/latest/user_data",
                "#cloud-config\nwrite_files:\n  - path: /etc/from-user-data\n    content: cd\n",
            ),
        ],
    );
}

fn assert_applied(root: &Path, host: &str, address: &str, gateway: &str, provider: &str) {
    assert_eq!(read(root, "etc/hostname").trim(), host);
    let net = network_file(root);
    assert!(net.contains(&format!("Address={address}")), "{net}");
    assert!(net.contains(&format!("Gateway={gateway}")), "{net}");
    let keys = read(root, "home/capstan/.ssh/authorized_keys");
    assert!(keys.contains(KEY), "{keys}");
    let st = status_json(root);
    assert_eq!(st["result"], "ok", "{st:#}");
    assert_eq!(st["network_source"], provider, "{st:#}");
    assert_eq!(st["sources"][0]["name"], provider, "{st:#}");
    let hostname = st["values"].as_array().unwrap().iter().find(|v| v["path"] == "hostname");
    assert_eq!(hostname.unwrap()["origin"]["source"], provider, "{st:#}");
}

#[test]
fn nocloud_dir_applies_hostname_network_and_keys() {
    let d = tempfile::tempdir().unwrap();
    let (root, seed) = (d.path().join("root"), d.path().join("seed"));
    minimal_root(&root);
    nocloud_seed(&seed);
    let out = firstboot(&root, &["--provider", &format!("nocloud:{}", seed.display())]);
    assert_eq!(out.status.code(), Some(0));
    assert_applied(&root, "nc-node", "10.20.0.5/24", "10.20.0.1", "nocloud");
    assert_eq!(read(&root, "etc/from-user-data"), "hello", "user-data went through cloud-config");
    assert!(network_file(&root).contains("MACAddress=52:54:00:12:34:56"));
    let st = status_json(&root);
    assert_eq!(st["instance_id"], "iid-nocloud-1");
    assert_eq!(st["instance_id_origin"]["source"], "nocloud");
    // idempotent: a second run changes nothing
    let before = snapshot(&root.join("etc"));
    assert_eq!(
        firstboot(&root, &["--provider", &format!("nocloud:{}", seed.display())]).status.code(),
        Some(0)
    );
    assert_eq!(snapshot(&root.join("etc")), before);
}

#[test]
fn configdrive_dir_applies_hostname_network_and_keys() {
    let d = tempfile::tempdir().unwrap();
    let (root, drive) = (d.path().join("root"), d.path().join("drive"));
    minimal_root(&root);
    configdrive(&drive);
    let out = firstboot(&root, &["--provider", &format!("configdrive:{}", drive.display())]);
    assert_eq!(out.status.code(), Some(0));
    assert_applied(&root, "cd-node", "10.30.0.7/24", "10.30.0.1", "configdrive");
    assert_eq!(status_json(&root)["instance_id"], "83679162-1378-4288-a2d4-70e13ec132aa");
}

#[tokio::test(flavor = "multi_thread")]
async fn ec2_applies_hostname_network_and_keys() {
    let imds = providers_imds::start(providers_imds::two_nic_instance()).await;
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    minimal_root(&root);
    let spec = format!("ec2:{}", imds.url);
    let r = root.clone();
    let out =
        tokio::task::spawn_blocking(move || firstboot(&r, &["--provider", &spec])).await.unwrap();
    assert_eq!(out.status.code(), Some(0));
    // the user-data's cloud-config hostname wins over local-hostname, as in cloud-init
    assert_eq!(read(&root, "etc/hostname").trim(), "ignored-by-ec2");
    let keys = read(&root, "home/capstan/.ssh/authorized_keys");
    assert!(keys.contains("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFake my-key"), "{keys}");
    assert!(keys.contains("ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQFake other"), "{keys}");
    let net = std::fs::read_dir(root.join("etc/systemd/network"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(net.contains("MACAddress=0e:49:61:0f:c3:11"), "{net}");
    assert!(net.contains("MACAddress=0e:49:61:0f:c3:22"), "{net}");
    assert!(net.contains("Address=172.31.5.11/20"), "{net}");
    let st = status_json(&root);
    assert_eq!(st["instance_id"], "i-0123456789abcdef0");
    assert_eq!(st["network_source"], "ec2");
    assert_eq!(st["sources"][0]["name"], "ec2");
    // IMDSv2 only: every GET carried a token
    let log = imds.log.lock().unwrap().clone();
    assert!(log.iter().any(|l| l.contains("PUT /latest/api/token")), "{log:?}");
}

/// A provider kind, its files and the start of the error it must give.
type BadSeed = (&'static str, &'static [(&'static str, &'static str)], &'static str);

#[test]
fn bad_seeds_fail_naming_file_and_key_and_change_nothing() {
    let cases: [BadSeed; 4] = [
        (
            "nocloud",
            &[("meta-data", "instance-id: iid-x\nlocal-hostname: bad_name!\n")],
            "nocloud key meta-data: local-hostname:",
        ),
        (
            "nocloud",
            &[
                ("meta-data", "instance-id: iid-x\n"),
                ("network-config", "version: 1\nconfig:\n  - type: bond\n    name: bond0\n"),
            ],
            "nocloud key network-config: network.config[0].type: bond is not supported",
        ),
        (
            "configdrive",
            &[("openstack/latest/meta_data.json", r#"{"uuid": "../../etc"}"#)],
            "configdrive key openstack/latest/meta_data.json: uuid:",
        ),
        (
            "configdrive",
            &[
                ("openstack/latest/meta_data.json", r#"{"uuid": "u-1"}"#),
                (
                    "openstack/latest/network_data.json",
                    r#"{"links": [], "networks": [{"id": "n", "type": "ipv4", "link": "tap9"}]}"#,
                ),
            ],
            "configdrive key openstack/latest/network_data.json: networks[0].link",
        ),
    ];
    for (kind, files, want) in cases {
        let d = tempfile::tempdir().unwrap();
        let (root, seed) = (d.path().join("root"), d.path().join("seed"));
        minimal_root(&root);
        write(&seed, files);
        let before = snapshot(&root.join("etc"));
        let out = firstboot(&root, &["--provider", &format!("{kind}:{}", seed.display())]);
        assert_eq!(out.status.code(), Some(2), "{want}");
        assert_eq!(snapshot(&root.join("etc")), before, "{want}: a file changed");
        assert!(!root.join("home").exists(), "{want}: a user was created");
        let st = status_json(&root);
        assert_eq!(st["result"], "failed");
        let err = st["steps"][0]["error"].as_str().unwrap_or_default();
        assert!(err.starts_with(want), "{want}\n got: {err}");
        assert!(err.contains("nothing applied"), "{err}");
        assert_eq!(st["steps"].as_array().unwrap().len(), 1, "only the sources record: {st:#}");
    }
}

fn xorriso(dir: &Path, label: &str, iso: &Path) {
    let out = Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-V", label, "-J", "-r", "-o"])
        .arg(iso)
        .arg(dir)
        .output()
        .expect("xorriso (Debian's xorriso package) runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn detection_finds_seed_and_config_drive_isos_under_dev() {
    for (label, fill, provider, host) in [
        ("cidata", nocloud_seed as fn(&Path), "nocloud", "nc-node"),
        ("config-2", configdrive as fn(&Path), "configdrive", "cd-node"),
    ] {
        let d = tempfile::tempdir().unwrap();
        let (root, seed) = (d.path().join("root"), d.path().join("seed"));
        minimal_root(&root);
        fill(&seed);
        std::fs::create_dir_all(root.join("dev")).unwrap();
        xorriso(&seed, label, &root.join("dev/sr0"));
        let out = firstboot(&root, &[]);
        assert_eq!(out.status.code(), Some(0), "{provider}");
        assert_eq!(read(&root, "etc/hostname").trim(), host);
        let st = status_json(&root);
        assert_eq!(st["network_source"], provider);
        assert_eq!(st["sources"][0]["location"], root.join("dev/sr0").display().to_string());
    }
}

#[test]
fn agent_toml_forces_a_provider() {
    let d = tempfile::tempdir().unwrap();
    let (root, seed) = (d.path().join("root"), d.path().join("seed"));
    minimal_root(&root);
    nocloud_seed(&seed);
    std::fs::create_dir_all(root.join("dev")).unwrap();
    xorriso(&seed, "cidata", &root.join("dev/sr0"));
    write(&root, &[("etc/capstan/agent.toml", "version = 1\nprovider = \"configdrive\"\n")]);
    let before = snapshot(&root.join("etc"));
    // forced to a config drive that is not there: the NoCloud seed is not used instead
    let out = firstboot(&root, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(snapshot(&root.join("etc")), before);
    let err = status_json(&root)["steps"][0]["error"].as_str().unwrap().to_owned();
    assert!(err.starts_with("configdrive key "), "{err}");
    assert!(err.contains("agent.toml: provider: forced, but no config-2 drive"), "{err}");
    write(&root, &[("etc/capstan/agent.toml", "version = 1\nprovider = \"nocloud\"\n")]);
    assert_eq!(firstboot(&root, &[]).status.code(), Some(0));
    assert_eq!(read(&root, "etc/hostname").trim(), "nc-node");
    write(&root, &[("etc/capstan/agent.toml", "version = 1\nprovider = \"azure\"\n")]);
    let out = firstboot(&root, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("provider"));
}

#[test]
fn render_takes_a_provider_too() {
    let d = tempfile::tempdir().unwrap();
    let (root, seed) = (d.path().join("root"), d.path().join("seed"));
    nocloud_seed(&seed);
    let out = Command::new(BIN)
        .args(["render", "--root"])
        .arg(&root)
        .arg("--provider")
        .arg(format!("nocloud:{}", seed.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(network_file(&root).contains("Address=10.20.0.5/24"));
    let out = Command::new(BIN).args(["firstboot", "--provider", "azure:x"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("expected nocloud:DIR, configdrive:DIR or ec2[:URL]"));
}

#[tokio::test(flavor = "multi_thread")]
async fn each_providers_cheap_identity_follows_its_instance_id() {
    use capstan_agent::sources::configdrive::ConfigDrive;
    use capstan_agent::sources::ec2::Ec2;
    use capstan_agent::sources::imds::ImdsOptions;
    use capstan_agent::sources::nocloud::NoCloud;
    use capstan_agent::sources::{Identity, Provider};
    let d = tempfile::tempdir().unwrap();
    let (seed, drive) = (d.path().join("seed"), d.path().join("drive"));
    nocloud_seed(&seed);
    configdrive(&drive);
    let nc = NoCloud::dir(&seed);
    assert_eq!(nc.identity(), Identity(vec![Some("iid-nocloud-1".into()), None]));
    write(&seed, &[("meta-data", "instance-id: iid-nocloud-2\n")]);
    assert_eq!(nc.identity().0[0].as_deref(), Some("iid-nocloud-2"));
    let cd = ConfigDrive::dir(&drive);
    assert_eq!(cd.identity(), Identity(vec![Some("83679162-1378-4288-a2d4-70e13ec132aa".into())]));
    write(&drive, &[("openstack/latest/meta_data.json", r#"{"uuid": "u-2"}"#)]);
    assert_eq!(cd.identity().0[0].as_deref(), Some("u-2"));
    // EC2: one token and one GET, nothing else
    let imds = providers_imds::start(providers_imds::two_nic_instance()).await;
    let ec2 = Ec2::new(imds.url.clone(), ImdsOptions::default());
    let id = tokio::task::spawn_blocking(move || ec2.identity()).await.unwrap();
    assert_eq!(id, Identity(vec![Some("i-0123456789abcdef0".into())]));
    let log = imds.log.lock().unwrap().clone();
    assert_eq!(log.len(), 2, "{log:?}");
    // a service that is gone answers nothing, quickly
    let gone = Ec2::new("http://127.0.0.1:9", ImdsOptions::default());
    let t0 = std::time::Instant::now();
    let id = tokio::task::spawn_blocking(move || gone.identity()).await.unwrap();
    assert_eq!(id, Identity(vec![None]));
    assert!(t0.elapsed() < std::time::Duration::from_secs(3));
}
