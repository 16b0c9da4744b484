#![no_main]
//! Fuzzes oxwork's websocket decoder: any input must give messages, "need more" or a rejection.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| oxwork::fuzzing::websocket(data));
