//! The Prometheus endpoint: `GET /metrics` in the text exposition format
//! 0.0.4, read from the [`Observer`]'s counters at each scrape.
//!
//! Owns the metric names, their help text and the text format (label
//! escaping included). Knows the observer's [`Counters`]; nothing about the
//! store, the pipeline or PatchKit. Holds no state of its own: a scrape is a
//! snapshot of the counters, so metrics cannot drift from `status`.
//!
//! ```text
//! # HELP patchkit_autopublish_published_total Builds published (or scheduled), by rule.
//! # TYPE patchkit_autopublish_published_total counter
//! patchkit_autopublish_published_total{rule="mygame-windows"} 3
//! ```

use std::fmt::Write;
use std::net::SocketAddr;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::observe::{Counters, Observer};

/// The exposition format's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves `GET /metrics` on `addr` until `cancel` fires. Returns the address
/// bound (the port is chosen when `addr` has port 0) and the server task.
/// Fails, naming the address, when it cannot listen there.
pub async fn serve(
    addr: SocketAddr,
    observer: Observer,
    cancel: CancellationToken,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot serve metrics on {addr}: {e} (check [daemon] metrics)"),
        )
    })?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(observer);
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(cancel.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!("the metrics server on {bound} stopped: {e}");
        }
    });
    Ok((bound, task))
}

async fn scrape(
    axum::extract::State(observer): axum::extract::State<Observer>,
) -> impl IntoResponse {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        render(&observer.counters()),
    )
}

/// The counters in the text exposition format.
pub fn render(c: &Counters) -> String {
    let mut out = String::new();
    family(
        &mut out,
        "patchkit_autopublish_up",
        "gauge",
        "1 while the daemon is running.",
        "",
        [(None, 1)],
    );
    family(
        &mut out,
        "patchkit_autopublish_builds",
        "gauge",
        "Unfinished builds, by state.",
        "state",
        c.builds_by_state
            .iter()
            .map(|(k, v)| (Some(k.as_str()), *v)),
    );
    family(
        &mut out,
        "patchkit_autopublish_bytes_uploaded_total",
        "counter",
        "Bytes acknowledged by PatchKit, over all uploads.",
        "",
        [(None, c.bytes_uploaded)],
    );
    family(
        &mut out,
        "patchkit_autopublish_retries_total",
        "counter",
        "Failed tries that were repeated, by error class.",
        "class",
        c.retries.iter().map(|(k, v)| (Some(k.as_str()), *v)),
    );
    family(
        &mut out,
        "patchkit_autopublish_failures_total",
        "counter",
        "Builds that failed, by rule.",
        "rule",
        c.failures.iter().map(|(k, v)| (Some(k.as_str()), *v)),
    );
    family(
        &mut out,
        "patchkit_autopublish_published_total",
        "counter",
        "Builds published (or scheduled), by rule.",
        "rule",
        c.published.iter().map(|(k, v)| (Some(k.as_str()), *v)),
    );
    family(
        &mut out,
        "patchkit_autopublish_last_success_timestamp_seconds",
        "gauge",
        "Unix time of the last publish, by rule.",
        "rule",
        c.last_success.iter().map(|(k, v)| (Some(k.as_str()), *v)),
    );
    out
}

/// One metric family: HELP, TYPE and a sample per label value (`None`: no
/// label). A family with no samples keeps its HELP and TYPE lines, so the
/// metric is known before it first counts.
fn family<'a>(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    label: &str,
    samples: impl IntoIterator<Item = (Option<&'a str>, u64)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (value, n) in samples {
        match value {
            Some(v) => {
                let _ = writeln!(out, "{name}{{{label}=\"{}\"}} {n}", escape_label(v));
            }
            None => {
                let _ = writeln!(out, "{name} {n}");
            }
        }
    }
}

/// A label value as the format wants it: backslash, double quote and line
/// feed escaped.
pub fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            _ => out.push(c),
        }
    }
    out
}
