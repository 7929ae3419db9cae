//! The rendered haproxy.cfg reloads hitlessly: under continuous load, a structural change
//! (health check timing) applied with SIGUSR2 to the master loses no request, and the backend
//! set survives the reload because it is rendered into the file.

mod lb;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use capstan_agent::roles::lb::state::DesiredSet;
use capstan_agent::roles::lb::{check_haproxy, haproxy_config, LbPaths, Tools};
use lb::*;

#[test]
fn structural_change_reloads_without_failed_requests() -> anyhow::Result<()> {
    let lab = Lab::new("r")?;
    let ns = lab.ns(LB1);
    // No keepalived here: the VIP is put on the interface by hand.
    std::process::Command::new("ip")
        .args(["-n", &ns, "addr", "add", &format!("{VIP}/24"), "dev", "eth0"])
        .status()?;
    let dir = lab.dir.path().join("reload");
    std::fs::create_dir_all(&dir)?;
    let paths = LbPaths::under(&dir);
    let backends =
        BACKENDS.iter().map(|h| format!("{}:6443", ip(*h))).collect::<Vec<_>>().join(",");
    let s = lab.lb_settings(LB1, 150, &backends, ("https:/readyz", 1000, 2, 2));
    let set = DesiredSet::from_list(&s.backends);
    let first = haproxy_config(&s, &paths, &set).render();
    std::fs::write(&paths.haproxy_cfg, &first)?;
    check_haproxy(&Tools::default(), &paths.haproxy_cfg)?;

    let t = NsThread::start(&ns)?;
    let (cfg_path, pid_path) = (paths.haproxy_cfg.clone(), paths.haproxy_pid.clone());
    let mut child = t.run(Duration::from_secs(5), async move {
        tokio::process::Command::new("/usr/sbin/haproxy")
            .arg("-W")
            .arg("-f")
            .arg(&cfg_path)
            .arg("-p")
            .arg(&pid_path)
            .kill_on_drop(true)
            .stderr(std::process::Stdio::null())
            .spawn()
    })??;
    let start = Instant::now();
    while !paths.admin_socket.exists() {
        assert!(start.elapsed() < Duration::from_secs(10), "HAProxy did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let rt = capstan_agent::roles::lb::runtime::RuntimeApi::new(&paths.admin_socket);
    let worker_pid =
        |rt: &capstan_agent::roles::lb::runtime::RuntimeApi| -> anyhow::Result<String> {
            let info = rt.command("show info")?;
            Ok(info.lines().find(|l| l.starts_with("Pid:")).unwrap_or_default().to_owned())
        };
    let pid_before = worker_pid(&rt)?;
    let load = Load::start(&lab, 4, 1_000_000);
    std::thread::sleep(Duration::from_millis(500));

    let mut s2 = s.clone();
    s2.health.interval = Duration::from_millis(700);
    let second = haproxy_config(&s2, &paths, &set).render();
    assert!(capstan_agent::roles::lb::haproxy::needs_reload(&first, &second));
    std::fs::write(&paths.haproxy_cfg, &second)?;
    check_haproxy(&Tools::default(), &paths.haproxy_cfg)?;
    let master = child.id().expect("pid") as i32;
    for _ in 0..3 {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(master),
            nix::sys::signal::Signal::SIGUSR2,
        )?;
        std::thread::sleep(Duration::from_millis(700));
    }
    let ok_mid = load.ok.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(500));
    let (ok, failed) = (load.ok.load(Ordering::Relaxed), load.failed.load(Ordering::Relaxed));
    let errors = load.errors.lock().unwrap().clone();
    let seen = load.seen.lock().unwrap().clone();
    load.finish(&lab);
    eprintln!("3 reloads: {ok} requests ok, {failed} failed, per backend {seen:?}");
    assert_eq!(failed, 0, "requests failed across reloads: {errors:?}");
    assert!(ok > ok_mid, "no traffic after the reloads");
    assert_eq!(seen.len(), 3, "all backends serve after the reloads: {seen:?}");
    // A new worker (started from the new file) answers now.
    let pid_after = worker_pid(&rt)?;
    assert!(
        !pid_before.is_empty() && pid_before != pid_after,
        "no new worker: {pid_before} / {pid_after}"
    );
    let _ = t.run(Duration::from_secs(5), async move { child.kill().await });
    Ok(())
}
