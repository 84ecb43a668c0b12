//! The chunk upload engine: a file to PatchKit's upload host, resumably.
//!
//! Owns reading and hashing chunks (a reader thread one chunk ahead of the
//! sender, reusing two chunk buffers), sending each chunk with its
//! MD5 and `Content-Range`, the stall watchdog that replaces a total timeout
//! for chunks, resending on MD5 mismatch and transient errors, and reporting
//! every acknowledged offset through an [`AckSink`] while the next chunk is
//! already on its way. Knows nothing about where the pipeline stores
//! offsets: it only calls the sink.

use std::convert::Infallible;
use std::future::Future;
use std::io::{self, Read, Seek, SeekFrom};
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use md5::{Digest, Md5};
use reqwest::Body;
use reqwest::header::CONTENT_RANGE;
use reqwest::multipart::{Form, Part};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::chunks::{ChunkRange, chunk_ranges};
use super::client::{Client, execute, join};
use super::error::{ApiError, BoxError, Endpoint, ErrorKind};
use super::retry::log_retry;
use super::types::UploadId;

/// The chunk body is handed to the connection in slices of this size, and
/// progress is counted per slice. 64 KiB is a few TCP segments: fine-grained
/// enough that a slow but live link always shows progress within the stall
/// timeout, coarse enough that counting costs nothing. Slices share the
/// chunk's buffer (no copy).
const SLICE_SIZE: usize = 64 * 1024;

/// A chunk is read from the file and hashed in pieces of this size, so the
/// bytes the kernel just copied are hashed while they are still in the CPU's
/// cache (a few hundred KiB fit in any L2); hashing a whole 10 MiB chunk
/// after reading it would fetch every byte from memory twice.
const HASH_PIECE: usize = 256 * 1024;

/// Chunk buffers per upload: one chunk on the wire while the next is read,
/// hashed and waiting, so the next chunk is ready when the server answers.
/// A third buffer would only let the reader run two chunks ahead, which
/// gains nothing once reading is faster than sending, and costs a chunk of
/// memory (10 MiB by default).
const CHUNK_BUFFERS: usize = 2;

/// A chunk whose MD5 is refused this many times in a row is given up on:
/// one mismatch is line noise, five mean something corrupts every attempt
/// (a broken proxy, bad memory) and resending forever would hide it.
const MAX_CHUNK_MISMATCHES: u32 = 5;

/// Where acknowledged offsets go. After each chunk the server accepted, the
/// upload awaits the sink with the new offset while it sends the next chunk
/// (so recording an offset costs no time on a far link), and awaits it for
/// the last chunk before it returns. Offsets arrive in order, one call at a
/// time. An `Err` stops the upload with [`UploadError::Ack`] once the chunk
/// in flight has been answered; at most that one chunk is sent past an
/// offset that was not recorded, and it is sent again on resume.
pub trait AckSink: Send {
    /// All bytes before `offset` have been accepted by the server.
    fn acknowledged(&mut self, offset: u64) -> impl Future<Output = Result<(), BoxError>> + Send;
}

/// Sends each offset down a channel; fails when the receiver is gone.
impl AckSink for mpsc::Sender<u64> {
    async fn acknowledged(&mut self, offset: u64) -> Result<(), BoxError> {
        self.send(offset).await.map_err(Into::into)
    }
}

/// An [`AckSink`] made of a synchronous closure.
#[derive(Debug, Clone)]
pub struct AckFn<F>(pub F);

impl<F> AckSink for AckFn<F>
where
    F: FnMut(u64) -> Result<(), BoxError> + Send,
{
    async fn acknowledged(&mut self, offset: u64) -> Result<(), BoxError> {
        (self.0)(offset)
    }
}

/// One file to upload into an upload that already exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadRequest {
    /// The upload, from [`Client::create_upload`].
    pub upload_id: UploadId,
    /// The ZIP.
    pub path: PathBuf,
    /// The size the upload was created with; the file must have it.
    pub total_size: u64,
    /// Bytes already acknowledged (0 for a new upload).
    pub start_offset: u64,
    /// Bytes per chunk (see [`DEFAULT_CHUNK_SIZE`](super::DEFAULT_CHUNK_SIZE)).
    pub chunk_size: NonZeroU64,
}

/// Why [`Client::upload_file`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The API refused a chunk or kept failing past the retry policy.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// Reading the file failed.
    #[error("could not read {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The file does not have the size the upload was created with.
    #[error("{} changed: the upload expects {expected} bytes, the file has {found}", path.display())]
    FileChanged {
        /// The file.
        path: PathBuf,
        /// The upload's total size.
        expected: u64,
        /// The file's size now.
        found: u64,
    },
    /// The request cannot be carried out as given (nothing to upload, an
    /// offset past the end, a chunk larger than memory can address).
    #[error("cannot upload {}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
    /// The sink refused an acknowledged offset.
    #[error("could not record upload progress")]
    Ack(#[source] BoxError),
    /// Cancelled at a chunk boundary; `acknowledged` bytes are safe on the
    /// server.
    #[error("upload cancelled after {acknowledged} acknowledged bytes")]
    Cancelled {
        /// Bytes acknowledged when the upload stopped.
        acknowledged: u64,
    },
}

/// A chunk read from the file, with its hash.
struct ReadChunk {
    /// Its place in the file.
    range: ChunkRange,
    /// Its bytes.
    data: Bytes,
    /// Lowercase hex MD5 of `data`.
    md5: String,
}

/// How sending one chunk ended, when it did not fail.
enum Sent {
    /// The server accepted it.
    Accepted,
    /// Cancelled while waiting to retry it.
    Cancelled,
}

impl Client {
    /// Sends one chunk (`data` holds exactly the bytes of `range`), resending
    /// it after transient errors and MD5 mismatches as the retry policy
    /// allows.
    pub async fn upload_chunk(
        &self,
        upload_id: UploadId,
        range: ChunkRange,
        total: u64,
        data: Bytes,
    ) -> Result<(), ApiError> {
        if data.len() as u64 != range.size() {
            return Err(ApiError::new(
                Endpoint::UploadChunk,
                ErrorKind::BadRequest,
                format!(
                    "chunk holds {} bytes but its range {}-{} needs {}",
                    data.len(),
                    range.start,
                    range.end,
                    range.size()
                ),
            ));
        }
        let hashed = data.clone();
        let md5 = tokio::task::spawn_blocking(move || md5_hex(&hashed))
            .await
            .map_err(|e| {
                ApiError::new(Endpoint::UploadChunk, ErrorKind::Protocol, "hashing failed")
                    .with_source(e)
            })?;
        self.send_chunk(upload_id, range, total, &data, &md5, None)
            .await
            .map(drop)
    }

    /// Uploads `req.path` from `req.start_offset` to the end, chunk after
    /// chunk, in order. Each acknowledged offset is given to `ack` while the
    /// next chunk is sent; the last one before this returns. Reading and
    /// hashing the next chunk overlaps with sending the current one.
    ///
    /// On `cancel`, the chunk in flight finishes (or is abandoned if it is
    /// waiting to be retried), its offset is given to `ack`, and the upload
    /// returns [`UploadError::Cancelled`] with the offset acknowledged so far.
    ///
    /// A 0-byte upload is refused: PatchKit needs a ZIP, and a ZIP is never
    /// empty, so 0 bytes means a caller bug.
    pub async fn upload_file(
        &self,
        req: &UploadRequest,
        ack: &mut impl AckSink,
        cancel: &CancellationToken,
    ) -> Result<(), UploadError> {
        let invalid = |reason| UploadError::Invalid {
            path: req.path.clone(),
            reason,
        };
        if req.total_size == 0 {
            return Err(invalid("a ZIP is never empty, and PatchKit needs one"));
        }
        if req.start_offset > req.total_size {
            return Err(invalid(
                "the acknowledged offset is past the end of the upload",
            ));
        }
        if usize::try_from(req.chunk_size.get()).is_err() {
            return Err(invalid("the chunk size does not fit in memory"));
        }

        let file = open_checked(req.path.clone(), req.total_size).await?;
        // Capacity 1: the next chunk waits here while one is sent.
        let (tx, mut rx) = mpsc::channel(1);
        // Every sent chunk's buffer goes back to the reader, which fills it
        // again: a fresh 10 MiB buffer per chunk would be zeroed and
        // page-faulted in anew. The reader waits for one once it has
        // CHUNK_BUFFERS, which bounds the upload's memory.
        let (recycle, recycled) = std::sync::mpsc::channel();
        let reader = {
            let path = req.path.clone();
            let ranges = chunk_ranges(req.total_size, req.chunk_size, req.start_offset);
            let total = req.total_size;
            tokio::task::spawn_blocking(move || {
                read_chunks(file, &path, total, ranges, &tx, &recycled)
            })
        };

        // Accepted by the server, not yet given to the sink.
        let mut accepted = req.start_offset;
        // Given to the sink.
        let mut acknowledged = req.start_offset;
        // Bounded by the total, not by the channel, so a cancel that arrives
        // after the last chunk was accepted does not report a finished upload
        // as cancelled.
        while accepted < req.total_size {
            let next = tokio::select! {
                biased;
                () = cancel.cancelled() => None,
                next = rx.recv() => next,
            };
            let Some(chunk) = next else {
                if accepted > acknowledged {
                    ack.acknowledged(accepted).await.map_err(UploadError::Ack)?;
                    acknowledged = accepted;
                }
                if cancel.is_cancelled() {
                    return Err(UploadError::Cancelled { acknowledged });
                }
                break;
            };
            let chunk = chunk?;
            let send = self.send_chunk(
                req.upload_id,
                chunk.range,
                req.total_size,
                &chunk.data,
                &chunk.md5,
                Some(cancel),
            );
            // The previous chunk's offset is recorded while this one is on the
            // wire: waiting for the record first would add its time (a flush
            // to disk) to every chunk. The send is polled first, so the
            // request is on its way even if the record's first step blocks.
            let (recorded, sent) = if accepted > acknowledged {
                let (sent, recorded) = tokio::join!(send, ack.acknowledged(accepted));
                (Some(recorded), sent)
            } else {
                (None, send.await)
            };
            if let Some(recorded) = recorded {
                recorded.map_err(UploadError::Ack)?;
                acknowledged = accepted;
            }
            if let Sent::Cancelled = sent? {
                return Err(UploadError::Cancelled { acknowledged });
            }
            accepted = chunk.range.end_exclusive();
            tracing::debug!(upload = %req.upload_id, accepted, total = req.total_size, "chunk accepted");
            // Unique once the connection has let go of the body's slices;
            // otherwise an empty buffer goes back, and the reader allocates.
            // The reader may be done already (this was the last chunk).
            let _ = recycle.send(chunk.data.try_into_mut().unwrap_or_default());
        }
        if accepted > acknowledged {
            ack.acknowledged(accepted).await.map_err(UploadError::Ack)?;
            acknowledged = accepted;
        }

        let io_error = |source| UploadError::Io {
            path: req.path.clone(),
            source,
        };
        drop(recycle);
        reader.await.map_err(|e| io_error(io::Error::other(e)))?;
        if acknowledged != req.total_size {
            // Only reachable if the reader stopped without saying why.
            return Err(io_error(io::Error::other("the file reader stopped early")));
        }
        Ok(())
    }

    /// Sends one chunk until it is accepted, failing on a non-transient
    /// error, on the retry policy giving up, or on too many MD5 mismatches.
    /// With a `cancel` token, waits between retries end early on cancel.
    async fn send_chunk(
        &self,
        upload_id: UploadId,
        range: ChunkRange,
        total: u64,
        data: &Bytes,
        md5: &str,
        cancel: Option<&CancellationToken>,
    ) -> Result<Sent, ApiError> {
        let url = join(
            &self.inner.upload_url,
            &["uploads", &upload_id.to_string(), "chunk"],
        );
        let mut backoff = self.inner.retry.backoff();
        let mut mismatches = 0;
        loop {
            let err = match self.send_chunk_once(&url, range, total, data, md5).await {
                Ok(()) => return Ok(Sent::Accepted),
                Err(err) => err,
            };
            let delay = match err.kind() {
                ErrorKind::ChunkMismatch => {
                    mismatches += 1;
                    if mismatches >= MAX_CHUNK_MISMATCHES {
                        return Err(err);
                    }
                    // Corruption in transit: resending at once is the remedy.
                    Duration::ZERO
                }
                ErrorKind::Transient { retry_after } => match backoff.next_delay(retry_after) {
                    Some(delay) => delay,
                    None => return Err(err),
                },
                _ => return Err(err),
            };
            log_retry(
                format_args!("{} bytes {}-{}", err.endpoint(), range.start, range.end),
                backoff.attempts() + mismatches,
                delay,
                &err,
            );
            match cancel {
                Some(cancel) => tokio::select! {
                    () = cancel.cancelled() => return Ok(Sent::Cancelled),
                    () = tokio::time::sleep(delay) => {}
                },
                None => tokio::time::sleep(delay).await,
            }
        }
    }

    /// One attempt at one chunk, watched for stalls: if no body byte is taken
    /// by the connection and no response arrives for `stall_timeout`, the
    /// request is dropped (closing its connection) and reported as transient.
    async fn send_chunk_once(
        &self,
        url: &reqwest::Url,
        range: ChunkRange,
        total: u64,
        data: &Bytes,
        md5: &str,
    ) -> Result<(), ApiError> {
        let endpoint = Endpoint::UploadChunk;
        let progress = Arc::new(AtomicU64::new(0));
        let body = Body::wrap_stream(sliced(data.clone(), Arc::clone(&progress)));
        let part = Part::stream_with_length(body, data.len() as u64)
            .file_name("chunk")
            .mime_str("application/octet-stream")
            .map_err(|e| ApiError::from_transport(endpoint, e))?;
        let form = Form::new().part("chunk", part).text("md5", md5.to_owned());
        // No total timeout here: the watchdog below replaces it.
        let request = self
            .inner
            .http
            .post(url.clone())
            .header(CONTENT_RANGE, range.content_range(total))
            .multipart(form);
        let stall = self.inner.stall_timeout;
        tokio::select! {
            result = execute(endpoint, request) => result.map(drop),
            () = watchdog(&progress, stall) => Err(ApiError::new(
                endpoint,
                ErrorKind::Transient { retry_after: None },
                format!("stalled: nothing sent or received for {}", humantime::format_duration(stall)),
            )),
        }
    }
}

/// Lowercase hex MD5, as the `md5` form field wants it.
pub fn md5_hex(data: &[u8]) -> String {
    lower_hex(&Md5::digest(data))
}

/// `bytes` as lowercase hex (a digest as PatchKit and `md5sum` print it).
pub fn lower_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    bytes
        .iter()
        .flat_map(|b| [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 0xf)]])
        .map(char::from)
        .collect()
}

/// `data` as a stream of [`SLICE_SIZE`] slices, adding each slice's length to
/// `progress` as the connection takes it.
fn sliced(
    data: Bytes,
    progress: Arc<AtomicU64>,
) -> impl futures::Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
    let len = data.len();
    futures::stream::iter((0..len).step_by(SLICE_SIZE).map(move |start| {
        let slice = data.slice(start..len.min(start + SLICE_SIZE));
        progress.fetch_add(slice.len() as u64, Ordering::Relaxed);
        Ok(slice)
    }))
}

/// Returns once `progress` has not moved for `stall`. Checks four times per
/// `stall`, so a stall is noticed within 1.25 × `stall`.
async fn watchdog(progress: &AtomicU64, stall: Duration) {
    let period = (stall / 4).max(Duration::from_millis(1));
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = progress.load(Ordering::Relaxed);
    let mut moved_at = tokio::time::Instant::now();
    loop {
        ticks.tick().await;
        let now = progress.load(Ordering::Relaxed);
        if now != seen {
            seen = now;
            moved_at = tokio::time::Instant::now();
        } else if moved_at.elapsed() >= stall {
            return;
        }
    }
}

/// Opens `path` and checks that it has `expected` bytes.
async fn open_checked(path: PathBuf, expected: u64) -> Result<std::fs::File, UploadError> {
    let for_error = path.clone();
    tokio::task::spawn_blocking(move || {
        let io_error = |source| UploadError::Io {
            path: path.clone(),
            source,
        };
        let file = std::fs::File::open(&path).map_err(io_error)?;
        let found = file.metadata().map_err(io_error)?.len();
        if found != expected {
            return Err(UploadError::FileChanged {
                path,
                expected,
                found,
            });
        }
        Ok(file)
    })
    .await
    .map_err(|e| UploadError::Io {
        path: for_error,
        source: io::Error::other(e),
    })?
}

/// The reader thread: reads and hashes each chunk in order and hands it over.
/// Allocates up to [`CHUNK_BUFFERS`] buffers, then waits for each sent one to
/// come back through `recycled` before reading the next chunk into it.
/// Stops early when the upload is gone (either channel closed) or after
/// sending an error.
fn read_chunks(
    mut file: std::fs::File,
    path: &Path,
    total: u64,
    ranges: impl Iterator<Item = ChunkRange>,
    tx: &mpsc::Sender<Result<ReadChunk, UploadError>>,
    recycled: &std::sync::mpsc::Receiver<BytesMut>,
) {
    let mut positioned = false;
    let mut allocated = 0;
    for range in ranges {
        let buf = match recycled.try_recv() {
            Ok(buf) => buf,
            Err(_) if allocated < CHUNK_BUFFERS => {
                allocated += 1;
                BytesMut::new()
            }
            Err(_) => match recycled.recv() {
                Ok(buf) => buf,
                Err(_) => return,
            },
        };
        let item = read_chunk(&mut file, path, total, range, !positioned, buf);
        positioned = true;
        let failed = item.is_err();
        if tx.blocking_send(item).is_err() || failed {
            return;
        }
    }
}

/// Reads one chunk into `buf` (seeking first when `seek` is set) and hashes
/// it, piece by piece.
fn read_chunk(
    file: &mut std::fs::File,
    path: &Path,
    total: u64,
    range: ChunkRange,
    seek: bool,
    mut buf: BytesMut,
) -> Result<ReadChunk, UploadError> {
    let io_error = |source| UploadError::Io {
        path: path.to_owned(),
        source,
    };
    if seek {
        file.seek(SeekFrom::Start(range.start)).map_err(io_error)?;
    }
    // Checked by the caller: a chunk size fits in usize. A reused buffer
    // already has the length (only the last chunk is shorter), so nothing
    // is zeroed after the first chunks.
    buf.resize(range.size() as usize, 0);
    let mut md5 = Md5::new();
    for piece in buf.chunks_mut(HASH_PIECE) {
        if let Err(err) = file.read_exact(piece) {
            if err.kind() == io::ErrorKind::UnexpectedEof {
                // The file shrank under us.
                let found = file.metadata().map_err(io_error)?.len();
                return Err(UploadError::FileChanged {
                    path: path.to_owned(),
                    expected: total,
                    found,
                });
            }
            return Err(io_error(err));
        }
        md5.update(&*piece);
    }
    Ok(ReadChunk {
        range,
        data: buf.freeze(),
        md5: lower_hex(&md5.finalize()),
    })
}

#[cfg(test)]
mod tests;
