//! Integration tests: the real proxy and real backends over loopback sockets.

mod common;

mod admin;
mod affinity;
mod cli;
mod config_files;
mod ctl;
mod drain;
mod faults;
mod flood;
mod health;
mod http;
mod rebalance;
mod retries;
mod rollout;
mod shutdown;
mod state_file;
mod tcp;
mod tls;
mod warmup;
mod websocket;
