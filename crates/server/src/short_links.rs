//! `POST /api/v4/short_links`: amoCRM's batch link creation.

use http_body_util::{BodyExt, Limited};
use hyper::body::Body as HttpBody;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use serde::Serialize;
use shortlinks_core::{CreateError, Link, Outcome, Principal, Store};

use crate::app::App;
use crate::problem::{self, json_response, validation_failed, Body};
use crate::request::{parse_links, wants_partial, without_rights, BodyProblem};

const SELF_HREF: &str = "/api/v4/short_links";

#[derive(Serialize)]
struct Created<'a> {
    _links: SelfLink,
    _embedded: Embedded<'a>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    skipped: Vec<Skipped>,
}

#[derive(Serialize)]
struct SelfLink {
    #[serde(rename = "self")]
    self_: Href,
}

#[derive(Serialize)]
struct Href {
    href: &'static str,
}

#[derive(Serialize)]
struct Embedded<'a> {
    short_links: Vec<ShortLink<'a>>,
}

#[derive(Serialize)]
struct ShortLink<'a> {
    url: String,
    account_id: u64,
    metadata: Metadata<'a>,
}

#[derive(Serialize)]
struct Metadata<'a> {
    entity_type: &'a str,
    entity_id: u64,
}

/// An item for which no link was made, so that a client can tell what happened.
#[derive(Serialize)]
struct Skipped {
    request_id: String,
    metadata: Metadata<'static>,
    reason: &'static str,
}

impl<S: Store> App<S> {
    /// A request's body, within the size and time limits; the answer refusing it if not.
    pub(crate) async fn body<B>(&self, request: Request<B>) -> Result<bytes::Bytes, Response<Body>>
    where
        B: HttpBody,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let max = self.limits.max_body_bytes;
        let declared = request.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|len| len > max as u64) {
            return Err(too_large(max));
        }
        let read = Limited::new(request.into_body(), max).collect();
        match tokio::time::timeout(self.limits.body_read_timeout, read).await {
            Err(_) => Err(problem::problem(StatusCode::REQUEST_TIMEOUT, "The request body took too long to arrive")),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large(max)),
            Ok(Err(e)) => {
                Err(problem::problem(StatusCode::BAD_REQUEST, &format!("The request body could not be read: {e}")))
            }
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
        }
    }

    pub(crate) async fn create_links<B>(&self, request: Request<B>, who: Principal) -> Response<Body>
    where
        B: HttpBody,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if !is_json(request.headers().get(CONTENT_TYPE)) {
            return problem::problem(StatusCode::UNSUPPORTED_MEDIA_TYPE, "Content-Type must be application/json");
        }
        let query = request.uri().query().map(str::to_owned);
        let body = match self.body(request).await {
            Ok(body) => body,
            Err(refused) => return refused,
        };
        let items = match parse_links(&body) {
            Ok(items) => items,
            Err(BodyProblem::Items(items)) => {
                return validation_failed(&BodyProblem::Items(Vec::new()).detail(), &items)
            }
            Err(other) => return problem::problem(StatusCode::BAD_REQUEST, &other.detail()),
        };
        let partial = match wants_partial(query.as_deref()) {
            Ok(partial) => partial,
            Err(why) => return problem::problem(StatusCode::BAD_REQUEST, &why),
        };
        let refused = without_rights(&items, &who);
        if !refused.is_empty() && !partial {
            return validation_failed("The token has no rights to some of the contacts; nothing was created", &refused);
        }
        let outcomes = match self.engine.create(&who, &items).await {
            Ok(outcomes) => outcomes,
            Err(CreateError::Store(e)) => return problem::store_failure(&e, "creating links"),
            Err(e) => {
                tracing::error!(error = %e, "creating links failed");
                return problem::problem(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string());
            }
        };
        self.created(&outcomes, &items)
    }

    fn created(&self, outcomes: &[Outcome], items: &[shortlinks_core::NewLink]) -> Response<Body> {
        let mut short_links = Vec::with_capacity(outcomes.len());
        let mut skipped = Vec::new();
        for (index, (outcome, item)) in outcomes.iter().zip(items).enumerate() {
            match outcome {
                Outcome::Linked(link) => short_links.push(self.short_link(link)),
                Outcome::NoRights => skipped.push(Skipped {
                    request_id: index.to_string(),
                    metadata: Metadata { entity_type: item.entity.kind.as_str(), entity_id: item.entity.id },
                    reason: "no rights to this entity",
                }),
            }
        }
        let body = Created {
            _links: SelfLink { self_: Href { href: SELF_HREF } },
            _embedded: Embedded { short_links },
            skipped,
        };
        match serde_json::to_vec(&body) {
            Ok(bytes) => json_response("application/hal+json", bytes),
            Err(e) => problem::problem(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        }
    }

    fn short_link<'a>(&self, link: &'a Link) -> ShortLink<'a> {
        ShortLink {
            url: format!("{}/{}", self.public_url.as_str(), link.code),
            account_id: link.account.0,
            metadata: Metadata { entity_type: link.entity.kind.as_str(), entity_id: link.entity.id },
        }
    }
}

/// `application/json`, with or without parameters such as `charset`.
fn is_json(content_type: Option<&hyper::header::HeaderValue>) -> bool {
    content_type
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

fn too_large(max: usize) -> Response<Body> {
    problem::problem(StatusCode::PAYLOAD_TOO_LARGE, &format!("The request body is larger than {max} bytes"))
}
