//! handoff: an upgrade-aware L4/L7 load balancer.
//!
//! Reading order:
//! - [`config`]: the YAML file, validated into runtime types (`load`, used by run, check and reload).
//! - [`pool`]: nodes with their two state dimensions, session accounting, node selection.
//! - [`snapshot`]: the immutable routing view behind one `ArcSwap`.
//! - [`app`]: starts the app on caller-bound sockets, owns the snapshot, applies reloads.
//! - [`access_log`]: one line per request, session and tunnel, queued to one writer thread.
//! - [`proxy`]: accept loops, TCP and HTTP proxying, on a [`proxy::DataPlane`] handle (snapshot, shutdown).
//! - [`workers`]: the data path's threads, one single-threaded runtime each, a connection
//!   kept on one for its life.
//! - [`health`]: active checks feeding node health and version.
//! - [`control`]: the narrow handle the control plane works through (snapshot, metrics, state store).
//! - [`lifecycle`]: drain, enable with warmup, the pair guard, TCP rebalance.
//! - [`rollout`]: the per-pool upgrade state machine; [`persist`]: the state file.
//! - [`cluster`]: several instances sharing admin state, rollouts and members through etcd.
//! - [`admin`]: the admin HTTP API; [`metrics`]: Prometheus families; [`events`]: what
//!   happened, as a stream (`/v1/events`).
//! - [`shutdown`]: token tree, task tracker, lifecycle phase.
//! - [`cli`]: `run`, `check`, `demo`, `ctl`.
//! - [`gated`]: a future polled only when its own waker fired (control signals in I/O loops).
//! - [`tickets`]: TLS session ticket keys that outlive the process and reach every instance.
//! - [`time`]: Unix milliseconds, total RFC 3339, checked deadline arithmetic.
//! - [`upgrade`]: self-upgrade: sockets and runtime state handed to a new process.
//! - [`memory`]: freed memory given back to the system after a burst of connections.
//! - [`members`]: nodes added, changed and removed at runtime, as a difference from the file;
//!   [`discovery`]: a pool's nodes following a DNS name.
//! - [`child`]: child processes in a group of their own (rollout hooks), killed as a whole.
//!
//! `unsafe` is in two places only: `upgrade::fds` (SCM_RIGHTS) and `memory::trim`
//! (`malloc_trim`).
#![deny(unsafe_code)]
// The crate is read as an application, its private modules included: a module's docs name
// the private parts that do its work, and those links are kept on purpose.
#![allow(rustdoc::private_intra_doc_links)]

pub mod access_log;
pub mod admin;
pub mod app;
pub mod child;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod control;
pub mod discovery;
pub mod events;
pub mod gated;
pub mod health;
pub mod hex;
pub mod lifecycle;
pub mod listener_tls;
pub mod members;
#[allow(unsafe_code)]
pub mod memory;
pub mod metrics;
pub mod persist;
pub mod pool;
pub mod proxy;
pub mod rollout;
pub mod session_kind;
pub mod shutdown;
pub mod snapshot;
pub mod tickets;
pub mod time;
pub mod upgrade;
pub mod workers;
