//! The kube roles' live health for `status` and heartbeats: kubelet's unit is active (systemd
//! over D-Bus), kubelet's own health endpoint (`http://127.0.0.1:10248/healthz`) answers `ok`,
//! and containerd answers on its socket. Node registration needs the API (next step).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::systemd::Systemd;

/// kubelet's health endpoint (its `healthzBindAddress:healthzPort` defaults).
pub const KUBELET_HEALTHZ: &str = "127.0.0.1:10248";
/// The kubelet unit.
pub const KUBELET_UNIT: &str = "kubelet.service";
/// The bound of each probe.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// One probe's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Probe {
    /// Passed.
    pub ok: bool,
    /// What was seen, or why it failed.
    pub detail: String,
}

impl Probe {
    fn from(r: Result<String, String>) -> Probe {
        match r {
            Ok(detail) => Probe { ok: true, detail },
            Err(detail) => Probe { ok: false, detail },
        }
    }
}

/// The role's health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KubeHealth {
    /// `kubelet.service` is active.
    pub kubelet_active: Probe,
    /// kubelet's `/healthz` said `ok`.
    pub kubelet_healthz: Probe,
    /// containerd answered.
    pub containerd: Probe,
    /// All of the above.
    pub healthy: bool,
}

/// GETs `http://ADDR/healthz` and expects `200` with body `ok` (kubelet's answer).
pub async fn healthz(addr: SocketAddr, timeout: Duration) -> Result<String, String> {
    let get = async {
        let mut s =
            tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
        let req = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
        let mut buf = Vec::new();
        // healthz answers are a few bytes; a runaway server is cut off
        (&mut s).take(64 * 1024).read_to_end(&mut buf).await.map_err(|e| format!("read: {e}"))?;
        let text = String::from_utf8_lossy(&buf);
        let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP answer")?;
        let status = head.split_whitespace().nth(1).unwrap_or("?").to_owned();
        // a chunked "ok" arrives as "2\r\nok\r\n0\r\n\r\n"
        let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
            body.lines().nth(1).unwrap_or("").to_owned()
        } else {
            body.to_owned()
        };
        if status == "200" && body.trim() == "ok" {
            Ok(format!("http://{addr}/healthz: ok"))
        } else {
            let b: String = body.trim().chars().take(80).collect();
            Err(format!("http://{addr}/healthz: HTTP {status} {b:?}"))
        }
    };
    tokio::time::timeout(timeout, get)
        .await
        .unwrap_or_else(|_| Err(format!("http://{addr}/healthz: no answer within {timeout:?}")))
}

/// Whether kubelet's unit is active.
pub async fn kubelet_active(sd: &impl Systemd) -> Result<String, String> {
    match sd.is_active(KUBELET_UNIT).await {
        Ok(true) => Ok(format!("{KUBELET_UNIT} active")),
        Ok(false) => Err(format!("{KUBELET_UNIT} is not active")),
        Err(e) => Err(format!("{KUBELET_UNIT}: {}", crate::error::chain(&e))),
    }
}

/// All probes: kubelet's unit through `sd` (`None` when the bus was unreachable), its
/// healthz at `healthz_addr`, containerd at `containerd_socket`.
pub async fn check(
    sd: Result<&impl Systemd, String>,
    healthz_addr: SocketAddr,
    containerd_socket: &Path,
) -> KubeHealth {
    let active = match sd {
        Ok(sd) => kubelet_active(sd).await,
        Err(e) => Err(e),
    };
    let kubelet_active = Probe::from(active);
    let kubelet_healthz = Probe::from(healthz(healthz_addr, PROBE_TIMEOUT).await);
    let containerd =
        Probe::from(super::preflight::containerd_answers(containerd_socket, PROBE_TIMEOUT).await);
    let healthy = kubelet_active.ok && kubelet_healthz.ok && containerd.ok;
    KubeHealth { kubelet_active, kubelet_healthz, containerd, healthy }
}

/// [`check`] on the node itself: the system bus, the default addresses.
pub fn check_node() -> KubeHealth {
    let addr: SocketAddr = KUBELET_HEALTHZ.parse().expect("a socket address");
    let sock = Path::new(super::kubeadm::CONTAINERD_SOCKET);
    let go = || async move {
        let bus = crate::systemd::SystemBus::connect().await;
        let sd = bus.as_ref().map_err(|e| format!("system bus: {}", crate::error::chain(e)));
        Ok::<_, crate::systemd::SystemdError>(check(sd, addr, sock).await)
    };
    crate::systemd::block_on(go).unwrap_or_else(|e| {
        let p = Probe { ok: false, detail: crate::error::chain(&e) };
        KubeHealth {
            kubelet_active: p.clone(),
            kubelet_healthz: p.clone(),
            containerd: p,
            healthy: false,
        }
    })
}
