//! A small HTTPS client for the hub: rustls with the hub's CA pinned (no system roots), an
//! optional client certificate or bearer token, and one kept-alive HTTP/1.1 connection that is
//! re-opened after any failure. The agent's sender, `capstan-hub simulate` and `capstan-hub
//! nodes` all speak through it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Largest response body read.
const MAX_RESPONSE: usize = 8 * 1024 * 1024;

/// Client failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The hub URL is not `https://HOST[:PORT][/PATH]`.
    #[error("hub URL {url:?}: {reason}")]
    Url {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A PEM file could not be read or holds nothing usable.
    #[error(transparent)]
    Pem(#[from] crate::tls::TlsError),
    /// rustls refused the material.
    #[error("TLS configuration")]
    Tls(#[source] rustls::Error),
    /// Connecting, the TLS handshake or the exchange failed.
    #[error("{stage} {authority}")]
    Io {
        /// What was being done.
        stage: &'static str,
        /// The hub's host and port.
        authority: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The hub did not answer in time.
    #[error("{authority} did not answer within {timeout:?}")]
    Timeout {
        /// The hub's host and port.
        authority: String,
        /// The limit.
        timeout: Duration,
    },
}

/// How the client proves who it is.
#[derive(Clone)]
pub enum Credential {
    /// Mutual TLS with this certificate chain and key.
    Cert(Vec<CertificateDer<'static>>, Arc<PrivateKeyDer<'static>>),
    /// `Authorization: Bearer TOKEN`.
    Token(String),
    /// Nothing (reading a hub that listens on loopback only).
    None,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Credential::Cert(..) => "Cert(..)",
            Credential::Token(_) => "Token(<redacted>)",
            Credential::None => "None",
        })
    }
}

/// Reads every certificate in a PEM file ([`crate::tls::read_certs`]).
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    Ok(crate::tls::read_certs(path)?)
}

/// Reads the private key in a PEM file ([`crate::tls::read_key`]).
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, ClientError> {
    Ok(crate::tls::read_key(path)?)
}

impl Credential {
    /// A client certificate from PEM files.
    pub fn from_files(cert: &Path, key: &Path) -> Result<Self, ClientError> {
        Ok(Credential::Cert(read_certs(cert)?, Arc::new(read_key(key)?)))
    }
}

/// One hub endpoint with a kept-alive connection.
pub struct Client {
    authority: String,
    host: String,
    port: u16,
    base: String,
    server_name: ServerName<'static>,
    tls: TlsConnector,
    token: Option<String>,
    timeout: Duration,
    conn: Option<SendRequest<Full<Bytes>>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("authority", &self.authority).finish_non_exhaustive()
    }
}

impl Client {
    /// A client for `url` (`https://HOST[:PORT][/BASE]`, port 443 by default) trusting only
    /// the certificates in `ca`.
    pub fn new(
        url: &str,
        ca: &[CertificateDer<'static>],
        credential: Credential,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let bad = |reason| ClientError::Url { url: url.into(), reason };
        let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
        if uri.scheme_str() != Some("https") {
            return Err(bad("the scheme must be https"));
        }
        let host = uri.host().ok_or(bad("no host"))?.trim_matches(['[', ']']).to_owned();
        let port = uri.port_u16().unwrap_or(443);
        let server_name = ServerName::try_from(host.clone()).map_err(|_| bad("bad host name"))?;
        let mut roots = rustls::RootCertStore::empty();
        for c in ca {
            roots.add(c.clone()).map_err(ClientError::Tls)?;
        }
        let provider = Arc::new(crate::tls::provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(ClientError::Tls)?
            .with_root_certificates(roots);
        let (mut cfg, token) = match credential {
            Credential::Cert(chain, key) => (
                builder.with_client_auth_cert(chain, key.clone_key()).map_err(ClientError::Tls)?,
                None,
            ),
            Credential::Token(t) => (builder.with_no_client_auth(), Some(t)),
            Credential::None => (builder.with_no_client_auth(), None),
        };
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Client {
            authority: format!("{host}:{port}"),
            host,
            port,
            base: uri.path().trim_end_matches('/').to_owned(),
            server_name,
            tls: TlsConnector::from(Arc::new(cfg)),
            token,
            timeout,
            conn: None,
        })
    }

    /// The hub's `HOST:PORT`.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, ClientError> {
        let io = |stage, e: std::io::Error| ClientError::Io {
            stage,
            authority: self.authority.clone(),
            source: Box::new(e),
        };
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| io("connecting to", e))?;
        tcp.set_nodelay(true).map_err(|e| io("connecting to", e))?;
        let tls = self
            .tls
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| io("TLS handshake with", e))?;
        let (send, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| {
                ClientError::Io {
                    stage: "HTTP handshake with",
                    authority: self.authority.clone(),
                    source: Box::new(e),
                }
            })?;
        tokio::spawn(async move {
            // The connection ends when the hub closes it or the client drops the sender.
            let _ = conn.await;
        });
        Ok(send)
    }

    /// One request on the kept-alive connection (opened when needed); returns the status and
    /// body. Any failure drops the connection so the next call opens a fresh one.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let authority = self.authority.clone();
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.exchange(method, path, body)).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                self.conn = None;
                Err(e)
            }
            Err(_) => {
                self.conn = None;
                Err(ClientError::Timeout { authority, timeout })
            }
        }
    }

    async fn exchange(
        &mut self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let mut send = match self.conn.take() {
            Some(s) if !s.is_closed() => s,
            _ => self.connect().await?,
        };
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::CONTENT_TYPE, "application/json");
        if let Some(t) = &self.token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req.body(Full::new(Bytes::from(body))).map_err(|e| ClientError::Io {
            stage: "building a request for",
            authority: self.authority.clone(),
            source: Box::new(e),
        })?;
        send.ready().await.map_err(|e| self.hyper_err(e))?;
        let resp = send.send_request(req).await.map_err(|e| self.hyper_err(e))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| ClientError::Io {
                stage: "reading the answer of",
                authority: self.authority.clone(),
                source: e,
            })?
            .to_bytes();
        self.conn = Some(send);
        Ok((status, body))
    }

    fn hyper_err(&self, e: hyper::Error) -> ClientError {
        ClientError::Io {
            stage: "talking to",
            authority: self.authority.clone(),
            source: Box::new(e),
        }
    }
}
