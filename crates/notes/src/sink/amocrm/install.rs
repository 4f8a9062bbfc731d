//! The checks of amoCRM's install flow, each a pure function: the signed `state` that
//! binds an authorization to one shortlinks account, the `referer` that says where the
//! amoCRM account is, and the signature of amoCRM's uninstall hook.
//!
//! - `state` is `<account>.<expires>.<generation>.<mac>`: a keyed hash (a key derived from
//!   the installation secret, so every node of a store checks what any node made) over
//!   the rest. `generation` is when the account was last connected: once a state has
//!   connected the account, it no longer matches, so each state connects once.
//! - `referer` is only ever a host under amoCRM's own domains, or one the operator listed:
//!   the server then sends the integration's secret there, so an arbitrary host would be
//!   a way to steal it.
//! - The uninstall hook signs `<client_uuid>|<account_id>` with HMAC-SHA256 under the
//!   integration's secret (amoCRM's developer docs, "disconnect hook").

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use shortlinks_core::{AccountId, InstallationSecret, Timestamp};

use crate::Error;

/// How long an authorization URL may be used: it is often sent to the customer, who may
/// open it the next day.
pub const STATE_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// The hosts of amoCRM's own accounts: `{subdomain}.{domain}`.
pub const AMOCRM_DOMAINS: [&str; 3] = ["amocrm.ru", "amocrm.com", "kommo.com"];

const STATE_CONTEXT: &str = "shortlinks 2026-12 amoCRM install state";

/// Makes and checks `state` values.
#[derive(Clone)]
pub struct StateKey([u8; 32]);

impl StateKey {
    /// The key of an installation.
    pub fn derive(secret: &InstallationSecret) -> Self {
        Self(secret.derive_key(STATE_CONTEXT))
    }

    fn mac(&self, signed: &str) -> String {
        let hash = blake3::keyed_hash(&self.0, signed.as_bytes());
        hash.as_bytes()[..16].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A state for connecting `account`, valid until `expires` (Unix seconds), while the
    /// account was last connected at `generation` (0: never).
    pub fn state(&self, account: AccountId, expires: u64, generation: u64) -> String {
        let signed = format!("{}.{expires}.{generation}", account.0);
        let mac = self.mac(&signed);
        format!("{signed}.{mac}")
    }

    /// The account a state was made for, if it is ours and has not expired at `now`;
    /// the caller still compares the generation with the account's record.
    pub fn check(&self, state: &str, now: Timestamp) -> Result<(AccountId, u64), Error> {
        let refused = || Error::Connect("this authorization link is not one this server made".into());
        let (signed, mac) = state.rsplit_once('.').ok_or_else(refused)?;
        let expected = self.mac(signed);
        // Constant time: a difference must not tell how much of the guess was right.
        if mac.len() != expected.len() || !same(mac.as_bytes(), expected.as_bytes()) {
            return Err(refused());
        }
        let mut parts = signed.split('.').map(str::parse::<u64>);
        let (Some(Ok(account)), Some(Ok(expires)), Some(Ok(generation)), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(refused());
        };
        if expires < now.as_secs() {
            return Err(Error::Connect("this authorization link has expired: ask for a new one".into()));
        }
        Ok((AccountId(account), generation))
    }
}

/// Equal, in a time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The API base of the amoCRM account at `referer` (a host, as amoCRM sends it): under
/// [`AMOCRM_DOMAINS`] over HTTPS, or one of `allowed` (base URLs whose host and port are
/// the referer), and nothing else.
pub fn base_for_referer(referer: &str, allowed: &[String]) -> Result<String, Error> {
    let referer = referer.trim().to_ascii_lowercase();
    if let Some(base) = allowed.iter().find(|base| authority(base).is_some_and(|a| a.eq_ignore_ascii_case(&referer))) {
        return Ok(base.trim_end_matches('/').to_owned());
    }
    let foreign = || Error::Connect(format!("{referer:?} is not an amoCRM account's address"));
    let (subdomain, domain) = referer.split_once('.').ok_or_else(foreign)?;
    let label = !subdomain.is_empty()
        && subdomain.len() <= 63
        && subdomain.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !subdomain.starts_with('-');
    if label && AMOCRM_DOMAINS.contains(&domain) {
        Ok(format!("https://{referer}"))
    } else {
        Err(foreign())
    }
}

/// `host[:port]` of a base URL.
fn authority(base: &str) -> Option<&str> {
    let rest = base.split_once("://")?.1;
    Some(rest.split('/').next().unwrap_or(rest))
}

/// Whether an uninstall hook is amoCRM's for this integration: its `client_uuid` is our
/// client id and `signature` is the hex HMAC-SHA256 of `<client_uuid>|<account_id>` under
/// our client secret.
pub fn uninstall_signed(
    client_id: &str,
    client_secret: &str,
    account_id: &str,
    client_uuid: &str,
    signature: &str,
) -> bool {
    if client_uuid != client_id {
        return false;
    }
    let Some(signature) = hex(signature) else { return false };
    uninstall_mac(client_secret, account_id, client_uuid).verify_slice(&signature).is_ok()
}

/// The hex HMAC-SHA256 amoCRM sends with an uninstall hook (for tests and stand-ins).
pub fn uninstall_signature(client_secret: &str, account_id: &str, client_uuid: &str) -> String {
    let digest = uninstall_mac(client_secret, account_id, client_uuid).finalize().into_bytes();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn uninstall_mac(client_secret: &str, account_id: &str, client_uuid: &str) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(client_secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(format!("{client_uuid}|{account_id}").as_bytes());
    mac
}

fn hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_names_its_account_until_it_expires_and_cannot_be_forged() {
        let key = StateKey::derive(&InstallationSecret::from_bytes([7; 32]));
        let now = Timestamp(1_000_000_000);
        let state = key.state(AccountId(42), now.as_secs() + 60, 9);
        assert_eq!(key.check(&state, now).unwrap(), (AccountId(42), 9));
        let later = Timestamp(now.0 + 61_000);
        assert!(key.check(&state, later).unwrap_err().to_string().contains("expired"));
        // Another account, another expiry or another installation's key: refused.
        let other = StateKey::derive(&InstallationSecret::from_bytes([8; 32]));
        let forged = [
            state.replacen("42.", "43.", 1),
            state.replacen(&format!(".{}.", now.as_secs() + 60), &format!(".{}.", now.as_secs() + 9999), 1),
            other.state(AccountId(42), now.as_secs() + 60, 9),
            "42.9999999999.0.".into(),
            String::new(),
            "from_widget".into(),
        ];
        for bad in forged {
            assert!(key.check(&bad, now).unwrap_err().to_string().contains("not one this server made"), "{bad}");
        }
    }

    #[test]
    fn only_amocrm_hosts_and_listed_ones_are_referers() {
        let allowed = ["http://127.0.0.1:9000/".to_owned()];
        assert_eq!(base_for_referer("shop.amocrm.ru", &[]).unwrap(), "https://shop.amocrm.ru");
        assert_eq!(base_for_referer("Shop-2.kommo.com", &[]).unwrap(), "https://shop-2.kommo.com");
        assert_eq!(base_for_referer("a.amocrm.com", &[]).unwrap(), "https://a.amocrm.com");
        assert_eq!(base_for_referer("127.0.0.1:9000", &allowed).unwrap(), "http://127.0.0.1:9000");
        for foreign in [
            "evil.example",
            "amocrm.ru",
            "a.b.amocrm.ru",
            "shop.amocrm.ru.evil.example",
            "shop.amocrm.ru:8443",
            "evilamocrm.ru",
            "-x.amocrm.ru",
            "shop.amocrm.ru/x",
            "127.0.0.1:9001",
            "",
        ] {
            assert!(base_for_referer(foreign, &allowed).is_err(), "{foreign}");
        }
    }

    #[test]
    fn an_uninstall_hook_is_checked_against_the_client_secret() {
        let signature = uninstall_signature("secret", "123", "client-id");
        assert_eq!(signature.len(), 64);
        assert!(uninstall_signed("client-id", "secret", "123", "client-id", &signature));
        assert!(!uninstall_signed("client-id", "secret", "124", "client-id", &signature), "another account");
        assert!(!uninstall_signed("client-id", "other", "123", "client-id", &signature), "another secret");
        assert!(!uninstall_signed("client-id", "secret", "123", "other-id", &signature), "another integration");
        assert!(!uninstall_signed("client-id", "secret", "123", "client-id", "zz"), "not hex");
        assert!(!uninstall_signed("client-id", "secret", "123", "client-id", ""), "none");
    }
}
