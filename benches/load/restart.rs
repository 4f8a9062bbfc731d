//! `benches/load/run --restart`: how long a node on the embedded store takes, after a
//! restart, to answer on its port and to serve its first redirect, and its RSS then, at
//! `--links` links with as many notes (every link clicked once, as after a campaign;
//! `--clicks-age-hours` before the starts, so that the visit ledger has let their marks go).
//!
//! The data directory is written through the store in process, in batches of 10 000: the
//! links, then for each link its visit claimed and its note appended, with the store's
//! upkeep after every million notes, as a server runs it every minute. Going through the
//! API and wrk would take most of an hour at ten million. Then:
//! - 32 MiB more links are written and the store is dropped without a flush: the state a
//!   kill -9 leaves at worst, the checkpoint of the links' index that far behind;
//! - `shortlinks serve` starts on it once so (`behind`), then `--rounds` times after a
//!   SIGTERM (`clean`: the checkpoint covers the whole log) and, in turns, with
//!   `links.index` deleted (`none`: `links.log` read through, as with no checkpoint).
//!
//! Printed per start and as medians: from the process's start to its port answering, to
//! its first `302`, and to its first notes listing (which waits until `notes.log` is read),
//! and its RSS at the first redirect and at the listing.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use shortlinks_core::model::{Note, NoteBody};
use shortlinks_core::store::{NotesJournal, VisitClaim, VisitLedger, VisitRules};
use shortlinks_core::{AccountId, Link, LinkStore, SledStore, Store, Timestamp};

use super::{command, median, rss_mib, spawn, status_of, stop, Launch, Options};
use shortlinks_benches::{links_after, Rng};

const BATCH: usize = 10_000;
/// Notes written between two runs of the store's upkeep (a server's runs every minute).
const UPKEEP_EVERY: usize = 1_000_000;
/// What the store's upkeep lets `links.log` grow by before it writes a checkpoint.
const BEHIND_BYTES: u64 = 32 << 20;

pub(super) async fn run(release: &Path, work: &Path, o: &Options) -> anyhow::Result<()> {
    let data = work.join("data-restart");
    let written = Instant::now();
    let first_code = write(&data, o.links, Duration::from_secs(o.clicks_age_hours * 3600)).await?;
    println!(
        "wrote {} links and {} notes in {:.0} s: links.log {:.0} MiB, links.index {:.0} MiB, notes.log {:.0} MiB",
        o.links,
        o.links,
        written.elapsed().as_secs_f64(),
        mib(&data.join("links.log")),
        mib(&data.join("links.index")),
        mib(&data.join("notes.log"))
    );
    let launch = || Launch {
        program: release.join("shortlinks"),
        args: ["serve", "--listen", "127.0.0.1:0", "--public-url", "https://sho.rt", "--data-dir"]
            .map(Into::into)
            .into_iter()
            .chain([data.clone().into_os_string()])
            .collect(),
        envs: Vec::new(),
    };
    // Made before the links that the checkpoint does not cover: the command flushes, and a
    // flush writes a checkpoint.
    let token = mint_token(&release.join("shortlinks"), &data).await?;
    grow(&data, o.links).await?;
    let mut starts: Vec<(&str, Start)> = vec![("behind", start(launch(), &first_code, &token).await?)];
    for round in 0..o.rounds {
        for turn in 0..2 {
            let without = (round + turn) % 2 == 1;
            if without {
                std::fs::remove_file(data.join("links.index")).context("links.index")?;
            }
            let name = if without { "none" } else { "clean" };
            starts.push((name, start(launch(), &first_code, &token).await?));
        }
    }
    println!("\nStart-up at {} links and {} notes (median [min, max]):", o.links, o.links);
    for name in ["behind", "clean", "none"] {
        let of: Vec<&Start> = starts.iter().filter(|(n, _)| *n == name).map(|(_, s)| s).collect();
        let stat = |f: fn(&Start) -> f64| median(of.iter().map(|s| f(s)).collect());
        let (port, port_min, port_max) = stat(|s| s.port_ms);
        let (first, first_min, first_max) = stat(|s| s.first_redirect_ms);
        let (notes, notes_min, notes_max) = stat(|s| s.notes_ms);
        let (rss, _, _) = stat(|s| s.rss_mib);
        let (rss_notes, _, _) = stat(|s| s.rss_notes_mib);
        println!(
            "  {name:<7} port {port:>6.0} ms [{port_min:.0}, {port_max:.0}]  first redirect {first:>6.0} ms \
             [{first_min:.0}, {first_max:.0}]  notes {notes:>6.0} ms [{notes_min:.0}, {notes_max:.0}]  \
             RSS {rss:.0} then {rss_notes:.0} MiB  ({} starts)",
            of.len()
        );
    }
    Ok(())
}

/// A token for the notes listing, made by the operator's command on the stopped node.
async fn mint_token(binary: &Path, data: &Path) -> anyhow::Result<String> {
    let printed = command(binary, &["token", "create", "--account", "1", "--user", "1"], data).await?;
    printed.split_whitespace().find(|w| w.starts_with("sl_")).map(str::to_owned).context("no token printed")
}

struct Start {
    port_ms: f64,
    first_redirect_ms: f64,
    notes_ms: f64,
    rss_mib: f64,
    rss_notes_mib: f64,
}

/// Starts a server, times its port and its first redirect, reads its RSS, and stops it.
async fn start(launch: Launch, code: &str, token: &str) -> anyhow::Result<Start> {
    let started = Instant::now();
    let mut server = spawn(launch).await?;
    let port_ms = started.elapsed().as_secs_f64() * 1000.0;
    let browser = [("user-agent", super::AGENT), ("accept", "text/html")];
    let status = status_of(&server.addr, &format!("/{code}"), &browser).await?;
    let first_redirect_ms = started.elapsed().as_secs_f64() * 1000.0;
    if status != 302 {
        bail!("the first redirect answered {status}");
    }
    let rss_at_redirect = server.child.id().and_then(rss_mib).unwrap_or(0.0);
    let auth = format!("Bearer {token}");
    let deadline = Instant::now() + Duration::from_secs(120);
    while status_of(&server.addr, "/api/v4/contacts/notes?limit=1", &[("authorization", &auth)]).await? != 200 {
        if Instant::now() > deadline {
            bail!("no notes listed in two minutes");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let notes_ms = started.elapsed().as_secs_f64() * 1000.0;
    let rss_notes_mib = server.child.id().and_then(rss_mib).unwrap_or(0.0);
    stop(&mut server).await?;
    eprintln!(
        "  start: port {port_ms:.0} ms, first redirect {first_redirect_ms:.0} ms, notes {notes_ms:.0} ms, \
         RSS {rss_at_redirect:.0} then {rss_notes_mib:.0} MiB"
    );
    Ok(Start { port_ms, first_redirect_ms, notes_ms, rss_mib: rss_at_redirect, rss_notes_mib })
}

/// Writes `n` links and `n` notes, made `age` ago, with the store's upkeep after every
/// million notes as a server's every minute, and flushes: the checkpoints cover them. The
/// visit ledger is swept of marks older than its window, as a server's dispatcher does
/// every ten minutes. Returns the first link's code.
async fn write(dir: &Path, n: usize, age: Duration) -> anyhow::Result<String> {
    use std::os::unix::fs::PermissionsExt;
    // As `shortlinks` makes it: the server refuses a directory others can read.
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let store = SledStore::open(dir)?;
    let mut rng = Rng::new(shortlinks_benches::SEED);
    let rules = VisitRules { window_ms: 24 * 3600 * 1000, notes_per_link: 0 };
    let now = Timestamp::now();
    let window = Duration::from_millis(rules.window_ms);
    let made_at = Timestamp(now.0 - age.as_millis() as u64);
    let mut first = None;
    let mut made = 0;
    while made < n {
        let links = links_after(&mut rng, made, BATCH.min(n - made), made_at);
        first.get_or_insert_with(|| links[0].code.to_string());
        let claims = links.iter().enumerate().map(|(i, link)| claim(made + i, link)).collect();
        let notes = links.iter().enumerate().map(|(i, link)| note(made + i, link)).collect();
        store.insert_links(links).await?;
        store.claim_visits(claims, rules).await?;
        store.append_notes(notes).await?;
        made += BATCH.min(n - made);
        if made % UPKEEP_EVERY == 0 {
            store.maintain(Duration::from_secs(24 * 3600)).await?;
        }
    }
    store.forget_visits(Timestamp(now.0 - window.as_millis() as u64)).await?;
    store.flush().await?;
    first.context("no links")
}

/// Adds 32 MiB of links (after the first `n`), without a flush: the checkpoint does not
/// cover them, as after a kill -9 at worst.
async fn grow(dir: &Path, n: usize) -> anyhow::Result<()> {
    let store = SledStore::open(dir)?;
    let mut rng = Rng::new(shortlinks_benches::SEED ^ 1);
    let grown = std::fs::metadata(dir.join("links.log"))?.len() + BEHIND_BYTES;
    let mut made = n;
    while std::fs::metadata(dir.join("links.log"))?.len() < grown {
        store.insert_links(links_after(&mut rng, made, BATCH, Timestamp::now())).await?;
        made += BATCH;
    }
    // The notes are read on a thread that holds the directory until it is done.
    let query = shortlinks_core::store::NotesQuery {
        account: AccountId(1),
        entity_type: shortlinks_core::EntityType::Contacts,
        entity_ids: None,
        offset: 0,
        limit: 1,
    };
    store.list_notes(query).await?;
    Ok(())
}

fn claim(i: usize, link: &Link) -> VisitClaim {
    let key = |tag: u8| {
        let mut key = [tag; 16];
        key[..8].copy_from_slice(&(i as u64).to_be_bytes());
        key
    };
    VisitClaim { link: key(0), key: key(1), at: link.created_at, note_id: i as u64 + 1 }
}

fn note(i: usize, link: &Link) -> Note {
    Note {
        id: i as u64 + 1,
        account: link.account,
        entity: link.entity,
        created_by: link.created_by,
        created_at: link.created_at,
        body: NoteBody::LinkFollowed { url: link.target.clone() },
    }
}

fn mib(path: &Path) -> f64 {
    std::fs::metadata(path).map_or(0.0, |m| m.len() as f64 / 1048576.0)
}
