#![no_main]
//! Fuzzes oxwork's websocket decoder with permessage-deflate agreed: any input must give
//! messages, "need more" or a rejection, and never more than the message limit inflated.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| oxwork::fuzzing::websocket_deflate(data));
