//! `benches/load/run --amocrm-drain`: a mailing's clicks drained into amoCRM.
//!
//! Two shortlinks servers on sled, each with the same 10 000 links on 10 000 contacts: one
//! with the amoCRM sink (default batching and pacing) pointed at the amoCRM stand-in, one
//! without any sink. Each link gets one browser visit from an address of its own, on both
//! servers. From the first visit the clock runs until the stand-in holds all 10 000 notes.
//! Meanwhile wrk measures redirects on both servers in interleaved rounds (a preview bot's
//! agent, so the rounds add no notes), which shows what the drain costs the hot path.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use shortlinks_notes::stand_in::{AmoCrmStandIn, StandInOptions};

use super::{median, shortlinks_on, stop, wrk, Run, Server, AGENT, REPEAT_REQUEST};

const CONTACTS: usize = 10_000;
/// Targets (issue 17): every note once within this, and no 429.
const TARGET: Duration = Duration::from_secs(45);
/// wrk's agent during the drain: a preview bot, so its redirects make no notes.
pub(super) const BOT: &str = "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)";
const ROUND_SECONDS: u64 = 3;

/// One visit per code, each from an address of its own, 32 at a time.
pub(super) async fn visit_each(addr: &str, codes: &[String]) -> anyhow::Result<()> {
    let chunks: Vec<Vec<(usize, String)>> = codes
        .iter()
        .cloned()
        .enumerate()
        .collect::<Vec<_>>()
        .chunks(codes.len().div_ceil(32))
        .map(<[_]>::to_vec)
        .collect();
    let mut tasks = Vec::new();
    for chunk in chunks {
        let addr = addr.to_owned();
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(&addr).await?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            for (i, code) in chunk {
                let request = Request::get(format!("/{code}"))
                    .header("host", &addr)
                    .header("user-agent", AGENT)
                    .header("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8")
                    .header("accept-language", "en-US,en;q=0.5")
                    .header("x-forwarded-for", format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255))
                    .body(Full::new(Bytes::new()))?;
                let response = sender.send_request(request).await?;
                if response.status() != 302 {
                    bail!("a visit was answered {}", response.status());
                }
                response.into_body().collect().await?;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

fn script(work: &Path, name: &str, codes: &[String]) -> anyhow::Result<std::path::PathBuf> {
    let codes_file = work.join(format!("codes-{name}.txt"));
    std::fs::write(&codes_file, codes.join("\n"))?;
    let script = work.join(format!("drain-{name}.lua"));
    std::fs::write(
        &script,
        format!(
            "local paths = {{}}\nfor line in io.lines(\"{}\") do paths[#paths + 1] = \"/\" .. line end\n{REPEAT_REQUEST}",
            codes_file.display()
        ),
    )?;
    Ok(script)
}

pub(crate) async fn run(release: &Path, work: &Path, most_rounds: usize) -> anyhow::Result<()> {
    let stand_in =
        AmoCrmStandIn::start(StandInOptions { token: Some("bench-token".into()), ..Default::default() }).await?;
    let binary = release.join("shortlinks");
    let amocrm = [("SHORTLINKS_AMOCRM_BASE_URL", stand_in.url.as_str()), ("SHORTLINKS_AMOCRM_TOKEN", "bench-token")];
    let (mut with_sink, links) = shortlinks_on("with-amocrm", &binary, "sled", work, CONTACTS, &amocrm).await?;
    let (mut no_sink, other_links) = shortlinks_on("no-sink", &binary, "sled", work, CONTACTS, &[]).await?;
    let codes: Vec<String> = links.into_iter().map(|(code, _)| code).collect();
    let other_codes: Vec<String> = other_links.into_iter().map(|(code, _)| code).collect();
    let servers: [(&str, &Server, std::path::PathBuf); 2] = [
        ("with-amocrm", &with_sink.server, script(work, "with", &codes)?),
        ("no-sink", &no_sink.server, script(work, "without", &other_codes)?),
    ];

    println!("{CONTACTS} visits on {CONTACTS} contacts, drained into the amoCRM stand-in (50 notes a request, 5 requests a second)");
    let started = Instant::now();
    visit_each(&with_sink.server.addr, &codes).await?;
    let visited = started.elapsed();
    visit_each(&no_sink.server.addr, &other_codes).await?;
    println!("visits sent in {:.2} s", visited.as_secs_f64());

    // Rounds during the drain, alternating which server goes first.
    let mut runs: [Vec<Run>; 2] = [Vec::new(), Vec::new()];
    let mut round = 0;
    while stand_in.notes().len() < CONTACTS && round < most_rounds && started.elapsed() < Duration::from_secs(120) {
        for k in 0..2 {
            let (name, server, script) = &servers[(round + k) % 2];
            let run = wrk(server, script, 64, ROUND_SECONDS, BOT).await?;
            eprintln!(
                "  round {} {name:<12} {:>9.0} req/s  p99 {:.2} ms  notes at amoCRM {}",
                round + 1,
                run.rps,
                run.p99_ms,
                stand_in.notes().len()
            );
            runs[(round + k) % 2].push(run);
        }
        round += 1;
    }
    let drained = loop {
        if stand_in.notes().len() >= CONTACTS {
            break started.elapsed();
        }
        if started.elapsed() > Duration::from_secs(180) {
            bail!("only {} of {CONTACTS} notes after 180 s", stand_in.notes().len());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::sleep(Duration::from_secs(1)).await; // anything late would show now

    let notes = stand_in.notes();
    let ids: HashSet<&str> = notes.iter().filter_map(|n| n.request_id.as_deref()).collect();
    let contacts: HashSet<u64> = notes.iter().map(|n| n.entity_id).collect();
    let arrivals = stand_in.arrivals();
    println!(
        "drained: {} notes ({} distinct, on {} contacts) in {:.1} s from the first visit = {:.0} notes/s; {} requests, {} answered 429, at most {} in one second",
        notes.len(),
        ids.len(),
        contacts.len(),
        drained.as_secs_f64(),
        notes.len() as f64 / drained.as_secs_f64(),
        arrivals.len(),
        stand_in.too_many(),
        stand_in.most_in_one_second()
    );
    for ((name, _, _), runs) in servers.iter().zip(&runs) {
        if runs.is_empty() {
            continue;
        }
        let (rps, low, high) = median(runs.iter().map(|r| r.rps).collect());
        let (p99, _, _) = median(runs.iter().map(|r| r.p99_ms).collect());
        println!("  redirects during the drain, {name:<12} {rps:>9.0} req/s [{low:.0}, {high:.0}]  p99 {p99:.2} ms ({} rounds)", runs.len());
    }
    if !runs[0].is_empty() && !runs[1].is_empty() {
        let ratio =
            median(runs[0].iter().map(|r| r.rps).collect()).0 / median(runs[1].iter().map(|r| r.rps).collect()).0;
        println!("  with-amocrm / no-sink: throughput {ratio:.2}x");
    }
    let exactly_once = notes.len() == CONTACTS && ids.len() == CONTACTS && contacts.len() == CONTACTS;
    println!(
        "targets: every note exactly once {}; within {} s {}; no 429 {}",
        if exactly_once { "MET" } else { "MISSED" },
        TARGET.as_secs(),
        if drained <= TARGET { "MET" } else { "MISSED" },
        if stand_in.too_many() == 0 { "MET" } else { "MISSED" }
    );
    for contender in [&mut with_sink, &mut no_sink] {
        stop(&mut contender.server).await?;
    }
    Ok(())
}
