//! Capture: the redirect hands a click over and moves on; a writer screens the clicks and
//! appends those that may be first visits to the durable outbox in groups, one record and
//! one flush per group (group commit).

use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use shortlinks_core::store::{RecordQueues, Sighting, CLICK_QUEUE};
use shortlinks_core::Store;
use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::gateway::contact_key;
use crate::raw_click::RawClick;
use crate::screen::Screen;
use crate::stats::Stats;
use crate::time_slice::TimeSlice;

/// The most clicks in one group commit.
const MAX_GROUP: usize = 1024;

/// When a redirect may answer, relative to its click becoming durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// The redirect does not wait. The writer gathers clicks for up to `window` after the
    /// first one, then appends and flushes them together. On kill -9 or power loss, at most
    /// the clicks of the last window and of the flush in progress are lost.
    Group {
        /// The commit window (10 ms by default).
        window: Duration,
    },
    /// The redirect answers only once its click is flushed. Concurrent clicks still share a
    /// flush, so this costs latency, not throughput.
    Sync,
}

impl Durability {
    /// The default commit window of [`Durability::Group`].
    pub const DEFAULT_WINDOW: Duration = Duration::from_millis(10);
    /// The longest commit window: a click waits at most this long for its flush.
    pub const MAX_WINDOW: Duration = Duration::from_secs(1);
}

impl Default for Durability {
    fn default() -> Self {
        Self::Group { window: Self::DEFAULT_WINDOW }
    }
}

/// Why a click could not be recorded.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotRecorded {
    /// The pipeline has shut down.
    #[error("the click pipeline has stopped")]
    Stopped,
    /// The outbox cannot be written (the store is unreachable), and the click could not be
    /// held for later: in `sync` mode it would not be durable, in `group` mode the queue is
    /// full (or was, when the append failed). The redirect answers 503 rather than promise
    /// what it cannot keep.
    #[error("the click outbox cannot be written right now")]
    OutboxUnavailable,
}

struct Pending {
    click: RawClick,
    /// Told whether the click's group was written.
    durable: Option<oneshot::Sender<bool>>,
}

/// The redirect's handle on the pipeline. Cheap to clone.
#[derive(Clone)]
pub struct ClickRecorder {
    tx: mpsc::Sender<Pending>,
    sync: bool,
    stats: Arc<Stats>,
    outbox: Arc<Outbox>,
}

/// How the writer tells the redirects that the outbox cannot be written.
#[derive(Default)]
struct Outbox {
    /// Set while the writer's last append failed.
    failing: AtomicBool,
    /// Wakes redirects that were waiting for room in the queue when the outbox failed: the
    /// room will not come until the store is back, and they must not wait that long.
    failed: Notify,
}

impl ClickRecorder {
    /// Hands a click over. Waits only if the queue is full (an answered click is never
    /// dropped), or, in [`Durability::Sync`], until the click is durable. While the outbox
    /// cannot be written it does not wait on the store: see [`NotRecorded::OutboxUnavailable`].
    pub async fn record(&self, click: RawClick) -> Result<(), NotRecorded> {
        if !self.sync {
            // Room in the queue, nearly always: hand over without registering for anything.
            // A failing outbox does not matter here: its clicks are held while there is room.
            let pending = match self.tx.try_send(Pending { click, durable: None }) {
                Ok(()) => {
                    self.stats.clicks_recorded.inc();
                    return Ok(());
                }
                Err(mpsc::error::TrySendError::Full(pending)) => pending,
                Err(mpsc::error::TrySendError::Closed(_)) => return Err(NotRecorded::Stopped),
            };
            // The waiting paths are boxed: they are rare, and inline they would make every
            // redirect's future (moved around by hyper) several times larger.
            return Box::pin(self.send(pending)).await;
        }
        Box::pin(self.record_durably(click)).await
    }

    /// Sync mode: queues the click and waits until its group is flushed.
    async fn record_durably(&self, click: RawClick) -> Result<(), NotRecorded> {
        if self.outbox.failing.load(Relaxed) {
            return Err(NotRecorded::OutboxUnavailable);
        }
        let (durable, done) = oneshot::channel();
        self.send(Pending { click, durable: Some(durable) }).await?;
        match done.await {
            Ok(true) => Ok(()),
            Ok(false) => Err(NotRecorded::OutboxUnavailable),
            Err(_) => Err(NotRecorded::Stopped),
        }
    }

    /// Queues a click, waiting for room only while the outbox can be written. Only a click
    /// the queue took is counted as recorded.
    async fn send(&self, pending: Pending) -> Result<(), NotRecorded> {
        let failed = self.outbox.failed.notified(); // before the flag: a failure from now on wakes it
        if self.outbox.failing.load(Relaxed) {
            return Err(NotRecorded::OutboxUnavailable);
        }
        tokio::select! {
            biased;
            sent = self.tx.send(pending) => sent.map_err(|_| NotRecorded::Stopped)?,
            () = failed => return Err(NotRecorded::OutboxUnavailable),
        }
        self.stats.clicks_recorded.inc();
        Ok(())
    }
}

/// Makes a recorder and the writer task that drains it.
pub(crate) fn channel<S: Store>(
    store: S,
    durability: Durability,
    capacity: usize,
    screen: Arc<Screen>,
    stats: Arc<Stats>,
    dispatcher: Arc<Notify>,
    shutdown: watch::Receiver<bool>,
) -> (ClickRecorder, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let window = match durability {
        Durability::Group { window } => window,
        Durability::Sync => Duration::ZERO,
    };
    let outbox = Arc::new(Outbox::default());
    let recorder =
        ClickRecorder { tx, sync: durability == Durability::Sync, stats: stats.clone(), outbox: outbox.clone() };
    let writer = tokio::spawn(write_groups(store, rx, window, screen, stats, outbox, dispatcher, shutdown));
    (recorder, writer)
}

/// The writer: gather a group, screen it, append what may become notes with one flush, tell
/// the waiters and the dispatcher. On shutdown it stops taking new clicks, drains the
/// queue, and flushes what it has.
#[allow(clippy::too_many_arguments)] // one call site, each argument a different part
async fn write_groups<S: Store>(
    store: S,
    mut rx: mpsc::Receiver<Pending>,
    window: Duration,
    screen: Arc<Screen>,
    stats: Arc<Stats>,
    outbox: Arc<Outbox>,
    dispatcher: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut group: Vec<Pending> = Vec::with_capacity(MAX_GROUP);
    // Nonces: a random start, then counting; unique across restarts and nodes in practice.
    let mut next_nonce = {
        let mut seed = [0u8; 8];
        let _ = getrandom::getrandom(&mut seed);
        u64::from_le_bytes(seed)
    };
    loop {
        let received = tokio::select! {
            biased;
            n = rx.recv_many(&mut group, MAX_GROUP) => n,
            _ = shutdown.changed() => {
                rx.close();
                continue;
            }
        };
        if received == 0 {
            break; // closed and drained
        }
        if !window.is_zero() && group.len() < MAX_GROUP {
            // Sleep through the window rather than wait on the queue, which would wake this
            // task for every click; then take everything that came.
            tokio::select! {
                () = tokio::time::sleep(window) => {}
                _ = shutdown.changed() => rx.close(),
            }
            while group.len() < MAX_GROUP && !rx.is_empty() {
                let more = MAX_GROUP - group.len();
                rx.recv_many(&mut group, more).await;
            }
        }
        let (mut clicks, mut waiters) = (Vec::with_capacity(group.len()), Vec::with_capacity(group.len()));
        let mut sightings = Vec::new();
        let mut screened = 0;
        let mut slice = TimeSlice::start();
        for pending in group.drain(..) {
            slice.tick().await;
            next_nonce = next_nonce.wrapping_add(1);
            let contact = pending.click.contact;
            let mut click = pending.click.into_click(next_nonce);
            waiters.push(pending.durable);
            // Only a click that may be a first visit needs to be durable (see `screen`).
            match screen.judge(&click).key_or_count(&stats) {
                Some(key) => {
                    click.visit_key = Some(key);
                    if let (Some(ip), Some((account, entity)), true) =
                        (click.client_ip, contact, screen.address_rule.contacts > 0)
                    {
                        sightings.push(Sighting {
                            address: screen.keys.address_key(ip),
                            contact: contact_key(account, entity),
                            at: click.at,
                        });
                    }
                    clicks.push(click)
                }
                None => screened += 1,
            }
        }
        if !sightings.is_empty() {
            // Before the clicks can be dispatched: the rule must see each click's neighbours.
            // Best effort: a lost sighting weakens the rule for a moment, never loses a click.
            if let Err(e) = store.sight(sightings, screen.address_rule, screen.sighting_lifetime_ms()).await {
                tracing::warn!(error = %e, "cannot record the clicks' addresses; the address rule misses them");
            }
        }
        stats.clicks_screened.inc_by(screened);
        if clicks.is_empty() {
            for durable in waiters.into_iter().flatten() {
                let _ = durable.send(true);
            }
            continue;
        }
        let mut backoff = Duration::from_millis(10);
        // The whole group is one outbox record: one write, not one per click.
        while let Err(e) = store.push_records(CLICK_QUEUE, &[&clicks]).await {
            // Keep the group: its clicks must not be lost. But nobody waits on it any more.
            tracing::error!(error = %e, clicks = clicks.len(), "cannot append clicks to the outbox; retrying");
            outbox.failing.store(true, Relaxed);
            outbox.failed.notify_waiters();
            for durable in waiters.iter_mut().filter_map(Option::take) {
                let _ = durable.send(false);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        outbox.failing.store(false, Relaxed);
        stats.clicks_persisted.inc_by(clicks.len() as u64);
        for durable in waiters.into_iter().flatten() {
            let _ = durable.send(true);
        }
        dispatcher.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use shortlinks_core::model::{BrowserEvidence, Click, ClickMethod, VisitMark};
    use shortlinks_core::store::RecordQueues;
    use shortlinks_core::MemoryStore;
    use shortlinks_core::{ShortCode, Timestamp};

    use super::*;
    use crate::classify::NotVisit;
    use crate::note::NoteKeys;

    const FIREFOX: &[u8] = b"Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0";

    fn screen() -> Arc<Screen> {
        Arc::new(Screen::new(NoteKeys::new([1; 32], [2; 32]), Duration::from_secs(3600), 5))
    }

    fn raw_click() -> RawClick {
        RawClick {
            code: ShortCode::parse("AAAAAAAAAAAA").unwrap(),
            at: Timestamp(1),
            method: ClickMethod::Get,
            user_agent: Some(Box::from(FIREFOX)),
            referer: None,
            prefetch: None,
            client_ip: None,
            evidence: BrowserEvidence(BrowserEvidence::ACCEPTS_HTML | BrowserEvidence::ACCEPT_LANGUAGE),
            contact: None,
        }
    }

    /// Many tasks on several threads through a small queue (so redirects wait for room),
    /// then a stop: every click handed over is in the outbox once, and one refused after
    /// the stop is not counted as recorded.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn every_click_handed_over_reaches_the_outbox_once() {
        let store = MemoryStore::new();
        let stats = Arc::new(Stats::default());
        let (stop, stopped) = watch::channel(false);
        let window = Durability::Group { window: Duration::from_millis(1) };
        let (recorder, writer) = channel(store.clone(), window, 64, screen(), stats.clone(), Arc::default(), stopped);
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let recorder = recorder.clone();
                tokio::spawn(async move {
                    for _ in 0..500 {
                        recorder.record(raw_click()).await.unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        stop.send(true).unwrap();
        writer.await.unwrap();
        assert_eq!(recorder.record(raw_click()).await, Err(NotRecorded::Stopped));

        let records = store.lease_records::<Vec<Click>>(CLICK_QUEUE, usize::MAX).await.unwrap();
        let nonces: std::collections::HashSet<u64> =
            records.iter().flat_map(|(_, group)| group.iter().map(|c| c.nonce)).collect();
        assert_eq!(nonces.len(), 4000, "each click once");
        assert!(records.iter().all(|(_, group)| group.len() <= MAX_GROUP));
        assert_eq!(stats.clicks_recorded.get(), 4000, "the refused click is not counted");
        assert_eq!(stats.clicks_persisted.get(), 4000);
    }

    /// The writer's screen: a bot's click and a repeat of a visit the node remembers are
    /// counted and settled without being written; a possible first visit is written.
    #[tokio::test]
    async fn only_clicks_that_may_become_notes_reach_the_outbox() {
        let store = MemoryStore::new();
        let stats = Arc::new(Stats::default());
        let screen = screen();
        let (stop, stopped) = watch::channel(false);
        let window = Durability::Group { window: Duration::from_millis(1) };
        let (recorder, writer) =
            channel(store.clone(), window, 64, screen.clone(), stats.clone(), Arc::default(), stopped);

        // A visit the dispatcher has claimed: its mark is remembered.
        let seen = RawClick { at: Timestamp(5_000), ..raw_click() }.into_click(7);
        let key = screen.keys.visit_key(&seen);
        screen.recent.remember(key, VisitMark { at: seen.at, note_id: 9 });

        let repeat = RawClick { at: Timestamp(6_000), ..raw_click() };
        let bot = RawClick { user_agent: Some(Box::from(&b"curl/8.5.0"[..])), ..raw_click() };
        let other_code = ShortCode::parse("BBBBBBBBBBBB").unwrap();
        let first = RawClick { code: other_code, at: Timestamp(6_000), ..raw_click() };
        for click in [repeat, bot, first] {
            recorder.record(click).await.unwrap();
        }
        stop.send(true).unwrap();
        writer.await.unwrap();

        let records = store.lease_records::<Vec<Click>>(CLICK_QUEUE, usize::MAX).await.unwrap();
        let written: Vec<&Click> = records.iter().flat_map(|(_, group)| group).collect();
        assert_eq!(written.len(), 1, "only the possible first visit: {written:?}");
        assert_eq!(written[0].code, other_code);
        assert_eq!(written[0].visit_key, Some(screen.keys.visit_key(written[0])), "written with its visit key");
        assert_eq!(stats.clicks_recorded.get(), 3);
        assert_eq!(stats.clicks_screened.get(), 2);
        assert_eq!(stats.clicks_persisted.get(), 1);
        assert_eq!(stats.duplicate_visits.get(), 1);
        assert_eq!(stats.not_visits(NotVisit::Crawler), 1);
    }

    /// In `sync` mode a redirect waits for its click's flush; a screened click has nothing
    /// to flush, and its redirect is answered all the same.
    #[tokio::test]
    async fn in_sync_mode_a_screened_click_is_answered_without_a_write() {
        let store = MemoryStore::new();
        let stats = Arc::new(Stats::default());
        let (_stop, stopped) = watch::channel(false);
        let (recorder, _writer) =
            channel(store.clone(), Durability::Sync, 64, screen(), stats.clone(), Arc::default(), stopped);
        let bot = RawClick { user_agent: Some(Box::from(&b"curl/8.5.0"[..])), ..raw_click() };
        assert_eq!(recorder.record(bot).await, Ok(()));
        assert_eq!(stats.clicks_screened.get(), 1);
        assert!(store.lease_records::<Vec<Click>>(CLICK_QUEUE, 10).await.unwrap().is_empty(), "nothing written");
    }
}
