//! Routes to the other nodes' pod networks, flannel's host-gw idea: on the L2 the nodes
//! share, the pod CIDR of node B is reached through B's node address, so a plain kernel route
//! `10.244.2.0/24 via 10.0.0.12 dev ens4` per peer is the whole overlay.
//!
//! [`plan`] checks the peers (pure: hostile input refused with a reason naming the peer);
//! [`apply`] converges the kernel's main table over rtnetlink: the routes this controller owns
//! carry protocol [`RTPROT_CAPSTAN`] (`ip route show proto 99`), so a peer that left loses
//! its route and nobody else's route is touched.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol};
use netlink_packet_route::AddressFamily;

use crate::steps::netlink::{self as nl, NetlinkError};
use crate::types::IpCidr;

/// The routing protocol number of our routes (unassigned in iproute2's `rt_protos`).
pub const RTPROT_CAPSTAN: u8 = 99;

/// Another node: its name, its address on the shared link, and its pod CIDR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The node's name (for messages).
    pub name: String,
    /// Its address on the shared link.
    pub node_ip: Ipv4Addr,
    /// Its pod network (`spec.podCIDR`).
    pub pod_cidr: IpCidr,
}

/// One route to install.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PodRoute {
    /// The peer's pod network.
    pub dst: IpCidr,
    /// The peer's node address.
    pub via: Ipv4Addr,
}

/// Why a peer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pod route for node {node}: {reason}")]
pub struct PeerError {
    /// The peer.
    pub node: String,
    /// Why.
    pub reason: String,
}

/// This node, as [`plan`] sees it.
#[derive(Debug, Clone)]
pub struct Local<'a> {
    /// The cluster's pod network (`kube.pod-cidr`): every peer's CIDR lies inside it.
    pub cluster_cidr: IpCidr,
    /// This node's own pod CIDR (on its bridge, not routed).
    pub own_pod_cidr: IpCidr,
    /// The addresses of the shared link (each with its prefix): a peer must be on one.
    pub link_addrs: &'a [IpCidr],
}

/// The routes for `peers`, or the first peer refused: a CIDR that is not a network inside the
/// cluster's, that overlaps this node's or another peer's, or a peer that is not on the link.
pub fn plan(local: &Local<'_>, peers: &[Peer]) -> Result<Vec<PodRoute>, PeerError> {
    let mut out: Vec<(PodRoute, &str)> = Vec::new();
    for p in peers {
        let bad = |reason: String| PeerError { node: p.name.clone(), reason };
        let c = p.pod_cidr;
        if !c.is_ipv4() || c.network() != c {
            return Err(bad(format!("pod CIDR {c} is not an IPv4 network")));
        }
        if c.prefix() < local.cluster_cidr.prefix() || !local.cluster_cidr.contains(c.addr()) {
            return Err(bad(format!(
                "pod CIDR {c} is outside the cluster's {}",
                local.cluster_cidr
            )));
        }
        if super::settings::overlaps(&c, &local.own_pod_cidr) {
            return Err(bad(format!("pod CIDR {c} overlaps this node's {}", local.own_pod_cidr)));
        }
        if let Some((_, other)) = out.iter().find(|(r, _)| super::settings::overlaps(&r.dst, &c)) {
            return Err(bad(format!("pod CIDR {c} overlaps node {other}'s")));
        }
        let ip = IpAddr::V4(p.node_ip);
        if local.link_addrs.iter().any(|a| a.addr() == ip) {
            return Err(bad(format!("{} is this node's own address", p.node_ip)));
        }
        if !local.link_addrs.iter().any(|a| a.contains(ip)) {
            return Err(bad(format!(
                "{} is not on the shared link (host-gw needs the peer on the same L2)",
                p.node_ip
            )));
        }
        if let Some((_, other)) = out.iter().find(|(r, _)| r.via == p.node_ip) {
            return Err(bad(format!("{} is also node {other}'s address", p.node_ip)));
        }
        out.push((PodRoute { dst: c, via: p.node_ip }, p.name.as_str()));
    }
    let mut routes: Vec<PodRoute> = out.into_iter().map(|(r, _)| r).collect();
    routes.sort();
    Ok(routes)
}

/// What [`apply`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Routes added or replaced.
    pub added: Vec<PodRoute>,
    /// Our routes removed (peers gone).
    pub removed: Vec<IpCidr>,
}

fn owned_route(m: &RouteMessage) -> Option<(IpCidr, Option<Ipv4Addr>, Option<u32>)> {
    let h = &m.header;
    if h.address_family != AddressFamily::Inet
        || h.protocol != RouteProtocol::Other(RTPROT_CAPSTAN)
        || h.table != netlink_packet_route::route::RouteHeader::RT_TABLE_MAIN
    {
        return None;
    }
    let mut dst = None;
    let mut via = None;
    let mut oif = None;
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = Some(*d),
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => via = Some(*g),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    let dst = IpCidr::new(IpAddr::V4(dst?), h.destination_prefix_length).ok()?;
    Some((dst, via, oif))
}

/// Converges the main table of the current network namespace to `routes` through `link`:
/// adds or replaces each, removes our routes that are not wanted.
pub fn apply(link: &str, routes: &[PodRoute]) -> Result<Applied, NetlinkError> {
    let link = link.to_owned();
    let routes = routes.to_vec();
    nl::with_netlink(move |h| async move {
        let err =
            |what: String| move |e: rtnetlink::Error| NetlinkError { what, source: Box::new(e) };
        let all = nl::links(&h).await?;
        let Some(l) = all.iter().find(|l| l.name == link) else {
            return Err(NetlinkError {
                what: format!("pod routes: no link {link}"),
                source: "no such link".into(),
            });
        };
        let have: Vec<RouteMessage> = h
            .route()
            .get(rtnetlink::IpVersion::V4)
            .execute()
            .try_collect()
            .await
            .map_err(err("list routes".into()))?;
        let mut done = Applied::default();
        for m in have {
            let Some((dst, via, oif)) = owned_route(&m) else { continue };
            let wanted =
                routes.iter().any(|r| r.dst == dst && Some(r.via) == via && oif == Some(l.index));
            if !wanted {
                h.route().del(m).execute().await.map_err(err(format!("delete route {dst}")))?;
                done.removed.push(dst);
            }
        }
        for r in &routes {
            let IpAddr::V4(d) = r.dst.addr() else { continue };
            h.route()
                .add()
                .v4()
                .replace()
                .destination_prefix(d, r.dst.prefix())
                .gateway(r.via)
                .output_interface(l.index)
                .protocol(RouteProtocol::Other(RTPROT_CAPSTAN))
                .execute()
                .await
                .map_err(err(format!("route {} via {}", r.dst, r.via)))?;
            done.added.push(*r);
        }
        Ok(done)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> IpCidr {
        s.parse().unwrap()
    }
    fn peer(name: &str, ip: &str, cidr: &str) -> Peer {
        Peer { name: name.into(), node_ip: ip.parse().unwrap(), pod_cidr: c(cidr) }
    }

    #[test]
    fn peers_are_planned_or_refused_by_name() {
        let addrs = [c("10.0.0.11/24")];
        let local = Local {
            cluster_cidr: c("10.244.0.0/16"),
            own_pod_cidr: c("10.244.1.0/24"),
            link_addrs: &addrs,
        };
        let r = plan(
            &local,
            &[peer("b", "10.0.0.13", "10.244.3.0/24"), peer("a", "10.0.0.12", "10.244.2.0/24")],
        )
        .unwrap();
        assert_eq!(r[0], PodRoute { dst: c("10.244.2.0/24"), via: "10.0.0.12".parse().unwrap() });
        assert_eq!(r.len(), 2);
        for (p, why) in [
            (peer("x", "10.0.0.12", "10.244.1.0/24"), "overlaps this node's"),
            (peer("x", "10.0.0.12", "10.244.0.0/16"), "overlaps this node's"),
            (peer("x", "10.0.0.12", "10.245.0.0/24"), "outside the cluster's"),
            (peer("x", "10.0.0.12", "0.0.0.0/0"), "outside the cluster's"),
            (peer("x", "10.0.0.12", "10.244.2.1/24"), "not an IPv4 network"),
            (peer("x", "192.168.9.9", "10.244.2.0/24"), "not on the shared link"),
            (peer("x", "10.0.0.11", "10.244.2.0/24"), "own address"),
        ] {
            let e = plan(&local, &[p]).unwrap_err();
            assert_eq!(e.node, "x");
            assert!(e.to_string().contains(why), "{e}");
        }
        let e = plan(
            &local,
            &[peer("a", "10.0.0.12", "10.244.2.0/24"), peer("b", "10.0.0.13", "10.244.2.0/25")],
        )
        .unwrap_err();
        assert!(e.to_string().contains("overlaps node a's"), "{e}");
        let e = plan(
            &local,
            &[peer("a", "10.0.0.12", "10.244.2.0/24"), peer("b", "10.0.0.12", "10.244.3.0/24")],
        )
        .unwrap_err();
        assert!(e.to_string().contains("also node a's address"), "{e}");
    }
}
