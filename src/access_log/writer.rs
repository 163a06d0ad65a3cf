//! The access log's one writer: a thread that takes finished lines off a bounded queue and
//! appends them to the file in batches (NGINX's `buffer=` and `flush=`, Envoy's file sink).
//!
//! The data path only pushes: a full queue drops the line and counts it, never waits. The
//! thread wakes every [`FLUSH_EVERY`], or sooner when the queue fills past a quarter, and
//! writes whatever is queued in as few `write(2)` calls as it can, each holding whole lines.
//! The file is opened with `O_APPEND`, so two processes (the generations of a self-upgrade)
//! appending to it never interleave inside a write. A write or open that fails (a full
//! disk, a removed directory) loses the batch, counts its lines, and is logged once until
//! writing works again.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;
use prometheus::IntCounter;

use crate::config::{AccessLogConfig, LogFormat, LogTarget};
use crate::metrics::Metrics;

/// Lines that may wait for the writer; past it, lines are dropped and counted.
pub const QUEUE_LINES: usize = 65_536;
/// How long a line may wait in the queue when traffic is light.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// One write(2) carries at most about this many bytes (whole lines).
const BATCH: usize = 256 * 1024;
/// Line buffers kept for reuse, so a busy data path does not allocate one per request.
const FREE_LINES: usize = 4096;
/// A line buffer that grew past this (a very long URL) is not kept for reuse.
const KEEP_CAPACITY: usize = 4096;
/// After a failed open, how long before trying again.
const REOPEN_AFTER: Duration = Duration::from_secs(1);

/// The access log: the queue the data path pushes finished lines into, and its writer.
pub struct AccessLog {
    shared: Arc<Shared>,
    pub format: LogFormat,
    /// The writer thread, joined by [`AccessLog::close`].
    writer: Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    lines: ArrayQueue<Vec<u8>>,
    free: ArrayQueue<Vec<u8>>,
    target: LogTarget,
    /// The writer thread, to wake it.
    thread: std::sync::OnceLock<Thread>,
    stop: AtomicBool,
    reopen: AtomicBool,
    written: IntCounter,
    dropped_full: IntCounter,
    dropped_error: IntCounter,
    write_errors: IntCounter,
}

impl AccessLog {
    /// Starts the writer for `cfg` (it opens the file itself: a file that cannot be opened
    /// is logged and its lines counted as lost, and serving goes on).
    pub fn start(cfg: &AccessLogConfig, metrics: &Metrics) -> io::Result<Arc<AccessLog>> {
        let shared = Arc::new(Shared {
            lines: ArrayQueue::new(QUEUE_LINES),
            free: ArrayQueue::new(FREE_LINES),
            target: cfg.target.clone(),
            thread: std::sync::OnceLock::new(),
            stop: AtomicBool::new(false),
            reopen: AtomicBool::new(false),
            written: metrics.access_log_lines.with_label_values(&[] as &[&str]),
            dropped_full: metrics
                .access_log_dropped
                .with_label_values(&["queue_full"]),
            dropped_error: metrics
                .access_log_dropped
                .with_label_values(&["write_error"]),
            write_errors: metrics
                .access_log_write_errors
                .with_label_values(&[] as &[&str]),
        });
        let inner = Arc::clone(&shared);
        let handle = thread::Builder::new()
            .name("access-log".into())
            .spawn(move || inner.run())?;
        let _ = shared.thread.set(handle.thread().clone());
        Ok(Arc::new(AccessLog {
            shared,
            format: cfg.format,
            writer: Mutex::new(Some(handle)),
        }))
    }

    /// Whether this log writes what `cfg` asks for (a reload keeps it then).
    pub fn serves(&self, cfg: &AccessLogConfig) -> bool {
        self.shared.target == cfg.target && self.format == cfg.format
    }

    /// An empty line buffer, reused when one is free.
    pub fn buffer(&self) -> Vec<u8> {
        self.shared
            .free
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(512))
    }

    /// Queues a finished line (ending in `\n`); never waits.
    pub fn push(&self, line: Vec<u8>) {
        let shared = &self.shared;
        if shared.lines.push(line).is_err() {
            shared.dropped_full.inc();
            return;
        }
        // Woken early only when lines pile up; otherwise the timed wake-up collects them
        // (a wake-up per request would cost a system call per request).
        if shared.lines.len() == QUEUE_LINES / 4 {
            shared.wake();
        }
    }

    /// Closes and opens the file again (SIGUSR1, after logrotate moved it).
    pub fn reopen(&self) {
        self.shared.reopen.store(true, Ordering::Release);
        self.shared.wake();
    }

    /// Writes every line queued so far, then stops the writer and waits for it. Lines pushed
    /// after this are dropped and counted.
    pub fn close(&self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake();
        let handle = self
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

impl Drop for AccessLog {
    /// Replaced by a reload: the writer finishes what is queued and ends on its own.
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake();
    }
}

/// The running access log, if any, as the data path finds it: a flag it tests first, so a
/// request costs one relaxed load when the log is off (an `ArcSwap` load costs more).
#[derive(Default)]
pub struct Slot {
    on: AtomicBool,
    log: arc_swap::ArcSwapOption<AccessLog>,
}

impl Slot {
    /// The log, when there is one.
    #[inline]
    pub fn get(&self) -> Option<Arc<AccessLog>> {
        if !self.on.load(Ordering::Relaxed) {
            return None;
        }
        self.log.load_full()
    }

    #[inline]
    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// Puts `log` in place; the one it replaces is returned.
    pub fn replace(&self, log: Option<Arc<AccessLog>>) -> Option<Arc<AccessLog>> {
        let on = log.is_some();
        let old = self.log.swap(log);
        self.on.store(on, Ordering::Relaxed);
        old
    }
}

/// Where the writer writes.
enum Sink {
    Stdout,
    File(File),
    /// Not open (the open failed at `since`).
    Closed {
        since: Instant,
    },
}

/// A write that failed after `whole` lines of its batch went out.
struct Partial {
    whole: u64,
    error: io::Error,
}

/// Writes whole lines; when the file stops taking them (a full disk) after part of one,
/// ends that part with a newline if it can, so the lines after it stay whole.
fn write_lines(f: &mut File, batch: &[u8]) -> Result<(), Partial> {
    let mut written = 0;
    while written < batch.len() {
        let error = match f.write(&batch[written..]) {
            Ok(0) => io::ErrorKind::WriteZero.into(),
            Ok(n) => {
                written += n;
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => e,
        };
        if written > 0 && batch[written - 1] != b'\n' {
            let _ = f.write(b"\n");
        }
        let whole = memchr::memchr_iter(b'\n', &batch[..written]).count() as u64;
        return Err(Partial { whole, error });
    }
    Ok(())
}

impl Shared {
    fn wake(&self) {
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }

    fn run(&self) {
        let mut sink = Sink::Closed {
            since: Instant::now() - REOPEN_AFTER,
        };
        let mut failing = false;
        let mut batch: Vec<u8> = Vec::with_capacity(BATCH + KEEP_CAPACITY);
        loop {
            let stopping = self.stop.load(Ordering::Acquire);
            if self.reopen.swap(false, Ordering::AcqRel) {
                sink = Sink::Closed {
                    since: Instant::now() - REOPEN_AFTER,
                };
            }
            let mut lines = 0u64;
            while let Some(mut line) = self.lines.pop() {
                batch.extend_from_slice(&line);
                lines += 1;
                if line.capacity() <= KEEP_CAPACITY {
                    line.clear();
                    let _ = self.free.push(line);
                }
                if batch.len() >= BATCH {
                    self.write(&mut sink, &mut batch, lines, &mut failing);
                    lines = 0;
                }
            }
            if lines > 0 {
                self.write(&mut sink, &mut batch, lines, &mut failing);
            }
            if stopping && self.lines.is_empty() {
                if let Sink::File(f) = &mut sink {
                    let _ = f.flush();
                }
                return;
            }
            thread::park_timeout(FLUSH_EVERY);
        }
    }

    /// Writes `batch` (`lines` whole lines) and empties it; a failure loses them, counted.
    fn write(&self, sink: &mut Sink, batch: &mut Vec<u8>, lines: u64, failing: &mut bool) {
        if let Sink::Closed { since } = sink {
            if since.elapsed() >= REOPEN_AFTER {
                *sink = match self.open() {
                    Ok(s) => s,
                    Err(e) => {
                        self.failed(failing, &e, "opening");
                        Sink::Closed {
                            since: Instant::now(),
                        }
                    }
                };
            }
        }
        let lost = |error| Partial { whole: 0, error };
        let result = match sink {
            Sink::Stdout => io::stdout().lock().write_all(batch).map_err(lost),
            // One write(2) for the batch when the file takes it all (regular files do).
            Sink::File(f) => write_lines(f, batch),
            Sink::Closed { .. } => Err(lost(io::Error::other("the file is not open"))),
        };
        batch.clear();
        match result {
            Ok(()) => {
                self.written.inc_by(lines);
                if std::mem::take(failing) {
                    tracing::info!(target = ?self.target, "access log: writing again");
                }
            }
            Err(Partial { whole, error }) => {
                let whole = whole.min(lines);
                self.written.inc_by(whole);
                self.dropped_error.inc_by(lines - whole);
                if !matches!(sink, Sink::Closed { .. }) {
                    self.failed(failing, &error, "writing");
                }
            }
        }
    }

    fn failed(&self, failing: &mut bool, e: &io::Error, doing: &str) {
        self.write_errors.inc();
        if !std::mem::replace(failing, true) {
            tracing::warn!(target = ?self.target, error = %e, "access log: {doing} failed; lines are lost (counted in handoff_access_log_dropped_total) until it works again");
        }
    }

    fn open(&self) -> io::Result<Sink> {
        match &self.target {
            LogTarget::Stdout => Ok(Sink::Stdout),
            LogTarget::File(path) => OpenOptions::new()
                .append(true)
                .create(true)
                .open(path)
                .map(Sink::File),
        }
    }
}
