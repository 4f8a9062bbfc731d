//! Byte layouts of ordered keys. Integers are big-endian so that byte order is numeric order.

use crate::model::{AccountId, EntityRef, EntityType, Timestamp};

/// `account ‖ type tag`: the prefix of every key about one account's entities of one type.
pub(crate) fn account_type_prefix(account: AccountId, kind: EntityType) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[..8].copy_from_slice(&account.0.to_be_bytes());
    k[8] = kind.tag();
    k
}

/// `account ‖ type tag ‖ entity id`: the prefix of one entity's keys.
pub(crate) fn entity_prefix(account: AccountId, entity: EntityRef) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[..9].copy_from_slice(&account_type_prefix(account, entity.kind));
    k[9..].copy_from_slice(&entity.id.to_be_bytes());
    k
}

/// `entity prefix ‖ code`: one entry of the per-entity link index.
pub(crate) fn link_index_key(account: AccountId, entity: EntityRef, code: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(17 + code.len());
    k.extend_from_slice(&entity_prefix(account, entity));
    k.extend_from_slice(code);
    k
}

/// `entity prefix ‖ created_at ‖ note id`: notes in time order within an entity.
pub(crate) fn note_key(account: AccountId, entity: EntityRef, at: Timestamp, id: u64) -> [u8; 33] {
    let mut k = [0u8; 33];
    k[..17].copy_from_slice(&entity_prefix(account, entity));
    k[17..25].copy_from_slice(&at.0.to_be_bytes());
    k[25..].copy_from_slice(&id.to_be_bytes());
    k
}

/// The entity id inside a note key, for skipping entities a query does not want.
pub(crate) fn entity_id_of(note_key: &[u8]) -> Option<u64> {
    note_key.get(9..17).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes)
}
