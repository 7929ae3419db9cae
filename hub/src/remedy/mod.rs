//! Remediation rules: once per episode, a per-node limit per window, a global rate and
//! in-flight limit, and no remediation at all when much of a group is silent at once (then the
//! hub or its network is the likely fault, and replacing healthy VMs would make it worse).

pub mod actions;

use std::collections::VecDeque;

use tokio::time::{Duration, Instant};

pub use actions::Action;

/// The remediation settings (`capstan-hub serve` flags).
#[derive(Debug, Clone)]
pub struct RemedyConfig {
    /// What to do.
    pub action: Action,
    /// After an action, the node is not judged for this long.
    pub grace: Duration,
    /// Actions per node per `window`, then the node is flagged for a person.
    pub max_per_window: usize,
    /// The per-node window (an hour).
    pub window: Duration,
    /// Actions running at once, across nodes.
    pub max_in_flight: usize,
    /// Actions started per minute, across nodes.
    pub per_minute: usize,
    /// No remediation when more than this fraction of a role's nodes is silent.
    pub mass_fraction: f64,
    /// An action's time limit.
    pub timeout: Duration,
}

impl RemedyConfig {
    /// The defaults with `action`: 120 s grace, 3 per hour, 5 in flight, 10 a minute, 40 %, 60 s.
    pub fn new(action: Action) -> Self {
        RemedyConfig {
            action,
            grace: Duration::from_secs(120),
            max_per_window: 3,
            window: Duration::from_secs(3600),
            max_in_flight: 5,
            per_minute: 10,
            mass_fraction: 0.4,
            timeout: Duration::from_secs(60),
        }
    }
}

/// What to do about a node that just became unhealthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Run the action.
    Act,
    /// Report only (`--remediate none`).
    ReportOnly,
    /// Too much of the group is silent: alert, do not act.
    MassSilence {
        /// Silent nodes in the group.
        silent: usize,
        /// Nodes in the group.
        total: usize,
    },
    /// The node had its actions for this window: flag it for a person.
    TooMany {
        /// Actions in the window.
        count: usize,
    },
}

/// Decides for one unhealthy node. One silent node is never "mass" silence, so a group of
/// one is still remediated.
pub fn decide(cfg: &RemedyConfig, silent: usize, total: usize, recent: usize) -> Decision {
    if silent >= 2 && silent as f64 > cfg.mass_fraction * total as f64 {
        return Decision::MassSilence { silent, total };
    }
    if recent >= cfg.max_per_window {
        return Decision::TooMany { count: recent };
    }
    if matches!(cfg.action, Action::None) {
        return Decision::ReportOnly;
    }
    Decision::Act
}

/// The global start rate: at most `per_minute` starts in any minute.
#[derive(Debug, Default)]
pub struct Rate {
    starts: VecDeque<Instant>,
}

impl Rate {
    /// How long to wait before another start, given the limit.
    pub fn wait(&mut self, per_minute: usize, now: Instant) -> Option<Duration> {
        let minute = Duration::from_secs(60);
        while self.starts.front().is_some_and(|t| now.saturating_duration_since(*t) >= minute) {
            self.starts.pop_front();
        }
        if self.starts.len() < per_minute {
            return None;
        }
        self.starts.front().map(|t| (*t + minute).saturating_duration_since(now))
    }

    /// Records a start.
    pub fn start(&mut self, now: Instant) {
        self.starts.push_back(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mass_silence_beats_everything_and_a_lone_node_is_still_remediated() {
        let cfg = RemedyConfig::new(Action::Exec("true".into()));
        assert_eq!(decide(&cfg, 1, 1, 0), Decision::Act);
        assert_eq!(decide(&cfg, 2, 5, 0), Decision::Act);
        assert_eq!(decide(&cfg, 3, 5, 0), Decision::MassSilence { silent: 3, total: 5 });
        assert_eq!(decide(&cfg, 50, 100, 9), Decision::MassSilence { silent: 50, total: 100 });
        assert_eq!(decide(&cfg, 1, 10, 3), Decision::TooMany { count: 3 });
        assert_eq!(decide(&RemedyConfig::new(Action::None), 1, 10, 0), Decision::ReportOnly);
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_limit_waits_for_the_oldest_start_to_age_out() {
        let mut r = Rate::default();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(r.wait(3, t0), None);
            r.start(t0);
        }
        assert_eq!(r.wait(3, t0 + Duration::from_secs(10)), Some(Duration::from_secs(50)));
        assert_eq!(r.wait(3, t0 + Duration::from_secs(60)), None);
    }

    #[test]
    fn remediate_forms_are_parsed_and_bad_ones_named() {
        assert!(matches!(Action::parse("none").unwrap(), Action::None));
        assert!(
            matches!(Action::parse("exec:echo hi").unwrap(), Action::Exec(c) if c == "echo hi")
        );
        assert!(matches!(Action::parse("lab:/run/lab").unwrap(), Action::Lab(_)));
        for bad in ["", "exec:", "exec: ", "reboot", "vsphere:"] {
            assert!(Action::parse(bad).unwrap_err().to_string().contains("--remediate"), "{bad}");
        }
        let e = Action::parse("vsphere:/nonexistent.json").unwrap_err();
        assert!(capstan_agent::error::chain(&e).contains("/nonexistent.json: No such file"), "{e}");
    }
}
