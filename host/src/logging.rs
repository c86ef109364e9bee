//! Process logging: every log line (request, decision, lifecycle) goes through one
//! non-blocking queue, so a request never waits for stderr or a slow log pipe.
//!
//! A request's thread formats its line (tracing-subscriber's `fmt`, text or JSON) and
//! appends it to a bounded in-memory batch (`log_queue_lines`, default [`QUEUE_LINES`]):
//! one short lock and a copy, no system call and no wake-up. A dedicated thread takes the
//! whole batch every [`BATCH_INTERVAL`] (sooner once it is half full) and writes it to
//! stderr in one go. When the batch is full the line is dropped and counted; the count is
//! exported as `gatehouse_log_dropped_lines_total` (see [`export_metrics`]). The returned
//! guard writes what is queued when the process stops cleanly (docs/decisions.md 61).

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use crate::config::LogFormat;

/// Default for `log_queue_lines`: lines the queue holds before it starts dropping.
pub const QUEUE_LINES: usize = 65_536;

/// How long a line may wait in the queue before the log thread writes it.
pub const BATCH_INTERVAL: Duration = Duration::from_millis(10);

static QUEUE: OnceLock<Arc<Queue>> = OnceLock::new();

/// The lines waiting for the log thread.
struct Queue {
    pending: Mutex<Pending>,
    /// Wakes the log thread early (half full, or closing).
    wake: Condvar,
    limit: usize,
    dropped: AtomicU64,
}

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    lines: usize,
    closed: bool,
}

impl Queue {
    fn new(limit: usize) -> Queue {
        Queue {
            pending: Mutex::default(),
            wake: Condvar::new(),
            limit: limit.max(1),
            dropped: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues one formatted line, or drops and counts it when the queue is full.
    fn push(&self, line: &[u8]) {
        let mut pending = self.lock();
        if pending.lines >= self.limit {
            drop(pending);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        pending.bytes.extend_from_slice(line);
        pending.lines += 1;
        let half_full = pending.lines == self.limit.div_ceil(2);
        drop(pending);
        if half_full {
            self.wake.notify_one();
        }
    }

    /// The log thread: takes the whole batch, writes it outside the lock, until closed.
    fn drain(&self, out: &mut impl Write) {
        let mut batch = Vec::new();
        loop {
            let mut pending = self.lock();
            if !pending.closed && pending.lines < self.limit.div_ceil(2) {
                pending = self
                    .wake
                    .wait_timeout(pending, BATCH_INTERVAL)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            std::mem::swap(&mut pending.bytes, &mut batch);
            pending.lines = 0;
            let closed = pending.closed;
            drop(pending);
            if !batch.is_empty() {
                // Nowhere to report a failing stderr; the next batch tries again.
                let _ = out.write_all(&batch).and_then(|()| out.flush());
                batch.clear();
            }
            if closed && self.lock().bytes.is_empty() {
                return;
            }
        }
    }
}

/// Hands each formatted line to the queue (`fmt` writes one event with one `write_all`).
struct QueueWriter<'a>(&'a Queue);

impl Write for QueueWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.push(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[derive(Clone)]
struct MakeQueueWriter(Arc<Queue>);

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for MakeQueueWriter {
    type Writer = QueueWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        QueueWriter(&self.0)
    }
}

/// Writes what is queued and stops the log thread when dropped.
pub struct LogGuard {
    queue: Arc<Queue>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.queue.lock().closed = true;
        self.queue.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts the log thread writing `queue` to `out`.
fn start(queue: Arc<Queue>, mut out: impl Write + Send + 'static) -> LogGuard {
    let drained = queue.clone();
    let thread = std::thread::Builder::new()
        .name("gatehouse-log".into())
        .spawn(move || drained.drain(&mut out))
        .expect("the log thread starts");
    LogGuard {
        queue,
        thread: Some(thread),
    }
}

/// Installs the global subscriber (filter from `GATEHOUSE_LOG`, default `info`) writing
/// to stderr through the queue. Keep the guard alive until exit.
pub fn init(format: LogFormat, queue_lines: usize) -> LogGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GATEHOUSE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let queue = Arc::new(Queue::new(queue_lines));
    // A second init in one process (tests) keeps the first counter; harmless.
    let _ = QUEUE.set(queue.clone());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(MakeQueueWriter(queue.clone()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    start(queue, std::io::stderr())
}

/// Publishes the lines dropped since start (0 before [`init`]) to the metrics registry;
/// called when `/metrics` renders, never on a request's path.
pub fn export_metrics() {
    let dropped = QUEUE
        .get()
        .map_or(0, |queue| queue.dropped.load(Ordering::Relaxed));
    metrics::counter!("gatehouse_log_dropped_lines_total").absolute(dropped);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink the test can read, and block (like a pipe nobody reads).
    #[derive(Clone, Default)]
    struct Sink {
        written: Arc<Mutex<Vec<u8>>>,
        gate: Arc<Mutex<()>>,
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _open = self.gate.lock().unwrap();
            self.written.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_are_written_in_order_and_a_clean_stop_writes_what_is_queued() {
        let sink = Sink::default();
        let queue = Arc::new(Queue::new(1_000));
        let guard = start(queue.clone(), sink.clone());
        for n in 0..500 {
            QueueWriter(&queue)
                .write_all(format!("line {n}\n").as_bytes())
                .unwrap();
        }
        drop(guard);
        let written = String::from_utf8(sink.written.lock().unwrap().clone()).unwrap();
        let expected: String = (0..500).map(|n| format!("line {n}\n")).collect();
        assert_eq!(written, expected);
        assert_eq!(queue.dropped.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_blocked_writer_never_blocks_a_line_and_the_overflow_is_counted() {
        let sink = Sink::default();
        let blocked = sink.gate.lock().unwrap();
        let queue = Arc::new(Queue::new(8));
        let guard = start(queue.clone(), sink.clone());
        // The first batch reaches the blocked sink; then the queue fills and drops.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while queue.dropped.load(Ordering::Relaxed) == 0 {
            assert!(std::time::Instant::now() < deadline, "nothing was dropped");
            QueueWriter(&queue).write_all(b"x\n").unwrap();
        }
        let dropped = queue.dropped.load(Ordering::Relaxed);
        assert!(dropped >= 1);
        drop(blocked);
        drop(guard);
        let written = sink.written.lock().unwrap().len() / 2;
        assert!((1..=16).contains(&written), "{written} lines written");
    }
}
