//! `capstan-hub serve`: opens the database, loads the nodes, and runs the HTTPS server and the
//! deadline task.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::engine::Hub;
use crate::http::auth::{TokenError, Tokens};
use crate::http::{serve, Access};
use crate::remedy::RemedyConfig;
use crate::store::{self, StoreError};
use crate::tracker::node::Policy;

/// Everything `serve` needs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Where to listen.
    pub listen: SocketAddr,
    /// `sqlite:PATH` or `postgres://…`.
    pub db: String,
    /// The serving certificate.
    pub tls_cert: PathBuf,
    /// Its key.
    pub tls_key: PathBuf,
    /// The CA that signs node certificates.
    pub client_ca: PathBuf,
    /// Bearer tokens (optional).
    pub token_file: Option<PathBuf>,
    /// Judging rules.
    pub policy: Policy,
    /// Remediation.
    pub remedy: RemedyConfig,
}

/// `serve` failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The database.
    #[error("database")]
    Store(#[from] StoreError),
    /// The TLS material.
    #[error("TLS")]
    Tls(#[from] capstan_agent::tls::TlsError),
    /// The token file.
    #[error("token file")]
    Tokens(#[from] TokenError),
    /// Listening.
    #[error("listening on {addr}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Runs the hub until the process ends. Prints `listening on ADDR` once it accepts.
pub async fn run(opts: ServeOptions) -> Result<(), ServeError> {
    let tls =
        capstan_agent::tls::server_config(&opts.tls_cert, &opts.tls_key, Some(&opts.client_ca))?;
    let tokens = match &opts.token_file {
        Some(p) => Tokens::load(p)?,
        None => Tokens::default(),
    };
    let (store, loaded, pg) = store::open(&opts.db, opts.remedy.window).await?;
    let hub = Hub::new(opts.policy, opts.remedy.clone(), store, loaded, pg.is_none());
    let listener = TcpListener::bind(opts.listen)
        .await
        .map_err(|source| ServeError::Listen { addr: opts.listen, source })?;
    let addr =
        listener.local_addr().map_err(|source| ServeError::Listen { addr: opts.listen, source })?;
    let access = Access { tokens, open_reads: opts.listen.ip().is_loopback() };
    tokio::spawn(hub.clone().run_deadlines());
    if let Some(pg) = pg {
        tokio::spawn(pg.run_replica(hub.clone()));
    }
    println!("listening on {addr}");
    tracing::info!(%addr, db = %redact(&opts.db), "capstan-hub serving");
    serve(Arc::clone(&hub), listener, tls, access).await;
    Ok(())
}

/// The database URL without a password.
fn redact(db: &str) -> String {
    match (db.find("://"), db.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://…{}", &db[..s], &db[at..]),
        _ => db.to_owned(),
    }
}
