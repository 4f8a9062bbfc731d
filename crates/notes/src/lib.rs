//! shortlinks-notes: from a click to a note on the contact, durably and off the hot path.
//!
//! ```text
//! redirect ──record──▶ bounded queue ──writer (screen, group commit)──▶ outbox "clicks"
//!                                                                          │
//!              dispatcher: classify → dedupe → note ◀──────────────────────┘
//!                 │ journal (the store's notes, served by the API)
//!                 └▶ "sink:webhook", "sink:amocrm:<account>" queues ──▶ one worker each, retrying
//! ```
//!
//! - `raw_click`: what the redirect hands over ([`RawClick`]).
//! - [`capture`]: the redirect's handle on the pipeline, and the group-commit writer.
//! - `screen`: what memory alone settles (non-visits, remembered repeats), so that only
//!   clicks that may become notes are written.
//! - [`classify`]: the table of what is not a visit (HEAD, prefetch, previews, scanners, bots).
//! - [`note`]: note ids, visit keys, amoCRM's JSON shape.
//! - [`sink`]: the [`sink::NoteSink`] trait, the webhook and amoCRM sinks, retry with backoff.
//! - [`pipeline`]: putting it together; [`stats`]: counters.
//! - [`erasure`]: a contact's notes removed, wherever they wait; [`retention`]: old notes
//!   and dead letters removed.

pub mod backlog;
pub mod capture;
pub mod classify;
mod dispatch;
pub mod erasure;
mod error;
pub mod gateway;
pub mod networks;
pub mod note;
pub mod pipeline;
mod raw_click;
mod recent;
pub mod replay;
pub mod retention;
mod screen;
pub mod sink;
mod sink_keys;
#[cfg(any(test, feature = "testing"))]
pub mod stand_in;
pub mod stats;
mod time_slice;

pub use capture::{ClickRecorder, Durability, NotRecorded};
pub use error::Error;
pub use pipeline::{Pipeline, PipelineBuilder, PipelineConfig, RouteFinder, Sinks};
pub use raw_click::{ClickHeaders, RawClick};
