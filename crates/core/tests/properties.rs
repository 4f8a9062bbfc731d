//! Property tests: derivation, parsing and record encoding.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use proptest::prelude::*;
use shortlinks_core::model::{ApiToken, Click, ClickMethod, Note, NoteBody};
use shortlinks_core::store::{decode, encode};
use shortlinks_core::CodeDeriver;
use shortlinks_core::{
    AccountId, CodeLength, ContactScope, EntityRef, InstallationSecret, Link, ShortCode, TargetUrl, Timestamp, UserId,
};

fn target() -> impl Strategy<Value = TargetUrl> {
    (
        "(http|https)",
        "[a-z]{1,12}(\\.[a-z]{2,5}){1,2}",
        "(/[A-Za-z0-9._~%-]{0,20}){0,4}",
        proptest::option::of("[a-z0-9=&]{0,30}"),
    )
        .prop_map(|(scheme, host, path, query)| {
            let q = query.map(|q| format!("?{q}")).unwrap_or_default();
            TargetUrl::parse(&format!("{scheme}://{host}{path}{q}")).expect("generated URLs are valid")
        })
}

fn code() -> impl Strategy<Value = ShortCode> {
    "[0-9A-Za-z]{8,22}".prop_map(|s| ShortCode::parse(&s).expect("valid"))
}

fn deriver(key: [u8; 32], len: usize) -> CodeDeriver {
    CodeDeriver::new(InstallationSecret::from_bytes(key), CodeLength::new(len).unwrap())
}

fn link() -> impl Strategy<Value = Link> {
    (code(), any::<u64>(), any::<u64>(), target(), any::<u64>(), any::<u64>()).prop_map(
        |(code, a, e, target, at, by)| Link {
            code,
            account: AccountId(a),
            entity: EntityRef::contact(e),
            target,
            created_at: Timestamp(at),
            created_by: UserId(by),
        },
    )
}

fn click() -> impl Strategy<Value = Click> {
    (
        code(),
        any::<u64>(),
        any::<bool>(),
        proptest::option::of(".{0,40}"),
        proptest::option::of(".{0,40}"),
        proptest::option::of("prefetch|prerender"),
        proptest::option::of(any::<std::net::IpAddr>()),
        any::<u64>(),
        proptest::option::of(any::<u8>()),
        proptest::option::of(any::<[u8; 16]>()),
    )
        .prop_map(|(code, at, head, user_agent, referer, prefetch, client_ip, nonce, evidence, visit_key)| Click {
            code,
            at: Timestamp(at),
            method: if head { ClickMethod::Head } else { ClickMethod::Get },
            user_agent,
            referer,
            prefetch,
            client_ip,
            nonce,
            evidence: evidence.map(shortlinks_core::model::BrowserEvidence),
            visit_key,
        })
}

fn note() -> impl Strategy<Value = Note> {
    (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>(), target()).prop_map(
        |(id, a, e, by, at, url)| Note {
            id,
            account: AccountId(a),
            entity: EntityRef::contact(e),
            created_by: UserId(by),
            created_at: Timestamp(at),
            body: NoteBody::LinkFollowed { url },
        },
    )
}

fn token() -> impl Strategy<Value = ApiToken> {
    (
        "[0-9A-Za-z]{1,16}",
        any::<[u8; 32]>(),
        any::<u64>(),
        any::<u64>(),
        proptest::option::of(proptest::collection::vec(any::<u64>(), 0..20)),
        any::<u64>(),
        proptest::option::of(any::<u64>()),
    )
        .prop_map(|(id, hash, a, u, scope, at, revoked)| ApiToken {
            id,
            hash,
            account: AccountId(a),
            user: UserId(u),
            scope: scope.map_or(ContactScope::All, ContactScope::only),
            created_at: Timestamp(at),
            revoked_at: revoked.map(Timestamp),
        })
}

proptest! {
    #[test]
    fn derivation_is_deterministic(key: [u8; 32], len in 8usize..=22, a: u64, e: u64, t in target(), attempt in 0u32..64) {
        let d = deriver(key, len);
        let c1 = d.derive(AccountId(a), EntityRef::contact(e), &t, attempt);
        let c2 = deriver(key, len).derive(AccountId(a), EntityRef::contact(e), &t, attempt);
        prop_assert_eq!(c1, c2);
        prop_assert_eq!(c1.as_str().len(), len);
        prop_assert_eq!(ShortCode::parse(c1.as_str()), Some(c1), "a derived code parses back");
    }

    #[test]
    fn distinct_contacts_get_distinct_codes(key: [u8; 32], a: u64, e1: u64, e2: u64, t in target()) {
        prop_assume!(e1 != e2);
        let d = deriver(key, 12);
        prop_assert_ne!(d.derive(AccountId(a), EntityRef::contact(e1), &t, 0), d.derive(AccountId(a), EntityRef::contact(e2), &t, 0));
    }

    #[test]
    fn the_key_changes_every_code(k1: [u8; 32], k2: [u8; 32], a: u64, e: u64, t in target()) {
        prop_assume!(k1 != k2);
        let entity = EntityRef::contact(e);
        prop_assert_ne!(deriver(k1, 12).derive(AccountId(a), entity, &t, 0), deriver(k2, 12).derive(AccountId(a), entity, &t, 0));
    }

    #[test]
    fn parse_format_round_trip(s in "[0-9A-Za-z]{8,22}") {
        let code = ShortCode::parse(&s).expect("valid");
        prop_assert_eq!(code.as_str(), s.as_str());
        prop_assert_eq!(code.to_string(), s);
    }

    #[test]
    fn parse_never_accepts_a_non_code(s in ".{0,30}") {
        let valid = (8..=22).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric());
        prop_assert_eq!(ShortCode::parse(&s).is_some(), valid);
    }

    #[test]
    fn links_round_trip(l in link()) {
        prop_assert_eq!(decode::<Link>(&encode(&l).unwrap()).unwrap(), l);
    }

    #[test]
    fn clicks_round_trip(c in click()) {
        prop_assert_eq!(decode::<Click>(&encode(&c).unwrap()).unwrap(), c);
    }

    #[test]
    fn notes_round_trip(n in note()) {
        prop_assert_eq!(decode::<Note>(&encode(&n).unwrap()).unwrap(), n);
    }

    #[test]
    fn tokens_round_trip(t in token()) {
        prop_assert_eq!(decode::<ApiToken>(&encode(&t).unwrap()).unwrap(), t);
    }

    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = decode::<Link>(&bytes);
        let _ = decode::<Click>(&bytes);
        let _ = decode::<Note>(&bytes);
        let _ = decode::<ApiToken>(&bytes);
    }

    #[test]
    fn stored_targets_are_always_header_safe(s in ".{0,80}") {
        if let Ok(t) = TargetUrl::parse(&s) {
            prop_assert!(t.as_str().bytes().all(|b| b.is_ascii_graphic()), "{}", t);
            prop_assert!(t.as_str().starts_with("http://") || t.as_str().starts_with("https://"));
        }
    }
}

#[test]
fn decoding_rejects_wrong_versions_truncation_and_trailing_bytes() {
    let l = shortlinks_core::store::conformance::link("AAAAAAAAAAAA", 1, 2, "https://x.example/");
    let bytes = encode(&l).unwrap();
    assert_eq!(bytes[0], 1, "records start with their format version");
    let mut wrong_version = bytes.clone();
    wrong_version[0] = 2;
    assert!(decode::<Link>(&wrong_version).is_err());
    assert!(decode::<Link>(&bytes[..bytes.len() - 1]).is_err());
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert!(decode::<Link>(&trailing).is_err());
    assert!(decode::<Link>(&[]).is_err());
}

#[test]
fn decoding_rechecks_stored_targets() {
    // A record whose target would be unsafe in a Location header is refused on read.
    let good = shortlinks_core::store::conformance::link("AAAAAAAAAAAA", 1, 2, "https://x.example/ab");
    let mut bytes = encode(&good).unwrap();
    let at = bytes.windows(2).position(|w| w == b"ab").unwrap();
    bytes[at] = b'\n';
    assert!(decode::<Link>(&bytes).is_err());
}
