//! `/metrics` as Prometheus reads it: the page parses with a strict parser of the text
//! format, every histogram moves with what it measures, and the backlog gauges come from
//! the store. Real sockets, real sled directories, a real local webhook receiver.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

mod common;

use std::time::Duration;

use common::{
    click, code_of, item, metric, observations, sample, send, try_scrape, until, Answer, Process, Receiver, TestServer,
    BROWSER,
};
use hyper::Method;
use serde_json::json;
use shortlinks_server::config::SettingsLayer;

const FORWARDED: &str = "x-forwarded-for";

/// Histograms of the HTTP front end and of a sink, each before and after what it measures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_parses_and_every_histogram_moves_with_what_it_measures() {
    // The first note is refused for good (a 422), the second taken.
    let receiver =
        Receiver::start(|n| if n == 0 { Answer::Status(422, "no") } else { Answer::Status(200, "ok") }).await;
    let layer = SettingsLayer {
        webhook_url: Some(format!("{}/hook", receiver.url)),
        webhook_secret: Some("s3cret".into()),
        client_ip_header: Some("X-Forwarded-For".into()),
        ..Default::default()
    };
    let server = TestServer::start_with(layer).await;
    let addr = server.addr;
    let lane = "shortlinks_redirect_duration_seconds{server=\"lane\"}";
    let hyper = "shortlinks_redirect_duration_seconds{server=\"hyper\"}";
    let created = "shortlinks_api_request_duration_seconds{route=\"short_links\",status=\"200\"}";
    let refused = "shortlinks_api_request_duration_seconds{route=\"short_links\",status=\"401\"}";
    let webhook = "{sink=\"webhook\"}";
    let attempts = format!("shortlinks_sink_delivery_duration_seconds{webhook}");
    let batches = format!("shortlinks_sink_batch_notes{webhook}");
    let click_to_note = format!("shortlinks_click_to_note_seconds{webhook}");
    for name in [lane, hyper, created, refused, &attempts, &batches, &click_to_note] {
        assert_eq!(observations(addr, name).await, 0, "{name} before anything happened");
    }

    let body = json!([item("https://a.example/", 1), item("https://b.example/", 2)]).to_string();
    let reply = server.post_links(&server.token, &body).await;
    assert_eq!(reply.status, 200);
    assert_eq!(server.post_links("not-a-token", &body).await.status, 401);
    assert_eq!((observations(addr, created).await, observations(addr, refused).await), (1, 1));

    let links = reply.json()["_embedded"]["short_links"].as_array().unwrap().clone();
    let codes: Vec<&str> = links.iter().map(|l| code_of(l["url"].as_str().unwrap())).collect();
    // A plain GET is the lane's; one with body framing goes to hyper.
    let on_lane = click(addr, codes[0], &[("user-agent", BROWSER), (FORWARDED, "192.0.2.1")]).await;
    let framed = [("user-agent", BROWSER), (FORWARDED, "192.0.2.2"), ("content-length", "0")];
    let on_hyper = click(addr, codes[1], &framed).await;
    assert_eq!((on_lane.status.as_u16(), on_hyper.status.as_u16()), (302, 302));
    assert_eq!((observations(addr, lane).await, observations(addr, hyper).await), (1, 1));

    receiver.until("both notes offered", |log| log.len() >= 2).await;
    let dead = "shortlinks_sink_dead_letters{sink=\"webhook\"}";
    until(Duration::from_secs(10), "the refused note counted from the store", || async {
        metric(addr, dead).await == 1
    })
    .await;
    assert_eq!(observations(addr, &attempts).await, 2, "one attempt per note");
    assert_eq!(observations(addr, &batches).await, 2);
    assert_eq!(observations(addr, &click_to_note).await, 1, "only the delivered note");
    assert_eq!(metric(addr, "shortlinks_queue_entries{queue=\"dead:webhook\"}").await, 1);
    assert_eq!(metric(addr, "shortlinks_queue_entries{queue=\"sink:webhook\"}").await, 0);
    assert_eq!(metric(addr, "shortlinks_queue_entries{queue=\"clicks\"}").await, 0);

    // Every family has its help and type, and names follow Prometheus' conventions.
    let metrics = try_scrape(addr).await.unwrap();
    for (name, family) in &metrics.families {
        assert!(name.starts_with("shortlinks_"), "{name}");
        assert!(!family.help.is_empty(), "{name} has help");
        let counter = matches!(family.family_type, openmetrics_parser::PrometheusType::Counter);
        assert_eq!(name.ends_with("_total"), counter, "{name}: counters, and only they, end in _total");
    }
    let reply = send(addr, Method::GET, "/metrics", &[], Vec::new()).await;
    assert_eq!(reply.header("content-type").as_deref(), Some("text/plain; version=0.0.4"));

    // What the operator reads about and charts is what the page has. (The API histogram
    // has series by now; every other family has them from the start.)
    let on_page: std::collections::BTreeSet<&str> = metrics.families.keys().map(String::as_str).collect();
    let operations = include_str!("../../../docs/operations.md");
    let documented = metric_names(operations.split("## Metrics").nth(1).unwrap().split("\n## ").next().unwrap());
    assert_eq!(documented, on_page.iter().map(|n| n.to_string()).collect(), "docs/operations.md's table");
    let charted = metric_names(include_str!("../../../docs/grafana-dashboard.json"));
    let unknown: Vec<_> = charted.iter().filter(|n| !on_page.contains(n.as_str())).collect();
    assert!(unknown.is_empty(), "the Grafana dashboard charts metrics that do not exist: {unknown:?}");
}

/// Every `shortlinks_…` metric family named in `text` (a histogram's series name its family).
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for (start, _) in text.match_indices("shortlinks_") {
        let name: String =
            text[start..].chars().take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_').collect();
        let family = ["_bucket", "_count", "_sum"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(&name);
        names.insert(family.to_owned());
    }
    names
}

/// The backlog gauges are the store's, not this process's: notes a receiver keeps failing
/// are still counted, with their age, by the next process on the same data directory, and
/// by `shortlinks status` with the server running or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backlog_is_read_from_the_store_across_a_restart_and_status_shows_it() {
    let receiver = Receiver::start(|_| Answer::Status(503, "busy")).await;
    let dir = common::private_tempdir();
    let hook = format!("{}/hook", receiver.url);
    let env = [
        ("SHORTLINKS_WEBHOOK_URL", hook.as_str()),
        ("SHORTLINKS_WEBHOOK_SECRET", "s3cret"),
        ("SHORTLINKS_CLIENT_IP_HEADER", "X-Forwarded-For"),
    ];
    let first = Process::serve(dir.path(), &[], &env).await;
    let token = common::first_token(dir.path());
    let items: Vec<_> = (1..=3).map(|c| item(&format!("https://c{c}.example/"), c)).collect();
    let reply = first.post(&token, &json!(items)).await;
    assert_eq!(reply.status, 200);
    for (i, link) in reply.json()["_embedded"]["short_links"].as_array().unwrap().iter().enumerate() {
        let ip = format!("192.0.2.{i}");
        let code = code_of(link["url"].as_str().unwrap());
        assert_eq!(click(first.addr, code, &[("user-agent", BROWSER), (FORWARDED, &ip)]).await.status, 302);
    }
    let waiting = "shortlinks_queue_entries{queue=\"sink:webhook\"}";
    until(Duration::from_secs(10), "three notes waiting", || async { metric(first.addr, waiting).await == 3 }).await;
    assert_eq!(first.terminate().await, 0);

    let second = Process::serve(dir.path(), &[], &env).await;
    assert_eq!(metric(second.addr, "shortlinks_sink_delivered_total{sink=\"webhook\"}").await, 0, "a new process");
    assert_eq!(metric(second.addr, waiting).await, 3, "read from the store");
    let metrics = try_scrape(second.addr).await.unwrap();
    let age = match sample(&metrics, "shortlinks_queue_oldest_age_seconds{queue=\"sink:webhook\"}") {
        Some(openmetrics_parser::PrometheusValue::Gauge(age)) => age.as_f64(),
        other => panic!("no age: {other:?}"),
    };
    assert!(age > 0.0 && age < 60.0, "the oldest note's age: {age}");

    // `shortlinks status` says the same, through the running server and without one.
    let waiting_line = |text: &str| {
        let line = text.lines().find(|l| l.starts_with("sink:webhook ")).unwrap_or_else(|| panic!("{text}"));
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap()
    };
    let through_server = common::shortlinks(&["status"], Some(dir.path()), &env).await;
    assert!(through_server.contains("from the running server"), "{through_server}");
    assert!(through_server.contains("  notes       0 written"), "this process wrote none: {through_server}");
    assert!(through_server.contains("  sink webhook: "), "{through_server}");
    assert_eq!(waiting_line(&through_server), 3);
    assert_eq!(second.terminate().await, 0);
    let without = common::shortlinks(&["status"], Some(dir.path()), &env).await;
    assert!(without.contains("no server answered"), "{without}");
    assert!(!without.contains("this server"), "{without}");
    assert_eq!(waiting_line(&without), 3);
}
