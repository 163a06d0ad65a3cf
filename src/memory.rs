//! Giving memory back after a burst of connections (an attack, a load spike). Buffers are
//! freed when their connection goes idle or closes, but glibc's allocator keeps freed
//! pages below the top of its heaps mapped for reuse, so RSS would stay at the burst's
//! peak. Every few seconds the control plane looks at the open client connections; when
//! at least [`TRIM_AFTER`] fewer are open than at the last peak, the freed pages go back to
//! the system (`malloc_trim`), and the threads cut their free lists of buffers (long enough
//! for 1,000 requests in flight) back to 256 × 16 KiB each: the thread that looks at once,
//! before it trims (with `--threads 1`, that is all of them), each worker thread (see
//! [`crate::workers`]) as soon as it runs the task sent to it, any other thread at its next
//! request; the next look trims again, for what those let go of. What stays by design:
//! those 4 MiB per thread.

use prometheus::core::Collector;

/// Closed connections since the peak that make a trim worth its cost (a walk of the heap,
/// a millisecond or so for a large one).
const TRIM_AFTER: i64 = 64;

/// Tracks the peak of open connections between trims.
#[derive(Default)]
pub struct Trimmer {
    peak: i64,
    /// The last look trimmed: the free lists were cut back since, so trim once more.
    again: bool,
}

impl Trimmer {
    /// Looks at the open client connections (the listeners' `connections_active` gauges).
    pub fn look(&mut self, metrics: &crate::metrics::Metrics) {
        let open: i64 = metrics
            .listener_connections_active
            .collect()
            .iter()
            .flat_map(|family| family.get_metric())
            .map(|m| m.get_gauge().get_value() as i64)
            .sum();
        if std::mem::take(&mut self.again) {
            trim();
        }
        if open > self.peak {
            self.peak = open;
        } else if self.peak - open >= TRIM_AFTER {
            tracing::debug!(
                peak = self.peak,
                open,
                "connections gone: returning freed memory"
            );
            crate::proxy::codec::buf::shrink_free_lists();
            crate::proxy::codec::buf::cut_free_lists_here();
            if let Some(workers) = crate::workers::get() {
                workers.on_each(crate::proxy::codec::buf::cut_free_lists_here);
            }
            trim();
            self.peak = open;
            self.again = true;
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only releases free memory of the allocator's own heaps; it takes
    // the allocator's locks like any malloc call and touches no memory handed out.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
