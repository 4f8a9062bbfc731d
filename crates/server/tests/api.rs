//! The HTTP API over a real socket, against a real sled directory.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

mod common;

use common::{code_of, item, send, TestServer};
use hyper::Method;
use serde_json::json;
use shortlinks_core::store::LinkStore;
use shortlinks_core::{AccountId, ContactScope, EntityRef, SledStore};
use shortlinks_server::admin::{self, AdminReply, AdminRequest};
use shortlinks_server::config::{SettingsLayer, StorageSettings};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spec_example_request_and_response() {
    let server = TestServer::start().await;
    let reply = server
        .post_links(
            &server.token,
            r#"[{"url":"https://www.yandex.ru","metadata":{"entity_type":"contacts","entity_id":11070881}}]"#,
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.content_type(), "application/hal+json");
    let body = reply.json();
    let url = body["_embedded"]["short_links"][0]["url"].as_str().unwrap().to_owned();
    assert_eq!(
        body,
        json!({
            "_links": {"self": {"href": "/api/v4/short_links"}},
            "_embedded": {"short_links": [
                {"url": url, "account_id": 1, "metadata": {"entity_type": "contacts", "entity_id": 11070881}}
            ]}
        }),
        "exactly the spec's shape"
    );
    assert!(url.starts_with(&format!("{}/", server.base)), "{url}");
    assert_eq!(code_of(&url).len(), 12);
    assert!(code_of(&url).bytes().all(|b| b.is_ascii_alphanumeric()));

    let redirect = server.get(&format!("/{}", code_of(&url))).await;
    assert_eq!(redirect.status, 302);
    assert_eq!(redirect.headers["location"], "https://www.yandex.ru/");
    assert_eq!(redirect.headers["cache-control"], "private, no-store");
    assert!(redirect.body.is_empty());
}

/// An id written with a fraction or an exponent is the same contact as its integer, read
/// exactly at the largest id; 2^53 and a fraction are refused with the item's error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entity_id_is_read_exactly_whatever_its_spelling() {
    let server = TestServer::start().await;
    let item = |id: &str| {
        format!(r#"{{"url":"https://x.example/","metadata":{{"entity_type":"contacts","entity_id":{id}}}}}"#)
    };
    let spellings = ["9007199254740991", "9007199254740991.0", "4087901059782210.0", "4087901059782210", "7e0", "7"];
    let body = format!("[{}]", spellings.map(item).join(","));
    let reply = server.post_links(&server.token, &body).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let links = reply.json()["_embedded"]["short_links"].as_array().unwrap().clone();
    let ids: Vec<u64> = links.iter().map(|l| l["metadata"]["entity_id"].as_u64().unwrap()).collect();
    assert_eq!(ids, [9007199254740991, 9007199254740991, 4087901059782210, 4087901059782210, 7, 7]);
    assert_eq!(links[0]["url"], links[1]["url"], "one contact, one link");
    assert_eq!(links[2]["url"], links[3]["url"]);
    assert_eq!(links[4]["url"], links[5]["url"]);

    let body = format!("[{},{},{}]", item("1"), item("9007199254740992.0"), item("4503599627370497.5"));
    let problem = server.post_links(&server.token, &body).await.problem(400);
    let refused: Vec<&str> =
        problem["validation-errors"].as_array().unwrap().iter().map(|e| e["request_id"].as_str().unwrap()).collect();
    assert_eq!(refused, ["1", "2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_answers_like_get_without_a_body() {
    let server = TestServer::start().await;
    let body = json!([item("https://example.com/page?x=1", 5)]).to_string();
    let url = server.post_links(&server.token, &body).await.json()["_embedded"]["short_links"][0]["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let head = send(server.addr, Method::HEAD, &format!("/{}", code_of(&url)), &[], Vec::new()).await;
    assert_eq!(head.status, 302);
    assert_eq!(head.headers["location"], "https://example.com/page?x=1");
    assert_eq!(head.headers["cache-control"], "private, no-store");
    assert!(head.body.is_empty());
    let missing = send(server.addr, Method::HEAD, "/AAAAAAAAAAAA", &[], Vec::new()).await;
    assert_eq!(missing.status, 404);
    assert!(missing.body.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_malformed_codes_get_a_small_html_404() {
    let server = TestServer::start().await;
    for path in ["/AAAAAAAAAAAA", "/short", "/has-dash-123", "/%41%41%41%41%41%41%41%41", "/", "/a/b", "/favicon.ico"] {
        let reply = server.get(path).await;
        assert_eq!(reply.status, 404, "{path}");
        assert!(reply.content_type().starts_with("text/html"), "{path}");
        assert!(reply.body.len() < 512 && reply.body.starts_with(b"<!doctype html>"), "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_failures_are_401_problems() {
    let server = TestServer::start().await;
    let body = json!([item("https://example.com", 1)]).to_string();
    let path = "/api/v4/short_links";
    let json = ("content-type", "application/json");
    let cases: Vec<Vec<(&str, &str)>> = vec![
        vec![json],
        vec![json, ("authorization", "Basic dXNlcjpwdw==")],
        vec![json, ("authorization", "Bearer not-a-token")],
        vec![json, ("authorization", "Bearer sl_AAAAAAAAAA_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")],
    ];
    for headers in cases {
        let reply = send(server.addr, Method::POST, path, &headers, body.clone().into_bytes()).await;
        reply.problem(401);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_are_400_problems() {
    let server = TestServer::start().await;
    async fn detail(server: &TestServer, body: &str) -> String {
        server.post_links(&server.token, body).await.problem(400)["detail"].as_str().unwrap().to_owned()
    }
    assert!(detail(&server, "[{").await.contains("not valid JSON"));
    assert!(detail(&server, r#"{"url":"https://x.example"}"#).await.contains("JSON array"));
    assert_eq!(detail(&server, "[]").await, "Request data can not be empty");
    let too_many = json!((1..=251).map(|c| item("https://x.example/", c)).collect::<Vec<_>>()).to_string();
    assert!(detail(&server, &too_many).await.contains("250"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_invalid_item_is_reported_and_nothing_is_created() {
    let server = TestServer::start().await;
    let body = json!([
        item("https://valid.example/", 500),
        item("javascript:alert(1)", 2),
        item("https://valid.example/", 3),
        {"url": "https://x.example/", "metadata": {"entity_type": "leads", "entity_id": 0}},
    ])
    .to_string();
    let problem = server.post_links(&server.token, &body).await.problem(400);
    assert_eq!(problem["detail"], "Request validation failed");
    let errors = problem["validation-errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2);
    assert_eq!(errors[0]["request_id"], "1");
    assert_eq!(errors[0]["errors"][0]["code"], "InvalidUrl");
    assert_eq!(errors[0]["errors"][0]["path"], "url");
    assert_eq!(errors[1]["request_id"], "3");
    assert_eq!(errors[1]["errors"].as_array().unwrap().len(), 2, "both metadata problems");

    let dir = server.stop().await;
    let store = SledStore::open(dir.path()).unwrap();
    assert!(store.links_of(AccountId(1), EntityRef::contact(500)).await.unwrap().is_empty(), "nothing was created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_type_method_and_path_errors() {
    let server = TestServer::start_with(SettingsLayer { max_body_bytes: Some(1000), ..Default::default() }).await;
    let auth = format!("Bearer {}", server.token);
    let big = json!((1..=40).map(|c| item("https://example.com/some/long/path", c)).collect::<Vec<_>>()).to_string();
    assert!(big.len() > 1000);
    let path = "/api/v4/short_links";
    let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
    send(server.addr, Method::POST, path, &headers, big.clone().into_bytes()).await.problem(413);

    let wrong_type = [("authorization", auth.as_str()), ("content-type", "text/plain")];
    send(server.addr, Method::POST, path, &wrong_type, b"[]".to_vec()).await.problem(415);
    let no_type = [("authorization", auth.as_str())];
    send(server.addr, Method::POST, path, &no_type, b"[]".to_vec()).await.problem(415);
    let charset = [("authorization", auth.as_str()), ("content-type", "application/json; charset=utf-8")];
    let ok =
        send(server.addr, Method::POST, path, &charset, json!([item("https://x.example", 1)]).to_string().into_bytes())
            .await;
    assert_eq!(ok.status, 200);

    for method in [Method::GET, Method::PUT, Method::DELETE] {
        let reply = send(server.addr, method, path, &headers, Vec::new()).await;
        reply.problem(405);
        assert_eq!(reply.headers["allow"], "POST");
    }
    let reply = send(server.addr, Method::POST, "/AAAAAAAAAAAA", &[], Vec::new()).await;
    assert_eq!(reply.status, 405);
    assert_eq!(reply.headers["allow"], "GET, HEAD");

    // Every API path answers a caller without a token alike: which paths exist is not told.
    for unknown in ["/api/v4/leads", "/api/v4/short_links/x", "/api", "/api/", "/api/v4/contacts/0/notes"] {
        server.get(unknown).await.problem(401);
        send(server.addr, Method::GET, unknown, &headers[..1], Vec::new()).await.problem(404);
    }
}

/// A batch with any contact the token may not use is refused whole, in the shape the
/// official client turns into `AmoCRMApiErrorResponseException::getValidationErrors()`;
/// a caller that opts in with `?partial=true` gets the rest, and the refused in `skipped`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_are_made_only_for_contacts_in_the_tokens_scope() {
    let server = TestServer::start().await;
    let scoped = AdminRequest::TokenCreate { account: 1, user: 2, scope: ContactScope::only(vec![2, 4]) };
    let AdminReply::Token { token } = admin::command(&StorageSettings::Sled, server.dir.path(), scoped).await.unwrap()
    else {
        panic!()
    };
    let links_log = server.dir.path().join("links.log");
    let stored = || std::fs::metadata(&links_log).map_or(0, |m| m.len());
    let body = json!((1..=4).map(|c| item("https://x.example/", c)).collect::<Vec<_>>()).to_string();
    let empty = stored(); // its header

    let refused = server.post_links(&token, &body).await.problem(400);
    assert_eq!(
        refused["validation-errors"],
        json!([
            {"request_id": "0", "errors": [{"code": "AccessDenied", "path": "metadata.entity_id", "detail": "the token has no rights to contact 1"}]},
            {"request_id": "2", "errors": [{"code": "AccessDenied", "path": "metadata.entity_id", "detail": "the token has no rights to contact 3"}]},
        ])
    );
    assert_eq!(stored(), empty, "a refused batch creates nothing, not even its allowed items");

    let allowed = json!([item("https://x.example/", 4), item("https://x.example/", 2)]).to_string();
    assert_eq!(server.post_links(&token, &allowed).await.status, 200, "every contact allowed: 200");

    let reply = server.post_links_to("/api/v4/short_links?partial=true", &token, &body).await;
    assert_eq!(reply.status, 200);
    let body = reply.json();
    let ids: Vec<u64> = body["_embedded"]["short_links"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["metadata"]["entity_id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![2, 4]);
    assert_eq!(
        body["skipped"],
        json!([
            {"request_id": "0", "metadata": {"entity_type": "contacts", "entity_id": 1}, "reason": "no rights to this entity"},
            {"request_id": "2", "metadata": {"entity_type": "contacts", "entity_id": 3}, "reason": "no rights to this entity"},
        ])
    );
    server.post_links_to("/api/v4/short_links?partial=maybe", &token, &allowed).await.problem(400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_are_isolated() {
    let server = TestServer::start().await;
    let other = AdminRequest::TokenCreate { account: 2, user: 1, scope: ContactScope::All };
    let AdminReply::Token { token } = admin::command(&StorageSettings::Sled, server.dir.path(), other).await.unwrap()
    else {
        panic!()
    };
    let body = json!([item("https://x.example/", 7)]).to_string();
    let mine = server.post_links(&server.token, &body).await.json();
    let theirs = server.post_links(&token, &body).await.json();
    assert_eq!(mine["_embedded"]["short_links"][0]["account_id"], 1);
    assert_eq!(theirs["_embedded"]["short_links"][0]["account_id"], 2);
    assert_ne!(mine["_embedded"]["short_links"][0]["url"], theirs["_embedded"]["short_links"][0]["url"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_is_preserved_for_250_items_and_retries_are_idempotent() {
    let server = TestServer::start().await;
    // Reverse order, mixed targets, so sorting by anything would show.
    let items: Vec<_> = (1..=250u64).rev().map(|c| item(&format!("https://x.example/{}", c % 7), c)).collect();
    let body = json!(items).to_string();
    let first = server.post_links(&server.token, &body).await;
    assert_eq!(first.status, 200);
    let links = first.json()["_embedded"]["short_links"].as_array().unwrap().clone();
    assert_eq!(links.len(), 250);
    for (link, want) in links.iter().zip((1..=250u64).rev()) {
        assert_eq!(link["metadata"]["entity_id"], want);
    }
    let unique: std::collections::HashSet<_> = links.iter().map(|l| l["url"].as_str().unwrap()).collect();
    assert_eq!(unique.len(), 250, "every contact has its own link");

    let again = server.post_links(&server.token, &body).await;
    assert_eq!(again.body, first.body, "a retry returns the same links");

    let dup = json!([item("https://dup.example/", 9), item("https://dup.example/", 9)]).to_string();
    let dup = server.post_links(&server.token, &dup).await.json();
    assert_eq!(dup["_embedded"]["short_links"][0], dup["_embedded"]["short_links"][1]);

    for link in links.iter().take(20) {
        let url = link["url"].as_str().unwrap();
        let target = format!("https://x.example/{}", link["metadata"]["entity_id"].as_u64().unwrap() % 7);
        assert_eq!(server.get(&format!("/{}", code_of(url))).await.headers["location"], target.as_str());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness() {
    let server = TestServer::start().await;
    assert_eq!(server.get("/healthz").await.status, 200);
    assert_eq!(server.get("/readyz").await.status, 200);
    assert_eq!(send(server.addr, Method::POST, "/healthz", &[], Vec::new()).await.status, 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_cannot_hold_a_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server =
        TestServer::start_with(SettingsLayer { header_read_timeout_secs: Some(1), ..Default::default() }).await;
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(b"GET /AAAAAAAAAAAA HTTP/1.1\r\nHost: x\r\n").await.unwrap(); // never finishes
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "the server must close a connection whose headers never finish");
}

/// Reads one response head (up to the blank line) off a raw connection.
async fn read_head(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).await.unwrap(), 1, "connection closed mid-response: {head:?}");
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_connection_that_starts_no_request_is_closed_and_busy_ones_are_not() {
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server =
        TestServer::start_with(SettingsLayer { header_read_timeout_secs: Some(1), ..Default::default() }).await;
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    // Requests keep it open well past the limit, one every 0.3 s.
    let opened = Instant::now();
    let mut last_request = opened;
    while opened.elapsed() < Duration::from_millis(2500) {
        last_request = Instant::now();
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        assert!(read_head(&mut stream).await.starts_with("HTTP/1.1 200"));
        let mut body = [0u8; 3];
        stream.read_exact(&mut body).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Then silence: closed (the bound is loose for a loaded machine), never before half
    // the limit after the last request started.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest)).await;
    assert!(closed.is_ok() && rest.is_empty(), "an idle kept-alive connection must be closed");
    let idle = last_request.elapsed();
    assert!(idle >= Duration::from_millis(500), "closed before half the limit: {idle:?}");

    // A request in flight is not cut, however long its body takes (the body limit is 30 s).
    let items = serde_json::to_vec(&serde_json::json!([item("https://example.com/slow", 7)])).unwrap();
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /api/v4/short_links HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        server.token,
        items.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for chunk in items.chunks(items.len().div_ceil(5)) {
        tokio::time::sleep(Duration::from_millis(600)).await;
        stream.write_all(chunk).await.unwrap();
    }
    assert!(read_head(&mut stream).await.starts_with("HTTP/1.1 200"), "a slow upload was cut");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_idle_connections_at_once_and_finishes_requests_in_flight() {
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Limits far above the test's own waits: closing must come from the shutdown itself.
    let layer =
        SettingsLayer { header_read_timeout_secs: Some(60), shutdown_grace_secs: Some(60), ..Default::default() };
    let server = TestServer::start_with(layer).await;
    let (addr, token) = (server.addr, server.token.clone());

    // One kept-alive connection, idle after a request; one in the middle of an upload.
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert!(read_head(&mut idle).await.starts_with("HTTP/1.1 200"));
    let mut body = [0u8; 3];
    idle.read_exact(&mut body).await.unwrap();
    let items = serde_json::to_vec(&json!([item("https://example.com/in-flight", 8)])).unwrap();
    let mut busy = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /api/v4/short_links HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        items.len()
    );
    busy.write_all(head.as_bytes()).await.unwrap();
    // The server says `100 Continue` once its handler reads the body: the request is in
    // flight. Stopping before that would race the server's read of the head, and a head
    // not yet read is, to the server, an idle connection.
    assert!(read_head(&mut busy).await.starts_with("HTTP/1.1 100"), "the request has not started");
    busy.write_all(&items[..10]).await.unwrap();

    let stopping = Instant::now();
    let stopped = tokio::spawn(server.stop());
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(30), idle.read_to_end(&mut rest)).await;
    assert!(closed.is_ok() && rest.is_empty(), "an idle connection must be closed when the server stops");

    // The upload still finishes and is answered; then the server is done.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!stopped.is_finished(), "the server stopped with a request in flight");
    busy.write_all(&items[10..]).await.unwrap();
    let head = read_head(&mut busy).await;
    assert!(head.starts_with("HTTP/1.1 200"), "the request in flight was cut: {head}");
    assert!(head.to_ascii_lowercase().contains("connection: close"), "{head}");
    let dir = tokio::time::timeout(Duration::from_secs(30), stopped).await.expect("stopped").unwrap();
    assert!(stopping.elapsed() < Duration::from_secs(60), "the shutdown waited out its grace period");
    let store = SledStore::open(dir.path()).unwrap();
    let links = store.links_of(AccountId(1), EntityRef::contact(8)).await.unwrap();
    assert_eq!(links.len(), 1, "the link created during the shutdown is stored");
}

/// Where the OpenAPI document and the server once disagreed, each settled one way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_contract_at_its_edges() {
    use tokio::io::AsyncWriteExt;
    let server = TestServer::start().await;
    let auth = format!("Bearer {}", server.token);

    // The URL limit is 2048 characters as given, whatever normalization makes of them.
    let head = "https://example.com/";
    for tail in ["é", "<"] {
        let url = format!("{head}{}", tail.repeat(2048 - head.len()));
        let reply = server.post_links(&server.token, &json!([item(&url, 1)]).to_string()).await;
        assert_eq!(reply.status, 200, "{tail}: {:?}", reply.body);
        let over = json!([item(&format!("{url}{tail}"), 1)]).to_string();
        let refused = server.post_links(&server.token, &over).await.problem(400);
        assert_eq!(refused["validation-errors"][0]["errors"][0]["detail"], "url is longer than 2048 characters");
    }
    let host_only = format!("https://{}.example", "a".repeat(2048 - 16));
    assert_eq!(server.post_links(&server.token, &json!([item(&host_only, 1)]).to_string()).await.status, 200);

    // Contact ids are what amoCRM and JSON clients can hold: 1 to 2^53 - 1.
    let max = (1u64 << 53) - 1;
    assert_eq!(server.post_links(&server.token, &json!([item(head, max)]).to_string()).await.status, 200);
    let refused = server.post_links(&server.token, &json!([item(head, max + 1)]).to_string()).await.problem(400);
    assert_eq!(refused["validation-errors"][0]["errors"][0]["path"], "metadata.entity_id");

    // Notes: parameters bounded and typed as documented; a malformed contact in the path is a 404.
    let get = |path: String| {
        let auth = auth.clone();
        async move { send(server.addr, Method::GET, &path, &[("authorization", auth.as_str())], Vec::new()).await }
    };
    for path in ["/api/v4/contacts/0/notes", "/api/v4/contacts/-1/notes", "/api/v4/contacts/abc/notes"] {
        get(path.to_owned()).await.problem(404);
    }
    get(format!("/api/v4/contacts/{}/notes", max + 1)).await.problem(404);
    assert_eq!(get(format!("/api/v4/contacts/{max}/notes")).await.status, 204);
    let too_deep = get("/api/v4/contacts/notes?page=10001".to_owned()).await.problem(400);
    assert_eq!(too_deep["detail"], "page must be an integer from 1 to 10000");
    get("/api/v4/contacts/notes?filter[entity_id]=abc".to_owned()).await.problem(400);

    // HTTP/1.1 requires Host (RFC 9112, 3.2); HTTP/1.0 does not.
    for (request, status) in [
        (&b"GET /AAAAAAAAAAAA HTTP/1.1\r\n\r\n"[..], "400"),
        (b"GET /AAAAAAAAAAAA HTTP/1.1\r\nHost: x\r\n\r\n", "404"),
        (b"GET /AAAAAAAAAAAA HTTP/1.0\r\n\r\n", "404"),
    ] {
        let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let head = read_head(&mut stream).await;
        assert!(head.split(' ').nth(1) == Some(status), "{request:?} -> {head}");
    }
}

/// Each API token has its own allowance; over it, a 429 says when to come back, in the
/// header and in amoCRM's body field. Redirects are never limited per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_requests_are_rate_limited_per_token() {
    let layer = SettingsLayer { api_rate_per_sec: Some(1), api_rate_burst: Some(3), ..Default::default() };
    let server = TestServer::start_with(layer).await;
    let body = json!([item("https://x.example/", 1)]).to_string();
    for _ in 0..3 {
        assert_eq!(server.post_links(&server.token, &body).await.status, 200, "within the burst");
    }
    let refused = server.post_links(&server.token, &body).await;
    let problem = refused.problem(429);
    assert_eq!(problem["retry_after"], 1);
    assert_eq!(refused.headers["retry-after"], "1");

    let other = AdminRequest::TokenCreate { account: 1, user: 2, scope: ContactScope::All };
    let AdminReply::Token { token } = admin::command(&StorageSettings::Sled, server.dir.path(), other).await.unwrap()
    else {
        panic!()
    };
    let reply = server.post_links(&token, &body).await;
    assert_eq!(reply.status, 200, "another token has its own allowance");
    let code = code_of(reply.json()["_embedded"]["short_links"][0]["url"].as_str().unwrap()).to_owned();
    for _ in 0..50 {
        assert_eq!(server.get(&format!("/{code}")).await.status, 302, "redirects are not limited");
    }
}

/// Request heads are bounded (16 KiB by default): beyond it a 431, and the connection is
/// not held open with the headers in memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_heads_get_431() {
    let server = TestServer::start().await;
    let fits = "a".repeat(12 << 10);
    assert_eq!(send(server.addr, Method::GET, "/AAAAAAAAAAAA", &[("x-pad", &fits)], Vec::new()).await.status, 404);
    let over = "a".repeat(20 << 10);
    let reply = send(server.addr, Method::GET, "/AAAAAAAAAAAA", &[("x-pad", &over)], Vec::new()).await;
    assert_eq!(reply.status, 431);
}

/// Every answer carries a request id, in `X-Request-Id` and in problem bodies; a trusted
/// proxy's own id is kept, an untrusted client's is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_carries_a_request_id() {
    let server = TestServer::start().await;
    let redirect = server.get("/AAAAAAAAAAAA").await;
    let problem = server.get("/api/v4/leads").await;
    let (a, b) = (&redirect.headers["x-request-id"], &problem.headers["x-request-id"]);
    assert_ne!(a, b, "ids are unique");
    assert_eq!(problem.problem(401)["request_id"], b.to_str().unwrap(), "the body names the same id");
    let ok = server.post_links(&server.token, &json!([item("https://x.example/", 1)]).to_string()).await;
    assert!(ok.headers.contains_key("x-request-id"));
    let sent = [("x-request-id", "from-the-client")];
    let reply = send(server.addr, Method::GET, "/AAAAAAAAAAAA", &sent, Vec::new()).await;
    assert_ne!(reply.headers["x-request-id"], "from-the-client", "no proxy is trusted by default");

    let behind_proxy = TestServer::start_with(SettingsLayer {
        client_ip_header: Some("X-Forwarded-For".into()),
        ..Default::default()
    })
    .await;
    let reply = send(behind_proxy.addr, Method::GET, "/AAAAAAAAAAAA", &sent, Vec::new()).await;
    assert_eq!(reply.headers["x-request-id"], "from-the-client", "a trusted proxy's id is kept");
}
