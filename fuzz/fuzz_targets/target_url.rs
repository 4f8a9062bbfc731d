//! Target validation on arbitrary text: whatever is accepted is header-safe http(s).
#![no_main]

use libfuzzer_sys::fuzz_target;
use shortlinks_core::{TargetUrl, MAX_NORMALIZED_BYTES};

fuzz_target!(|input: &str| {
    if let Ok(target) = TargetUrl::parse(input) {
        let s = target.as_str();
        assert!(s.len() <= MAX_NORMALIZED_BYTES);
        assert!(s.bytes().all(|b| b.is_ascii_graphic()), "{s:?}");
        assert!(s.starts_with("http://") || s.starts_with("https://"));
        // The stored form is stable: reading it back as a stored record changes nothing.
        assert_eq!(TargetUrl::try_from(s.to_owned()).expect("stable").as_str(), s);
    }
});
