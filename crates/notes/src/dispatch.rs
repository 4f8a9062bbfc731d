//! The dispatcher: drains the click outbox in order, turns visits into notes, writes them to
//! the journal, hands them to every sink's own queue, and only then removes the clicks.
//!
//! At-least-once: a crash before the removal means the clicks are handled again, and the
//! notes they make have the same ids, so the journal keeps one copy and sinks see the same
//! idempotency key.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use std::collections::{HashMap, HashSet};

use shortlinks_core::model::{Click, Link, Note};

use shortlinks_core::model::VisitMark;
use shortlinks_core::store::{Claimed, RecordQueues, VisitClaim, CLICK_QUEUE};
use shortlinks_core::Timestamp;
use shortlinks_core::{AccountId, Error, LinkCache, ShortCode, Store};
use tokio::sync::{watch, Notify};

use crate::classify::NotVisit;
use crate::note::NoteKeys;
use crate::screen::Screen;
use crate::stats::Stats;
use crate::time_slice::TimeSlice;

/// Outbox records (each a group of clicks) handled per round.
const GROUPS: usize = 8;
/// Where an outbox record that cannot be read is set aside, rather than block the rest.
pub(crate) const DEAD_CLICKS: &str = "dead:clicks";
/// Even without a wake-up, look at the outbox this often (clicks written by another process).
const IDLE_POLL: Duration = Duration::from_secs(1);
/// How often the visit ledger is swept of marks that can no longer matter.
const SWEEP_EVERY: Duration = Duration::from_secs(600);
/// How often sightings are swept: they matter for a minute or two, and a campaign makes many.
const SIGHTINGS_SWEEP_EVERY: Duration = Duration::from_secs(60);
/// Clicks reach the dispatcher a little out of time order (groups from two workers, a
/// batch retried after an error): marks are kept this much past their window.
const SWEEP_SLACK_MS: u64 = 60_000;

/// Where a sink's notes go.
#[derive(Clone)]
pub(crate) struct Route {
    pub(crate) queue: String,
    pub(crate) account: Option<AccountId>,
    /// Notified when notes are queued.
    pub(crate) wake: Arc<Notify>,
    /// Notified when the sink may work again after its receiver refused our credentials
    /// (it was connected again): cuts that wait short, and no other.
    pub(crate) resume: Arc<Notify>,
}

/// Every sink's route; sinks are added while the pipeline runs (a connection made at run
/// time), so the dispatcher reads the current list once per batch.
pub(crate) type Routes = Arc<parking_lot::RwLock<Arc<Vec<Route>>>>;

/// Finds the sinks of accounts that have none on this node, before their notes are routed:
/// a connection made on another node of the store since this one last looked. Without it,
/// a note this node dispatches in that window would reach the journal only.
pub trait RouteFinder: Send + Sync + 'static {
    /// Starts the sinks any of `accounts` should have; an error only when the store fails
    /// (the dispatcher then tries the batch again).
    fn find<'a>(
        &'a self,
        accounts: &'a [AccountId],
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), shortlinks_core::Error>> + Send + 'a>>;
}

/// The route finder, once one is set.
pub(crate) type Finder = Arc<std::sync::OnceLock<Arc<dyn RouteFinder>>>;

pub(crate) struct Dispatcher<S> {
    pub(crate) store: S,
    pub(crate) links: LinkCache,
    /// Shared with the writer, which screens clicks before the outbox.
    pub(crate) screen: Arc<Screen>,
    pub(crate) routes: Routes,
    /// Finds routes this node lacks for accounts connected elsewhere.
    pub(crate) finder: Finder,
    pub(crate) stats: Arc<Stats>,
    pub(crate) wake: Arc<Notify>,
    /// The latest click time dispatched: how far through the clicks the dispatcher is.
    pub(crate) progress: AtomicU64,
}

impl<S: Store> Dispatcher<S> {
    pub(crate) async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(50);
        let mut last_sweep = tokio::time::Instant::now();
        let mut sweeping: Option<tokio::task::JoinHandle<()>> = None;
        let mut last_sightings_sweep = tokio::time::Instant::now();
        while !*shutdown.borrow() {
            if last_sweep.elapsed() >= SWEEP_EVERY && sweeping.as_ref().is_none_or(|s| s.is_finished()) {
                last_sweep = tokio::time::Instant::now();
                sweeping = self.sweep_horizon(Timestamp::now()).map(|before| tokio::spawn(self.sweep(before)));
            }
            if last_sightings_sweep.elapsed() >= SIGHTINGS_SWEEP_EVERY {
                last_sightings_sweep = tokio::time::Instant::now();
                self.sweep_sightings().await;
            }
            match self.dispatch_batch().await {
                Ok(Dispatched::Nothing) => {
                    tokio::select! {
                        () = self.wake.notified() => {}
                        () = tokio::time::sleep(IDLE_POLL) => {}
                        _ = shutdown.changed() => {}
                    }
                }
                Ok(Dispatched::HeldFor(wait)) => {
                    // The head of the outbox is on hold; later clicks are held longer.
                    tokio::select! {
                        () = tokio::time::sleep(wait.min(IDLE_POLL)) => {}
                        _ = shutdown.changed() => {}
                    }
                }
                Ok(Dispatched::Records(_)) => backoff = Duration::from_millis(50),
                Err(e) => {
                    tracing::error!(error = %e, "dispatching clicks failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Forgets the ledger's marks made before `before`, off the dispatcher's loop (on sled
    /// it is a pass over the whole tree).
    fn sweep(&self, before: Timestamp) -> impl std::future::Future<Output = ()> + Send + 'static {
        let (store, stats) = (self.store.clone(), self.stats.clone());
        async move {
            match store.forget_visits(before).await {
                Ok(n) => {
                    stats.visit_marks_forgotten.inc_by(n);
                    tracing::debug!(forgotten = n, ?before, "swept the visit ledger");
                }
                Err(e) => tracing::warn!(error = %e, "sweeping the visit ledger failed; trying again later"),
            }
        }
    }
}

/// What one round of dispatching did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Dispatched {
    /// The outbox is empty.
    Nothing,
    /// The oldest clicks are on hold this much longer.
    HeldFor(Duration),
    /// This many outbox records were handled.
    Records(usize),
}

impl<S: Store> Dispatcher<S> {
    /// Forgets sightings that no click still held or to come can look at.
    async fn sweep_sightings(&self) {
        if self.screen.address_rule.contacts == 0 {
            return;
        }
        let progress = self.progress.load(Relaxed).min(Timestamp::now().0);
        if let Some(before) = progress.checked_sub(self.screen.sighting_lifetime_ms()).filter(|&t| t > 0) {
            match self.store.forget_sightings(Timestamp(before)).await {
                Ok(n) => tracing::debug!(forgotten = n, "swept the address ledger"),
                Err(e) => tracing::warn!(error = %e, "sweeping the address ledger failed; trying again later"),
            }
        }
    }

    /// Marks made before this can no longer matter. It follows the dispatcher's progress,
    /// not the clock: clicks replayed after an outage still need the marks of their own
    /// hour. Capped at `now`, in case a click's time ran ahead of the clock.
    fn sweep_horizon(&self, now: Timestamp) -> Option<Timestamp> {
        let window_ms = self.screen.window_ms;
        let progress = self.progress.load(Relaxed).min(now.0);
        progress.checked_sub(window_ms.saturating_add(SWEEP_SLACK_MS)).filter(|&t| t > 0).map(Timestamp)
    }

    /// Handles the groups of clicks at the head of the outbox whose hold is over.
    pub(crate) async fn dispatch_batch(&self) -> Result<Dispatched, Error> {
        let mut records = self.store.lease(CLICK_QUEUE, GROUPS).await?;
        if records.is_empty() {
            return Ok(Dispatched::Nothing);
        }
        let now = Timestamp::now().0;
        let mut clicks = Vec::new();
        let mut due = 0;
        // A write retried after a timeout can be in the outbox twice, byte for byte, and
        // usually next to its original: the copy is dropped, not dispatched again.
        let mut distinct: HashSet<&[u8], foldhash::fast::RandomState> = HashSet::default();
        // The dispatcher shares the runtime's workers with the redirects: it gives the
        // worker back between slices of work, so no redirect waits behind a whole batch.
        let mut slice = TimeSlice::start();
        for (_, bytes) in &records {
            slice.tick().await;
            if !distinct.insert(bytes.as_slice()) {
                let copied = Click::decode_group(bytes).map_or(0, |group| group.len());
                self.stats.clicks_copied.inc_by(copied as u64);
                due += 1;
                continue;
            }
            match Click::decode_group(bytes) {
                Ok(group) => {
                    // A group is held until its latest click's hold is over; the ones
                    // behind it are later still.
                    let latest = group.iter().map(|c| c.at.0).max().unwrap_or(0);
                    let ready_at = latest.saturating_add(self.screen.hold_ms);
                    if ready_at > now {
                        if due == 0 {
                            return Ok(Dispatched::HeldFor(Duration::from_millis(ready_at - now)));
                        }
                        break;
                    }
                    clicks.extend(group);
                }
                Err(e) => {
                    tracing::error!(error = %e, "an outbox record cannot be read; setting it aside in {DEAD_CLICKS}");
                    self.store.push(DEAD_CLICKS, vec![bytes.clone()]).await?;
                }
            }
            due += 1;
        }
        records.truncate(due);
        let mut judged = Vec::new();
        let mut slice = TimeSlice::start();
        for click in &clicks {
            slice.tick().await;
            // Non-visits and remembered repeats need neither the link nor the store.
            if let Some(key) = self.screen.judge(click).key_or_count(&self.stats) {
                judged.push((key, click));
            }
        }
        // The links in one read of the store for the whole batch (after a restart none is
        // cached, and one round trip each would set the pace of a backlog's drain).
        let codes: Vec<ShortCode> = judged.iter().map(|(_, click)| click.code).collect();
        let links = self.links.get_many(&self.store, &codes).await?;
        let mut candidates = Vec::with_capacity(judged.len());
        for ((key, click), link) in judged.into_iter().zip(links) {
            let Some(link) = link else {
                self.stats.unknown_links.inc();
                continue;
            };
            candidates.push((key, click, link));
        }
        let mut claims = Vec::new();
        let candidates = self.without_gateways(candidates).await?;
        let candidates: Vec<_> = candidates
            .into_iter()
            .map(|(key, click, link)| {
                let note_id = self.screen.keys.note_id(click, &key);
                claims.push(VisitClaim { link: self.screen.keys.link_key(click), key, at: click.at, note_id });
                (note_id, click, link)
            })
            .collect();
        // Nothing to claim is the usual case under a flood of repeats: no store round trip.
        let claimed = match claims.is_empty() {
            true => Vec::new(),
            false => self.store.claim_visits(claims.clone(), self.screen.rules).await?,
        };
        for (claim, answer) in claims.iter().zip(&claimed) {
            match answer {
                Claimed::Note => {
                    self.screen.recent.remember(claim.key, VisitMark { at: claim.at, note_id: claim.note_id })
                }
                Claimed::Repeat => {
                    self.stats.duplicate_visits.inc();
                }
                Claimed::OverLinkCap => self.stats.not_visit(NotVisit::OverLinkCap),
            }
        }
        // Only visits that become notes pay for building one.
        let notes: Vec<Note> = candidates
            .into_iter()
            .zip(claimed)
            .filter(|(_, answer)| *answer == Claimed::Note)
            .map(|((id, click, link), _)| NoteKeys::note(id, click, &link))
            .collect();
        if !notes.is_empty() {
            let written = notes.len() as u64;
            // The journal takes the notes themselves when no sink needs them after it.
            let mut routes = self.routes.read().clone();
            if let Some(finder) = self.finder.get() {
                let mut unrouted: Vec<AccountId> =
                    notes.iter().map(|n| n.account).filter(|a| !routes.iter().any(|r| r.account == Some(*a))).collect();
                if !unrouted.is_empty() {
                    unrouted.sort_unstable();
                    unrouted.dedup();
                    finder.find(&unrouted).await?;
                    routes = self.routes.read().clone();
                }
            }
            let for_sinks = if routes.is_empty() { Vec::new() } else { notes.clone() };
            self.store.append_notes(notes).await?;
            let notes = for_sinks;
            for route in routes.iter() {
                let mine: Vec<&Note> =
                    notes.iter().filter(|n| route.account.is_none_or(|account| n.account == account)).collect();
                if !mine.is_empty() {
                    self.store.push_records(&route.queue, &mine).await?;
                    route.wake.notify_one();
                }
            }
            self.stats.notes_written.inc_by(written);
        }
        self.store.remove(CLICK_QUEUE, records.iter().map(|(id, _)| *id).collect()).await?;
        if let Some(latest) = clicks.iter().map(|c| c.at.0).max() {
            self.progress.fetch_max(latest, Relaxed);
        }
        self.stats.clicks_dispatched.inc_by(clicks.len() as u64);
        Ok(Dispatched::Records(records.len()))
    }

    /// Drops the candidates whose address was a gateway at their time (counted as
    /// `many_contacts`): one ledger read per address, of a few spans.
    async fn without_gateways<'c>(
        &self,
        candidates: Vec<([u8; 16], &'c Click, Arc<Link>)>,
    ) -> Result<Vec<([u8; 16], &'c Click, Arc<Link>)>, Error> {
        if self.screen.address_rule.contacts == 0 || candidates.is_empty() {
            return Ok(candidates);
        }
        let addresses: Vec<Option<[u8; 16]>> =
            candidates.iter().map(|(_, click, _)| click.client_ip.map(|ip| self.screen.keys.address_key(ip))).collect();
        let mut around: HashMap<[u8; 16], (u64, u64)> = HashMap::new();
        for ((_, click, _), address) in candidates.iter().zip(&addresses) {
            if let Some(address) = address {
                let span = around.entry(*address).or_insert((u64::MAX, 0));
                *span = (span.0.min(click.at.0), span.1.max(click.at.0));
            }
        }
        let mut spans = HashMap::with_capacity(around.len());
        for (address, (first, last)) in around {
            spans.insert(address, self.store.gateway_spans(address, Timestamp(first), Timestamp(last)).await?);
        }
        Ok(candidates
            .into_iter()
            .zip(addresses)
            .filter(|((_, click, _), address)| {
                let Some(address) = address else { return true };
                let vetoed = spans.get(address).is_some_and(|spans| spans.iter().any(|s| s.holds(click.at)));
                if vetoed {
                    self.stats.not_visit(NotVisit::ManyContacts);
                }
                !vetoed
            })
            .map(|(candidate, _)| candidate)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use shortlinks_core::store::{conformance, LinkStore, NotesJournal, NotesQuery, Queues};
    use shortlinks_core::{EntityRef, EntityType, MemoryStore, ShortCode};

    use super::*;

    /// A store holding the one link the clicks name.
    async fn store_with_link() -> MemoryStore {
        let store = MemoryStore::new();
        store.insert_links(vec![conformance::link("AAAAAAAAAAAA", 1, 9, "https://x.example/")]).await.unwrap();
        store
    }

    /// A browser's click on that link at `at`; the agent tells visitors apart.
    fn visit(at: u64, agent: &str) -> Click {
        Click {
            user_agent: Some(format!("Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 {agent}")),
            ..conformance::click("AAAAAAAAAAAA", at)
        }
    }

    /// The first ten notes of account 1's contacts.
    fn every_note() -> NotesQuery {
        NotesQuery { account: AccountId(1), entity_type: EntityType::Contacts, entity_ids: None, offset: 0, limit: 10 }
    }

    fn dispatcher(store: MemoryStore) -> Dispatcher<MemoryStore> {
        Dispatcher {
            store,
            links: LinkCache::new(100),
            screen: Arc::new(Screen::new(NoteKeys::new([1; 32], [2; 32]), Duration::from_secs(3600), 5)),
            routes: Routes::default(),
            finder: Default::default(),
            stats: Arc::new(Stats::default()),
            wake: Arc::new(Notify::new()),
            progress: AtomicU64::new(0),
        }
    }

    #[tokio::test]
    async fn two_clicks_in_one_millisecond_are_one_note_and_one_duplicate() {
        let store = store_with_link().await;
        let click = visit(5_000, "Firefox/125.0");
        let twin = Click { nonce: click.nonce + 1, ..click.clone() };
        store.push_records(CLICK_QUEUE, &[vec![click, twin]]).await.unwrap();

        let dispatcher = dispatcher(store.clone());
        assert_eq!(dispatcher.dispatch_batch().await.unwrap(), Dispatched::Records(1));
        assert_eq!(store.list_notes(every_note()).await.unwrap().len(), 1);
        assert_eq!(dispatcher.stats.duplicate_visits.get(), 1);
        assert_eq!(dispatcher.stats.clicks_dispatched.get(), 2);
        assert_eq!(dispatcher.dispatch_batch().await.unwrap(), Dispatched::Nothing, "the outbox is empty");
    }

    /// What a Redis stall leaves: one group of clicks stored three times (two appends that
    /// timed out, carried out later, and the retry that succeeded), next to each other.
    #[tokio::test]
    async fn copies_of_a_record_in_one_lease_are_dropped_not_dispatched_again() {
        let store = store_with_link().await;
        let group = vec![visit(5_000, "Firefox/125.0"), visit(5_001, "Firefox/126.0")];
        let other = vec![visit(5_002, "Firefox/127.0")];
        store.push_records(CLICK_QUEUE, &[group.clone(), group.clone(), group, other]).await.unwrap();

        let dispatcher = dispatcher(store.clone());
        assert_eq!(dispatcher.dispatch_batch().await.unwrap(), Dispatched::Records(4));
        assert_eq!(dispatcher.stats.clicks_copied.get(), 4, "two copies of two clicks");
        assert_eq!(dispatcher.stats.clicks_dispatched.get(), 3);
        assert_eq!(dispatcher.stats.notes_written.get(), 3);
        assert_eq!(store.list_notes(every_note()).await.unwrap().len(), 3);
        assert_eq!(dispatcher.dispatch_batch().await.unwrap(), Dispatched::Nothing, "the copies left the outbox too");
    }

    #[tokio::test]
    async fn the_ledger_is_swept_behind_the_dispatchers_progress_not_the_clock() {
        let store = store_with_link().await;
        let (hour, ten_hours) = (3_600_000, 36_000_000);
        let first = dispatcher(store.clone());
        assert_eq!(first.sweep_horizon(Timestamp::now()), None, "nothing dispatched yet");

        // A backlog from long ago (10 h after the epoch): two visitors, two hours apart.
        let clicks = vec![visit(ten_hours, "Firefox/125.0"), visit(ten_hours + 2 * hour, "Firefox/126.0")];
        store.push_records(CLICK_QUEUE, &[clicks]).await.unwrap();
        first.dispatch_batch().await.unwrap();
        assert_eq!(first.stats.notes_written.get(), 2);
        // Behind the latest click by the window and the slack, however late the clock is.
        let horizon = first.sweep_horizon(Timestamp::now()).unwrap();
        assert_eq!(horizon, Timestamp(ten_hours + 2 * hour - hour - SWEEP_SLACK_MS));
        assert_eq!(first.sweep_horizon(Timestamp(ten_hours)), Some(Timestamp(ten_hours - hour - SWEEP_SLACK_MS)));
        first.sweep(horizon).await;
        assert_eq!(first.stats.visit_marks_forgotten.get(), 1, "only the first visitor's mark");

        // In the store (a fresh dispatcher remembers nothing itself), the second visitor's
        // repeat within its window is still a duplicate; the first's mark is gone.
        let fresh = dispatcher(store.clone());
        let repeats = vec![visit(ten_hours + 2 * hour + 5, "Firefox/126.0"), visit(ten_hours + 5, "Firefox/125.0")];
        store.push_records(CLICK_QUEUE, &[repeats]).await.unwrap();
        fresh.dispatch_batch().await.unwrap();
        assert_eq!(fresh.stats.duplicate_visits.get(), 1);
        assert_eq!(fresh.stats.notes_written.get(), 1, "the forgotten visitor's click is a note again");
    }

    #[tokio::test(start_paused = true)]
    async fn the_running_dispatcher_sweeps_the_ledger_every_few_minutes() {
        let store = store_with_link().await;
        let hours = |n: u64| n * 3_600_000;
        store.push_records(CLICK_QUEUE, &[vec![visit(hours(10), "A/1"), visit(hours(12), "B/1")]]).await.unwrap();
        let running = dispatcher(store);
        let stats = running.stats.clone();
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(running.run(stopped));
        tokio::time::sleep(SWEEP_EVERY - Duration::from_secs(1)).await;
        assert_eq!(stats.notes_written.get(), 2);
        assert_eq!(stats.visit_marks_forgotten.get(), 0, "not yet");
        tokio::time::sleep(IDLE_POLL * 3).await;
        assert_eq!(stats.visit_marks_forgotten.get(), 1);
        stop.send(true).unwrap();
        task.await.unwrap();
    }

    /// The shape that stalled a node: one address (a mail gateway, or a load test's one
    /// client) with a million sightings in its window, each of another contact, and a large
    /// held backlog of its clicks released at once while redirects keep coming. On this
    /// one-thread runtime a dispatcher that held the thread would starve the "redirects";
    /// the ledger's spans make each click's screening a look at one span. The runtime runs
    /// on a thread of its own, so that one held for good fails the test rather than hang it.
    #[test]
    fn a_gateways_million_sightings_and_held_backlog_never_hold_the_runtime() {
        let (done, outcome) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let _ = done.send(runtime.block_on(gateway_backlog()));
        });
        // A deadline, not a speed target: the stall this guards against never ended.
        let (longest, stats) = outcome.recv_timeout(Duration::from_secs(300)).expect("the dispatcher stalled");
        assert_eq!(stats.not_visits(NotVisit::ManyContacts), 2_000, "every click is the gateway's");
        assert_eq!(stats.notes_written.get(), 0);
        assert!(longest < Duration::from_secs(2), "a redirect waited {longest:?} for the dispatcher");
    }

    /// Dispatches the gateway's backlog while "redirects" run; the longest wait between two.
    async fn gateway_backlog() -> (Duration, Arc<Stats>) {
        use crate::gateway::contact_key;
        use shortlinks_core::store::{AddressLedger, Sighting};
        use shortlinks_core::SledStore;

        const LINKS: u64 = 2_000;
        const SIGHTINGS: u64 = 1_000_000;
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let code = |i: u64| format!("G{i:011}");
        let links = (0..LINKS).map(|i| conformance::link(&code(i), 1, i, "https://x.example/")).collect();
        store.insert_links(links).await.unwrap();
        let screen = Arc::new(Screen::new(NoteKeys::new([1; 32], [2; 32]), Duration::from_secs(3600), 5));
        let address = screen.keys.address_key([127, 0, 0, 1].into());
        // A million clicks within 50 s, from one address, to contact after contact.
        let t0 = 1_000_000_000;
        let at = |n: u64| t0 + n / 20;
        for batch in 0..SIGHTINGS / 1_000 {
            let sightings = (batch * 1_000..(batch + 1) * 1_000)
                .map(|n| Sighting {
                    address,
                    contact: contact_key(AccountId(1), EntityRef::contact(n % LINKS)),
                    at: Timestamp(at(n)),
                })
                .collect();
            store.sight(sightings, screen.address_rule, 600_000).await.unwrap();
        }
        // The backlog: a click on every link, spread over those 50 s, in groups of 64.
        let clicks: Vec<Click> =
            (0..LINKS).map(|i| conformance::click(&code(i), at(i * (SIGHTINGS / LINKS)))).collect();
        let groups: Vec<Vec<Click>> = clicks.chunks(64).map(<[Click]>::to_vec).collect();
        store.push_records(CLICK_QUEUE, &groups).await.unwrap();

        let dispatcher = Dispatcher {
            store: store.clone(),
            links: LinkCache::new(4_096),
            screen,
            routes: Routes::default(),
            finder: Default::default(),
            stats: Arc::new(Stats::default()),
            wake: Arc::new(Notify::new()),
            progress: AtomicU64::new(0),
        };
        let (stats, cache) = (dispatcher.stats.clone(), dispatcher.links.clone());
        let (stop, stopped) = watch::channel(false);
        let dispatching = tokio::spawn(dispatcher.run(stopped));
        // "Redirects": a cached link read every millisecond; the longest wait between two.
        let redirects = tokio::spawn(async move {
            let (mut last, mut longest) = (std::time::Instant::now(), Duration::ZERO);
            let cached = ShortCode::from_key(code(0).as_bytes()).unwrap();
            while stats.clicks_dispatched.get() < LINKS {
                assert!(cache.get(&store, &cached).await.unwrap().is_some());
                tokio::time::sleep(Duration::from_millis(1)).await;
                longest = longest.max(last.elapsed());
                last = std::time::Instant::now();
            }
            (longest, stats)
        });
        let outcome = redirects.await.unwrap();
        stop.send(true).unwrap();
        dispatching.await.unwrap();
        outcome
    }

    #[tokio::test]
    async fn an_unreadable_outbox_record_is_set_aside_not_retried_forever() {
        let store = MemoryStore::new();
        store.push(CLICK_QUEUE, vec![b"garbage".to_vec()]).await.unwrap();
        let dispatcher = dispatcher(store.clone());
        dispatcher.dispatch_batch().await.unwrap();
        assert!(store.lease(CLICK_QUEUE, 10).await.unwrap().is_empty());
        assert_eq!(store.lease(DEAD_CLICKS, 10).await.unwrap().len(), 1);
    }
}
