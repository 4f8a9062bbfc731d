//! Code derivation: keyed blake3 over the identity, then base62.

use criterion::{criterion_group, criterion_main, Criterion};
use shortlinks_core::CodeDeriver;
use shortlinks_core::{AccountId, CodeLength, EntityRef, InstallationSecret, ShortCode, TargetUrl};

/// Measured with the allocator the `shortlinks` binary ships with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn derivation(c: &mut Criterion) {
    let deriver = CodeDeriver::new(InstallationSecret::from_bytes([7; 32]), CodeLength::default());
    let target =
        TargetUrl::parse("https://example.com/landing/offer?utm_source=crm&utm_campaign=spring").expect("valid");
    let mut contact = 0u64;
    c.bench_function("code/derive_12", |b| {
        b.iter(|| {
            contact += 1;
            deriver.derive(AccountId(1), EntityRef::contact(contact), std::hint::black_box(&target), 0)
        })
    });
    c.bench_function("code/parse_12", |b| b.iter(|| ShortCode::parse(std::hint::black_box("AbCdEf012345"))));
}

criterion_group!(benches, derivation);
criterion_main!(benches);
