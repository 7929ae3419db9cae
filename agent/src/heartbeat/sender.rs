//! The agent's sender: a tokio task that posts a [`Heartbeat`] to the hub every interval (with
//! jitter), backs off (with jitter) while the hub is away, and never makes its caller wait.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::Method;
use rustls::pki_types::CertificateDer;
use tokio::task::JoinHandle;

use super::client::{Client, ClientError, Credential};
use super::status::Outcome;
use super::wire::Heartbeat;
use crate::tls::PemError;

/// Where and how to send heartbeats (the schema's `heartbeat.*` keys,
/// [`HeartbeatSettings::from_config`]).
#[derive(Clone)]
pub struct HeartbeatSettings {
    /// The hub, `https://HOST[:PORT]` (`heartbeat.url`); heartbeats go to `/v1/heartbeat`.
    pub url: String,
    /// The interval between heartbeats (`heartbeat.interval`, default 10 s).
    pub interval: Duration,
    /// The hub's CA certificates, the only ones trusted (`heartbeat.ca`).
    pub ca: Vec<CertificateDer<'static>>,
    /// The node's credential: `heartbeat.client-cert` + `heartbeat.client-key` (mutual TLS),
    /// or `heartbeat.token`.
    pub credential: Credential,
}

impl std::fmt::Debug for HeartbeatSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeartbeatSettings")
            .field("url", &self.url)
            .field("interval", &self.interval)
            .field("ca", &self.ca.len())
            .field("credential", &self.credential)
            .finish()
    }
}

/// Settings that cannot work.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// Neither a certificate nor a token.
    #[error("heartbeat.url is set but neither heartbeat.client-cert nor heartbeat.token")]
    NoCredential,
    /// `heartbeat.url` is set and `heartbeat.ca` is not.
    #[error("heartbeat.url is set but heartbeat.ca is not")]
    NoCa,
    /// `heartbeat.interval` is zero.
    #[error("heartbeat.interval must be more than 0")]
    ZeroInterval,
    /// A PEM value is unusable.
    #[error("{key}")]
    Pem {
        /// The setting.
        key: &'static str,
        /// What is wrong (never the value).
        #[source]
        source: PemError,
    },
    /// The URL or the material is unusable.
    #[error("heartbeat settings")]
    Client(#[source] ClientError),
}

impl HeartbeatSettings {
    /// The settings of a node's configuration; `None` when `heartbeat.url` is unset. A client
    /// certificate wins over a token when both are given.
    pub fn from_config(hb: &crate::schema::Heartbeat) -> Result<Option<Self>, SettingsError> {
        let Some(url) = &hb.url else {
            return Ok(None);
        };
        let pem = |key, e| SettingsError::Pem { key, source: e };
        let ca = hb.ca.as_deref().ok_or(SettingsError::NoCa)?;
        let ca = crate::tls::certs_from_pem(ca).map_err(|e| pem("heartbeat.ca", e))?;
        let credential = match (&hb.client_cert, &hb.client_key, &hb.token) {
            (Some(c), Some(k), _) => {
                let chain =
                    crate::tls::certs_from_pem(c).map_err(|e| pem("heartbeat.client-cert", e))?;
                let key =
                    crate::tls::key_from_pem(k).map_err(|e| pem("heartbeat.client-key", e))?;
                crate::tls::check_pair(&chain, &key).map_err(|e| pem("heartbeat.client-key", e))?;
                Credential::Cert(chain, Arc::new(key))
            }
            (_, _, Some(t)) => Credential::Token(t.clone()),
            _ => return Err(SettingsError::NoCredential),
        };
        Ok(Some(HeartbeatSettings { url: url.clone(), interval: hb.interval, ca, credential }))
    }

    /// The client these settings describe.
    pub fn client(&self) -> Result<Client, SettingsError> {
        if self.interval.is_zero() {
            return Err(SettingsError::ZeroInterval);
        }
        if matches!(self.credential, Credential::None) {
            return Err(SettingsError::NoCredential);
        }
        // A request may take at most one interval (and never more than 10 s): the next one is due.
        let timeout = self.interval.min(Duration::from_secs(10));
        Client::new(&self.url, &self.ca, self.credential.clone(), timeout)
            .map_err(SettingsError::Client)
    }
}

/// What the sender has done, for `capstan-agent status`.
#[derive(Debug, Default)]
pub struct SenderStats {
    /// Heartbeats the hub accepted.
    pub accepted: AtomicU64,
    /// Heartbeats the hub refused (4xx/5xx).
    pub refused: AtomicU64,
    /// Attempts that did not reach the hub.
    pub failed: AtomicU64,
    /// The last sequence number sent.
    pub last_seq: AtomicU64,
}

/// The running sender. Dropping it does not stop the task; [`Sender::stop`] does.
#[derive(Debug)]
pub struct Sender {
    /// Counters.
    pub stats: Arc<SenderStats>,
    task: JoinHandle<()>,
    now: Arc<tokio::sync::Notify>,
}

impl Sender {
    /// Stops sending.
    pub fn stop(&self) {
        self.task.abort();
    }

    /// Sends the next heartbeat now instead of at the end of the wait (after a
    /// re-identification, so that the hub sees the new identity at once).
    pub fn beat_now(&self) {
        self.now.notify_one();
    }

    /// A handle that does what [`Sender::beat_now`] does, for another task.
    pub fn nudger(&self) -> Arc<tokio::sync::Notify> {
        self.now.clone()
    }
}

/// Unix time in milliseconds.
pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The wait before the next attempt: the interval ±10 % after a success; after `failures`
/// failed attempts in a row, a quarter interval doubling per failure, capped at 1.5 intervals,
/// with full jitter over its upper half. The cap stays below the hub's suspect threshold (2
/// intervals) so that nodes are back within it after a hub restart, and the jitter spreads a
/// fleet's reconnects instead of having them arrive at once. `r` is uniform in [0, 1).
pub fn next_delay(interval: Duration, failures: u32, r: f64) -> Duration {
    if failures == 0 {
        return interval.mul_f64(0.9 + 0.2 * r);
    }
    let d = interval.mul_f64((0.25 * 2f64.powi(failures.min(16) as i32 - 1)).min(1.5));
    d.mul_f64(0.5 + 0.5 * r)
}

/// Starts the sender on the current tokio runtime. `facts` builds each message (it runs on a
/// blocking thread, so it may read /proc); the sender sets `seq` and `sent_at`.
pub fn spawn<F>(settings: HeartbeatSettings, facts: F) -> Result<Sender, SettingsError>
where
    F: Fn() -> Heartbeat + Send + Sync + 'static,
{
    spawn_observed(settings, facts, |_: &Heartbeat, _: Outcome| {})
}

/// Like [`spawn`], and calls `observe` (on a blocking thread) with each message and how the
/// hub took it: the daemon publishes `guestinfo.capstan.status` from there.
pub fn spawn_observed<F, O>(
    settings: HeartbeatSettings,
    facts: F,
    observe: O,
) -> Result<Sender, SettingsError>
where
    F: Fn() -> Heartbeat + Send + Sync + 'static,
    O: Fn(&Heartbeat, Outcome) + Send + Sync + 'static,
{
    let client = settings.client()?;
    let stats = Arc::new(SenderStats::default());
    let now = Arc::new(tokio::sync::Notify::new());
    let task = tokio::spawn(run(
        client,
        (settings.interval, now.clone()),
        stats.clone(),
        Arc::new(facts),
        Arc::new(observe),
    ));
    Ok(Sender { stats, task, now })
}

/// Log a lasting outage or refusal once per this many attempts (besides the first).
const LOG_EVERY: u64 = 60;

async fn run<F, O>(
    mut client: Client,
    (interval, now): (Duration, Arc<tokio::sync::Notify>),
    st: Arc<SenderStats>,
    facts: Arc<F>,
    observe: Arc<O>,
) where
    F: Fn() -> Heartbeat + Send + Sync + 'static,
    O: Fn(&Heartbeat, Outcome) + Send + Sync + 'static,
{
    // Starts at the start time so that a restarted agent continues upward (see wire.rs).
    let mut seq = unix_ms();
    let mut failures = 0u32;
    loop {
        let f = facts.clone();
        let Ok(mut hb) = tokio::task::spawn_blocking(move || f()).await else {
            tracing::error!("heartbeat: building the message panicked");
            tokio::time::sleep(interval).await;
            continue;
        };
        seq += 1;
        hb.seq = seq;
        hb.sent_at = unix_ms();
        st.last_seq.store(seq, Ordering::Relaxed);
        let outcome = match client.request(Method::POST, "/v1/heartbeat", hb.to_json()).await {
            Ok((status, _)) if status.is_success() => {
                if failures > 0 {
                    tracing::info!(hub = client.authority(), "heartbeat: the hub is back");
                }
                failures = 0;
                st.accepted.fetch_add(1, Ordering::Relaxed);
                Outcome::Accepted
            }
            Ok((status, body)) => {
                // The hub is there but refuses: a configuration problem, not an outage.
                failures = 0;
                if st.refused.fetch_add(1, Ordering::Relaxed) % LOG_EVERY == 0 {
                    let why = String::from_utf8_lossy(&body);
                    let why = why.trim();
                    tracing::warn!(%status, %why, hub = client.authority(), "heartbeat refused by the hub");
                }
                Outcome::Refused(status.as_u16())
            }
            Err(e) => {
                let n = st.failed.fetch_add(1, Ordering::Relaxed);
                if failures == 0 || n % LOG_EVERY == 0 {
                    tracing::warn!(error = %crate::error::chain(&e), attempts = n + 1, "heartbeat: hub unreachable, backing off");
                }
                failures = failures.saturating_add(1);
                Outcome::Unreachable
            }
        };
        let o = observe.clone();
        // The observer's failure is its own: it never stops the heartbeats.
        let _ = tokio::task::spawn_blocking(move || o(&hb, outcome)).await;
        let wait = next_delay(interval, failures, fastrand::f64());
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = now.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_jitter_around_the_interval_and_back_off_below_the_suspect_threshold() {
        let i = Duration::from_secs(10);
        assert_eq!(next_delay(i, 0, 0.0), Duration::from_secs(9));
        assert_eq!(next_delay(i, 0, 0.999_999).as_millis(), 10_999);
        assert_eq!(next_delay(i, 1, 0.0), Duration::from_millis(1250));
        assert_eq!(next_delay(i, 1, 0.999_999).as_millis(), 2499);
        assert_eq!(next_delay(i, 3, 0.999_999).as_millis(), 9999);
        for f in [4, 10, 1000, u32::MAX] {
            assert!(next_delay(i, f, 0.999_999) < Duration::from_secs(15), "{f}");
            assert!(next_delay(i, f, 0.0) >= Duration::from_millis(7500), "{f}");
        }
    }

    #[test]
    fn settings_come_from_the_config_and_never_show_the_token() {
        use crate::schema::Heartbeat as Cfg;
        let ck = rcgen::generate_simple_self_signed(vec!["hub".into()]).unwrap();
        let cfg = |url: Option<&str>, ca: bool, token: bool| Cfg {
            url: url.map(str::to_owned),
            interval: Duration::from_secs(1),
            ca: ca.then(|| ck.cert.pem()),
            client_cert: None,
            client_key: None,
            token: token.then(|| "t0ken-0123456789abcdef".into()),
        };
        assert!(HeartbeatSettings::from_config(&cfg(None, true, true)).unwrap().is_none());
        let e = HeartbeatSettings::from_config(&cfg(Some("https://h"), false, true)).unwrap_err();
        assert!(matches!(e, SettingsError::NoCa), "{e}");
        let e = HeartbeatSettings::from_config(&cfg(Some("https://h"), true, false)).unwrap_err();
        assert!(matches!(e, SettingsError::NoCredential), "{e}");
        let s = HeartbeatSettings::from_config(&cfg(Some("https://h:7443"), true, true))
            .unwrap()
            .unwrap();
        assert!(!format!("{s:?}").contains("t0ken"), "{s:?}");
        s.client().expect("a usable client");
        let mut http = s.clone();
        http.url = "http://h:7443".into();
        let e = http.client().unwrap_err();
        assert!(crate::error::chain(&e).contains("https"), "{}", crate::error::chain(&e));
    }
}
