//! Process logging: every log line (request, decision, lifecycle) goes through one
//! non-blocking writer, so a request never waits for stderr or a slow log pipe.
//!
//! Lines are handed to a dedicated thread through a bounded queue (`log_queue_lines`,
//! default [`QUEUE_LINES`]); when the queue is full the line is dropped and counted, and
//! the count is exported as `gatehouse_log_dropped_lines_total` (see [`export_metrics`]).
//! The returned guard flushes what is queued when the process stops cleanly.

use std::sync::OnceLock;

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};

use crate::config::LogFormat;

/// Default for `log_queue_lines`: lines the writer holds before it starts dropping.
pub const QUEUE_LINES: usize = 65_536;

static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Installs the global subscriber (filter from `GATEHOUSE_LOG`, default `info`) writing
/// to stderr through the non-blocking writer. Keep the guard alive until exit.
pub fn init(format: LogFormat, queue_lines: usize) -> WorkerGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GATEHOUSE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(queue_lines.max(1))
        .thread_name("gatehouse-log")
        .finish(std::io::stderr());
    // A second init in one process (tests) keeps the first counter; harmless.
    let _ = DROPPED.set(writer.error_counter());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(writer);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    guard
}

/// Publishes the lines dropped since start (0 before [`init`]) to the metrics registry;
/// called when `/metrics` renders, never on a request's path.
pub fn export_metrics() {
    let dropped = DROPPED.get().map_or(0, ErrorCounter::dropped_lines);
    metrics::counter!("gatehouse_log_dropped_lines_total").absolute(dropped as u64);
}
