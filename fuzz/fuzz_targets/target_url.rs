//! Target validation on arbitrary text: whatever is accepted is header-safe http(s).
#![no_main]

use libfuzzer_sys::fuzz_target;
use shortlinks_core::TargetUrl;

fuzz_target!(|input: &str| {
    if let Ok(target) = TargetUrl::parse(input) {
        let s = target.as_str();
        assert!(s.len() <= 2048);
        assert!(s.bytes().all(|b| b.is_ascii_graphic()), "{s:?}");
        assert!(s.starts_with("http://") || s.starts_with("https://"));
        // The stored form is stable: validating it again changes nothing.
        assert_eq!(TargetUrl::parse(s).expect("stable").as_str(), s);
    }
});
