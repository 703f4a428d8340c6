//! The live story viewer (`/ui/`) in headless Chromium (Debian's `chromium`), driven over its
//! DevTools protocol: the page follows the change feed and shows a new phase and decision
//! without a reload. `dev/check-viewer` installs Chromium and runs this with `--ignored`.

mod common;

use async_nats::jetstream;
use common::*;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::io::BufRead;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// Headless Chromium with its DevTools endpoint; killed on drop.
struct Browser {
    child: std::process::Child,
    port: u16,
    _profile: PathGuard,
}

struct PathGuard(std::path::PathBuf);

impl Drop for PathGuard {
    fn drop(&mut self) {
        // A leftover profile in the build's scratch space harms nothing.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Already gone is fine: the test is over either way.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chromium() -> String {
    std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".into())
}

impl Browser {
    fn start() -> Browser {
        let profile = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("chromium-{}", tag()));
        let mut child = std::process::Command::new(chromium())
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--window-size=1280,1000",
                "--remote-debugging-port=0",
                "about:blank",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("chromium starts (dev/check-viewer installs Debian's chromium)");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(rest) = line.split("DevTools listening on ws://127.0.0.1:").nth(1) {
                    let port: u16 = rest.split('/').next().unwrap().parse().unwrap();
                    // The receiver may be gone after the first line; later ones do not matter.
                    let _ = tx.send(port);
                }
            }
        });
        let port = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("chromium prints its DevTools address");
        Browser {
            child,
            port,
            _profile: PathGuard(profile),
        }
    }

    /// The first page target's DevTools websocket.
    fn page_ws(&self) -> String {
        use std::io::{Read, Write};
        // HTTP/1.1: Chromium closes an HTTP/1.0 request without answering. It keeps the
        // connection open, so the body is read by its Content-Length.
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            s,
            "GET /json/list HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
            self.port
        )
        .unwrap();
        let mut raw = Vec::new();
        let mut buf = [0u8; 8192];
        let body = loop {
            let n = s.read(&mut buf).unwrap();
            assert!(
                n > 0,
                "DevTools closed /json/list early: {}",
                String::from_utf8_lossy(&raw)
            );
            raw.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&raw).to_string();
            let Some((head, body)) = text.split_once("\r\n\r\n") else {
                continue;
            };
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .expect("DevTools /json/list has a Content-Length");
            if body.len() >= len {
                break body[..len].to_string();
            }
        };
        let targets: Vec<Value> = serde_json::from_str(&body).unwrap();
        targets
            .iter()
            .find(|t| t["type"] == "page")
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .expect("a page target")
            .to_string()
    }
}

/// A DevTools protocol session on one page.
struct Page {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next: u64,
}

impl Page {
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws.send(Message::text(msg)).await.unwrap();
        loop {
            let m = self.ws.next().await.expect("DevTools answers").unwrap();
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Evaluates an expression in the page and returns its value.
    async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true}),
            )
            .await;
        r["result"]["value"].clone()
    }

    /// Polls `expr` until it is true; returns how long it took, or panics after `secs`.
    async fn wait_true(&mut self, secs: u64, expr: &str) -> Duration {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(secs) {
            if self.eval(expr).await == Value::Bool(true) {
                return t0.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let text = self.eval("document.body.innerText").await;
        panic!("{expr} still false after {secs}s; the page shows:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Debian's chromium; dev/check-viewer installs it and runs this"]
async fn the_story_page_follows_the_feed_without_a_reload() {
    let t = TestConfig::with(|s| {
        s.replace("watermark_interval = \"5s\"", "watermark_interval = \"1s\"")
    });
    assert!(t.projector(&["streams", "ensure"]).status.success());
    let js = jetstream::new(nats(&t.cfg).await);
    let run = t.spawn_run_follow_live(&[]);
    let port = run.metrics_port;
    let id = format!("{}-UI", t.upper);
    t.publish(
        &js,
        &[
            ("planning.story.created", &format!(r#"{{"story_id":"{id}","title":"Live viewer","created_by":"po","timestamp":"2026-02-01T10:00:00Z"}}"#)),
            ("planning.story.transitioned", &format!(r#"{{"story_id":"{id}","from_phase":"DRAFT","to_phase":"DESIGN","transitioned_by":"po","timestamp":"2026-02-01T10:01:00Z"}}"#)),
            ("planning.plan.created", &format!(r#"{{"story_id":"{id}","plan_id":"plan-ui","version":1,"summary":"Serve the feed","timestamp":"2026-02-01T10:02:00Z"}}"#)),
            ("planning.plan.approved", &format!(r#"{{"story_id":"{id}","plan_id":"plan-ui","approved_by":"po","timestamp":"2026-02-01T10:03:00Z"}}"#)),
            ("planning.task.created", &format!(r#"{{"story_id":"{id}","task_id":"T-UI","title":"write the page","assigned_role":"DEV","timestamp":"2026-02-01T10:04:00Z"}}"#)),
        ],
    )
    .await;
    wait_all_acked(&js, &t, "projector-graph-p0").await;

    let browser = Browser::start();
    let (ws, _) = tokio_tungstenite::connect_async(browser.page_ws())
        .await
        .unwrap();
    let mut page = Page { ws, next: 0 };
    page.call("Page.enable", json!({})).await;
    page.call(
        "Page.navigate",
        json!({"url": format!("http://127.0.0.1:{port}/ui/")}),
    )
    .await;
    // The list shows the story; the story page opens from it.
    page.wait_true(
        20,
        &format!("!!document.querySelector('tr[data-story=\"{id}\"]')"),
    )
    .await;
    page.eval(&format!("location.hash = '#/story/{id}'")).await;
    page.wait_true(
        20,
        "document.getElementById('phase')?.textContent === 'DESIGN'",
    )
    .await;
    page.wait_true(
        20,
        "document.getElementById('status').textContent.startsWith('live')",
    )
    .await;
    // Gone if the page reloads.
    page.eval("window.__noReload = 1").await;

    t.publish(
        &js,
        &[
            ("planning.story.transitioned", &format!(r#"{{"story_id":"{id}","from_phase":"DESIGN","to_phase":"BUILD","transitioned_by":"po","timestamp":"2026-02-01T10:06:00Z"}}"#)),
            ("orchestration.deliberation.completed", &format!(r#"{{"story_id":"{id}","task_id":"T-UI","decisions":[{{"id":"D-UI","title":"Server-Sent Events, not websockets","rationale":"one direction, resumable","decided_by":"architect"}}],"timestamp":"2026-02-01T10:07:00Z"}}"#)),
        ],
    )
    .await;
    wait_all_acked(&js, &t, "projector-graph-p0").await;
    // Committed now (acks follow the commit): the page must show it within 2 s, unreloaded.
    let took = page
        .wait_true(
            2,
            "document.getElementById('phase')?.textContent === 'BUILD' && document.getElementById('decisions').innerText.includes('Server-Sent Events')",
        )
        .await;
    assert_eq!(
        page.eval("window.__noReload").await,
        json!(1),
        "the page reloaded"
    );
    println!("the page showed the change {took:?} after its commit was acked");

    let shot = page
        .call("Page.captureScreenshot", json!({"format": "png"}))
        .await;
    use base64::Engine;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().unwrap())
        .unwrap();
    let out = std::env::var("PROJECTOR_VIEWER_SCREENSHOT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("viewer-story.png")
        });
    std::fs::write(&out, png).unwrap();
    println!("screenshot: {}", out.display());
    drop(page);
    drop(browser);
    assert_eq!(run.terminate(), Some(0));
}
