//! `capstan cache list [--cache DIR] [--json]` and `capstan cache prune [--cache DIR]
//! [--keep N] [--older-than DAYS] [--dry-run] [--json]`: what the stage cache holds, and
//! removing what builds no longer use.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand};

use crate::cache::{self, inventory};

/// `capstan cache` subcommands.
#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// List the stage cache's entries: stage, key, size on disk, last used.
    #[command(long_about = LIST_ABOUT)]
    List(ListArgs),
    /// Remove entries builds no longer use: all but the N most recently used of each stage
    /// (default 2).
    #[command(long_about = PRUNE_ABOUT)]
    Prune(PruneArgs),
}

const LIST_ABOUT: &str = "\
List the stage cache's entries: stage, key, size on disk, last used.

`capstan build` keeps each stage's output (rootfs, customize, disk, outputs) in the cache
under `<stage>-<key>`, the key a digest of everything that went into it. An entry's \"last
used\" is the last time a build made it or reused it (cache hit); \"incomplete\" marks an
interrupted build's leftovers. SIZE is what the entry takes on disk; files hard-linked into a
build's -o DIR are shared and not freed by removing the entry (`--json`: `shared_bytes`).";

const PRUNE_ABOUT: &str = "\
Remove cache entries builds no longer use.

Of each stage's entries, the --keep N most recently used stay (default 2). Each profile and
firmware you build uses one entry per stage, so keep at least that many (lb and node: 2; lb,
lb --firmware bios and node: 3). With --older-than DAYS, of the others only those last used
more than DAYS ago go. Incomplete entries (interrupted builds) always go. The next build
remakes whatever it misses.

Only entries are removed: real directories named `<stage>-<key>` directly in the cache. A
symlink is never followed, an entry with a mount point inside is kept, nothing else in the
directory is touched. Prune refuses to run while a `capstan build` uses the cache (builds
hold a lock on CACHE/.lock). It prints each entry removed and the bytes freed (files also
hard-linked into a build's -o DIR are not counted: removing the entry does not free them).

Examples:
  capstan cache prune --dry-run                  # what would go, and what it would free
  capstan cache prune                            # the 2 newest entries of each stage stay
  capstan cache prune --keep 0 --older-than 30   # whatever no build used for 30 days";

/// Arguments of `capstan cache list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Stage cache [default: $CAPSTAN_CACHE or ~/.cache/capstan].
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// Print JSON: {cache, entries: [{stage, key, dir, complete, bytes, shared_bytes,
    /// last_used, last_used_unix}], bytes}.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `capstan cache prune`.
#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Stage cache [default: $CAPSTAN_CACHE or ~/.cache/capstan].
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// Keep this many of each stage's most recently used entries.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub keep: usize,
    /// Of the others, remove only those last used more than DAYS ago.
    #[arg(long, value_name = "DAYS")]
    pub older_than: Option<u32>,
    /// Print what would be removed; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON: {cache, dry_run, removed: [entry + reason], kept: [...], freed_bytes,
    /// errors}.
    #[arg(long)]
    pub json: bool,
}

/// Runs a `capstan cache` subcommand.
pub fn run(command: CacheCommand) -> anyhow::Result<ExitCode> {
    match command {
        CacheCommand::List(a) => list(a),
        CacheCommand::Prune(a) => prune(a),
    }
}

fn list(a: ListArgs) -> anyhow::Result<ExitCode> {
    let dir = a.cache.unwrap_or_else(cache::default_dir);
    let entries = inventory::list(&dir)?;
    let total: u64 = entries.iter().map(|e| e.bytes).sum();
    if a.json {
        let v = serde_json::json!({"cache": dir, "entries": entries, "bytes": total});
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    if entries.is_empty() {
        println!("nothing cached in {}", dir.display());
        return Ok(ExitCode::SUCCESS);
    }
    let now = now_unix();
    println!("{:<10} {:<24} {:>10}  LAST USED", "STAGE", "KEY", "SIZE");
    for e in &entries {
        println!(
            "{:<10} {:<24} {:>10}  {}{}",
            e.stage,
            &e.key[..24],
            human(e.bytes),
            when(e.last_used_unix, now),
            if e.complete { "" } else { "  incomplete" }
        );
    }
    println!("{} entries, {} in {}", entries.len(), human(total), dir.display());
    Ok(ExitCode::SUCCESS)
}

fn prune(a: PruneArgs) -> anyhow::Result<ExitCode> {
    let dir = a.cache.unwrap_or_else(cache::default_dir);
    // Held while listing and removing; a dry run changes nothing and needs no lock.
    let _lock = if a.dry_run || !dir.is_dir() { None } else { Some(cache::lock_exclusive(&dir)?) };
    let entries = inventory::list(&dir)?;
    let older_than = a.older_than.map(|d| Duration::from_secs(u64::from(d) * 86_400));
    let plan = inventory::plan(entries, a.keep, older_than, SystemTime::now());
    let mut removed = Vec::new();
    let mut errors = Vec::new();
    for r in plan.remove {
        if !a.dry_run {
            if let Err(e) = inventory::remove(&dir, &r.entry) {
                errors.push(format!("{e:#}"));
                continue;
            }
        }
        removed.push(r);
    }
    let freed: u64 = removed.iter().map(|r| r.entry.freed_bytes()).sum();
    let kept_bytes: u64 = plan.keep.iter().map(|e| e.bytes).sum();
    if a.json {
        let v = serde_json::json!({
            "cache": dir,
            "dry_run": a.dry_run,
            "keep": a.keep,
            "older_than_days": a.older_than,
            "removed": removed,
            "kept": plan.keep,
            "freed_bytes": freed,
            "errors": errors,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let now = now_unix();
        let verb = if a.dry_run { "would remove" } else { "removed" };
        for r in &removed {
            println!(
                "{verb} {}  {}  (last used {}; {})",
                r.entry.dir.display(),
                human(r.entry.freed_bytes()),
                when(r.entry.last_used_unix, now),
                r.reason
            );
        }
        println!(
            "{} {} from {} entries; kept {} entries ({}) in {}",
            if a.dry_run { "would free" } else { "freed" },
            human(freed),
            removed.len(),
            plan.keep.len(),
            human(kept_bytes),
            dir.display()
        );
    }
    for e in &errors {
        eprintln!("capstan cache prune: {e}");
    }
    Ok(if errors.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `1.5 GiB`, `12.0 KiB`, `512 B`.
fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// `2026-11-26T04:40:00Z (3 h ago)`.
fn when(unix: u64, now: u64) -> String {
    let ago = now.saturating_sub(unix);
    let rel = match ago {
        0..=119 => "just now".to_string(),
        120..=7199 => format!("{} min ago", ago / 60),
        7200..=172_799 => format!("{} h ago", ago / 3600),
        _ => format!("{} days ago", ago / 86_400),
    };
    format!("{} ({rel})", inventory::rfc3339(unix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_ages_read_well() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(3 << 30), "3.0 GiB");
        assert_eq!(when(0, 30), "1970-01-01T00:00:00Z (just now)");
        assert!(when(0, 3 * 3600).ends_with("(3 h ago)"));
        assert!(when(0, 40 * 86_400).ends_with("(40 days ago)"));
    }
}
