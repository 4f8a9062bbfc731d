//! Decoding arbitrary bytes as each stored record: an error or a value, never a panic.
//! Whatever decodes must encode and decode back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shortlinks_core::store::{decode, encode};
use shortlinks_core::model::{ApiToken, Click, Link, Note};

fn round_trip<T>(bytes: &[u8])
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    if let Ok(record) = decode::<T>(bytes) {
        let again: T = decode(&encode(&record).expect("encodes")).expect("decodes back");
        assert_eq!(again, record);
    }
}

fuzz_target!(|bytes: &[u8]| {
    round_trip::<Link>(bytes);
    round_trip::<Click>(bytes);
    round_trip::<Note>(bytes);
    round_trip::<ApiToken>(bytes);
});
