//! The daemon's log output: lines go through a bounded queue to a writer thread, so a log
//! that cannot keep up or cannot be written (a closed pipe, a full disk, a stalled journald)
//! costs lines, never the node. Every line lost is counted in `meshd_log_dropped_total`.

use std::io::{self, IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// Lines queued for the writer thread before new ones are dropped: a few MiB at most, and
/// about a second of the heaviest debug logging, so a stalled reader never grows memory.
const LOG_QUEUE_LINES: usize = 16_384;

/// Lines the writer thread could not write (the queue's own drops are counted apart).
static WRITE_FAILURES: AtomicU64 = AtomicU64::new(0);

/// The queue's count of lines dropped because it was full.
static QUEUE_DROPS: OnceLock<ErrorCounter> = OnceLock::new();

/// Lines logged and lost so far: refused by a full queue or failed to write.
pub fn dropped() -> u64 {
    let queued = QUEUE_DROPS.get().map_or(0, |c| c.dropped_lines() as u64);
    WRITE_FAILURES.load(Ordering::Relaxed) + queued
}

/// Standard error that never fails: a write that does not go through is counted and the line
/// forgotten (the standard library would have `eprintln!` panic, and tracing-subscriber's
/// own error report is an `eprintln!`).
struct LossyStderr;

impl Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if io::stderr().lock().write_all(buf).is_err() {
            WRITE_FAILURES.fetch_add(1, Ordering::Relaxed);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = io::stderr().flush();
        Ok(())
    }
}

/// Installs the global subscriber; the guard flushes what is queued when dropped, so it
/// lives until the process ends.
pub fn init(format: LogFormat, level: Option<&str>) -> Result<WorkerGuard, String> {
    let filter = match level {
        Some(l) => EnvFilter::try_new(l).map_err(|e| format!("log-level: {e}"))?,
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("meshd-log")
        .finish(LossyStderr);
    let _ = QUEUE_DROPS.set(writer.error_counter());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(io::stderr().is_terminal())
        .log_internal_errors(false)
        .with_writer(writer);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    Ok(guard)
}

/// A message to the operator on standard error that cannot panic (`eprintln!` does when
/// standard error is closed).
pub fn say(msg: impl std::fmt::Display) {
    let _ = writeln!(io::stderr(), "{msg}");
}
