//! What went wrong with an API call, classified so callers can decide.
//!
//! Owns the list of endpoints (with the one table saying which are safe to
//! repeat), the mapping from HTTP statuses and transport failures to an
//! [`ErrorKind`], and the operator-facing wording. Knows nothing about what
//! the pipeline does with an error.

use std::fmt;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};

use super::types::ErrorBody;

/// A boxed error, for causes that come from outside this module.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error message from the server is cut to this many characters: enough
/// for any sentence PatchKit writes, short enough that an HTML error page from
/// a proxy does not flood the log.
const MAX_MESSAGE_CHARS: usize = 300;

/// The API endpoints this client calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `GET /1/apps/{secret}`
    GetApp,
    /// `GET /1/apps`
    ListApps,
    /// `POST /1/apps`
    CreateApp,
    /// `GET /1/apps/{secret}/versions`
    ListVersions,
    /// `GET /1/apps/{secret}/versions/{id}`
    GetVersion,
    /// `POST /1/apps/{secret}/versions`
    CreateVersion,
    /// `PATCH /1/apps/{secret}/versions/{id}`
    PatchVersion,
    /// `POST /1/uploads`
    CreateUpload,
    /// `POST /1/uploads/{id}/chunk` (upload host)
    UploadChunk,
    /// `PUT /1/apps/{secret}/versions/{id}/content_file`
    StartProcessing,
    /// `GET /1/background_jobs/{guid}`
    GetJob,
    /// `POST /1/apps/{secret}/versions/{id}/publish`
    Publish,
    /// `POST /1/apps/{channel}/versions/{id}/link`
    LinkVersion,
    /// `POST /1/global_locks/acquire`
    AcquireLock,
}

impl Endpoint {
    /// The HTTP method.
    pub fn method(self) -> reqwest::Method {
        use reqwest::Method;
        match self {
            Endpoint::GetApp
            | Endpoint::ListApps
            | Endpoint::ListVersions
            | Endpoint::GetVersion
            | Endpoint::GetJob => Method::GET,
            Endpoint::CreateApp
            | Endpoint::CreateVersion
            | Endpoint::CreateUpload
            | Endpoint::UploadChunk
            | Endpoint::Publish
            | Endpoint::LinkVersion
            | Endpoint::AcquireLock => Method::POST,
            Endpoint::PatchVersion => Method::PATCH,
            Endpoint::StartProcessing => Method::PUT,
        }
    }

    /// The path with placeholders, as used in errors and logs (never the
    /// real secret or ids).
    pub fn path_template(self) -> &'static str {
        match self {
            Endpoint::GetApp => "/1/apps/{secret}",
            Endpoint::ListApps | Endpoint::CreateApp => "/1/apps",
            Endpoint::ListVersions | Endpoint::CreateVersion => "/1/apps/{secret}/versions",
            Endpoint::GetVersion | Endpoint::PatchVersion => "/1/apps/{secret}/versions/{id}",
            Endpoint::CreateUpload => "/1/uploads",
            Endpoint::UploadChunk => "/1/uploads/{id}/chunk",
            Endpoint::StartProcessing => "/1/apps/{secret}/versions/{id}/content_file",
            Endpoint::GetJob => "/1/background_jobs/{guid}",
            Endpoint::Publish => "/1/apps/{secret}/versions/{id}/publish",
            Endpoint::LinkVersion => "/1/apps/{secret}/versions/{id}/link",
            Endpoint::AcquireLock => "/1/global_locks/acquire",
        }
    }

    /// Whether the client repeats this call by itself after a transient
    /// error. True when a repeat cannot change the outcome: reads, the
    /// PATCH (it sets absolute values), creating an upload (an orphaned
    /// upload is harmless) and chunks (same bytes, same range). False for
    /// calls whose first attempt may have taken effect before the connection
    /// broke: a second version would be refused as a second draft, and a
    /// second processing or publish request could act twice. The pipeline
    /// re-reads the server state before repeating those.
    pub fn retry_safe(self) -> bool {
        match self {
            Endpoint::GetApp
            | Endpoint::ListApps
            | Endpoint::ListVersions
            | Endpoint::GetVersion
            | Endpoint::GetJob
            | Endpoint::PatchVersion
            | Endpoint::CreateUpload
            | Endpoint::UploadChunk
            | Endpoint::AcquireLock => true,
            Endpoint::CreateApp
            | Endpoint::CreateVersion
            | Endpoint::StartProcessing
            | Endpoint::Publish
            | Endpoint::LinkVersion => false,
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method(), self.path_template())
    }
}

/// The class of a failure: what a caller may do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Worth repeating later: no connection, a timeout or stall, a connection
    /// reset or cut off mid-response, 5xx, 408 or 429. `retry_after` is the
    /// server's `Retry-After` in seconds, when it sent one.
    Transient {
        /// The least time to wait before repeating.
        retry_after: Option<Duration>,
    },
    /// 412: the chunk's MD5 did not match what arrived; send it again.
    ChunkMismatch,
    /// 401: the key is missing or wrong.
    Unauthorized,
    /// 403: the key may not do this (or, for create version, a draft exists).
    Forbidden,
    /// 404: unknown app, version, upload or job.
    NotFound,
    /// 400 and any other 4xx: the request itself is wrong.
    BadRequest,
    /// The server answered something we cannot use: an unparsable body, an
    /// unexpected status, or a request we could not even build.
    Protocol,
}

/// A failed API call: which endpoint, what class, and what the server said.
///
/// Displays as `POST /1/apps/{secret}/versions: 403 Forbidden: draft version
/// already exists`. Transport failures keep their cause as the error
/// `source`, with the URL removed.
#[derive(Debug)]
pub struct ApiError {
    /// The endpoint called.
    endpoint: Endpoint,
    /// The class of failure.
    kind: ErrorKind,
    /// The HTTP status, when a response arrived.
    status: Option<StatusCode>,
    /// The server's `message`, or our description of a transport failure.
    message: String,
    /// The server's `symbol`, when present.
    symbol: Option<String>,
    /// The underlying transport or parse error.
    source: Option<BoxError>,
}

impl ApiError {
    /// An error of the given kind with a message of our own.
    pub fn new(endpoint: Endpoint, kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError {
            endpoint,
            kind,
            status: None,
            message: message.into(),
            symbol: None,
            source: None,
        }
    }

    /// Classifies a non-success response from its status, headers and body.
    pub fn from_response(
        endpoint: Endpoint,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Self {
        let kind = match status.as_u16() {
            401 => ErrorKind::Unauthorized,
            403 => ErrorKind::Forbidden,
            404 => ErrorKind::NotFound,
            412 => ErrorKind::ChunkMismatch,
            408 | 429 | 500..=599 => ErrorKind::Transient {
                retry_after: retry_after(headers),
            },
            400..=499 => ErrorKind::BadRequest,
            _ => ErrorKind::Protocol,
        };
        let parsed: ErrorBody = serde_json::from_slice(body).unwrap_or_default();
        let message = match parsed.message {
            Some(m) => m,
            // Not our JSON (a proxy's page, or empty): show its start, if text.
            None => String::from_utf8_lossy(body).trim().to_owned(),
        };
        let message = match (kind, message.is_empty()) {
            (ErrorKind::Protocol, true) => "unexpected status".to_owned(),
            (ErrorKind::Protocol, false) => format!("unexpected status: {message}"),
            _ => message,
        };
        ApiError {
            endpoint,
            kind,
            status: Some(status),
            message: truncate(&message),
            symbol: parsed.symbol.map(|s| truncate(&s)),
            source: None,
        }
    }

    /// Classifies a transport failure reported by reqwest. The URL is
    /// dropped from the cause: it names the app secret, and the endpoint
    /// already says which call failed.
    pub fn from_transport(endpoint: Endpoint, err: reqwest::Error) -> Self {
        let status = err.status();
        let (kind, message) = if err.is_builder() {
            (ErrorKind::Protocol, "could not build the request")
        } else if err.is_redirect() {
            (ErrorKind::Protocol, "unexpected redirect")
        } else if err.is_timeout() {
            (transient(), "timed out")
        } else if err.is_connect() {
            (transient(), "could not connect")
        } else if err.is_body() || err.is_decode() {
            (transient(), "connection broke while reading the response")
        } else {
            // Everything else happens while the request is on the wire
            // (reset, closed, HTTP/2 stream error): worth another try.
            (transient(), "connection failed")
        };
        ApiError {
            endpoint,
            kind,
            status,
            message: message.to_owned(),
            symbol: None,
            source: Some(Box::new(err.without_url())),
        }
    }

    /// A fully received success body that does not parse as expected.
    pub fn from_parse(endpoint: Endpoint, status: StatusCode, err: serde_json::Error) -> Self {
        ApiError {
            endpoint,
            kind: ErrorKind::Protocol,
            status: Some(status),
            message: "response body is not what the API promises".to_owned(),
            symbol: None,
            source: Some(Box::new(err)),
        }
    }

    /// Records the status of a response whose body then failed to arrive.
    pub(crate) fn with_status(mut self, status: StatusCode) -> Self {
        self.status = Some(status);
        self
    }

    /// Attaches a cause.
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The endpoint called.
    pub fn endpoint(&self) -> Endpoint {
        self.endpoint
    }

    /// The class of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The HTTP status, when a response arrived.
    pub fn status(&self) -> Option<StatusCode> {
        self.status
    }

    /// The server's message, or our description of the failure.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The server's `symbol`, when it sent one.
    pub fn symbol(&self) -> Option<&str> {
        self.symbol.as_deref()
    }

    /// Worth repeating later.
    pub fn is_transient(&self) -> bool {
        matches!(self.kind, ErrorKind::Transient { .. })
    }

    /// The server's `Retry-After`, for a transient error that carried one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self.kind {
            ErrorKind::Transient { retry_after } => retry_after,
            _ => None,
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.endpoint)?;
        if let Some(status) = self.status {
            match status.canonical_reason() {
                Some(reason) => write!(f, "{} {reason}", status.as_u16())?,
                None => write!(f, "{}", status.as_u16())?,
            }
            if !self.message.is_empty() {
                f.write_str(": ")?;
            }
        }
        f.write_str(&self.message)?;
        if let Some(symbol) = &self.symbol {
            write!(f, " ({symbol})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Building a [`Client`](super::Client) failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The key holds characters an HTTP header cannot carry. The key itself
    /// is not shown.
    #[error("the API key contains characters that cannot be sent in an HTTP header")]
    InvalidApiKey,
    /// The user agent holds characters an HTTP header cannot carry.
    #[error("the user agent {0:?} cannot be sent in an HTTP header")]
    InvalidUserAgent(String),
    /// A base URL that is not http(s) or cannot have paths appended.
    #[error("{which} {url} is not an http(s) base URL")]
    InvalidUrl {
        /// `api_url` or `upload_url`.
        which: &'static str,
        /// The URL given.
        url: reqwest::Url,
    },
    /// reqwest could not set up (TLS roots, proxy settings).
    #[error("could not set up the HTTP client")]
    Http(#[source] reqwest::Error),
}

fn transient() -> ErrorKind {
    ErrorKind::Transient { retry_after: None }
}

/// `Retry-After` in delta-seconds. The HTTP-date form is not parsed: PatchKit
/// documents no rate limit, and proxies that send 429/503 use seconds.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let raw = headers.get(RETRY_AFTER)?.to_str().ok()?;
    raw.trim().parse::<u64>().ok().map(Duration::from_secs)
}

fn truncate(s: &str) -> String {
    match s.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn classify(status: u16, body: &str) -> ApiError {
        ApiError::from_response(
            Endpoint::CreateVersion,
            StatusCode::from_u16(status).unwrap(),
            &HeaderMap::new(),
            body.as_bytes(),
        )
    }

    #[test]
    fn statuses_map_to_kinds() {
        let t = ErrorKind::Transient { retry_after: None };
        for (status, kind) in [
            (400, ErrorKind::BadRequest),
            (401, ErrorKind::Unauthorized),
            (403, ErrorKind::Forbidden),
            (404, ErrorKind::NotFound),
            (405, ErrorKind::BadRequest),
            (408, t),
            (409, ErrorKind::BadRequest),
            (412, ErrorKind::ChunkMismatch),
            (422, ErrorKind::BadRequest),
            (429, t),
            (500, t),
            (502, t),
            (503, t),
            (599, t),
            (200, ErrorKind::Protocol),
            (302, ErrorKind::Protocol),
        ] {
            assert_eq!(classify(status, "").kind(), kind, "status {status}");
        }
        assert!(classify(503, "").is_transient());
        assert!(!classify(403, "").is_transient());
    }

    #[test]
    fn retry_after_seconds_are_kept() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        let e = ApiError::from_response(
            Endpoint::GetJob,
            StatusCode::TOO_MANY_REQUESTS,
            &headers,
            b"",
        );
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        let e = ApiError::from_response(
            Endpoint::GetJob,
            StatusCode::SERVICE_UNAVAILABLE,
            &headers,
            b"",
        );
        assert!(e.is_transient());
        assert_eq!(e.retry_after(), None);
    }

    #[test]
    fn display_reads_well() {
        let e = classify(403, r#"{"message":"draft version already exists"}"#);
        assert_eq!(
            e.to_string(),
            "POST /1/apps/{secret}/versions: 403 Forbidden: draft version already exists"
        );
        let e = classify(
            400,
            r#"{"message":"label is missing","symbol":"param_missing"}"#,
        );
        assert_eq!(e.message(), "label is missing");
        assert_eq!(e.symbol(), Some("param_missing"));
        assert_eq!(
            e.to_string(),
            "POST /1/apps/{secret}/versions: 400 Bad Request: label is missing (param_missing)"
        );
        let e = classify(502, "<html>Bad gateway</html>");
        assert_eq!(e.message(), "<html>Bad gateway</html>");
        let e = classify(500, "");
        assert_eq!(
            e.to_string(),
            "POST /1/apps/{secret}/versions: 500 Internal Server Error"
        );
        let e = ApiError::new(
            Endpoint::UploadChunk,
            ErrorKind::Transient { retry_after: None },
            "stalled",
        );
        assert_eq!(e.to_string(), "POST /1/uploads/{id}/chunk: stalled");
    }

    #[test]
    fn long_messages_are_cut() {
        let e = classify(500, &"x".repeat(10_000));
        assert!(e.message().chars().count() <= MAX_MESSAGE_CHARS + 1);
    }

    #[test]
    fn retry_safety_table() {
        assert!(Endpoint::GetVersion.retry_safe());
        assert!(Endpoint::PatchVersion.retry_safe());
        assert!(Endpoint::CreateUpload.retry_safe());
        assert!(Endpoint::UploadChunk.retry_safe());
        assert!(!Endpoint::CreateVersion.retry_safe());
        assert!(!Endpoint::StartProcessing.retry_safe());
        assert!(!Endpoint::Publish.retry_safe());
        assert!(!Endpoint::CreateApp.retry_safe());
        assert_eq!(
            Endpoint::StartProcessing.to_string(),
            "PUT /1/apps/{secret}/versions/{id}/content_file"
        );
    }
}
