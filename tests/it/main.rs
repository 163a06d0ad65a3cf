//! Integration tests: the real proxy and real backends over loopback sockets.

mod common;

mod admin;
mod cli;
mod config_files;
mod health;
mod http;
mod lifecycle;
mod tcp;
