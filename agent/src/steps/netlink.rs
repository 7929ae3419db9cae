//! Live network configuration over netlink: find each NIC by MAC (or name), rename it, set its
//! MTU, bring it up, and converge its static addresses and routes.
//!
//! This is what makes an instant clone take its new identity without a reboot: the networkd
//! files written by the `network` step only take effect when networkd (re)configures a link,
//! and a `.link` rename only when udev sees the device appear. DHCP stays networkd's job.

use std::collections::BTreeSet;
use std::net::IpAddr;

use futures::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlag, LinkMessage};
use rtnetlink::Handle;

use super::network::{NetworkConfig, Nic};
use super::{Ctx, Outcome, StepError};
use crate::types::{IpCidr, MacAddr};

/// A netlink operation failed.
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub struct NetlinkError {
    /// What we were doing, naming the NIC.
    pub what: String,
    /// The cause.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let what = what.into();
    move |e| NetlinkError { what, source: Box::new(e) }
}

/// A link as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Current name.
    pub name: String,
    /// Hardware address, for Ethernet-like links.
    pub mac: Option<MacAddr>,
    /// MTU.
    pub mtu: Option<u32>,
    /// Administratively up.
    pub up: bool,
}

fn link_of(m: &LinkMessage) -> Link {
    let mut l = Link {
        index: m.header.index,
        name: String::new(),
        mac: None,
        mtu: None,
        up: m.header.flags.contains(&LinkFlag::Up),
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::Address(b) if b.len() == 6 => {
                l.mac = Some(MacAddr([b[0], b[1], b[2], b[3], b[4], b[5]]))
            }
            LinkAttribute::Mtu(m) => l.mtu = Some(*m),
            _ => {}
        }
    }
    l
}

pub(crate) async fn links(h: &Handle) -> Result<Vec<Link>, NetlinkError> {
    let h = h.clone();
    let msgs: Vec<LinkMessage> =
        h.link().get().execute().try_collect().await.map_err(nl("list links"))?;
    Ok(msgs.iter().map(link_of).collect())
}

async fn addresses(h: &Handle, index: u32) -> Result<Vec<(IpCidr, AddressMessage)>, NetlinkError> {
    let msgs: Vec<AddressMessage> = h
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(nl("list addresses"))?;
    let mut out = Vec::new();
    for m in msgs {
        if m.header.index != index {
            continue;
        }
        // IFA_LOCAL is the interface's own address on point-to-point links; IFA_ADDRESS otherwise
        let addr = m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(ip) => Some(*ip),
            _ => None,
        });
        let addr = addr.or_else(|| {
            m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            })
        });
        if let Some(a) = addr {
            if let Ok(c) = IpCidr::new(a, m.header.prefix_len) {
                out.push((c, m));
            }
        }
    }
    Ok(out)
}

/// What [`apply`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// One line per NIC.
    pub lines: Vec<String>,
    /// NICs of the config that no link matched.
    pub missing: Vec<String>,
    /// The interface index of each NIC that a link matched, in the config's order.
    pub indices: Vec<u32>,
}

/// Whether a NIC whose MAC no link has may take over a link (see [`apply_adopting`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Adopt {
    /// Only the link with the NIC's MAC (first boot).
    No,
    /// Also the link that bears the NIC's name, which then gets the NIC's MAC (a clone).
    ByName,
}

fn find<'a>(links: &'a [Link], nic: &Nic) -> Option<&'a Link> {
    match (&nic.mac, &nic.match_name) {
        (Some(mac), _) => links.iter().find(|l| l.mac == Some(*mac)),
        (None, Some(name)) => links.iter().find(|l| l.name == name.as_str()),
        (None, None) => None,
    }
}

/// The link a clone's NIC takes over when no link has its MAC: the one named as the NIC
/// will be (its `set-name`, else its `match.name`), if it has a MAC of its own.
fn find_adoptable<'a>(links: &'a [Link], nic: &Nic) -> Option<&'a Link> {
    let name = nic.final_name()?;
    nic.mac?;
    links.iter().find(|l| l.name == name.as_str() && l.mac.is_some())
}

/// Gives the link the NIC's MAC: live where the driver allows it (virtio-net, veth), else
/// with the link down for the change (the kernel refuses a running change with EBUSY).
async fn set_mac(
    h: &Handle,
    nic: &Nic,
    link: &Link,
    did: &mut Vec<String>,
) -> Result<(), NetlinkError> {
    let Some(mac) = nic.mac else { return Ok(()) };
    let what = format!("{}: set the MAC of {} to {mac}", nic.id, link.name);
    let live = h.link().set(link.index).address(mac.0.to_vec()).execute().await;
    match live {
        Ok(()) => {}
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc_ebusy() => {
            h.link().set(link.index).down().execute().await.map_err(nl(what.clone()))?;
            h.link().set(link.index).address(mac.0.to_vec()).execute().await.map_err(nl(what))?;
        }
        Err(e) => return Err(nl(what)(e)),
    }
    let old = link.mac.map(|m| m.to_string()).unwrap_or_default();
    did.push(format!("MAC {old} -> {mac}"));
    Ok(())
}

/// `EBUSY`, as netlink reports it.
fn libc_ebusy() -> i32 {
    nix::errno::Errno::EBUSY as i32
}

/// Renames the link to the NIC's `set-name` (down first: the kernel renames only links that
/// are down) and sets its MTU, when they differ.
async fn converge_link(
    h: &Handle,
    nic: &Nic,
    link: &Link,
    all: &[Link],
    did: &mut Vec<String>,
) -> Result<(), NetlinkError> {
    let (idx, id) = (link.index, &nic.id);
    if let Some(want) = nic.set_name.as_ref().filter(|w| link.name != w.as_str()) {
        if all.iter().any(|l| l.name == want.as_str() && l.index != idx) {
            return Err(NetlinkError {
                what: format!("{id}: rename {} to {want}", link.name),
                source: format!("another link is already called {want}").into(),
            });
        }
        h.link()
            .set(idx)
            .down()
            .execute()
            .await
            .map_err(nl(format!("{id}: set {} down", link.name)))?;
        h.link()
            .set(idx)
            .name(want.to_string())
            .execute()
            .await
            .map_err(nl(format!("{id}: rename {} to {want}", link.name)))?;
        did.push(format!("renamed {} to {want}", link.name));
    }
    if let Some(mtu) = nic.mtu.filter(|m| link.mtu != Some(*m)) {
        h.link().set(idx).mtu(mtu).execute().await.map_err(nl(format!("{id}: set MTU {mtu}")))?;
        did.push(format!("mtu {mtu}"));
    }
    Ok(())
}

/// Drops the addresses the config does not list, for the families that are static (DHCP and
/// link-local addresses stay), then adds the NIC's addresses that are missing. Removals go
/// first and the addresses are read again between: without `promote_secondaries` the kernel
/// deletes every secondary address of a subnet with its primary, so a new address added
/// beside a stale one of the same subnet (a clone's beside its parent's) would go with it.
async fn converge_addresses(
    h: &Handle,
    nic: &Nic,
    idx: u32,
    did: &mut Vec<String>,
) -> Result<(), NetlinkError> {
    let id = &nic.id;
    let want: BTreeSet<IpCidr> = nic.addresses.iter().copied().collect();
    for (c, msg) in addresses(h, idx).await? {
        let dynamic = if c.is_ipv4() { nic.dhcp4 } else { nic.dhcp6 };
        let link_local = match c.addr() {
            IpAddr::V4(a) => a.is_link_local(),
            IpAddr::V6(a) => (a.segments()[0] & 0xffc0) == 0xfe80,
        };
        if !want.contains(&c) && !dynamic && !link_local {
            match h.address().del(msg).execute().await {
                Ok(()) => {}
                // gone already: a secondary deleted with its primary
                Err(rtnetlink::Error::NetlinkError(e))
                    if e.raw_code() == -(nix::errno::Errno::EADDRNOTAVAIL as i32) => {}
                Err(e) => return Err(nl(format!("{id}: remove address {c}"))(e)),
            }
            did.push(format!("-{c}"));
        }
    }
    let have = addresses(h, idx).await?;
    for a in &nic.addresses {
        if !have.iter().any(|(c, _)| c == a) {
            h.address()
                .add(idx, a.addr(), a.prefix())
                .replace()
                .execute()
                .await
                .map_err(nl(format!("{id}: add address {a}")))?;
            did.push(format!("+{a}"));
        }
    }
    Ok(())
}

/// Sets the NIC's default routes (via `gateway4`/`gateway6`) and its routes; replace is
/// idempotent.
async fn converge_routes(
    h: &Handle,
    nic: &Nic,
    idx: u32,
    did: &mut Vec<String>,
) -> Result<(), NetlinkError> {
    let id = &nic.id;
    let mut routes: Vec<(IpCidr, Option<IpAddr>, Option<u32>)> = Vec::new();
    // default routes: 0.0.0.0/0 via gateway4, ::/0 via gateway6
    let defaults = [
        nic.gateway4.map(|g| (IpAddr::V4(0.into()), IpAddr::V4(g))),
        nic.gateway6.map(|g| (IpAddr::V6(0u128.into()), IpAddr::V6(g))),
    ];
    for (any, g) in defaults.into_iter().flatten() {
        let to =
            IpCidr::new(any, 0).map_err(|e| NetlinkError { what: id.clone(), source: e.into() })?;
        routes.push((to, Some(g), None));
    }
    routes.extend(nic.routes.iter().map(|r| (r.to, r.via, r.metric)));
    for (to, via, metric) in routes {
        let net = to.network();
        let what =
            format!("{id}: route {net}{}", via.map(|v| format!(" via {v}")).unwrap_or_default());
        let req = h.route().add().output_interface(idx);
        let req = match metric {
            Some(m) => req.priority(m),
            None => req,
        };
        match (net.addr(), via) {
            (IpAddr::V4(d), via) => {
                let mut r = req.v4().replace().destination_prefix(d, net.prefix());
                if let Some(IpAddr::V4(g)) = via {
                    r = r.gateway(g);
                }
                r.execute().await.map_err(nl(what))?;
            }
            (IpAddr::V6(d), via) => {
                let mut r = req.v6().replace().destination_prefix(d, net.prefix());
                if let Some(IpAddr::V6(g)) = via {
                    r = r.gateway(g);
                }
                r.execute().await.map_err(nl(what))?;
            }
        }
        did.push(format!("route {net}"));
    }
    Ok(())
}

async fn apply_nic(
    h: &Handle,
    nic: &Nic,
    all: &[Link],
    adopt: Adopt,
) -> Result<Option<(u32, String)>, NetlinkError> {
    let mut did = Vec::new();
    let link = match (find(all, nic), adopt) {
        (Some(l), _) => l,
        (None, Adopt::ByName) => match find_adoptable(all, nic) {
            Some(l) => {
                set_mac(h, nic, l, &mut did).await?;
                l
            }
            None => return Ok(None),
        },
        (None, Adopt::No) => return Ok(None),
    };
    let idx = link.index;
    converge_link(h, nic, link, all, &mut did).await?;
    h.link().set(idx).up().execute().await.map_err(nl(format!("{}: set up", nic.id)))?;
    converge_addresses(h, nic, idx, &mut did).await?;
    converge_routes(h, nic, idx, &mut did).await?;
    Ok(Some((
        idx,
        format!(
            "{} ({}): {}",
            nic.id,
            nic.final_name().map(|n| n.to_string()).unwrap_or_else(|| link.name.clone()),
            if did.is_empty() { "unchanged".into() } else { did.join(", ") }
        ),
    )))
}

/// Runs `f` with a netlink handle, on a single-threaded runtime of its own, so it can be called
/// from a thread that joined another namespace with `setns` (how the tests drive it). On a
/// thread that already drives a runtime (which may not block), a helper thread runs it; it
/// inherits this thread's network namespace.
pub(crate) fn with_netlink<T: Send, F>(
    f: impl FnOnce(Handle) -> F + Send,
) -> Result<T, NetlinkError>
where
    F: std::future::Future<Output = Result<T, NetlinkError>>,
{
    let run = move || {
        let rt =
            tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| {
                NetlinkError { what: "start netlink runtime".into(), source: Box::new(e) }
            })?;
        rt.block_on(async {
            let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| NetlinkError {
                what: "open netlink socket".into(),
                source: Box::new(e),
            })?;
            let task = tokio::spawn(conn);
            let r = f(handle).await;
            task.abort();
            r
        })
    };
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| s.spawn(run).join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
    } else {
        run()
    }
}

/// Applies a validated config to the links of the current network namespace (see
/// [`with_netlink`] for calling it from another namespace).
pub fn apply(cfg: &NetworkConfig) -> Result<ApplyReport, NetlinkError> {
    apply_with(cfg, Adopt::No)
}

/// [`apply`] for a clone re-identified on a running machine: a NIC whose MAC no link has
/// takes over the link that bears its name (its `set-name`, else `match.name`), which gets
/// the NIC's MAC first. A hypervisor that forks a running VM cannot always change a NIC's
/// MAC under the guest (QEMU restoring saved state keeps the device's); the new instance's
/// metadata names its MAC, and the link the parent renamed to that name is the one.
pub fn apply_adopting(cfg: &NetworkConfig) -> Result<ApplyReport, NetlinkError> {
    apply_with(cfg, Adopt::ByName)
}

fn apply_with(cfg: &NetworkConfig, adopt: Adopt) -> Result<ApplyReport, NetlinkError> {
    with_netlink(|handle| async move {
        let mut report = ApplyReport::default();
        for nic in &cfg.nics {
            // re-read links: an earlier rename changes names
            let all = links(&handle).await?;
            match apply_nic(&handle, nic, &all, adopt).await? {
                Some((idx, line)) => {
                    report.indices.push(idx);
                    report.lines.push(line);
                }
                None => report.missing.push(nic.id.clone()),
            }
        }
        Ok(report)
    })
}

/// The addresses of the link called `name` in the current network namespace (the local address
/// on point-to-point links), or `None` when no link has that name.
pub fn link_addresses(name: &str) -> Result<Option<Vec<IpCidr>>, NetlinkError> {
    with_netlink(|handle| async move {
        let all = links(&handle).await?;
        let Some(link) = all.iter().find(|l| l.name == name) else { return Ok(None) };
        let have = addresses(&handle, link.index).await?;
        Ok(Some(have.into_iter().map(|(c, _)| c).collect()))
    })
}

/// Lists the links of the current network namespace.
pub fn list_links() -> Result<Vec<Link>, NetlinkError> {
    with_netlink(|handle| async move { links(&handle).await })
}

pub(crate) fn step(ctx: &Ctx<'_>) -> Result<Outcome, StepError> {
    let cfg = &ctx.plan.network;
    if cfg.nics.is_empty() {
        return Ok(Outcome::Skipped("no network configuration".into()));
    }
    if !ctx.live() {
        return Ok(Outcome::Skipped("netlink and networkd reload not done under --root".into()));
    }
    cfg.validate("network").map_err(|e| StepError::wrap("invalid network configuration", e))?;
    let report = apply(cfg).map_err(|e| StepError::wrap("apply network over netlink", e))?;
    let mut detail = report.lines.join("; ");
    if !report.missing.is_empty() {
        detail.push_str(&format!(
            "; no link for {} yet (networkd configures it when it appears)",
            report.missing.join(", ")
        ));
    }
    detail.push_str("; ");
    detail.push_str(&reload_networkd());
    Ok(Outcome::Ok(detail))
}

/// systemd-networkd's unit.
pub const NETWORKD_UNIT: &str = "systemd-networkd.service";

/// Tells a running networkd to read its files again, over D-Bus; says what happened. Not when
/// networkd is not running: first boot's early stage is ordered before it, and calling its
/// bus name would activate it (and wait for this very unit). A failed reload is reported, not
/// fatal: networkd applies the files when it starts.
pub fn reload_networkd() -> String {
    if !crate::systemd::unit_running(NETWORKD_UNIT) {
        return "networkd not running, not reloaded".into();
    }
    match crate::systemd::block_on(|| async {
        crate::systemd::SystemBus::connect().await?.networkd_reload().await
    }) {
        Ok(()) => "networkd reloaded".into(),
        Err(e) => format!("networkd reload failed: {}", crate::error::chain(&e)),
    }
}
