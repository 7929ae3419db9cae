//! The `vsphere` action against vcsim (with a username and password set): it resets a
//! powered-on VM and powers on a powered-off one, found by BIOS UUID; a wrong password and an
//! unknown UUID fail with messages that say so.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use capstan_hub::remedy::actions::{Action, Vsphere};
use capstan_hub::tracker::node::Node;

struct Sim {
    child: std::process::Child,
    url: String,
    govc: std::path::PathBuf,
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sim {
    fn start() -> Sim {
        let dir =
            capstan_e2e::govmomi_bin_dir().expect("govc and vcsim (scripts/setup builds them)");
        let port = capstan_e2e::free_port().unwrap();
        let child = Command::new(dir.join("vcsim"))
            .args(["-l", &format!("127.0.0.1:{port}"), "-username", "hub", "-password", "s3cret"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let sim =
            Sim { child, url: format!("https://127.0.0.1:{port}/sdk"), govc: dir.join("govc") };
        let end = Instant::now() + Duration::from_secs(60);
        while sim.govc(&["about"]).is_err() {
            assert!(Instant::now() < end, "vcsim did not start");
            std::thread::sleep(Duration::from_millis(200));
        }
        sim
    }

    fn govc(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(&self.govc)
            .args(args)
            .env("GOVC_URL", &self.url)
            .env("GOVC_USERNAME", "hub")
            .env("GOVC_PASSWORD", "s3cret")
            .env("GOVC_INSECURE", "1")
            .env("GOVC_PERSIST_SESSION", "false")
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

fn node(uuid: &str) -> Node {
    let mut hb = capstan_agent::heartbeat::Heartbeat::new(
        "iid-vm".parse().unwrap(),
        "vm".parse().unwrap(),
        "lb",
    );
    hb.bios_uuid = uuid.into();
    Node::new(&hb, "10.0.0.9", tokio::time::Instant::now(), 0).0
}

#[tokio::test]
async fn the_vsphere_action_resets_or_powers_on_the_vm_with_that_bios_uuid() {
    let sim = Sim::start();
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("password");
    std::fs::write(&pw, "s3cret\n").unwrap();
    let cfg = |password_file| Vsphere {
        url: sim.url.clone(),
        username: "hub".into(),
        password_file,
        insecure: true,
        govc: sim.govc.clone(),
    };
    let action = Action::Vsphere(Box::new(cfg(pw.clone())));
    let vm = "/DC0/vm/DC0_H0_VM1";
    let uuid = sim.govc(&["object.collect", "-s", vm, "config.uuid"]).unwrap();
    // vcsim logs a reset as "is stopping" then "is powered on".
    let stops =
        |sim: &Sim, vm: &str| sim.govc(&["events", vm]).unwrap().matches("is stopping").count();
    let (before, other) = (stops(&sim, vm), stops(&sim, "/DC0/vm/DC0_H0_VM0"));
    let ok = action.run(&node(&uuid), "ep-1", Duration::from_secs(30)).await.unwrap();
    assert!(ok.starts_with(&format!("reset {vm}")), "{ok}");
    assert_eq!(stops(&sim, vm), before + 1, "the VM was not reset");
    assert_eq!(stops(&sim, "/DC0/vm/DC0_H0_VM0"), other, "another VM was reset");
    // The other VMs were not touched.
    assert_eq!(
        sim.govc(&["object.collect", "-s", "/DC0/vm/DC0_H0_VM0", "runtime.powerState"]).unwrap(),
        "poweredOn"
    );

    sim.govc(&["vm.power", "-off", vm]).unwrap();
    let on = action.run(&node(&uuid), "ep-2", Duration::from_secs(30)).await.unwrap();
    assert!(on.starts_with(&format!("powered on {vm}")), "{on}");
    assert_eq!(sim.govc(&["object.collect", "-s", vm, "runtime.powerState"]).unwrap(), "poweredOn");

    let unknown = action
        .run(&node("00000000-0000-0000-0000-000000000000"), "ep-3", Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(
        unknown.contains("no VM with BIOS UUID 00000000-0000-0000-0000-000000000000"),
        "{unknown}"
    );
    let bad = dir.path().join("bad");
    std::fs::write(&bad, "wrong").unwrap();
    let e = Action::Vsphere(Box::new(cfg(bad)))
        .run(&node(&uuid), "ep-4", Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(e.contains("refused the login of hub (wrong user name or password)"), "{e}");
    let none = action.run(&node(""), "ep-5", Duration::from_secs(30)).await.unwrap_err();
    assert_eq!(none, "the node reported no BIOS UUID");
    let missing = Action::Vsphere(Box::new(cfg(dir.path().join("nope"))))
        .run(&node(&uuid), "ep-6", Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(missing.contains("nope"), "{missing}");
}

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_vsphere_action_is_a_recorded_failed_remediation() {
    let sim = Sim::start();
    let dir = tempfile::tempdir().unwrap();
    let certs = common::certs(dir.path());
    let pw = dir.path().join("password");
    std::fs::write(&pw, "s3cret").unwrap();
    let cfg = dir.path().join("vsphere.json");
    let doc = serde_json::json!({"url": sim.url, "username": "hub", "password_file": pw, "insecure": true, "govc": sim.govc});
    std::fs::write(&cfg, doc.to_string()).unwrap();
    let path = dir.path().join("hub.db");
    let remediate = format!("vsphere:{}", cfg.display());
    let hub = common::HubProc::start(
        &certs,
        &format!("sqlite:{}", path.display()),
        &["--interval", "200ms", "--remediate", &remediate],
    );
    let mut c = common::node_client(&hub.url, &certs, "iid-gone");
    let mut hb = common::beat("iid-gone", 1, true);
    hb.bios_uuid = "00000000-1111-2222-3333-444444444444".into();
    assert!(c
        .request(hyper::Method::POST, "/v1/heartbeat", hb.to_json())
        .await
        .unwrap()
        .0
        .is_success());
    let mut reader = common::node_client(&hub.url, &certs, "reader");
    wait_until!(Duration::from_secs(10), "a failed remediation", {
        let n = common::get_json(&mut reader, "/v1/nodes/iid-gone").await;
        n["node"]["last_result"].as_str().unwrap_or("").starts_with("vsphere failed")
    });
    let rems = capstan_hub::store::Sqlite::open(&path).unwrap().remediations().unwrap();
    assert_eq!(rems.len(), 1, "{rems:?}");
    assert_eq!(rems[0].outcome, "failed");
    assert!(
        rems[0].detail.contains("no VM with BIOS UUID 00000000-1111-2222-3333-444444444444"),
        "{rems:?}"
    );
    let (_, m) = reader.request(hyper::Method::GET, "/metrics", Vec::new()).await.unwrap();
    assert!(String::from_utf8_lossy(&m)
        .contains("capstan_hub_remediations_total{action=\"vsphere\",result=\"failed\"} 1"));
}
