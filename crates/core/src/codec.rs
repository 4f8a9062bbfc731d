//! Record encoding: one version byte, then postcard.
//!
//! The version byte lets a later release change a record's shape and still read the old
//! one. postcard is chosen over bincode (see `docs/decisions/0001-record-encoding.md`).

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::Error;

/// The current record format.
pub(crate) const FORMAT_V1: u8 = 1;

/// Encodes a record in the current format.
pub fn encode<T: Serialize>(record: &T) -> Result<Vec<u8>, Error> {
    postcard::to_extend(record, vec![FORMAT_V1]).map_err(|e| Error::Corrupt(format!("cannot encode record: {e}")))
}

/// Decodes a record; any malformed input is an error, never a panic.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    let (&version, body) = bytes.split_first().ok_or_else(|| Error::Corrupt("empty record".into()))?;
    if version != FORMAT_V1 {
        return Err(Error::Corrupt(format!("unknown record format {version}")));
    }
    let (record, rest) = postcard::take_from_bytes(body).map_err(|e| Error::Corrupt(format!("bad record: {e}")))?;
    if !rest.is_empty() {
        return Err(Error::Corrupt(format!("{} trailing bytes after record", rest.len())));
    }
    Ok(record)
}
