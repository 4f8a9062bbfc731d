//! `get_link` on a hit and on a miss, memory and sled, at 10 thousand and 1 million links
//! (or the sizes in `SHORTLINKS_BENCH_LINKS`).
//! On sled (the embedded store) a link is a positional read of `links.log` found through
//! its index in memory; every link is read once before measuring, so the file is in the
//! page cache.
//!
//! `hit` picks among all the links, so at a million most reads miss the CPU caches; `hit_hot`
//! picks among 1 000 of them, the same share of the CPU caches at either size, which leaves
//! what the store's structure itself costs as it grows. `miss` picks among as many codes
//! that are not stored, so that it looks where a random code would (one fixed code would
//! find its way through the CPU caches every time).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use shortlinks_benches::{fill, links, smoke_test, Rng, SEED};
use shortlinks_core::store::LinkStore;
use shortlinks_core::{MemoryStore, ShortCode, SledStore};

/// Measured with the allocator the `shortlinks` binary ships with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Links the `hit_hot` case picks among.
const HOT: usize = 1_000;

/// 10 thousand and a million links; `SHORTLINKS_BENCH_LINKS=10000,10000000` asks for others
/// (docs/performance.md reports the read at ten million this way).
fn sizes() -> Vec<usize> {
    if smoke_test() {
        return vec![1_000, 10_000];
    }
    match std::env::var("SHORTLINKS_BENCH_LINKS") {
        Ok(list) => list.split(',').map(|n| n.trim().parse().expect("SHORTLINKS_BENCH_LINKS: numbers")).collect(),
        Err(_) => vec![10_000, 1_000_000],
    }
}

fn bench_store<S: LinkStore>(c: &mut Criterion, runtime: &tokio::runtime::Runtime, name: &str, store: &S, n: usize) {
    let all = links(n, SEED);
    runtime.block_on(async {
        fill(store, &all).await;
        for link in &all {
            std::hint::black_box(store.get_link(&link.code).await.expect("get"));
        }
    });
    let codes: Vec<ShortCode> = all.iter().map(|l| l.code).collect();
    let mut group = c.benchmark_group(format!("store_get/{name}"));
    let mut rng = Rng::new(SEED ^ 1);
    group.bench_with_input(BenchmarkId::new("hit", n), &codes, |b, codes| {
        b.to_async(runtime).iter(|| {
            let code = codes[rng.below(codes.len())];
            async move { store.get_link(&code).await.expect("get").expect("hit") }
        })
    });
    let hot = &codes[..HOT.min(codes.len())];
    group.bench_with_input(BenchmarkId::new("hit_hot", n), hot, |b, hot| {
        b.to_async(runtime).iter(|| {
            let code = hot[rng.below(hot.len())];
            async move { store.get_link(&code).await.expect("get").expect("hit") }
        })
    });
    let stored: std::collections::HashSet<ShortCode> = codes.iter().copied().collect();
    let missing: Vec<ShortCode> =
        links(n, SEED ^ 3).into_iter().map(|l| l.code).filter(|c| !stored.contains(c)).collect();
    group.bench_with_input(BenchmarkId::new("miss", n), &missing, |b, missing| {
        b.to_async(runtime).iter(|| {
            let code = missing[rng.below(missing.len())];
            async move { assert!(store.get_link(&code).await.expect("get").is_none()) }
        })
    });
    group.finish();
}

fn stores(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    for n in sizes() {
        bench_store(c, &runtime, "memory", &MemoryStore::new(), n);
        let dir = tempfile::tempdir().expect("tempdir");
        let sled = SledStore::open(dir.path()).expect("sled");
        bench_store(c, &runtime, "sled", &sled, n);
    }
}

criterion_group!(benches, stores);
criterion_main!(benches);
