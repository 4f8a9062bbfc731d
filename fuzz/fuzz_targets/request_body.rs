//! The `POST /api/v4/short_links` body parser on arbitrary bytes: links or problems, never a
//! panic; accepted links are within the batch limit and their targets are header-safe.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shortlinks_server::request::{parse_links, BodyProblem};

fuzz_target!(|body: &[u8]| {
    match parse_links(body) {
        Ok(links) => {
            assert!(!links.is_empty() && links.len() <= shortlinks_core::MAX_BATCH);
            for link in links {
                assert!(link.entity.id > 0);
                assert!(link.target.as_str().bytes().all(|b| b.is_ascii_graphic()));
            }
        }
        Err(BodyProblem::Items(items)) => assert!(items.iter().all(|i| !i.errors.is_empty())),
        Err(_) => {}
    }
});
