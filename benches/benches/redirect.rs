//! The whole redirect and a 250-link create, in process: request in, response out, through
//! the real `App::handle` (no socket), on sled, with the click pipeline on.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http_body_util::{Empty, Full};
use hyper::{Method, Request};
use shortlinks_benches::{app, fill, links, smoke_test, Rng, SEED};
use shortlinks_core::store::TokenStore;
use shortlinks_core::{AccountId, ContactScope, SledStore, UserId};
use shortlinks_server::auth;

/// A browser's agent: every click is a visit, as in production.
const AGENT: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0";
/// Every HTTP/1.1 request carries one; a request without it is refused.
const HOST: &str = "sho.rt";

/// Measured with the allocator the `shortlinks` binary ships with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn redirect(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let n = if smoke_test() { 1_000 } else { 100_000 };
    let all = links(n, SEED);
    let (app, pipeline) = runtime.block_on(async {
        let store = SledStore::open(dir.path()).expect("open");
        fill(&store, &all).await;
        app(store).await
    });
    let paths: Vec<String> = all.iter().map(|l| format!("/{}", l.code)).collect();
    let peer = Some([127, 0, 0, 1].into());

    let mut rng = Rng::new(SEED ^ 2);
    // Warm: every link read once, as a long-running server would have.
    runtime.block_on(async {
        for path in &paths {
            let request = Request::builder()
                .uri(path.as_str())
                .header("host", HOST)
                .body(Empty::<Bytes>::new())
                .expect("request");
            assert_eq!(app.handle(request, peer).await.status(), 302);
        }
    });
    c.bench_function("redirect/in_process_sled", |b| {
        b.to_async(&runtime).iter(|| {
            let request = Request::builder()
                .uri(paths[rng.below(paths.len())].as_str())
                .header("host", HOST)
                .header("user-agent", AGENT)
                .body(Empty::<Bytes>::new())
                .expect("request");
            let app = &app;
            async move { app.handle(request, peer).await }
        })
    });

    // The same, with the request built beforehand (untimed): what `App::handle` itself
    // costs, as when hyper hands it a parsed request.
    let agent = hyper::header::HeaderValue::from_static(AGENT);
    let host = hyper::header::HeaderValue::from_static(HOST);
    c.bench_function("redirect/in_process_sled_handle_only", |b| {
        b.to_async(&runtime).iter_batched(
            || {
                let mut request = Request::new(Empty::<Bytes>::new());
                *request.uri_mut() = paths[rng.below(paths.len())].parse().expect("uri");
                request.headers_mut().insert(hyper::header::USER_AGENT, agent.clone());
                request.headers_mut().insert(hyper::header::HOST, host.clone());
                request
            },
            |request| {
                let app = &app;
                async move { app.handle(request, peer).await }
            },
            BatchSize::SmallInput,
        )
    });

    // The redirects above left up to a million clicks to dispatch: let the pipeline finish
    // them (bounded), so that the create is not measured against that backlog.
    runtime.block_on(async {
        let stats = pipeline.stats();
        for _ in 0..600 {
            if stats.clicks_dispatched() >= stats.clicks_recorded() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    });
    let token = runtime.block_on(async {
        let issued = auth::issue(AccountId(1), UserId(1), ContactScope::All).expect("token");
        app.store().put_token(issued.record).await.expect("put");
        format!("Bearer {}", issued.text)
    });
    let mut batch = 0u64;
    let mut group = c.benchmark_group("create");
    group.sample_size(30);
    group.bench_function("250_links_durable", |b| {
        b.to_async(&runtime).iter_batched(
            || {
                // New contacts every time, so that each iteration really writes 250 links.
                batch += 1;
                let items: Vec<_> = (0..250u64)
                    .map(|i| {
                        serde_json::json!({"url": format!("https://example.com/p/{i}"),
                            "metadata": {"entity_type": "contacts", "entity_id": 10_000_000 + batch * 250 + i}})
                    })
                    .collect();
                Request::builder()
                    .method(Method::POST)
                    .uri("/api/v4/short_links")
                    .header("host", HOST)
                    .header("authorization", token.as_str())
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(serde_json::to_vec(&items).expect("json"))))
                    .expect("request")
            },
            |request| {
                let app = &app;
                async move {
                    let response = app.handle(request, peer).await;
                    assert_eq!(response.status(), 200);
                    response
                }
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
    runtime.block_on(pipeline.shutdown());
}

criterion_group!(benches, redirect);
criterion_main!(benches);
