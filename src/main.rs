//! The `handoff` binary: parses the command line and hands over to [`handoff::cli`].

use clap::Parser;

fn main() {
    let cli = handoff::cli::Cli::parse();
    std::process::exit(handoff::cli::main(cli));
}
