//! The backend API against real HAProxy: 50 changes under continuous load with zero failed
//! requests; bad input refused with a 4xx and a message, changing nothing; mutual TLS.

mod lb;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use lb::*;
use serde_json::json;

fn listing(lab: &Lab, h: u8) -> Vec<(String, String)> {
    let (st, v) = lab.api(h, "GET", "/v1/backends", "", Some(TOKEN)).expect("GET");
    assert_eq!(st, 200, "{v}");
    v["backends"]
        .as_array()
        .expect("backends array")
        .iter()
        .map(|b| {
            (b["address"].as_str().unwrap().to_owned(), b["state"].as_str().unwrap().to_owned())
        })
        .collect()
}

#[test]
fn fifty_changes_under_load_fail_no_request() -> anyhow::Result<()> {
    let mut lab = Lab::new("c")?;
    let pool: Vec<String> = BACKENDS
        .iter()
        .flat_map(|h| BACKEND_PORTS.iter().map(move |p| format!("{}:{p}", ip(*h))))
        .collect();
    let initial = pool[..3].join(",");
    let s1 = lab.lb_settings(LB1, 150, &initial, ("https:/readyz", 500, 2, 2));
    lab.start_lb(LB1, s1)?;
    lab.wait_single_holder(Duration::from_secs(10))?;

    let load = Load::start(&lab, 4, 500_000);
    std::thread::sleep(Duration::from_millis(500));
    // The model: address -> draining.
    let mut model: Vec<(String, bool)> = pool[..3].iter().map(|a| (a.clone(), false)).collect();
    let mut changes = 0;
    let mut i = 0usize;
    let mut latencies = Vec::new();
    while changes < 50 {
        i += 1;
        let ready = model.iter().filter(|(_, d)| !d).count();
        let absent: Vec<&String> =
            pool.iter().filter(|a| !model.iter().any(|(m, _)| m == *a)).collect();
        let t = Instant::now();
        let (st, body) = match i % 4 {
            // Add one that is not in the set.
            0 | 2 if !absent.is_empty() => {
                let a = absent[i % absent.len()].clone();
                model.push((a.clone(), false));
                lab.api(
                    LB1,
                    "POST",
                    "/v1/backends",
                    &json!({ "address": a }).to_string(),
                    Some(TOKEN),
                )?
            }
            // Drain one (keeping at least two in rotation).
            1 if ready > 2 => {
                let idx = model.iter().position(|(_, d)| !d).unwrap();
                model[idx].1 = true;
                let a = model[idx].0.clone();
                lab.api(LB1, "POST", &format!("/v1/backends/{a}/drain"), "", Some(TOKEN))?
            }
            // Remove a drained one, or any if none drains (keeping two).
            3 | 1 if model.len() > 2 => {
                let idx = model.iter().position(|(_, d)| *d).unwrap_or(0);
                if !model[idx].1 && ready <= 2 {
                    continue;
                }
                let (a, _) = model.remove(idx);
                lab.api(LB1, "DELETE", &format!("/v1/backends/{a}"), "", Some(TOKEN))?
            }
            // Replace with a window of three from the pool.
            _ => {
                let w: Vec<String> = (0..3).map(|k| pool[(i + k) % pool.len()].clone()).collect();
                model = w.iter().map(|a| (a.clone(), false)).collect();
                lab.api(
                    LB1,
                    "PUT",
                    "/v1/backends",
                    &json!({ "backends": w }).to_string(),
                    Some(TOKEN),
                )?
            }
        };
        latencies.push(t.elapsed());
        assert!(st == 200 || st == 201, "change {changes} refused: {st} {body}");
        changes += 1;
        let mut got = listing(&lab, LB1);
        let mut want: Vec<(String, String)> = model
            .iter()
            .map(|(a, d)| (a.clone(), if *d { "drain" } else { "ready" }.to_string()))
            .collect();
        got.sort();
        want.sort();
        assert_eq!(got, want, "API listing differs from the model after change {changes}");
        std::thread::sleep(Duration::from_millis(40));
    }
    std::thread::sleep(Duration::from_millis(300));
    let (ok, failed) = (load.ok.load(Ordering::Relaxed), load.failed.load(Ordering::Relaxed));
    let errors = load.errors.lock().unwrap().clone();
    let seen = load.seen.lock().unwrap().clone();
    load.finish(&lab);
    latencies.sort();
    eprintln!(
        "50 changes; API round trip p50 {:?} max {:?}; {ok} requests ok, {failed} failed; per backend {seen:?}",
        latencies[latencies.len() / 2],
        latencies.last().unwrap()
    );
    assert_eq!(failed, 0, "failed requests during changes: {errors:?}");
    assert!(ok >= 200, "too little load to mean anything: {ok}");
    assert!(seen.len() >= 5, "changes should have rotated traffic over the pool: {seen:?}");

    // The persisted set and haproxy.cfg follow the model.
    let node = lab.lb(LB1);
    let persisted: serde_json::Value =
        serde_json::from_slice(&std::fs::read(node.paths.backends_file())?)?;
    let mut p: Vec<String> = persisted["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["address"].as_str().unwrap().to_owned())
        .collect();
    let mut m: Vec<String> = model.iter().map(|(a, _)| a.clone()).collect();
    p.sort();
    m.sort();
    assert_eq!(p, m);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let cfg = std::fs::read_to_string(&node.paths.haproxy_cfg)?;
        if m.iter().all(|a| cfg.contains(&format!(" {a}"))) {
            break;
        }
        assert!(Instant::now() < deadline, "haproxy.cfg does not follow the set:\n{cfg}");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

#[test]
fn bad_input_gets_4xx_and_changes_nothing() -> anyhow::Result<()> {
    let mut lab = Lab::new("b")?;
    let initial = format!("{}:6443,{}:6443", ip(BACKENDS[0]), ip(BACKENDS[1]));
    let s1 = lab.lb_settings(LB1, 150, &initial, ("https:/readyz", 500, 2, 2));
    lab.start_lb(LB1, s1)?;
    let node = lab.lb(LB1);
    let cfg_before = std::fs::read_to_string(&node.paths.haproxy_cfg)?;
    let set_before = std::fs::read_to_string(node.paths.backends_file())?;
    let list_before = listing(&lab, LB1);
    let dup = format!("{}:6443", ip(BACKENDS[0]));
    let unknown = format!("{}:7000", ip(BACKENDS[2]));
    let huge = format!("{{\"backends\":[{}]}}", vec!["\"10.77.0.21:6443\""; 8000].join(","));
    // (method, path, body, token, expected status, expected error field)
    type Case<'a> = (&'a str, String, String, Option<&'a str>, u16, Option<&'a str>);
    let cases: Vec<Case> = vec![
        (
            "POST",
            "/v1/backends".into(),
            json!({"address": "10.77.0.21"}).to_string(),
            Some(TOKEN),
            400,
            Some("address"),
        ),
        (
            "POST",
            "/v1/backends".into(),
            json!({"address": "kube-1.example:6443"}).to_string(),
            Some(TOKEN),
            400,
            Some("address"),
        ),
        (
            "POST",
            "/v1/backends".into(),
            json!({"address": "10.77.0.21:0"}).to_string(),
            Some(TOKEN),
            400,
            Some("address"),
        ),
        (
            "POST",
            "/v1/backends".into(),
            json!({"address": "10.77.0.21:6443\nset server x"}).to_string(),
            Some(TOKEN),
            400,
            Some("address"),
        ),
        (
            "POST",
            "/v1/backends".into(),
            json!({"address": dup}).to_string(),
            Some(TOKEN),
            409,
            Some("address"),
        ),
        ("POST", "/v1/backends".into(), json!({"addr": dup}).to_string(), Some(TOKEN), 400, None),
        ("POST", "/v1/backends".into(), "{not json".into(), Some(TOKEN), 400, None),
        (
            "DELETE",
            format!("/v1/backends/{unknown}"),
            String::new(),
            Some(TOKEN),
            404,
            Some("address"),
        ),
        (
            "POST",
            format!("/v1/backends/{unknown}/drain"),
            String::new(),
            Some(TOKEN),
            404,
            Some("address"),
        ),
        (
            "DELETE",
            "/v1/backends/10.77.0.21%3A".into(),
            String::new(),
            Some(TOKEN),
            400,
            Some("address"),
        ),
        (
            "PUT",
            "/v1/backends".into(),
            json!({"backends": [dup, dup]}).to_string(),
            Some(TOKEN),
            400,
            Some("backends"),
        ),
        (
            "PUT",
            "/v1/backends".into(),
            json!({"backends": [dup, "10.77.0.22:x"]}).to_string(),
            Some(TOKEN),
            400,
            Some("backends[1]"),
        ),
        (
            "PUT",
            "/v1/backends".into(),
            json!({"backends": "10.77.0.21:6443"}).to_string(),
            Some(TOKEN),
            400,
            None,
        ),
        (
            "PUT",
            "/v1/backends".into(),
            json!({"backends": [], "extra": 1}).to_string(),
            Some(TOKEN),
            400,
            None,
        ),
        ("PUT", "/v1/backends".into(), huge, Some(TOKEN), 413, None),
        ("PATCH", "/v1/backends".into(), String::new(), Some(TOKEN), 405, None),
        ("GET", "/v1/nothing".into(), String::new(), Some(TOKEN), 404, None),
        (
            "POST",
            "/v1/backends".into(),
            json!({"address": "10.77.0.23:6443"}).to_string(),
            None,
            401,
            Some("authorization"),
        ),
        (
            "POST",
            "/v1/backends".into(),
            json!({"address": "10.77.0.23:6443"}).to_string(),
            Some("test-token-0123456789abcdeX"),
            401,
            Some("authorization"),
        ),
        (
            "POST",
            "/v1/backends".into(),
            json!({"address": "10.77.0.23:6443"}).to_string(),
            Some("short"),
            401,
            Some("authorization"),
        ),
        ("GET", "/v1/backends".into(), String::new(), None, 401, Some("authorization")),
    ];
    for (method, path, body, token, want, field) in &cases {
        let (st, v) = lab.api(LB1, method, path, body, *token)?;
        assert_eq!(st, *want, "{method} {path} {:.80}: got {st} {v}", body);
        let msg = v["error"].as_str().unwrap_or_default();
        assert!(!msg.is_empty(), "{method} {path}: no error message in {v}");
        if let Some(f) = field {
            assert_eq!(v["field"], *f, "{method} {path}: {v}");
        }
        eprintln!("{method} {path} -> {st} {msg}");
    }
    // A body larger than the limit without a Content-Length (chunked) is refused too.
    let cfg = lab.client_tls(LB1);
    let auth = format!("Bearer {TOKEN}");
    let mut chunked = Vec::new();
    for _ in 0..40 {
        chunked.extend_from_slice(format!("{:x}\r\n{}\r\n", 2048, "a".repeat(2048)).as_bytes());
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    // https_request always sends Content-Length; send a raw chunked request instead.
    let (st, _) = lab.client().run(Duration::from_secs(15), {
        let addr = std::net::SocketAddr::new(std::net::IpAddr::V4(ip(LB1)), API_PORT);
        async move {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
            let mut tls = tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await?;
            let head = format!(
                "PUT /v1/backends HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            );
            tls.write_all(head.as_bytes()).await?;
            let _ = tls.write_all(&chunked).await;
            let mut buf = Vec::new();
            let _ = tls.read_to_end(&mut buf).await;
            let text = String::from_utf8_lossy(&buf).into_owned();
            let st: u16 = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
            anyhow::Ok((st, text))
        }
    })??;
    assert_eq!(st, 413, "chunked oversized body");

    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        std::fs::read_to_string(&node.paths.haproxy_cfg)?,
        cfg_before,
        "haproxy.cfg changed"
    );
    assert_eq!(
        std::fs::read_to_string(node.paths.backends_file())?,
        set_before,
        "persisted set changed"
    );
    assert_eq!(listing(&lab, LB1), list_before, "HAProxy's backends changed");

    // Control: a valid change does change all three.
    let (st, v) = lab.api(
        LB1,
        "POST",
        "/v1/backends",
        &json!({"address": "10.77.0.23:6443"}).to_string(),
        Some(TOKEN),
    )?;
    assert_eq!(st, 201, "{v}");
    assert_ne!(std::fs::read_to_string(node.paths.backends_file())?, set_before);
    assert_eq!(listing(&lab, LB1).len(), 3);
    Ok(())
}

#[test]
fn client_certificate_authenticates_without_token() -> anyhow::Result<()> {
    let mut lab = Lab::new("m")?;
    let ca = lab.dir.path().join("client-ca.pem");
    std::fs::write(&ca, &lab.pki.ca_pem)?;
    let mut s1 =
        lab.lb_settings(LB1, 150, &format!("{}:6443", ip(BACKENDS[0])), ("tcp", 500, 2, 2));
    s1.api.client_ca = Some(ca);
    lab.start_lb(LB1, s1)?;
    let api_cert = std::fs::read(lab.lb(LB1).paths.state_dir.join("api-cert.pem"))?;
    let roots: Vec<_> =
        rustls_pemfile::certs(&mut api_cert.as_slice()).collect::<Result<_, _>>()?;
    let with_cert = lab.pki.client_config(&roots, true);
    let without = lab.pki.client_config(&roots, false);
    let (st, v) = lab.api_raw(LB1, with_cert.clone(), "GET", "/v1/backends", &[], vec![])?;
    assert_eq!(st, 200, "{v}");
    let body = json!({"address": "10.77.0.22:6443"}).to_string().into_bytes();
    let (st, v) = lab.api_raw(LB1, with_cert, "POST", "/v1/backends", &[], body)?;
    assert_eq!(st, 201, "{v}");
    let (st, v) = lab.api_raw(LB1, without, "GET", "/v1/backends", &[], vec![])?;
    assert_eq!(st, 401, "{v}");
    Ok(())
}

#[test]
fn persisted_set_is_restored_at_start_and_wins_over_config() -> anyhow::Result<()> {
    let mut lab = Lab::new("p")?;
    let configured = format!("{}:6443", ip(BACKENDS[0]));
    let s1 = lab.lb_settings(LB1, 150, &configured, ("https:/readyz", 500, 2, 2));
    lab.start_lb(LB1, s1.clone())?;
    let b2 = format!("{}:6443", ip(BACKENDS[1]));
    let b3 = format!("{}:6444", ip(BACKENDS[2]));
    for (m, p, body) in [
        ("POST", "/v1/backends".to_string(), json!({ "address": b2 }).to_string()),
        ("POST", "/v1/backends".to_string(), json!({ "address": b3 }).to_string()),
        ("POST", format!("/v1/backends/{b2}/drain"), String::new()),
        ("DELETE", format!("/v1/backends/{configured}"), String::new()),
    ] {
        let (st, v) = lab.api(LB1, m, &p, &body, Some(TOKEN))?;
        assert!(st == 200 || st == 201, "{m} {p}: {st} {v}");
    }
    let mut before = listing(&lab, LB1);
    before.sort();
    assert_eq!(before, vec![(b2.clone(), "drain".into()), (b3.clone(), "ready".into())]);

    // Restart the role (HAProxy and keepalived stop with it) with the same settings: the
    // persisted set, not lb.backends, is what comes back — in the API and in HAProxy.
    lab.stop_lb(LB1);
    lab.start_lb(LB1, s1.clone())?;
    lab.wait_single_holder(Duration::from_secs(10))?;
    let mut after = listing(&lab, LB1);
    after.sort();
    assert_eq!(after, before, "restored set differs");
    let (seen, errs) = sample(&lab, 20);
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(
        seen.keys().cloned().collect::<Vec<_>>(),
        vec![b3.clone()],
        "only the ready backend serves: {seen:?}"
    );

    // An unreadable persisted file is moved aside and the configured backends are served.
    lab.stop_lb(LB1);
    let file = lab.dir.path().join(format!("lb{LB1}")).join("state/backends.json");
    std::fs::write(&file, "{\"version\":1,\"backends\":[{\"address\":\"garbage\"")?;
    lab.start_lb(LB1, s1)?;
    assert_eq!(listing(&lab, LB1), vec![(configured.clone(), "ready".to_string())]);
    assert!(file.with_extension("json.corrupt").exists(), "corrupt file not kept aside");
    Ok(())
}
