//! The request decoder: line splitting and parsing of hostile bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use splitsign::protocol::{Frame, LineSplitter, parse_request};

fuzz_target!(|data: &[u8]| {
    let mut s = LineSplitter::new(4096);
    while let Some(frame) = s.next(data) {
        match frame {
            Frame::Line(line) => {
                let _ = parse_request(line);
            }
            Frame::TooLong => break,
        }
    }
    let _ = parse_request(data);
});
