//! Assembling the pipeline: the writer, the dispatcher and one worker per sink.

use std::sync::Arc;
use std::time::Duration;

use shortlinks_core::{AccountId, InstallationSecret, LinkCache, Store};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::capture::{self, ClickRecorder, Durability};
use crate::classify::Classifier;
use crate::dispatch::{Dispatcher, Route};
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

/// Sets the pipeline up; sinks are added before it starts.
pub struct PipelineBuilder<S> {
    store: S,
    links: LinkCache,
    keys: NoteKeys,
    config: PipelineConfig,
    stats: Arc<Stats>,
    shutdown: watch::Sender<bool>,
    routes: Vec<Route>,
    tasks: Vec<JoinHandle<()>>,
}

impl<S: Store + Clone> PipelineBuilder<S> {
    /// A pipeline over `store`, reading links through `links` (the cache the redirect
    /// fills, so a clicked link is rarely read twice), with keys derived from `secret`.
    pub fn new(store: S, links: LinkCache, secret: &InstallationSecret, config: PipelineConfig) -> Self {
        Self {
            store,
            links,
            keys: NoteKeys::derive(secret),
            config,
            stats: Arc::new(Stats::default()),
            shutdown: watch::channel(false).0,
            routes: Vec::new(),
            tasks: Vec::new(),
        }
    }

    /// Adds a sink for the notes of one account (or of all, with `None`), with a queue,
    /// dead letters, allowance and counters of its own ([`SinkKeys`]).
    pub fn sink<K: NoteSink>(mut self, sink: K, account: Option<AccountId>) -> Self {
        let wake = Arc::new(Notify::new());
        let keys = SinkKeys::new(sink.name(), account);
        let stats = self.stats.sink(keys.name, account);
        self.routes.push(Route { queue: keys.queue(), account, wake: wake.clone() });
        let (store, retry, shutdown) = (self.store.clone(), self.config.retry, self.shutdown.subscribe());
        let worker = run_sink(store, sink, keys, retry, wake, stats, shutdown);
        self.tasks.push(tokio::spawn(worker));
        self
    }

    /// Starts the writer and the dispatcher.
    pub fn start(self) -> Pipeline {
        let wake = Arc::new(Notify::new());
        let mut screen = Screen::new(self.keys, self.config.dedup_window, self.config.notes_per_link);
        screen.classifier = Classifier::new(ScannerNetworks::published_and(&self.config.scanner_networks));
        screen.address_rule = self.config.address_rule;
        screen.hold_ms = u64::try_from(self.config.note_hold.as_millis()).unwrap_or(u64::MAX);
        let screen = Arc::new(screen);
        let (recorder, writer) = capture::channel(
            self.store.clone(),
            self.config.durability,
            self.config.queue_capacity,
            screen.clone(),
            self.stats.clone(),
            wake.clone(),
            self.shutdown.subscribe(),
        );
        let dispatcher = Dispatcher {
            store: self.store,
            links: self.links,
            screen,
            routes: self.routes,
            stats: self.stats.clone(),
            wake,
            progress: Default::default(),
        };
        let mut tasks = self.tasks;
        tasks.push(tokio::spawn(dispatcher.run(self.shutdown.subscribe())));
        Pipeline { recorder, stats: self.stats, shutdown: self.shutdown, writer, tasks }
    }
}

/// The running pipeline.
pub struct Pipeline {
    recorder: ClickRecorder,
    stats: Arc<Stats>,
    shutdown: watch::Sender<bool>,
    writer: JoinHandle<()>,
    tasks: Vec<JoinHandle<()>>,
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
        for task in self.tasks {
            let _ = task.await;
        }
    }
}
