//! Smoke tests of the HTTP behaviour against tiny in-process servers: a
//! chunk receiver (axum) that checks what PatchKit checks, and raw sockets
//! for stalls and cut-off responses. The full contract is tested against
//! the sandbox in `tests/`.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{Multipart, Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::patchkit::{ApiKey, ClientOptions, RetryPolicy};

const KEY: &str = "test-key-123";

/// A chunk receiver with scripted failures.
#[derive(Default)]
struct Receiver {
    /// The bytes received, by offset.
    data: Mutex<Vec<u8>>,
    /// `Content-Range` of every request, failed ones included.
    ranges: Mutex<Vec<String>>,
    /// Statuses (and `Retry-After`) to answer to the next requests.
    faults: Mutex<VecDeque<(u16, Option<&'static str>)>>,
}

async fn receive_chunk(
    State(rx): State<Arc<Receiver>>,
    UrlPath(id): UrlPath<u64>,
    headers: HeaderMap,
    mut form: Multipart,
) -> Response {
    assert_eq!(id, 77);
    assert_eq!(headers["x-api-key"], KEY);
    let range = headers[CONTENT_RANGE].to_str().unwrap().to_owned();
    rx.ranges.lock().unwrap().push(range.clone());
    let (mut chunk, mut md5) = (None, None);
    while let Some(field) = form.next_field().await.unwrap() {
        match field.name().unwrap() {
            "chunk" => {
                assert_eq!(field.file_name(), Some("chunk"));
                assert_eq!(field.content_type(), Some("application/octet-stream"));
                chunk = Some(field.bytes().await.unwrap());
            }
            "md5" => md5 = Some(field.text().await.unwrap()),
            other => panic!("unexpected field {other}"),
        }
    }
    if let Some((status, retry_after)) = rx.faults.lock().unwrap().pop_front() {
        let mut response = (
            StatusCode::from_u16(status).unwrap(),
            r#"{"message":"scripted"}"#,
        )
            .into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert("retry-after", secs.parse().unwrap());
        }
        return response;
    }
    let (chunk, md5) = (chunk.unwrap(), md5.unwrap());
    if md5_hex(&chunk) != md5 {
        return StatusCode::PRECONDITION_FAILED.into_response();
    }
    let (span, total) = range
        .strip_prefix("bytes ")
        .unwrap()
        .split_once('/')
        .unwrap();
    let (start, end) = span.split_once('-').unwrap();
    let (start, end, total): (usize, usize, usize) = (
        start.parse().unwrap(),
        end.parse().unwrap(),
        total.parse().unwrap(),
    );
    if end - start + 1 != chunk.len() || end >= total {
        return StatusCode::BAD_REQUEST.into_response();
    }
    let mut data = rx.data.lock().unwrap();
    data.resize(total, 0);
    data[start..=end].copy_from_slice(&chunk);
    StatusCode::CREATED.into_response()
}

async fn serve_chunks(rx: Arc<Receiver>) -> reqwest::Url {
    let router = axum::Router::new()
        .route("/1/uploads/{id}/chunk", post(receive_chunk))
        .with_state(rx);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    reqwest::Url::parse(&format!("http://{addr}/")).unwrap()
}

fn client(upload_url: reqwest::Url, retry: RetryPolicy) -> Client {
    let mut opts = ClientOptions::new(upload_url.clone(), upload_url, ApiKey::new(KEY).unwrap());
    opts.retry = retry;
    opts.stall_timeout = Duration::from_millis(300);
    opts.request_timeout = Duration::from_secs(5);
    Client::new(opts).unwrap()
}

fn quick_retries() -> RetryPolicy {
    RetryPolicy {
        base: Duration::from_millis(1),
        cap: Duration::from_millis(10),
        give_up: Some(Duration::from_secs(10)),
    }
}

fn no_retries() -> RetryPolicy {
    RetryPolicy {
        give_up: Some(Duration::ZERO),
        ..quick_retries()
    }
}

fn file_of(len: usize) -> (tempfile::NamedTempFile, Vec<u8>) {
    let content: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    let mut file = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut file, &content).unwrap();
    (file, content)
}

fn request(path: &Path, total: u64, start_offset: u64) -> UploadRequest {
    UploadRequest {
        upload_id: UploadId(77),
        path: path.to_owned(),
        total_size: total,
        start_offset,
        chunk_size: NonZeroU64::new(100_000).unwrap(),
    }
}

#[tokio::test]
async fn a_file_arrives_whole_despite_mismatches_and_5xx() {
    let rx = Arc::new(Receiver::default());
    rx.faults
        .lock()
        .unwrap()
        .extend([(412, None), (503, Some("0")), (500, None)]);
    let client = client(serve_chunks(Arc::clone(&rx)).await, quick_retries());
    let (file, content) = file_of(250_000);
    let (tx, mut acks) = mpsc::channel(10);
    let mut tx = tx;
    client
        .upload_file(
            &request(file.path(), 250_000, 0),
            &mut tx,
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    drop(tx);
    let mut seen = Vec::new();
    while let Some(offset) = acks.recv().await {
        seen.push(offset);
    }
    assert_eq!(seen, [100_000, 200_000, 250_000]);
    assert_eq!(*rx.data.lock().unwrap(), content);
    let ranges = rx.ranges.lock().unwrap().clone();
    assert_eq!(ranges.len(), 6, "three chunks, the first sent four times");
    assert!(ranges[..4].iter().all(|r| r == "bytes 0-99999/250000"));
    assert_eq!(ranges[5], "bytes 200000-249999/250000");
}

#[tokio::test]
async fn a_resumed_upload_sends_only_the_rest() {
    let rx = Arc::new(Receiver::default());
    let client = client(serve_chunks(Arc::clone(&rx)).await, quick_retries());
    let (file, content) = file_of(250_000);
    let mut seen = Vec::new();
    let mut sink = AckFn(|offset| {
        seen.push(offset);
        Ok(())
    });
    client
        .upload_file(
            &request(file.path(), 250_000, 200_000),
            &mut sink,
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(seen, [250_000]);
    assert_eq!(*rx.ranges.lock().unwrap(), ["bytes 200000-249999/250000"]);
    assert_eq!(rx.data.lock().unwrap()[200_000..], content[200_000..]);
}

/// The chunk in flight when the cancel came (the second: the first offset is
/// recorded while it is sent) is finished and recorded; nothing after it goes.
#[tokio::test]
async fn cancel_stops_at_a_chunk_boundary() {
    let rx = Arc::new(Receiver::default());
    let client = client(serve_chunks(Arc::clone(&rx)).await, quick_retries());
    let (file, _) = file_of(250_000);
    let cancel = CancellationToken::new();
    let canceller = cancel.clone();
    let mut sink = AckFn(move |_| {
        canceller.cancel();
        Ok(())
    });
    let err = client
        .upload_file(&request(file.path(), 250_000, 0), &mut sink, &cancel)
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        UploadError::Cancelled {
            acknowledged: 200_000
        }
    ));
    assert_eq!(rx.ranges.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn a_refused_ack_stops_the_upload() {
    let rx = Arc::new(Receiver::default());
    let client = client(serve_chunks(Arc::clone(&rx)).await, quick_retries());
    let (file, _) = file_of(250_000);
    let mut sink = AckFn(|_| Err("disk full".into()));
    let err = client
        .upload_file(
            &request(file.path(), 250_000, 0),
            &mut sink,
            &CancellationToken::new(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, UploadError::Ack(_)));
    // The first offset was refused while the second chunk was on the wire;
    // nothing went after it.
    assert_eq!(rx.ranges.lock().unwrap().len(), 2);
}

/// A sink that records offset 100 000 only once the server holds the second
/// chunk: an engine that waited for the record before sending would never
/// get there.
struct WaitsForNextChunk {
    rx: Arc<Receiver>,
    offsets: Vec<u64>,
}

impl AckSink for WaitsForNextChunk {
    async fn acknowledged(&mut self, offset: u64) -> Result<(), BoxError> {
        if offset == 100_000 {
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.rx.ranges.lock().unwrap().len() < 2 {
                if Instant::now() > deadline {
                    return Err("the second chunk was not sent while the first was recorded".into());
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        self.offsets.push(offset);
        Ok(())
    }
}

#[tokio::test]
async fn an_offset_is_recorded_while_the_next_chunk_is_sent() {
    let rx = Arc::new(Receiver::default());
    let client = client(serve_chunks(Arc::clone(&rx)).await, quick_retries());
    let (file, content) = file_of(250_000);
    let mut sink = WaitsForNextChunk {
        rx: Arc::clone(&rx),
        offsets: Vec::new(),
    };
    client
        .upload_file(
            &request(file.path(), 250_000, 0),
            &mut sink,
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(sink.offsets, vec![100_000, 200_000, 250_000]);
    assert_eq!(*rx.data.lock().unwrap(), content);
}

#[tokio::test]
async fn endless_mismatches_fail_the_chunk() {
    let rx = Arc::new(Receiver::default());
    rx.faults
        .lock()
        .unwrap()
        .extend([(412, None); MAX_CHUNK_MISMATCHES as usize]);
    let client = client(serve_chunks(Arc::clone(&rx)).await, quick_retries());
    let err = client
        .upload_chunk(
            UploadId(77),
            ChunkRange { start: 0, end: 9 },
            10,
            Bytes::from_static(b"0123456789"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ChunkMismatch);
    assert_eq!(err.status(), Some(StatusCode::PRECONDITION_FAILED));
    assert_eq!(
        rx.ranges.lock().unwrap().len(),
        MAX_CHUNK_MISMATCHES as usize
    );
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let rx = Arc::new(Receiver::default());
    rx.faults.lock().unwrap().push_back((429, Some("1")));
    let client = client(serve_chunks(Arc::clone(&rx)).await, quick_retries());
    let started = Instant::now();
    client
        .upload_chunk(
            UploadId(77),
            ChunkRange { start: 0, end: 2 },
            3,
            Bytes::from_static(b"abc"),
        )
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(rx.ranges.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn bad_requests_are_refused_before_any_network() {
    let client = client(
        reqwest::Url::parse("http://127.0.0.1:9/").unwrap(),
        no_retries(),
    );
    let (file, _) = file_of(10);
    let mut sink = AckFn(|_| Ok(()));
    let cancel = CancellationToken::new();
    let err = client
        .upload_file(&request(file.path(), 11, 0), &mut sink, &cancel)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            UploadError::FileChanged {
                expected: 11,
                found: 10,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains(&file.path().display().to_string()));
    let err = client
        .upload_file(&request(file.path(), 0, 0), &mut sink, &cancel)
        .await
        .unwrap_err();
    assert!(matches!(err, UploadError::Invalid { .. }));
    let err = client
        .upload_file(
            &request(Path::new("/nonexistent/x.zip"), 5, 0),
            &mut sink,
            &cancel,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, UploadError::Io { .. }));
}

/// A server that accepts connections and then does nothing at all.
async fn black_hole() -> reqwest::Url {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    reqwest::Url::parse(&format!("http://{addr}/")).unwrap()
}

#[tokio::test]
async fn a_stalled_chunk_is_abandoned() {
    let client = client(black_hole().await, no_retries());
    let started = Instant::now();
    let err = client
        .upload_chunk(
            UploadId(77),
            ChunkRange { start: 0, end: 2 },
            3,
            Bytes::from_static(b"abc"),
        )
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(err.message().starts_with("stalled"), "{err}");
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(3));
}

/// A server that answers every connection with `response`, then closes it.
async fn canned(response: &'static str) -> reqwest::Url {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0; 4096];
                let _ = socket.read(&mut buf).await;
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    reqwest::Url::parse(&format!("http://{addr}/")).unwrap()
}

#[tokio::test]
async fn a_body_cut_off_is_transient_and_a_bad_body_is_protocol() {
    let cut = canned("HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"guid\"").await;
    let err = client(cut, no_retries())
        .get_job(&crate::patchkit::JobGuid("g".into()))
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert_eq!(
        err.to_string(),
        "GET /1/background_jobs/{guid}: 200 OK: connection broke while reading the response"
    );

    let bad = canned("HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nnot json").await;
    let err = client(bad, no_retries())
        .get_job(&crate::patchkit::JobGuid("g".into()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err:?}");
}

#[tokio::test]
async fn unsafe_calls_are_not_retried() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&hits);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let mut buf = vec![0; 4096];
            let _ = socket.read(&mut buf).await;
            let _ = socket
                .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await;
        }
    });
    let url = reqwest::Url::parse(&format!("http://{addr}/")).unwrap();
    let client = client(url, quick_retries());
    let err = client.create_version("s", "1.0", None).await.unwrap_err();
    assert!(err.is_transient());
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    let err = client.publish("s", 1).await.unwrap_err();
    assert!(err.is_transient());
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_cancel_after_the_last_chunk_is_not_reported() {
    let rx = Arc::new(Receiver::default());
    let client = client(serve_chunks(Arc::clone(&rx)).await, quick_retries());
    let (file, _) = file_of(50_000);
    let cancel = CancellationToken::new();
    let canceller = cancel.clone();
    let mut sink = AckFn(move |_| {
        canceller.cancel();
        Ok(())
    });
    client
        .upload_file(&request(file.path(), 50_000, 0), &mut sink, &cancel)
        .await
        .unwrap();
}

#[test]
fn upload_futures_can_be_spawned() {
    fn assert_send<T: Send>(_: &T) {}
    let client = client(
        reqwest::Url::parse("http://127.0.0.1:9/").unwrap(),
        no_retries(),
    );
    let (mut tx, _rx) = mpsc::channel(1);
    let cancel = CancellationToken::new();
    let req = request(Path::new("x"), 1, 0);
    assert_send(&client.upload_file(&req, &mut tx, &cancel));
    assert_send(&client.get_version("s", 1));
    assert_send(&client.create_upload(1));
}

/// The reader fills two buffers, then reads the next chunk only into a
/// buffer that came back: an upload holds two chunks in memory, however
/// slow the sender.
#[test]
fn the_reader_fills_two_buffers_then_reuses_them() {
    let (file, data) = file_of(5_000);
    let total = data.len() as u64;
    let chunk_size = NonZeroU64::new(1_000).unwrap();
    // Room for every chunk: only the buffers can hold the reader back.
    let (tx, mut rx) = mpsc::channel(8);
    let (recycle, recycled) = std::sync::mpsc::channel();
    let path = file.path().to_owned();
    let reader = std::thread::spawn(move || {
        let opened = std::fs::File::open(&path).unwrap();
        let ranges = chunk_ranges(total, chunk_size, 0);
        read_chunks(opened, &path, total, ranges, &tx, &recycled);
    });
    let mut next = || {
        let chunk = rx.blocking_recv().expect("a chunk").expect("read");
        let range = chunk.range;
        let expected = &data[range.start as usize..range.end_exclusive() as usize];
        assert_eq!(&chunk.data[..], expected);
        assert_eq!(chunk.md5, md5_hex(expected));
        chunk
    };
    let first = next();
    let second = next();
    assert_eq!((first.range.start, second.range.start), (0, 1_000));
    let first_buffer = first.data.as_ptr();
    recycle.send(first.data.try_into_mut().unwrap()).unwrap();
    let third = next();
    assert_eq!(third.range.start, 2_000);
    assert_eq!(third.data.as_ptr(), first_buffer, "the buffer is reused");
    // No buffer comes back any more: the reader stops without a fourth.
    drop(recycle);
    reader.join().unwrap();
    assert!(
        rx.blocking_recv().is_none(),
        "a fourth chunk needs a buffer back"
    );
}

/// The `md5` field is lowercase hex of MD5, as `md5sum` prints it: the
/// test vectors of RFC 1321.
#[test]
fn md5_hex_gives_rfc_1321_digests() {
    assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
    assert_eq!(md5_hex(b"abc"), "900150983cd24fb0d6963f7d28e17f72");
    assert_eq!(
        md5_hex(b"message digest"),
        "f96b697d7cb7938d525a2f31aaf161d0"
    );
    assert_eq!(
        md5_hex(
            b"12345678901234567890123456789012345678901234567890123456789012345678901234567890"
        ),
        "57edf4a22be3c955ac49da2e2107b67a"
    );
}
