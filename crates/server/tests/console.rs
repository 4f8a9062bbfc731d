//! The operator console in a real browser: Debian's Chromium, headless, driven through
//! chromedriver (WebDriver) against a real server with a real webhook receiver. Each
//! page's screenshot is kept under `target/console-screenshots/`. Without chromedriver the
//! browser test is skipped with a notice, unless `SHORTLINKS_REQUIRE_CHROMIUM=1` (CI).

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::{click, code_of, item, metric, send, until, Answer, Receiver, TestServer, BROWSER};
use fantoccini::{Client, ClientBuilder, Locator};
use hyper::Method;
use serde_json::json;
use shortlinks_server::config::SettingsLayer;

const PASSWORD: &str = "correct horse battery staple";

/// Debian's chromedriver and chromium, if installed; CI demands them.
fn browser() -> Option<(&'static str, &'static str)> {
    let found = ["/usr/bin/chromedriver", "/usr/bin/chromium"].iter().all(|p| std::path::Path::new(p).exists());
    if !found {
        if std::env::var("SHORTLINKS_REQUIRE_CHROMIUM").is_ok_and(|v| v == "1") {
            panic!("chromium and chromium-driver must be installed (SHORTLINKS_REQUIRE_CHROMIUM=1)");
        }
        eprintln!("SKIPPED the console in a browser: apt-get install chromium chromium-driver");
        return None;
    }
    Some(("/usr/bin/chromedriver", "/usr/bin/chromium"))
}

/// A server with the console on, its password in a file, and a webhook to `receiver`.
async fn server_with_console(receiver: &Receiver, dir: &std::path::Path) -> TestServer {
    let password_file = dir.join("console-password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    let layer = SettingsLayer {
        console_listen: Some("127.0.0.1:0".into()),
        console_password_file: Some(password_file),
        webhook_url: Some(format!("{}/hook", receiver.url)),
        webhook_secret: Some("s3cret".into()),
        client_ip_header: Some("X-Forwarded-For".into()),
        ..Default::default()
    };
    TestServer::start_with(layer).await
}

/// chromedriver on a port of its own, stopped when dropped.
struct Driver {
    _child: tokio::process::Child,
    url: String,
}

impl Driver {
    async fn start(chromedriver: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = tokio::process::Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        until(Duration::from_secs(20), "chromedriver listening", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
        })
        .await;
        Self { _child: child, url }
    }

    async fn browser(&self, chromium: &str, profile: &std::path::Path) -> Client {
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--window-size=1280,1000",
        ]
        .iter()
        .map(|a| a.to_string())
        .chain([format!("--user-data-dir={}", profile.display())])
        .collect::<Vec<_>>();
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("goog:chromeOptions".into(), json!({ "binary": chromium, "args": args }));
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector).capabilities(capabilities).connect(&self.url).await.unwrap()
    }
}

/// Saves the page as it looks now, for CI's artifacts.
async fn screenshot(browser: &Client, name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.png"));
    std::fs::write(&path, browser.screenshot().await.unwrap()).unwrap();
    path
}

async fn text(browser: &Client, id: &str) -> String {
    browser.find(Locator::Id(id)).await.unwrap().text().await.unwrap()
}

async fn fill(browser: &Client, id: &str, value: &str) {
    let field = browser.find(Locator::Id(id)).await.unwrap();
    field.clear().await.unwrap();
    field.send_keys(value).await.unwrap();
}

/// Clicks a form's button and waits for the page it answers with: a click returns once the
/// form is sent, not once the answer has replaced the page.
async fn submit(browser: &Client, button: Locator<'_>) {
    let page = browser.find(Locator::Css("html")).await.unwrap();
    browser.find(button).await.unwrap().click().await.unwrap();
    until(Duration::from_secs(10), "the next page", || async { page.tag_name().await.is_err() }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_signs_in_sees_a_click_looks_it_up_replays_it_and_manages_tokens_in_a_browser() {
    let Some((chromedriver, chromium)) = browser() else { return };
    // The webhook refuses the first note for good (422) and takes everything after.
    let receiver =
        Receiver::start(|n| if n == 0 { Answer::Status(422, "no") } else { Answer::Status(200, "ok") }).await;
    let scratch = common::private_tempdir();
    let server = server_with_console(&receiver, scratch.path()).await;
    let console = format!("http://{}", server.console.unwrap());
    let driver = Driver::start(chromedriver).await;
    let browser = driver.browser(chromium, &scratch.path().join("profile")).await;

    // Signed out, every page leads to the sign-in; a wrong password is refused.
    browser.goto(&format!("{console}/tokens")).await.unwrap();
    assert_eq!(browser.current_url().await.unwrap().path(), "/login");
    fill(&browser, "password", "not the password").await;
    submit(&browser, Locator::Css("form button")).await;
    assert!(browser.source().await.unwrap().contains("not the console"), "a wrong password is refused");
    screenshot(&browser, "login-refused").await;
    fill(&browser, "password", PASSWORD).await;
    submit(&browser, Locator::Css("main form button")).await;
    assert_eq!(browser.current_url().await.unwrap().path(), "/");

    // A person's click on contact 42's link: one note, refused for good by the webhook.
    let url = "https://shop.example/offer?id=42";
    let reply = server.post_links(&server.token, &json!([item(url, 42)]).to_string()).await;
    let code = code_of(reply.json()["_embedded"]["short_links"][0]["url"].as_str().unwrap()).to_owned();
    let clicked = click(server.addr, &code, &[("user-agent", BROWSER), ("x-forwarded-for", "192.0.2.7")]).await;
    assert_eq!(clicked.status.as_u16(), 302);
    receiver.until("the note offered", |log| !log.is_empty()).await;
    until(Duration::from_secs(10), "the note dead-lettered", || async {
        metric(server.addr, "shortlinks_sink_dead_lettered_total{sink=\"webhook\"}").await == 1
    })
    .await;

    browser.refresh().await.unwrap();
    assert_eq!((text(&browser, "clicks").await, text(&browser, "noted").await), ("1".into(), "1".into()));
    let overview = browser.source().await.unwrap();
    assert!(overview.contains("<svg class=\"chart\""), "the chart is drawn on the page");
    assert!(overview.contains("dead:webhook"), "the backlog lists the dead letters' queue");
    screenshot(&browser, "overview").await;

    // The contact's look-up shows its link, the note with the original URL, and where it stands.
    browser.goto(&format!("{console}/lookup")).await.unwrap();
    fill(&browser, "contact", "42").await;
    submit(&browser, Locator::Css("form:nth-of-type(2) button")).await;
    let links = browser.find(Locator::Id("links")).await.unwrap().text().await.unwrap();
    assert!(links.contains(&code) && links.contains(url), "{links}");
    let notes = browser.find(Locator::Id("notes")).await.unwrap().text().await.unwrap();
    assert!(notes.contains(url) && notes.contains("webhook: refused for good"), "{notes}");
    assert!(!notes.contains(&code), "a note shows the original URL, never the code");
    screenshot(&browser, "lookup").await;

    // By URL: the account's links to it, one per contact, and from there the contact.
    let other = server.post_links(&server.token, &json!([item(url, 43)]).to_string()).await;
    let other = code_of(other.json()["_embedded"]["short_links"][0]["url"].as_str().unwrap()).to_owned();
    fill(&browser, "url", url).await;
    submit(&browser, Locator::Css("form:nth-of-type(3) button")).await;
    let links = text(&browser, "links").await;
    assert!(links.contains(&code) && links.contains(&other), "both contacts' links: {links}");
    assert_eq!(links.matches(url).count(), 2, "{links}");
    screenshot(&browser, "lookup-url").await;

    // Delivery: the dead letter is listed, replayed, and the webhook takes it.
    browser.goto(&format!("{console}/delivery?sink=webhook&account=1")).await.unwrap();
    assert!(text(&browser, "dead-count").await.starts_with("1 dead letters"));
    screenshot(&browser, "delivery").await;
    submit(&browser, Locator::Id("replay")).await;
    assert!(browser.source().await.unwrap().contains("1 dead letters are back on their sink"));
    receiver.until("the replayed note taken", |log| log.iter().any(|r| r.answered == 200)).await;
    until(Duration::from_secs(10), "the delivery counted", || async {
        metric(server.addr, "shortlinks_sink_delivered_total{sink=\"webhook\"}").await == 1
    })
    .await;
    browser.goto(&format!("{console}/delivery")).await.unwrap();
    let sinks = browser.find(Locator::Id("sinks")).await.unwrap().text().await.unwrap();
    assert!(sinks.contains("webhook connected 1 0"), "delivered 1, none waiting: {sinks}");
    assert!(sinks.contains("422"), "the last error is shown: {sinks}");

    // Tokens: made (its secret shown once, and it works), then revoked (and it stops).
    browser.goto(&format!("{console}/tokens")).await.unwrap();
    fill(&browser, "account", "7").await;
    fill(&browser, "user", "3").await;
    submit(&browser, Locator::Id("create")).await;
    let token = text(&browser, "new-token").await;
    assert!(token.starts_with("sl_"), "{token}");
    screenshot(&browser, "token-made").await;
    let body = json!([item("https://seven.example/", 1)]).to_string();
    assert_eq!(server.post_links(&token, &body).await.status.as_u16(), 200);
    let id = token.strip_prefix("sl_").unwrap().split('_').next().unwrap().to_owned();
    submit(&browser, Locator::Css(&format!("#token-{id} button"))).await;
    assert!(browser.source().await.unwrap().contains("The token is revoked"));
    assert!(!browser.source().await.unwrap().contains(&token), "the secret is never shown again");
    assert_eq!(server.post_links(&token, &body).await.status.as_u16(), 401);
    screenshot(&browser, "tokens").await;

    // A form posted with the session but without its CSRF token does nothing.
    let session = browser.get_named_cookie("shortlinks_console").await.unwrap();
    let cookie = format!("shortlinks_console={}", session.value());
    let headers = [("cookie", cookie.as_str()), ("content-type", "application/x-www-form-urlencoded")];
    let forged =
        send(server.console.unwrap(), Method::POST, "/tokens", &headers, b"account=9&user=9&contacts=all".to_vec())
            .await;
    assert_eq!(forged.status.as_u16(), 403);
    assert!(String::from_utf8_lossy(&forged.body).contains("nothing was done"), "the refusal says so");
    let listed = send(server.console.unwrap(), Method::GET, "/tokens", &headers, Vec::new()).await;
    assert!(!String::from_utf8_lossy(&listed.body).contains("<td>9</td><td>9</td>"), "no token was made");

    // Every page fits a phone's width.
    browser.set_window_size(390, 844).await.unwrap();
    let narrow = [
        ("/", "overview-narrow"),
        ("/lookup?account=1&contact=42", "lookup-narrow"),
        ("/delivery?sink=webhook&account=1", "delivery-narrow"),
        ("/tokens", "tokens-narrow"),
    ];
    for (page, name) in narrow {
        browser.goto(&format!("{console}{page}")).await.unwrap();
        let fits =
            browser.execute("return document.documentElement.scrollWidth <= window.innerWidth;", vec![]).await.unwrap();
        assert_eq!(fits, json!(true), "{page} is wider than a narrow window");
        screenshot(&browser, name).await;
    }
    browser.close().await.unwrap();
    drop(driver);
}

/// After five wrong passwords from one address, even the right one is refused for a while.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_wrong_passwords_lock_the_sign_in_and_the_console_is_not_on_the_public_listener() {
    let receiver = Receiver::start(|_| Answer::Status(200, "ok")).await;
    let scratch = common::private_tempdir();
    let server = server_with_console(&receiver, scratch.path()).await;
    let console: SocketAddr = server.console.unwrap();
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let sign_in = |password: &str| {
        let body =
            format!("password={}", url::form_urlencoded::byte_serialize(password.as_bytes()).collect::<String>());
        send(console, Method::POST, "/login", &form, body.into_bytes())
    };
    for _ in 0..5 {
        assert_eq!(sign_in("guess").await.status.as_u16(), 401);
    }
    let locked = sign_in(PASSWORD).await;
    assert_eq!(locked.status.as_u16(), 429, "locked out, right password or not");
    assert!(String::from_utf8_lossy(&locked.body).contains("Too many failed sign-ins"));
    // The public listener knows nothing of the console's pages.
    assert_eq!(send(server.addr, Method::GET, "/login", &[], Vec::new()).await.status.as_u16(), 404);
    assert_eq!(send(server.addr, Method::GET, "/tokens", &[], Vec::new()).await.status.as_u16(), 404);
}
