//! Any text given to the config loader yields a config or errors with positions; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(handoff::config::ConfigError::Invalid(errors)) = handoff::config::parse(text) {
            assert!(!errors.is_empty(), "an invalid config must say why");
        }
    }
});
