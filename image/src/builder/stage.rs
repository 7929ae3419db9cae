//! The stages of a build, in the order the pipeline walks them, and the progress line each
//! shows while it runs.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use super::StageReport;

/// One stage of `capstan build`. Serialised (`PROFILE.build.json`, `--rebuild`) by its
/// lowercase name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// mmdebstrap of the profile's packages.
    Rootfs,
    /// Overlay, agent, units, prune; then seal and the hygiene check on the tree.
    Customize,
    /// The raw GPT disk (ESP, ext4 root).
    Disk,
    /// Every requested format, written from the raw disk.
    Outputs,
    /// The hygiene rules read back out of the built disk (never cached).
    Check,
}

impl Stage {
    /// Every stage, in the order a build runs them.
    pub const ALL: [Stage; 5] =
        [Stage::Rootfs, Stage::Customize, Stage::Disk, Stage::Outputs, Stage::Check];

    /// The stages that keep a cache entry (what `--rebuild` can name).
    pub const CACHED: [Stage; 4] = [Stage::Rootfs, Stage::Customize, Stage::Disk, Stage::Outputs];

    /// The stage's name: the cache entry's prefix and the report's `name`.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Rootfs => "rootfs",
            Stage::Customize => "customize",
            Stage::Disk => "disk",
            Stage::Outputs => "outputs",
            Stage::Check => "check",
        }
    }

    /// Whether the stage's output lives in the stage cache.
    pub fn is_cached(self) -> bool {
        self != Stage::Check
    }

    /// What the progress line says while the stage starts.
    fn activity(self) -> &'static str {
        match self {
            Stage::Rootfs => "mmdebstrap",
            Stage::Customize => "overlay, agent, units, prune, seal",
            Stage::Disk => "GPT, ESP, ext4",
            Stage::Outputs => "",
            Stage::Check => "image hygiene",
        }
    }
}

impl std::str::FromStr for Stage {
    type Err = String;

    /// A cached stage by name (`--rebuild`); the error lists the names.
    fn from_str(s: &str) -> Result<Self, String> {
        Stage::CACHED
            .into_iter()
            .find(|stage| stage.name() == s)
            .ok_or_else(|| format!("{s}: stages are rootfs, customize, disk, outputs"))
    }
}

/// The spinner line of the running stage; [`Progress::done`] prints its time and returns its
/// report.
pub(super) struct Progress {
    bar: ProgressBar,
    started: Instant,
    stage: Stage,
}

impl Progress {
    /// Starts the spinner for `stage`.
    pub(super) fn start(stage: Stage) -> Self {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {prefix:>9} {elapsed:>4} {wide_msg}")
                .expect("valid template"),
        );
        bar.set_prefix(stage.name());
        bar.set_message(stage.activity().to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        Self { bar, started: Instant::now(), stage }
    }

    /// Replaces the message (cut to 120 characters).
    pub(super) fn msg(&self, m: &str) {
        self.bar.set_message(m.chars().take(120).collect::<String>());
    }

    /// Clears the spinner and prints the stage's line.
    pub(super) fn done(self, key: &str, cached: bool) -> StageReport {
        let secs = self.started.elapsed().as_secs_f64();
        self.bar.finish_and_clear();
        eprintln!(
            "capstan build: {:<9} {:>6.1}s{}",
            self.stage.name(),
            secs,
            if cached { "  (cached)" } else { "" }
        );
        StageReport { name: self.stage, key: key.to_string(), cached, seconds: secs }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_stages_are_the_cache_inventory_stages_in_order() {
        let names: Vec<&str> = Stage::CACHED.iter().map(|s| s.name()).collect();
        assert_eq!(names, crate::cache::inventory::STAGES);
        assert!(Stage::CACHED.iter().all(|s| s.is_cached()));
        assert!(!Stage::Check.is_cached());
        assert_eq!(Stage::ALL[..4], Stage::CACHED);
    }

    #[test]
    fn rebuild_names_parse_and_others_are_refused_with_the_list() {
        for s in Stage::CACHED {
            assert_eq!(s.name().parse::<Stage>(), Ok(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.name());
        }
        for bad in ["check", "Rootfs", "", "disk ", "../disk"] {
            let err = bad.parse::<Stage>().unwrap_err();
            assert_eq!(err, format!("{bad}: stages are rootfs, customize, disk, outputs"));
        }
    }
}
