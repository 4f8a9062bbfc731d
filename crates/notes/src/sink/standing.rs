//! A sink's state as the store keeps it (`sink.state:<label>`): the last change any node
//! saw, with when, so that every node's operator commands (`shortlinks amocrm status`)
//! see it, not only the node whose worker met it. Written when a worker's state changes,
//! which is rare (a pause, a refused token, an uninstall), never per delivery.

use serde::{Deserialize, Serialize};
use shortlinks_core::store::{decode, encode, CredentialStore};
use shortlinks_core::Timestamp;

use crate::stats::SinkState;

/// The store's name for the state of the sink labelled `label` (`amocrm:7`).
fn name(label: &str) -> String {
    format!("sink.state:{label}")
}

/// A sink's state, as a node last saw it change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Standing {
    /// `connected`, `paused`, `needs_reconnect`, `refused` or `disconnected`.
    pub state: String,
    /// Since when (Unix seconds).
    pub since: u64,
    /// Until when a pause lasts (Unix seconds), if it is one.
    pub until: Option<u64>,
}

/// Records that the sink `label` entered `state` now.
pub(crate) async fn publish<S: CredentialStore>(
    store: &S,
    label: &str,
    state: SinkState,
    until_ms: Option<u64>,
) -> Result<(), shortlinks_core::Error> {
    let standing = Standing {
        state: state.name().to_owned(),
        since: Timestamp::now().as_secs(),
        until: until_ms.map(|ms| ms / 1000),
    };
    let (name, bytes) = (name(label), encode(&standing)?);
    loop {
        let current = store.credential(&name).await?;
        if store.swap_credential(&name, current, bytes.clone()).await? {
            return Ok(());
        }
    }
}

/// The sink `label`'s last recorded state, if one was.
pub async fn read<S: CredentialStore>(store: &S, label: &str) -> Result<Option<Standing>, shortlinks_core::Error> {
    match store.credential(&name(label)).await? {
        Some(bytes) if !bytes.is_empty() => Ok(Some(decode(&bytes)?)),
        _ => Ok(None),
    }
}
