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

/// The subscriber of [`init`]: `fmt` in `format`, filtered by `filter`, into `writer`.
fn subscriber<W>(
    format: LogFormat,
    filter: tracing_subscriber::EnvFilter,
    ansi: bool,
    writer: W,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'a> tracing_subscriber::fmt::MakeWriter<'a> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    match format {
        LogFormat::Text => Box::new(builder.finish()),
        LogFormat::Json => Box::new(builder.json().finish()),
    }
}

/// Installs the global subscriber (filter from `GATEHOUSE_LOG`, default `info`) writing
/// to stderr through the queue. Keep the guard alive until exit.
pub fn init(format: LogFormat, queue_lines: usize) -> LogGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GATEHOUSE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let queue = Arc::new(Queue::new(queue_lines));
    // A second init in one process (tests) keeps the first queue and format; harmless.
    let _ = QUEUE.set(queue.clone());
    let _ = FORMAT.set(format);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let installed = subscriber(format, filter, ansi, MakeQueueWriter(queue.clone()));
    // As `fmt().init()` does: also the `log` crate's records (dependencies) into it.
    tracing_subscriber::util::SubscriberInitExt::init(installed);
    start(queue, std::io::stderr())
}

/// The format [`init`] installed; decision lines are written in it by hand.
static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// What the request span (`request{id=… method=… path=…}`) of the request being
/// answered says, for lines formatted by hand and for 5xx bodies (its id).
#[derive(Clone)]
pub struct RequestInfo {
    pub id: String,
    pub method: String,
    pub path: String,
}

/// What a caught panic said (its `&str` or `String` payload), for a log line or an error.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    (panic.downcast_ref::<&str>().copied())
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("no message")
}

tokio::task_local! {
    static REQUEST: RequestInfo;
}

/// Runs `answer` as request `info`'s (the HTTP layer, around its request span).
pub async fn in_request<F: std::future::Future>(info: RequestInfo, answer: F) -> F::Output {
    REQUEST.scope(info, answer).await
}

/// What the request being answered is (`None` outside one), to carry it to another thread.
pub fn current_request() -> Option<RequestInfo> {
    REQUEST.try_with(RequestInfo::clone).ok()
}

/// The id of the request being answered (empty outside one).
pub fn request_id() -> String {
    REQUEST.try_with(|r| r.id.clone()).unwrap_or_default()
}

/// One edge decision, as its log line names it (docs/edge.md, "Decision log").
pub struct Decision<'a> {
    pub tenant: &'a str,
    pub idp: &'a str,
    pub kid: &'a str,
    pub subject_kind: &'a str,
    pub subject_id: &'a str,
    pub decision: &'a str,
    pub reason: &'a str,
    pub latency_us: u64,
    pub cache_hit: bool,
}

const DECISION_TARGET: &str = "gatehouse::decision";

thread_local! {
    /// The line being formatted, and the timestamp's date and time up to the second
    /// (`2026-12-03T16:01:15.`) for the second it was made in.
    static LINE: std::cell::RefCell<(Vec<u8>, u64, String)> =
        const { std::cell::RefCell::new((Vec::new(), u64::MAX, String::new())) };
}

/// Logs one decision (target `gatehouse::decision`, INFO; `GATEHOUSE_LOG` filters it like
/// any line). Once [`init`] ran, the line is formatted here, byte for byte as `fmt` would
/// in the installed format and request span, into a reused buffer, and queued: `fmt`'s
/// field visitors and span lookups were the largest cost of an allowed decision
/// (decision 61). ANSI colours, used only on a terminal, are left out of these lines.
pub fn decision(d: &Decision<'_>) {
    let (Some(queue), Some(format)) = (QUEUE.get(), FORMAT.get()) else {
        // No queue of ours (a test's own subscriber): the ordinary event.
        decision_event(d);
        return;
    };
    if !tracing::enabled!(target: DECISION_TARGET, tracing::Level::INFO) {
        return;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let _ = REQUEST
        .try_with(|request| emit(queue, *format, now, Some(request), d))
        .map_err(|_| emit(queue, *format, now, None, d));
}

/// The decision as a `tracing` event: the line [`format_decision`] reproduces.
fn decision_event(d: &Decision<'_>) {
    tracing::info!(
        target: DECISION_TARGET,
        tenant = d.tenant,
        idp = d.idp,
        kid = d.kid,
        subject_kind = d.subject_kind,
        subject_id = d.subject_id,
        decision = d.decision,
        reason = d.reason,
        latency_us = d.latency_us,
        cache_hit = d.cache_hit,
    );
}

fn emit(
    queue: &Queue,
    format: LogFormat,
    now: Duration,
    request: Option<&RequestInfo>,
    d: &Decision<'_>,
) {
    LINE.with(|line| {
        let mut line = line.borrow_mut();
        let (buf, second, stamp) = &mut *line;
        if *second != now.as_secs() {
            *second = now.as_secs();
            *stamp = date_time(now.as_secs());
        }
        buf.clear();
        format_decision(buf, format, stamp, now.subsec_micros(), request, d);
        queue.push(buf);
    });
}

/// `YYYY-MM-DDTHH:MM:SS.` of a Unix time (UTC; the civil-from-days algorithm).
fn date_time(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.",
        secs / 3_600,
        secs / 60 % 60,
        secs % 60
    )
}

/// `micros` as `{:06}` writes it (it is below 1,000,000).
fn push_micros(out: &mut Vec<u8>, micros: u32) {
    let mut digits = [b'0'; 6];
    let mut rest = micros.min(999_999);
    for digit in digits.iter_mut().rev() {
        *digit = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    out.extend_from_slice(&digits);
}

/// `value` as `{:?}` writes it: quoted, and as is when nothing in it needs escaping
/// (printable ASCII other than `"` and `\`), which is every reason code and id.
fn push_debug_str(out: &mut Vec<u8>, value: &str) {
    if value
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        out.push(b'"');
        out.extend_from_slice(value.as_bytes());
        out.push(b'"');
    } else {
        use std::io::Write as _;
        // Writing into a Vec cannot fail.
        let _ = write!(out, "{value:?}");
    }
}

/// The bytes `fmt` writes for the decision event: `Full` text or JSON.
fn format_decision(
    out: &mut Vec<u8>,
    format: LogFormat,
    stamp: &str,
    micros: u32,
    request: Option<&RequestInfo>,
    d: &Decision<'_>,
) {
    use std::io::Write as _;
    let strings = [
        ("tenant", d.tenant),
        ("idp", d.idp),
        ("kid", d.kid),
        ("subject_kind", d.subject_kind),
        ("subject_id", d.subject_id),
        ("decision", d.decision),
        ("reason", d.reason),
    ];
    // Writing into a Vec cannot fail.
    match format {
        LogFormat::Text => {
            // The same bytes as `write!` with `{:06}`, `{}` and `{:?}`, without `fmt`'s
            // machinery on the hot path.
            out.extend_from_slice(stamp.as_bytes());
            push_micros(out, micros);
            out.extend_from_slice(b"Z  INFO ");
            if let Some(r) = request {
                for (part, value) in [
                    ("request{id=", &r.id),
                    (" method=", &r.method),
                    (" path=", &r.path),
                ] {
                    out.extend_from_slice(part.as_bytes());
                    out.extend_from_slice(value.as_bytes());
                }
                out.extend_from_slice(b"}: ");
            }
            out.extend_from_slice(DECISION_TARGET.as_bytes());
            out.push(b':');
            for (name, value) in strings {
                out.push(b' ');
                out.extend_from_slice(name.as_bytes());
                out.push(b'=');
                push_debug_str(out, value);
            }
            out.extend_from_slice(b" latency_us=");
            out.extend_from_slice(itoa::Buffer::new().format(d.latency_us).as_bytes());
            out.extend_from_slice(if d.cache_hit {
                b" cache_hit=true\n"
            } else {
                b" cache_hit=false\n"
            });
        }
        LogFormat::Json => {
            let _ = write!(
                out,
                r#"{{"timestamp":"{stamp}{micros:06}Z","level":"INFO","fields":{{"#
            );
            for (i, (name, value)) in strings.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                let _ = write!(out, r#""{name}":"#);
                let _ = serde_json::to_writer(&mut *out, value);
            }
            let _ = write!(
                out,
                r#","latency_us":{},"cache_hit":{}}},"target":"{DECISION_TARGET}""#,
                d.latency_us, d.cache_hit
            );
            if let Some(r) = request {
                let mut span = Vec::with_capacity(128);
                span.extend_from_slice(b"{\"id\":");
                let _ = serde_json::to_writer(&mut span, &r.id);
                span.extend_from_slice(b",\"method\":");
                let _ = serde_json::to_writer(&mut span, &r.method);
                span.extend_from_slice(b",\"path\":");
                let _ = serde_json::to_writer(&mut span, &r.path);
                span.extend_from_slice(b",\"name\":\"request\"}");
                out.extend_from_slice(b",\"span\":");
                out.extend_from_slice(&span);
                out.extend_from_slice(b",\"spans\":[");
                out.extend_from_slice(&span);
                out.push(b']');
            }
            out.extend_from_slice(b"}\n");
        }
    }
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

    /// A writer the test reads back.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
        type Writer = Capture;
        fn make_writer(&'a self) -> Capture {
            self.clone()
        }
    }

    /// What `fmt`, configured as [`init`] configures it, writes for the decision event.
    fn through_fmt(format: LogFormat, request: Option<&RequestInfo>, d: &Decision<'_>) -> String {
        let capture = Capture::default();
        let filter = tracing_subscriber::EnvFilter::new("info");
        let installed = subscriber(format, filter, false, capture.clone());
        tracing::subscriber::with_default(installed, || match request {
            Some(r) => {
                let span =
                    tracing::info_span!("request", id = %r.id, method = %r.method, path = %r.path);
                span.in_scope(|| decision_event(d));
            }
            None => decision_event(d),
        });
        let line = capture.0.lock().unwrap().clone();
        String::from_utf8(line).unwrap()
    }

    #[test]
    fn a_decision_line_is_byte_for_byte_what_fmt_writes_in_both_formats() {
        let request = RequestInfo {
            id: "1f2e-17".into(),
            method: "POST".into(),
            path: "/v1/acme/resolve".into(),
        };
        let allow = Decision {
            tenant: "acme",
            idp: "corp",
            kid: "k-1",
            subject_kind: "user",
            subject_id: "usr_01",
            decision: "allow",
            reason: "ok",
            latency_us: 17,
            cache_hit: true,
        };
        let odd = Decision {
            tenant: "acme",
            idp: "",
            kid: "a\"quote\\back\nline\u{1}",
            subject_kind: "",
            subject_id: "Ingeniería ✓",
            decision: "deny",
            reason: "unknown_token",
            latency_us: 123_456,
            cache_hit: false,
        };
        let now = Duration::new(1_796_313_675, 123_456_789);
        let stamp = date_time(now.as_secs());
        for format in [LogFormat::Text, LogFormat::Json] {
            for request in [Some(&request), None] {
                for d in [&allow, &odd] {
                    let expected = through_fmt(format, request, d);
                    let mut line = Vec::new();
                    format_decision(&mut line, format, &stamp, now.subsec_micros(), request, d);
                    let line = String::from_utf8(line).unwrap();
                    // The timestamps differ (fmt reads the clock): compare around them.
                    let at = match format {
                        LogFormat::Text => 0,
                        LogFormat::Json => r#"{"timestamp":""#.len(),
                    };
                    let stamp_len = "2026-12-03T16:01:15.123456Z".len();
                    assert_eq!(line[..at], expected[..at], "{format:?}");
                    assert_eq!(
                        line[at + stamp_len..],
                        expected[at + stamp_len..],
                        "{format:?} {line}"
                    );
                    assert_eq!(&line[at..at + stamp_len], "2026-12-03T16:01:15.123456Z");
                }
            }
        }
    }

    #[test]
    fn the_timestamp_is_the_utc_date_and_time_of_the_second() {
        let rfc3339 = time::format_description::well_known::Rfc3339;
        for unix in [0, 951_782_400, 1_709_164_799, 1_796_313_675, 4_102_444_800] {
            let expected = time::OffsetDateTime::from_unix_timestamp(unix as i64)
                .unwrap()
                .format(&rfc3339)
                .unwrap();
            assert_eq!(date_time(unix), expected.replace('Z', "."), "{unix}");
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
