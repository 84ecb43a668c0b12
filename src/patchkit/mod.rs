//! The PatchKit API v1 client.
//!
//! Owns HTTP and JSON: typed requests and responses (`types`), the error
//! classes (`error`), the backoff policy (`retry`), chunk arithmetic
//! (`chunks`), the endpoint calls (`client`) and the resumable chunk upload
//! engine (`upload`). Knows nothing about sled, notify or rules: the pipeline
//! decides what to call and what to remember.
//!
//! Architecture invariants:
//! - The API key travels only in the `X-Api-Key` header. It is never put in
//!   a URL, never logged, and `Debug` prints a placeholder.
//! - Every failure is an [`ApiError`] whose [`ErrorKind`] says what a caller
//!   may do. Errors name the endpoint by its path template, never by a URL.
//! - The client repeats by itself only calls that are safe to repeat
//!   ([`Endpoint::retry_safe`]): reads, the PATCH, creating an upload and
//!   chunks. Creating a version, starting processing, publishing and creating
//!   an app return their transient error unretried, because the first attempt
//!   may have taken effect before the connection broke. The pipeline re-reads
//!   the server state (lists versions, reads the version) before repeating
//!   one, using the same [`RetryPolicy`] for its waits. (reqwest itself only
//!   replays a request the server provably did not process, such as a
//!   refused HTTP/2 stream.)
//! - Ordinary calls have a total deadline; chunk uploads have none but a
//!   stall timeout instead, so a slow link is fine and a dead one is not.
//! - Proxies come from `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` for every
//!   request, chunks included. Redirects are not followed (they would carry
//!   the key elsewhere).

mod chunks;
mod client;
mod error;
mod key;
mod retry;
mod types;
mod upload;

pub use chunks::{ChunkRange, ChunkRanges, DEFAULT_CHUNK_SIZE, chunk_ranges};
pub use client::{Client, ClientOptions, DEFAULT_API_URL, DEFAULT_UPLOAD_URL, KnownApp, KnownApps};
pub use error::{ApiError, BoxError, BuildError, Endpoint, ErrorKind};
pub use key::ApiKey;
pub use retry::{Backoff, RequestRetry, RetryClass, RetryPolicy, RetryWatch, stoppable, watched};
pub use types::{
    App, AppVersion, Job, JobGuid, LockAnswer, MissingKey, ParentGroup, ProcessingMessage,
    PublishState, Severity, UploadId, VersionPatch,
};
pub use upload::{AckFn, AckSink, UploadError, UploadRequest, lower_hex, md5_hex};
