//! The pod network for real, in network namespaces: the host-gw route controller against the
//! kernel's routing table (routes for two peers, one removed, a route that is not ours left
//! alone, hostile peers refused before anything is written), and the rendered CNI
//! configuration run through containernetworking-plugins' real `bridge` + `host-local`
//! (`/usr/lib/cni`). Needs root, iproute2, iptables and the plugins; fails (does not skip)
//! without them.

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use capstan_agent::roles::kube::cni::Conflist;
use capstan_agent::roles::kube::routes::{self, Local, Peer, PodRoute};
use capstan_agent::steps::netlink;
use capstan_agent::types::IpCidr;
use serde_json::Value;

mod common;
use common::netns::Netns;

fn c(s: &str) -> IpCidr {
    s.parse().unwrap()
}

fn peer(name: &str, node_ip: &str, cidr: &str) -> Peer {
    Peer { name: name.into(), node_ip: node_ip.parse().unwrap(), pod_cidr: c(cidr) }
}

/// Our routes in the namespace: (dst, gateway, dev).
fn our_routes(ns: &Netns) -> Vec<(String, String, String)> {
    let v = ns.json(&["route", "show", "proto", "99"]);
    let mut out: Vec<_> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["dst"].as_str().unwrap().to_owned(),
                r["gateway"].as_str().unwrap_or("").to_owned(),
                r["dev"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn pod_routes_follow_the_peers_in_the_kernel() {
    let ns = Netns::new("kroutes");
    ns.ip(&["link", "add", "ens4", "type", "veth", "peer", "name", "pens4"]);
    ns.ip(&["link", "set", "pens4", "up"]);
    ns.ip(&["link", "set", "ens4", "up"]);
    ns.ip(&["addr", "add", "10.0.0.11/24", "dev", "ens4"]);
    // somebody else's route into the pod range: never ours to touch
    ns.ip(&["route", "add", "10.244.9.0/24", "via", "10.0.0.99", "dev", "ens4"]);

    let plan = |peers: Vec<Peer>| {
        ns.run(move || {
            let addrs = netlink::link_addresses("ens4").unwrap().expect("ens4");
            let local = Local {
                cluster_cidr: "10.244.0.0/16".parse().unwrap(),
                own_pod_cidr: "10.244.1.0/24".parse().unwrap(),
                link_addrs: &addrs,
            };
            routes::plan(&local, &peers)
        })
    };
    let apply = |r: Vec<PodRoute>| ns.run(move || routes::apply("ens4", &r).unwrap());

    let two = plan(vec![
        peer("b", "10.0.0.12", "10.244.2.0/24"),
        peer("c", "10.0.0.13", "10.244.3.0/24"),
    ])
    .unwrap();
    let done = apply(two.clone());
    assert_eq!(done.added.len(), 2);
    assert!(done.removed.is_empty());
    let want = |d: &str, g: &str| (d.to_owned(), g.to_owned(), "ens4".to_owned());
    assert_eq!(
        our_routes(&ns),
        [want("10.244.2.0/24", "10.0.0.12"), want("10.244.3.0/24", "10.0.0.13")]
    );
    // idempotent
    let again = apply(two);
    assert!(again.removed.is_empty());
    assert_eq!(our_routes(&ns).len(), 2);

    // c leaves, b moves to another address
    let one = plan(vec![peer("b", "10.0.0.22", "10.244.2.0/24")]).unwrap();
    let done = apply(one);
    assert_eq!(done.removed.len(), 2, "{done:?}"); // c's route, and b's old next hop
    assert_eq!(our_routes(&ns), [want("10.244.2.0/24", "10.0.0.22")]);
    let all = ns.ip(&["route", "show"]);
    assert!(all.contains("10.244.9.0/24 via 10.0.0.99"), "{all}");

    // hostile peers: refused before anything reaches the kernel
    for (p, why) in [
        (peer("x", "192.168.7.7", "10.244.5.0/24"), "not on the shared link"),
        (peer("x", "10.0.0.14", "10.244.1.0/24"), "overlaps this node's"),
        (peer("x", "10.0.0.14", "10.0.0.0/8"), "outside the cluster's"),
    ] {
        let e = plan(vec![peer("b", "10.0.0.22", "10.244.2.0/24"), p]).unwrap_err();
        assert!(e.to_string().contains(why) && e.node == "x", "{e}");
    }
    let e = plan(vec![
        peer("b", "10.0.0.22", "10.244.2.0/24"),
        peer("d", "10.0.0.14", "10.244.2.128/25"),
    ])
    .unwrap_err();
    assert!(e.to_string().contains("overlaps node b's"), "{e}");
    assert_eq!(our_routes(&ns), [want("10.244.2.0/24", "10.0.0.22")]);

    // no peers: every route of ours goes
    let done = apply(Vec::new());
    assert_eq!(done.removed.len(), 1);
    assert!(our_routes(&ns).is_empty());
    let e = ns.run(|| routes::apply("nope0", &[]).unwrap_err().to_string());
    assert!(e.contains("no link nope0"), "{e}");
}

fn plugin(host: &Netns, pod: &Netns, command: &str, conf: &str) -> std::process::Output {
    let mut ch = Command::new("ip")
        .args(["netns", "exec", &host.0, "/usr/lib/cni/bridge"])
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", "capstan-test")
        .env("CNI_NETNS", format!("/run/netns/{}", pod.0))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ip netns exec");
    ch.stdin.take().unwrap().write_all(conf.as_bytes()).unwrap();
    ch.wait_with_output().unwrap()
}

#[test]
fn the_conflist_works_with_the_real_bridge_plugin() {
    assert!(
        std::path::Path::new("/usr/lib/cni/bridge").exists(),
        "containernetworking-plugins (scripts/setup)"
    );
    let host = Netns::new("kcnih");
    let pod = Netns::new("kcnip");
    let leases = tempfile::tempdir().unwrap();
    let conf = Conflist::for_node(c("10.244.1.0/24"))
        .unwrap()
        .with_data_dir(leases.path().to_str().unwrap());
    // the conflist parses as JSON with the plugin chain a runtime expects
    let v: Value = serde_json::from_str(&conf.to_json()).unwrap();
    assert_eq!(v["plugins"].as_array().unwrap().len(), 2);

    let o = plugin(&host, &pod, "ADD", &conf.bridge_plugin_json());
    assert!(
        o.status.success(),
        "bridge ADD: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let res: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(res["ips"][0]["address"], "10.244.1.2/24", "{res}");
    assert_eq!(res["ips"][0]["gateway"], "10.244.1.1", "{res}");
    // the bridge holds the gateway; the pod routes through it
    let br = host.json(&["addr", "show", "cni0"]);
    let addrs: Vec<&str> =
        br[0]["addr_info"].as_array().unwrap().iter().filter_map(|a| a["local"].as_str()).collect();
    assert!(addrs.contains(&"10.244.1.1"), "{br}");
    let r = pod.ip(&["route", "show", "default"]);
    assert!(r.contains("via 10.244.1.1 dev eth0"), "{r}");
    // and the pod reaches its gateway
    let ping = Command::new("ip")
        .args(["netns", "exec", &pod.0, "busybox", "ping", "-c1", "-W2", "10.244.1.1"])
        .output()
        .unwrap();
    assert!(ping.status.success(), "{}", String::from_utf8_lossy(&ping.stdout));
    let gw: Ipv4Addr = res["ips"][0]["gateway"].as_str().unwrap().parse().unwrap();
    assert_eq!(gw, Ipv4Addr::new(10, 244, 1, 1));

    let o = plugin(&host, &pod, "DEL", &conf.bridge_plugin_json());
    assert!(o.status.success(), "bridge DEL: {}", String::from_utf8_lossy(&o.stderr));
    let links = pod.json(&["link", "show"]);
    assert!(!links.to_string().contains("\"eth0\""), "{links}");
}
