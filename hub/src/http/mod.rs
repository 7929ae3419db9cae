//! The hub's HTTPS endpoints.
//!
//! | method | path | who | what |
//! |---|---|---|---|
//! | POST | `/v1/heartbeat` | a node (client cert CN or its token) | ingest; 204 |
//! | GET | `/v1/nodes`, `/v1/nodes/{id}` | a credential, or anyone on loopback | JSON |
//! | GET | `/metrics` | same | Prometheus text |
//! | GET | `/` | same | the status page |
//!
//! Every refusal is a 4xx with `{"error": "..."}` and changes nothing.

pub mod auth;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use capstan_agent::heartbeat::wire::{self, WireError};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::engine::{Hub, IngestError};
use crate::metrics::Reject;
use auth::{Caller, Tokens};

/// The status page (self-contained HTML and JS).
const STATUS_PAGE: &str = include_str!("status.html");

/// How the server authenticates.
#[derive(Debug, Clone)]
pub struct Access {
    /// Bearer tokens.
    pub tokens: Tokens,
    /// Reads need no credential (the hub listens on loopback only).
    pub open_reads: bool,
}

type Resp = Response<Full<Bytes>>;

fn reply(status: StatusCode, ctype: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(ctype));
    r.headers_mut()
        .insert(hyper::header::CACHE_CONTROL, hyper::header::HeaderValue::from_static("no-store"));
    r
}

fn json_reply(status: StatusCode, v: &serde_json::Value) -> Resp {
    reply(status, "application/json", v.to_string() + "\n")
}

fn bad_token(hub: &Hub) -> Resp {
    refuse(hub, Reject::BadCredential, StatusCode::UNAUTHORIZED, "unknown bearer token")
}

fn no_credential(hub: &Hub) -> Resp {
    let msg = "a client certificate or a bearer token is required";
    refuse(hub, Reject::Unauthenticated, StatusCode::UNAUTHORIZED, msg)
}

fn refuse(hub: &Hub, why: Reject, status: StatusCode, msg: impl Into<String>) -> Resp {
    hub.metrics.reject(why);
    json_reply(status, &json!({ "error": msg.into() }))
}

/// Serves `listener` until the task is dropped.
pub async fn serve(
    hub: Arc<Hub>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    access: Access,
) {
    let acceptor = TlsAcceptor::from(tls);
    let access = Arc::new(access);
    loop {
        let Ok((tcp, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (hub, acceptor, access) = (hub.clone(), acceptor.clone(), access.clone());
        tokio::spawn(async move {
            let Ok(Ok(tls)) =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
            else {
                return;
            };
            let cn = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| crate::certs::common_name(c));
            let svc = hyper::service::service_fn(move |req| {
                let (hub, access, cn) = (hub.clone(), access.clone(), cn.clone());
                async move {
                    Ok::<_, std::convert::Infallible>(
                        handle(&hub, &access, cn.as_deref(), peer, req).await,
                    )
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                .await;
        });
    }
}

async fn handle(
    hub: &Hub,
    access: &Access,
    cn: Option<&str>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Resp {
    let auth = req.headers().get(hyper::header::AUTHORIZATION).map(|h| h.as_bytes());
    let caller = Caller::identify(&access.tokens, auth, cn);
    let path = req.uri().path().to_owned();
    if path == "/v1/heartbeat" {
        if req.method() != Method::POST {
            return json_reply(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({"error": "POST a heartbeat"}),
            );
        }
        return heartbeat(hub, caller, peer, req).await;
    }
    if req.method() != Method::GET {
        return json_reply(StatusCode::METHOD_NOT_ALLOWED, &json!({"error": "read-only"}));
    }
    match &caller {
        Caller::BadToken => return bad_token(hub),
        c if !c.can_read() && !access.open_reads => {
            return no_credential(hub);
        }
        _ => {}
    }
    match path.as_str() {
        "/" | "/index.html" => reply(StatusCode::OK, "text/html; charset=utf-8", STATUS_PAGE),
        "/metrics" => reply(StatusCode::OK, "text/plain; version=0.0.4", hub.metrics_text()),
        "/v1/nodes" => json_reply(StatusCode::OK, &hub.nodes_json()),
        p => match p.strip_prefix("/v1/nodes/").and_then(|id| hub.node_json(id)) {
            Some(v) => json_reply(StatusCode::OK, &v),
            None => json_reply(StatusCode::NOT_FOUND, &json!({"error": format!("no {p}")})),
        },
    }
}

async fn heartbeat(hub: &Hub, caller: Caller, peer: SocketAddr, req: Request<Incoming>) -> Resp {
    let started = std::time::Instant::now();
    let who = match caller {
        Caller::Node(id) => id,
        Caller::BadToken => return bad_token(hub),
        Caller::Reader => {
            return refuse(
                hub,
                Reject::WrongIdentity,
                StatusCode::FORBIDDEN,
                "the read token cannot send heartbeats",
            )
        }
        Caller::Anonymous => return no_credential(hub),
    };
    let body = match Limited::new(req.into_body(), wire::MAX_BYTES).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            let msg = format!("heartbeat: more than the {} bytes allowed", wire::MAX_BYTES);
            return refuse(hub, Reject::TooLarge, StatusCode::PAYLOAD_TOO_LARGE, msg);
        }
    };
    let hb = match wire::parse(&body) {
        Ok(hb) => hb,
        Err(e @ WireError::TooLarge { .. }) => {
            return refuse(hub, Reject::TooLarge, StatusCode::PAYLOAD_TOO_LARGE, e.to_string())
        }
        Err(e @ WireError::UnknownVersion(_)) => {
            return refuse(hub, Reject::UnknownVersion, StatusCode::BAD_REQUEST, e.to_string())
        }
        Err(e) => return refuse(hub, Reject::Malformed, StatusCode::BAD_REQUEST, e.to_string()),
    };
    if hb.instance_id.as_str() != who {
        let msg = format!(
            "the credential is node {who:?}, the heartbeat claims {:?}",
            hb.instance_id.as_str()
        );
        return refuse(hub, Reject::WrongIdentity, StatusCode::FORBIDDEN, msg);
    }
    let r = match hub.ingest(&hb, &peer.ip().to_string()).await {
        Ok(()) => reply(StatusCode::NO_CONTENT, "application/json", Bytes::new()),
        Err(e @ IngestError::Refused(_)) => {
            refuse(hub, Reject::Replay, StatusCode::CONFLICT, e.to_string())
        }
        Err(e) => json_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"error": capstan_agent::error::chain(&e)}),
        ),
    };
    hub.metrics.observe(started.elapsed());
    r
}
