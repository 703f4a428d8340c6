//! A feed client for the tests: hyper for HTTP and the `eventsource-stream` crate for the
//! SSE wire format, so the server's own code is not what reads its events.
#![allow(dead_code)]

use bytes::Bytes;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use http_body_util::{BodyExt, Empty};
use serde_json::Value;
use std::time::Duration;
use tokio::sync::mpsc;

/// One event as a client sees it.
#[derive(Debug, Clone)]
pub struct Ev {
    pub event: String,
    pub id: String,
    pub data: Value,
}

/// An open feed; dropping it closes the connection.
pub struct Client {
    rx: mpsc::UnboundedReceiver<Ev>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Opens `path` (e.g. `/v1/changes?story=X`) with an optional `Last-Event-ID`; returns the
/// status and, on 200, the client. Panics if the server cannot be reached.
pub async fn open(port: u16, path: &str, last_id: Option<&str>) -> Result<Client, (u16, String)> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("the projector listens");
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = hyper::Request::get(path)
        .header("host", "127.0.0.1")
        .header("accept", "text/event-stream");
    if let Some(id) = last_id {
        req = req.header("last-event-id", id);
    }
    let resp = send
        .send_request(req.body(Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    if status != 200 {
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        return Err((status, String::from_utf8_lossy(&body).to_string()));
    }
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut events = resp.into_body().into_data_stream().eventsource();
        while let Some(Ok(e)) = events.next().await {
            let data = serde_json::from_str(&e.data).unwrap_or(Value::Null);
            if tx
                .send(Ev {
                    event: e.event,
                    id: e.id,
                    data,
                })
                .is_err()
            {
                return;
            }
        }
    });
    Ok(Client { rx, task })
}

/// Waits (up to 30 s) until the projector at `port` serves the feed, then opens it.
pub async fn connect(port: u16, path: &str, last_id: Option<&str>) -> Client {
    for _ in 0..120 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return open(port, path, last_id).await.expect("the feed opens");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("no server on port {port}");
}

impl Client {
    /// The next event, or `None` if none comes within `secs` (or the feed ended).
    pub async fn next(&mut self, secs: u64) -> Option<Ev> {
        tokio::time::timeout(Duration::from_secs(secs), self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Events until (and including) the first that `stop` accepts; panics after `secs`.
    pub async fn until(&mut self, secs: u64, mut stop: impl FnMut(&Ev) -> bool) -> Vec<Ev> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some(e)) => {
                    let done = stop(&e);
                    out.push(e);
                    if done {
                        return out;
                    }
                }
                Ok(None) => panic!("the feed ended; got {out:#?}"),
                Err(_) => panic!("no matching event within {secs}s; got {out:#?}"),
            }
        }
    }
}

/// Orders feed positions (`<ms>-<n>`) as the server does.
pub fn pos(id: &str) -> (u64, u64) {
    let (a, b) = id.split_once('-').expect("a position");
    (a.parse().unwrap(), b.parse().unwrap())
}
