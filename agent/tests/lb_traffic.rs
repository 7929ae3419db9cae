//! The lb role with real HAProxy and keepalived in network namespaces: traffic to the VIP
//! reaches every healthy backend; a backend failing `/readyz` leaves rotation within the fall
//! time and returns after rise.

mod lb;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use lb::*;

fn all_backends() -> String {
    BACKENDS.iter().map(|h| format!("{}:6443", ip(*h))).collect::<Vec<_>>().join(",")
}

#[test]
fn traffic_reaches_all_healthy_backends() -> anyhow::Result<()> {
    let mut lab = Lab::new("t")?;
    let s1 = lab.lb_settings(LB1, 150, &all_backends(), ("https:/readyz", 500, 2, 2));
    let s2 = lab.lb_settings(LB2, 100, &all_backends(), ("https:/readyz", 500, 2, 2));
    lab.start_lb(LB1, s1.clone())?;
    lab.start_lb(LB2, s2.clone())?;
    let holder = lab.wait_single_holder(Duration::from_secs(10))?;
    eprintln!("VIP on lb{holder}");
    // `status` as `capstan-agent status` shows it, from inside the holder's namespace.
    let st = lab.status(holder, if holder == LB1 { &s1 } else { &s2 });
    assert!(st.holds_vip && st.haproxy_running, "{st:?}");
    assert!(st.errors.is_empty(), "{st:?}");
    assert_eq!(st.backends.len(), 3, "{st:?}");
    for b in &st.backends {
        assert_eq!(b.state, "ready");
        assert!(b.health.as_deref().is_some_and(|h| h.starts_with("UP")), "{b:?}");
    }
    let (seen, errs) = sample(&lab, 60);
    assert!(errs.is_empty(), "failed requests: {errs:?}\n{}", lab.logs());
    for h in BACKENDS {
        let name = format!("{}:6443", ip(h));
        let n = seen.get(&name).copied().unwrap_or(0);
        // Round robin over three: 20 each; allow for checks settling.
        assert!(n >= 10, "backend {name} got {n} of 60 requests: {seen:?}");
    }
    assert_eq!(seen.values().sum::<u64>(), 60);
    // The health frontend and the Prometheus exporter answer on the metrics listener.
    let metrics = lab.client().run(Duration::from_secs(10), async move {
        let mut out = Vec::new();
        for path in ["/healthz", "/metrics", "/other"] {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            let mut s = tokio::net::TcpStream::connect((ip(LB1), 8404)).await?;
            s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes()).await?;
            let mut buf = String::new();
            s.read_to_string(&mut buf).await?;
            out.push(buf);
        }
        anyhow::Ok(out)
    })??;
    let status = |r: &str| r.split_whitespace().nth(1).unwrap_or_default().to_owned();
    assert_eq!(status(&metrics[0]), "200", "/healthz: {:.200}", metrics[0]);
    assert_eq!(status(&metrics[1]), "200", "/metrics: {:.200}", metrics[1]);
    assert!(metrics[1].contains("haproxy_server_status"), "no server metrics in /metrics");
    assert_eq!(status(&metrics[2]), "403", "other paths are denied: {:.200}", metrics[2]);
    // keepalived's own HAProxy check (the backstop when the agent is down) passes.
    let log = std::fs::read_to_string(lab.lb(holder).dir.join("keepalived.log"))?;
    assert!(log.contains("Script(haproxy_alive) succeeded"), "track script never passed:\n{log}");
    Ok(())
}

#[test]
fn failing_readyz_leaves_rotation_within_fall_and_returns_after_rise() -> anyhow::Result<()> {
    let mut lab = Lab::new("h")?;
    let (inter_ms, rise, fall) = (300u64, 2u8, 2u8);
    let s1 = lab.lb_settings(LB1, 150, &all_backends(), ("https:/readyz", inter_ms, rise, fall));
    lab.start_lb(LB1, s1)?;
    lab.wait_single_holder(Duration::from_secs(10))?;
    let victim = lab.backend(BACKENDS[1], 6443);
    let victim_name = victim.name.clone();

    // Stop answering /readyz with 200; the backend still serves /who, so any request that
    // reaches it is visible.
    victim.healthy.store(false, Ordering::Relaxed);
    let t0 = Instant::now();
    // Leaves within fall × interval (+ one interval of phase, + check timeout slack).
    let budget = Duration::from_millis(inter_ms * (fall as u64 + 1) + 500);
    let left = wait_for(budget * 3, || {
        backend_health(&lab, &victim_name).is_some_and(|s| s.starts_with("DOWN"))
    });
    let took = t0.elapsed();
    assert!(left, "{victim_name} still in rotation after {took:?}");
    assert!(took <= budget, "{victim_name} left rotation after {took:?}, budget {budget:?}");
    eprintln!("{victim_name} left rotation in {took:?}");
    let (seen, errs) = sample(&lab, 30);
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(seen.get(&victim_name), None, "unhealthy backend still got traffic: {seen:?}");

    victim.healthy.store(true, Ordering::Relaxed);
    let t1 = Instant::now();
    let budget = Duration::from_millis(inter_ms * (rise as u64 + 1) + 500);
    let back =
        wait_for(budget * 3, || backend_health(&lab, &victim_name).is_some_and(|s| s == "UP"));
    let took = t1.elapsed();
    assert!(back, "{victim_name} not back after {took:?}");
    assert!(took <= budget, "{victim_name} came back after {took:?}, budget {budget:?}");
    let (seen, errs) = sample(&lab, 30);
    assert!(errs.is_empty(), "{errs:?}");
    assert!(seen.get(&victim_name).copied().unwrap_or(0) >= 5, "{seen:?}");
    eprintln!("{victim_name} back in rotation in {took:?}");
    Ok(())
}

fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

/// HAProxy's status of the backend on LB1, via the API.
fn backend_health(lab: &Lab, name: &str) -> Option<String> {
    let (status, v) = lab.api(LB1, "GET", "/v1/backends", "", Some(TOKEN)).ok()?;
    assert_eq!(status, 200);
    v["backends"]
        .as_array()?
        .iter()
        .find(|b| b["address"] == name)
        .and_then(|b| b["health"].as_str().map(str::to_owned))
}
