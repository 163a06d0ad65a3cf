//! Integration tests: the real proxy and real backends over loopback sockets.

mod common;

mod admin;
mod affinity;
mod analysis;
mod cli;
mod cluster;
mod config_files;
mod control;
mod ctl;
mod desync;
mod drain;
mod durable_affinity;
mod events;
mod faults;
mod flood;
mod framing;
mod grpc;
mod health;
mod hostile;
mod http;
mod observability;
mod packaging;
mod rebalance;
mod retries;
mod rollout;
mod shutdown;
mod state_file;
mod state_storm;
mod takeover;
mod tcp;
mod tcp_tls;
mod tls;
mod upstream_tls;
mod warmup;
mod websocket;
