//! A read cache of links in front of the store: the redirect's hot path.
//!
//! Links are never overwritten or edited, so a cached link is stale only once it is erased:
//! the erasure takes it out ([`LinkCache::forget`]), here or, on a shared store, on every
//! node as it hears of it. Misses are not cached: a link created on another node, or after
//! a 404, must be found at once.
//!
//! Why not a general-purpose concurrent cache: under load the redirect's lookup was the
//! largest symbol of the server's own code, and what it paid for was memory traffic that
//! a read does not need. A shard lock and a hit counter written on every get, and a
//! reference count taken and dropped on the link, each turn a read into a write to a
//! cache line the other core also writes. Here a lookup hashes the code to a set of four
//! slots on one cache line, loads the slot (`arc-swap`: a thread-local note, no
//! shared write) and reads the link where it lies ([`LinkCache::get_with`]). A hit
//! writes nothing once the link is marked as used. Each slot also holds 32 bits of its
//! link's hash, so a lookup follows only the slot that can hold its code: with full sets,
//! the other slots' links (each a cache miss of its own) are never read.
//!
//! Eviction is a second chance per set: a new link takes an empty slot, else one not used
//! since it came in, else the used marks of the set are cleared and one slot is taken. A
//! link read often survives newcomers to its set; a scan of cold links only churns the
//! slots it lands in. The price of sets: with as many links as the capacity, about four
//! in five stay cached (the rest, whose sets are full, are read from the store); with half
//! as many, 96 in 100; with a quarter, nearly all.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::Arc;

use arc_swap::ArcSwapOption;

use crate::model::Link;
use crate::store::LinkStore;
use crate::{Error, ShortCode};

/// A bounded cache of links, read without locks. Cheap to clone: clones share the cache.
#[derive(Clone)]
pub struct LinkCache {
    inner: Arc<Sets>,
}

struct Sets {
    sets: Box<[Set]>,
    /// Seeded per cache: which set a code lands in cannot be chosen from outside. The
    /// quality variant, because the set comes from the hash's high bits: the fast one's
    /// single multiply spreads codes that differ in a few characters unevenly, under some
    /// seeds, which fills sets early (one seed in 25 kept under 93 in 100 at half capacity).
    hasher: foldhash::quality::RandomState,
    /// Occupied slots, for [`LinkCache::len`].
    len: AtomicUsize,
    /// Counts forgets: a link read from the store while one happened may be the erased
    /// one, so it is not left in the cache.
    forgets: AtomicU64,
}

/// Four slots on one cache line (16 bytes each), so a lookup costs one miss for all.
#[repr(align(64))]
#[derive(Default)]
struct Set([Slot; WAYS]);

/// Slots per set.
const WAYS: usize = 4;

#[derive(Default)]
struct Slot {
    link: ArcSwapOption<Link>,
    /// The low half of the link's hash. A hint, never trusted: a lookup compares codes,
    /// so a tag that is stale for a moment (an insert in progress) costs at most a miss.
    tag: AtomicU32,
    /// Read since it came in (or since its set last cleared the marks).
    used: AtomicBool,
}

impl LinkCache {
    /// The default size: two million links (32 MB of slots; about 500 MB when full), so
    /// that of a million links in use, 96 in 100 stay cached.
    pub const DEFAULT_CAPACITY: usize = 2_000_000;

    /// The largest cache: its slots (16 bytes a link) are allocated up front, 800 MB here.
    pub const MAX_CAPACITY: usize = 50_000_000;

    /// A cache of at most `capacity` links (rounded up to a multiple of four, and to at
    /// most [`LinkCache::MAX_CAPACITY`]).
    pub fn new(capacity: usize) -> Self {
        let sets = (0..capacity.clamp(WAYS, Self::MAX_CAPACITY).div_ceil(WAYS)).map(|_| Set::default()).collect();
        let inner = Sets { sets, hasher: Default::default(), len: AtomicUsize::new(0), forgets: AtomicU64::new(0) };
        Self { inner: Arc::new(inner) }
    }

    /// The link with this code: from the cache, or one store read on a miss.
    pub async fn get<S: LinkStore>(&self, store: &S, code: &ShortCode) -> Result<Option<Arc<Link>>, Error> {
        self.get_with(store, code, Arc::clone).await
    }

    /// `f` of the link with this code: read in place from the cache, or after one store
    /// read on a miss (the link is then cached). The cache is searched once either way.
    /// The hot path: on a hit no lock, no allocation, no reference count taken.
    pub async fn get_with<S: LinkStore, R>(
        &self,
        store: &S,
        code: &ShortCode,
        f: impl FnOnce(&Arc<Link>) -> R,
    ) -> Result<Option<R>, Error> {
        // Called once: by the search on a hit, else after the store read.
        let mut f = Some(f);
        if let Some(answer) = self.find(code, |link| f.take().map(|f| f(link))) {
            return Ok(answer);
        }
        let Some(f) = f else { return Ok(None) };
        let era = self.era();
        let Some(link) = store.get_link(code).await? else { return Ok(None) };
        let link = Arc::new(link);
        let answer = f(&link);
        self.put_shared([link], era);
        Ok(Some(answer))
    }

    /// The links with these codes, in order: from the cache, and every miss in one
    /// [`LinkStore::get_links`] (then cached). Off the hot path: a batch's reads.
    pub async fn get_many<S: LinkStore>(
        &self,
        store: &S,
        codes: &[ShortCode],
    ) -> Result<Vec<Option<Arc<Link>>>, Error> {
        let mut found: Vec<Option<Arc<Link>>> = codes.iter().map(|code| self.find(code, Arc::clone)).collect();
        let mut missed: Vec<ShortCode> =
            codes.iter().zip(&found).filter(|(_, f)| f.is_none()).map(|(c, _)| *c).collect();
        if missed.is_empty() {
            return Ok(found);
        }
        missed.sort_unstable();
        missed.dedup();
        let era = self.era();
        let read: std::collections::HashMap<ShortCode, Arc<Link>> =
            store.get_links(&missed).await?.into_iter().flatten().map(|link| (link.code, Arc::new(link))).collect();
        for (code, slot) in codes.iter().zip(&mut found) {
            if slot.is_none() {
                *slot = read.get(code).cloned();
            }
        }
        self.put_shared(read.into_values(), era);
        Ok(found)
    }

    /// Where forgetting stands: taken before a store read or write whose links are then
    /// cached.
    pub(crate) fn era(&self) -> u64 {
        self.inner.forgets.load(SeqCst)
    }

    /// Caches links just stored, unless a forget came since `era` (see below).
    pub(crate) fn put(&self, links: impl IntoIterator<Item = Link>, era: u64) {
        self.put_shared(links.into_iter().map(Arc::new), era);
    }

    /// Caches links read or stored since `era`, unless a forget came since: it may have
    /// been of one of them, and missed it (not in yet).
    fn put_shared(&self, links: impl IntoIterator<Item = Arc<Link>>, era: u64) {
        for link in links {
            if self.inner.forgets.load(SeqCst) != era {
                return;
            }
            let code = link.code;
            self.insert(link);
            if self.inner.forgets.load(SeqCst) != era {
                self.remove(&code);
                return;
            }
        }
    }

    /// Takes these codes' links out of the cache: they were erased.
    pub fn forget(&self, codes: &[ShortCode]) {
        self.inner.forgets.fetch_add(1, SeqCst);
        for code in codes {
            self.remove(code);
        }
    }

    /// Takes every link out of the cache: erasures were missed.
    pub fn forget_all(&self) {
        self.inner.forgets.fetch_add(1, SeqCst);
        for slot in self.inner.sets.iter().flat_map(|set| set.0.iter()) {
            if slot.link.swap(None).is_some() {
                self.inner.len.fetch_sub(1, Relaxed);
            }
        }
    }

    /// Empties every slot of the code's set that holds its link.
    fn remove(&self, code: &ShortCode) {
        let (set, _) = self.inner.locate(code);
        for slot in &set.0 {
            let current = slot.link.load_full();
            if current.as_ref().is_some_and(|link| link.code == *code) {
                let previous = slot.link.compare_and_swap(&current, None);
                if previous.as_ref().is_some_and(|p| current.as_ref().is_some_and(|c| Arc::ptr_eq(p, c))) {
                    self.inner.len.fetch_sub(1, Relaxed);
                }
            }
        }
    }

    /// `f` of the slot holding this code's link, which is marked as used.
    fn find<R>(&self, code: &ShortCode, f: impl FnOnce(&Arc<Link>) -> R) -> Option<R> {
        let (set, tag) = self.inner.locate(code);
        for slot in set.0.iter().filter(|slot| slot.tag.load(Relaxed) == tag) {
            let link = slot.link.load();
            if let Some(link) = link.as_ref().filter(|link| link.code == *code) {
                slot.mark_used();
                return Some(f(link));
            }
        }
        None
    }

    /// Caches a link read from the store, evicting by second chance (module comment). A
    /// new link comes in unmarked: an empty slot was never marked, and a victim either was
    /// not or just lost its mark. Two inserts racing into one set may both land; a lookup
    /// finds either copy.
    fn insert(&self, link: Arc<Link>) {
        let (set, tag) = self.inner.locate(&link.code);
        let slots = &set.0;
        let empty = || slots.iter().find(|slot| slot.link.load().is_none());
        let unused = || slots.iter().find(|slot| !slot.used.load(Relaxed));
        let victim = empty().or_else(unused).unwrap_or_else(|| {
            // All used: all lose their mark (the survivors must be read again to keep their
            // places), and one is replaced, chosen by bits of the newcomer's hash.
            for slot in slots {
                slot.used.store(false, Relaxed);
            }
            &slots[tag as usize % WAYS]
        });
        // The tag first: a reader that sees it with the old link only compares codes.
        victim.tag.store(tag, Relaxed);
        if victim.link.swap(Some(link)).is_none() {
            self.inner.len.fetch_add(1, Relaxed);
        }
    }

    /// How many links are cached.
    pub fn len(&self) -> usize {
        self.inner.len.load(Relaxed)
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Slot {
    /// Written once; later hits only read the mark, so a hot link's line stays shared.
    fn mark_used(&self) {
        if !self.used.load(Relaxed) {
            self.used.store(true, Relaxed);
        }
    }
}

impl Sets {
    /// The code's set and its tag, from one hash: the set from its high bits
    /// (multiply-shift onto the set count: any count, no modulo), the tag from its low ones.
    fn locate(&self, code: &ShortCode) -> (&Set, u32) {
        let hash = self.hasher.hash_one(code);
        let index = ((u128::from(hash) * self.sets.len() as u128) >> 64) as usize;
        (&self.sets[index], hash as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AccountId, EntityRef, Timestamp, UserId};
    use crate::store::MemoryStore;
    use crate::target::TargetUrl;

    fn link(n: u64) -> Arc<Link> {
        let code = format!("{n:0>12}");
        Arc::new(Link {
            code: ShortCode::parse(&code).unwrap(),
            account: AccountId(1),
            entity: EntityRef::contact(n),
            target: TargetUrl::parse(&format!("https://example.com/{n}")).unwrap(),
            created_at: Timestamp(1),
            created_by: UserId(1),
        })
    }

    fn target(cache: &LinkCache, link: &Link) -> Option<String> {
        cache.find(&link.code, |l| l.target.to_string())
    }

    #[test]
    fn a_set_is_one_cache_line() {
        assert_eq!(std::mem::size_of::<Set>(), 64);
        assert_eq!(std::mem::align_of::<Set>(), 64);
    }

    #[tokio::test]
    async fn a_miss_reads_the_store_once_and_is_then_served_in_place() {
        let store = MemoryStore::new();
        let cache = LinkCache::new(100);
        let known = link(7);
        store.insert_links(vec![(*known).clone()]).await.unwrap();

        assert_eq!(target(&cache, &known), None, "nothing cached yet");
        assert_eq!(cache.get(&store, &known.code).await.unwrap().as_deref(), Some(&*known));
        assert_eq!(target(&cache, &known).as_deref(), Some("https://example.com/7"));
        assert_eq!(cache.len(), 1);

        // An unknown code is not remembered as missing: created later, it is found at once.
        let later = link(8);
        assert_eq!(cache.get(&store, &later.code).await.unwrap(), None);
        store.insert_links(vec![(*later).clone()]).await.unwrap();
        assert_eq!(cache.get(&store, &later.code).await.unwrap().as_deref(), Some(&*later));
        assert_eq!(cache.len(), 2);
    }

    #[tokio::test]
    async fn a_forgotten_link_is_read_from_the_store_again() {
        let store = MemoryStore::new();
        let (a, b) = (link(1), link(2));
        store.insert_links(vec![(*a).clone(), (*b).clone()]).await.unwrap();
        let cache = LinkCache::new(64);
        for l in [&a, &b] {
            cache.get(&store, &l.code).await.unwrap();
        }
        assert_eq!(cache.len(), 2);
        cache.forget(&[a.code]);
        assert_eq!(cache.len(), 1);
        assert!(cache.find(&a.code, |_| ()).is_none(), "forgotten");
        assert!(cache.find(&b.code, |_| ()).is_some(), "the other link stays");
        cache.forget_all();
        assert!(cache.is_empty());
        assert_eq!(cache.get(&store, &b.code).await.unwrap().as_deref(), Some(&*b), "read again");
    }

    #[test]
    fn it_holds_at_most_its_capacity_and_never_answers_with_another_link() {
        let cache = LinkCache::new(64);
        let links: Vec<_> = (0..10_000).map(link).collect();
        for l in &links {
            cache.insert(l.clone());
        }
        assert!(cache.len() <= 64, "{} cached", cache.len());
        let held = links.iter().filter(|l| target(&cache, l).is_some()).count();
        assert!((1..=64).contains(&held), "{held} held");
        for l in &links {
            if let Some(found) = target(&cache, l) {
                assert_eq!(found, l.target.to_string(), "the code's own link, or nothing");
            }
        }
    }

    #[test]
    fn a_used_link_survives_newcomers_to_its_set() {
        // Capacity 4 is one set: which slot goes is fully decided by the used marks.
        let cache = LinkCache::new(4);
        let hot = link(1);
        let cold: Vec<_> = (2..=5).map(link).collect();
        cache.insert(hot.clone());
        for l in &cold[..3] {
            cache.insert(l.clone());
        }
        assert_eq!(cache.len(), 4, "the set is full");
        assert!(target(&cache, &hot).is_some(), "read: now marked as used");
        assert!(target(&cache, &cold[0]).is_some(), "read: now marked as used");
        cache.insert(cold[3].clone());
        assert!(target(&cache, &hot).is_some(), "a scan of cold links does not push it out");
        assert!(target(&cache, &cold[0]).is_some());
        assert!(target(&cache, &cold[3]).is_some(), "the newcomer took an unused slot");
        assert_eq!(cold[1..3].iter().filter(|l| target(&cache, l).is_none()).count(), 1, "one unused went");
        assert_eq!(cache.len(), 4);
    }

    /// The module's claim for sets of four: with half as many links as the capacity,
    /// about 96 in 100 stay cached (a set overflows only with a fifth link). It must hold
    /// for every seed, and for codes that differ in a few characters (the sequential ones
    /// here), so it is checked under many seeds.
    #[test]
    fn with_half_its_capacity_in_links_nearly_all_stay_cached() {
        let links: Vec<_> = (0..10_000).map(link).collect();
        for _seed in 0..64 {
            let cache = LinkCache::new(20_000);
            for l in &links {
                cache.insert(l.clone());
            }
            let held = links.iter().filter(|l| target(&cache, l).is_some()).count();
            assert!(held >= 9_300, "{held} of 10 000 held");
        }
    }

    #[test]
    fn readers_and_writers_on_many_threads_only_ever_see_the_right_link() {
        let cache = LinkCache::new(256);
        let links: Vec<_> = (0..4_000).map(link).collect();
        std::thread::scope(|scope| {
            for t in 0..4 {
                let (cache, links) = (&cache, &links);
                scope.spawn(move || {
                    for round in 0..20 {
                        for (i, l) in links.iter().enumerate() {
                            if (i + t + round) % 3 == 0 {
                                cache.insert(l.clone());
                            } else if let Some(found) = cache.find(&l.code, |found| found.entity) {
                                assert_eq!(found, l.entity);
                            }
                        }
                    }
                });
            }
        });
        assert!(cache.len() <= 256);
    }
}
