//! The sharded-checkpoint index parser. Must never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = lorakit::io::checkpoint::parse_index(data);
});
