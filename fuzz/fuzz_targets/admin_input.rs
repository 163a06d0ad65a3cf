//! Admin request inputs (bodies and the wait query) are parsed or refused; never a panic.
#![no_main]

use handoff::admin::input;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = input::drain(data);
    let _ = input::enable(data);
    let _ = input::rollout(data);
    if let Ok(query) = std::str::from_utf8(data) {
        if let Ok((_, timeout)) = input::wait_query(query) {
            assert!(timeout <= handoff::config::limits::WAIT_TIMEOUT.max);
        }
        let _ = handoff::config::duration::parse(query);
    }
});
