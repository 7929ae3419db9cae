//! Two replicas on a real PostgreSQL (Debian's, `initdb` in a temp dir, a unix socket there):
//! any replica ingests, one leads; the leader is killed (-9) 20 times at random moments (every
//! fourth time inside an action): the other takes over within 2 x interval each time, no
//! acknowledged node and no state change is lost, every silent node is remediated once, no
//! episode twice, and a kill between intent and outcome is recorded as "outcome unknown".

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

#[derive(Debug)]
/// A PostgreSQL server in a temp dir, run as `nobody` (initdb refuses root); stopped on drop.
pub struct Pg {
    _dir: tempfile::TempDir,
    child: Child,
    /// The connection URL (unix socket).
    pub url: String,
}

/// `cmd` as nobody; setpriv execs it, so the child's pid is the server's (for the signal).
fn as_nobody(cmd: &str) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--", cmd]);
    c
}

impl Pg {
    pub fn start() -> Option<Pg> {
        if !Path::new(PG_BIN).join("initdb").exists() {
            eprintln!("SKIP: no PostgreSQL in {PG_BIN} (scripts/setup installs it)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let data: PathBuf = dir.path().join("data");
        let out = as_nobody(&format!("{PG_BIN}/initdb"))
            .args([
                "-D",
                data.to_str().unwrap(),
                "-U",
                "capstan",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        let log = std::fs::File::create(dir.path().join("pg.log")).unwrap();
        let child = as_nobody(&format!("{PG_BIN}/postgres"))
            .args([
                "-D",
                data.to_str().unwrap(),
                "-k",
                dir.path().to_str().unwrap(),
                "-c",
                "listen_addresses=",
                "-c",
                "fsync=off",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let sock = dir.path().join(".s.PGSQL.5432");
        let end = Instant::now() + Duration::from_secs(30);
        while !sock.exists() {
            assert!(
                Instant::now() < end,
                "PostgreSQL did not start: {}",
                std::fs::read_to_string(dir.path().join("pg.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // The socket comes before the server accepts sessions ("the database system is
        // starting up").
        let ready = || {
            Command::new(format!("{PG_BIN}/pg_isready"))
                .args(["-q", "-h", dir.path().to_str().unwrap(), "-U", "capstan"])
                .status()
                .is_ok_and(|s| s.success())
        };
        while !ready() {
            assert!(Instant::now() < end, "PostgreSQL did not become ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        let host = dir.path().display().to_string().replace('/', "%2F");
        Some(Pg { url: format!("postgresql://capstan@{host}/postgres"), child, _dir: dir })
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        // SIGINT: PostgreSQL's fast shutdown.
        let _ = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

async fn is_leader(url: &str, certs: &Path) -> bool {
    let mut c = node_client(url, certs, "reader");
    match c.request(hyper::Method::GET, "/metrics", Vec::new()).await {
        Ok((s, b)) => {
            s.is_success() && String::from_utf8_lossy(&b).contains("capstan_hub_leader 1")
        }
        Err(_) => false,
    }
}

/// A node beating every 100 ms to whichever replica its slot names; records its
/// acknowledgements.
fn live_node(
    id: String,
    certs: PathBuf,
    slot: Arc<Mutex<String>>,
    acked: Arc<Mutex<HashSet<String>>>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let (mut current, mut c) = (String::new(), None);
        let mut seq = capstan_agent::heartbeat::sender::unix_ms();
        while !stop.load(Ordering::Relaxed) {
            let u = slot.lock().unwrap().clone();
            if u != current {
                c = Some(node_client(&u, &certs, &id));
                current = u;
            }
            seq += 1;
            if let Some(c) = c.as_mut() {
                let hb = beat(&id, seq, true).to_json();
                if let Ok((s, _)) = c.request(hyper::Method::POST, "/v1/heartbeat", hb).await {
                    if s.is_success() {
                        acked.lock().unwrap().insert(id.clone());
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// A node with a role of its own (so the mass-silence rule never holds it back) that beats
/// three times to `url` and falls silent.
async fn victim(url: &str, certs: &Path, id: &str, acked: &Mutex<HashSet<String>>) {
    let mut c = node_client(url, certs, id);
    let mut seq = capstan_agent::heartbeat::sender::unix_ms();
    for _ in 0..3 {
        seq += 1;
        let mut hb = beat(id, seq, true);
        hb.role = id.to_owned();
        let (s, _) = c.request(hyper::Method::POST, "/v1/heartbeat", hb.to_json()).await.unwrap();
        assert!(s.is_success(), "{id}: {s}");
        acked.lock().unwrap().insert(id.to_owned());
    }
}

/// What the replicas left in the database: node states, state changes in order, and
/// remediations as (episode, node, outcome, detail).
struct Stored {
    nodes: HashMap<String, String>,
    events: Vec<(String, String, String)>,
    rems: Vec<(String, String, String, String)>,
}

async fn stored(url: &str) -> Stored {
    let (db, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let rows = db.query("SELECT id, state FROM nodes", &[]).await.unwrap();
    let nodes = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let rows =
        db.query("SELECT node, from_state, to_state FROM events ORDER BY id", &[]).await.unwrap();
    let events = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    let rows = db
        .query(
            "SELECT episode, node, COALESCE(outcome, ''), COALESCE(detail, '') FROM remediations",
            &[],
        )
        .await
        .unwrap();
    let rems = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect();
    Stored { nodes, events, rems }
}

const ROUNDS: usize = 20;
/// Replicas see each other's heartbeats within ~0.25 s (a 100 ms read-back of snapshots taken
/// every 100 ms); 2 s keeps the 2 intervals of a suspect verdict far above that on a machine
/// loaded by 20 kills and restarts.
const INTERVAL_MS: u64 = 2000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_the_leader_20_times_the_survivor_takes_over_and_nothing_is_lost() {
    let Some(pg) = Pg::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let certs = certs(dir.path());
    let log = dir.path().join("episodes");
    // The action takes 300 ms: a kill often lands between intent and outcome.
    let exec =
        format!("exec:echo $CAPSTAN_EPISODE $CAPSTAN_NODE_ID >> {}; sleep 0.3", log.display());
    let interval = format!("{INTERVAL_MS}ms");
    let args = [
        "--interval",
        interval.as_str(),
        "--unhealthy-after",
        "4",
        "--remediate",
        exec.as_str(),
        "--grace",
        "2s",
        "--per-minute",
        "1000",
    ];
    let mut leader = HubProc::start(&certs, &pg.url, &args);
    wait_until!(Duration::from_secs(10), "a leader", is_leader(&leader.url, &certs).await);
    let mut follower = HubProc::start(&certs, &pg.url, &args);
    // Two slots, one per replica; live nodes beat to both.
    let slots =
        [Arc::new(Mutex::new(leader.url.clone())), Arc::new(Mutex::new(follower.url.clone()))];
    let mut leader_slot = 0;
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let slot = slots[i % 2].clone();
            live_node(format!("live-{i}"), certs.clone(), slot, acked.clone(), stop.clone())
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!is_leader(&follower.url, &certs).await, "two leaders");
    let (mut took_max, mut kills_during_action) = (Duration::ZERO, 0);
    for round in 0..ROUNDS {
        // The victim beats to the follower: the leader must see it through the database.
        victim(&follower.url, &certs, &format!("victim-{round}"), &acked).await;
        if round % 4 == 1 {
            // Deliberately inside an action (of this or an earlier victim): wait for a new
            // episode line, then kill.
            let lines = || std::fs::read_to_string(&log).unwrap_or_default().lines().count();
            let before = lines();
            wait_until!(Duration::from_secs(40), "an action to start", lines() > before);
            kills_during_action += 1;
        } else {
            tokio::time::sleep(Duration::from_millis(fastrand::u64(50..4000))).await;
        }
        // Kill the leader; its nodes move to the survivor, which must lead within 2 x interval.
        leader.kill();
        let t0 = Instant::now();
        *slots[leader_slot].lock().unwrap() = follower.url.clone();
        wait_until!(
            Duration::from_secs(10),
            "the takeover",
            is_leader(&follower.url, &certs).await
        );
        let took = t0.elapsed();
        assert!(
            took < Duration::from_millis(2 * INTERVAL_MS),
            "round {round}: takeover took {took:?}\n{}",
            follower.log()
        );
        took_max = took_max.max(took);
        // The killed replica comes back as the follower.
        let back = HubProc::start(&certs, &pg.url, &args);
        *slots[leader_slot].lock().unwrap() = back.url.clone();
        leader_slot = 1 - leader_slot;
        leader = std::mem::replace(&mut follower, back);
    }
    // Every victim is judged and remediated (or its crashed action settled) by the last leader.
    wait_until!(Duration::from_secs(90), "every victim's remediation settled", {
        let s = stored(&pg.url).await;
        (0..ROUNDS).all(|r| {
            let v = format!("victim-{r}");
            s.rems.iter().any(|(_, n, outcome, _)| *n == v && !outcome.is_empty())
        })
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    drop((leader, follower));
    let s = stored(&pg.url).await;
    check_nothing_lost(&s, &acked.lock().unwrap());
    check_once_per_episode(&s, &std::fs::read_to_string(&log).unwrap(), kills_during_action);
    for i in 0..4 {
        assert_eq!(s.nodes.get(&format!("live-{i}")).map(String::as_str), Some("healthy"));
    }
    eprintln!(
        "{ROUNDS} kills ({kills_during_action} inside actions), takeover at most {took_max:?}, \
         {} events, {} remediations",
        s.events.len(),
        s.rems.len()
    );
}

/// Every acknowledged node is stored, and each node's state changes form one unbroken chain
/// from its registration to its stored state.
fn check_nothing_lost(s: &Stored, acked: &HashSet<String>) {
    for id in acked {
        assert!(s.nodes.contains_key(id), "acknowledged node {id} lost");
    }
    let mut chains: BTreeMap<&str, Vec<(&str, &str)>> = BTreeMap::new();
    for (n, from, to) in &s.events {
        chains.entry(n).or_default().push((from, to));
    }
    let mut repeated = Vec::new();
    for id in acked {
        let chain = chains.get(id.as_str()).unwrap_or_else(|| panic!("{id}: no state change"));
        assert_eq!(chain[0].0, "", "{id}: first change is not its registration: {chain:?}");
        for w in chain.windows(2) {
            // A change made twice is not a change lost: a new leader that had not yet read
            // back its predecessor's last change judges it again (docs/hub.md "Open").
            if w[0] == w[1] {
                repeated.push(format!("{id}: {} -> {}", w[0].0, w[0].1));
                continue;
            }
            assert_eq!(w[0].1, w[1].0, "{id}: a state change is missing: {chain:?}");
        }
        assert_eq!(
            Some(chain.last().unwrap().1),
            s.nodes.get(id).map(String::as_str),
            "{id}: stored state differs from its last change: {chain:?}"
        );
    }
    if !repeated.is_empty() {
        eprintln!("state changes recorded twice: {repeated:?}");
    }
}

/// One remediation per victim, never an action twice for an episode, and a kill inside an
/// action recorded as "outcome unknown" (not run again).
fn check_once_per_episode(s: &Stored, log: &str, kills_during_action: usize) {
    let mut seen = HashSet::new();
    for line in log.lines() {
        assert!(seen.insert(line), "episode {line} remediated twice:\n{log}");
        let episode = line.split(' ').next().unwrap();
        assert!(
            s.rems.iter().any(|(e, ..)| e == episode),
            "episode {episode} acted without a stored intent"
        );
    }
    for r in 0..ROUNDS {
        let v = format!("victim-{r}");
        let rows: Vec<_> = s.rems.iter().filter(|(_, n, ..)| *n == v).collect();
        assert_eq!(rows.len(), 1, "{v}: {rows:?}");
        assert!(log.lines().filter(|l| l.ends_with(&format!(" {v}"))).count() <= 1, "{log}");
    }
    assert!(s.rems.iter().all(|(_, n, ..)| n.starts_with("victim-")), "{:?}", s.rems);
    let unknown: Vec<_> = s.rems.iter().filter(|(_, _, o, _)| o == "unknown").collect();
    assert!(
        unknown.len() >= kills_during_action,
        "{kills_during_action} kills inside actions, {} unknown: {:?}",
        unknown.len(),
        s.rems
    );
    assert!(unknown.iter().all(|(.., d)| d.contains("outcome unknown")), "{unknown:?}");
    let ok = s.rems.iter().filter(|(_, _, o, _)| o == "ok").count();
    assert!(ok + unknown.len() == ROUNDS, "{:?}", s.rems);
}

/// The stored document of node `id`, and its columns (state, seq, since_ms, changed_ms,
/// last_seen_ms), which must agree with it.
async fn stored_node(db: &tokio_postgres::Client, id: &str) -> capstan_hub::tracker::node::Node {
    let r = db
        .query_one(
            "SELECT doc, state, seq, since_ms, changed_ms, last_seen_ms FROM nodes WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    let n: capstan_hub::tracker::node::Node = serde_json::from_str(r.get(0)).unwrap();
    let cols: (&str, i64, i64, i64, i64) = (r.get(1), r.get(2), r.get(3), r.get(4), r.get(5));
    let doc = (
        n.state.as_str(),
        n.seq as i64,
        n.since_ms as i64,
        n.changed_ms as i64,
        n.last_seen_ms as i64,
    );
    assert_eq!(cols, doc, "columns and document of {id} disagree");
    n
}

/// The snapshot upsert merges two replicas' views of a node as `Node::merge_from` does: a
/// follower's snapshot of the same seq with an older state (the leader judged the node after
/// the follower last read it back) does not undo the leader's change; a newer heartbeat from
/// the follower keeps the leader's state; the leader's newer state with an older heartbeat
/// keeps the follower's heartbeat; a remediation record with no state change is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snapshot_upsert_merges_views_field_by_field() {
    use capstan_hub::store::{Postgres, Sink as _};
    use capstan_hub::tracker::node::{Node, State};
    let Some(pg) = Pg::start() else { return };
    let replica = Postgres::connect(&pg.url).await.unwrap();
    let mut sink = tokio::task::block_in_place(|| replica.sink()).unwrap();
    let (db, conn) = tokio_postgres::connect(&pg.url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let now = tokio::time::Instant::now();
    let (follower, _) = Node::new(&beat("n1", 10, true), "10.0.0.1", now, 1_000);
    let mut leader = follower.clone();
    let mut expect = follower.clone();
    let mut write =
        |n: &Node| tokio::task::block_in_place(|| sink.write(std::slice::from_ref(n), &[]));
    write(&follower).unwrap();
    let key = |n: &Node| serde_json::to_value(n).unwrap();

    // The leader judges the node unhealthy at 2000 (same seq: no beat since).
    leader.state = State::Unhealthy;
    leader.reason = "no heartbeat for 12.0 s".into();
    leader.since_ms = 2_000;
    leader.episode = Some("episode-1".into());
    leader.touch(2_000);
    write(&leader).unwrap();
    // The follower's view, unchanged since it read the node: same seq, older state.
    write(&follower).unwrap();
    let got = stored_node(&db, "n1").await;
    assert_eq!((got.state, got.episode.as_deref()), (State::Unhealthy, Some("episode-1")));
    expect.merge_from(leader.clone());
    expect.merge_from(follower.clone());
    assert_eq!(key(&got), key(&expect));

    // The leader records its remediation (no state change, a later stamp).
    leader.remediations = 1;
    leader.last_result = "lab ok: restarted n1".into();
    leader.touch(2_500);
    write(&leader).unwrap();
    // The follower takes a newer heartbeat (a new boot), still with its old state.
    let mut hb = beat("n1", 11, true);
    hb.boot_id = "boot-2".into();
    let mut newer = follower.clone();
    newer.on_beat(&hb, "10.0.0.9", &POLICY, now, 3_000);
    write(&newer).unwrap();
    let got = stored_node(&db, "n1").await;
    assert_eq!((got.seq, got.boot_id.as_str(), got.addr.as_str()), (11, "boot-2", "10.0.0.9"));
    assert_eq!(got.last_seen_ms, 3_000);
    assert_eq!((got.state, got.remediations), (State::Unhealthy, 1));
    assert_eq!(got.last_result, "lab ok: restarted n1");
    expect.merge_from(leader.clone());
    expect.merge_from(newer.clone());
    assert_eq!(key(&got), key(&expect));

    // The leader's later state change with its older heartbeat (seq 10).
    leader.state = State::Healthy;
    leader.reason = "3 good heartbeats in a row".into();
    leader.since_ms = 4_000;
    leader.episode = None;
    leader.touch(4_000);
    write(&leader).unwrap();
    let got = stored_node(&db, "n1").await;
    assert_eq!((got.state, got.seq, got.boot_id.as_str()), (State::Healthy, 11, "boot-2"));
    assert_eq!((got.episode.as_deref(), got.remediations), (None, 1));
    expect.merge_from(leader.clone());
    assert_eq!(key(&got), key(&expect));

    // A view newer in nothing changes nothing, not even the row's read-back stamp.
    let before: i64 =
        db.query_one("SELECT updated_ms FROM nodes WHERE id = 'n1'", &[]).await.unwrap().get(0);
    tokio::time::sleep(Duration::from_millis(5)).await;
    write(&follower).unwrap();
    write(&newer).unwrap();
    let after: i64 =
        db.query_one("SELECT updated_ms FROM nodes WHERE id = 'n1'", &[]).await.unwrap().get(0);
    assert_eq!(before, after);
    assert_eq!(key(&stored_node(&db, "n1").await), key(&expect));
    // The sink's runtime is dropped off the async context.
    tokio::task::block_in_place(move || drop(sink));
}

const POLICY: capstan_hub::tracker::node::Policy = capstan_hub::tracker::node::Policy {
    interval: Duration::from_secs(1),
    suspect_after: 2,
    unhealthy_after: 6,
    recover_after: 3,
};

/// A node that beats every second only to a follower is never suspect at the leader: the
/// follower's snapshots reach the leader well within the 2 s of silence that make a node
/// suspect (with the former 1 s snapshots and 250 ms read-back, a beat took up to ~1.25 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_beating_to_a_follower_is_never_suspect_at_the_leader() {
    let Some(pg) = Pg::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let certs = certs(dir.path());
    let args = ["--interval", "1s", "--remediate", "none"];
    let leader = HubProc::start(&certs, &pg.url, &args);
    wait_until!(Duration::from_secs(10), "a leader", is_leader(&leader.url, &certs).await);
    let follower = HubProc::start(&certs, &pg.url, &args);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!is_leader(&follower.url, &certs).await, "two leaders");
    let mut c = node_client(&follower.url, &certs, "steady");
    let mut seq = capstan_agent::heartbeat::sender::unix_ms();
    for _ in 0..15 {
        seq += 1;
        let (s, _) = c
            .request(hyper::Method::POST, "/v1/heartbeat", beat("steady", seq, true).to_json())
            .await
            .unwrap();
        assert!(s.is_success(), "{s}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mut reader = node_client(&leader.url, &certs, "reader");
    let v = get_json(&mut reader, "/v1/nodes/steady").await;
    assert_eq!(v["node"]["seq"], seq, "the leader has the last beat: {v:#}");
    let s = stored(&pg.url).await;
    let changes: Vec<_> = s.events.iter().filter(|(n, ..)| n == "steady").collect();
    assert_eq!(changes.len(), 1, "only the registration: {changes:?}\n{}", leader.log());
}
