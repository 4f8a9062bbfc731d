//! The identifiers every other module names: accounts, users, and CRM entities. Kept apart
//! so that codes, records and stores all depend on them and none on another.

use serde::{Deserialize, Serialize};

/// A CRM account: the unit of isolation. Nothing crosses accounts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AccountId(pub u64);

/// A CRM user, the author of links and notes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct UserId(pub u64);

/// Kinds of CRM entity a link can belong to. Only contacts today; leads and companies can
/// be added as variants without changing stored data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntityType {
    /// A contact: the only type the amoCRM API accepts today.
    Contacts,
}

impl EntityType {
    /// The stable one-byte tag used in storage keys and code derivation.
    pub fn tag(self) -> u8 {
        match self {
            Self::Contacts => 1,
        }
    }

    /// The name used in the HTTP API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Contacts => "contacts",
        }
    }

    /// Parses the HTTP API name.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "contacts" => Some(Self::Contacts),
            _ => None,
        }
    }
}

/// One CRM entity: its type and id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EntityRef {
    /// The entity's type.
    pub kind: EntityType,
    /// The entity's id within its account.
    pub id: u64,
}

impl EntityRef {
    /// A contact.
    pub fn contact(id: u64) -> Self {
        Self { kind: EntityType::Contacts, id }
    }
}
