//! A click's cost to the address rule ("one address, many contacts") when its address has
//! already made 1, 1 000 or 1 000 000 sightings within the window, each of another contact
//! (a mail gateway): the writer's `sight` of the click and the dispatcher's
//! `gateway_spans` around it, on the memory and the sled store. The tally is constant in
//! size, so the three should cost the same.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use shortlinks_benches::smoke_test;
use shortlinks_core::store::{AddressLedger, AddressRule, Sighting};
use shortlinks_core::{MemoryStore, SledStore, Timestamp};

/// Measured with the allocator the `shortlinks` binary ships with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ADDRESS: [u8; 16] = [7; 16];
const T0: u64 = 1_700_000_000_000;

fn sizes() -> Vec<u64> {
    if smoke_test() {
        return vec![1, 1_000];
    }
    vec![1, 1_000, 1_000_000]
}

/// `n` sightings of `n` contacts within 50 s (or one), in groups as the writer makes them.
async fn fill<S: AddressLedger>(store: &S, n: u64) {
    let rule = AddressRule::default();
    for first in (0..n).step_by(1_024) {
        let group = (first..n.min(first + 1_024))
            .map(|i| Sighting { address: ADDRESS, contact: i, at: Timestamp(T0 + i * 50_000 / n.max(1)) })
            .collect();
        store.sight(group, rule, 600_000).await.expect("sight");
    }
}

fn bench_ledger<S: AddressLedger>(c: &mut Criterion, name: &str, store: &S) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let mut group = c.benchmark_group(format!("address_rule/{name}"));
    let mut filled = 0;
    for n in sizes() {
        // Each size adds to the same address: 1, then 1 000, then a million in all.
        runtime.block_on(fill(store, n - filled));
        filled = n;
        let mut contact = u64::MAX;
        group.bench_function(BenchmarkId::new("click", n), |b| {
            b.iter(|| {
                contact -= 1;
                let at = Timestamp(T0 + 50_000);
                runtime.block_on(async {
                    let sighting = Sighting { address: ADDRESS, contact, at };
                    store.sight(vec![sighting], AddressRule::default(), 600_000).await.expect("sight");
                    std::hint::black_box(store.gateway_spans(ADDRESS, at, at).await.expect("spans"))
                })
            });
        });
    }
    group.finish();
}

fn address_rule(c: &mut Criterion) {
    bench_ledger(c, "memory", &MemoryStore::new());
    let dir = tempfile::tempdir().expect("tempdir");
    bench_ledger(c, "sled", &SledStore::open(dir.path()).expect("open"));
}

criterion_group!(benches, address_rule);
criterion_main!(benches);
