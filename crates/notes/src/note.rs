//! Notes: stable ids, visit keys, and amoCRM's JSON shape.

use std::io::Write as _;
use std::net::IpAddr;

use serde::Serialize;
use shortlinks_core::model::{Click, Link, Note, NoteBody};
use shortlinks_core::InstallationSecret;

/// Keys derived from the installation secret, one per purpose, so that neither can stand
/// in for the other (nor for the code key).
#[derive(Clone)]
pub struct NoteKeys {
    visit: [u8; 32],
    note: [u8; 32],
}

impl NoteKeys {
    const VISIT_CONTEXT: &'static str = "shortlinks 2026 visit key";
    const NOTE_CONTEXT: &'static str = "shortlinks 2026 note id";

    /// The keys of one installation: every node sharing its store derives the same ones.
    pub fn derive(secret: &InstallationSecret) -> Self {
        Self::new(secret.derive_key(Self::VISIT_CONTEXT), secret.derive_key(Self::NOTE_CONTEXT))
    }

    /// Keys from their bytes: only tests choose them; an installation derives its own.
    pub(crate) fn new(visit: [u8; 32], note: [u8; 32]) -> Self {
        Self { visit, note }
    }

    /// Who clicked which link: a keyed hash of (code, client address, User-Agent). Keyed,
    /// so that the stored value reveals neither address nor agent.
    pub fn visit_key(&self, click: &Click) -> [u8; 16] {
        // The address as text: stored marks are keyed by it.
        let mut text = [0u8; 64];
        let address: &[u8] = match click.client_ip {
            Some(ip) => {
                let len = address_text(ip, &mut text);
                &text[..len]
            }
            None => b"-",
        };
        let agent = click.user_agent.as_deref().unwrap_or("").as_bytes();
        let parts = [click.code.as_bytes(), &[0], address, &[0], agent];
        // One call over one buffer when it fits (agents are cut to 512 bytes): blake3's
        // one-shot hash skips the incremental hasher's setup, a sixth of the time.
        let mut input = [0u8; 640];
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let hash = if len <= input.len() {
            let mut at = 0;
            for part in parts {
                input[at..at + part.len()].copy_from_slice(part);
                at += part.len();
            }
            blake3::keyed_hash(&self.visit, &input[..len])
        } else {
            let mut hasher = blake3::Hasher::new_keyed(&self.visit);
            for part in parts {
                hasher.update(part);
            }
            hasher.finalize()
        };
        let mut key = [0u8; 16];
        key.copy_from_slice(&hash.as_bytes()[..16]);
        key
    }

    /// Which link a click is on, for the ledger's count of notes per link. Keyed like the
    /// visit key; its input, the code alone, never equals a visit key's, which holds two NULs.
    pub fn link_key(&self, click: &Click) -> [u8; 16] {
        let mut key = [0u8; 16];
        key.copy_from_slice(&blake3::keyed_hash(&self.visit, click.code.as_bytes()).as_bytes()[..16]);
        key
    }

    /// A client address as the address ledger keeps it: keyed, so that the store reveals
    /// no address. Its input, the address text alone, never equals a visit key's (two
    /// NULs) or a link key's (a code has neither `.` nor `:`).
    pub fn address_key(&self, ip: IpAddr) -> [u8; 16] {
        let mut text = [0u8; 64];
        let len = address_text(ip, &mut text);
        let mut key = [0u8; 16];
        key.copy_from_slice(&blake3::keyed_hash(&self.visit, &text[..len]).as_bytes()[..16]);
        key
    }

    /// The id of the note a visit becomes. It depends only on the click (its client, time and
    /// nonce), so that a redelivered click yields the same note and two clicks never do;
    /// 53 bits, so that JavaScript reads it exactly.
    pub fn note_id(&self, click: &Click, visit_key: &[u8; 16]) -> u64 {
        let mut hasher = blake3::Hasher::new_keyed(&self.note);
        hasher.update(visit_key);
        hasher.update(&click.at.0.to_be_bytes());
        hasher.update(&click.nonce.to_be_bytes());
        let bytes: [u8; 8] = hasher.finalize().as_bytes()[..8].try_into().unwrap_or_default();
        (u64::from_be_bytes(bytes) & ((1 << 53) - 1)).max(1)
    }

    /// The note a visit becomes.
    pub fn note_for(&self, click: &Click, visit_key: &[u8; 16], link: &Link) -> Note {
        Self::note(self.note_id(click, visit_key), click, link)
    }

    /// The note with this id for a visit: the ORIGINAL URL, the link's author and entity.
    pub fn note(id: u64, click: &Click, link: &Link) -> Note {
        Note {
            id,
            account: link.account,
            entity: link.entity,
            created_by: link.created_by,
            created_at: click.at,
            body: NoteBody::LinkFollowed { url: link.target.clone() },
        }
    }
}

/// Writes `ip` as `Display` does, into `out`; returns the length. IPv4, nearly every
/// click, is spelled out by hand: `fmt` machinery was a visible share of the dispatcher's
/// time per click. The longest IPv6 text is 45 bytes.
fn address_text(ip: IpAddr, out: &mut [u8; 64]) -> usize {
    match ip {
        IpAddr::V4(v4) => {
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out[len] = b'.';
                    len += 1;
                }
                if octet >= 100 {
                    out[len] = b'0' + octet / 100;
                    len += 1;
                }
                if octet >= 10 {
                    out[len] = b'0' + octet / 10 % 10;
                    len += 1;
                }
                out[len] = b'0' + octet % 10;
                len += 1;
            }
            len
        }
        IpAddr::V6(v6) => {
            let mut rest = &mut out[..];
            let _ = write!(rest, "{v6}");
            64 - rest.len()
        }
    }
}

/// A note as amoCRM shows it. Only the ORIGINAL URL appears; never the short link.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct AmoNote<'a> {
    /// Note id.
    pub id: u64,
    /// The contact.
    pub entity_id: u64,
    /// The link's creator.
    pub created_by: u64,
    /// As `created_by`: notes are never edited.
    pub updated_by: u64,
    /// Unix seconds.
    pub created_at: u64,
    /// As `created_at`.
    pub updated_at: u64,
    /// The link's creator, who is responsible for the contact's outreach.
    pub responsible_user_id: u64,
    /// amoCRM's user group; shortlinks has none.
    pub group_id: u64,
    /// `link_followed`.
    pub note_type: &'static str,
    /// `{url}`: the original URL.
    pub params: AmoParams<'a>,
    /// The account.
    pub account_id: u64,
}

/// The `params` of a `link_followed` note.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct AmoParams<'a> {
    /// The original URL.
    pub url: &'a str,
}

impl<'a> AmoNote<'a> {
    /// The amoCRM view of a stored note.
    pub fn of(note: &'a Note) -> Self {
        let NoteBody::LinkFollowed { url } = &note.body;
        Self {
            id: note.id,
            entity_id: note.entity.id,
            created_by: note.created_by.0,
            updated_by: note.created_by.0,
            created_at: note.created_at.as_secs(),
            updated_at: note.created_at.as_secs(),
            responsible_user_id: note.created_by.0,
            group_id: 0,
            note_type: "link_followed",
            params: AmoParams { url: url.as_str() },
            account_id: note.account.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use shortlinks_core::store::conformance;

    use super::*;

    fn keys() -> NoteKeys {
        NoteKeys::new([1; 32], [2; 32])
    }

    #[test]
    fn ids_and_keys_are_stable_and_distinct() {
        let link = conformance::link("AAAAAAAAAAAA", 1, 2, "https://x.example/");
        let click = conformance::click("AAAAAAAAAAAA", 1000);
        let key = keys().visit_key(&click);
        assert_eq!(key, keys().visit_key(&click.clone()));
        let note = keys().note_for(&click, &key, &link);
        assert_eq!(note, keys().note_for(&click, &key, &link), "a redelivered click is the same note");
        assert!(note.id < 1 << 53 && note.id > 0);

        let other_agent = Click { user_agent: Some("other".into()), ..click.clone() };
        assert_ne!(keys().visit_key(&other_agent), key);
        let other_ip = Click { client_ip: Some([10, 0, 0, 1].into()), ..click.clone() };
        assert_ne!(keys().visit_key(&other_ip), key);
        let later = Click { at: shortlinks_core::Timestamp(2000), ..click.clone() };
        assert_ne!(keys().note_for(&later, &key, &link).id, note.id);
        let same_millisecond = Click { nonce: click.nonce + 1, ..click.clone() };
        assert_ne!(keys().note_for(&same_millisecond, &key, &link).id, note.id, "another click, another note");
        assert_ne!(NoteKeys::new([9; 32], [2; 32]).visit_key(&click), key, "keyed");
    }

    /// Visit marks outlive releases: the key must stay the keyed hash of the address as
    /// text, however that text is produced.
    #[test]
    fn the_visit_key_hashes_the_address_as_text() {
        let longest_v6: std::net::IpAddr = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255".parse().unwrap();
        let v4s = [[203, 0, 113, 9], [0, 0, 0, 0], [10, 99, 100, 255], [1, 20, 109, 110]];
        for ip in v4s.into_iter().map(std::net::IpAddr::from).chain([longest_v6, "::1".parse().unwrap()]) {
            let click = Click {
                client_ip: Some(ip),
                user_agent: Some("agent".into()),
                ..conformance::click("AAAAAAAAAAAA", 1000)
            };
            let mut hasher = blake3::Hasher::new_keyed(&[1; 32]);
            hasher.update(b"AAAAAAAAAAAA\0");
            hasher.update(ip.to_string().as_bytes());
            hasher.update(b"\0agent");
            assert_eq!(keys().visit_key(&click)[..], hasher.finalize().as_bytes()[..16], "{ip}");
        }
        // Agents of every length, also past the one-shot buffer, and no address at all.
        for len in [0, 1, 500, 512, 600, 2000] {
            let agent = "a".repeat(len);
            let click =
                Click { client_ip: None, user_agent: Some(agent.clone()), ..conformance::click("AAAAAAAAAAAA", 1) };
            let mut hasher = blake3::Hasher::new_keyed(&[1; 32]);
            hasher.update(b"AAAAAAAAAAAA\0-\0");
            hasher.update(agent.as_bytes());
            assert_eq!(keys().visit_key(&click)[..], hasher.finalize().as_bytes()[..16], "{len}");
        }
    }

    #[test]
    fn the_amocrm_shape_carries_the_original_url_only() {
        let link = conformance::link("AAAAAAAAAAAA", 7, 42, "https://original.example/offer");
        let click = conformance::click("AAAAAAAAAAAA", 1_700_000_123_456);
        let note = keys().note_for(&click, &keys().visit_key(&click), &link);
        let json = serde_json::to_value(AmoNote::of(&note)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "id": note.id, "entity_id": 42, "created_by": 1, "updated_by": 1,
                "created_at": 1_700_000_123u64, "updated_at": 1_700_000_123u64,
                "responsible_user_id": 1, "group_id": 0, "note_type": "link_followed",
                "params": {"url": "https://original.example/offer"}, "account_id": 7
            })
        );
        assert!(!json.to_string().contains("AAAAAAAAAAAA"), "the code never appears in a note");
    }
}
