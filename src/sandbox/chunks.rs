//! `POST /1/uploads/{id}/chunk`, the only route of the upload listener.
//!
//! Owns the chunk checks (Content-Range syntax and bounds, length, MD5) and
//! writing accepted bytes into the upload's file at their offset. Only the
//! chunk being received is held in memory. Knows nothing about versions or
//! processing.

use std::io::{Seek, SeekFrom, Write};
use std::sync::Arc;

use axum::extract::multipart::MultipartRejection;
use axum::extract::{DefaultBodyLimit, Multipart, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Extension, Json, Router};
use bytes::Bytes;
use md5::{Digest, Md5};
use serde_json::{Value, json};

use super::api::{ApiError, Caller};
use super::state::Shared;

/// Set by the gate when the fault injector wants this chunk refused with 412.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Chunk412(pub bool);

/// The upload listener's routes, with the body limit raised for chunks.
pub(crate) fn routes(max_chunk_bytes: usize) -> Router<Arc<Shared>> {
    Router::new().route(
        "/1/uploads/{id}/chunk",
        post(upload_chunk).layer(DefaultBodyLimit::max(max_chunk_bytes)),
    )
}

/// A parsed `Content-Range: bytes START-END[/TOTAL]`, END inclusive.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ContentRange {
    pub start: u64,
    pub end: u64,
    pub total: Option<u64>,
}

pub(crate) fn parse_content_range(raw: &str) -> Option<ContentRange> {
    let rest = raw.strip_prefix("bytes ")?;
    let (range, total) = match rest.split_once('/') {
        Some((range, total)) => (range, Some(number(total)?)),
        None => (rest, None),
    };
    let (start, end) = range.split_once('-')?;
    Some(ContentRange {
        start: number(start)?,
        end: number(end)?,
        total,
    })
}

/// Digits only: `u64::from_str` would also take a leading `+`.
fn number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

async fn upload_chunk(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Extension(fault): Extension<Chunk412>,
    Path(raw_id): Path<String>,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let mut multipart = multipart.map_err(|e| {
        ApiError::bad_request(
            "bad_content_type",
            format!(
                "a chunk must be sent as multipart/form-data: {}",
                e.body_text()
            ),
        )
    })?;
    // The whole body is read before any check, so that a refusal reaches a
    // client that is still sending instead of a reset connection.
    let mut chunk: Option<Bytes> = None;
    let mut md5: Option<String> = None;
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| ApiError::new(e.status(), "bad_form", e.body_text()))?
    {
        match field.name() {
            Some("chunk") => {
                chunk = Some(
                    field
                        .bytes()
                        .await
                        .map_err(|e| ApiError::new(e.status(), "bad_form", e.body_text()))?,
                )
            }
            Some("md5") => {
                md5 = Some(
                    field
                        .text()
                        .await
                        .map_err(|e| ApiError::new(e.status(), "bad_form", e.body_text()))?,
                )
            }
            _ => {}
        }
    }

    let key = caller.require()?.to_owned();
    let (path, total) = {
        let state = shared.lock();
        let upload = raw_id
            .parse::<u64>()
            .ok()
            .and_then(|id| state.uploads.get(&id))
            .ok_or_else(|| ApiError::not_found(format!("upload {raw_id} not found")))?;
        if upload.owner != key {
            return Err(ApiError::forbidden(
                "forbidden",
                format!("this API key has no access to upload {raw_id}"),
            ));
        }
        (upload.path.clone(), upload.total)
    };
    let id = raw_id.parse::<u64>().expect("parsed above");

    let raw_range = headers
        .get("content-range")
        .ok_or_else(|| ApiError::bad_request("bad_range", "missing Content-Range header"))?
        .to_str()
        .unwrap_or("");
    let range = parse_content_range(raw_range).ok_or_else(|| {
        ApiError::bad_request(
            "bad_range",
            format!("malformed Content-Range {raw_range:?}: expected \"bytes START-END/TOTAL\""),
        )
    })?;
    let chunk = chunk.ok_or_else(|| {
        ApiError::bad_request("missing_parameter", "multipart part chunk is required")
    })?;
    if range.start > range.end {
        return Err(ApiError::bad_request(
            "bad_range",
            format!(
                "Content-Range start {} is after its end {}",
                range.start, range.end
            ),
        ));
    }
    if let Some(t) = range.total
        && t != total
    {
        return Err(ApiError::bad_request(
            "bad_range",
            format!("Content-Range total {t} differs from the upload's total_size_bytes {total}"),
        ));
    }
    if range.end >= total {
        return Err(ApiError::bad_request(
            "bad_range",
            format!(
                "Content-Range end {} is out of bounds for an upload of {total} bytes",
                range.end
            ),
        ));
    }
    let expected = range.end - range.start + 1;
    if expected != chunk.len() as u64 {
        return Err(ApiError::bad_request(
            "bad_range",
            format!(
                "Content-Range covers {expected} bytes but the chunk holds {}",
                chunk.len()
            ),
        ));
    }
    if let Some(md5) = md5 {
        let actual = crate::patchkit::lower_hex(&Md5::digest(&chunk));
        if !md5.trim().eq_ignore_ascii_case(&actual) {
            return Err(ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                "md5_mismatch",
                format!("chunk MD5 mismatch: got {md5}, computed {actual}"),
            ));
        }
    }
    if fault.0 {
        shared.lock().stats.faults.injected_412 += 1;
        return Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "md5_mismatch",
            "chunk MD5 mismatch (injected fault): send the chunk again",
        ));
    }

    let start = range.start;
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new().write(true).open(&path)?;
        file.seek(SeekFrom::Start(start))?;
        file.write_all(&chunk)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
    .map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "storage",
            format!("cannot store chunk of upload {id}: {e}"),
        )
    })?;
    let mut state = shared.lock();
    if let Some(upload) = state.uploads.get_mut(&id) {
        upload.add_range(range.start, range.end + 1);
    }
    Ok((StatusCode::CREATED, Json(json!({}))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_forms() {
        let r = |start, end, total| Some(ContentRange { start, end, total });
        assert_eq!(parse_content_range("bytes 0-9/10"), r(0, 9, Some(10)));
        assert_eq!(parse_content_range("bytes 5-9"), r(5, 9, None));
        assert_eq!(parse_content_range("bytes 0-9/*"), None);
        assert_eq!(parse_content_range("bytes +0-9"), None);
        assert_eq!(parse_content_range("0-9/10"), None);
        assert_eq!(parse_content_range("bytes 0-/10"), None);
    }
}
