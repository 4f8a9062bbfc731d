//! Assembling the pipeline: the writer, the dispatcher and one worker per sink.

use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use shortlinks_core::{AccountId, InstallationSecret, LinkCache, Store};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::capture::{self, ClickRecorder, Durability};
use crate::classify::Classifier;
pub use crate::dispatch::RouteFinder;
use crate::dispatch::{Dispatcher, Finder, Route, Routes};
use crate::gateway::AddressRule;
use crate::networks::ScannerNetworks;
use crate::note::NoteKeys;
use crate::screen::Screen;
use crate::sink::{run_sink, NoteSink, RetryPolicy, SinkKeys};
use crate::stats::Stats;

/// How the pipeline behaves.
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    /// When redirects may answer relative to their click's durability.
    pub durability: Durability,
    /// How many clicks may wait for the writer before redirects wait.
    pub queue_capacity: usize,
    /// Repeat visits by one client to one link within this window make one note.
    pub dedup_window: Duration,
    /// At most this many notes per link within the dedup window (0: no cap). A link is
    /// one contact's: a forwarded mail may add a few visitors, a flood never fifty.
    pub notes_per_link: u32,
    /// Backoff between a sink's attempts.
    pub retry: RetryPolicy,
    /// A visit becomes a note only this long after its click (zero: at once), so that the
    /// address rule can still veto it.
    pub note_hold: Duration,
    /// One address, many contacts (`contacts: 0` turns it off).
    pub address_rule: AddressRule,
    /// Scanner networks of the operator's own, beside the shipped ones.
    pub scanner_networks: Vec<ipnet::IpNet>,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            durability: Durability::default(),
            queue_capacity: 8192,
            dedup_window: Duration::from_secs(3600),
            notes_per_link: 5,
            note_hold: Duration::from_secs(60),
            address_rule: AddressRule::default(),
            scanner_networks: Vec::new(),
            retry: RetryPolicy::default(),
        }
    }
}

/// Sets the pipeline up; sinks are added before it starts, or later through [`Sinks`].
pub struct PipelineBuilder<S> {
    links: LinkCache,
    keys: NoteKeys,
    config: PipelineConfig,
    shutdown: watch::Sender<bool>,
    sinks: Sinks<S>,
}

/// Starts sink workers, before the pipeline starts or while it runs: a connection made at
/// run time (amoCRM's install flow) gets its worker without a restart.
#[derive(Clone)]
pub struct Sinks<S> {
    store: S,
    retry: RetryPolicy,
    stats: Arc<Stats>,
    shutdown: watch::Receiver<bool>,
    routes: Routes,
    finder: Finder,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl<S: Store> Sinks<S> {
    /// Starts a worker for `sink`, taking the notes of one account (or of all, with
    /// `None`), with a queue, dead letters, allowance and counters of its own
    /// ([`SinkKeys`]). False, starting nothing, if a sink with those keys runs already or
    /// the pipeline is stopping.
    pub fn add<K: NoteSink>(&self, sink: K, account: Option<AccountId>) -> bool {
        let keys = SinkKeys::new(sink.name(), account);
        let queue = keys.queue();
        let (wake, resume) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        {
            let mut routes = self.routes.write();
            if *self.shutdown.borrow() || routes.iter().any(|r| r.queue == queue) {
                return false;
            }
            let mut next = Vec::clone(&routes);
            next.push(Route { queue, account, wake: wake.clone(), resume: resume.clone() });
            *routes = Arc::new(next);
        }
        let stats = self.stats.sink(keys.name, account);
        let worker = run_sink(self.store.clone(), sink, keys, self.retry, (wake, resume), stats, self.shutdown.clone());
        self.tasks.lock().push(tokio::spawn(worker));
        true
    }

    /// Sets what finds the sinks of accounts this node has none for (once; later calls do
    /// nothing).
    pub fn find_routes_with(&self, finder: Arc<dyn RouteFinder>) {
        let _ = self.finder.set(finder);
    }

    /// Whether a sink with the keys of `name` and `account` runs.
    pub fn serves(&self, name: &'static str, account: Option<AccountId>) -> bool {
        let queue = SinkKeys::new(name, account).queue();
        self.routes.read().iter().any(|r| r.queue == queue)
    }

    /// Tells the sink with those keys that it may work again now (it was connected again),
    /// rather than after its wait for someone to act.
    pub fn resume(&self, name: &'static str, account: Option<AccountId>) {
        let queue = SinkKeys::new(name, account).queue();
        if let Some(route) = self.routes.read().iter().find(|r| r.queue == queue) {
            route.resume.notify_one();
        }
    }
}

impl<S: Store> PipelineBuilder<S> {
    /// A pipeline over `store`, reading links through `links` (the cache the redirect
    /// fills, so a clicked link is rarely read twice), with keys derived from `secret`.
    pub fn new(store: S, links: LinkCache, secret: &InstallationSecret, config: PipelineConfig) -> Self {
        let shutdown = watch::channel(false).0;
        let sinks = Sinks {
            store,
            retry: config.retry,
            stats: Arc::new(Stats::default()),
            shutdown: shutdown.subscribe(),
            routes: Routes::default(),
            finder: Finder::default(),
            tasks: Arc::default(),
        };
        Self { links, keys: NoteKeys::derive(secret), config, shutdown, sinks }
    }

    /// Adds a sink (see [`Sinks::add`]).
    pub fn sink<K: NoteSink>(self, sink: K, account: Option<AccountId>) -> Self {
        self.sinks.add(sink, account);
        self
    }

    /// What adds sinks, now or once the pipeline runs.
    pub fn sinks(&self) -> Sinks<S> {
        self.sinks.clone()
    }

    /// Starts the writer and the dispatcher.
    pub fn start(self) -> Pipeline {
        let wake = Arc::new(Notify::new());
        let mut screen = Screen::new(self.keys, self.config.dedup_window, self.config.notes_per_link);
        screen.classifier = Classifier::new(ScannerNetworks::published_and(&self.config.scanner_networks));
        screen.address_rule = self.config.address_rule;
        screen.hold_ms = u64::try_from(self.config.note_hold.as_millis()).unwrap_or(u64::MAX);
        let screen = Arc::new(screen);
        let Sinks { store, stats, routes, finder, tasks, .. } = self.sinks;
        let (recorder, writer) = capture::channel(
            store.clone(),
            self.config.durability,
            self.config.queue_capacity,
            screen.clone(),
            stats.clone(),
            wake.clone(),
            self.shutdown.subscribe(),
        );
        let dispatcher = Dispatcher {
            store,
            links: self.links,
            screen,
            routes,
            finder,
            stats: stats.clone(),
            wake,
            progress: Default::default(),
        };
        tasks.lock().push(tokio::spawn(dispatcher.run(self.shutdown.subscribe())));
        Pipeline { recorder, stats, shutdown: self.shutdown, writer, tasks }
    }
}

/// The running pipeline.
pub struct Pipeline {
    recorder: ClickRecorder,
    stats: Arc<Stats>,
    shutdown: watch::Sender<bool>,
    writer: JoinHandle<()>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Pipeline {
    /// The redirect's handle.
    pub fn recorder(&self) -> &ClickRecorder {
        &self.recorder
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Stops: the writer drains every click it was handed and flushes them; the dispatcher
    /// and the sinks stop after what they are doing. Nothing durable is lost: what is left
    /// in the outbox and the sink queues is taken up on the next start.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        drop(self.recorder);
        let _ = self.writer.await;
        // A sink added from now on sees the shutdown and starts nothing.
        let tasks = std::mem::take(&mut *self.tasks.lock());
        for task in tasks {
            let _ = task.await;
        }
    }
}
