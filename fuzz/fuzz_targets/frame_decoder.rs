//! Any bytes a peer can send: the frame decoders and both protocol state machines (the
//! node's and the client's) must answer or close, never panic. `fuzz_one` splits the input into frames by a
//! one-byte length prefix so that sequences (HELLO, requests, DATA) are explored too.
//!
//! Run from the repository root: RUSTC_BOOTSTRAP=1 cargo fuzz run frame_decoder
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ddc_edge::protocol::fuzz_one(data);
});
