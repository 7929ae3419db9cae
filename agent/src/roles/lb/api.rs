//! The backend API: HTTPS (rustls), JSON, bearer token or client certificate.
//!
//! | method | path | body | effect |
//! |---|---|---|---|
//! | GET | `/v1/backends` | | the set, with HAProxy's view of each backend |
//! | PUT | `/v1/backends` | `{"backends": ["IP:port", …]}` | replace the set |
//! | POST | `/v1/backends` | `{"address": "IP:port"}` | add one |
//! | DELETE | `/v1/backends/IP:port` | | remove one |
//! | POST | `/v1/backends/IP:port/drain` | | drain one |
//!
//! Every request is authenticated before its body is read. A change is validated completely
//! before anything is touched; then it is applied through the runtime socket, persisted, and
//! the config file is rewritten in the background (no reload). Errors are 4xx/5xx with
//! `{"error": "...", "field": "..."}`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::controller::{ApplyError, Controller};
use super::settings::{ApiToken, Backend, BackendList};
use crate::error::chain;

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// Who may call the API.
#[derive(Debug, Clone)]
pub struct Auth {
    /// Accepted bearer token.
    pub token: Option<ApiToken>,
    /// Whether a client certificate verified against the client CA is enough.
    pub client_cert: bool,
}

/// Compares in time that depends on the lengths only, not on where the bytes differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

type Resp = Response<Full<Bytes>>;

fn reply(status: StatusCode, body: serde_json::Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string() + "\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, field: Option<&str>, msg: impl Into<String>) -> Resp {
    let mut body = json!({ "error": msg.into() });
    if let Some(f) = field {
        body["field"] = json!(f);
    }
    reply(status, body)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplaceBody {
    backends: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddBody {
    address: String,
}

fn parse_backend(field: &str, s: &str) -> Result<Backend, Box<Resp>> {
    s.parse().map_err(|e: super::settings::ValueError| {
        Box::new(error(StatusCode::BAD_REQUEST, Some(field), format!("{field}: {e}")))
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

async fn change_response(r: Result<(), ApplyError>, ctl: &Controller, ok: StatusCode) -> Resp {
    match r {
        Ok(()) => reply(ok, ctl.listing().await),
        Err(ApplyError::Change(e)) => {
            let status = match e {
                super::state::ChangeError::Duplicate(_) => StatusCode::CONFLICT,
                super::state::ChangeError::Unknown(_) => StatusCode::NOT_FOUND,
                _ => StatusCode::UNPROCESSABLE_ENTITY,
            };
            error(status, Some("address"), e.to_string())
        }
        Err(e @ ApplyError::Runtime(_)) => {
            tracing::error!(error = %chain(&e), "backend change failed in HAProxy; rolled back");
            error(StatusCode::SERVICE_UNAVAILABLE, None, chain(&e))
        }
        Err(e @ ApplyError::Persist(_)) => {
            tracing::error!(error = %chain(&e), "backend change not persisted; rolled back");
            error(StatusCode::INTERNAL_SERVER_ERROR, None, chain(&e))
        }
    }
}

async fn read_body(body: Incoming) -> Result<Bytes, Box<Resp>> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            Err(Box::new(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                None,
                format!("request body exceeds {MAX_BODY} bytes"),
            )))
        }
        Err(e) => Err(Box::new(error(StatusCode::BAD_REQUEST, None, format!("reading body: {e}")))),
    }
}

/// Reads the (bounded) body and parses it as JSON; the error is the response to send.
async fn json_body<T: serde::de::DeserializeOwned>(body: Incoming) -> Result<T, Box<Resp>> {
    let bytes = read_body(body).await?;
    serde_json::from_slice(&bytes).map_err(|e| {
        // serde's message names the unknown or missing field.
        Box::new(error(StatusCode::BAD_REQUEST, None, format!("invalid JSON body: {e}")))
    })
}

async fn handle(
    req: Request<Incoming>,
    ctl: Arc<Controller>,
    auth: Arc<Auth>,
    has_cert: bool,
) -> Resp {
    use tracing::Instrument as _;
    let span = tracing::info_span!("api", method = %req.method(), path = %req.uri().path());
    handle_in_span(req, ctl, auth, has_cert).instrument(span).await
}

/// Refuses a request without a valid bearer token or (with mutual TLS on) a client certificate.
fn authorize<B>(req: &Request<B>, auth: &Auth, has_cert: bool) -> Result<(), Box<Resp>> {
    let token_ok = match (&auth.token, req.headers().get(hyper::header::AUTHORIZATION)) {
        (Some(t), Some(h)) => h
            .as_bytes()
            .strip_prefix(b"Bearer ")
            .is_some_and(|given| constant_time_eq(given, t.expose())),
        _ => false,
    };
    if token_ok || (auth.client_cert && has_cert) {
        return Ok(());
    }
    let mut r =
        error(StatusCode::UNAUTHORIZED, Some("authorization"), "missing or invalid credentials");
    r.headers_mut()
        .insert(hyper::header::WWW_AUTHENTICATE, hyper::header::HeaderValue::from_static("Bearer"));
    tracing::warn!("request refused: bad credentials");
    Err(Box::new(r))
}

/// Refuses a declared body over [`MAX_BODY`] before reading it, and a malformed length.
fn check_length<B>(req: &Request<B>) -> Result<(), Box<Resp>> {
    let Some(len) = req.headers().get(hyper::header::CONTENT_LENGTH) else { return Ok(()) };
    match len.to_str().ok().and_then(|v| v.parse::<u64>().ok()) {
        Some(n) if n > MAX_BODY as u64 => Err(Box::new(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            None,
            format!("request body exceeds {MAX_BODY} bytes"),
        ))),
        Some(_) => Ok(()),
        None => Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            Some("content-length"),
            "invalid Content-Length",
        ))),
    }
}

/// `PUT /v1/backends`: replaces the whole set.
async fn replace_all(body: Incoming, ctl: &Controller) -> Result<Resp, Box<Resp>> {
    let parsed: ReplaceBody = json_body(body).await?;
    let list = parsed
        .backends
        .iter()
        .enumerate()
        .map(|(i, s)| parse_backend(&format!("backends[{i}]"), s))
        .collect::<Result<Vec<_>, _>>()?;
    let list = BackendList::new(list).map_err(|e| {
        Box::new(error(StatusCode::BAD_REQUEST, Some("backends"), format!("backends: {e}")))
    })?;
    Ok(change_response(ctl.replace(list).await, ctl, StatusCode::OK).await)
}

/// `POST /v1/backends`: adds one backend.
async fn add_one(body: Incoming, ctl: &Controller) -> Result<Resp, Box<Resp>> {
    let parsed: AddBody = json_body(body).await?;
    let b = parse_backend("address", &parsed.address)?;
    Ok(change_response(ctl.add(b).await, ctl, StatusCode::CREATED).await)
}

/// `DELETE /v1/backends/ADDR` and `POST /v1/backends/ADDR/drain`; `rest` is what follows
/// `/v1/backends/`.
async fn on_backend(
    rest: &str,
    method: &Method,
    path: &str,
    ctl: &Controller,
) -> Result<Resp, Box<Resp>> {
    let (addr, action) = match rest.strip_suffix("/drain") {
        Some(a) => (a, "drain"),
        None => (rest, ""),
    };
    let addr = percent_decode(addr).ok_or_else(|| {
        Box::new(error(StatusCode::BAD_REQUEST, Some("address"), "address: bad percent-encoding"))
    })?;
    let b = parse_backend("address", &addr)?;
    Ok(match (action, method) {
        ("", &Method::DELETE) => change_response(ctl.remove(b).await, ctl, StatusCode::OK).await,
        ("drain", &Method::POST) => change_response(ctl.drain(b).await, ctl, StatusCode::OK).await,
        _ => not_allowed(method, path),
    })
}

fn not_allowed(method: &Method, path: &str) -> Resp {
    error(StatusCode::METHOD_NOT_ALLOWED, None, format!("{method} is not allowed on {path}"))
}

/// Routes an authenticated request. `Err` is a refusal sent without the request log line.
async fn route(req: Request<Incoming>, ctl: &Controller) -> Result<Resp, Box<Resp>> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    Ok(match (path.strip_prefix("/v1/backends"), &method) {
        (Some(""), &Method::GET) => reply(StatusCode::OK, ctl.listing().await),
        (Some(""), &Method::PUT) => replace_all(req.into_body(), ctl).await?,
        (Some(""), &Method::POST) => add_one(req.into_body(), ctl).await?,
        (Some(r), m) if r.starts_with('/') => on_backend(&r[1..], m, &path, ctl).await?,
        (Some(""), _) => not_allowed(&method, &path),
        _ => error(StatusCode::NOT_FOUND, None, format!("no such resource {path}")),
    })
}

async fn handle_in_span(
    req: Request<Incoming>,
    ctl: Arc<Controller>,
    auth: Arc<Auth>,
    has_cert: bool,
) -> Resp {
    // Authenticate before reading anything else.
    let checked = authorize(&req, &auth, has_cert).and_then(|()| check_length(&req));
    if let Err(r) = checked {
        return *r;
    }
    let started = Instant::now();
    let resp = match route(req, &ctl).await {
        Ok(r) => r,
        Err(r) => return *r,
    };
    tracing::info!(
        status = resp.status().as_u16(),
        took_ms = started.elapsed().as_millis() as u64,
        "request"
    );
    resp
}

/// Serves the API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    ctl: Arc<Controller>,
    auth: Auth,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let auth = Arc::new(auth);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            _ = &mut shutdown => return,
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let ctl = ctl.clone();
        let auth = auth.clone();
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(t)) => t,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
            let has_cert = tls.get_ref().1.peer_certificates().is_some_and(|c| !c.is_empty());
            let svc = hyper::service::service_fn(move |req| {
                let ctl = ctl.clone();
                let auth = auth.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(req, ctl, auth, has_cert).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .max_buf_size(MAX_BODY.max(8192))
                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}
