//! The least a Redis user needs to run shortlinks: its key prefix and the commands the
//! store sends, nothing else. `docs/scaling.md` shows the rule for operators to copy; a
//! test runs the whole storage contract as such a user.

/// The commands the store sends (besides connecting): reads and writes of strings, sorted
/// sets, hashes and streams, the scripts it runs, expiry, and what a cluster client needs
/// to find the slots.
pub const COMMANDS: &[&str] = &[
    "get",
    "mget",
    "set",
    "del",
    "pexpire",
    "zadd",
    "zrem",
    "zrange",
    "zrangebyscore",
    "zremrangebyscore",
    "zremrangebyrank",
    "zcard",
    "sadd",
    "smembers",
    "smismember",
    "hset",
    "hget",
    "hdel",
    "hsetnx",
    "hmget",
    "hgetall",
    "xadd",
    "xreadgroup",
    "xrange",
    "xlen",
    "xack",
    "xdel",
    "xtrim",
    "xautoclaim",
    "xgroup",
    "xinfo",
    "time",
    "eval",
    "evalsha",
    "script|load",
    "multi",
    "exec",
    "ping",
    "cluster|slots",
    "cluster|shards",
    "readonly",
];

/// The `ACL SETUSER` rules (after the user's name, `on` and its password) for a user of
/// the key prefix `prefix`: every key under it, no channel, only [`COMMANDS`].
pub fn acl_rules(prefix: &str) -> Vec<String> {
    let mut rules = vec!["resetkeys".to_owned(), format!("~{prefix}:*"), "resetchannels".into(), "-@all".into()];
    rules.extend(COMMANDS.iter().map(|c| format!("+{c}")));
    rules
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_docs_show_the_rule_the_code_uses() {
        let docs = include_str!("../../../docs/scaling.md");
        let rule = format!("ACL SETUSER shortlinks on >CHANGE-ME {}", super::acl_rules("sl").join(" "));
        assert!(docs.contains(&rule), "docs/scaling.md must show: {rule}");
    }
}
