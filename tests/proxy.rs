//! The client reaches both PatchKit hosts through the proxy named by
//! `HTTP_PROXY`, chunks included.
//!
//! The one test lives alone in this file because it changes the process
//! environment, which no other test may read meanwhile. reqwest does not
//! bypass proxies for loopback addresses by itself (only `NO_PROXY` does),
//! so a proxy on 127.0.0.1 sees the sandbox's traffic.

mod common;

use std::sync::{Arc, Mutex};

use patchkit_autopublish::patchkit::chunk_ranges;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[test]
fn both_hosts_are_reached_through_the_http_proxy() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let proxy = runtime.block_on(Proxy::start());
    // SAFETY: this is the only test of its binary and the runtime above runs
    // on this thread, so no other thread reads the environment while it
    // changes.
    unsafe {
        for name in ["HTTP_PROXY", "http_proxy"] {
            std::env::set_var(name, &proxy.url);
        }
        for name in ["NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"] {
            std::env::remove_var(name);
        }
    }
    runtime.block_on(create_upload_and_send_a_chunk(&proxy));
}

async fn create_upload_and_send_a_chunk(proxy: &Proxy) {
    // The client reads the proxy settings when it is built, here.
    let t = common::start().await;
    let size = 64 * 1024;
    let upload = t.client.create_upload(size).await.unwrap();
    let range = chunk_ranges(size, 1024.try_into().unwrap(), 0)
        .next()
        .unwrap();
    let data = bytes::Bytes::from(vec![1u8; 1024]);
    t.client
        .upload_chunk(upload, range, size, data)
        .await
        .unwrap();

    let seen = proxy.seen.lock().unwrap().clone();
    let main = format!("POST {}/1/uploads", t.sb.main_url());
    let chunk = format!("POST {}/1/uploads/{upload}/chunk", t.sb.upload_url());
    assert_eq!(seen, [main, chunk]);
    assert_eq!(t.sb.snapshot().upload(upload.0).unwrap().received, 1024);
}

/// A plain-HTTP forward proxy: one request per connection, recorded as
/// `METHOD absolute-URI`, forwarded in origin form with `Connection: close`.
struct Proxy {
    /// `http://127.0.0.1:PORT`.
    url: String,
    /// Every request line seen, in order.
    seen: Arc<Mutex<Vec<String>>>,
}

impl Proxy {
    async fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(forward(conn, Arc::clone(&log)));
            }
        });
        Proxy { url, seen }
    }
}

/// Reads one request head from `client`, records it, and pipes the request
/// to its origin and the answer back.
async fn forward(mut client: TcpStream, seen: Arc<Mutex<Vec<String>>>) {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        let mut more = [0u8; 4096];
        match client.read(&mut more).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&more[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or("").split(' ');
    let (method, uri, version) = (
        request_line.next().unwrap_or(""),
        request_line.next().unwrap_or(""),
        request_line.next().unwrap_or(""),
    );
    let Some((authority, path)) = uri
        .strip_prefix("http://")
        .and_then(|rest| rest.split_once('/'))
    else {
        let _ = client
            .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            .await;
        return;
    };
    seen.lock()
        .unwrap()
        .push(format!("{method} http://{authority}/{path}"));

    let mut forwarded = format!("{method} /{path} {version}\r\n");
    for line in lines.filter(|l| {
        let name = l.split(':').next().unwrap_or("").to_ascii_lowercase();
        !matches!(
            name.as_str(),
            "connection" | "proxy-connection" | "keep-alive"
        )
    }) {
        forwarded.push_str(line);
        forwarded.push_str("\r\n");
    }
    forwarded.push_str("connection: close\r\n\r\n");
    let Ok(mut origin) = TcpStream::connect(authority).await else {
        return;
    };
    if origin.write_all(forwarded.as_bytes()).await.is_err()
        || origin.write_all(&buf[head_end + 4..]).await.is_err()
    {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut origin).await;
}
