//! The `handoff` binary: parses the command line and hands over to [`handoff::cli`].

use clap::Parser;

fn main() {
    // aws-lc-rs is the only TLS provider handoff is built with; make it the process default.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = handoff::cli::Cli::parse();
    std::process::exit(handoff::cli::main(cli));
}
