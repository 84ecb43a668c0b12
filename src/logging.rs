//! Log output: where lines go and what they look like.
//!
//! - Under systemd (`JOURNAL_STREAM` set), plain lines on stderr with a
//!   syslog priority prefix (`<3>` error, `<4>` warning, `<6>` info, `<7>`
//!   debug), no colours and no timestamps: journald adds its own and files
//!   each line under its priority, so `journalctl -p warning` works.
//! - On a terminal, the usual human-friendly lines with colours.
//! - Optionally also daily files in a folder, keeping the newest N.
//!
//! The filter comes from `RUST_LOG` when set, else from the config.
//!
//! Every field (the message included) is written with its control
//! characters escaped ([`crate::text::escaped`]): a file name holding a
//! newline cannot forge a log line, nor an escape sequence repaint the
//! terminal. So every event is one line; a list is logged one event per
//! item.

use std::path::Path;

use tracing::field::Field;
use tracing::{Event, Level, Subscriber};
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::MakeExt;
use tracing_subscriber::fmt::format::{Format, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// Keeps the file writer flushing; drop it only when the program ends.
pub struct LogGuard(#[allow(dead_code)] Option<WorkerGuard>);

/// Sets up logging. `level` is the config's filter; `files` a folder for
/// daily files and how many to keep.
pub fn init(level: &str, files: Option<(&Path, usize)>) -> Result<LogGuard, String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.trim().is_empty() => EnvFilter::try_new(&env)
            .map_err(|e| format!("RUST_LOG={env:?} is not a log filter: {e}"))?,
        _ => EnvFilter::try_new(level).map_err(|e| format!("bad log_level {level:?}: {e}"))?,
    };
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());

    let (file_layer, guard) = match files {
        None => (None, None),
        Some((dir, keep)) => {
            // The appender prunes old files as it starts, and complains on
            // stderr about a folder that is not there yet: make it first.
            std::fs::create_dir_all(dir).map_err(|e| {
                format!(
                    "cannot create the log folder {}: {e}; create it and let the daemon's user \
                     write to it, or remove log_dir",
                    dir.display()
                )
            })?;
            let appender = tracing_appender::rolling::Builder::new()
                .rotation(tracing_appender::rolling::Rotation::DAILY)
                .filename_prefix("patchkit-autopublish")
                .filename_suffix("log")
                .max_log_files(keep)
                .build(dir)
                .map_err(|e| {
                    format!(
                        "cannot write log files in {}: {e}; create the folder and let the \
                         daemon's user write to it, or remove log_dir",
                        dir.display()
                    )
                })?;
            // Lossless: a full buffer slows logging rather than dropping
            // lines, since the file is the audit trail of what was published.
            let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
                .lossy(false)
                .finish(appender);
            let layer = tracing_subscriber::fmt::layer()
                .fmt_fields(escaped_fields())
                .with_writer(writer)
                .with_ansi(false);
            (Some(layer), Some(guard))
        }
    };

    let stderr = tracing_subscriber::fmt::layer()
        .fmt_fields(escaped_fields())
        .with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter).with(file_layer);
    let result = if journald {
        registry
            .with(stderr.with_ansi(false).event_format(SyslogPrefix(
                // The priority prefix is the level.
                Format::default().without_time().with_level(false),
            )))
            .try_init()
    } else {
        registry.with(stderr.with_ansi(terminal)).try_init()
    };
    result.map_err(|e| format!("cannot set up logging: {e}"))?;
    Ok(LogGuard(guard))
}

/// The fields of an event as `message name=value ...`, like the default
/// format, with control characters escaped in every value.
fn escaped_fields() -> impl for<'w> FormatFields<'w> + Send + Sync + 'static {
    tracing_subscriber::fmt::format::debug_fn(
        |writer: &mut Writer<'_>, field: &Field, value: &dyn std::fmt::Debug| {
            // `%` fields and the message format as Display through Debug,
            // `?` fields as Debug (strings quoted and already escaped).
            let text = format!("{value:?}");
            let text = crate::text::escaped(&text);
            match field.name() {
                "message" => write!(writer, "{text}"),
                name => write!(writer, "{}={text}", name.trim_start_matches("r#")),
            }
        },
    )
    .delimited(" ")
}

/// Prefixes each line with its syslog priority, for journald.
struct SyslogPrefix<F>(F);

impl<S, N, F> FormatEvent<S, N> for SyslogPrefix<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let prefix = format!("<{}>", priority(*event.metadata().level()));
        let mut text = String::new();
        self.0.format_event(ctx, Writer::new(&mut text), event)?;
        // journald files every line of stderr as an entry of its own: each
        // line of a multi-line message (a refused config lists one problem
        // per line) needs the prefix, or it is filed as info.
        for line in text.strip_suffix('\n').unwrap_or(&text).split('\n') {
            writeln!(writer, "{prefix}{line}")?;
        }
        Ok(())
    }
}

/// The syslog priority of a level.
fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}
