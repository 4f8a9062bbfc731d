//! `benches/load/run --backlog N`: a node on Redis drains a large backlog while redirects
//! go on.
//!
//! The shape that once stalled a node (issue 34): many clicks due at once while requests
//! keep arriving. A node on a local `redis-server` first holds every click (a note hold of a
//! day) while wrk's campaign runs until N clicks wait in the outbox, each from an address of
//! its own, so each is to become a note. The node then restarts with no hold, so the whole
//! backlog is due at once, and one wrk run drives redirects while the dispatcher drains it,
//! interrupted at the drain's end; another runs 30 s after it, for comparison. The clock
//! runs from the restart until every held click is dispatched. wrk's agent is then a
//! link-preview bot: its redirects cost what any redirect costs, but make no notes, so the
//! notes counted are the backlog's. Printed: the drain's notes per second, the redirects
//! (req/s, p50, p99) during the drain and after it, and the slowest `/healthz` answer,
//! asked for ten times a second from the restart to the drain's end.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::amocrm_drain::BOT;
use super::{
    counters, pipeline_backlog, restart, run_wrk, run_wrk_until, scripts_for, shortlinks_on, slowest_health, stop,
    Options, WrkFigures, AGENT,
};

/// How long redirects are measured after the drain, for comparison.
const AFTER_SECONDS: u64 = 30;
/// A drain that takes longer has failed.
const MOST_DRAIN: Duration = Duration::from_secs(900);

pub(super) async fn run(release: &Path, work: &Path, o: &Options) -> anyhow::Result<()> {
    const HOLD: &str = "SHORTLINKS_NOTE_HOLD_SECS";
    let day = [(HOLD, "86400")];
    let (mut node, links) =
        shortlinks_on("shortlinks-redis", &release.join("shortlinks"), "redis", work, o.links, &day).await?;
    let codes: Vec<&str> = links.iter().map(|(code, _)| code.as_str()).collect();
    let scripts = scripts_for(work, 0, &codes)?;
    let connections = o.connections[0];

    let filling = Instant::now();
    let mut held = 0;
    while held < o.backlog {
        run_wrk(&node.server.addr, &scripts.campaign, connections, o.seconds, AGENT).await?;
        held = pipeline_backlog(&node.server.addr).await?.context("no counters")?;
        eprintln!("  {held} clicks held");
    }
    let took = filling.elapsed().as_secs_f64();
    println!("held {held} clicks in {took:.0} s ({:.0} clicks/s)", held as f64 / took);

    // The same node with no hold: its whole backlog is due the moment it starts.
    node.server.launch.envs.retain(|(name, _)| name != HOLD);
    node.server.launch.envs.push((HOLD.into(), "0".into()));
    let startup = restart(&mut node.server).await?;
    let addr = node.server.addr.clone();
    let addr_of_watch = addr.clone();
    let (stop_probe, probe_stopped) = tokio::sync::watch::channel(false);
    let probe = tokio::spawn(slowest_health(addr.clone(), probe_stopped));
    let (drain_ended, ended) = tokio::sync::oneshot::channel();
    let watcher = tokio::spawn(async move {
        let drain = drained(addr_of_watch, held).await;
        let _ = drain_ended.send(());
        drain
    });
    // One wrk run for the whole drain, interrupted at its end.
    let during = run_wrk_until(&addr, &scripts.repeat, connections, MOST_DRAIN.as_secs(), BOT, async {
        let _ = ended.await;
    })
    .await?;
    let (drain, notes) = watcher.await??;
    stop_probe.send(true)?;
    let health = probe.await??;
    let after = run_wrk(&addr, &scripts.repeat, connections, AFTER_SECONDS, BOT).await?;
    println!("restarted: its port answered in {:.0} ms", startup.as_secs_f64() * 1000.0);
    println!(
        "drained {held} held clicks in {:.1} s: {notes} notes written meanwhile, {:.0} notes/s",
        drain.as_secs_f64(),
        notes as f64 / drain.as_secs_f64()
    );
    let line = |when: &str, run: &WrkFigures| {
        println!(
            "redirects {when} (c={connections}): {:.0} req/s  p50 {:.2} ms  p99 {:.2} ms",
            run.rps, run.p50_ms, run.p99_ms
        );
    };
    line("during the drain", &during);
    line(&format!("after the drain, {AFTER_SECONDS} s"), &after);
    println!(
        "redirects during / after the drain: throughput {:.2}x, p99 {:.2}x",
        during.rps / after.rps,
        during.p99_ms / after.p99_ms
    );
    println!("/healthz slowest, from the restart to the drain's end: {:.1} ms", health.as_secs_f64() * 1000.0);
    stop(&mut node.server).await
}

/// Waits until every one of the `held` clicks the node started with is dispatched, and
/// every click written to the outbox since, up to a second before (the node's counters start
/// at zero; wrk's clicks keep coming, and take a moment each); returns when that was, from
/// now, and the notes written by then.
async fn drained(addr: String, held: u64) -> anyhow::Result<(Duration, u64)> {
    let started = Instant::now();
    let mut persisted_at: std::collections::VecDeque<(Instant, u64)> = std::collections::VecDeque::new();
    loop {
        let counters = counters(&addr).await?.context("no counters")?;
        let counter = |name: &str| counters.get(name).copied().unwrap_or(0);
        let now = Instant::now();
        persisted_at.push_back((now, counter("shortlinks_clicks_persisted_total")));
        while persisted_at.get(1).is_some_and(|(at, _)| now.duration_since(*at) >= Duration::from_secs(1)) {
            persisted_at.pop_front();
        }
        let (at, persisted) = persisted_at[0];
        if now.duration_since(at) >= Duration::from_secs(1)
            && counter("shortlinks_clicks_dispatched_total") >= held + persisted
        {
            return Ok((started.elapsed(), counter("shortlinks_notes_written_total")));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
