//! `access_log:`, validated: where lines go and in which format.

use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogConfig {
    pub target: LogTarget,
    pub format: LogFormat,
}

/// Where access log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    Stdout,
    /// A file, opened for appending (relative paths are from the config file's directory).
    File(PathBuf),
}

/// How an access log line is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// One line of space-separated values, strings quoted, `-` for absent ones.
    Text,
}
