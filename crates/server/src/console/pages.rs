//! The console's pages: what each shows, gathered from the store and this process, and
//! what each form does (through [`admin::execute`], as the command line).

use std::collections::HashSet;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use minijinja::{context, Environment, Value};
use serde::Serialize;
use shortlinks_core::model::{EntityRef, Note, NoteBody};
use shortlinks_core::store::{decode, NotesQuery};
use shortlinks_core::{AccountId, EntityType, ShortCode, Store, TargetUrl};
use shortlinks_notes::backlog::{self, QueueBacklog};
use shortlinks_notes::sink::amocrm::status::status;
use shortlinks_notes::sink::dead_letter::DeadLetter;
use shortlinks_notes::sink::SinkKeys;

use super::chart::minutes_chart;
use super::history::{Totals, KEPT};
use super::{field, see_other, Console};
use crate::admin::{self, AdminReply, AdminRequest, DeadLetterAction};
use crate::problem::Body;
use crate::status::age;

/// The most notes a look-up shows, and the most entries of a queue it looks through to
/// tell whether a note still waits.
const MOST_NOTES: usize = 200;
const MOST_LOOKED_AT: usize = 10_000;
/// The most dead letters a page lists.
const MOST_LETTERS: usize = 100;

/// The compiled templates.
pub(super) struct Pages {
    env: Environment<'static>,
}

impl Pages {
    pub(super) fn new() -> Self {
        let mut env = Environment::new();
        for (name, source) in [
            ("base.html", include_str!("templates/base.html")),
            ("login.html", include_str!("templates/login.html")),
            ("overview.html", include_str!("templates/overview.html")),
            ("lookup.html", include_str!("templates/lookup.html")),
            ("delivery.html", include_str!("templates/delivery.html")),
            ("tokens.html", include_str!("templates/tokens.html")),
            ("message.html", include_str!("templates/message.html")),
        ] {
            env.add_template(name, source).expect("the console's templates parse (a test renders each)");
        }
        Self { env }
    }

    /// A page, or a plain error if the template fails (a bug: the tests render each page).
    pub(super) fn render(&self, status: StatusCode, name: &str, context: Value) -> Response<Body> {
        let html = self.env.get_template(name).and_then(|t| t.render(context));
        let (status, body, kind) = match html {
            Ok(html) => (status, html, "text/html; charset=utf-8"),
            Err(e) => {
                tracing::error!(error = %e, template = name, "a console page failed to render");
                (StatusCode::INTERNAL_SERVER_ERROR, "the page failed to render\n".to_owned(), "text/plain")
            }
        };
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(kind));
        response
    }

    pub(super) fn login(&self, problem: Option<&str>) -> Response<Body> {
        self.render(StatusCode::OK, "login.html", context! { title => "Sign in", page => "login", problem })
    }

    /// A form without its CSRF token: refused, nothing done.
    pub(super) fn refused(&self, csrf: &str) -> Response<Body> {
        let problem = "That form was not this console's, or is out of date: nothing was done. Open the page again.";
        self.render(StatusCode::FORBIDDEN, "message.html", context! { title => "Refused", csrf, problem })
    }

    pub(super) fn not_found(&self, csrf: &str) -> Response<Body> {
        let problem = "There is no such page.";
        self.render(StatusCode::NOT_FOUND, "message.html", context! { title => "Not found", csrf, problem })
    }
}

/// A Unix time as an HTTP date (UTC).
fn date(secs: u64) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs))
}

/// What a queue's oldest item shows.
fn oldest(q: Option<&QueueBacklog>) -> String {
    q.and_then(|q| q.oldest_ms).map_or_else(|| "-".to_owned(), age)
}

/// The queues of this server's sinks, from the store (within [`backlog::READ_TIMEOUT`]).
async fn queues<S: Store>(console: &Console<S>, keys: &[SinkKeys]) -> Result<Vec<QueueBacklog>, String> {
    let names = backlog::queues(keys);
    match tokio::time::timeout(backlog::READ_TIMEOUT, backlog::backlog(console.app.store(), &names)).await {
        Ok(Ok(queues)) => Ok(queues),
        Ok(Err(e)) => Err(format!("The store did not answer: {e}")),
        Err(_) => Err("The store did not answer in time.".to_owned()),
    }
}

pub(super) async fn overview<S: Store>(console: &Console<S>, csrf: &str) -> Response<Body> {
    #[derive(Serialize)]
    struct Queue {
        queue: String,
        entries: u64,
        oldest: String,
    }
    let app = &console.app;
    let summary = app.stats.summary();
    let minutes = console.history.minutes(Totals::of(&summary));
    let keys = app.stats.sink_keys();
    let (queues, mut problem) = match queues(console, &keys).await {
        Ok(queues) => (queues, None),
        Err(problem) => (Vec::new(), Some(problem)),
    };
    let queues: Vec<Queue> =
        queues.iter().map(|q| Queue { queue: q.queue.clone(), entries: q.entries, oldest: oldest(Some(q)) }).collect();
    let accounts: Vec<AccountId> = keys.iter().filter(|k| k.name == "amocrm").filter_map(|k| k.account).collect();
    let connections = match status(app.store(), &accounts).await {
        Ok(connections) => connections,
        Err(e) => {
            problem.get_or_insert(format!("The store did not answer: {e}"));
            Vec::new()
        }
    };
    let (lane, hyper) = app.http_metrics.redirects();
    let context = context! {
        title => "Overview", page => "overview", csrf, problem,
        chart => minutes_chart(&minutes, KEPT),
        up => age(summary.uptime_secs * 1000),
        delivered => summary.sinks.iter().map(|s| s.delivered).sum::<u64>(),
        redirects => lane + hyper,
        summary, queues, connections,
    };
    console.pages.render(StatusCode::OK, "overview.html", context)
}

#[derive(Serialize)]
struct LinkRow {
    code: String,
    target: String,
    account: u64,
    contact: u64,
    made: String,
}

#[derive(Serialize)]
struct NoteRow {
    url: String,
    when: String,
    delivery: String,
}

/// The most links a look-up by URL lists.
const URL_LINKS_SHOWN: usize = 200;

pub(super) async fn lookup<S: Store>(console: &Console<S>, csrf: &str, query: &[(String, String)]) -> Response<Body> {
    let code = field(query, "code").unwrap_or_default().trim();
    let (account, contact) =
        (field(query, "account").unwrap_or("1").trim(), field(query, "contact").unwrap_or_default().trim());
    let url = field(query, "url").unwrap_or_default().trim();
    let store = console.app.store();
    let mut problem = None;
    let mut links = Vec::new();
    let mut whose = None;
    if !code.is_empty() {
        match ShortCode::parse(code) {
            None => problem = Some(format!("{code:?} is not a short code.")),
            Some(code) => match store.get_link(&code).await {
                Ok(Some(link)) => {
                    whose = Some((link.account, link.entity.id));
                    links.push(link);
                }
                Ok(None) => {}
                Err(e) => problem = Some(format!("The store did not answer: {e}")),
            },
        }
    } else if !contact.is_empty() {
        match (account.parse::<u64>(), contact.parse::<u64>()) {
            (Ok(account), Ok(contact)) if account > 0 => {
                whose = Some((AccountId(account), contact));
                match store.links_of(AccountId(account), EntityRef::contact(contact)).await {
                    Ok(found) => links = found,
                    Err(e) => problem = Some(format!("The store did not answer: {e}")),
                }
            }
            _ => problem = Some("An account and a contact are positive numbers.".to_owned()),
        }
    } else if !url.is_empty() {
        match (account.parse::<u64>(), TargetUrl::parse(url)) {
            (Ok(account), Ok(target)) if account > 0 => {
                match store.links_to(AccountId(account), &target, URL_LINKS_SHOWN + 1).await {
                    Ok(found) => links = found,
                    Err(e) => problem = Some(format!("The store did not answer: {e}")),
                }
            }
            (_, Err(why)) => problem = Some(format!("Not a link target: {why}.")),
            _ => problem = Some("An account is a positive number.".to_owned()),
        }
    }
    // A campaign's URL has a link per contact: the first ones, and say there are more.
    let more = links.len() > URL_LINKS_SHOWN;
    links.truncate(URL_LINKS_SHOWN);
    let notes = match whose {
        Some((account, contact)) if problem.is_none() => match notes_of(console, account, contact).await {
            Ok(notes) => Some(notes),
            Err(e) => {
                problem = Some(e);
                None
            }
        },
        _ => None,
    };
    let links: Vec<LinkRow> = links
        .into_iter()
        .map(|l| LinkRow {
            code: l.code.to_string(),
            target: l.target.to_string(),
            account: l.account.0,
            contact: l.entity.id,
            made: date(l.created_at.as_secs()),
        })
        .collect();
    let contact = whose.map_or_else(|| contact.to_owned(), |(_, c)| c.to_string());
    let account = whose.map_or_else(|| account.to_owned(), |(a, _)| a.0.to_string());
    let searched = !code.is_empty() || !contact.is_empty() || !url.is_empty();
    let context = context! {
        title => "Look-up", page => "lookup", csrf, problem, code, account, contact, url, searched, links, more,
        shown => URL_LINKS_SHOWN, notes,
    };
    console.pages.render(StatusCode::OK, "lookup.html", context)
}

/// A contact's notes, newest first, each with where it stands with this server's sinks.
async fn notes_of<S: Store>(console: &Console<S>, account: AccountId, contact: u64) -> Result<Vec<NoteRow>, String> {
    let store = console.app.store();
    let failed = |e: shortlinks_core::Error| format!("The store did not answer: {e}");
    let query = NotesQuery {
        account,
        entity_type: EntityType::Contacts,
        entity_ids: Some(vec![contact]),
        offset: 0,
        limit: MOST_NOTES,
    };
    let notes = store.list_notes(query).await.map_err(failed)?;
    // The sinks that take this account's notes, and which of its notes each still holds.
    let mut sinks = Vec::new();
    for keys in console.app.stats.sink_keys().into_iter().filter(|k| k.account.is_none_or(|a| a == account)) {
        let waiting: HashSet<u64> = store
            .peek(&keys.queue(), MOST_LOOKED_AT)
            .await
            .map_err(failed)?
            .iter()
            .filter_map(|(_, bytes)| decode::<Note>(bytes).ok().map(|n| n.id))
            .collect();
        let dead: HashSet<u64> = store
            .peek(&keys.dead_letters(), MOST_LOOKED_AT)
            .await
            .map_err(failed)?
            .iter()
            .filter_map(|(_, bytes)| decode::<DeadLetter>(bytes).ok().map(|l| l.note.id))
            .collect();
        sinks.push((keys.label, waiting, dead));
    }
    let mut rows: Vec<NoteRow> = notes
        .iter()
        .map(|note| {
            let NoteBody::LinkFollowed { url } = &note.body;
            let delivery: Vec<String> = sinks
                .iter()
                .map(|(label, waiting, dead)| match (waiting.contains(&note.id), dead.contains(&note.id)) {
                    (_, true) => format!("{label}: refused for good (a dead letter)"),
                    (true, false) => format!("{label}: waiting"),
                    (false, false) => format!("{label}: handed on"),
                })
                .collect();
            let delivery = if delivery.is_empty() { "in the journal only".to_owned() } else { delivery.join("; ") };
            NoteRow { url: url.to_string(), when: date(note.created_at.as_secs()), delivery }
        })
        .collect();
    rows.reverse();
    Ok(rows)
}

pub(super) async fn delivery<S: Store>(console: &Console<S>, csrf: &str, query: &[(String, String)]) -> Response<Body> {
    #[derive(Serialize)]
    struct SinkRow {
        label: String,
        state: String,
        delivered: u64,
        failed: u64,
        waiting: u64,
        oldest: String,
        dead: u64,
        errors: Vec<(String, String)>,
    }
    let app = &console.app;
    let summary = app.stats.summary();
    let keys = app.stats.sink_keys();
    let (queues, mut problem) = match queues(console, &keys).await {
        Ok(queues) => (queues, None),
        Err(problem) => (Vec::new(), Some(problem)),
    };
    let find = |name: String| queues.iter().find(|q| q.queue == name);
    let sinks: Vec<SinkRow> = summary
        .sinks
        .iter()
        .zip(&keys)
        .map(|(s, keys)| SinkRow {
            label: s.label.clone(),
            state: s.state.clone(),
            delivered: s.delivered,
            failed: s.failed_attempts,
            waiting: find(keys.queue()).map_or(0, |q| q.entries),
            oldest: oldest(find(keys.queue())),
            dead: find(keys.dead_letters()).map_or(0, |q| q.entries),
            errors: s.last_errors.iter().rev().map(|(at, why)| (date(*at), why.clone())).collect(),
        })
        .collect();
    let sink = field(query, "sink").unwrap_or("amocrm").to_owned();
    let account = field(query, "account").unwrap_or_default().trim().to_owned();
    let (mut count, mut letters) = (0, None);
    if !account.is_empty() {
        let request = match account.parse::<u64>() {
            Ok(id) => Some(AdminRequest::DeadLetters {
                sink: sink.clone(),
                account: id,
                action: DeadLetterAction::List { limit: MOST_LETTERS },
            }),
            Err(_) => {
                problem = Some("An account is a positive number.".to_owned());
                None
            }
        };
        if let Some(request) = request {
            match admin::execute(app.store(), request).await {
                AdminReply::DeadLetters { count: n, letters: found } => {
                    count = n;
                    letters = Some(
                        found
                            .into_iter()
                            .map(|l| context! { contact => l.contact, url => l.url, at => date(l.at), reason => l.reason })
                            .collect::<Vec<_>>(),
                    );
                }
                AdminReply::Failed { message } => problem = Some(message),
                other => problem = Some(format!("unexpected answer {other:?}")),
            }
        }
    }
    if field(query, "failed").is_some() {
        problem.get_or_insert_with(|| "That did not work; the server's log says why.".to_owned());
    }
    let notice = match (field(query, "done"), field(query, "n")) {
        (Some("replayed"), Some(n)) => Some(format!("{n} dead letters are back on their sink's queue.")),
        (Some("purged"), Some(n)) => Some(format!("{n} dead letters were deleted.")),
        (Some("changed"), Some(n)) => Some(format!("Nothing was deleted: there are {n} now. Look at them again.")),
        _ => None,
    };
    let context = context! {
        title => "Delivery", page => "delivery", csrf, problem, notice, sinks, sink, account, count, letters,
    };
    console.pages.render(StatusCode::OK, "delivery.html", context)
}

/// The sink and account of a dead-letter form, as the page after it shows them.
fn dead_letters_of(form: &[(String, String)]) -> Option<(String, u64)> {
    let sink = field(form, "sink").filter(|s| matches!(*s, "amocrm" | "webhook"))?.to_owned();
    let account = field(form, "account")?.trim().parse().ok()?;
    Some((sink, account))
}

pub(super) async fn replay<S: Store>(console: &Console<S>, form: &[(String, String)]) -> Response<Body> {
    let Some((sink, account)) = dead_letters_of(form) else { return see_other("/delivery") };
    let request = AdminRequest::DeadLetters { sink: sink.clone(), account, action: DeadLetterAction::Replay };
    match admin::execute(console.app.store(), request).await {
        AdminReply::Replayed { count } => {
            tracing::info!(sink, account, count, "the console replayed dead letters");
            see_other(&format!("/delivery?sink={sink}&account={account}&done=replayed&n={count}"))
        }
        other => see_other(&format!("/delivery?sink={sink}&account={account}&failed={}", failure(other))),
    }
}

pub(super) async fn purge<S: Store>(console: &Console<S>, form: &[(String, String)]) -> Response<Body> {
    let Some((sink, account)) = dead_letters_of(form) else { return see_other("/delivery") };
    let confirm = field(form, "count").and_then(|n| n.parse().ok());
    let request =
        AdminRequest::DeadLetters { sink: sink.clone(), account, action: DeadLetterAction::Purge { confirm } };
    let (done, count) = match admin::execute(console.app.store(), request).await {
        AdminReply::Purged { count } => {
            tracing::info!(sink, account, count, "the console deleted dead letters");
            ("purged", count)
        }
        AdminReply::ToConfirm { count } => ("changed", count),
        other => return see_other(&format!("/delivery?sink={sink}&account={account}&failed={}", failure(other))),
    };
    see_other(&format!("/delivery?sink={sink}&account={account}&done={done}&n={count}"))
}

/// A short word for an answer that was not the one asked for (its details are logged).
fn failure(reply: AdminReply) -> &'static str {
    tracing::warn!(?reply, "a console action failed");
    "1"
}

pub(super) async fn tokens<S: Store>(
    console: &Console<S>,
    csrf: &str,
    query: &[(String, String)],
    made: Option<Result<String, String>>,
) -> Response<Body> {
    // A token just made (its secret, shown this once), or why it was not.
    let (new_token, mut problem) = match made {
        Some(Ok(token)) => (Some(token), None),
        Some(Err(problem)) => (None, Some(problem)),
        None => (None, None),
    };
    let tokens = match admin::execute(console.app.store(), AdminRequest::TokenList).await {
        AdminReply::Tokens { tokens } => tokens,
        AdminReply::Failed { message } => {
            problem.get_or_insert(message);
            Vec::new()
        }
        other => {
            problem.get_or_insert(format!("unexpected answer {other:?}"));
            Vec::new()
        }
    };
    let tokens: Vec<Value> = tokens
        .into_iter()
        .map(|t| {
            let state = if t.revoked_at.is_some() { "revoked" } else { "active" };
            context! { id => t.id, account => t.account, user => t.user, contacts => t.contacts, made => date(t.created_at), state }
        })
        .collect();
    let notice = match field(query, "done") {
        Some("revoked") => Some("The token is revoked: it opens nothing from now on.".to_owned()),
        _ => None,
    };
    let context = context! { title => "Tokens", page => "tokens", csrf, problem, notice, tokens, new_token };
    console.pages.render(StatusCode::OK, "tokens.html", context)
}

pub(super) async fn create_token<S: Store>(
    console: &Console<S>,
    csrf: &str,
    form: &[(String, String)],
) -> Response<Body> {
    let number = |name| field(form, name).and_then(|v| v.trim().parse::<u64>().ok()).filter(|n| *n > 0);
    let scope = admin::parse_scope(field(form, "contacts").unwrap_or_default());
    let outcome = match (number("account"), number("user"), scope) {
        (Some(account), Some(user), Ok(scope)) => {
            match admin::execute(console.app.store(), AdminRequest::TokenCreate { account, user, scope }).await {
                AdminReply::Token { token } => {
                    tracing::info!(account, user, "the console made an API token");
                    Ok(token)
                }
                AdminReply::Failed { message } => Err(message),
                other => Err(format!("unexpected answer {other:?}")),
            }
        }
        (_, _, Err(e)) => Err(e.to_string()),
        _ => Err("The account and the user are positive numbers.".to_owned()),
    };
    tokens(console, csrf, &[], Some(outcome)).await
}

pub(super) async fn revoke_token<S: Store>(console: &Console<S>, form: &[(String, String)]) -> Response<Body> {
    let id = field(form, "id").unwrap_or_default().to_owned();
    match admin::execute(console.app.store(), AdminRequest::TokenRevoke { id: id.clone() }).await {
        AdminReply::Revoked { .. } => {
            tracing::info!(token = id, "the console revoked an API token");
            see_other("/tokens?done=revoked")
        }
        other => {
            failure(other);
            see_other("/tokens")
        }
    }
}
