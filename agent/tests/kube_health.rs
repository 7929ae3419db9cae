//! The kube roles' health probes against local servers: kubelet's `/healthz` as kubelet
//! answers it (`200 ok`, chunked or not), a failing one (`500` with kubelet's check list), a
//! closed port and a server that never answers; the kubelet unit probe through the real
//! `SystemBus` when no bus is reachable is reported, not a panic.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use capstan_agent::roles::kube::health;

/// Answers every connection with `resp` (after reading the request head).
fn server(resp: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let mut buf = [0u8; 1024];
            let mut req = Vec::new();
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            assert!(req.starts_with(b"GET /healthz HTTP/1.1\r\n"));
            let _ = s.write_all(resp.as_bytes());
        }
    });
    addr
}

#[tokio::test]
async fn healthz_ok_and_not_ok() {
    let t = Duration::from_secs(2);
    let ok = server(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 2\r\n\r\nok",
    );
    assert_eq!(health::healthz(ok, t).await.unwrap(), format!("http://{ok}/healthz: ok"));
    let chunked =
        server("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n");
    assert!(health::healthz(chunked, t).await.is_ok());
    let bad = server("HTTP/1.1 500 Internal Server Error\r\nContent-Length: 49\r\n\r\n[+]ping ok\n[-]syncloop failed: reason withheld\n");
    let e = health::healthz(bad, t).await.unwrap_err();
    assert!(e.contains("HTTP 500") && e.contains("syncloop failed"), "{e}");
    let not_ok = server("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnope");
    assert!(health::healthz(not_ok, t).await.is_err());
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let e = health::healthz(closed, t).await.unwrap_err();
    assert!(e.contains("connect"), "{e}");
    // accepts and never answers
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent = l.local_addr().unwrap();
    let e = health::healthz(silent, Duration::from_millis(500)).await.unwrap_err();
    assert!(e.contains("no answer within"), "{e}");
    drop(l);
}

#[tokio::test]
async fn all_probes_together() {
    let ok = server("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    let d = tempfile::tempdir().unwrap();
    let h = health::check(
        Err::<&capstan_agent::systemd::SystemBus, _>("system bus: unreachable".to_owned()),
        ok,
        &d.path().join("containerd.sock"),
    )
    .await;
    assert!(h.kubelet_healthz.ok);
    assert!(!h.kubelet_active.ok && h.kubelet_active.detail.contains("unreachable"));
    assert!(!h.containerd.ok && h.containerd.detail.contains("is containerd running?"));
    assert!(!h.healthy);
    let v = serde_json::to_value(&h).unwrap();
    assert_eq!(v["kubelet_healthz"]["ok"], true);
}

#[path = "common/usermanager.rs"]
mod usermanager;

/// The kubelet probe through a real systemd (a user manager of the test's own) running a
/// `kubelet.service` that is a `sleep`: active while it runs, not after a stop.
#[test]
fn kubelet_active_through_a_real_systemd() -> anyhow::Result<()> {
    use capstan_agent::systemd::Systemd as _;
    let _serial = usermanager::SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(m) = usermanager::UserManager::start()? else { return Ok(()) };
    m.unit("kubelet.service", "[Service]\nExecStart=/bin/sleep infinity\n")?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let sd = m.connect().await?;
        let e = health::kubelet_active(&sd).await.unwrap_err();
        assert_eq!(e, "kubelet.service is not active");
        sd.start("kubelet.service").await?;
        assert_eq!(health::kubelet_active(&sd).await.unwrap(), "kubelet.service active");
        let ok = server("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        let d = tempfile::tempdir()?;
        let h = health::check(Ok(&sd), ok, &d.path().join("containerd.sock")).await;
        assert!(h.kubelet_active.ok && h.kubelet_healthz.ok && !h.containerd.ok && !h.healthy);
        sd.stop("kubelet.service").await?;
        assert!(health::kubelet_active(&sd).await.is_err());
        anyhow::Ok(())
    })
}
