//! Arbitrary bytes on a connection, cut into reads at arbitrary points: the redirect lane
//! (then hyper, from where the lane stops) must read the same requests as hyper alone, or
//! both none. The first byte says how many of the next ones give the sizes of the reads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shortlinks_server::lane_oracle::check;

fuzz_target!(|data: &[u8]| {
    let Some((&count, rest)) = data.split_first() else { return };
    let (cuts, bytes) = rest.split_at(usize::from(count % 8).min(rest.len()));
    check(bytes, cuts);
});
