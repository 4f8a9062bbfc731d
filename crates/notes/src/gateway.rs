//! One address, many contacts: a person follows their own links; an address that follows
//! links of several contacts within a short time is a mail gateway or scanner fetching
//! everyone's mail, even with a browser's agent and headers. None of those clicks is a
//! visit, the earlier ones in the window included (the hold gives the rule time to see
//! the later ones: see `dispatch`). The store keeps what the rule needs per address in
//! constant space ([`shortlinks_core::store::AddressTally`]).

use shortlinks_core::model::EntityRef;
use shortlinks_core::AccountId;

pub use shortlinks_core::store::AddressRule;

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

    #[test]
    fn contacts_are_told_apart_by_account_and_entity() {
        let a = contact_key(AccountId(1), EntityRef::contact(5));
        assert_eq!(a, contact_key(AccountId(1), EntityRef::contact(5)));
        assert_ne!(a, contact_key(AccountId(2), EntityRef::contact(5)));
        assert_ne!(a, contact_key(AccountId(1), EntityRef::contact(6)));
    }
}
