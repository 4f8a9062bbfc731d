//! Rate limits shared by every node: one key per limited caller, decided by a script on
//! Redis's own clock, so nodes need no synchronized clocks and together stay under it.

use std::time::Duration;

use shortlinks_core::store::{Rate, RateLimiter};
use shortlinks_core::Error;

use crate::connection::store_error;
use crate::store::RedisStore;

/// `shortlinks_core::store::gcra`, atomically beside the stored time. The key expires
/// once its allowance is whole again.
///
/// KEYS[1] the key; ARGV: interval (µs), tolerance (µs). Returns 0, or the wait in µs.
/// Microseconds since 1970 stay below 2^53, so Lua's numbers hold them exactly.
const TAKE: &str = r"
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local tolerance = tonumber(ARGV[2])
if tat - now > tolerance then return tat - now - tolerance end
local next = tat + tonumber(ARGV[1])
redis.call('SET', KEYS[1], string.format('%d', next), 'PX', math.ceil((next - now) / 1000) + 1)
return 0
";

impl RateLimiter for RedisStore {
    async fn take(&self, key: &str, rate: Rate) -> Result<Option<Duration>, Error> {
        let wait_us: u64 = redis::Script::new(TAKE)
            .key(self.keys.rate(key))
            .arg(rate.interval_us())
            .arg(rate.tolerance_us())
            .invoke_async(&mut self.connection())
            .await
            .map_err(store_error)?;
        Ok((wait_us > 0).then(|| Duration::from_micros(wait_us)))
    }
}
