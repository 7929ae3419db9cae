//! A small client for the EC2 instance metadata service (IMDS), IMDSv2 first: a session token
//! from `PUT /latest/api/token` (header `X-aws-ec2-metadata-token-ttl-seconds`), then every `GET`
//! with `X-aws-ec2-metadata-token`. IMDSv1 (no token) is used only when the options allow it
//! and the token request is refused the way an IMDSv1-only service refuses it.
//!
//! Every request has a timeout, and the whole reading a time budget; failures that may pass (connection refused, timeout, HTTP 5xx
//! or 429) are retried a bounded number of times with a doubling backoff; a 401 fetches a fresh
//! token once. Plain `http://` only: the service is link-local and has no TLS.

use std::time::Duration;

use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::Mutex;

use super::provider_data::ProviderError;

const PROVIDER: &str = "ec2";

/// The token request's TTL header.
pub const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
/// The header carrying the token on every other request.
pub const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
/// AWS's address of the service.
pub const DEFAULT_BASE: &str = "http://169.254.169.254";

/// How to talk to the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImdsOptions {
    /// Fall back to IMDSv1 when the token request is refused (403/404/405). Off by default.
    pub allow_v1: bool,
    /// The token's lifetime asked for, in seconds (AWS allows 1-21600).
    pub token_ttl: u32,
    /// Per-request timeout (connect, send and the whole body).
    pub timeout: Duration,
    /// Attempts per request (at least 1).
    pub attempts: u32,
    /// Wait before the first retry; doubles after each.
    pub backoff: Duration,
    /// Largest response body.
    pub max_body: usize,
    /// Time budget for the whole reading: once spent, failures are not retried any more (a
    /// service that dies half-way must not hold the boot for attempts × paths × timeout).
    pub budget: Duration,
}

impl Default for ImdsOptions {
    fn default() -> Self {
        ImdsOptions {
            allow_v1: false,
            token_ttl: 21600,
            timeout: Duration::from_secs(2),
            attempts: 5,
            backoff: Duration::from_millis(200),
            max_body: crate::cloudinit::MAX_DOCUMENT_BYTES,
            budget: Duration::from_secs(60),
        }
    }
}

/// An IMDS client bound to one base URL.
#[derive(Debug)]
pub struct ImdsClient {
    base: String,
    host: String,
    port: u16,
    opts: ImdsOptions,
    /// When the client was made, for [`ImdsOptions::budget`].
    started: std::time::Instant,
    /// `None` before the first token, `Some(None)` in IMDSv1 mode.
    token: Mutex<Option<Option<String>>>,
}

/// One response: status and body.
type Reply = (StatusCode, Vec<u8>);

impl ImdsClient {
    /// A client for `base` (`http://host[:port]`, no path).
    pub fn new(base: &str, opts: ImdsOptions) -> Result<Self, ProviderError> {
        let bad = |p: &str| ProviderError::Fetch {
            provider: PROVIDER,
            url: base.to_owned(),
            problem: p.to_owned(),
        };
        let uri: hyper::Uri = base.parse().map_err(|_| bad("not a URL"))?;
        if uri.scheme_str() != Some("http") {
            return Err(bad("only http:// is supported (IMDS has no TLS)"));
        }
        if uri.path() != "/" && !uri.path().is_empty() {
            return Err(bad("give the base URL without a path"));
        }
        let host = uri.host().ok_or_else(|| bad("no host"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        Ok(ImdsClient {
            base: base.trim_end_matches('/').to_owned(),
            host,
            port: uri.port_u16().unwrap_or(80),
            opts,
            started: std::time::Instant::now(),
            token: Mutex::new(None),
        })
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET /latest/<path>`; `Ok(None)` on 404.
    pub async fn get(&self, path: &str) -> Result<Option<Vec<u8>>, ProviderError> {
        let url_path = format!("/latest/{path}");
        let mut refreshed = false;
        loop {
            let token = self.token().await?;
            let headers: Vec<(&str, &str)> =
                token.as_deref().map(|t| vec![(TOKEN_HEADER, t)]).unwrap_or_default();
            let (status, body) = self.with_retries(Method::GET, &url_path, &headers).await?;
            match status {
                StatusCode::OK => return Ok(Some(body)),
                StatusCode::NOT_FOUND => return Ok(None),
                // the token expired (or the service restarted): one fresh token
                StatusCode::UNAUTHORIZED if !refreshed && token.is_some() => {
                    *self.token.lock().await = None;
                    refreshed = true;
                }
                s => return Err(self.fetch_err(&url_path, format!("HTTP {s}"))),
            }
        }
    }

    async fn token(&self) -> Result<Option<String>, ProviderError> {
        let mut guard = self.token.lock().await;
        if let Some(t) = guard.as_ref() {
            return Ok(t.clone());
        }
        let path = "/latest/api/token";
        let ttl = self.opts.token_ttl.to_string();
        let (status, body) = self.with_retries(Method::PUT, path, &[(TTL_HEADER, &ttl)]).await?;
        let token = match status {
            StatusCode::OK => {
                let t = String::from_utf8(body)
                    .ok()
                    .map(|t| t.trim().to_owned())
                    .filter(|t| {
                        !t.is_empty() && t.len() <= 4096 && t.bytes().all(|b| b.is_ascii_graphic())
                    })
                    .ok_or_else(|| {
                        self.fetch_err(path, "the token is not a printable ASCII string")
                    })?;
                Some(t)
            }
            StatusCode::FORBIDDEN | StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED
                if self.opts.allow_v1 =>
            {
                tracing::warn!(status = %status, "IMDSv2 token refused, using IMDSv1 as configured");
                None
            }
            s => {
                return Err(self.fetch_err(
                    path,
                    format!(
                        "IMDSv2 token refused (HTTP {s}){}",
                        if self.opts.allow_v1 { "" } else { "; IMDSv1 is not allowed" }
                    ),
                ))
            }
        };
        *guard = Some(token.clone());
        Ok(token)
    }

    fn fetch_err(&self, path: &str, problem: impl Into<String>) -> ProviderError {
        ProviderError::Fetch {
            provider: PROVIDER,
            url: format!("{}{path}", self.base),
            problem: problem.into(),
        }
    }

    async fn with_retries(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Reply, ProviderError> {
        let attempts = self.opts.attempts.max(1);
        let mut wait = self.opts.backoff;
        let mut last = String::new();
        for attempt in 1..=attempts {
            let res = tokio::time::timeout(
                self.opts.timeout,
                self.request(method.clone(), path, headers),
            )
            .await;
            match res {
                Ok(Ok((s, b))) if !(s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS) => {
                    return Ok((s, b))
                }
                Ok(Ok((s, _))) => last = format!("HTTP {s}"),
                Ok(Err(e)) => last = e,
                Err(_) => last = format!("no answer within {:?}", self.opts.timeout),
            }
            tracing::debug!(path, attempt, problem = %last, "IMDS request failed");
            if self.started.elapsed() >= self.opts.budget {
                return Err(self.fetch_err(
                    path,
                    format!(
                        "{last} (attempt {attempt}; the {:?} budget is spent)",
                        self.opts.budget
                    ),
                ));
            }
            if attempt < attempts {
                tokio::time::sleep(wait).await;
                wait = wait.saturating_mul(2);
            }
        }
        Err(self.fetch_err(path, format!("{last} (after {attempts} attempts)")))
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Reply, String> {
        let stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake: {e}"))?;
        // the connection task ends when the sender is dropped at the end of this request
        tokio::spawn(conn);
        // an IPv6 literal (AWS's fd00:ec2::254) is bracketed in the Host header
        let host =
            if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        let authority = if self.port == 80 { host } else { format!("{host}:{}", self.port) };
        let mut req = Request::builder().method(method).uri(path).header("host", authority);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Empty::<Bytes>::new()).map_err(|e| format!("bad request: {e}"))?;
        let resp = sender.send_request(req).await.map_err(|e| format!("request failed: {e}"))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), self.opts.max_body)
            .collect()
            .await
            .map_err(|e| format!("reading the body: {e}"))?
            .to_bytes();
        Ok((status, body.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        let ok = |u| ImdsClient::new(u, ImdsOptions::default()).map(|c| (c.host.clone(), c.port));
        assert_eq!(ok("http://169.254.169.254").unwrap(), ("169.254.169.254".into(), 80));
        assert_eq!(ok("http://127.0.0.1:8080/").unwrap(), ("127.0.0.1".into(), 8080));
        assert_eq!(ok("http://[fd00:ec2::254]").unwrap(), ("fd00:ec2::254".into(), 80));
        let e = ok("https://169.254.169.254").unwrap_err().to_string();
        assert_eq!(e, "ec2 https://169.254.169.254: only http:// is supported (IMDS has no TLS)");
        assert!(ok("http://h/latest").unwrap_err().to_string().contains("without a path"));
        assert!(ok("not a url at all").is_err());
    }
}
