//! The host's way into a cluster: a TCP forwarder from a loopback port on the host to the VIP
//! in the cluster's namespace. It binds its listener in the host's namespace, then moves its
//! thread into the cluster's (setns): every connection it then opens, and every thread it
//! starts, is in the cluster's namespace, while the listener stays on the host. No veth, no
//! host route, no address of the cluster on a host interface.
//!
//! It runs as `capstan lab cluster forward` (hidden), detached, pid in the cluster's record;
//! being in the namespace, [`super::net::delete`] ends it with the VMs.

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use anyhow::Context;

/// Moves the calling thread into network namespace `ns` (`/run/netns/<ns>`).
pub fn enter(ns: &str) -> anyhow::Result<()> {
    let path = Path::new("/run/netns").join(ns);
    let f = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("entering network namespace {ns}"))
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let _ = io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}

fn relay(client: TcpStream, to: SocketAddr) {
    let Ok(server) = TcpStream::connect_timeout(&to, Duration::from_secs(5)) else {
        // the VIP is not up (yet): the client sees the connection close
        return;
    };
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || pipe(client, server));
    pipe(s2, c2);
    let _ = up.join();
}

/// Serves forever: `listener` (bound on the host) to `to` inside `ns`.
pub fn serve(listener: TcpListener, ns: &str, to: SocketAddr) -> anyhow::Result<()> {
    enter(ns)?;
    for conn in listener.incoming() {
        match conn {
            Ok(c) => {
                std::thread::spawn(move || relay(c, to));
            }
            Err(e) => eprintln!("capstan lab cluster forward: accept: {e}"),
        }
    }
    Ok(())
}

/// A free loopback port on the host (the kernel's pick).
pub fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding a loopback port")?;
    Ok(l.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};
    use std::net::Ipv4Addr;

    use super::super::net;
    use super::*;

    /// Real namespace (root): a listener on the bridge address inside, reached from the host's
    /// loopback.
    #[test]
    fn the_host_port_reaches_a_listener_in_the_namespace() {
        let ns = format!("capstan-fwd-{}", std::process::id());
        let _ = net::delete(&ns, Duration::from_secs(1));
        let _guard = net::tests::NsGuard(ns.clone());
        net::create(&ns, Ipv4Addr::new(10, 77, 0, 1), 24).unwrap();
        let target: SocketAddr = "10.77.0.1:16443".parse().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let ns2 = ns.clone();
        std::thread::spawn(move || {
            enter(&ns2).unwrap();
            let l = TcpListener::bind(target).unwrap();
            tx.send(()).unwrap();
            let (mut c, _) = l.accept().unwrap();
            let mut buf = [0u8; 5];
            c.read_exact(&mut buf).unwrap();
            c.write_all(&buf.map(|b| b.to_ascii_uppercase())).unwrap();
        });
        rx.recv().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let ns3 = ns.clone();
        std::thread::spawn(move || serve(listener, &ns3, target));
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.write_all(b"hello").unwrap();
        let mut got = String::new();
        c.read_to_string(&mut got).unwrap();
        assert_eq!(got, "HELLO");
        net::delete(&ns, Duration::from_secs(1)).unwrap();
        assert!(!net::exists(&ns).unwrap());
        assert!(enter("capstan-no-such-ns").unwrap_err().to_string().contains("/run/netns/"));
    }
}
