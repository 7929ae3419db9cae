//! The desired backend set: which backend sits in which HAProxy slot, the changes the API makes
//! to it (planned as pure functions that return the runtime operations), and its atomic
//! persistence under the state directory, through the rooted file system handle ([`Root`]).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::haproxy::{Slot, SLOTS};
use super::settings::{Backend, BackendList};
use crate::root::{FileOpts, Root, RootError};

/// One operation on HAProxy's runtime API, on one slot (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Point the slot at a backend and put it in rotation (or in drain).
    Assign {
        /// Slot index.
        slot: usize,
        /// The backend.
        backend: Backend,
        /// Start draining.
        drain: bool,
    },
    /// Stop sending new connections to the slot; existing ones stay.
    Drain {
        /// Slot index.
        slot: usize,
    },
    /// Put a draining slot back in rotation.
    Undrain {
        /// Slot index.
        slot: usize,
    },
    /// Take the slot out (maintenance).
    Clear {
        /// Slot index.
        slot: usize,
    },
}

/// A change the API asked for that the current set refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChangeError {
    /// The backend is already in the set.
    #[error("backend {0} is already in the set")]
    Duplicate(Backend),
    /// The backend is not in the set.
    #[error("backend {0} is not in the set")]
    Unknown(Backend),
    /// No free slot.
    #[error("the set is full ({SLOTS} backends)")]
    Full,
}

/// Persistence failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// Reading or writing the file failed (the error names the operation and the path).
    #[error(transparent)]
    Root(#[from] RootError),
    /// The file does not hold a valid set.
    #[error("{path}: not a valid backend set: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PersistedSet {
    version: u32,
    backends: Vec<PersistedBackend>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PersistedBackend {
    address: Backend,
    slot: usize,
    drain: bool,
}

/// One backend of the set and where it sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The backend.
    pub backend: Backend,
    /// Its slot (0-based).
    pub slot: usize,
    /// Whether it is draining.
    pub drain: bool,
}

/// The desired set, as slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredSet {
    slots: Vec<Slot>,
}

impl Default for DesiredSet {
    fn default() -> Self {
        DesiredSet { slots: vec![Slot::Empty; SLOTS] }
    }
}

impl DesiredSet {
    /// The set holding `list`, in order, in the first slots.
    pub fn from_list(list: &BackendList) -> Self {
        let mut s = DesiredSet::default();
        for (i, b) in list.as_slice().iter().enumerate() {
            s.slots[i] = Slot::Backend { backend: *b, drain: false };
        }
        s
    }

    /// The slots, for rendering.
    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// The backends in slot order.
    pub fn entries(&self) -> Vec<Entry> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(slot, s)| match s {
                Slot::Backend { backend, drain } => {
                    Some(Entry { backend: *backend, slot, drain: *drain })
                }
                Slot::Empty => None,
            })
            .collect()
    }

    fn find(&self, b: Backend) -> Option<usize> {
        self.slots.iter().position(|s| matches!(s, Slot::Backend { backend, .. } if *backend == b))
    }

    fn free_slot(&self) -> Option<usize> {
        self.slots.iter().position(|s| *s == Slot::Empty)
    }

    /// Adds a backend in rotation.
    pub fn add(&self, b: Backend) -> Result<(DesiredSet, Vec<Op>), ChangeError> {
        if self.find(b).is_some() {
            return Err(ChangeError::Duplicate(b));
        }
        let slot = self.free_slot().ok_or(ChangeError::Full)?;
        let mut next = self.clone();
        next.slots[slot] = Slot::Backend { backend: b, drain: false };
        Ok((next, vec![Op::Assign { slot, backend: b, drain: false }]))
    }

    /// Removes a backend (new connections stop at once; established ones are not cut).
    pub fn remove(&self, b: Backend) -> Result<(DesiredSet, Vec<Op>), ChangeError> {
        let slot = self.find(b).ok_or(ChangeError::Unknown(b))?;
        let mut next = self.clone();
        next.slots[slot] = Slot::Empty;
        Ok((next, vec![Op::Clear { slot }]))
    }

    /// Drains a backend: no new connections, established ones stay until they close.
    pub fn drain(&self, b: Backend) -> Result<(DesiredSet, Vec<Op>), ChangeError> {
        let slot = self.find(b).ok_or(ChangeError::Unknown(b))?;
        let mut next = self.clone();
        next.slots[slot] = Slot::Backend { backend: b, drain: true };
        Ok((next, vec![Op::Drain { slot }]))
    }

    /// Replaces the set: backends already present keep their slot (and are put back in
    /// rotation if draining), new ones are added first, missing ones removed last, so the
    /// frontend never passes through an empty set when old and new sets overlap or follow.
    pub fn replace(&self, list: &BackendList) -> Result<(DesiredSet, Vec<Op>), ChangeError> {
        let wanted: BTreeSet<Backend> = list.as_slice().iter().copied().collect();
        let mut next = self.clone();
        let mut adds = Vec::new();
        let mut removes = Vec::new();
        // Removed slots are freed only after every add found a slot, so a full set can still
        // be replaced entry by entry.
        let mut free: Vec<usize> = (0..SLOTS).filter(|i| self.slots[*i] == Slot::Empty).collect();
        free.reverse();
        for b in list.as_slice() {
            match self.find(*b) {
                Some(slot) => {
                    if let Slot::Backend { drain: true, .. } = self.slots[slot] {
                        next.slots[slot] = Slot::Backend { backend: *b, drain: false };
                        adds.push(Op::Undrain { slot });
                    }
                }
                None => {
                    let slot = free.pop().ok_or(ChangeError::Full)?;
                    next.slots[slot] = Slot::Backend { backend: *b, drain: false };
                    adds.push(Op::Assign { slot, backend: *b, drain: false });
                }
            }
        }
        for e in self.entries() {
            if !wanted.contains(&e.backend) {
                next.slots[e.slot] = Slot::Empty;
                removes.push(Op::Clear { slot: e.slot });
            }
        }
        adds.extend(removes);
        Ok((next, adds))
    }

    /// The operations that make a HAProxy in any state match this set.
    pub fn full_sync(&self) -> Vec<Op> {
        self.slots
            .iter()
            .enumerate()
            .map(|(slot, s)| match s {
                Slot::Empty => Op::Clear { slot },
                Slot::Backend { backend, drain } => {
                    Op::Assign { slot, backend: *backend, drain: *drain }
                }
            })
            .collect()
    }

    /// Loads the persisted set from `path` under `root`; `Ok(None)` when there is none yet.
    pub fn load(root: &Root, path: &Path) -> Result<Option<Self>, StateError> {
        let Some(bytes) = root.read(path)? else { return Ok(None) };
        let corrupt = |reason: String| StateError::Corrupt { path: path.into(), reason };
        let p: PersistedSet = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if p.version != 1 {
            return Err(corrupt(format!("unknown version {}", p.version)));
        }
        let mut s = DesiredSet::default();
        for b in p.backends {
            if b.slot >= SLOTS {
                return Err(corrupt(format!("slot {} out of range", b.slot)));
            }
            if s.slots[b.slot] != Slot::Empty || s.find(b.address).is_some() {
                return Err(corrupt(format!("{} or slot {} listed twice", b.address, b.slot)));
            }
            s.slots[b.slot] = Slot::Backend { backend: b.address, drain: b.drain };
        }
        Ok(Some(s))
    }

    /// Persists the set at `path` under `root`, atomically and durably ([`write_durable`]).
    pub fn save(&self, root: &Root, path: &Path) -> Result<(), StateError> {
        let p = PersistedSet {
            version: 1,
            backends: self
                .entries()
                .into_iter()
                .map(|e| PersistedBackend { address: e.backend, slot: e.slot, drain: e.drain })
                .collect(),
        };
        let mut json = serde_json::to_vec_pretty(&p)
            .map_err(|e| StateError::Corrupt { path: path.into(), reason: e.to_string() })?;
        json.push(b'\n');
        write_durable(root, path, &json, 0o644)
    }
}

/// Writes a whole file under `root` with `mode`, durable on return ([`Root::write_durable`]:
/// per file, as the role's writes come one at a time while it serves).
pub fn write_durable(
    root: &Root,
    path: &Path,
    contents: &[u8],
    mode: u32,
) -> Result<(), StateError> {
    root.write_durable(path, contents, FileOpts::mode(mode))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Backend {
        s.parse().unwrap()
    }

    #[test]
    fn add_remove_drain_plan() {
        let s = DesiredSet::from_list(&"10.0.0.1:6443,10.0.0.2:6443".parse().unwrap());
        assert_eq!(
            s.add(b("10.0.0.1:6443")).unwrap_err(),
            ChangeError::Duplicate(b("10.0.0.1:6443"))
        );
        let (s2, ops) = s.add(b("10.0.0.3:6443")).unwrap();
        assert_eq!(ops, vec![Op::Assign { slot: 2, backend: b("10.0.0.3:6443"), drain: false }]);
        let (s3, ops) = s2.remove(b("10.0.0.1:6443")).unwrap();
        assert_eq!(ops, vec![Op::Clear { slot: 0 }]);
        assert_eq!(
            s3.remove(b("10.0.0.1:6443")).unwrap_err(),
            ChangeError::Unknown(b("10.0.0.1:6443"))
        );
        let (s4, ops) = s3.drain(b("10.0.0.2:6443")).unwrap();
        assert_eq!(ops, vec![Op::Drain { slot: 1 }]);
        assert_eq!(s4.entries().len(), 2);
    }

    #[test]
    fn replace_adds_before_removing_and_keeps_slots() {
        let s = DesiredSet::from_list(&"10.0.0.1:6443,10.0.0.2:6443".parse().unwrap());
        let (s, _) = s.drain(b("10.0.0.2:6443")).unwrap();
        let (n, ops) = s.replace(&"10.0.0.2:6443,10.0.0.3:6443".parse().unwrap()).unwrap();
        assert_eq!(
            ops,
            vec![
                Op::Undrain { slot: 1 },
                Op::Assign { slot: 2, backend: b("10.0.0.3:6443"), drain: false },
                Op::Clear { slot: 0 },
            ]
        );
        assert_eq!(n.entries().iter().map(|e| e.slot).collect::<Vec<_>>(), vec![1, 2]);
    }

    #[test]
    fn persist_roundtrip_and_corrupt_files() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path()).unwrap();
        let p = Path::new("/var/lib/capstan/lb/backends.json");
        assert_eq!(DesiredSet::load(&root, p).unwrap(), None);
        let s = DesiredSet::from_list(&"10.0.0.1:6443,[fd00::2]:6443".parse().unwrap());
        let (s, _) = s.drain(b("10.0.0.1:6443")).unwrap();
        s.save(&root, p).unwrap();
        // written under the root (missing directories created), mode 0644, no temp file left
        let host = dir.path().join("var/lib/capstan/lb/backends.json");
        assert_eq!(std::fs::metadata(&host).unwrap().permissions().mode() & 0o7777, 0o644);
        assert_eq!(root.list("/var/lib/capstan/lb").unwrap(), vec!["backends.json"]);
        assert_eq!(DesiredSet::load(&root, p).unwrap(), Some(s.clone()));
        // saving again replaces the file
        let (s2, _) = s.remove(b("10.0.0.1:6443")).unwrap();
        s2.save(&root, p).unwrap();
        assert_eq!(DesiredSet::load(&root, p).unwrap(), Some(s2));
        assert_eq!(root.list("/var/lib/capstan/lb").unwrap(), vec!["backends.json"]);
        for bad in [
            "{",
            r#"{"version":2,"backends":[]}"#,
            r#"{"version":1,"backends":[{"address":"10.0.0.1:6443","slot":99,"drain":false}]}"#,
            r#"{"version":1,"backends":[{"address":"x","slot":0,"drain":false}]}"#,
            r#"{"version":1,"backends":[],"extra":1}"#,
        ] {
            std::fs::write(&host, bad).unwrap();
            assert!(matches!(DesiredSet::load(&root, p), Err(StateError::Corrupt { .. })), "{bad}");
        }
    }

    #[test]
    fn persistence_stays_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path()).unwrap();
        let s = DesiredSet::default();
        let e = s.save(&root, Path::new("/../escape.json")).unwrap_err();
        assert!(matches!(e, StateError::Root(RootError::Escape { .. })), "{e}");
        assert!(!dir.path().parent().unwrap().join("escape.json").exists());
        let e = DesiredSet::load(&root, Path::new("/../../etc/passwd")).unwrap_err();
        assert!(matches!(e, StateError::Root(RootError::Escape { .. })), "{e}");
    }
}
