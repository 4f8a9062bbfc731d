//! `benches/load/run --compaction`: redirects while the embedded store compacts.
//!
//! A node on the embedded store is preloaded and takes a campaign round, so that both
//! `links.log` and `notes.log` have something to rewrite. Then, in each round, two runs of
//! the repeat visitor, in turns: one plain, and one that starts together with a
//! compaction. Before that run one more contact is erased through the admin socket, so
//! that the compaction has garbage to leave out, as after a real erasure (without garbage
//! it rewrites nothing); the erasure is timed apart, outside the run. A compaction takes
//! about 0.6 s at a million links: with `--seconds 1` one is in progress for most of each
//! run, and how much of it is printed. Printed per run and as medians: req/s and p99 of
//! both, their ratio, and the compactions' and erasures' times.

use std::path::Path;
use std::time::Instant;

use anyhow::bail;

use super::{command, median, scripts_for, shortlinks_on, wrk, Options, Run, AGENT};

/// The most contacts set aside to be erased.
const SET_ASIDE: usize = 10_000;

pub(super) async fn run(release: &Path, work: &Path, o: &Options) -> anyhow::Result<()> {
    let binary = release.join("shortlinks");
    let (node, links) = shortlinks_on("shortlinks-sled", &binary, "sled", work, o.links, &[]).await?;
    let data = work.join("data-shortlinks-sled");
    // The last contacts are set aside to be erased, out of wrk's draw: their codes answer
    // 410 once erased, which wrk would count as errors.
    let set_aside = (o.links / 10).min(SET_ASIDE);
    let drawn = &links[..o.links - set_aside];
    let codes: Vec<&str> = drawn.iter().map(|(code, _)| code.as_str()).collect();
    let scripts = scripts_for(work, 0, &codes)?;
    let connections = o.connections[0];
    // Notes to rewrite as well as links.
    let campaign = wrk(&node.server, &scripts.campaign, connections, o.seconds, AGENT).await?;
    println!("campaign round before: {:.0} req/s, each click a note", campaign.rps);

    // Contacts are erased from the last one down (the preload's contacts are 1 to N).
    let mut next_contact = o.links as u64;
    let last_erasable = (o.links - set_aside) as u64 + 1;
    let (mut plain, mut compacting) = (Vec::new(), Vec::new());
    let (mut took, mut erasures) = (Vec::new(), Vec::new());
    for round in 0..o.rounds {
        for turn in 0..2 {
            let during = (round + turn) % 2 == 1;
            if !during {
                let run = wrk(&node.server, &scripts.repeat, connections, o.seconds, AGENT).await?;
                report(round, "plain", &run, "");
                plain.push(run);
                continue;
            }
            let contact = next_contact;
            if contact < last_erasable {
                bail!("no contact left to erase: fewer rounds, or more links");
            }
            next_contact -= 1;
            let erasing = Instant::now();
            command(&binary, &["erase", "--account", "1", "--contact", &contact.to_string()], &data).await?;
            erasures.push(erasing.elapsed().as_secs_f64() * 1000.0);
            let compaction = tokio::spawn(compact(binary.clone(), data.clone()));
            let run = wrk(&node.server, &scripts.repeat, connections, o.seconds, AGENT).await?;
            let ms = compaction.await??;
            let covered = (ms / (o.seconds as f64 * 10.0)).min(100.0);
            report(round, "compacting", &run, &format!("  compaction {ms:.0} ms, {covered:.0}% of the run"));
            took.push(ms);
            compacting.push(run);
        }
    }

    let stats = |runs: &[Run], f: fn(&Run) -> f64| median(runs.iter().map(f).collect());
    println!("\nRepeat, {connections} connections (median [min, max] of {} runs):", o.rounds);
    for (name, runs) in [("plain", &plain), ("compacting", &compacting)] {
        let (rps, rps_min, rps_max) = stats(runs, |r| r.rps);
        let (p99, p99_min, p99_max) = stats(runs, |r| r.p99_ms);
        let (cpu, _, _) = stats(runs, |r| r.cpu_us);
        println!(
            "  {name:<11} {rps:>9.0} req/s [{rps_min:.0}, {rps_max:.0}]  p99 {p99:.2} ms [{p99_min:.2}, {p99_max:.2}]  cpu {cpu:.1} us/req"
        );
    }
    let ratio = stats(&compacting, |r| r.rps).0 / stats(&plain, |r| r.rps).0;
    let p99_ratio = stats(&compacting, |r| r.p99_ms).0 / stats(&plain, |r| r.p99_ms).0;
    let worst = compacting.iter().zip(&plain).map(|(c, p)| c.p99_ms / p.p99_ms).fold(0.0, f64::max);
    let (ms, min, max) = median(took.clone());
    let (erase, erase_min, erase_max) = median(erasures);
    println!(
        "  compacting / plain: throughput {ratio:.2}x, p99 {p99_ratio:.2}x (worst round {worst:.2}x); \
         a compaction {ms:.0} ms [{min:.0}, {max:.0}], an erasure before it {erase:.0} ms [{erase_min:.0}, {erase_max:.0}]"
    );
    Ok(())
}

fn report(round: usize, name: &str, run: &Run, extra: &str) {
    eprintln!(
        "  round {} {name:<11} {:>9.0} req/s  p50 {:.2} ms  p99 {:.2} ms  cpu {:.1} us/req  /healthz slowest {:.1} ms{extra}",
        round + 1,
        run.rps,
        run.p50_ms,
        run.p99_ms,
        run.cpu_us,
        run.health_ms
    );
}

/// One compaction through the admin socket; its time in milliseconds. One that frees
/// nothing rewrote nothing, and the run measured nothing.
async fn compact(binary: std::path::PathBuf, data: std::path::PathBuf) -> anyhow::Result<f64> {
    let started = Instant::now();
    let said = command(&binary, &["compact"], &data).await?;
    if said.contains(" 0 bytes freed") {
        bail!("a compaction freed nothing: {said}");
    }
    Ok(started.elapsed().as_secs_f64() * 1000.0)
}
