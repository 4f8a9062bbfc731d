//! Parsing and validating the body of `POST /api/v4/short_links`.
//!
//! Pure: bytes in, links or problems out. Every problem of every item is collected, so a
//! client fixes its request in one round trip, and nothing is created unless all is well.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use shortlinks_core::{EntityRef, EntityType, NewLink, Principal, TargetUrl, MAX_BATCH};

/// The largest `entity_id`: amoCRM's ids, and every integer a JSON client (JavaScript's
/// numbers) holds exactly, are within 2^53 − 1.
pub const MAX_ENTITY_ID: u64 = (1 << 53) - 1;

/// Why a request body was refused (always a 400).
#[derive(Debug, PartialEq, Eq)]
pub enum BodyProblem {
    /// Not JSON.
    InvalidJson(String),
    /// JSON, but not an array.
    NotArray,
    /// An empty array.
    Empty,
    /// More than [`MAX_BATCH`] items.
    TooMany(usize),
    /// Items with problems, in order; items without any are not listed.
    Items(Vec<ItemErrors>),
}

impl BodyProblem {
    /// The `detail` of the 400 response.
    pub fn detail(&self) -> String {
        match self {
            Self::InvalidJson(e) => format!("Request body is not valid JSON: {e}"),
            Self::NotArray => "Request body must be a JSON array of links".into(),
            Self::Empty => "Request data can not be empty".into(),
            Self::TooMany(n) => format!("At most {MAX_BATCH} links per request, got {n}"),
            Self::Items(_) => "Request validation failed".into(),
        }
    }
}

/// The problems of one item, in amoCRM's `validation-errors` shape.
#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct ItemErrors {
    /// The item's index in the request, as a string (what amoCRM clients read).
    pub request_id: String,
    /// Each problem.
    pub errors: Vec<FieldError>,
}

/// One problem with one field.
#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// A machine-readable code: `FieldMissing`, `InvalidType`, `InvalidUrl`, `NotSupportedChoice`,
    /// `InvalidValue`, or `AccessDenied` (no rights to the entity).
    pub code: &'static str,
    /// The field, such as `metadata.entity_id`.
    pub path: &'static str,
    /// A sentence for people.
    pub detail: String,
}

/// Parses a request body into links to create.
pub fn parse_links(body: &[u8]) -> Result<Vec<NewLink>, BodyProblem> {
    let value: Value = serde_json::from_slice(body).map_err(|e| BodyProblem::InvalidJson(e.to_string()))?;
    let Value::Array(items) = value else { return Err(BodyProblem::NotArray) };
    if items.is_empty() {
        return Err(BodyProblem::Empty);
    }
    if items.len() > MAX_BATCH {
        return Err(BodyProblem::TooMany(items.len()));
    }
    // The items as they were written: an id's digits are read from its text, since a
    // `Value` holds a number with a fraction or exponent as a float, rounded.
    let written: Vec<&RawValue> = serde_json::from_slice(body).map_err(|e| BodyProblem::InvalidJson(e.to_string()))?;
    let mut links = Vec::with_capacity(items.len());
    let mut problems = Vec::new();
    for (index, (item, text)) in items.iter().zip(written).enumerate() {
        match parse_item(item, text) {
            Ok(link) => links.push(link),
            Err(errors) => problems.push(ItemErrors { request_id: index.to_string(), errors }),
        }
    }
    if problems.is_empty() {
        Ok(links)
    } else {
        Err(BodyProblem::Items(problems))
    }
}

/// The items `who` has no rights to, as validation errors: by default a batch with any of
/// them is refused whole, so that an answer always holds one link per item, in order.
pub fn without_rights(items: &[NewLink], who: &Principal) -> Vec<ItemErrors> {
    let refused = items.iter().enumerate().filter(|(_, item)| !who.scope.allows(item.entity));
    refused
        .map(|(index, item)| ItemErrors {
            request_id: index.to_string(),
            errors: vec![error(
                "AccessDenied",
                "metadata.entity_id",
                &format!("the token has no rights to contact {}", item.entity.id),
            )],
        })
        .collect()
}

/// Whether the caller asked for a partial result (`?partial=true`): links for the items it
/// has rights to, and the rest listed under `skipped`, instead of a refusal.
pub fn wants_partial(query: Option<&str>) -> Result<bool, String> {
    let mut partial = false;
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if key == "partial" {
            partial = match value.as_ref() {
                "true" => true,
                "false" => false,
                other => return Err(format!("partial must be true or false, got {other:?}")),
            };
        }
    }
    Ok(partial)
}

fn parse_item(item: &Value, written: &RawValue) -> Result<NewLink, Vec<FieldError>> {
    let Value::Object(fields) = item else {
        return Err(vec![error("InvalidType", "", "each link must be an object with url and metadata")]);
    };
    let mut errors = Vec::new();
    let target = match fields.get("url") {
        None | Some(Value::Null) => Err(error("FieldMissing", "url", "url is required")),
        Some(Value::String(url)) => TargetUrl::parse(url).map_err(|why| error("InvalidUrl", "url", &why.to_string())),
        Some(_) => Err(error("InvalidType", "url", "url must be a string")),
    };
    let entity = match fields.get("metadata") {
        None | Some(Value::Null) => Err(vec![error("FieldMissing", "metadata", "metadata is required")]),
        Some(Value::Object(meta)) => parse_metadata(meta, written),
        Some(_) => Err(vec![error("InvalidType", "metadata", "metadata must be an object")]),
    };
    let target = target.map_err(|e| errors.push(e));
    let entity = entity.map_err(|e| errors.extend(e));
    match (target, entity) {
        (Ok(target), Ok(entity)) => Ok(NewLink { target, entity }),
        _ => Err(errors),
    }
}

/// The text of an item's `metadata.entity_id`, as written.
#[derive(Deserialize)]
struct WrittenId<'a> {
    #[serde(borrow)]
    metadata: WrittenMetadata<'a>,
}

#[derive(Deserialize)]
struct WrittenMetadata<'a> {
    #[serde(borrow)]
    entity_id: &'a RawValue,
}

/// The integer a JSON number's text stands for, exactly, if it is one from 0 to
/// [`MAX_ENTITY_ID`]: `7`, `7.0`, `7e0`, `0.7e1` and `700e-2` are all 7; `7.5`, `-7` and
/// `1e16` are none.
fn exact_integer(text: &str) -> Option<u64> {
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(at) => (&text[..at], text[at + 1..].parse::<i64>().ok()?),
        None => (text, 0),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if !(whole.bytes().chain(fraction.bytes()).all(|b| b.is_ascii_digit())) || whole.is_empty() {
        return None; // a sign, or not a number
    }
    // digits × 10^shift, without leading or trailing zeros.
    let digits = format!("{whole}{fraction}");
    let mut shift = exponent.checked_sub(i64::try_from(fraction.len()).ok()?)?;
    let digits = digits.trim_start_matches('0');
    let significant = digits.trim_end_matches('0');
    shift = shift.checked_add(i64::try_from(digits.len() - significant.len()).ok()?)?;
    if significant.is_empty() {
        return Some(0);
    }
    if shift < 0 || shift.saturating_add(significant.len() as i64) > 16 {
        return None; // a fraction, or more than 2^53 can hold
    }
    let value: u64 = significant.parse().ok()?;
    let value = value.checked_mul(10u64.checked_pow(u32::try_from(shift).ok()?)?)?;
    (value <= MAX_ENTITY_ID).then_some(value)
}

fn parse_metadata(meta: &serde_json::Map<String, Value>, written: &RawValue) -> Result<EntityRef, Vec<FieldError>> {
    const TYPE: &str = "metadata.entity_type";
    const ID: &str = "metadata.entity_id";
    let kind = match meta.get("entity_type") {
        None | Some(Value::Null) => Err(error("FieldMissing", TYPE, "entity_type is required")),
        Some(Value::String(name)) => EntityType::from_name(name)
            .ok_or_else(|| error("NotSupportedChoice", TYPE, "entity_type must be \"contacts\"")),
        Some(_) => Err(error("InvalidType", TYPE, "entity_type must be a string")),
    };
    let id = match meta.get("entity_id") {
        None | Some(Value::Null) => Err(error("FieldMissing", ID, "entity_id is required")),
        // JSON has one number type: 7.0 is the integer 7 (as JSON Schema says), 7.5 is not.
        // Read from the text: as a float, 9007199254740991.0 would be another contact.
        Some(Value::Number(_)) => {
            let text = serde_json::from_str::<WrittenId>(written.get()).ok().map(|w| w.metadata.entity_id.get());
            match text.and_then(exact_integer) {
                Some(id) if id >= 1 => Ok(id),
                _ => Err(error("InvalidValue", ID, &format!("entity_id must be an integer from 1 to {MAX_ENTITY_ID}"))),
            }
        }
        Some(_) => Err(error("InvalidType", ID, "entity_id must be an integer")),
    };
    match (kind, id) {
        (Ok(kind), Ok(id)) => Ok(EntityRef { kind, id }),
        (kind, id) => Err(kind.err().into_iter().chain(id.err()).collect()),
    }
}

fn error(code: &'static str, path: &'static str, detail: &str) -> FieldError {
    FieldError { code, path, detail: detail.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_example_parses() {
        let body = br#"[{"url":"https://www.yandex.ru","metadata":{"entity_type":"contacts","entity_id":11070881}}]"#;
        let links = parse_links(body).unwrap();
        assert_eq!(
            links,
            vec![NewLink {
                target: TargetUrl::parse("https://www.yandex.ru").unwrap(),
                entity: EntityRef::contact(11070881)
            }]
        );
    }

    #[test]
    fn rights_are_checked_item_by_item() {
        use shortlinks_core::{AccountId, ContactScope, UserId};
        let who = Principal { account: AccountId(1), user: UserId(1), scope: ContactScope::only(vec![2, 4]) };
        let items: Vec<NewLink> = [2, 3, 4, 5]
            .into_iter()
            .map(|id| NewLink {
                target: TargetUrl::parse("https://x.example").unwrap(),
                entity: EntityRef::contact(id),
            })
            .collect();
        let refused = without_rights(&items, &who);
        let summary: Vec<(&str, &str, &str)> =
            refused.iter().map(|i| (i.request_id.as_str(), i.errors[0].code, i.errors[0].path)).collect();
        assert_eq!(summary, [("1", "AccessDenied", "metadata.entity_id"), ("3", "AccessDenied", "metadata.entity_id")]);
        assert!(refused[0].errors[0].detail.contains("contact 3"));
        assert!(without_rights(&items, &Principal::all_contacts(AccountId(1), UserId(1))).is_empty());

        assert_eq!(wants_partial(None), Ok(false));
        assert_eq!(wants_partial(Some("partial=true")), Ok(true));
        assert_eq!(wants_partial(Some("x=1&partial=false")), Ok(false));
        assert!(wants_partial(Some("partial=yes")).is_err());
    }

    #[test]
    fn whole_body_problems() {
        assert!(matches!(parse_links(b"[{"), Err(BodyProblem::InvalidJson(_))));
        assert!(matches!(parse_links(b""), Err(BodyProblem::InvalidJson(_))));
        assert_eq!(parse_links(br#"{"url":"x"}"#), Err(BodyProblem::NotArray));
        assert_eq!(parse_links(b"[]"), Err(BodyProblem::Empty));
        let item = r#"{"url":"https://x.example","metadata":{"entity_type":"contacts","entity_id":1}}"#;
        let big = format!("[{}]", vec![item; 251].join(","));
        assert_eq!(parse_links(big.as_bytes()), Err(BodyProblem::TooMany(251)));
        let full = format!("[{}]", vec![item; 250].join(","));
        assert_eq!(parse_links(full.as_bytes()).unwrap().len(), 250);
    }

    /// Every spelling of an integer in range is that id, read exactly (a float would read
    /// 9007199254740991.0 as ...990 and 4087901059782210.0 as ...209.5); anything else
    /// is refused.
    #[test]
    fn an_id_is_the_same_whatever_its_spelling_and_exact_at_the_boundaries() {
        let id = |text: &str| {
            let body = format!(
                r#"[{{"url":"https://x.example","metadata":{{"entity_type":"contacts","entity_id":{text}}}}}]"#
            );
            parse_links(body.as_bytes()).ok().map(|links| links[0].entity.id)
        };
        for seven in ["7", "7.0", "7e0", "7E+0", "0.7e1", "700e-2", "70.00e-1"] {
            assert_eq!(id(seven), Some(7), "{seven}");
        }
        for max in ["9007199254740991", "9007199254740991.0", "9.007199254740991e15", "90071992547409910e-1"] {
            assert_eq!(id(max), Some(MAX_ENTITY_ID), "{max}");
        }
        assert_eq!(id("4087901059782210.0"), Some(4_087_901_059_782_210));
        assert_eq!(id("4503599627370497.0"), Some(4_503_599_627_370_497));
        for refused in [
            "9007199254740992",
            "9007199254740992.0",
            "9.007199254740992e15",
            "4503599627370497.5",
            "9007199254740991.0000000001",
            "7.5",
            "0",
            "0.0",
            "-0",
            "-7",
            "1e16",
            "1e300",
            "1e-300",
            "7e99999999999999999999",
        ] {
            assert_eq!(id(refused), None, "{refused}");
        }
    }

    #[test]
    fn every_problem_of_every_item_is_reported() {
        let body = br#"[
            {"url":"https://ok.example","metadata":{"entity_type":"contacts","entity_id":1}},
            {"url":"javascript:alert(1)","metadata":{"entity_type":"leads","entity_id":-5}},
            {"metadata":{"entity_type":"contacts"}},
            {"url":"https://ok.example","metadata":{"entity_type":"contacts","entity_id":"7"}},
            {"url":"https://ok.example","metadata":{"entity_type":"contacts","entity_id":0}},
            {"url":"https://ok.example","metadata":{"entity_type":"contacts","entity_id":1.5}},
            "string",
            {"url":42,"metadata":[]},
            {"url":"https://ok.example","metadata":{"entity_type":"contacts","entity_id":9007199254740991}},
            {"url":"https://ok.example","metadata":{"entity_type":"contacts","entity_id":9007199254740992}},
            {"url":"https://ok.example","metadata":{"entity_type":"contacts","entity_id":18446744073709551615}},
            {"url":"https://ok.example","metadata":{"entity_type":"contacts","entity_id":7.0}},
            {"url":"https://ok.example","metadata":{"entity_type":"contacts","entity_id":1e300}}
        ]"#;
        let Err(BodyProblem::Items(items)) = parse_links(body) else { panic!() };
        let summary: Vec<(String, Vec<(&str, &str)>)> =
            items.iter().map(|i| (i.request_id.clone(), i.errors.iter().map(|e| (e.code, e.path)).collect())).collect();
        assert_eq!(
            summary,
            vec![
                (
                    "1".into(),
                    vec![
                        ("InvalidUrl", "url"),
                        ("NotSupportedChoice", "metadata.entity_type"),
                        ("InvalidValue", "metadata.entity_id")
                    ]
                ),
                ("2".into(), vec![("FieldMissing", "url"), ("FieldMissing", "metadata.entity_id")]),
                ("3".into(), vec![("InvalidType", "metadata.entity_id")]),
                ("4".into(), vec![("InvalidValue", "metadata.entity_id")]),
                ("5".into(), vec![("InvalidValue", "metadata.entity_id")]),
                ("6".into(), vec![("InvalidType", "")]),
                ("7".into(), vec![("InvalidType", "url"), ("InvalidType", "metadata")]),
                ("9".into(), vec![("InvalidValue", "metadata.entity_id")]),
                ("10".into(), vec![("InvalidValue", "metadata.entity_id")]),
                ("12".into(), vec![("InvalidValue", "metadata.entity_id")]),
            ]
        );
        assert!(items[0].errors[0].detail.contains("javascript"), "{:?}", items[0].errors[0]);
    }
}
