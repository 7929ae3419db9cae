//! Benchmark, not a test (ignored; run by `scripts/bench-lb`): latency from a backend API call
//! to the first request reaching the new backend, and VIP failover time, over repeated runs,
//! with real HAProxy and keepalived in network namespaces.

mod lb;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use capstan_agent::roles::lb::VrrpState;
use lb::*;
use serde_json::json;

fn env_usize(k: &str, d: usize) -> usize {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(name: &str, mut v: Vec<Duration>) {
    v.sort();
    eprintln!(
        "BENCH {name}: runs={} p50={:.1}ms p99={:.1}ms min={:.1}ms max={:.1}ms",
        v.len(),
        pct(&v, 0.5).as_secs_f64() * 1e3,
        pct(&v, 0.99).as_secs_f64() * 1e3,
        v[0].as_secs_f64() * 1e3,
        v[v.len() - 1].as_secs_f64() * 1e3
    );
}

#[test]
#[ignore = "benchmark: run scripts/bench-lb"]
fn bench_apply_and_failover() -> anyhow::Result<()> {
    let apply_runs = env_usize("BENCH_APPLY_RUNS", 50);
    let failover_runs = env_usize("BENCH_FAILOVER_RUNS", 5);
    let mut lab = Lab::new("x")?;
    let base = format!("{}:6443", ip(BACKENDS[0]));
    let s1 = lab.lb_settings(LB1, 150, &base, ("https:/readyz", 1000, 2, 2));
    let s2 = lab.lb_settings(LB2, 100, &base, ("https:/readyz", 1000, 2, 2));
    lab.start_lb(LB1, s1.clone())?;
    lab.start_lb(LB2, s2.clone())?;
    let mut active = lab.wait_single_holder(Duration::from_secs(10))?;

    // Apply latency: API call on the active LB -> first request served by the new backend.
    let load = Load::start(&lab, 2, u64::MAX);
    std::thread::sleep(Duration::from_millis(500));
    let candidates =
        [(BACKENDS[1], 6443), (BACKENDS[1], 6444), (BACKENDS[2], 6443), (BACKENDS[2], 6444)];
    let mut apply = Vec::new();
    let mut api_rtt = Vec::new();
    for i in 0..apply_runs {
        let (h, port) = candidates[i % candidates.len()];
        let addr = format!("{}:{port}", ip(h));
        let served = lab.backend(h, port).served.clone();
        let before = served.load(Ordering::Relaxed);
        // The call runs on the client's namespace thread; this thread watches the backend's
        // counter meanwhile, so traffic that arrives before the API answers is seen.
        let cfg = lab.client_tls(active);
        let api = std::net::SocketAddr::new(std::net::IpAddr::V4(ip(active)), API_PORT);
        let body = json!({ "address": addr }).to_string().into_bytes();
        let (tx, rx) = std::sync::mpsc::channel();
        let t0 = Instant::now();
        lab.client().spawn(async move {
            let auth = format!("Bearer {TOKEN}");
            let r = https_request(
                cfg,
                api,
                "POST",
                "/v1/backends",
                &[("Authorization", &auth)],
                &body,
                Duration::from_secs(10),
            )
            .await;
            let _ = tx.send((r, t0.elapsed()));
        });
        while served.load(Ordering::Relaxed) == before {
            assert!(t0.elapsed() < Duration::from_secs(10), "{addr} never got traffic");
            std::thread::sleep(Duration::from_micros(200));
        }
        apply.push(t0.elapsed());
        let (r, rtt) = rx.recv_timeout(Duration::from_secs(15))?;
        let (st, v) = r?;
        assert_eq!(st, 201, "{v}");
        api_rtt.push(rtt);
        let (st, v) =
            lab.api(active, "DELETE", &format!("/v1/backends/{addr}"), "", Some(TOKEN))?;
        assert_eq!(st, 200, "{v}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let failed = load.failed.load(Ordering::Relaxed);
    load.finish(&lab);
    report("api-round-trip", api_rtt);
    report("apply-to-traffic", apply);
    eprintln!("BENCH apply-load-failures: {failed}");

    // Failover: kill the active HAProxy, time until the standby holds the VIP, and until a
    // client request through the VIP succeeds; then wait for the old active to rejoin.
    let mut moves = Vec::new();
    let mut recover = Vec::new();
    for _ in 0..failover_runs {
        let standby = if active == LB1 { LB2 } else { LB1 };
        let ss = if standby == LB1 { &s1 } else { &s2 };
        let deadline = Instant::now() + Duration::from_secs(20);
        while lab.status(standby, ss).vrrp != VrrpState::Backup {
            assert!(Instant::now() < deadline, "standby not ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        lab.lb(active).kill_haproxy()?;
        let t0 = Instant::now();
        loop {
            let h = lab.vip_holders();
            assert!(h.len() <= 1, "two holders");
            if h == [standby] {
                moves.push(t0.elapsed());
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "no failover");
            std::thread::sleep(Duration::from_millis(5));
        }
        loop {
            let (seen, _) = sample(&lab, 1);
            if !seen.is_empty() {
                recover.push(t0.elapsed());
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "client never recovered");
        }
        active = standby;
    }
    report("failover-vip-move", moves);
    report("failover-client-recovered", recover);
    Ok(())
}
