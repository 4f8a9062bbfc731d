//! `GET /api/v4/contacts/notes` and `GET /api/v4/contacts/{id}/notes`: the notes journal,
//! in amoCRM's HAL shape, scoped to the token's account and contacts.

use hyper::{Request, Response, StatusCode};
use serde::Serialize;
use shortlinks_core::store::NotesQuery;
use shortlinks_core::{ContactScope, EntityType, Principal, Store};
use shortlinks_notes::note::AmoNote;

use crate::app::App;
use crate::problem::{self, json_response, Body};
use crate::request::MAX_ENTITY_ID;

const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 250;
const LINK_FOLLOWED: &str = "link_followed";
/// The deepest page: each is read through from the start of the scope's notes.
const MAX_PAGE: u64 = 10_000;

/// A positive integer written plainly: digits only, no sign, no leading zero, at most 19
/// digits (so it always fits a `u64`).
fn positive_id(text: &str) -> Option<u64> {
    let plain = (1..=19).contains(&text.len()) && !text.starts_with('0') && text.bytes().all(|b| b.is_ascii_digit());
    plain.then(|| text.parse().ok()).flatten()
}

/// What the query string asks for.
#[derive(Debug, Default, PartialEq, Eq)]
struct NotesParams {
    entity_ids: Option<Vec<u64>>,
    note_types: Option<Vec<String>>,
    page: usize,
    limit: usize,
    /// The pairs other than `page`, to build `_links`.
    kept: Vec<(String, String)>,
}

fn parse_params(query: &str) -> Result<NotesParams, String> {
    let mut params = NotesParams { page: 1, limit: DEFAULT_LIMIT, ..Default::default() };
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        if key.starts_with("filter[entity_id]") {
            for id in value.split(',') {
                let id = positive_id(id).ok_or_else(|| {
                    format!("filter[entity_id] must be contact ids (1 to 19 digits, no leading 0), comma-separated; got {value:?}")
                })?;
                params.entity_ids.get_or_insert_with(Vec::new).push(id);
            }
        } else if key.starts_with("filter[note_type]") {
            let types = params.note_types.get_or_insert_with(Vec::new);
            types.extend(value.split(',').map(|t| t.trim().to_owned()));
        } else if key == "page" {
            params.page = positive_id(&value)
                .filter(|&page| page <= MAX_PAGE)
                .ok_or_else(|| format!("page must be an integer from 1 to {MAX_PAGE}"))?
                as usize;
            continue;
        } else if key == "limit" {
            params.limit = value
                .parse()
                .ok()
                .filter(|l| (1..=MAX_LIMIT).contains(l))
                .ok_or_else(|| format!("limit must be between 1 and {MAX_LIMIT}"))?;
        }
        params.kept.push((key.into_owned(), value.into_owned()));
    }
    Ok(params)
}

#[derive(Serialize)]
struct NotesPage<'a> {
    _page: usize,
    _links: PageLinks,
    _embedded: Embedded<'a>,
}

#[derive(Serialize)]
struct PageLinks {
    #[serde(rename = "self")]
    self_: Href,
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<Href>,
}

#[derive(Serialize)]
struct Href {
    href: String,
}

#[derive(Serialize)]
struct Embedded<'a> {
    notes: Vec<AmoNote<'a>>,
}

impl<S: Store> App<S> {
    pub(crate) async fn list_notes<B>(&self, request: &Request<B>, who: &Principal) -> Response<Body> {
        let path = request.uri().path();
        let rest = path.strip_prefix("/api/v4/contacts/").unwrap_or_default();
        let contact = match (rest, rest.strip_suffix("/notes")) {
            ("notes", _) => None,
            (_, None) => return problem::problem(StatusCode::NOT_FOUND, "There is no such API endpoint"),
            (_, Some(id)) => match positive_id(id).filter(|&id| id <= MAX_ENTITY_ID) {
                Some(id) => Some(id),
                None => return problem::problem(StatusCode::NOT_FOUND, "There is no such contact"),
            },
        };
        let params = match parse_params(request.uri().query().unwrap_or("")) {
            Ok(params) => params,
            Err(why) => return problem::problem(StatusCode::BAD_REQUEST, &why),
        };
        if params.note_types.as_ref().is_some_and(|types| !types.iter().any(|t| t == LINK_FOLLOWED)) {
            return no_content(); // the journal holds only link_followed notes
        }
        // Which contacts: the path's, the filter's, and the token's scope, all at once.
        let mut wanted: Option<Vec<u64>> = contact.map(|id| vec![id]);
        for more in [params.entity_ids.clone(), scope_ids(&who.scope)].into_iter().flatten() {
            wanted = Some(match wanted {
                None => more,
                Some(ids) => ids.into_iter().filter(|id| more.contains(id)).collect(),
            });
        }
        if let Some(ids) = &mut wanted {
            ids.sort_unstable();
            ids.dedup();
            if ids.is_empty() {
                return no_content();
            }
        }
        let query = NotesQuery {
            account: who.account,
            entity_type: EntityType::Contacts,
            entity_ids: wanted,
            offset: (params.page - 1).saturating_mul(params.limit),
            limit: params.limit + 1, // one more, to know whether there is a next page
        };
        let mut notes = match self.store.list_notes(query).await {
            Ok(notes) => notes,
            Err(e) => return problem::store_failure(&e, "listing notes"),
        };
        if notes.is_empty() {
            return no_content();
        }
        let has_next = notes.len() > params.limit;
        notes.truncate(params.limit);
        let href = |page: usize| {
            let mut query = url::form_urlencoded::Serializer::new(String::new());
            query.extend_pairs(params.kept.iter());
            query.append_pair("page", &page.to_string());
            format!("{path}?{}", query.finish())
        };
        let body = NotesPage {
            _page: params.page,
            _links: PageLinks {
                self_: Href { href: href(params.page) },
                next: has_next.then(|| Href { href: href(params.page + 1) }),
            },
            _embedded: Embedded { notes: notes.iter().map(AmoNote::of).collect() },
        };
        match serde_json::to_vec(&body) {
            Ok(bytes) => json_response("application/hal+json", bytes),
            Err(e) => problem::problem(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        }
    }
}

fn scope_ids(scope: &ContactScope) -> Option<Vec<u64>> {
    match scope {
        ContactScope::All => None,
        ContactScope::Only(ids) => Some(ids.as_slice().to_vec()),
    }
}

fn no_content() -> Response<Body> {
    let mut response = Response::new(Body::default());
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters() {
        let p = parse_params(
            "filter[entity_id][]=3&filter[entity_id][]=1,2&filter[note_type]=link_followed&page=2&limit=10",
        )
        .unwrap();
        assert_eq!(p.entity_ids, Some(vec![3, 1, 2]));
        assert_eq!(p.note_types, Some(vec!["link_followed".to_string()]));
        assert_eq!((p.page, p.limit), (2, 10));
        assert!(!p.kept.iter().any(|(k, _)| k == "page"));
        assert_eq!(parse_params("").unwrap().limit, 50);
        assert_eq!(parse_params("page=10000&filter[entity_id]=9999999999999999999").unwrap().page, 10_000);
        let bad = [
            "limit=251",
            "limit=0",
            "page=0",
            "page=x",
            "page=10001",
            "page=99999999999999999999",
            "filter[entity_id]=-1",
            "filter[entity_id]=a",
            "filter[entity_id]=1,,2",
            "filter[entity_id]=%201",
            "filter[entity_id]=01",
            "filter[entity_id]=",
        ];
        for bad in bad {
            assert!(parse_params(bad).is_err(), "{bad}");
        }
    }
}
