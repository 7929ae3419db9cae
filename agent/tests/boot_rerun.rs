//! The daemon's re-run for a new instance-id (`boot::rerun`) on a running machine: every step
//! that makes the node the new instance, but not the boot-only `bootcmd`.

mod common;

use std::time::Instant;

use capstan_agent::guestinfo::DirGuestinfo;
use capstan_agent::root::Root;
use capstan_agent::sources::{self, SourceOptions};
use capstan_agent::steps::{Mode, StepStatus, BUILTIN};

#[test]
fn a_rerun_for_a_new_instance_runs_every_step_but_bootcmd() {
    let t = tempfile::tempdir().unwrap();
    let root_dir = t.path().join("root");
    common::minimal_root(&root_dir);
    let gi = t.path().join("gi");
    common::write_guestinfo(
        &gi,
        &[
            ("metadata", "instance-id: clone-b\nlocal-hostname: clone-b\n"),
            ("userdata", "#cloud-config\nbootcmd: [\"echo boot\"]\nruncmd: [\"echo run\"]\n"),
        ],
    );
    let opts = SourceOptions::rooted(&root_dir);
    let root = Root::new(&root_dir).unwrap();
    let g = sources::gather_with(&opts, Some(Box::new(DirGuestinfo::new(&gi))));
    let mode = Mode::Rooted { run_commands: false };
    let st = capstan_agent::boot::rerun(&g, &root, mode, false, Instant::now(), 0);
    let names: Vec<&str> = st.steps.iter().map(|r| r.name.as_str()).collect();
    assert!(!names.contains(&"bootcmd"), "{names:?}");
    for s in BUILTIN.iter().filter(|s| !s.boot_only) {
        assert!(names.contains(&s.id.as_str()), "{} missing: {names:?}", s.id);
    }
    assert!(st.steps.iter().all(|r| r.status != StepStatus::Failed), "{:?}", st.steps);
    assert_eq!(st.instance_id, "clone-b");
    assert_eq!(std::fs::read_to_string(root_dir.join("etc/hostname")).unwrap(), "clone-b\n");
    // first boot itself (a boot) runs it
    let once = capstan_agent::boot::run_once(
        &SourceOptions { guestinfo_dir: Some(gi), ..opts },
        &root,
        mode,
        false,
    );
    assert!(once.steps.iter().any(|r| r.name == "bootcmd"), "{:?}", once.steps);
}
