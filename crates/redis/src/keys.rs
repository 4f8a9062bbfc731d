//! The key space. Every key starts with the installation's prefix; keys that one
//! transaction writes together share a `{hash tag}`, so they live in one cluster slot.

use shortlinks_core::model::EntityRef;
use shortlinks_core::{AccountId, ShortCode, TargetUrl};

/// Builds keys under one prefix.
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Self {
        Self { prefix: prefix.to_owned() }
    }

    /// The installation secret.
    pub(crate) fn secret(&self) -> String {
        format!("{}:secret", self.prefix)
    }

    /// One link, by code: the hot path's single read.
    pub(crate) fn link(&self, code: &ShortCode) -> String {
        format!("{}:link:{}", self.prefix, code.as_str())
    }

    /// The tombstones of erased codes, one set.
    pub(crate) fn erased(&self) -> String {
        format!("{}:erased", self.prefix)
    }

    /// The codes erased lately, one stream, for every node's cache of links: trimmed to
    /// the last [`crate::links::ERASURES_KEPT`].
    pub(crate) fn erasures(&self) -> String {
        format!("{}:erasures", self.prefix)
    }

    /// The codes of one entity's links, in a sorted set ordered by code.
    pub(crate) fn links_of(&self, account: AccountId, entity: EntityRef) -> String {
        format!("{}:links:{}:{}:{}", self.prefix, account.0, entity.kind.as_str(), entity.id)
    }

    /// The codes of one account's links to one target, in a sorted set ordered by code;
    /// named by 64 bits of a hash of the target, so that no key holds a URL (a collision
    /// only adds members that the look-up passes over).
    pub(crate) fn links_to(&self, account: AccountId, target: &TargetUrl) -> String {
        let hash = blake3::hash(target.as_str().as_bytes());
        let mut name = format!("{}:to:{}:", self.prefix, account.0);
        for byte in &hash.as_bytes()[..8] {
            name.push_str(&format!("{byte:02x}"));
        }
        name
    }

    /// One queue's stream.
    pub(crate) fn queue(&self, name: &str) -> String {
        format!("{}:queue:{name}", self.prefix)
    }

    /// One entity's notes: an ordered set of `(time, id)` keys and a hash of bodies, under
    /// one hash tag.
    pub(crate) fn notes(&self, account: AccountId, entity: EntityRef) -> (String, String) {
        let tag = format!("{{{}:{}:{}}}", account.0, entity.kind.as_str(), entity.id);
        (format!("{}:notes:{tag}:order", self.prefix), format!("{}:notes:{tag}:body", self.prefix))
    }

    /// The accounts that have notes, one set.
    pub(crate) fn noted_accounts(&self) -> String {
        format!("{}:noted-accounts", self.prefix)
    }

    /// The entities of one account and type that have notes.
    pub(crate) fn noted(&self, account: AccountId, kind: shortlinks_core::EntityType) -> String {
        format!("{}:noted:{}:{}", self.prefix, account.0, kind.as_str())
    }

    /// One rate-limited caller's spent allowance (see `rates`).
    pub(crate) fn rate(&self, key: &str) -> String {
        format!("{}:rate:{key}", self.prefix)
    }

    /// One address's tally (see `AddressLedger`): its most recent contacts and the spans in
    /// which it was a gateway, under one hash tag (one script updates both).
    pub(crate) fn sightings(&self, address: &[u8; 16]) -> (String, String) {
        let tag = hex(address);
        (format!("{}:seen:{{{tag}}}:contacts", self.prefix), format!("{}:seen:{{{tag}}}:spans", self.prefix))
    }

    /// One credential (see `CredentialStore`).
    pub(crate) fn credential(&self, name: &str) -> String {
        format!("{}:credential:{name}", self.prefix)
    }

    /// API tokens, one hash.
    pub(crate) fn tokens(&self) -> String {
        format!("{}:tokens", self.prefix)
    }

    /// The mark of one visit key and the recent notes of its link, under the link's hash
    /// tag: one claim updates both.
    pub(crate) fn visit(&self, link: &[u8; 16], key: &[u8; 16]) -> (String, String) {
        (format!("{}:visit:{{{}}}:{}", self.prefix, hex(link), hex(key)), self.link_notes(link))
    }

    /// The recent notes of one link (see [`Keys::visit`]).
    pub(crate) fn link_notes(&self, link: &[u8; 16]) -> String {
        format!("{}:link-notes:{{{}}}", self.prefix, hex(link))
    }
}

/// Lower-case hex. By table: a dispatcher's batch names keys by hex for every click, and
/// `write!` per byte was a visible share of its time.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

/// A sorted-set member whose byte order is numeric order (members all score 0).
pub(crate) fn ordered_id(id: u64) -> String {
    hex(&id.to_be_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lower_case_and_ordered_ids_sort_as_numbers() {
        assert_eq!(hex(&[0x00, 0x9f, 0xa0, 0xff]), "009fa0ff");
        assert_eq!(ordered_id(0x1234_abcd), "000000001234abcd");
        assert!(ordered_id(9) < ordered_id(10) && ordered_id(255) < ordered_id(256));
    }
}
