//! `ShortCode::parse` on arbitrary path text: accepts exactly valid codes, and round-trips them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shortlinks_core::ShortCode;

fuzz_target!(|input: &str| {
    let valid = (8..=22).contains(&input.len()) && input.bytes().all(|b| b.is_ascii_alphanumeric());
    match ShortCode::parse(input) {
        Some(code) => {
            assert!(valid, "accepted {input:?}");
            assert_eq!(code.as_str(), input);
        }
        None => assert!(!valid, "refused {input:?}"),
    }
});
