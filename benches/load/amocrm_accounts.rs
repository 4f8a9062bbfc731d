//! `benches/load/run --amocrm-accounts`: many accounts' notes drained into their own amoCRM
//! accounts at once.
//!
//! Two shortlinks servers on sled. One has a single amoCRM connection (account 1); the
//! other has [`ACCOUNTS`], each to an amoCRM stand-in of its own, at the default batching
//! and pace. Each account has [`PER_ACCOUNT`] links on as many contacts, and each link gets
//! one browser visit from an address of its own (the accounts' visits interleaved). The
//! clock runs from the first visit until every stand-in holds all its account's notes.
//! Accounts are paced independently, so many accounts should drain in about the time of
//! one.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use shortlinks_notes::stand_in::{AmoCrmStandIn, StandInOptions};

use super::amocrm_drain::visit_each;
use super::{preload, spawn, stop, Launch};

const ACCOUNTS: u64 = 20;
const PER_ACCOUNT: usize = 1_000;
/// amoCRM's default pace, which each connection keeps on its own.
const PACE_PER_SEC: usize = 5;
/// The target: many accounts drain within this much of one account's time.
const MOST_RATIO: f64 = 1.10;

/// A server with one connection per account in `accounts`, each to its stand-in; its
/// address and each account's codes, in account order.
async fn server_for(
    release: &Path,
    work: &Path,
    name: &str,
    accounts: &[(u64, &AmoCrmStandIn)],
) -> anyhow::Result<(super::Server, Vec<Vec<String>>)> {
    let data = work.join(format!("data-{name}"));
    let mut config = String::new();
    for (account, stand_in) in accounts {
        config.push_str(&format!(
            "[[amocrm_connections]]\naccount = {account}\nbase_url = \"{}\"\ntoken = \"token-{account}\"\n\n",
            stand_in.url
        ));
    }
    let config_file = work.join(format!("{name}.toml"));
    std::fs::write(&config_file, config)?;
    let mut args: Vec<std::ffi::OsString> =
        ["serve", "--listen", "127.0.0.1:0", "--public-url", "https://sho.rt", "--data-dir"].map(Into::into).into();
    args.push(data.clone().into());
    args.extend(["--client-ip-header".into(), "X-Forwarded-For".into(), "--config".into(), config_file.into()]);
    let envs = [
        ("SHORTLINKS_API_RATE_PER_SEC", "1000000"),
        ("SHORTLINKS_API_RATE_BURST", "1000000"),
        ("SHORTLINKS_NOTE_HOLD_SECS", "0"),
        ("SHORTLINKS_ADDRESS_RULE_CONTACTS", "0"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .into();
    let program = release.join("shortlinks");
    let server = spawn(Launch { program: program.clone(), args, envs }).await?;
    let first = std::fs::read_to_string(data.join(shortlinks_server::data_dir::FIRST_TOKEN_FILE))
        .context("the first token")?
        .trim()
        .to_owned();
    let mut codes = Vec::new();
    for (account, _) in accounts {
        let token = match account {
            1 => first.clone(),
            _ => {
                let out = std::process::Command::new(&program)
                    .args(["token", "create", "--user", "1", "--account", &account.to_string(), "--data-dir"])
                    .arg(&data)
                    .output()?;
                if !out.status.success() {
                    bail!("token create: {}", String::from_utf8_lossy(&out.stderr));
                }
                String::from_utf8(out.stdout)?.trim().to_owned()
            }
        };
        codes.push(preload(&server.addr, &token, PER_ACCOUNT).await?.into_iter().map(|(code, _)| code).collect());
    }
    Ok((server, codes))
}

/// Visits every code once (the accounts' interleaved); how long until every stand-in holds
/// its account's notes.
async fn drain(addr: &str, codes: &[Vec<String>], stand_ins: &[&AmoCrmStandIn]) -> anyhow::Result<Duration> {
    let interleaved: Vec<String> =
        (0..PER_ACCOUNT).flat_map(|i| codes.iter().map(move |account| account[i].clone())).collect();
    let started = Instant::now();
    visit_each(addr, &interleaved).await?;
    let visited = started.elapsed();
    while stand_ins.iter().any(|s| s.note_count() < PER_ACCOUNT) {
        if started.elapsed() > Duration::from_secs(120) {
            bail!("not drained after 120 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let drained = started.elapsed();
    // When each account's first and last requests reached its amoCRM, and how many it took.
    let spans: Vec<(f64, f64, usize)> = stand_ins
        .iter()
        .map(|s| {
            let arrivals = s.arrivals();
            let at = |a: &shortlinks_notes::stand_in::Arrival| a.at.duration_since(started).as_secs_f64();
            (arrivals.first().map_or(0.0, at), arrivals.last().map_or(0.0, at), arrivals.len())
        })
        .collect();
    let first = spans.iter().map(|s| s.0).fold(f64::NAN, f64::max);
    let last = spans.iter().map(|s| s.1).fold(f64::NAN, f64::max);
    let requests = spans.iter().map(|s| s.2).max().unwrap_or(0);
    println!(
        "  latest first request {first:.2} s, latest last request {last:.2} s, at most {requests} requests an account"
    );
    println!(
        "  {} accounts: {} visits sent in {:.2} s, every note at its amoCRM after {:.2} s",
        stand_ins.len(),
        interleaved.len(),
        visited.as_secs_f64(),
        drained.as_secs_f64()
    );
    Ok(drained)
}

pub(crate) async fn run(release: &Path, work: &Path) -> anyhow::Result<()> {
    let mut stand_ins = Vec::new();
    for account in 1..=ACCOUNTS {
        let options = StandInOptions { token: Some(format!("token-{account}")), ..Default::default() };
        stand_ins.push(AmoCrmStandIn::start(options).await?);
    }
    let solo = AmoCrmStandIn::start(StandInOptions { token: Some("token-1".into()), ..Default::default() }).await?;
    println!(
        "{ACCOUNTS} accounts x {PER_ACCOUNT} notes, each into its own amoCRM stand-in (50 notes a request, {PACE_PER_SEC} requests a second per account), against one account alone"
    );
    let (mut one, one_codes) = server_for(release, work, "one-account", &[(1, &solo)]).await?;
    let accounts: Vec<(u64, &AmoCrmStandIn)> = (1..=ACCOUNTS).zip(&stand_ins).collect();
    let (mut many, many_codes) = server_for(release, work, "many-accounts", &accounts).await?;

    let alone = drain(&one.addr, &one_codes, &[&solo]).await?;
    let all: Vec<&AmoCrmStandIn> = stand_ins.iter().collect();
    let together = drain(&many.addr, &many_codes, &all).await?;
    tokio::time::sleep(Duration::from_secs(1)).await; // anything late or misrouted shows now

    let mut exactly_once = true;
    let mut most_in_a_second = 0;
    let mut too_many = 0;
    for (account, stand_in) in (1..=ACCOUNTS).zip(&stand_ins) {
        let notes = stand_in.notes();
        let ids: HashSet<&str> = notes.iter().filter_map(|n| n.request_id.as_deref()).collect();
        let contacts: HashSet<u64> = notes.iter().map(|n| n.entity_id).collect();
        exactly_once &= notes.len() == PER_ACCOUNT && ids.len() == PER_ACCOUNT && contacts.len() == PER_ACCOUNT;
        most_in_a_second = most_in_a_second.max(stand_in.most_in_one_second());
        too_many += stand_in.too_many();
        if notes.len() != PER_ACCOUNT {
            println!("  account {account}: {} notes", notes.len());
        }
    }
    let ratio = together.as_secs_f64() / alone.as_secs_f64();
    println!(
        "drain: one account {:.2} s, {ACCOUNTS} accounts {:.2} s: {ratio:.2}x; at most {most_in_a_second} requests in one second at any one account; {too_many} answered 429",
        alone.as_secs_f64(),
        together.as_secs_f64()
    );
    println!(
        "targets: every note exactly once, at its own account {}; no 429 {}; each account within its pace {}; {ACCOUNTS} accounts within {MOST_RATIO}x of one {}",
        met(exactly_once),
        met(too_many == 0),
        met(most_in_a_second <= PACE_PER_SEC),
        met(ratio <= MOST_RATIO)
    );
    for server in [&mut one, &mut many] {
        stop(server).await?;
    }
    Ok(())
}

fn met(yes: bool) -> &'static str {
    if yes {
        "MET"
    } else {
        "MISSED"
    }
}
