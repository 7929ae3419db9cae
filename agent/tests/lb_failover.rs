//! Failover with real keepalived: the active LB's HAProxy is killed under load; the VIP moves
//! to the standby within 2 s, the client's requests succeed again, and the old active rejoins
//! as backup without taking the VIP back (never two holders).

mod lb;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use capstan_agent::roles::lb::VrrpState;
use lb::*;

#[test]
fn killing_active_haproxy_moves_vip_within_2s_and_old_active_rejoins_as_backup(
) -> anyhow::Result<()> {
    let mut lab = Lab::new("f")?;
    let backends =
        BACKENDS.iter().map(|h| format!("{}:6443", ip(*h))).collect::<Vec<_>>().join(",");
    let s1 = lab.lb_settings(LB1, 150, &backends, ("https:/readyz", 500, 2, 2));
    let s2 = lab.lb_settings(LB2, 100, &backends, ("https:/readyz", 500, 2, 2));
    lab.start_lb(LB1, s1.clone())?;
    lab.start_lb(LB2, s2.clone())?;
    let active = lab.wait_single_holder(Duration::from_secs(10))?;
    let standby = if active == LB1 { LB2 } else { LB1 };
    let (sa, ss) = if active == LB1 { (&s1, &s2) } else { (&s2, &s1) };
    // The standby is a ready backup before the test starts.
    let deadline = Instant::now() + Duration::from_secs(10);
    while lab.status(standby, ss).vrrp != VrrpState::Backup {
        assert!(
            Instant::now() < deadline,
            "standby never became backup: {:?}",
            lab.status(standby, ss)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // keepalived adds the VIP before its notify script records MASTER: give the record a moment
    // (status reads the VIP over netlink, quicker than that script).
    let deadline = Instant::now() + Duration::from_secs(2);
    while lab.status(active, sa).vrrp != VrrpState::Master && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(lab.status(active, sa).vrrp, VrrpState::Master);

    let load = Load::start(&lab, 4, 200_000);
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        load.failed.load(Ordering::Relaxed),
        0,
        "failures before the kill: {:?}",
        load.errors.lock().unwrap()
    );
    let ok_before = load.ok.load(Ordering::Relaxed);
    assert!(ok_before > 0, "no traffic before the kill");

    lab.lb(active).kill_haproxy()?;
    let t0 = Instant::now();
    let moved = loop {
        let h = lab.vip_holders();
        assert!(h.len() <= 1, "two VIP holders during failover: {h:?}");
        if h == [standby] {
            break t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "VIP did not move in 10 s:\n{}",
            lab.logs()
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    eprintln!("VIP moved from lb{active} to lb{standby} in {moved:?}");
    assert!(moved <= Duration::from_secs(2), "failover took {moved:?} (target 2 s)");

    // Requests succeed again after the move: 2 s of continued load after it must see successes,
    // and once the client's connections have settled, none fail.
    let ok_at_move = load.ok.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(1500));
    let failed_mid = load.failed.load(Ordering::Relaxed);
    let ok_after = load.ok.load(Ordering::Relaxed);
    assert!(
        ok_after > ok_at_move + 20,
        "requests did not resume after the move ({ok_at_move} -> {ok_after})"
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        load.failed.load(Ordering::Relaxed),
        failed_mid,
        "requests still failing after the move: {:?}",
        load.errors.lock().unwrap()
    );

    // The old active restarts HAProxy and rejoins as backup; the VIP stays on the standby.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let h = lab.vip_holders();
        assert_eq!(h, vec![standby], "VIP holders changed while the old active rejoined");
        let st = lab.status(active, sa);
        if st.haproxy_running && st.vrrp == VrrpState::Backup {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "old active did not rejoin as backup: {st:?}\n{}",
            lab.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // And it stays backup (nopreempt): watch for 4 s (more than 3 VRRP advert intervals).
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(4) {
        assert_eq!(lab.vip_holders(), vec![standby], "VIP moved back or doubled after rejoin");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (seen, errs) = sample(&lab, 20);
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(seen.values().sum::<u64>(), 20);

    let failed = load.failed.load(Ordering::Relaxed);
    let errors = load.errors.lock().unwrap().clone();
    load.finish(&lab);
    eprintln!(
        "failover: {failed} requests failed around the kill; first errors: {:?}",
        &errors[..errors.len().min(3)]
    );
    Ok(())
}

#[test]
fn stopping_the_active_role_hands_the_vip_over_at_once() -> anyhow::Result<()> {
    // Agent shutdown (reboot, upgrade) stops keepalived first: it sends a priority-0 advert and
    // the peer takes the VIP without waiting for three missed adverts.
    let mut lab = Lab::new("s")?;
    let backends = format!("{}:6443", ip(BACKENDS[0]));
    let s1 = lab.lb_settings(LB1, 150, &backends, ("tcp", 500, 2, 2));
    let s2 = lab.lb_settings(LB2, 100, &backends, ("tcp", 500, 2, 2));
    lab.start_lb(LB1, s1.clone())?;
    lab.start_lb(LB2, s2.clone())?;
    let active = lab.wait_single_holder(Duration::from_secs(10))?;
    let standby = if active == LB1 { LB2 } else { LB1 };
    let ss = if standby == LB1 { &s1 } else { &s2 };
    let deadline = Instant::now() + Duration::from_secs(10);
    while lab.status(standby, ss).vrrp != VrrpState::Backup {
        assert!(Instant::now() < deadline, "standby never became backup");
        std::thread::sleep(Duration::from_millis(100));
    }
    let t0 = Instant::now();
    lab.stop_lb(active);
    let stopped = t0.elapsed();
    let start = Instant::now();
    loop {
        let h = lab.vip_holders();
        assert!(h.len() <= 1, "two holders: {h:?}");
        if h == [standby] {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "VIP not taken over");
        std::thread::sleep(Duration::from_millis(10));
    }
    let took = t0.elapsed();
    eprintln!("role stopped in {stopped:?}; VIP on lb{standby} {took:?} after the stop began");
    // Less than the 3 × advert_int + skew (≈3.6 s) a silent peer would cost.
    assert!(took < Duration::from_secs(3), "handover took {took:?}");
    let (seen, errs) = sample(&lab, 10);
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(seen.values().sum::<u64>(), 10);
    Ok(())
}
