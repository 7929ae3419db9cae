//! What one poll of the daemon's instance watch costs, counted in guestinfo reads: before
//! (a full `gather` per poll) and after (`sources::identity`, the cheap question). The
//! transport is a directory wrapped in a counter; `listing: false` makes it behave like the
//! VMware backdoor, which cannot list its keys, so every schema key is asked for by name.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use capstan_agent::guestinfo::{DirGuestinfo, Guestinfo, GuestinfoError, Primed};
use capstan_agent::sources::{self, SourceOptions};

/// A transport that counts `get` calls (the RPCs of the VMware backdoor) and, with
/// `listing: false`, hides the directory's listing as the backdoor has none.
#[derive(Debug)]
struct Counting {
    inner: DirGuestinfo,
    listing: bool,
    gets: Arc<AtomicUsize>,
}

impl Guestinfo for Counting {
    fn transport(&self) -> &'static str {
        self.inner.transport()
    }
    fn get(&self, key: &str) -> Result<Option<String>, GuestinfoError> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.inner.get(key)
    }
    fn set(&self, key: &str, value: &str) -> Result<(), GuestinfoError> {
        self.inner.set(key, value)
    }
    fn keys(&self) -> Option<BTreeSet<String>> {
        if self.listing {
            self.inner.keys()
        } else {
            None
        }
    }
}

/// A CAPV clone's guestinfo: metadata naming the instance, user-data, one direct key.
fn capv_dir() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let gi = t.path().join("gi");
    std::fs::create_dir_all(&gi).unwrap();
    std::fs::write(gi.join("metadata"), "instance-id: clone-a\nlocal-hostname: clone-a\n").unwrap();
    std::fs::write(gi.join("userdata"), "#cloud-config\nruncmd: [true]\n").unwrap();
    std::fs::write(gi.join("capstan.ntp.servers"), "pool.ntp.org").unwrap();
    t
}

fn counting(t: &tempfile::TempDir, listing: bool) -> (Counting, Arc<AtomicUsize>) {
    let gets = Arc::new(AtomicUsize::new(0));
    let c = Counting { inner: DirGuestinfo::new(t.path().join("gi")), listing, gets: gets.clone() };
    (c, gets)
}

#[test]
fn a_watch_poll_asks_three_keys_instead_of_gathering_everything() {
    let t = capv_dir();
    let opts = SourceOptions::rooted(t.path().join("root"));
    let mut report = Vec::new();
    for listing in [false, true] {
        // before: every poll gathered every source
        let (gi, gets) = counting(&t, listing);
        let g = sources::gather_with(&opts, Some(Box::new(gi)));
        assert_eq!(g.instance_id.as_str(), "clone-a");
        let before = gets.load(Ordering::SeqCst);
        // after: every poll asks only the identity
        let (gi, gets) = counting(&t, listing);
        let id = sources::identity(&opts, Some(&gi as &dyn Guestinfo));
        let after = gets.load(Ordering::SeqCst);
        report.push(format!("listing={listing}: gather {before} gets, identity {after} gets"));
        assert_eq!(after, sources::vmware::IDENTITY_KEYS.len(), "{report:?}");
        assert!(after < before, "{report:?}");
        if !listing {
            // the backdoor case: one get per schema key, and then some
            let keys = capstan_agent::schema::all_concrete_paths().len();
            assert!(before > keys, "{report:?}");
        }
        // the answer names the instance: the metadata's text is part of it
        assert!(id.0.iter().flatten().any(|v| v.contains("clone-a")), "{id:?}");
    }
    eprintln!("{}", report.join("\n"));
}

#[test]
fn the_identity_changes_when_guestinfo_names_a_new_instance_and_only_then() {
    let t = capv_dir();
    let opts = SourceOptions::rooted(t.path().join("root"));
    let (gi, _) = counting(&t, false);
    let a = sources::identity(&opts, Some(&gi as &dyn Guestinfo));
    // another key changing is not a new identity
    std::fs::write(t.path().join("gi/capstan.ntp.servers"), "time.example.com").unwrap();
    assert_eq!(sources::identity(&opts, Some(&gi as &dyn Guestinfo)), a);
    // an instant clone gets new metadata
    std::fs::write(t.path().join("gi/metadata"), "instance-id: clone-b\n").unwrap();
    assert_ne!(sources::identity(&opts, Some(&gi as &dyn Guestinfo)), a);
    // a direct instance-id key, and the SMBIOS UUID, are part of the answer too
    let b = sources::identity(&opts, Some(&gi as &dyn Guestinfo));
    std::fs::write(t.path().join("gi/capstan.instance-id"), "clone-c").unwrap();
    let c = sources::identity(&opts, Some(&gi as &dyn Guestinfo));
    assert_ne!(c, b);
    let dmi = t.path().join("root/sys/class/dmi/id");
    std::fs::create_dir_all(&dmi).unwrap();
    std::fs::write(dmi.join("product_uuid"), "4C4C4544-0042-3010-8057-B4C04F4A4E32\n").unwrap();
    assert_ne!(sources::identity(&opts, Some(&gi as &dyn Guestinfo)), c);
    // no transport: only the SMBIOS UUID
    let none = sources::identity(&opts, None);
    assert_eq!(none.0.iter().flatten().count(), 1, "{none:?}");
}

#[test]
fn the_gathering_after_the_probe_does_not_read_the_probed_keys_again() {
    // the watch hands its gathering its own transport with what its identity probe read
    // (guestinfo::Primed): the same instance, one read fewer per probed key that is set
    let t = capv_dir();
    let opts = SourceOptions::rooted(t.path().join("root"));
    for listing in [false, true] {
        let (gi, gets) = counting(&t, listing);
        let plain = sources::gather_with(&opts, Some(Box::new(gi)));
        let plain_gets = gets.load(Ordering::SeqCst);
        let (gi, gets) = counting(&t, listing);
        let shared: Arc<dyn Guestinfo> = Arc::new(gi);
        let id = sources::identity(&opts, Some(&*shared));
        let probed: Vec<(String, String)> = sources::vmware::IDENTITY_KEYS
            .iter()
            .zip(&id.0)
            .filter_map(|(k, v)| Some(((*k).to_owned(), v.clone()?)))
            .collect();
        assert_eq!(probed.len(), 1, "only metadata is set: {probed:?}");
        gets.store(0, Ordering::SeqCst);
        let primed = Primed::new(shared, probed);
        let g = sources::gather_with(&opts, Some(Box::new(primed)));
        let primed_gets = gets.load(Ordering::SeqCst);
        assert_eq!(primed_gets + 1, plain_gets, "listing={listing}");
        assert_eq!(g.instance_id, plain.instance_id);
        assert_eq!(g.config.hostname, plain.config.hostname);
        assert_eq!(g.userdata, plain.userdata);
        assert_eq!(g.flat.len(), plain.flat.len());
        assert_eq!(g.guestinfo.as_ref().map(|g| g.transport()), Some("guestinfo-dir"));
    }
}

#[test]
fn a_primed_value_that_is_stale_is_answered_once_only() {
    // what the probe read answers the gathering's first read; a later read (a re-run of the
    // gathering) sees the transport's value
    let t = capv_dir();
    let (gi, _) = counting(&t, true);
    let shared: Arc<dyn Guestinfo> = Arc::new(gi);
    let primed = Primed::new(shared, [("metadata".to_owned(), "instance-id: probed\n".to_owned())]);
    assert_eq!(primed.get("metadata").unwrap().as_deref(), Some("instance-id: probed\n"));
    let now = primed.get("metadata").unwrap().unwrap();
    assert!(now.contains("clone-a"), "{now}");
}
