//! One address, many contacts: a person follows their own links; an address that follows
//! links of several contacts within a short time is a mail gateway or scanner fetching
//! everyone's mail, even with a browser's agent and headers. None of those clicks is a
//! visit, the earlier ones in the window included (the hold gives the rule time to see
//! the later ones: see `dispatch`).

use std::collections::HashSet;
use std::time::Duration;

use shortlinks_core::model::EntityRef;
use shortlinks_core::{AccountId, Timestamp};

/// At least `contacts` different contacts within `window` from one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddressRule {
    /// How many contacts make a gateway.
    pub contacts: u32,
    /// Within how long.
    pub window: Duration,
}

impl Default for AddressRule {
    /// Three contacts within a minute.
    fn default() -> Self {
        Self { contacts: 3, window: Duration::from_secs(60) }
    }
}

impl AddressRule {
    /// The window in milliseconds.
    pub fn window_ms(&self) -> u64 {
        u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether a click at `at` is a gateway's, given the sightings of its address around it
    /// (`(contact, time)`, any order, its own among them or not): some span of `window`
    /// that holds `at` also holds sightings of at least `contacts` different contacts.
    pub fn vetoes(&self, at: Timestamp, own_contact: u64, sightings: &[(u64, Timestamp)]) -> bool {
        if self.contacts == 0 {
            return false;
        }
        let window = self.window_ms();
        let mut all: Vec<(u64, u64)> = sightings.iter().map(|&(c, t)| (t.0, c)).collect();
        all.push((at.0, own_contact));
        all.sort_unstable();
        // Every span worth checking starts at a sighting within `window` before `at`.
        all.iter().filter(|(t, _)| *t <= at.0 && at.0 - *t <= window).any(|&(start, _)| {
            let contacts: HashSet<u64> =
                all.iter().filter(|(t, _)| *t >= start && *t - start <= window).map(|&(_, c)| c).collect();
            contacts.len() >= self.contacts as usize
        })
    }
}

/// A contact as the address ledger counts it: a hash of the account and the entity.
pub fn contact_key(account: AccountId, entity: EntityRef) -> u64 {
    let mut input = [0u8; 17];
    input[..8].copy_from_slice(&account.0.to_be_bytes());
    input[8] = entity.kind.tag();
    input[9..].copy_from_slice(&entity.id.to_be_bytes());
    let hash = blake3::hash(&input);
    u64::from_be_bytes(hash.as_bytes()[..8].try_into().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Timestamp {
        Timestamp(ms)
    }

    #[test]
    fn three_contacts_within_a_minute_is_a_gateway_for_every_click_in_it() {
        let rule = AddressRule::default();
        // A gateway: contacts 1..=5 within two seconds; each click is vetoed, the first too.
        let gateway: Vec<(u64, Timestamp)> = (1..=5).map(|c| (c, at(1_000 + c * 400))).collect();
        for &(contact, time) in &gateway {
            assert!(rule.vetoes(time, contact, &gateway), "contact {contact}");
        }
        // Two contacts only: people sharing an office address.
        let two = [(1, at(1_000)), (2, at(2_000))];
        assert!(!rule.vetoes(at(1_000), 1, &two) && !rule.vetoes(at(2_000), 2, &two));
        // One person, many links of their own, and the same link again.
        let one = [(1, at(1_000)), (1, at(1_500)), (1, at(30_000)), (1, at(30_001))];
        assert!(!rule.vetoes(at(1_500), 1, &one));
    }

    #[test]
    fn the_window_is_exact() {
        let rule = AddressRule::default();
        // Three contacts, but never three within one minute: 0 s, 59 s, 118 s.
        let spread = [(1, at(0)), (2, at(59_000)), (3, at(118_000))];
        for &(contact, time) in &spread {
            assert!(!rule.vetoes(time, contact, &spread), "{contact}");
        }
        // 0 s, 30 s, 60 s: the third is exactly one window after the first.
        let tight = [(1, at(0)), (2, at(30_000)), (3, at(60_000))];
        assert!(rule.vetoes(at(0), 1, &tight) && rule.vetoes(at(60_000), 3, &tight));
        // Its own click counts even if the ledger has not got it.
        assert!(rule.vetoes(at(2_000), 3, &[(1, at(0)), (2, at(1_000))]));
        assert!(!AddressRule { contacts: 0, ..rule }.vetoes(at(0), 1, &tight), "0 turns it off");
    }

    #[test]
    fn contacts_are_told_apart_by_account_and_entity() {
        let a = contact_key(AccountId(1), EntityRef::contact(5));
        assert_eq!(a, contact_key(AccountId(1), EntityRef::contact(5)));
        assert_ne!(a, contact_key(AccountId(2), EntityRef::contact(5)));
        assert_ne!(a, contact_key(AccountId(1), EntityRef::contact(6)));
    }
}
