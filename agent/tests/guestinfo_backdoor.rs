//! The VMware backdoor guestinfo transport against a simulated VMX: a host-side implementation
//! of the RPCI message protocol (open with cookie, send size/payload, receive size/payload/
//! status, close) and of `info-get`/`info-set`. It checks every register the guest sends, so
//! the framing is tested call by call; the real port I/O cannot run outside VMware.

use std::collections::{BTreeMap, HashMap};

use capstan_agent::guestinfo::backdoor::rpci::{
    MsgType, Port, Regs, CMD_MESSAGE, FLAG_COOKIE, MAGIC, PORT, PROTO_RPCI, STATUS_CPT,
    STATUS_DORECV, STATUS_SUCCESS,
};
use capstan_agent::guestinfo::backdoor::{Access, Backdoor};
use capstan_agent::guestinfo::{Guestinfo, GuestinfoError};

#[derive(Debug, Default)]
struct Chan {
    cookie: (u32, u32),
    expect: usize,
    buf: Vec<u8>,
    reply: Option<(Vec<u8>, usize)>,
}

/// A simulated VMX: guestinfo store, channels, and a log of requests.
#[derive(Debug, Default)]
struct SimVmx {
    store: BTreeMap<String, String>,
    read_only: Vec<String>,
    chans: HashMap<u16, Chan>,
    next: u16,
    calls: usize,
    requests: Vec<String>,
    /// Answer the Nth SendPayload call with a checkpoint status once.
    checkpoint_at: Option<usize>,
}

fn out(status: u32, ebx: u32, edx_hi: u32) -> Regs {
    Regs { eax: 0, ebx, ecx: status << 16, edx: edx_hi << 16, esi: 0, edi: 0 }
}

impl SimVmx {
    fn handle(&mut self, msg: &[u8]) -> Vec<u8> {
        let text = String::from_utf8_lossy(msg).into_owned();
        self.requests.push(text.clone());
        if let Some(key) = text.strip_prefix("info-get ") {
            match self.store.get(key) {
                Some(v) => format!("1 {v}").into_bytes(),
                None => b"0 No value found".to_vec(),
            }
        } else if let Some(rest) = text.strip_prefix("info-set ") {
            let (key, value) = rest.split_once(' ').unwrap_or((rest, ""));
            if self.read_only.iter().any(|k| k == key) {
                return b"0 Permission denied".to_vec();
            }
            self.store.insert(key.to_owned(), value.to_owned());
            b"1 ".to_vec()
        } else if text == "instantclone.freeze" {
            // VMware's instant-clone freeze: the call returns once the VM runs again (in the
            // child, or the parent unfrozen); refused where instant clone is not allowed.
            if self.read_only.iter().any(|k| k == "instantclone.freeze") {
                return b"0 Permission denied".to_vec();
            }
            let n = self.store.get("guestinfo.test.freezes").map_or(0, |v| v.parse().unwrap_or(0));
            self.store.insert("guestinfo.test.freezes".into(), (n + 1).to_string());
            b"1 ".to_vec()
        } else {
            b"0 Unknown command".to_vec()
        }
    }
}

impl Port for SimVmx {
    fn call(&mut self, r: Regs) -> Regs {
        self.calls += 1;
        assert_eq!(r.eax, MAGIC, "magic");
        assert_eq!(r.ecx & 0xffff, CMD_MESSAGE, "command");
        assert_eq!(r.edx & 0xffff, u32::from(PORT), "port");
        let ty = r.ecx >> 16;
        let id = (r.edx >> 16) as u16;
        if ty == MsgType::Open as u32 {
            assert_eq!(r.ebx, PROTO_RPCI | FLAG_COOKIE, "RPCI with cookie");
            self.next += 1;
            let cookie = (0xC0DE_0000 | u32::from(self.next), 0xFEED_0000 | u32::from(self.next));
            self.chans.insert(self.next, Chan { cookie, ..Chan::default() });
            return Regs {
                eax: 0,
                ebx: 0,
                ecx: STATUS_SUCCESS << 16,
                edx: u32::from(self.next) << 16,
                esi: cookie.0,
                edi: cookie.1,
            };
        }
        let calls = self.calls;
        let cpt = self.checkpoint_at;
        let Some(ch) = self.chans.get_mut(&id) else {
            return out(0, 0, 0);
        };
        assert_eq!((r.esi, r.edi), ch.cookie, "cookie of channel {id}");
        match ty {
            t if t == MsgType::SendSize as u32 => {
                ch.expect = r.ebx as usize;
                ch.buf.clear();
                ch.reply = None;
                if ch.expect == 0 {
                    let reply = self.handle(&[]);
                    self.chans.get_mut(&id).unwrap().reply = Some((reply, 0));
                }
                out(STATUS_SUCCESS | 0x80, 0, 0)
            }
            t if t == MsgType::SendPayload as u32 => {
                if cpt == Some(calls) {
                    self.checkpoint_at = None;
                    ch.buf.clear();
                    return out(STATUS_CPT, 0, 0);
                }
                let take = (ch.expect - ch.buf.len()).min(4);
                ch.buf.extend_from_slice(&r.ebx.to_le_bytes()[..take]);
                if ch.buf.len() == ch.expect {
                    let msg = std::mem::take(&mut ch.buf);
                    let reply = self.handle(&msg);
                    self.chans.get_mut(&id).unwrap().reply = Some((reply, 0));
                }
                out(STATUS_SUCCESS, 0, 0)
            }
            t if t == MsgType::RecvSize as u32 => match &ch.reply {
                Some((reply, _)) => out(
                    STATUS_SUCCESS | STATUS_DORECV,
                    reply.len() as u32,
                    MsgType::SendSize as u32,
                ),
                None => out(STATUS_SUCCESS, 0, 0),
            },
            t if t == MsgType::RecvPayload as u32 => {
                assert_eq!(r.ebx, STATUS_SUCCESS);
                let (reply, pos) = ch.reply.as_mut().expect("reply to receive");
                let mut w = [0u8; 4];
                let end = (*pos + 4).min(reply.len());
                w[..end - *pos].copy_from_slice(&reply[*pos..end]);
                *pos = end;
                out(STATUS_SUCCESS, u32::from_le_bytes(w), MsgType::SendPayload as u32)
            }
            t if t == MsgType::RecvStatus as u32 => out(STATUS_SUCCESS, 0, 0),
            t if t == MsgType::Close as u32 => {
                self.chans.remove(&id);
                out(STATUS_SUCCESS, 0, 0)
            }
            _ => out(0, 0, 0),
        }
    }
}

fn backdoor(sim: SimVmx) -> Backdoor<SimVmx> {
    Backdoor::with_port(sim, Access::Unprivileged)
}

#[test]
fn get_set_and_missing_keys() {
    let mut sim = SimVmx::default();
    sim.store.insert("guestinfo.capstan.hostname".into(), "node-7".into());
    let b = backdoor(sim);
    assert_eq!(b.transport(), "vmware-backdoor");
    assert_eq!(b.get("capstan.hostname").unwrap().as_deref(), Some("node-7"));
    assert_eq!(b.get("capstan.role").unwrap(), None);
    b.set("capstan.status", "ready: 12 steps ok").unwrap();
    assert_eq!(b.get("capstan.status").unwrap().as_deref(), Some("ready: 12 steps ok"));
    // An empty value cannot be stored by the host: a single space is written (as cloud-init).
    b.set("capstan.status", "").unwrap();
    assert_eq!(b.get("capstan.status").unwrap().as_deref(), Some(" "));
    assert!(matches!(b.get("bad key/../x"), Err(GuestinfoError::InvalidKey(_))));
}

#[test]
fn values_of_every_length_up_to_64k_survive_the_framing() {
    let b = backdoor(SimVmx::default());
    for len in [0usize, 1, 2, 3, 4, 5, 7, 8, 4093, 65_536] {
        let v: String = (0..len).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
        let key = format!("capstan.len{len}");
        b.set(&key, &v).unwrap();
        let got = b.get(&key).unwrap().unwrap();
        let want = if v.is_empty() { " ".to_owned() } else { v };
        assert_eq!(got.len(), want.len(), "len {len}");
        assert_eq!(got, want, "len {len}");
    }
}

#[test]
fn refused_writes_and_checkpoints() {
    let mut sim = SimVmx::default();
    sim.read_only.push("guestinfo.userdata".into());
    let b = backdoor(sim);
    // vSphere 8.0U3 refuses guest writes to cloud-init's keys: a clear error, not a panic.
    let e = b.set("userdata", "---").unwrap_err();
    assert!(e.to_string().contains("info-set refused: Permission denied"), "{e}");
    // A checkpoint mid-message: the exchange is retried and succeeds.
    let mut sim = SimVmx::default();
    sim.store.insert("guestinfo.k".into(), "v".into());
    sim.checkpoint_at = Some(3);
    let b = backdoor(sim);
    assert_eq!(b.get("k").unwrap().as_deref(), Some("v"));
}

#[test]
fn gather_reads_capv_keys_over_the_backdoor_and_scrubs_userdata() {
    use base64::Engine as _;
    let mut sim = SimVmx::default();
    let md = "instance-id: vm-backdoor-1\nlocal-hostname: bd-node\n";
    let ud = "#cloud-config\nruncmd:\n- [echo, hi]\n";
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    sim.store.insert("guestinfo.metadata".into(), b64(md));
    sim.store.insert("guestinfo.metadata.encoding".into(), "base64".into());
    sim.store.insert("guestinfo.userdata".into(), b64(ud));
    sim.store.insert("guestinfo.userdata.encoding".into(), "b64".into());
    sim.store.insert("guestinfo.capstan.dns.servers".into(), "10.1.1.1".into());
    sim.store.insert("guestinfo.capstan.lb.vrrp.secret".into(), "s3cret".into());
    let t = tempfile::tempdir().unwrap();
    let opts = capstan_agent::sources::SourceOptions::rooted(t.path());
    let g = capstan_agent::sources::gather_with(&opts, Some(Box::new(backdoor(sim))));
    assert!(g.errors.is_empty(), "{:?}", g.errors);
    assert_eq!(g.instance_id.as_str(), "vm-backdoor-1");
    assert_eq!(g.userdata.as_deref(), Some(ud));
    let dns = &g.flat["dns.servers"];
    assert_eq!(dns.origin.source, "vmware-backdoor");
    assert_eq!(dns.origin.key, "guestinfo.capstan.dns.servers");
    assert!(g.secret_keys.contains(&"userdata".to_owned()));
    assert!(g.secret_keys.contains(&"capstan.lb.vrrp.secret".to_owned()));
    assert!(g.scrub_secrets().is_empty());
    let gi = g.guestinfo.as_ref().unwrap();
    assert_eq!(gi.get("userdata").unwrap().as_deref(), Some("---"));
    assert_eq!(gi.get("userdata.encoding").unwrap().as_deref(), Some(" "));
    assert_eq!(gi.get("capstan.lb.vrrp.secret").unwrap().as_deref(), Some("---"));
    assert_eq!(gi.get("metadata").unwrap().as_deref(), Some(b64(md).as_str()));
}

#[test]
fn instantclone_freeze_goes_over_the_rpci_channel() {
    use capstan_agent::reidentify::freeze::{self, ForkRpc, FreezeOptions};
    let b = backdoor(SimVmx::default());
    assert_eq!(ForkRpc::freeze(&b).unwrap(), "");
    ForkRpc::freeze(&b).unwrap();
    assert_eq!(
        b.get("test.freezes").unwrap().as_deref(),
        Some("2"),
        "two freezes reached the host"
    );
    // an unknown command is the host's error, named
    let e = b.command("instantclone.bogus").unwrap_err();
    assert!(e.to_string().contains("instantclone.bogus refused: Unknown command"), "{e}");

    // freeze with the backdoor: the RPC is the last step, after the marker
    let t = tempfile::tempdir().unwrap();
    let root = capstan_agent::root::Root::new(t.path()).unwrap();
    let opts = FreezeOptions {
        root: root.clone(),
        live: false,
        guestinfo: Some(Box::new(backdoor(SimVmx::default()))),
        rpc: Some(Box::new(backdoor(SimVmx::default()))),
    };
    let report = freeze::freeze(&opts).unwrap();
    let names: Vec<&str> = report.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["journal-sync", "sync", "marker", "guestinfo", "instantclone.freeze"]);
    assert_eq!(report.steps[3].detail, "guestinfo.capstan.state = frozen instance-id=");
    assert!(report.resumed_after_ms.is_some());
    assert!(freeze::frozen(&root).is_some());

    // refused by the host: an error naming the RPC and the host's answer; no marker left
    let mut sim = SimVmx::default();
    sim.read_only.push("instantclone.freeze".into());
    let opts = FreezeOptions { rpc: Some(Box::new(backdoor(sim))), guestinfo: None, ..opts };
    freeze::thaw(&root);
    let e = freeze::freeze(&opts).unwrap_err();
    let chain = capstan_agent::error::chain(&e);
    assert!(chain.contains("instantclone.freeze refused: Permission denied"), "{chain}");
    assert!(freeze::frozen(&root).is_none());
}

/// Heartbeat settings read over the backdoor (PEM with its line breaks, as `vmware-rpctool`
/// or a vApp property carries it) build a usable sender configuration, and the daemon's short
/// status goes back with `info-set guestinfo.capstan.status`, within its bound.
#[test]
fn heartbeat_settings_arrive_and_the_short_status_is_published_over_the_backdoor() {
    use capstan_agent::heartbeat::{status, Check, Heartbeat, HeartbeatSettings, Outcome};
    let ca = rcgen::generate_simple_self_signed(vec!["hub".into()]).unwrap();
    let node = rcgen::generate_simple_self_signed(vec!["vm-hb-1".into()]).unwrap();
    let mut sim = SimVmx::default();
    let md = "instance-id: vm-hb-1\nlocal-hostname: hb-node\n";
    sim.store.insert("guestinfo.metadata".into(), md.into());
    sim.store.insert("guestinfo.capstan.heartbeat.url".into(), "https://hub.example:7443".into());
    sim.store.insert("guestinfo.capstan.heartbeat.ca".into(), ca.cert.pem());
    sim.store.insert("guestinfo.capstan.heartbeat.client-cert".into(), node.cert.pem());
    sim.store
        .insert("guestinfo.capstan.heartbeat.client-key".into(), node.key_pair.serialize_pem());
    let t = tempfile::tempdir().unwrap();
    let opts = capstan_agent::sources::SourceOptions::rooted(t.path());
    let g = capstan_agent::sources::gather_with(&opts, Some(Box::new(backdoor(sim))));
    assert!(g.config.errors.is_empty(), "{:?}", g.config.errors);
    assert_eq!(g.flat["heartbeat.client-key"].origin.source, "vmware-backdoor");
    assert!(g.secret_keys.contains(&"capstan.heartbeat.client-key".to_owned()));
    let s = HeartbeatSettings::from_config(&g.config.heartbeat).unwrap().unwrap();
    assert_eq!(s.url, "https://hub.example:7443");
    s.client().expect("a client from settings read over the backdoor");

    let gi = g.guestinfo.as_deref().unwrap();
    let mut hb = Heartbeat::new(g.instance_id.clone(), "hb-node".parse().unwrap(), "lb");
    hb.seq = 1_764_756_000_001;
    hb.checks.push(Check { name: "haproxy".into(), ok: true, detail: "running".into() });
    hb.checks.push(Check { name: "vrrp".into(), ok: false, detail: "FAULT".into() });
    assert!(status::publish(gi, &hb, Outcome::Unreachable).unwrap());
    let got = gi.get("capstan.status").unwrap().unwrap();
    assert!(got.len() <= status::MAX_STATUS);
    let v: serde_json::Value = serde_json::from_str(&got).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"state": "degraded", "role": "lb", "seq": 1_764_756_000_001u64,
                           "checks": {"haproxy": true, "vrrp": false}, "hub": "unreachable"})
    );
    // A host that refuses the write: an error for the caller to log, not a panic.
    let mut sim = SimVmx::default();
    sim.read_only.push("guestinfo.capstan.status".into());
    let e = status::publish(&backdoor(sim), &hb, Outcome::Accepted).unwrap_err();
    assert!(e.to_string().contains("info-set refused"), "{e}");
}
