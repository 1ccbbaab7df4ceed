//! The daemon's log output: lines go through a bounded queue to a writer thread, so a log
//! that cannot keep up or cannot be written (a closed pipe, a full disk, a stalled journald)
//! costs lines, never the node. Every line lost is counted in `meshd_log_dropped_total`.
//! Panics are reported through the same queue ([`install_panic_hook`]): the standard hook's
//! synchronous write to standard error would block the panicking thread on a pipe nobody
//! reads.

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

/// Panics reported so far (in any thread: an actor's handler, a task, the runtime).
static PANICS: AtomicU64 = AtomicU64::new(0);

/// Panics reported so far, for `meshd_panics_total`.
pub fn panics() -> u64 {
    PANICS.load(Ordering::Relaxed)
}

/// Replaces the standard panic hook with one that logs through the subscriber (queued, lossy:
/// never a blocking write) at ERROR with the thread, the place and, under `RUST_BACKTRACE`,
/// the backtrace, and counts the panic. An actor's panic is then still handled by its
/// supervisor as before; this changes only how it is reported.
pub fn install_panic_hook() {
    let standard = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::Relaxed);
        // A log filter that leaves the report out (`--log-level meshd_actors=debug`): the
        // standard hook's message rather than none.
        if !tracing::enabled!(target: "meshd::panic", tracing::Level::ERROR) {
            standard(info);
            return;
        }
        let thread = std::thread::current();
        let location = info.location().map(|l| l.to_string()).unwrap_or_default();
        let payload = info.payload();
        let what = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(a panic payload that is not a string)");
        let backtrace = std::backtrace::Backtrace::capture();
        if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
            tracing::error!(target: "meshd::panic", thread = thread.name().unwrap_or("unnamed"), %location, %backtrace, "panic: {what}");
        } else {
            tracing::error!(target: "meshd::panic", thread = thread.name().unwrap_or("unnamed"), %location, "panic: {what}");
        }
    }));
}

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
    let (filter, text) = match level {
        Some(l) => (
            EnvFilter::try_new(l).map_err(|e| format!("log-level: {e}"))?,
            l.to_string(),
        ),
        None => match EnvFilter::try_from_default_env() {
            Ok(f) => (f, std::env::var("RUST_LOG").unwrap_or_default()),
            Err(_) => (EnvFilter::new("info"), "info".into()),
        },
    };
    // ractor wraps every handler in an `Actor{id=...}` span, which would prefix each line
    // with ids that mean nothing to an operator; unless the filter names ractor, its spans
    // and chatter stay below warnings.
    let filter = if text.contains("ractor") {
        filter
    } else {
        match "ractor=warn".parse() {
            Ok(d) => filter.add_directive(d),
            Err(_) => filter,
        }
    };
    // libp2p and its parts log a warning for each malformed message or stream a remote
    // sends: a flood could fill the disk. Unless the filter names them, only their errors
    // show (meshd logs the overlay's events itself).
    let filter = if text.contains("libp2p") {
        filter
    } else {
        [
            "libp2p=error",
            "multistream_select=error",
            "yamux=error",
            "quinn=error",
            "quinn_proto=error",
        ]
        .iter()
        .filter_map(|d| d.parse().ok())
        .fold(filter, |f, d| f.add_directive(d))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Collects what the subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A panic in another thread is reported through the subscriber, with its thread and
    /// place, and counted; the thread still unwinds as before.
    #[test]
    fn a_panic_is_logged_through_the_subscriber_and_counted() {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        install_panic_hook();
        let before = panics();
        let joined = std::thread::Builder::new()
            .name("doomed".into())
            .spawn(|| panic!("boom {}", 7))
            .unwrap()
            .join();
        assert!(joined.is_err(), "the thread unwinds");
        assert_eq!(panics(), before + 1);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(text.contains("panic: boom 7"), "{text}");
        assert!(text.contains("thread=\"doomed\""), "{text}");
        assert!(text.contains("logging.rs"), "{text}");
        let _ = std::panic::take_hook();
    }
}
