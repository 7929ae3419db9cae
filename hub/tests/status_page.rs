//! The status page in a real headless Chromium (Debian's `chromium`), driven over the DevTools
//! protocol: it renders the nodes, updates without a reload when a node changes state, filters
//! and sorts; a screenshot is kept under target/test-artifacts/.

mod common;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use common::*;

/// A headless Chromium with a DevTools page connection; killed on drop.
struct Browser {
    child: Child,
    ws: TcpStream,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_get(port: u16, path: &str) -> String {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(&s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").unwrap();
    // Chromium keeps the connection open: read exactly Content-Length bytes.
    let mut r = BufReader::new(s);
    let mut len = 0;
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).unwrap();
    String::from_utf8(body).unwrap()
}

impl Browser {
    fn open(url: &str) -> Option<Browser> {
        if Command::new("chromium").arg("--version").output().is_err() {
            eprintln!("SKIP: no chromium (scripts/setup installs it)");
            return None;
        }
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--ignore-certificate-errors",
                "--remote-debugging-port=0",
                "--window-size=1280,600",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut port = 0u16;
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(rest) = line.strip_prefix("DevTools listening on ws://127.0.0.1:") {
                port = rest.split('/').next().unwrap().parse().unwrap();
                break;
            }
        }
        // Chromium keeps logging (D-Bus is absent here): drain it so it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        assert_ne!(port, 0, "chromium printed no DevTools address");
        let list: serde_json::Value = serde_json::from_str(&http_get(port, "/json/list")).unwrap();
        let page =
            list.as_array().unwrap().iter().find(|t| t["type"] == "page").expect("a page target");
        let path = page["webSocketDebuggerUrl"]
            .as_str()
            .unwrap()
            .split_once(&format!("{port}"))
            .unwrap()
            .1
            .to_owned();
        let mut ws = TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(
            ws,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            ws.read_exact(&mut b).unwrap();
            head.push(b[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
        Some(Browser { child, ws, next_id: 1, _profile: profile })
    }

    /// One DevTools call (WebSocket text frames, RFC 6455; a client frame is masked).
    fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        let id = self.next_id;
        self.next_id += 1;
        let msg = serde_json::json!({"id": id, "method": method, "params": params}).to_string();
        let mut frame = vec![0x81u8];
        match msg.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n < 65536 => {
                frame.push(0x80 | 126);
                frame.extend((n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend((n as u64).to_be_bytes());
            }
        }
        let mask = [0x5a, 0x17, 0xc3, 0x01];
        frame.extend(mask);
        frame.extend(msg.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.ws.write_all(&frame).unwrap();
        loop {
            let mut h = [0u8; 2];
            self.ws.read_exact(&mut h).unwrap();
            let len = match h[1] & 0x7f {
                126 => {
                    let mut l = [0u8; 2];
                    self.ws.read_exact(&mut l).unwrap();
                    u16::from_be_bytes(l) as usize
                }
                127 => {
                    let mut l = [0u8; 8];
                    self.ws.read_exact(&mut l).unwrap();
                    u64::from_be_bytes(l) as usize
                }
                n => n as usize,
            };
            let mut body = vec![0u8; len];
            self.ws.read_exact(&mut body).unwrap();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            if v["id"] == id {
                return v;
            }
        }
    }

    fn eval(&mut self, js: &str) -> serde_json::Value {
        let r = self
            .call("Runtime.evaluate", serde_json::json!({"expression": js, "returnByValue": true}));
        r["result"]["result"]["value"].clone()
    }

    fn wait_eval(&mut self, js: &str, want: serde_json::Value, what: &str) {
        let end = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let got = self.eval(js);
            if got == want {
                return;
            }
            assert!(std::time::Instant::now() < end, "{what}: {js} gave {got}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_renders_updates_live_filters_and_sorts() {
    let dir = tempfile::tempdir().unwrap();
    let certs = certs(dir.path());
    let db = format!("sqlite:{}", dir.path().join("hub.db").display());
    let hub = HubProc::start(&certs, &db, &["--interval", "200ms"]);
    let c_alive = Arc::new(AtomicBool::new(true));
    let stop = Arc::new(AtomicBool::new(false));
    let mut beaters = Vec::new();
    for id in ["web-a", "web-b", "web-c"] {
        let (url, certs, stop, alive) =
            (hub.url.clone(), certs.clone(), stop.clone(), c_alive.clone());
        beaters.push(tokio::spawn(async move {
            let mut c = node_client(&url, &certs, id);
            let mut seq = 0;
            while !stop.load(Ordering::Relaxed) && (id != "web-c" || alive.load(Ordering::Relaxed))
            {
                seq += 1;
                let _ = c
                    .request(
                        hyper::Method::POST,
                        "/v1/heartbeat",
                        beat(id, seq, id != "web-b").to_json(),
                    )
                    .await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }
    let url = format!("{}/", hub.url);
    let alive = c_alive.clone();
    let shot = tokio::task::spawn_blocking(move || {
        let mut b = Browser::open(&url)?;
        b.wait_eval("document.querySelectorAll('#nodes tr').length", 3.into(), "three rows");
        b.wait_eval("document.querySelector('tr[data-id=\"web-b\"]').dataset.state", "degraded".into(), "web-b degraded");
        b.wait_eval("document.querySelector('tr[data-id=\"web-c\"]').dataset.state", "healthy".into(), "web-c healthy");
        let origin = b.eval("performance.timeOrigin");
        alive.store(false, Ordering::Relaxed);
        b.wait_eval("document.querySelector('tr[data-id=\"web-c\"]').dataset.state", "unhealthy".into(), "web-c unhealthy, live");
        assert_eq!(b.eval("performance.timeOrigin"), origin, "the page reloaded");
        assert_eq!(b.eval("document.getElementById('count-unhealthy').textContent"), "unhealthy: 1");
        // Sorted by state by default: the worst first.
        assert_eq!(b.eval("[...document.querySelectorAll('#nodes tr')].map(r => r.dataset.id).join()"), "web-c,web-b,web-a");
        b.eval("document.querySelector('th[data-key=\"name\"]').click()");
        assert_eq!(b.eval("[...document.querySelectorAll('#nodes tr')].map(r => r.dataset.id).join()"), "web-a,web-b,web-c");
        b.eval("document.querySelector('th[data-key=\"name\"]').click()");
        assert_eq!(b.eval("[...document.querySelectorAll('#nodes tr')].map(r => r.dataset.id).join()"), "web-c,web-b,web-a");
        b.eval("const f = document.getElementById('filter'); f.value = 'degraded'; f.dispatchEvent(new Event('input'))");
        assert_eq!(b.eval("[...document.querySelectorAll('#nodes tr')].map(r => r.dataset.id).join()"), "web-b");
        b.eval("const g = document.getElementById('filter'); g.value = ''; g.dispatchEvent(new Event('input'))");
        let png = b.call("Page.captureScreenshot", serde_json::json!({"format": "png"}));
        Some(base64::engine::general_purpose::STANDARD.decode(png["result"]["data"].as_str().unwrap()).unwrap())
    })
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    for t in beaters {
        t.await.unwrap();
    }
    let Some(png) = shot else { return };
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("hub-status-page.png"), &png).unwrap();
}
