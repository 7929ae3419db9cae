//! Users, groups, sudo rules and SSH authorized keys, by editing the account files under the
//! root directly (`/etc/passwd`, `/etc/shadow`, `/etc/group`, `/etc/gshadow`).
//!
//! Editing the files rather than calling `useradd` works the same live and under `--root` (the
//! host's `useradd --root` would need the image's PAM and login.defs), and is testable. The
//! rules follow Debian's defaults: a user-private group, uids and gids from 1000 (100–999 for
//! system accounts), home `0700` with the files of `/etc/skel`.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::{Ctx, Outcome, StepError};
use crate::root::{FileOpts, Root, RootError};

/// A user to create or update (cloud-config `users[]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// Login name.
    pub name: String,
    /// GECOS (full name).
    #[serde(default)]
    pub gecos: Option<String>,
    /// Supplementary groups (created when missing).
    #[serde(default)]
    pub groups: Vec<String>,
    /// Primary group; default: a group named like the user.
    #[serde(default)]
    pub primary_group: Option<String>,
    /// sudo rules, e.g. `ALL=(ALL) NOPASSWD:ALL`.
    #[serde(default)]
    pub sudo: Vec<String>,
    /// Login shell.
    #[serde(default)]
    pub shell: Option<String>,
    /// Lock the password (default true, as cloud-init).
    #[serde(default = "super::yes")]
    pub lock_passwd: bool,
    /// Password hash (crypt format). Never logged.
    #[serde(default)]
    pub passwd: Option<String>,
    /// SSH public keys for `~/.ssh/authorized_keys`.
    #[serde(default)]
    pub ssh_authorized_keys: Vec<String>,
    /// Home directory (default `/home/<name>`).
    #[serde(default)]
    pub homedir: Option<String>,
    /// Do not create the home directory.
    #[serde(default)]
    pub no_create_home: bool,
    /// A system account (uid below 1000, no home unless asked).
    #[serde(default)]
    pub system: bool,
    /// Fixed uid for a new user.
    #[serde(default)]
    pub uid: Option<u32>,
}

impl User {
    /// A user with cloud-init's defaults (locked password, no groups).
    pub fn new(name: impl Into<String>) -> Self {
        User {
            name: name.into(),
            gecos: None,
            groups: Vec::new(),
            primary_group: None,
            sudo: Vec::new(),
            shell: None,
            lock_passwd: true,
            passwd: None,
            ssh_authorized_keys: Vec::new(),
            homedir: None,
            no_create_home: false,
            system: false,
            uid: None,
        }
    }

    /// The image's default user (cloud-config `users: [default]`): `capstan`, in `adm` and
    /// `sudo`, passwordless sudo, password locked, bash.
    pub fn default_user() -> Self {
        User {
            gecos: Some("Capstan".into()),
            groups: vec!["adm".into(), "sudo".into()],
            sudo: vec!["ALL=(ALL) NOPASSWD:ALL".into()],
            shell: Some("/bin/bash".into()),
            ..User::new("capstan")
        }
    }

    fn home(&self) -> String {
        self.homedir.clone().unwrap_or_else(|| format!("/home/{}", self.name))
    }
}

/// A group to create, with members (cloud-config `groups`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    /// Group name.
    pub name: String,
    /// Users to add to it (they must exist or be created by `users`).
    #[serde(default)]
    pub members: Vec<String>,
}

/// Debian's rule for user and group names (`^[a-z_][a-z0-9_-]*[$]?$`, at most 32 bytes).
pub fn valid_account_name(s: &str) -> bool {
    let body = s.strip_suffix('$').unwrap_or(s);
    !body.is_empty()
        && s.len() <= 32
        && body.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && body
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// True when `s` can sit in a colon-separated account file field.
pub fn valid_field(s: &str) -> bool {
    !s.contains([':', '\n', '\r', '\0'])
}

type Table = Vec<Vec<String>>;

fn parse_table(text: Option<String>, fields: usize) -> Table {
    text.unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut v: Vec<String> = l.split(':').map(str::to_owned).collect();
            v.resize(fields.max(v.len()), String::new());
            v
        })
        .collect()
}

fn render_table(t: &Table) -> String {
    t.iter().map(|r| r.join(":") + "\n").collect()
}

/// The account files of a root, in memory.
#[derive(Debug, Clone)]
pub struct Accounts {
    passwd: Table,
    shadow: Table,
    group: Table,
    gshadow: Option<Table>,
    orig: [String; 4],
}

impl Accounts {
    /// Reads the account files (missing ones count as empty; `/etc/gshadow` is kept absent).
    pub fn load(root: &Root) -> Result<Self, RootError> {
        let passwd = parse_table(root.read_string("/etc/passwd")?, 7);
        let shadow = parse_table(root.read_string("/etc/shadow")?, 9);
        let group = parse_table(root.read_string("/etc/group")?, 4);
        let gshadow = root.read_string("/etc/gshadow")?.map(|t| parse_table(Some(t), 4));
        let mut a = Accounts { passwd, shadow, group, gshadow, orig: Default::default() };
        a.orig = a.rendered();
        Ok(a)
    }

    fn rendered(&self) -> [String; 4] {
        [
            render_table(&self.passwd),
            render_table(&self.shadow),
            render_table(&self.group),
            self.gshadow.as_ref().map(render_table).unwrap_or_default(),
        ]
    }

    fn user_row(&self, name: &str) -> Option<&Vec<String>> {
        self.passwd.iter().find(|r| r[0] == name)
    }

    /// The uid of a user name (or a number).
    pub fn uid(&self, user: &str) -> Option<u32> {
        user.parse().ok().or_else(|| self.user_row(user).and_then(|r| r[2].parse().ok()))
    }

    /// The gid of a group name (or a number).
    pub fn gid(&self, group: &str) -> Option<u32> {
        group
            .parse()
            .ok()
            .or_else(|| self.group.iter().find(|r| r[0] == group).and_then(|r| r[2].parse().ok()))
    }

    fn free_id(&self, used: impl Iterator<Item = u32>, system: bool) -> Option<u32> {
        let used: BTreeSet<u32> = used.collect();
        if system {
            (100..1000).rev().find(|i| !used.contains(i))
        } else {
            (1000..60000).find(|i| !used.contains(i))
        }
    }

    /// Creates the group if missing; returns its gid.
    pub fn ensure_group(
        &mut self,
        name: &str,
        system: bool,
        want_gid: Option<u32>,
    ) -> Result<u32, String> {
        if let Some(g) = self.gid(name) {
            return Ok(g);
        }
        let used: Vec<u32> = self.group.iter().filter_map(|r| r[2].parse().ok()).collect();
        let gid = match want_gid {
            Some(g) if !used.contains(&g) => g,
            _ => self.free_id(used.into_iter(), system).ok_or("no free gid")?,
        };
        self.group.push(vec![name.into(), "x".into(), gid.to_string(), String::new()]);
        if let Some(gs) = &mut self.gshadow {
            gs.push(vec![name.into(), "!".into(), String::new(), String::new()]);
        }
        Ok(gid)
    }

    /// Adds `user` to the member list of `group` (which must exist).
    pub fn add_member(&mut self, group: &str, user: &str) {
        let add = |row: &mut Vec<String>, col: usize| {
            let mut m: Vec<String> =
                row[col].split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect();
            if !m.iter().any(|x| x == user) {
                m.push(user.to_owned());
                row[col] = m.join(",");
            }
        };
        if let Some(r) = self.group.iter_mut().find(|r| r[0] == group) {
            add(r, 3);
        }
        if let Some(gs) = &mut self.gshadow {
            if let Some(r) = gs.iter_mut().find(|r| r[0] == group) {
                add(r, 3);
            }
        }
    }

    /// Creates or updates a user; returns (uid, gid, created).
    pub fn ensure_user(&mut self, u: &User) -> Result<(u32, u32, bool), String> {
        if let Some(row) = self.user_row(&u.name).cloned() {
            let uid =
                row[2].parse().map_err(|_| format!("user {}: bad uid in /etc/passwd", u.name))?;
            let gid =
                row[3].parse().map_err(|_| format!("user {}: bad gid in /etc/passwd", u.name))?;
            if let Some(s) = self.shadow.iter_mut().find(|r| r[0] == u.name) {
                if let Some(h) = &u.passwd {
                    s[1] = h.clone();
                }
                if u.lock_passwd && !s[1].starts_with('!') {
                    s[1] = format!("!{}", s[1]);
                }
            }
            return Ok((uid, gid, false));
        }
        let pg = u.primary_group.clone().unwrap_or_else(|| u.name.clone());
        let used: Vec<u32> = self.passwd.iter().filter_map(|r| r[2].parse().ok()).collect();
        let uid = match u.uid {
            Some(x) if used.contains(&x) => {
                return Err(format!("user {}: uid {x} is taken", u.name))
            }
            Some(x) => x,
            None => self.free_id(used.into_iter(), u.system).ok_or("no free uid")?,
        };
        // a user-private group gets the uid as gid when it is free, as useradd does
        let gid = self.ensure_group(&pg, u.system, u.primary_group.is_none().then_some(uid))?;
        let shell = u.shell.clone().unwrap_or_else(|| {
            if u.system {
                "/usr/sbin/nologin".into()
            } else {
                "/bin/sh".into()
            }
        });
        self.passwd.push(vec![
            u.name.clone(),
            "x".into(),
            uid.to_string(),
            gid.to_string(),
            u.gecos.clone().unwrap_or_default(),
            u.home(),
            shell,
        ]);
        let pw = match (&u.passwd, u.lock_passwd) {
            (Some(h), true) => format!("!{h}"),
            (Some(h), false) => h.clone(),
            (None, _) => "!".into(),
        };
        // The last-change field is left empty (aging off) so the file does not depend on the
        // clock: first boot of the same input gives the same bytes.
        self.shadow.push(vec![
            u.name.clone(),
            pw,
            String::new(),
            "0".into(),
            "99999".into(),
            "7".into(),
            String::new(),
            String::new(),
            String::new(),
        ]);
        Ok((uid, gid, true))
    }

    /// Writes the files that changed, atomically, with Debian's modes.
    pub fn save(&self, root: &Root) -> Result<usize, RootError> {
        let now = self.rendered();
        let shadow_gid = self.gid("shadow").unwrap_or(0);
        let targets = [
            ("/etc/passwd", FileOpts { mode: 0o644, owner: Some((0, 0)) }),
            ("/etc/shadow", FileOpts { mode: 0o640, owner: Some((0, shadow_gid)) }),
            ("/etc/group", FileOpts { mode: 0o644, owner: Some((0, 0)) }),
            ("/etc/gshadow", FileOpts { mode: 0o640, owner: Some((0, shadow_gid)) }),
        ];
        let mut n = 0;
        for (i, (path, opts)) in targets.iter().enumerate() {
            if i == 3 && self.gshadow.is_none() {
                continue;
            }
            if now[i] != self.orig[i] {
                root.write(path, now[i].as_bytes(), *opts)?;
                n += 1;
            }
        }
        Ok(n)
    }
}

/// The sudoers drop-in we own.
pub const SUDOERS: &str = "/etc/sudoers.d/90-capstan-users";

/// Renders the sudoers drop-in for all users with rules; `None` when nobody has one.
pub fn render_sudoers(users: &[User]) -> Option<String> {
    let mut s = String::from("# Written by capstan-agent firstboot; changes are overwritten.\n");
    let mut any = false;
    for u in users {
        for rule in &u.sudo {
            s.push_str(&format!("{} {}\n", u.name, rule));
            any = true;
        }
    }
    any.then_some(s)
}

/// Merges `keys` into an authorized_keys text, keeping what is there; returns the new text.
pub fn merge_keys(current: &str, keys: &[String]) -> String {
    let mut out = current.to_owned();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    let have: BTreeSet<&str> = current.lines().map(str::trim).collect();
    for k in keys {
        if !have.contains(k.trim()) {
            out.push_str(k.trim());
            out.push('\n');
        }
    }
    out
}

/// Refuses an entry that would corrupt an account file, sudoers or authorized_keys, before
/// anything is changed.
fn validate_users(users: &[User]) -> Result<(), StepError> {
    for u in users {
        let fields = [
            Some(&u.name),
            u.gecos.as_ref(),
            u.shell.as_ref(),
            u.passwd.as_ref(),
            u.homedir.as_ref(),
            u.primary_group.as_ref(),
        ];
        if !valid_account_name(&u.name) || fields.iter().flatten().any(|f| !valid_field(f)) {
            return Err(StepError::msg(format!(
                "user {:?}: invalid name or field (':' or newline); no account changed",
                u.name
            )));
        }
        for r in &u.sudo {
            if r.contains(['\n', '\r', '\0']) || r.trim().is_empty() {
                return Err(StepError::msg(format!(
                    "user {}: sudo rule {r:?} is not one line; no account changed",
                    u.name
                )));
            }
        }
        if u.ssh_authorized_keys.iter().any(|k| k.contains(['\n', '\r', '\0'])) {
            return Err(StepError::msg(format!(
                "user {}: an ssh key spans lines; no account changed",
                u.name
            )));
        }
    }
    Ok(())
}

/// A user of the plan with its ids, and whether this run created it.
type Ensured<'a> = (&'a User, u32, u32, bool);

/// Adds the plan's groups and users (and their memberships) to the account database.
fn ensure_accounts<'a>(
    db: &mut Accounts,
    users: &'a [User],
    groups: &[Group],
) -> Result<Vec<Ensured<'a>>, StepError> {
    for g in groups {
        db.ensure_group(&g.name, false, None)
            .map_err(|e| StepError::msg(format!("group {}: {e}", g.name)))?;
    }
    let mut ensured = Vec::new();
    for u in users {
        for g in &u.groups {
            db.ensure_group(g, false, None)
                .map_err(|e| StepError::msg(format!("user {}: group {g}: {e}", u.name)))?;
            db.add_member(g, &u.name);
        }
        let (uid, gid, new) = db.ensure_user(u).map_err(StepError::msg)?;
        ensured.push((u, uid, gid, new));
    }
    for g in groups {
        for m in &g.members {
            if db.uid(m).is_none() {
                return Err(StepError::msg(format!(
                    "group {}: member {m} does not exist; no account changed",
                    g.name
                )));
            }
            db.add_member(&g.name, m);
        }
    }
    Ok(ensured)
}

/// Creates a new user's home directory and copies the files of `/etc/skel` into it.
fn make_home(
    root: &Root,
    u: &User,
    home: &str,
    owner: Option<(u32, u32)>,
) -> Result<(), StepError> {
    root.mkdir_all(home, FileOpts { mode: 0o700, owner })
        .map_err(|e| StepError::wrap(format!("user {}: create {home}", u.name), e))?;
    for f in root.list("/etc/skel").map_err(|e| StepError::wrap("list /etc/skel", e))? {
        let src = format!("/etc/skel/{f}");
        // files only; one written by an earlier step of this run is still staged (not on disk
        // yet), so ask the root rather than the disk whether it is a file
        let dir = root.resolve(&src).map(|p| p.is_dir()).unwrap_or(true);
        if !dir && root.exists(&src).unwrap_or(false) {
            if let Some(data) =
                root.read(&src).map_err(|e| StepError::wrap(format!("read {src}"), e))?
            {
                root.write(format!("{home}/{f}"), &data, FileOpts { mode: 0o644, owner })
                    .map_err(|e| StepError::wrap(format!("user {}: copy {src}", u.name), e))?;
            }
        }
    }
    Ok(())
}

/// Merges the user's keys into `~/.ssh/authorized_keys`; returns how many keys were given.
fn install_keys(
    root: &Root,
    u: &User,
    home: &str,
    owner: Option<(u32, u32)>,
) -> Result<usize, StepError> {
    if u.ssh_authorized_keys.is_empty() {
        return Ok(0);
    }
    let dir = format!("{home}/.ssh");
    let path = format!("{dir}/authorized_keys");
    root.mkdir_all(&dir, FileOpts { mode: 0o700, owner })
        .map_err(|e| StepError::wrap(format!("user {}: create {dir}", u.name), e))?;
    let cur = root
        .read_string(&path)
        .map_err(|e| StepError::wrap(format!("read {path}"), e))?
        .unwrap_or_default();
    let want = merge_keys(&cur, &u.ssh_authorized_keys);
    if want != cur {
        root.write(&path, want.as_bytes(), FileOpts { mode: 0o600, owner })
            .map_err(|e| StepError::wrap(format!("user {}: write {path}", u.name), e))?;
    }
    Ok(u.ssh_authorized_keys.len())
}

pub(crate) fn step(ctx: &Ctx<'_>) -> Result<Outcome, StepError> {
    let plan = ctx.plan;
    if plan.users.is_empty() && plan.groups.is_empty() {
        return Ok(Outcome::Skipped("no users or groups".into()));
    }
    let root = ctx.root;
    // Validate every entry before changing anything.
    validate_users(&plan.users)?;
    let sudo = render_sudoers(&plan.users);
    // the rules everyone uses are known to be valid; anything else goes through visudo
    let unusual =
        plan.users.iter().flat_map(|u| &u.sudo).any(|r| !KNOWN_GOOD_RULES.contains(&r.trim()));
    if let (Some(text), true) = (&sudo, unusual) {
        check_sudoers(text)
            .map_err(|e| StepError::msg(format!("{SUDOERS}: {e}; no account changed")))?;
    }
    let mut db = Accounts::load(root).map_err(|e| StepError::wrap("read account files", e))?;
    let users = ensure_accounts(&mut db, &plan.users, &plan.groups)?;
    let created: Vec<&str> =
        users.iter().filter(|(_, _, _, new)| *new).map(|(u, ..)| u.name.as_str()).collect();
    let files = db.save(root).map_err(|e| StepError::wrap("write account files", e))?;
    let mut keys = 0;
    for &(u, uid, gid, new) in &users {
        let home = u.home();
        let owner = Some((uid, gid));
        let wants_home = new && !u.no_create_home && (u.homedir.is_some() || !u.system);
        if wants_home && !root.exists(&home).unwrap_or(false) {
            make_home(root, u, &home, owner)?;
        }
        keys += install_keys(root, u, &home, owner)?;
    }
    // sudoers must be 0440 to be read by sudo
    let sudo_did = super::timedns::converge_mode(ctx, SUDOERS, sudo, 0o440)?;
    Ok(Outcome::Ok(format!(
        "{} user(s) ({} created: {}), {files} account file(s) written, {keys} key(s), sudo: {sudo_did}",
        plan.users.len(),
        created.len(),
        created.join(" ")
    )))
}

/// sudo rules that need no `visudo` run (a process start on first boot's critical path):
/// what Cluster API and cloud-init examples use. The test suite checks them with visudo.
pub const KNOWN_GOOD_RULES: &[&str] = &[
    "ALL=(ALL) NOPASSWD:ALL",
    "ALL=(ALL:ALL) NOPASSWD:ALL",
    "ALL=(ALL) NOPASSWD: ALL",
    "ALL=(ALL:ALL) NOPASSWD: ALL",
    "ALL=(ALL) ALL",
    "ALL=(ALL:ALL) ALL",
];

/// Runs `visudo -c` on the rendered rules when visudo is installed on this host.
fn check_sudoers(text: &str) -> Result<(), String> {
    let Some(visudo) = ["/usr/sbin/visudo", "/usr/bin/visudo", "/sbin/visudo"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
    else {
        return Ok(());
    };
    let dir = tempfile_dir().map_err(|e| e.to_string())?;
    let f = dir.join("sudoers");
    std::fs::write(&f, text).map_err(|e| e.to_string())?;
    let out = std::process::Command::new(visudo).arg("-c").arg("-q").arg("-f").arg(&f).output();
    let _ = std::fs::remove_dir_all(&dir);
    let out = out.map_err(|e| format!("run visudo: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "visudo rejects it: {}",
            String::from_utf8_lossy(&out.stderr)
                .trim()
                .replace(&f.display().to_string(), "sudoers")
        ))
    }
}

fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!(
        "capstan-visudo-{}-{}",
        std::process::id(),
        super::identity::new_machine_id()?
    ));
    std::fs::create_dir(&d)?;
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["capv", "_apt", "a-b_1", "machine$"] {
            assert!(valid_account_name(ok), "{ok}");
        }
        for bad in ["", "Root", "1abc", "-x", "a:b", "a b", &"a".repeat(33), "$"] {
            assert!(!valid_account_name(bad), "{bad}");
        }
    }

    #[test]
    fn keys_merge_idempotently() {
        let k = vec!["ssh-ed25519 AAAA one".to_string()];
        let a = merge_keys("ssh-rsa BBBB old", &k);
        assert_eq!(a, "ssh-rsa BBBB old\nssh-ed25519 AAAA one\n");
        assert_eq!(merge_keys(&a, &k), a);
    }
}
