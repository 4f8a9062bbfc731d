//! The names under which one sink's worker keeps its queue, dead letters and allowance:
//! shared by the sinks that use them and the statistics and backlogs that report them.

use shortlinks_core::AccountId;

/// Where one sink's worker keeps its work: the queue `sink:<name>[:<account>]`, the dead
/// letters `dead:<name>[:<account>]`, the allowance under the queue's name. A sink that
/// serves one account has keys of its own, so that accounts never share a queue, a pace
/// or dead letters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkKeys {
    /// The sink's kind (its [`crate::sink::NoteSink::name`]).
    pub name: &'static str,
    /// The account whose notes it takes; `None`: every account's.
    pub account: Option<AccountId>,
    /// `<name>` or `<name>:<account>`: the suffix of its keys, and its name in logs.
    pub label: String,
}

impl SinkKeys {
    /// The keys of the sink `name` serving `account` (or every account).
    pub fn new(name: &'static str, account: Option<AccountId>) -> Self {
        let label = match account {
            None => name.to_owned(),
            Some(AccountId(id)) => format!("{name}:{id}"),
        };
        Self { name, account, label }
    }

    /// Its queue of notes to deliver.
    pub fn queue(&self) -> String {
        format!("sink:{}", self.label)
    }

    /// Its notes refused for good.
    pub fn dead_letters(&self) -> String {
        format!("dead:{}", self.label)
    }
}
