//! Record encoding: one version byte, then postcard.
//!
//! The version byte lets a later release change a record's shape and still read the old
//! one. postcard is chosen over bincode (see `docs/decisions/0001-record-encoding.md`).

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::Error;

/// The current record format.
pub(crate) const FORMAT_V1: u8 = 1;

/// Room a record is encoded into at first: links, notes and tokens fit, so encoding one
/// allocates once rather than growing its buffer from one byte (six copies).
const USUAL_RECORD_BYTES: usize = 256;

/// Encodes a record in the current format.
pub fn encode<T: Serialize>(record: &T) -> Result<Vec<u8>, Error> {
    encode_after(record, Vec::with_capacity(USUAL_RECORD_BYTES))
}

/// Encodes a record in the current format after what `out` holds: a record inside a
/// larger one (a log's frame) is built in one buffer.
pub(crate) fn encode_after<T: Serialize>(record: &T, mut out: Vec<u8>) -> Result<Vec<u8>, Error> {
    out.push(FORMAT_V1);
    postcard::to_extend(record, out).map_err(|e| Error::Corrupt(format!("cannot encode record: {e}")))
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
