//! Short codes: how they are derived, and how they are parsed from untrusted input.
//!
//! A code is a keyed blake3 hash of the link's identity, written in base62. The key is the
//! per-installation secret, so codes can be neither predicted nor enumerated by anyone
//! without it, while the same identity always yields the same code, which is what makes a
//! retried request idempotent.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::InvalidCodeLength;
use crate::ids::{AccountId, EntityRef};
use crate::target::TargetUrl;
use crate::Error;

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Domain separation, so that this key can never produce the same hash for another purpose.
const DERIVATION_CONTEXT: &[u8] = b"shortlinks/code/v1\0";

/// The context of the key that hashes erased codes into [`Tombstone`]s.
const TOMBSTONE_CONTEXT: &str = "shortlinks 2026-12 tombstone of an erased code";

/// All that is kept of an erased code: a keyed hash of it, so that it answers `410 Gone`
/// and is never issued again, while the code itself is not kept anywhere. 128 bits: two
/// codes sharing one is out of reach, and without the secret the hash names no code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tombstone(pub [u8; 16]);

/// A short code: 1 to [`ShortCode::MAX_LEN`] base62 characters, stored inline.
///
/// It is `Copy` and never allocates, because the redirect hot path parses one per request.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ShortCode {
    len: u8,
    bytes: [u8; ShortCode::MAX_LEN],
}

impl ShortCode {
    /// The longest code: 22 base62 characters carry 130 bits, more than any collision risk needs.
    pub const MAX_LEN: usize = 22;

    /// Parses a code from untrusted input, such as a URL path segment.
    ///
    /// Accepts exactly what this service can issue: [`CodeLength::MIN`] to
    /// [`ShortCode::MAX_LEN`] base62 characters. Anything else is `None`, without allocating.
    pub fn parse(input: &str) -> Option<Self> {
        if input.len() < CodeLength::MIN as usize {
            return None;
        }
        Self::from_base62(input.as_bytes())
    }

    /// Builds a code from bytes already known to be base62, of any length up to the maximum.
    /// Stored records use this, so that codes issued with a short length stay readable.
    fn from_base62(input: &[u8]) -> Option<Self> {
        if input.is_empty() || input.len() > Self::MAX_LEN || !input.iter().all(u8::is_ascii_alphanumeric) {
            return None;
        }
        let mut bytes = [0u8; Self::MAX_LEN];
        bytes[..input.len()].copy_from_slice(input);
        Some(Self { len: input.len() as u8, bytes })
    }

    /// The code as text; always ASCII.
    pub fn as_str(&self) -> &str {
        // The invariant (ASCII alphanumerics only) makes this infallible.
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }

    /// The code's bytes, which are also its storage key.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    /// Reads a code back from a storage key.
    pub fn from_key(key: &[u8]) -> Option<Self> {
        Self::from_base62(key)
    }
}

/// Unused bytes are always zero, so hashing the used ones agrees with the derived equality;
/// and the hot path hashes one code per request into the link cache.
impl std::hash::Hash for ShortCode {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write(self.as_bytes());
    }
}

impl fmt::Display for ShortCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for ShortCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ShortCode({})", self.as_str())
    }
}

impl Serialize for ShortCode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ShortCode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::from_base62(text.as_bytes()).ok_or_else(|| serde::de::Error::custom("not a base62 short code"))
    }
}

/// How many characters newly issued codes have: 8 to 22, 12 by default.
///
/// 8 characters are ~47.6 bits, the least that keeps guessing live codes impractical.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodeLength(u8);

impl CodeLength {
    /// The shortest allowed length.
    pub const MIN: u8 = 8;
    /// The default length, as in the amoCRM example (`https://amo.sh/XXXXXXXXXXXX`).
    pub const DEFAULT: CodeLength = CodeLength(12);

    /// Checks that `len` is within 8..=22.
    pub fn new(len: usize) -> Result<Self, InvalidCodeLength> {
        if (Self::MIN as usize..=ShortCode::MAX_LEN).contains(&len) {
            Ok(Self(len as u8))
        } else {
            Err(InvalidCodeLength(len))
        }
    }

    /// A length below the minimum, only so that tests can force collisions.
    #[cfg(test)]
    pub(crate) fn tiny_for_tests(len: u8) -> Self {
        assert!(len >= 1 && (len as usize) <= ShortCode::MAX_LEN);
        Self(len)
    }

    /// The length in characters.
    pub fn get(self) -> usize {
        self.0 as usize
    }
}

impl Default for CodeLength {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The per-installation secret that keys code derivation.
#[derive(Clone, PartialEq, Eq)]
pub struct InstallationSecret([u8; 32]);

impl InstallationSecret {
    /// A fresh secret from the operating system's random source.
    pub fn generate() -> Result<Self, Error> {
        let mut key = [0u8; 32];
        getrandom::getrandom(&mut key).map_err(|e| Error::Random(e.to_string()))?;
        Ok(Self(key))
    }

    /// Wraps stored key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The key bytes, for persisting.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }

    /// A key for another purpose, derived so that it reveals nothing about this one.
    pub fn derive_key(&self, context: &str) -> [u8; 32] {
        blake3::derive_key(context, &self.0)
    }
}

impl fmt::Debug for InstallationSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("InstallationSecret(..)")
    }
}

/// Derives codes from link identities with one installation's secret.
#[derive(Clone)]
#[cfg_attr(not(feature = "testing"), allow(unreachable_pub))]
pub struct CodeDeriver {
    secret: InstallationSecret,
    len: CodeLength,
    tombstone_key: [u8; 32],
}

impl fmt::Debug for CodeDeriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CodeDeriver").field("len", &self.len).finish_non_exhaustive()
    }
}

#[cfg_attr(not(feature = "testing"), allow(unreachable_pub))]
impl CodeDeriver {
    /// A deriver issuing codes of `len` characters.
    pub fn new(secret: InstallationSecret, len: CodeLength) -> Self {
        let tombstone_key = secret.derive_key(TOMBSTONE_CONTEXT);
        Self { secret, len, tombstone_key }
    }

    /// The tombstone that stands for `code` once it is erased.
    pub fn tombstone(&self, code: &ShortCode) -> Tombstone {
        let hash = blake3::keyed_hash(&self.tombstone_key, code.as_bytes());
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&hash.as_bytes()[..16]);
        Tombstone(bytes)
    }

    /// The code for a link identity; `attempt` picks the next candidate after a collision.
    ///
    /// The input is a canonical, unambiguous encoding: fixed-width big-endian integers and a
    /// length-prefixed URL, so no two identities hash the same bytes.
    pub fn derive(&self, account: AccountId, entity: EntityRef, target: &TargetUrl, attempt: u32) -> ShortCode {
        let mut hasher = blake3::Hasher::new_keyed(&self.secret.0);
        hasher.update(DERIVATION_CONTEXT);
        hasher.update(&account.0.to_be_bytes());
        hasher.update(&[entity.kind.tag()]);
        hasher.update(&entity.id.to_be_bytes());
        hasher.update(&attempt.to_be_bytes());
        hasher.update(&(target.as_str().len() as u32).to_be_bytes());
        hasher.update(target.as_str().as_bytes());
        let mut stream = hasher.finalize_xof();

        let mut bytes = [0u8; ShortCode::MAX_LEN];
        fill_base62(&mut bytes[..self.len.get()], |block| {
            stream.fill(block);
            Ok(())
        })
        .expect("an XOF never fails");
        ShortCode { len: self.len.0, bytes }
    }
}

/// `len` random base62 characters from the operating system's random source: for secrets
/// that travel as text, such as API tokens.
pub fn random_base62(len: usize) -> Result<String, Error> {
    let mut text = vec![0u8; len];
    fill_base62(&mut text, |block| getrandom::getrandom(block).map_err(|e| Error::Random(e.to_string())))?;
    Ok(text.into_iter().map(char::from).collect())
}

/// Fills `out` with base62 characters drawn from random blocks. Rejection sampling keeps
/// every character uniform: bytes from 248 = 4 * 62 up are dropped.
fn fill_base62(out: &mut [u8], mut next_block: impl FnMut(&mut [u8]) -> Result<(), Error>) -> Result<(), Error> {
    let mut block = [0u8; 32];
    let mut filled = 0;
    while filled < out.len() {
        next_block(&mut block)?;
        for &b in block.iter().filter(|&&b| b < 248) {
            if filled == out.len() {
                break;
            }
            out[filled] = ALPHABET[(b % 62) as usize];
            filled += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_rejects_everything_but_a_valid_code() {
        assert!(ShortCode::parse("AbCdEf012345").is_some());
        assert!(ShortCode::parse("abcdefgh").is_some());
        assert!(ShortCode::parse("abcdefg").is_none(), "shorter than the minimum");
        assert!(ShortCode::parse(&"a".repeat(23)).is_none(), "longer than the maximum");
        for bad in ["", "abcdefgh-", "abcdefgh/", "abc defgh", "абвгдежз", "abcdefgh\n", "abcdefgh%20"] {
            assert!(ShortCode::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn code_length_bounds() {
        assert!(CodeLength::new(7).is_err());
        assert!(CodeLength::new(8).is_ok());
        assert!(CodeLength::new(22).is_ok());
        assert!(CodeLength::new(23).is_err());
        assert_eq!(CodeLength::default().get(), 12);
    }
}
