#![no_main]
//! Fuzzes oxwork's frame decoder: any input must give messages, "need more" or a rejection.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| oxwork::fuzzing::frame(data));
