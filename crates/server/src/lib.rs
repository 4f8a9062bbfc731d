//! shortlinks-server: the amoCRM-compatible HTTP front end, and the `shortlinks` binary.
//!
//! A plain hyper 1.x server: [`server::serve`] is an accept loop, and [`App::handle`] is a
//! small hand-written router. No framework. Each connection starts in the redirect lane
//! (`lane`), which answers plain `GET /{code}` requests itself and hands anything else,
//! and the rest of the connection, to hyper.
//!
//! - `GET|HEAD /{code}`: the hot path, a 302 to the original URL.
//! - `POST /api/v4/short_links`: batch creation, amoCRM's shape ([`request`]).
//! - `GET /api/v4/contacts/notes`, `GET /api/v4/contacts/{id}/notes`: the notes journal.
//! - `GET /healthz`, `GET /readyz`, `GET /metrics`: liveness, readiness, counters.
//! - `POST /amocrm/contact-deleted/<account>/<secret>`: amoCRM's webhook; the contacts are
//!   erased ([`contact_deleted`]).
//!
//! Tokens ([`auth`]) are stored hashed; operator commands go through [`admin`], which
//! works whether or not a server holds the data directory.

mod accept_backoff;
mod access_log;
pub mod admin;
pub mod admission;
mod amocrm_pages;
mod app;
pub mod auth;
mod client_socket;
pub mod config;
mod console;
pub mod contact_deleted;
pub mod data_dir;
mod drain;
mod error;
mod host;
mod http_date;
mod http_metrics;
mod idle;
mod lane;
mod notes_api;
mod prefixed;
mod problem;
mod redirect;
pub mod request;
mod request_id;
pub mod server;
mod short_links;
pub mod status;

pub use app::{App, AppSettings};
pub use error::ServerError;
/// The redirect lane held to hyper, for the fuzz target `lane_vs_hyper`.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub use lane::oracle as lane_oracle;
pub use problem::Body;
