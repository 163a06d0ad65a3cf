//! Worker threads for the data path, each with its own single-threaded tokio runtime.
//!
//! With `--threads N` (N > 1) the control plane (admin API, health checks, rollouts,
//! cluster) runs on the main thread's runtime, and each listener's one accept loop hands
//! every accepted connection to the worker with the fewest open connections. The
//! connection's task, and every task it spawns (its backend connections', an HTTP/2
//! backend's), then stays on that worker's thread for its life: no work stealing, no
//! cross-thread wake-ups for its own sockets, its memory warm in that core's caches. NGINX's
//! workers keep their connections the same way. One accept loop per listener keeps one
//! accept queue, which is what a self-upgrade hands over whole.
//!
//! Without workers installed (`--threads 1`, and the tests that start the app in their own
//! runtime) connections are spawned on the current runtime.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::OnceLock;

use tokio::runtime::Handle;

/// The process's workers, once started.
static WORKERS: OnceLock<Workers> = OnceLock::new();

thread_local! {
    /// This thread's worker number (0 on any other thread).
    static INDEX: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The calling thread's worker number, below [`count`] (0 off the workers).
pub fn index() -> usize {
    INDEX.with(std::cell::Cell::get)
}

/// How many workers there are (1 without workers: the current runtime's threads).
pub fn count() -> usize {
    WORKERS.get().map_or(1, |w| w.workers.len())
}

pub struct Workers {
    workers: Box<[Worker]>,
}

struct Worker {
    handle: Handle,
    /// Connections handed to this worker and not yet ended.
    open: AtomicUsize,
}

/// Starts `n` worker threads and installs them for the process (once; a second call
/// changes nothing). Each thread runs its runtime until the process exits.
pub fn start(n: usize) -> io::Result<()> {
    if WORKERS.get().is_some() {
        return Ok(());
    }
    let mut workers = Vec::with_capacity(n);
    for i in 0..n {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = rt.handle().clone();
        std::thread::Builder::new()
            .name(format!("worker-{i}"))
            .spawn(move || {
                INDEX.with(|x| x.set(i));
                rt.block_on(std::future::pending::<()>())
            })?;
        workers.push(Worker {
            handle,
            open: AtomicUsize::new(0),
        });
    }
    let _ = WORKERS.set(Workers {
        workers: workers.into(),
    });
    Ok(())
}

/// The installed workers, if any.
pub fn get() -> Option<&'static Workers> {
    WORKERS.get()
}

impl Workers {
    /// The worker with the fewest open connections, for a new one: its runtime, and its
    /// number, counted as holding the connection until [`Workers::closed`].
    pub fn pick(&self) -> Option<(&Handle, usize)> {
        let (i, worker) = self
            .workers
            .iter()
            .enumerate()
            .min_by_key(|(_, w)| w.open.load(Relaxed))?;
        worker.open.fetch_add(1, Relaxed);
        Some((&worker.handle, i))
    }

    /// A connection [`Workers::pick`] gave worker `i` ended.
    pub fn closed(&self, i: usize) {
        if let Some(w) = self.workers.get(i) {
            let _ = w
                .open
                .fetch_update(Relaxed, Relaxed, |n| Some(n.saturating_sub(1)));
        }
    }

    /// Runs `f` once on every worker's thread (what a thread keeps for itself, such as its
    /// buffer free lists, only it can touch).
    pub fn on_each(&self, f: fn()) {
        for w in self.workers.iter() {
            w.handle.spawn(async move { f() });
        }
    }
}
