//! Note sinks. The journal is written by the dispatcher itself; every other sink has its own
//! durable queue and its own worker, so a slow or failing sink delays only itself.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use shortlinks_core::model::{EntryId, Note};
use shortlinks_core::store::{Rate, RecordQueues};
use shortlinks_core::Store;
use tokio::sync::{watch, Notify};

use crate::stats::{SinkState, SinkStats};
use dead_letter::DeadLetter;
use delivered::RecentlyDelivered;

pub mod amocrm;
pub mod dead_letter;
mod delivered;
mod http;
pub mod standing;
mod webhook;

pub use crate::sink_keys::SinkKeys;
pub use amocrm::oauth::{adopt_legacy_pair, connect, oauth_credential, store_pair, OAuthApp, OAuthPair};
pub use amocrm::{AmoCrmAuth, AmoCrmConfig, AmoCrmSink, AmoNoteType, TRANSIT_JITTER};
pub use http::{HttpAnswer, HttpClient};
pub use webhook::{signature, WebhookSink};

/// Why a delivery failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// Worth retrying: a timeout, a connection error, a 5xx, a 429.
    #[error("{reason}")]
    Retry {
        /// What happened.
        reason: String,
        /// How long the receiver asked us to wait, if it did.
        after: Option<Duration>,
    },
    /// Never going to work as it is (a 400 naming no note): set aside, not retried. A batch
    /// refused so is tried again one note at a time, to find the note at fault.
    #[error("{0}")]
    Permanent(String),
    /// The receiver named these notes (by their place in the batch) as refused for good and
    /// took none of the batch: those are set aside, the others sent again.
    #[error("{} notes refused", .0.len())]
    Refused(Vec<(usize, String)>),
    /// The receiver does not take our credentials, and will not until someone acts (a
    /// token it refuses, a refresh it refuses, a connection never made): retried after
    /// `after`, the sink shown as needing to be connected again.
    #[error("{reason}")]
    Unauthorized {
        /// What happened.
        reason: String,
        /// When to try again.
        after: Duration,
    },
    /// The connection was removed on the receiver's side (amoCRM: the integration was
    /// uninstalled): nothing is sent until it is connected again; the notes wait.
    #[error("{reason}")]
    Disconnected {
        /// What happened.
        reason: String,
        /// When to look again.
        after: Duration,
    },
    /// The receiver refused the account as a whole, not any note in particular (amoCRM: a
    /// 400 naming no note, which it answers when the account's rights or subscription
    /// end; a 402): the sink pauses this long, loudly, and drops nothing. Sending the
    /// notes one by one would only set every one of them aside.
    #[error("{reason}")]
    AccountRefused {
        /// What happened.
        reason: String,
        /// How long to pause.
        pause: Duration,
    },
    /// The receiver restricted our access (amoCRM's answer to an integration that kept
    /// exceeding its limits): the sink pauses this long, loudly, and drops nothing.
    #[error("{reason}")]
    Restricted {
        /// What happened.
        reason: String,
        /// How long to pause.
        pause: Duration,
    },
}

/// How a sink wants its notes gathered for one delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batching {
    /// The most notes in one delivery.
    pub max: usize,
    /// How long a short batch waits for more notes, so that a trickle still goes out
    /// promptly and a burst goes out in full batches.
    pub linger: Duration,
}

impl Batching {
    /// One note per delivery, sent at once.
    pub const ONE: Batching = Batching { max: 1, linger: Duration::ZERO };
}

/// Somewhere notes go.
pub trait NoteSink: Send + Sync + 'static {
    /// A short stable name of its kind; with the account it serves, if one, it names the
    /// sink's queue, dead letters and allowance (see [`SinkKeys`]).
    fn name(&self) -> &'static str;

    /// How many notes one delivery takes, and how long a short batch waits.
    fn batching(&self) -> Batching {
        Batching::ONE
    }

    /// The most deliveries a second, drawn from the store's rate limiter so that every node
    /// sharing the store shares one allowance; `None`: as fast as the receiver answers.
    fn pace(&self) -> Option<Rate> {
        None
    }

    /// What the sink must do even with nothing to deliver, such as keeping its credentials
    /// alive: called when its worker starts, and then about every [`UPKEEP_EVERY`] while
    /// its queue is empty.
    fn upkeep(&self) -> impl Future<Output = Result<(), SinkError>> + Send {
        async { Ok(()) }
    }

    /// Delivers notes (at most [`NoteSink::batching`]'s `max`, distinct ids), all or none.
    /// Must be idempotent by note id where the receiver allows: a note may come again
    /// after a crash.
    fn deliver(&self, notes: &[Note]) -> impl Future<Output = Result<(), SinkError>> + Send;
}

/// Exponential backoff with jitter between attempts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first delay.
    pub base: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { base: Duration::from_millis(200), max: Duration::from_secs(60) }
    }
}

impl RetryPolicy {
    /// The delay before attempt `attempt + 1`: doubling, capped, then a random point in its
    /// upper half so that many nodes do not retry in step.
    pub fn delay(&self, attempt: u32) -> Duration {
        let full = self.base.saturating_mul(1u32.checked_shl(attempt.min(30)).unwrap_or(u32::MAX)).min(self.max);
        let mut random = [0u8; 8];
        let fraction = match getrandom::getrandom(&mut random) {
            Ok(()) => (u64::from_le_bytes(random) >> 11) as f64 / (1u64 << 53) as f64,
            Err(_) => 0.5,
        };
        full.mul_f64(0.5 + fraction / 2.0)
    }
}

/// How often an idle sink's worker does its sink's [`NoteSink::upkeep`].
pub const UPKEEP_EVERY: Duration = Duration::from_secs(60);

/// A receiver's `Retry-After` is honoured up to this; beyond it is more likely a mistake.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Moves what is left in the shared queue of the sink kind `name` (from a release before
/// each account had its own) into each note's account's queue, `sink:<name>:<account>`,
/// and returns how many notes moved. Each is pushed before it is removed: a crash between
/// the two leaves a copy, which the worker does not send twice (`delivered`).
pub async fn adopt_legacy_queue<S: Store>(store: &S, name: &'static str) -> Result<usize, shortlinks_core::Error> {
    // The queue every account's notes shared: the one a sink for all accounts has.
    let legacy = SinkKeys::new(name, None).queue();
    let mut moved = 0;
    loop {
        let batch = store.lease_records::<Note>(&legacy, 1000).await?;
        if batch.is_empty() {
            return Ok(moved);
        }
        for (_, note) in &batch {
            let keys = SinkKeys::new(name, Some(note.account));
            store.push_records(&keys.queue(), &[note]).await?;
        }
        moved += batch.len();
        store.remove(&legacy, batch.iter().map(|(id, _)| *id).collect()).await?;
    }
}

/// The worker of one sink: gathers batches from its queue in order and delivers each until
/// it is taken, refused for good (dead-lettered, counted) or the worker stops.
pub(crate) async fn run_sink<S: Store, K: NoteSink>(
    store: S,
    sink: K,
    keys: SinkKeys,
    retry: RetryPolicy,
    (wake, resume): (Arc<Notify>, Arc<Notify>),
    stats: Arc<SinkStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    let worker = Worker {
        queue: keys.queue(),
        dead: keys.dead_letters(),
        label: keys.label,
        store,
        sink,
        retry,
        stats,
        resume,
        upkeep_now: Default::default(),
        set_aside_ids: Default::default(),
        published: Default::default(),
    };
    let mut delivered = RecentlyDelivered::default();
    let mut upkept: Option<tokio::time::Instant> = None;
    while !*shutdown.borrow() {
        if upkept.is_none_or(|at| at.elapsed() >= UPKEEP_EVERY) {
            upkept = Some(tokio::time::Instant::now());
            match worker.sink.upkeep().await {
                Ok(()) => {
                    if matches!(worker.stats.state(), SinkState::NeedsReconnect | SinkState::Disconnected) {
                        worker.enter(SinkState::Connected, None).await;
                    }
                }
                // Uninstalled on purpose: shown as the state, not warned about every minute.
                Err(SinkError::Disconnected { .. }) => worker.enter(SinkState::Disconnected, None).await,
                Err(e) => {
                    if matches!(e, SinkError::Unauthorized { .. }) {
                        worker.enter(SinkState::NeedsReconnect, None).await;
                    }
                    tracing::warn!(sink = %worker.label, error = %e, "the sink's upkeep failed; it is tried again later");
                }
            }
        }
        let batch = worker.gather(&wake, &mut shutdown).await;
        if worker.upkeep_now.swap(false, Relaxed) {
            upkept = None; // resumed: see at once where the connection stands
        }
        if batch.is_empty() {
            continue;
        }
        // Marked as they are picked: `deliver` returns only once each is taken or set
        // aside, or when stopping, and then this memory goes with the worker.
        let notes: Vec<Note> = batch.iter().filter(|(_, n)| delivered.insert(n.id)).map(|(_, n)| n.clone()).collect();
        worker.stats.copies_skipped.inc_by((batch.len() - notes.len()) as u64);
        if !notes.is_empty() && !worker.deliver(notes, &mut shutdown).await {
            return; // stopping: the batch stays queued
        }
        for id in worker.set_aside_ids.lock().drain(..) {
            delivered.forget(id);
        }
        if let Err(e) = worker.store.remove(&worker.queue, batch.iter().map(|(id, _)| *id).collect()).await {
            tracing::error!(sink = %worker.label, error = %e, "cannot remove delivered notes from the queue; they come back, and are not sent again");
        }
    }
}

struct Worker<S, K> {
    store: S,
    sink: K,
    retry: RetryPolicy,
    stats: Arc<SinkStats>,
    /// Cuts short a wait for someone to connect the receiver again; when idle, has the
    /// upkeep done at once (the connection changed).
    resume: Arc<Notify>,
    upkeep_now: std::sync::atomic::AtomicBool,
    /// The notes [`Worker::set_aside`] set aside in the current batch.
    set_aside_ids: parking_lot::Mutex<Vec<u64>>,
    /// The state this worker last recorded in the store.
    published: parking_lot::Mutex<Option<SinkState>>,
    /// Also the name of its allowance in the store's rate limiter.
    queue: String,
    dead: String,
    /// The sink's name in logs: its kind, and its account if it serves one.
    label: String,
}

impl<S: Store, K: NoteSink> Worker<S, K> {
    /// The next batch: what is queued, and if that is short of a full batch, what else
    /// comes within the linger. Empty after waiting for a wake-up when nothing is queued.
    async fn gather(&self, wake: &Notify, shutdown: &mut watch::Receiver<bool>) -> Vec<(EntryId, Note)> {
        let Batching { max, linger } = self.sink.batching();
        let max = max.max(1);
        let batch = self.lease(max).await;
        if batch.is_empty() {
            tokio::select! {
                () = wake.notified() => {}
                () = self.resume.notified() => self.upkeep_now.store(true, Relaxed),
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => {}
            }
            return batch;
        }
        if batch.len() < max && !linger.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(linger) => {}
                _ = shutdown.changed() => return batch,
            }
            // A lease returns this consumer's unremoved entries first, then new ones.
            return self.lease(max).await;
        }
        batch
    }

    async fn lease(&self, max: usize) -> Vec<(EntryId, Note)> {
        self.store.lease_records::<Note>(&self.queue, max).await.unwrap_or_else(|e| {
            tracing::error!(sink = %self.label, error = %e, "cannot read the sink's queue");
            Vec::new()
        })
    }

    /// Waits for the sink's allowance, if it has a pace; false if stopping meanwhile.
    async fn paced(&self, shutdown: &mut watch::Receiver<bool>) -> bool {
        let Some(rate) = self.sink.pace() else { return true };
        loop {
            let wait = match self.store.take(&self.queue, rate).await {
                Ok(None) => return true,
                Ok(Some(wait)) => wait,
                Err(e) => {
                    // Never unpaced: a receiver's limit outlasts a store hiccup.
                    tracing::error!(sink = %self.label, error = %e, "cannot read the sink's allowance; waiting");
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return false,
            }
        }
    }

    /// Delivers `notes` until each is taken or set aside; false if stopping first.
    async fn deliver(&self, notes: Vec<Note>, shutdown: &mut watch::Receiver<bool>) -> bool {
        let name = self.label.as_str();
        let mut groups = VecDeque::from([notes]);
        while let Some(mut group) = groups.pop_front() {
            let mut attempt = 0;
            loop {
                if !self.paced(shutdown).await {
                    return false;
                }
                // Whether the wait is for someone to connect the receiver again, which
                // `resume` may cut short.
                let mut waiting_for_someone = false;
                let started = std::time::Instant::now();
                let delivered = self.sink.deliver(&group).await;
                self.stats.attempted(&group, started.elapsed(), delivered.is_ok());
                if let Err(e) = &delivered {
                    self.stats.failed(&e.to_string());
                }
                let delay = match delivered {
                    Ok(()) => {
                        self.enter(SinkState::Connected, None).await;
                        break;
                    }
                    Err(SinkError::Permanent(reason)) if group.len() > 1 => {
                        tracing::warn!(sink = name, notes = group.len(), %reason, "a batch was refused whole; sending its notes one by one");
                        groups.extend(group.into_iter().map(|note| vec![note]));
                        break;
                    }
                    Err(SinkError::Permanent(reason)) => {
                        self.set_aside(&group, &reason).await;
                        break;
                    }
                    Err(SinkError::Refused(refused)) => {
                        let reasons: HashMap<usize, String> = refused.into_iter().collect();
                        let (aside, rest): (Vec<_>, Vec<_>) =
                            group.into_iter().enumerate().partition(|(i, _)| reasons.contains_key(i));
                        for (i, note) in aside {
                            self.set_aside(std::slice::from_ref(&note), &reasons[&i]).await;
                        }
                        group = rest.into_iter().map(|(_, note)| note).collect();
                        if group.is_empty() {
                            break;
                        }
                        continue; // the rest, again, in its own paced request
                    }
                    Err(SinkError::Unauthorized { reason, after }) => {
                        self.stats.failed_attempts.inc();
                        self.enter(SinkState::NeedsReconnect, None).await;
                        tracing::error!(sink = name, %reason, retry = ?after, "the receiver does not take our credentials: connect it again; nothing is dropped");
                        waiting_for_someone = true;
                        after
                    }
                    Err(SinkError::Disconnected { reason, after }) => {
                        self.enter(SinkState::Disconnected, None).await;
                        tracing::warn!(sink = name, %reason, "the connection was uninstalled: its notes are held until it is connected again or purged");
                        waiting_for_someone = true;
                        after
                    }
                    Err(SinkError::Retry { reason, after }) => {
                        self.stats.failed_attempts.inc();
                        let delay = after.map_or_else(|| self.retry.delay(attempt), |a| a.min(MAX_RETRY_AFTER));
                        tracing::warn!(sink = name, notes = group.len(), %reason, ?delay, "delivery failed; will retry");
                        delay
                    }
                    Err(SinkError::AccountRefused { reason, pause }) => {
                        self.stats.account_refusals.inc();
                        self.enter(SinkState::Refused, Some(pause)).await;
                        tracing::error!(sink = name, %reason, ?pause, "the receiver REFUSED this account (its rights or subscription?); pausing the sink, nothing is dropped");
                        pause
                    }
                    Err(SinkError::Restricted { reason, pause }) => {
                        self.stats.restricted.inc();
                        self.enter(SinkState::Paused, Some(pause)).await;
                        tracing::error!(sink = name, %reason, ?pause, "the receiver RESTRICTED this integration's access; pausing the sink, nothing is dropped");
                        pause
                    }
                };
                attempt += 1;
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = self.resume.notified(), if waiting_for_someone => {}
                    _ = shutdown.changed() => return false,
                }
            }
        }
        true
    }

    /// Enters `state` (paused for `pause`); a change, or a new pause, is recorded in the
    /// store ([`standing`]) for every node's commands to see.
    async fn enter(&self, state: SinkState, pause: Option<Duration>) {
        let changed = self.published.lock().replace(state) != Some(state) || pause.is_some();
        self.stats.set_state(state, pause);
        if changed {
            if let Err(e) = standing::publish(&self.store, &self.label, state, self.stats.paused_until_ms()).await {
                tracing::warn!(sink = %self.label, error = %e, "cannot record the sink's state in the store");
            }
        }
    }

    /// Keeps notes refused for good in the sink's dead-letter queue, with why and when,
    /// and counts them.
    async fn set_aside(&self, notes: &[Note], reason: &str) {
        let at = shortlinks_core::Timestamp::now();
        let mut letters = Vec::with_capacity(notes.len());
        for note in notes {
            tracing::warn!(sink = %self.label, note = note.id, %reason, "note refused for good; kept in {}", self.dead);
            letters.push(DeadLetter { note: note.clone(), reason: reason.to_owned(), at });
        }
        self.stats.dead_lettered.inc_by(notes.len() as u64);
        self.set_aside_ids.lock().extend(notes.iter().map(|n| n.id));
        if let Err(e) = self.store.push_records(&self.dead, &letters).await {
            tracing::error!(error = %e, "cannot keep a refused note");
        }
    }
}

#[cfg(test)]
mod tests {
    use shortlinks_core::store::{conformance, Queues};
    use shortlinks_core::{AccountId, MemoryStore};

    use super::*;
    use crate::stand_in::{AmoCrmStandIn, StandInOptions};

    /// Copies in a sink's queue (here pushed by hand, as a retried store write leaves them)
    /// fall into later batches than their originals: amoCRM still gets each note once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_worker_does_not_send_a_note_again_that_it_handed_on() {
        let stand_in =
            AmoCrmStandIn::start(StandInOptions { token: Some("t".into()), ..Default::default() }).await.unwrap();
        let mut config = AmoCrmConfig::new(AccountId(1), stand_in.url.clone(), AmoCrmAuth::Token("t".into()));
        config.batching = Batching { max: 2, linger: Duration::ZERO };
        config.rate = Rate::new(1000, 1000);
        let store = MemoryStore::new();
        let sink = AmoCrmSink::new(HttpClient::new(Duration::from_secs(5)), config, store.clone()).unwrap();
        let [a, b, c] = [1, 2, 3].map(|id| conformance::note(id, 1, 10 + id, 5_000));
        // Batches of two: [a, b], [a, c], [b].
        let queued = [&a, &b, &a, &c, &b];
        let keys = SinkKeys::new("amocrm", Some(AccountId(1)));
        store.push_records(&keys.queue(), &queued).await.unwrap();

        let stats = crate::stats::Stats::default().sink("amocrm", Some(AccountId(1)));
        let (stop, stopped) = watch::channel(false);
        let worker = tokio::spawn(run_sink(
            store.clone(),
            sink,
            keys.clone(),
            RetryPolicy::default(),
            (Arc::new(Notify::new()), Arc::new(Notify::new())),
            stats.clone(),
            stopped,
        ));
        shortlinks_core::testing::until(Duration::from_secs(30), "both copies skipped", || async {
            stats.copies_skipped.get() >= 2
        })
        .await;
        stop.send(true).unwrap();
        worker.await.unwrap();

        let mut ids: Vec<String> = stand_in.notes().into_iter().filter_map(|n| n.request_id).collect();
        ids.sort();
        assert_eq!(ids, ["1", "2", "3"], "each note once");
        assert_eq!(stats.delivered.get(), 3);
        assert_eq!(stats.copies_skipped.get(), 2);
        assert!(store.lease(&keys.queue(), 10).await.unwrap().is_empty(), "the copies left the queue");
    }

    /// A data directory from before per-account sinks: its shared queue's notes move to their
    /// accounts' queues, and its one OAuth pair becomes the given account's, once.
    #[tokio::test]
    async fn what_a_shared_sink_left_is_taken_over_per_account() {
        use shortlinks_core::store::CredentialStore;
        use shortlinks_core::SledStore;

        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let [a, b, c] = [(1, 1), (2, 2), (3, 1)].map(|(id, account)| conformance::note(id, account, 10 + id, 5_000));
        store.push_records("sink:amocrm", &[&a, &b, &c]).await.unwrap();
        assert_eq!(adopt_legacy_queue(&store, "amocrm").await.unwrap(), 3);
        for (account, expected) in [(1, vec![1, 3]), (2, vec![2])] {
            let queue = SinkKeys::new("amocrm", Some(AccountId(account))).queue();
            let ids: Vec<u64> =
                store.lease_records::<Note>(&queue, 10).await.unwrap().into_iter().map(|(_, n)| n.id).collect();
            assert_eq!(ids, expected, "account {account}'s queue");
        }
        assert!(store.lease("sink:amocrm", 10).await.unwrap().is_empty(), "the shared queue is empty");
        assert_eq!(adopt_legacy_queue(&store, "amocrm").await.unwrap(), 0, "and stays so");

        let pair = OAuthPair { access_token: "a".into(), refresh_token: "r".into(), expires_at: 1, refreshing: None };
        let bytes = shortlinks_core::store::encode(&pair).unwrap();
        assert!(store.swap_credential("amocrm.oauth", None, bytes.clone()).await.unwrap());
        assert!(adopt_legacy_pair(&store, AccountId(4)).await.unwrap());
        assert_eq!(store.credential(&oauth_credential(AccountId(4))).await.unwrap(), Some(bytes));
        assert!(!adopt_legacy_pair(&store, AccountId(5)).await.unwrap(), "taken once, by one account");
        assert_eq!(store.credential(&oauth_credential(AccountId(5))).await.unwrap(), None);
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let policy = RetryPolicy { base: Duration::from_millis(100), max: Duration::from_secs(2) };
        for attempt in 0..40 {
            let full = (100u64 << attempt.min(20)).min(2000);
            let d = policy.delay(attempt).as_millis() as u64;
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d} not in [{}, {full}]", full / 2);
        }
        let spread: std::collections::HashSet<_> = (0..20).map(|_| policy.delay(3)).collect();
        assert!(spread.len() > 1, "jitter varies the delay");
    }
}
