//! The first-boot engine: sources → plan → steps → state.
//!
//! [`Options`] say where to read and write; [`run_stage`] gathers the sources, builds the
//! [`Plan`](crate::steps::Plan) ([`build_plan`], the one way from cloud-init data and the
//! schema to a plan), runs the steps of the stage ([`crate::steps::run_steps`]) and records
//! the run ([`crate::state`]). [`render`] writes the files a configuration produces without
//! running anything. The CLI prints what these return; the daemon calls [`rerun`] for a new
//! instance-id.
//!
//! Import rule: `boot` imports `sources`, `steps`, `roles`, `state`, `schema`; never `cli` or
//! `daemon`.

mod cloudconfig;
mod firstboot;
mod plan;

use std::path::{Path, PathBuf};

use crate::roles::RoleId;
use crate::root::{FileOpts, Root, RootError};
use crate::sources::{self, SourceOptions};
use crate::state::{State, StateError, Status};
use crate::steps::Mode;

pub use cloudconfig::{overlay, OverlayError};
pub use firstboot::{
    rerun, rerun_steps, run_once, run_stage, short_status, steps_for, StageOutcome, PENDING_DETAIL,
};
pub use plan::{apply_issues, build_plan, step_for, Issue};

/// Where first boot reads its sources and puts its effects: the plain form of the command
/// line's `--root`, `--ovf-env`, `--guestinfo-dir`, `--provider` (the daemon and the CLI both build it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// Apply everything under this directory instead of `/` (files only).
    pub root: Option<PathBuf>,
    /// Read the OVF environment from this file instead of the `OVF ENV` CD-ROM.
    pub ovf_env: Option<PathBuf>,
    /// Read guestinfo keys from files in this directory.
    pub guestinfo_dir: Option<PathBuf>,
    /// Read this provider instead of detecting one (`--provider`).
    pub provider: Option<sources::ProviderSpec>,
}

impl Options {
    /// True on the running system (no `--root`).
    pub fn live(&self) -> bool {
        self.root.is_none()
    }

    /// The root directory: `--root` or `/`.
    pub fn root_dir(&self) -> &Path {
        self.root.as_deref().unwrap_or(Path::new("/"))
    }

    /// Where the sources are read from.
    pub fn source_options(&self) -> SourceOptions {
        let mut opts = match &self.root {
            Some(r) => SourceOptions::rooted(r),
            None => SourceOptions::live(),
        };
        opts.ovf_env_file.clone_from(&self.ovf_env);
        opts.guestinfo_dir.clone_from(&self.guestinfo_dir);
        opts.provider.clone_from(&self.provider);
        opts
    }

    /// The mode of the steps: live, or confined to the root (`run_commands` under it).
    pub fn mode(&self, run_commands: bool) -> Mode {
        if self.live() {
            Mode::Live
        } else {
            Mode::Rooted { run_commands }
        }
    }

    /// The root the effects go to (`--root DIR`, created if missing, or `/`) and where the
    /// sources are read from.
    pub fn open(&self) -> Result<(Root, SourceOptions), BootError> {
        let dir = self.root_dir();
        if self.root.is_some() {
            std::fs::create_dir_all(dir)
                .map_err(|source| BootError::CreateRoot { path: dir.to_owned(), source })?;
        }
        Ok((Root::new(dir)?, self.source_options()))
    }
}

/// Why a command of the engine could not run at all (a failed step is not an error: it is in
/// the returned status).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BootError {
    /// The `--root` directory could not be created.
    #[error("creating root {}", path.display())]
    CreateRoot {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The root could not be opened or synced.
    #[error(transparent)]
    Root(#[from] RootError),
    /// The state store refused.
    #[error(transparent)]
    State(#[from] StateError),
    /// `render` writes only under a root.
    #[error("render needs --root DIR")]
    RenderNeedsRoot,
    /// `status` found no record.
    #[error("no first boot recorded under {}", .0.display())]
    NoRecord(PathBuf),
}

/// What `render` did: the refusals, each file it wrote (or why not), and the final sync.
#[derive(Debug)]
pub struct Rendered {
    /// Refused values and plan issues, one line each naming the source and key.
    pub refused: Vec<String>,
    /// True when anything was refused (an issue may repeat a refusal listed once).
    pub refused_any: bool,
    /// Each file, with the result of writing it.
    pub files: Vec<(PathBuf, Result<(), RootError>)>,
    /// Making the written files durable (after they are listed).
    pub sync: Result<(), RootError>,
}

impl Rendered {
    /// True when a value was refused or a file not written.
    pub fn failed(&self) -> bool {
        self.refused_any || self.files.iter().any(|(_, r)| r.is_err())
    }
}

/// Writes every file the configuration produces under `opts.root` (networkd, resolved,
/// timesyncd, the role's files), nothing started, no state recorded.
pub fn render(opts: &Options) -> Result<Rendered, BootError> {
    if opts.root.is_none() {
        return Err(BootError::RenderNeedsRoot);
    }
    let (root, source_opts) = opts.open()?;
    let g = sources::gather(&source_opts);
    let mut refused = g.error_lines();
    let (plan, issues) = build_plan(&g);
    for i in &issues {
        if !g.error_lines().contains(&i.message) {
            refused.push(i.message.clone());
        }
    }
    let refused_any = !refused.is_empty() || !issues.is_empty();
    let mut files: Vec<(PathBuf, String, u32)> = Vec::new();
    // a refused provider renders nothing, as first boot applies nothing
    let plan = if g.refused { crate::steps::Plan::default() } else { plan };
    for f in crate::steps::network::render(&plan.network) {
        files.push((PathBuf::from("/etc/systemd/network").join(&f.name), f.content, 0o644));
    }
    if let Some(s) = crate::steps::timedns::render_resolved(&plan.dns) {
        files.push(("/etc/systemd/resolved.conf.d/capstan.conf".into(), s, 0o644));
    }
    if let Some(s) = plan.ntp.as_ref().and_then(crate::steps::timedns::render_timesyncd) {
        files.push(("/etc/systemd/timesyncd.conf.d/capstan.conf".into(), s, 0o644));
    }
    let role_settings = g.config.role_settings.as_ref().filter(|_| !g.refused);
    if let (Some(role), Some(s)) = (crate::roles::get(g.config.role), role_settings) {
        files.extend(role.render(s).into_iter().map(|f| (f.path, f.contents, f.mode)));
    }
    let files = files
        .into_iter()
        .map(|(path, contents, mode)| {
            let r = root.write(&path, contents.as_bytes(), FileOpts::mode(mode)).map(|_| ());
            (path, r)
        })
        .collect();
    Ok(Rendered { refused, refused_any, files, sync: root.sync() })
}

/// The status recorded under `dir`.
pub fn recorded_status(dir: &Path) -> Result<(Root, Status), BootError> {
    let root = Root::new(dir)?;
    let status = State::new(root.clone())
        .load_current()?
        .ok_or_else(|| BootError::NoRecord(dir.to_owned()))?;
    Ok((root, status))
}

/// The live health of the recorded role on the node itself (`status` on the appliance), from
/// the current settings (gathered as at boot): the role's name and its state.
pub fn role_health(root: &Root, status: &Status) -> Option<(RoleId, serde_json::Value)> {
    let role = crate::roles::get(status.role).filter(|_| root.is_live())?;
    let g = sources::gather(&SourceOptions::live());
    let health = role.health(g.config.role_settings.as_ref()?)?;
    Some((role.id(), health))
}
