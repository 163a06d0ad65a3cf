//! `handoff check -c FILE`: validate without binding anything.

use std::path::Path;

use crate::config::{self, ConfigError};

/// Prints the verdict; returns the exit code (0 valid, 1 invalid).
pub fn check(path: &Path) -> i32 {
    match config::load(path) {
        Ok(c) => {
            println!(
                "{}: ok ({} listener(s), {} pool(s), {} node(s))",
                path.display(),
                c.listeners.len(),
                c.pools.len(),
                c.pools.iter().map(|p| p.nodes.len()).sum::<usize>()
            );
            0
        }
        Err(ConfigError::Invalid(errors)) => {
            for e in &errors {
                eprintln!("{}:{e}", path.display());
            }
            eprintln!("{}: {} error(s)", path.display(), errors.len());
            1
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}
