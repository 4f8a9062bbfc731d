//! The load harness: shortlinks (sled, click pipeline on) side by side with the bare
//! reference server, under wrk, on loopback only.
//!
//! Run it with `benches/load/run` (which builds both in release mode first). Options:
//! `--links N` (1000000), `--rounds R` (5), `--seconds S` (10), `--connections 64,256`,
//! `--sample N` (100000 distinct codes for wrk to pick from at random).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use shortlinks_benches::{Rng, SEED};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A browser's agent: these requests are what people send, so they become visits and notes.
const AGENT: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0";

struct Options {
    links: usize,
    rounds: usize,
    seconds: u64,
    connections: Vec<usize>,
    sample: usize,
}

fn options() -> anyhow::Result<Options> {
    let mut o = Options { links: 1_000_000, rounds: 5, seconds: 10, connections: vec![64, 256], sample: 100_000 };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--links" => o.links = value.parse()?,
            "--rounds" => o.rounds = value.parse()?,
            "--seconds" => o.seconds = value.parse()?,
            "--connections" => o.connections = value.split(',').map(str::parse).collect::<Result<_, _>>()?,
            "--sample" => o.sample = value.parse()?,
            other => bail!("unknown option {other}"),
        }
    }
    Ok(o)
}

/// A server process and the address it printed.
struct Server {
    child: Child,
    addr: String,
    token: Option<String>,
}

async fn spawn(mut command: Command) -> anyhow::Result<Server> {
    command.stdout(Stdio::piped()).stderr(Stdio::null()).kill_on_drop(true);
    let mut child = command.spawn().context("starting a server")?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let mut token = None;
    loop {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await??.context("server exited")?;
        if line.trim_start().starts_with("sl_") {
            token = Some(line.trim().to_owned());
        }
        if let Some(rest) = line.strip_prefix("listening on http://") {
            let addr = rest.split_whitespace().next().context("address")?.to_owned();
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return Ok(Server { child, addr, token });
        }
    }
}

async fn post(addr: &str, token: &str, body: Vec<u8>) -> anyhow::Result<serde_json::Value> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let request = Request::post("/api/v4/short_links")
        .header("host", addr)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if status != 200 {
        bail!("create failed: {status} {}", String::from_utf8_lossy(&body));
    }
    Ok(serde_json::from_slice(&body)?)
}

/// Creates `n` links through the API, 4 requests at a time; returns (code, target) pairs.
async fn preload(addr: &str, token: &str, n: usize) -> anyhow::Result<Vec<(String, String)>> {
    let started = Instant::now();
    let mut links = Vec::with_capacity(n);
    let batches: Vec<Vec<usize>> = (0..n).collect::<Vec<_>>().chunks(250).map(<[usize]>::to_vec).collect();
    for group in batches.chunks(4) {
        let mut tasks = Vec::new();
        for batch in group {
            let items: Vec<_> = batch
                .iter()
                .map(|i| {
                    serde_json::json!({"url": format!("https://example.com/landing/{i}?utm_source=crm"),
                    "metadata": {"entity_type": "contacts", "entity_id": i + 1}})
                })
                .collect();
            let (addr, token, body) = (addr.to_owned(), token.to_owned(), serde_json::to_vec(&items)?);
            tasks.push(tokio::spawn(async move { post(&addr, &token, body).await }));
        }
        for (task, batch) in tasks.into_iter().zip(group) {
            let answer = task.await??;
            for (link, i) in answer["_embedded"]["short_links"].as_array().context("links")?.iter().zip(batch) {
                let url = link["url"].as_str().context("url")?;
                let code = url.rsplit('/').next().context("code")?.to_owned();
                links.push((code, format!("https://example.com/landing/{i}?utm_source=crm")));
            }
        }
    }
    eprintln!("preloaded {n} links in {:.1} s", started.elapsed().as_secs_f64());
    Ok(links)
}

#[derive(Clone, Copy, Debug)]
struct Run {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// wrk's latency figures come as `1.23ms`, `456.00us` or `1.02s`.
fn millis(text: &str) -> Option<f64> {
    let (number, unit) = text.find(|c: char| c.is_ascii_alphabetic()).map(|i| text.split_at(i))?;
    let value: f64 = number.parse().ok()?;
    Some(match unit {
        "us" => value / 1000.0,
        "ms" => value,
        "s" => value * 1000.0,
        _ => return None,
    })
}

async fn wrk(addr: &str, script: &Path, connections: usize, seconds: u64) -> anyhow::Result<Run> {
    let output = tokio::time::timeout(
        Duration::from_secs(seconds + 30),
        Command::new("wrk")
            .args(["-t2", &format!("-c{connections}"), &format!("-d{seconds}s"), "--latency", "-H"])
            .arg(format!("User-Agent: {AGENT}"))
            .arg("-s")
            .arg(script)
            .arg(format!("http://{addr}"))
            .output(),
    )
    .await
    .context("wrk did not finish in time")??;
    let text = String::from_utf8_lossy(&output.stdout);
    let field = |prefix: &str| text.lines().find_map(|l| l.trim().strip_prefix(prefix).map(|r| r.trim().to_owned()));
    let rps = field("Requests/sec:").context("no Requests/sec")?.parse()?;
    let p50 = field("50%").and_then(|v| millis(&v)).context("no p50")?;
    let p99 = field("99%").and_then(|v| millis(&v)).context("no p99")?;
    if text.contains("Non-2xx or 3xx responses") {
        bail!("errors in the run:\n{text}");
    }
    Ok(Run { rps, p50_ms: p50, p99_ms: p99 })
}

fn median(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    (values[values.len() / 2], values[0], values[values.len() - 1])
}

fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 =
        status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb / 1024.0)
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let o = options()?;
    let release = std::env::current_exe()?.parent().context("target dir")?.to_path_buf();
    let work = tempfile::tempdir()?;
    let data: PathBuf = work.path().join("data");

    let mut shortlinks = Command::new(release.join("shortlinks"));
    shortlinks.args(["serve", "--listen", "127.0.0.1:0", "--public-url", "https://sho.rt", "--data-dir"]).arg(&data);
    let mut ours = spawn(shortlinks).await?;
    let token = ours.token.clone().context("no first token printed")?;
    let links = preload(&ours.addr, &token, o.links).await?;
    let disk = dir_bytes(&data);

    let links_file = work.path().join("links.txt");
    std::fs::write(&links_file, links.iter().map(|(c, t)| format!("{c} {t}\n")).collect::<String>())?;
    let mut reference = Command::new(release.join("reference-server"));
    reference.arg(&links_file);
    let mut theirs = spawn(reference).await?;

    // wrk picks among many existing codes at random: no single hot key.
    let mut rng = Rng::new(SEED);
    let sample: Vec<&str> = (0..o.sample.min(links.len())).map(|_| links[rng.below(links.len())].0.as_str()).collect();
    let codes_file = work.path().join("codes.txt");
    std::fs::write(&codes_file, sample.join("\n"))?;
    let script = work.path().join("random.lua");
    std::fs::write(
        &script,
        format!(
            "local paths = {{}}\nfor line in io.lines(\"{}\") do paths[#paths + 1] = \"/\" .. line end\n\
             local counter = 0\nfunction setup(thread) counter = counter + 1; thread:set(\"id\", counter) end\n\
             function init(args) math.randomseed({SEED} + id) end\n\
             function request() return wrk.format(\"GET\", paths[math.random(#paths)]) end\n",
            codes_file.display()
        ),
    )?;

    println!("links: {}, rounds: {}, {} s each, sample of {} codes", o.links, o.rounds, o.seconds, sample.len());
    println!(
        "disk per link on sled: {:.0} bytes ({:.1} MiB in all)",
        disk as f64 / o.links as f64,
        disk as f64 / 1048576.0
    );
    if let Some(id) = ours.child.id() {
        println!("shortlinks RSS after preload: {:.0} MiB", rss_mib(id).unwrap_or(0.0));
    }
    // Warm both up first (the reference is warm by construction; shortlinks fills its cache).
    for addr in [&ours.addr, &theirs.addr] {
        wrk(addr, &script, 64, o.seconds.min(5)).await?;
    }
    for &connections in &o.connections {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for round in 0..o.rounds {
            // Interleaved, alternating who goes first, so drift hits both alike.
            let order: [(&str, bool); 2] = if round % 2 == 0 {
                [("shortlinks", true), ("reference", false)]
            } else {
                [("reference", false), ("shortlinks", true)]
            };
            for (name, is_ours) in order {
                let addr = if is_ours { &ours.addr } else { &theirs.addr };
                let run = wrk(addr, &script, connections, o.seconds).await?;
                eprintln!(
                    "  c={connections} round {} {name:<10} {:>9.0} req/s  p50 {:.2} ms  p99 {:.2} ms",
                    round + 1,
                    run.rps,
                    run.p50_ms,
                    run.p99_ms
                );
                if is_ours {
                    a.push(run)
                } else {
                    b.push(run)
                }
            }
        }
        let stats = |runs: &[Run], f: fn(&Run) -> f64| median(runs.iter().map(f).collect());
        println!("\n{connections} connections (median [min, max] of {} runs):", o.rounds);
        for (name, runs) in [("shortlinks", &a), ("reference", &b)] {
            let (rps, rps_min, rps_max) = stats(runs, |r| r.rps);
            let (p50, p50_min, p50_max) = stats(runs, |r| r.p50_ms);
            let (p99, p99_min, p99_max) = stats(runs, |r| r.p99_ms);
            println!("  {name:<10} {rps:>9.0} req/s [{rps_min:.0}, {rps_max:.0}]  p50 {p50:.2} ms [{p50_min:.2}, {p50_max:.2}]  p99 {p99:.2} ms [{p99_min:.2}, {p99_max:.2}]");
        }
        let ratio_rps = stats(&a, |r| r.rps).0 / stats(&b, |r| r.rps).0;
        let ratio_p99 = stats(&a, |r| r.p99_ms).0 / stats(&b, |r| r.p99_ms).0;
        println!("  shortlinks / reference: throughput {ratio_rps:.2}x, p99 {ratio_p99:.2}x");
    }
    if let Some(id) = ours.child.id() {
        println!("\nshortlinks RSS after the runs: {:.0} MiB", rss_mib(id).unwrap_or(0.0));
    }
    for server in [&mut ours, &mut theirs] {
        if let Some(id) = server.child.id() {
            let _ = std::process::Command::new("kill").args(["-TERM", &id.to_string()]).status();
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), server.child.wait()).await;
    }
    Ok(())
}
