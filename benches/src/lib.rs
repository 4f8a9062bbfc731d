//! Fixtures shared by the benches and the load harness: reproducible links, an in-process app.

#![allow(missing_docs)]

use std::sync::Arc;

use shortlinks_core::store::{LinkStore, Rate};
use shortlinks_core::{AccountId, EntityRef, Link, ShortCode, Store, TargetUrl, Timestamp, UserId};
use shortlinks_notes::Pipeline;
use shortlinks_server::config::PublicUrl;
use shortlinks_server::{App, AppSettings};

/// A fixed seed: every run measures the same codes.
pub const SEED: u64 = 0x5eed_2026_1124;

/// splitmix64: a tiny, well-mixed generator, enough for picking keys.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// `n` links with distinct random 12-character codes, for store benches.
pub fn links(n: usize, seed: u64) -> Vec<Link> {
    links_after(&mut Rng::new(seed), 0, n, Timestamp(1_700_000_000_000))
}

/// Links `from + 1` to `from + n` (each on the contact of that id) with random
/// 12-character codes drawn from `rng`: a big set made in batches.
pub fn links_after(rng: &mut Rng, from: usize, n: usize, created_at: Timestamp) -> Vec<Link> {
    const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    (from as u64..(from + n) as u64)
        .map(|i| {
            let code: Vec<u8> = (0..12).map(|_| BASE62[rng.below(62)]).collect();
            Link {
                code: ShortCode::from_key(&code).expect("base62"),
                account: AccountId(1),
                entity: EntityRef::contact(i + 1),
                target: TargetUrl::parse(&format!("https://example.com/landing/{i}?utm_source=crm")).expect("valid"),
                created_at,
                created_by: UserId(1),
            }
        })
        .collect()
}

/// Fills a store, in big batches (one flush each).
pub async fn fill<S: LinkStore>(store: &S, links: &[Link]) {
    for chunk in links.chunks(10_000) {
        store.insert_links(chunk.to_vec()).await.expect("insert");
    }
}

/// The real application, in process, with the click pipeline on (group commit, journal).
pub async fn app<S: Store>(store: S) -> (Arc<App<S>>, Pipeline) {
    let mut settings = AppSettings::new(PublicUrl::parse("https://sho.rt").expect("valid"));
    // The benches post batches back to back; the API rate limit is not what they measure.
    settings.limits.api_rate = Rate::new(1_000_000, 1_000_000);
    let (app, pipeline) = App::start(store, settings, |sinks| sinks).await.expect("start");
    (Arc::new(app), pipeline)
}

/// Whether criterion runs as a smoke test (`cargo bench -- --test`, `cargo test --benches`):
/// then the benches use small data sets.
pub fn smoke_test() -> bool {
    std::env::args().any(|a| a == "--test") || !std::env::args().any(|a| a == "--bench")
}
