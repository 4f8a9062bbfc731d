//! The load harness: shortlinks (click pipeline on) side by side with the bare reference
//! server, under wrk, on loopback only.
//!
//! Run it with `benches/load/run` (which builds both in release mode first); its options
//! are in `USAGE` (`benches/load/run --help`).

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use shortlinks_benches::{Rng, SEED};
use shortlinks_redis::testing::{cli, RedisServer};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

mod amocrm_accounts;
mod amocrm_drain;
mod backlog;
mod compaction;
mod restart;

/// A browser's agent: these requests are what people send, so they become visits and notes.
const AGENT: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0";

/// What a browser sends with a navigation, beside its agent.
const ACCEPT: &str = "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
const ACCEPT_LANGUAGE: &str = "Accept-Language: en-US,en;q=0.5";

/// wrk's `request()` for the repeat scenario: a random code, the command line's headers.
const REPEAT_REQUEST: &str = "function request() return wrk.format(\"GET\", paths[math.random(#paths)]) end\n";

/// wrk's `request()` for the campaign and cold scenarios: a random code from an address no request had
/// before (the run, the wrk thread and the request's number make an IPv6 address). A
/// headers table replaces the command line's, so the agent is passed on here.
const NEW_VISITOR_REQUEST: &str = "function request()\n\
    n = n + 1\n\
    local from = string.format(\"fd00:%x:%x::%x:%x\", run, id, math.floor(n / 65536), n % 65536)\n\
    return wrk.format(\"GET\", paths[math.random(#paths)], {[\"User-Agent\"] = wrk.headers[\"User-Agent\"], [\"Accept\"] = wrk.headers[\"Accept\"], [\"Accept-Language\"] = wrk.headers[\"Accept-Language\"], [\"X-Forwarded-For\"] = from})\n\
    end\n";

const USAGE: &str = "\
usage: benches/load/run [OPTIONS]

shortlinks (click pipeline on, group durability) side by side with a bare hyper server,
under wrk on 127.0.0.1, rounds interleaved. Prints req/s, p50/p99, the server's CPU
time per request (user and kernel, from /proc), on Redis its redis-server's (with the
append-only file's rewrites), and wrk's own (context for slow rounds), as medians
[min, max], and each server's ratio to the reference. After each run it waits
until shortlinks has settled every click it recorded (screened out or dispatched; the
backlog printed is what was left when wrk stopped, also as milliseconds of clicks), and
that time's CPU counts in the run. Codes are drawn at random from all the links.

Scenarios, in this order:
  cold       every server restarted, then its first run (first visits, an empty link
             cache), at the first connection count; its start-up time is printed
  repeat     one agent from one address: after the warm-up nearly every click repeats
             a visit, and is settled before the outbox
  campaign   every request from an address of its own (X-Forwarded-For, which the
             servers trust), so every click is a first visit and a note

  --scenarios LIST     cold, repeat and/or campaign (all three)
  --links N            links preloaded into each server (1000000)
  --rounds R           rounds per scenario and connection count (5)
  --seconds S          seconds per run (10)
  --connections LIST   wrk connection counts (64,256)
  --sample N           draw codes from N links picked at random (0: all the links)
  --storage LIST       sled, redis and/or redis-acked (sled); redis starts its own
                       redis-server, redis-acked a primary and a replica, with every
                       durable write waiting for the replica (redis_replicas_ack = 1)
  --baseline PATH      another shortlinks binary, run in the same rounds on the first
                       storage of --storage
  --production-rules   keep the note hold (60 s) and the address rule (3 contacts a
                       minute) on: the repeat visitor is then a gateway, and each
                       run's clicks are released together a hold later, during settling
  --amocrm-drain       instead: 10000 visits on 10000 contacts drained into an amoCRM
                       stand-in at the default pacing, with redirects measured during
                       the drain against a server without the sink (see amocrm_drain.rs)
  --amocrm-accounts    instead: 20 accounts x 1000 notes drained at once, each into its
                       own amoCRM stand-in, against one account's 1000 alone
                       (see amocrm_accounts.rs)
  --backlog N          instead: a node on Redis restarts with N held clicks due at once
                       and drains them while wrk's campaign goes on (see backlog.rs)
  --compaction         instead: a node on sled, the repeat visitor's runs with and
                       without compactions going on back to back, in turns
                       (see compaction.rs)
  --restart            instead: a node on sled started again and again on --links
                       links with as many notes, timed to its port and its first
                       redirect, with and without the links' checkpoint (see restart.rs)
  --clicks-age-hours H with --restart: the links, clicks and notes made H hours before the
                       starts, and the visit ledger swept as a server sweeps it (0)";

/// What the clicks of a run are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    Cold,
    Repeat,
    Campaign,
}

impl Scenario {
    fn parse(name: &str) -> anyhow::Result<Self> {
        Ok(match name {
            "cold" => Self::Cold,
            "repeat" => Self::Repeat,
            "campaign" => Self::Campaign,
            other => bail!("--scenarios takes cold, repeat and/or campaign, not {other:?}"),
        })
    }
}

struct Options {
    links: usize,
    rounds: usize,
    seconds: u64,
    connections: Vec<usize>,
    sample: usize,
    storages: Vec<String>,
    baseline: Option<std::path::PathBuf>,
    scenarios: Vec<Scenario>,
    /// The amoCRM drain scenario instead of the side-by-side runs.
    amocrm_drain: bool,
    amocrm_accounts: bool,
    /// The note hold and the address rule as a production server has them.
    production_rules: bool,
    /// The backlog scenario instead: this many clicks held, then drained.
    backlog: u64,
    /// The compaction scenario instead.
    compaction: bool,
    restart: bool,
    /// With `restart`: how long ago the campaign was.
    clicks_age_hours: u64,
}

fn options() -> anyhow::Result<Options> {
    let mut o = Options {
        links: 1_000_000,
        rounds: 5,
        seconds: 10,
        connections: vec![64, 256],
        sample: 0,
        storages: vec!["sled".into()],
        baseline: None,
        scenarios: vec![Scenario::Cold, Scenario::Repeat, Scenario::Campaign],
        amocrm_drain: false,
        amocrm_accounts: false,
        production_rules: false,
        backlog: 0,
        compaction: false,
        restart: false,
        clicks_age_hours: 0,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if matches!(flag.as_str(), "--help" | "-h") {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let mut value = || args.next().with_context(|| format!("{flag} needs a value (see --help)"));
        match flag.as_str() {
            "--links" => o.links = value()?.parse()?,
            "--rounds" => o.rounds = value()?.parse()?,
            "--seconds" => o.seconds = value()?.parse()?,
            "--connections" => o.connections = value()?.split(',').map(str::parse).collect::<Result<_, _>>()?,
            "--sample" => o.sample = value()?.parse()?,
            "--storage" => o.storages = value()?.split(',').map(str::to_owned).collect(),
            "--baseline" => o.baseline = Some(value()?.into()),
            "--amocrm-drain" => o.amocrm_drain = true,
            "--amocrm-accounts" => o.amocrm_accounts = true,
            "--production-rules" => o.production_rules = true,
            "--backlog" => o.backlog = value()?.parse()?,
            "--compaction" => o.compaction = true,
            "--restart" => o.restart = true,
            "--clicks-age-hours" => o.clicks_age_hours = value()?.parse()?,
            "--scenarios" => o.scenarios = value()?.split(',').map(Scenario::parse).collect::<Result<_, _>>()?,
            other => bail!("unknown option {other} (see --help)"),
        }
    }
    if let Some(baseline) = o.baseline.as_ref().filter(|b| !b.is_file()) {
        bail!(
            "--baseline {} is not a file (build one with `cargo build --release` in another checkout)",
            baseline.display()
        );
    }
    if let Some(bad) = o.storages.iter().find(|s| !matches!(s.as_str(), "sled" | "redis" | "redis-acked")) {
        bail!("--storage takes sled, redis and/or redis-acked, not {bad:?}");
    }
    Ok(o)
}

/// How a server was started, so that it can be started again on its data.
struct Launch {
    program: std::path::PathBuf,
    args: Vec<std::ffi::OsString>,
    envs: Vec<(String, String)>,
}

impl Launch {
    fn command(&self) -> Command {
        let mut command = Command::new(&self.program);
        command.args(&self.args).envs(self.envs.iter().map(|(k, v)| (k, v)));
        command
    }
}

/// A server process and the address it printed.
struct Server {
    child: Child,
    launch: Launch,
    addr: String,
    token: Option<String>,
    /// Its codes, by link position, when they differ from the first server's.
    codes: Option<Vec<String>>,
}

async fn spawn(launch: Launch) -> anyhow::Result<Server> {
    let mut command = launch.command();
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
            return Ok(Server { child, launch, addr, token, codes: None });
        }
    }
}

/// Stops a server (as an operator would, SIGTERM) and waits for it to exit.
async fn stop(server: &mut Server) -> anyhow::Result<()> {
    if let Some(id) = server.child.id() {
        std::process::Command::new("kill").args(["-TERM", &id.to_string()]).status()?;
    }
    tokio::time::timeout(Duration::from_secs(60), server.child.wait()).await.context("the server did not stop")??;
    Ok(())
}

/// Starts a server again on the same data, on a new port; returns how long it took to
/// answer on its port.
async fn restart(server: &mut Server) -> anyhow::Result<Duration> {
    stop(server).await?;
    let launch = Launch {
        program: server.launch.program.clone(),
        args: server.launch.args.clone(),
        envs: server.launch.envs.clone(),
    };
    let started = Instant::now();
    let again = spawn(launch).await?;
    let took = started.elapsed();
    let codes = server.codes.take();
    *server = Server { codes, ..again };
    Ok(took)
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
    /// The server's CPU time (user and kernel, all its threads) per request answered: less
    /// swayed than req/s by what else the shared machine runs.
    cpu_us: f64,
    /// wrk's own CPU time per request: context for a slow round. It rises when the
    /// shared machine runs slow, and also when responses come slower (fewer per wake-up),
    /// so it hints at the cause without settling it.
    wrk_cpu_us: f64,
    /// For a contender on Redis, its `redis-server`'s CPU time per request (main thread
    /// and forked children, such as the append-only file's rewrites), read around the run
    /// and its settling: the share of the machine the node's store took.
    redis_cpu_us: Option<f64>,
    /// Clicks shortlinks had recorded but not yet settled when wrk stopped (none for the
    /// reference): shows whether the pipeline kept up or left work for after the run.
    backlog: u64,
    /// The slowest of the `/healthz` answers asked for ten times a second from wrk's start
    /// until the backlog was settled: whether the node stayed responsive throughout.
    health_ms: f64,
}

impl Run {
    /// The backlog as milliseconds of the run's clicks: "notes keep pace" when it stays
    /// within a commit window or so, whatever the rate.
    fn backlog_ms(&self) -> f64 {
        self.backlog as f64 * 1000.0 / self.rps.max(1.0)
    }
}

/// The status of one `GET path` with these headers, on a new connection.
async fn status_of(addr: &str, path: &str, headers: &[(&str, &str)]) -> anyhow::Result<u16> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut request = Request::get(path).header("host", addr);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = sender.send_request(request.body(Full::new(Bytes::new()))?).await?;
    Ok(response.status().as_u16())
}

/// Runs an operator command on a data directory (through its node's admin socket when
/// one runs); what it printed.
async fn command(binary: &Path, args: &[&str], data: &Path) -> anyhow::Result<String> {
    let out =
        Command::new(binary).args(args).arg("--data-dir").arg(data).output().await.context("an operator command")?;
    if !out.status.success() {
        bail!("shortlinks {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The server's pipeline counters (`/metrics`), by name; `None` for a server without them
/// (the reference).
async fn counters(addr: &str) -> anyhow::Result<Option<std::collections::HashMap<String, u64>>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let request = Request::get("/metrics").header("host", addr).body(Full::new(Bytes::new()))?;
    let response = sender.send_request(request).await?;
    if response.status() != 200 {
        return Ok(None);
    }
    let body = response.into_body().collect().await?.to_bytes();
    let text = String::from_utf8_lossy(&body);
    let parsed = text.lines().filter(|l| !l.starts_with('#')).filter_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        Some((name.to_owned(), value.parse().ok()?))
    });
    Ok(Some(parsed.collect()))
}

/// Recorded clicks the pipeline has not settled yet; `None` for the reference.
async fn pipeline_backlog(addr: &str) -> anyhow::Result<Option<u64>> {
    let Some(counters) = counters(addr).await? else { return Ok(None) };
    let counter = |name: &str| counters.get(name).copied().context(format!("no {name}"));
    let recorded = counter("shortlinks_clicks_recorded_total")?;
    let dispatched = counter("shortlinks_clicks_dispatched_total")?;
    // Settled by the writer's screen, never written (absent in builds before it).
    let screened = counter("shortlinks_clicks_screened_total").unwrap_or(0);
    Ok(Some(recorded.saturating_sub(screened).saturating_sub(dispatched)))
}

/// Waits until the server's pipeline has settled every click it recorded (bounded), so
/// that no run's clicks are handled, and paid for, in the next run. Returns the backlog it
/// found first.
async fn settle(addr: &str) -> anyhow::Result<u64> {
    let first = pipeline_backlog(addr).await?.unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut backlog = first;
    while backlog > 0 {
        if Instant::now() > deadline {
            bail!("the pipeline still had {backlog} clicks to settle after 120 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        backlog = pipeline_backlog(addr).await?.unwrap_or(0);
    }
    Ok(first)
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

/// What a process has spent of the CPU so far, in seconds (user and kernel, all threads).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces: utime and
    // stime are the 14th and 15th fields of the line, the 12th and 13th after `)`.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let ticks: f64 = fields.next()?.parse::<f64>().ok()? + fields.next()?.parse::<f64>().ok()?;
    Some(ticks / clock_ticks_per_second())
}

/// The unit of `/proc/PID/stat`'s times: `getconf CLK_TCK`, 100 on Linux unless told otherwise.
fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// wrk runs started so far.
static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// What one wrk run printed.
struct WrkFigures {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    requests: f64,
    /// wrk's own CPU time, in seconds.
    cpu: f64,
}

/// One wrk run against `addr`, as is: every answer must be a redirect.
async fn run_wrk(
    addr: &str,
    script: &Path,
    connections: usize,
    seconds: u64,
    agent: &str,
) -> anyhow::Result<WrkFigures> {
    run_wrk_until(addr, script, connections, seconds, agent, std::future::pending()).await
}

/// A wrk run that ends after `seconds`, or as soon as `until` is ready (wrk, interrupted,
/// prints its figures so far).
async fn run_wrk_until(
    addr: &str,
    script: &Path,
    connections: usize,
    seconds: u64,
    agent: &str,
    until: impl std::future::Future<Output = ()>,
) -> anyhow::Result<WrkFigures> {
    // Under bash's `time`, which reports wrk's own CPU time on stderr; in a process group of
    // its own, so that an interruption reaches wrk.
    let child = Command::new("bash")
        .args(["-c", "TIMEFORMAT='%3U %3S'; time wrk \"$@\"", "wrk"])
        .args(["-t2", &format!("-c{connections}"), &format!("-d{seconds}s"), "--latency", "-H"])
        .arg(format!("User-Agent: {agent}"))
        // A browser's navigation headers, so that its clicks are visits.
        .args(["-H", ACCEPT, "-H", ACCEPT_LANGUAGE])
        .arg("-s")
        .arg(script)
        .arg(format!("http://{addr}"))
        // The script's argument: a number of its own for each run, so that the campaign
        // never sends an address twice.
        .arg("--")
        .arg(RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed).to_string())
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let group = child.id().context("wrk's shell")?;
    let output = tokio::time::timeout(Duration::from_secs(seconds + 30), child.wait_with_output());
    tokio::pin!(output);
    let output = tokio::select! {
        output = &mut output => output,
        () = until => {
            std::process::Command::new("kill").args(["-INT", "--", &format!("-{group}")]).status()?;
            output.await
        }
    }
    .context("wrk did not finish in time")??;
    let text = String::from_utf8_lossy(&output.stdout);
    if text.contains("Non-2xx or 3xx responses") {
        bail!("errors in the run:\n{text}");
    }
    let field = |prefix: &str| text.lines().find_map(|l| l.trim().strip_prefix(prefix).map(|r| r.trim().to_owned()));
    // `1234567 requests in 10.00s, 123.45MB read`
    let requests: f64 = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in ").and_then(|(n, _)| n.parse().ok()))
        .context("no request count")?;
    let cpu: f64 = String::from_utf8_lossy(&output.stderr)
        .lines()
        .last()
        .and_then(|l| l.split_whitespace().map(str::parse::<f64>).sum::<Result<f64, _>>().ok())
        .context("no CPU time from `time wrk`")?;
    Ok(WrkFigures {
        rps: field("Requests/sec:").context("no Requests/sec")?.parse()?,
        p50_ms: field("50%").and_then(|v| millis(&v)).context("no p50")?,
        p99_ms: field("99%").and_then(|v| millis(&v)).context("no p99")?,
        requests,
        cpu,
    })
}

/// One wrk run against `server`, with the server's CPU time read around it.
async fn wrk(server: &Server, script: &Path, connections: usize, seconds: u64, agent: &str) -> anyhow::Result<Run> {
    let pid = server.child.id().context("the server has exited")?;
    let cpu_before = cpu_seconds(pid).context("cannot read the server's CPU time")?;
    let addr = &server.addr;
    let (stop_probe, probe_stopped) = tokio::sync::watch::channel(false);
    let probe = tokio::spawn(slowest_health(addr.clone(), probe_stopped));
    let figures = run_wrk(addr, script, connections, seconds, agent).await?;
    // The CPU time counts until the pipeline has handled this run's clicks: work left for
    // later is still this run's work.
    let backlog = settle(addr).await?;
    let cpu = cpu_seconds(pid).context("cannot read the server's CPU time")? - cpu_before;
    stop_probe.send(true)?;
    let health_ms = probe.await??.as_secs_f64() * 1000.0;
    let per_request = |seconds: f64| seconds * 1e6 / figures.requests.max(1.0);
    Ok(Run {
        rps: figures.rps,
        p50_ms: figures.p50_ms,
        p99_ms: figures.p99_ms,
        cpu_us: per_request(cpu),
        wrk_cpu_us: per_request(figures.cpu),
        redis_cpu_us: None,
        backlog,
        health_ms,
    })
}

/// Asks `addr` for `/healthz` ten times a second, each on a new connection, until
/// `stop`; returns the slowest answer (an unanswered one counts as 10 s and ends it).
async fn slowest_health(addr: String, mut stop: tokio::sync::watch::Receiver<bool>) -> anyhow::Result<Duration> {
    let mut slowest = Duration::ZERO;
    while !*stop.borrow() {
        let asked = Instant::now();
        let answer = tokio::time::timeout(Duration::from_secs(10), async {
            let stream = tokio::net::TcpStream::connect(&addr).await?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            let request = Request::get("/healthz").header("host", &addr).body(Full::new(Bytes::new()))?;
            sender.send_request(request).await?.into_body().collect().await?;
            anyhow::Ok(())
        })
        .await;
        slowest = slowest.max(asked.elapsed());
        if !matches!(answer, Ok(Ok(()))) {
            return Ok(slowest.max(Duration::from_secs(10)));
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = stop.changed() => {}
        }
    }
    Ok(slowest)
}

/// A `redis-server`'s CPU seconds so far: all its threads, and its forked children
/// (the append-only file's rewrites) once they have exited.
fn redis_cpu_seconds(port: u16) -> Option<f64> {
    let info = cli(port, &["info", "cpu"])?;
    let field = |name: &str| -> Option<f64> {
        info.lines().find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':')?.parse().ok())
    };
    Some(
        field("used_cpu_user")?
            + field("used_cpu_sys")?
            + field("used_cpu_user_children")?
            + field("used_cpu_sys_children")?,
    )
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

/// One shortlinks server under test, on one storage engine.
struct Contender {
    name: String,
    server: Server,
    /// The `redis-server` of a Redis contender: kept alive, and asked for its CPU time.
    redis: Option<RedisServer>,
    /// And its replica, for `redis-acked`.
    _replica: Option<RedisServer>,
}

/// Starts the `shortlinks` binary `binary` on `storage`, preloads `n` links, and reports
/// what they take.
async fn shortlinks_on(
    name: &str,
    binary: &Path,
    storage: &str,
    work: &Path,
    n: usize,
    env: &[(&str, &str)],
) -> anyhow::Result<(Contender, Vec<(String, String)>)> {
    let data = work.join(format!("data-{name}"));
    let mut args: Vec<std::ffi::OsString> =
        ["serve", "--listen", "127.0.0.1:0", "--public-url", "https://sho.rt", "--data-dir"].map(Into::into).into();
    args.push(data.clone().into());
    // As behind a proxy, for the campaign: each request's own address makes it a visitor
    // of its own. Requests without the header (the repeat scenario) come from the peer.
    args.extend(["--client-ip-header", "X-Forwarded-For"].map(Into::into));
    let mut envs: Vec<(String, String)> = vec![
        // The preload makes thousands of API requests at once; an API rate limit is not
        // what this measures. (Environment variables: a baseline build without one of these
        // settings ignores it.)
        ("SHORTLINKS_API_RATE_PER_SEC".into(), "1000000".into()),
        ("SHORTLINKS_API_RATE_BURST".into(), "1000000".into()),
        // No hold before notes and no address rule: the runs measure how fast clicks
        // become notes, and wrk's repeat visitor is one address on every contact's link.
        ("SHORTLINKS_NOTE_HOLD_SECS".into(), "0".into()),
        ("SHORTLINKS_ADDRESS_RULE_CONTACTS".into(), "0".into()),
        // Every campaign visit is to make a note, however often wrk draws one link.
        ("SHORTLINKS_NOTES_PER_LINK".into(), "0".into()),
    ];
    envs.extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    let (redis, _replica) = match storage {
        "redis" => {
            let redis = RedisServer::standalone().map_err(|e| anyhow::anyhow!("{e}"))?;
            args.extend(["--storage".into(), "redis".into(), "--redis-url".into(), redis.url().into()]);
            (Some(redis), None)
        }
        "redis-acked" => {
            // A primary and one replica; every durable write waits for the replica.
            let redis = RedisServer::standalone().map_err(|e| anyhow::anyhow!("{e}"))?;
            let port = redis.port().to_string();
            let replica = RedisServer::standalone_with(&["--replicaof", "127.0.0.1", &port])
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let deadline = Instant::now() + Duration::from_secs(30);
            while !cli(replica.port(), &["info", "replication"]).is_some_and(|i| i.contains("master_link_status:up")) {
                if Instant::now() > deadline {
                    bail!("the replica did not catch up");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let url = redis.url();
            args.extend(
                ["--storage", "redis", "--redis-url", url.as_str(), "--redis-replicas-ack", "1"].map(Into::into),
            );
            (Some(redis), Some(replica))
        }
        _ => (None, None),
    };
    if redis.is_some() {
        // As operations.md advises for a node on Redis: a cache of four times the links
        // clicked. At twice (the default, for a million links) about 4 in 100 links find
        // no slot, and each of their clicks is a round trip that waits behind the notes'
        // work on a busy Redis.
        let slots = n.saturating_mul(4).clamp(2_000_000, 50_000_000);
        envs.push(("SHORTLINKS_CACHED_LINKS".into(), slots.to_string()));
    }
    let server = spawn(Launch { program: binary.to_owned(), args, envs }).await?;
    // Printed on a terminal, else (here) written to the data directory.
    let token = server.token.clone().or_else(|| {
        std::fs::read_to_string(data.join(shortlinks_server::data_dir::FIRST_TOKEN_FILE))
            .ok()
            .map(|t| t.trim().to_owned())
    });
    let token = token.context("no first token, printed or in the data directory")?;
    let links = preload(&server.addr, &token, n).await?;
    match &redis {
        Some(redis) => {
            let info = cli(redis.port(), &["info", "memory"]).unwrap_or_default();
            let used: f64 = info
                .lines()
                .find_map(|l| l.strip_prefix("used_memory:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0.0);
            let keys = cli(redis.port(), &["dbsize"]).unwrap_or_default();
            println!(
                "redis memory per link: {:.0} bytes ({:.1} MiB in all, {} keys)",
                used / n as f64,
                used / 1048576.0,
                keys.trim()
            );
            // The preload grows the append-only file by the whole data set, which starts its
            // rewrite (a forked copy of the data set, a core's work for seconds) a little
            // later, in the first round: rewritten now, it is not charged to that round.
            // The runs' own growth still starts rewrites during them, as in production.
            let waited = Instant::now();
            let _ = cli(redis.port(), &["bgrewriteaof"]);
            while cli(redis.port(), &["info", "persistence"])
                .is_some_and(|i| i.contains("aof_rewrite_in_progress:1") || i.contains("aof_rewrite_scheduled:1"))
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            println!("redis append-only file rewritten after the preload in {:.1} s", waited.elapsed().as_secs_f64());
        }
        None => {
            let disk = dir_bytes(&data);
            println!(
                "sled disk per link: {:.0} bytes ({:.1} MiB in all)",
                disk as f64 / n as f64,
                disk as f64 / 1048576.0
            );
        }
    }
    if let Some(id) = server.child.id() {
        println!("{name} RSS after preload: {:.0} MiB", rss_mib(id).unwrap_or(0.0));
    }
    Ok((Contender { name: name.to_owned(), server, redis, _replica }, links))
}

/// Runs `rounds` rounds of every contender under `script_of`'s script, interleaved and
/// rotating who goes first, at each connection count, and prints the medians and ratios.
/// In the cold scenario every server is started again before its run, so that each run is
/// a first round after a start.
async fn rounds(
    contenders: &mut [Contender],
    scripts: &[Scripts],
    scenario: Scenario,
    connections: &[usize],
    o: &Options,
) -> anyhow::Result<()> {
    let reference = contenders.len() - 1;
    for &connections in connections {
        let mut all: Vec<Vec<Run>> = vec![Vec::new(); contenders.len()];
        let mut startups: Vec<Vec<f64>> = vec![Vec::new(); contenders.len()];
        for round in 0..o.rounds {
            for k in 0..contenders.len() {
                let i = (round + k) % contenders.len();
                if scenario == Scenario::Cold {
                    let took = restart(&mut contenders[i].server).await?;
                    startups[i].push(took.as_secs_f64() * 1000.0);
                }
                let script = match scenario {
                    Scenario::Repeat => &scripts[i].repeat,
                    Scenario::Cold | Scenario::Campaign => &scripts[i].campaign,
                };
                let redis_port = contenders[i].redis.as_ref().map(RedisServer::port);
                let redis_before = redis_port.and_then(redis_cpu_seconds);
                let mut run = wrk(&contenders[i].server, script, connections, o.seconds, AGENT).await?;
                if let (Some(port), Some(before)) = (redis_port, redis_before) {
                    let spent = redis_cpu_seconds(port).map(|after| after - before);
                    run.redis_cpu_us = spent.map(|s| s * 1e6 / (run.rps * o.seconds as f64).max(1.0));
                }
                eprintln!(
                    "  {scenario:?} c={connections} round {} {:<17} {:>9.0} req/s  p50 {:.2} ms  p99 {:.2} ms  cpu {:.1} us/req{}  wrk {:.2} us/req  backlog {} ({:.1} ms)  /healthz slowest {:.1} ms",
                    round + 1,
                    contenders[i].name,
                    run.rps,
                    run.p50_ms,
                    run.p99_ms,
                    run.cpu_us,
                    run.redis_cpu_us.map(|r| format!(" (redis {r:.1})")).unwrap_or_default(),
                    run.wrk_cpu_us,
                    run.backlog,
                    run.backlog_ms(),
                    run.health_ms
                );
                all[i].push(run);
            }
        }
        let stats = |runs: &[Run], f: fn(&Run) -> f64| median(runs.iter().map(f).collect());
        println!("\n{scenario:?}, {connections} connections (median [min, max] of {} runs):", o.rounds);
        for (contender, runs) in contenders.iter().zip(&all) {
            let (rps, rps_min, rps_max) = stats(runs, |r| r.rps);
            let (p50, p50_min, p50_max) = stats(runs, |r| r.p50_ms);
            let (p99, p99_min, p99_max) = stats(runs, |r| r.p99_ms);
            let (cpu, cpu_min, cpu_max) = stats(runs, |r| r.cpu_us);
            let redis = match runs.iter().map(|r| r.redis_cpu_us).collect::<Option<Vec<f64>>>() {
                Some(spent) if !spent.is_empty() => {
                    let (r, r_min, r_max) = median(spent);
                    format!("  redis cpu {r:.1} us/req [{r_min:.1}, {r_max:.1}]")
                }
                _ => String::new(),
            };
            let (wrk, wrk_min, wrk_max) = stats(runs, |r| r.wrk_cpu_us);
            let (backlog, _, backlog_max) = stats(runs, Run::backlog_ms);
            let (_, _, health_max) = stats(runs, |r| r.health_ms);
            println!(
                "  {:<17} {rps:>9.0} req/s [{rps_min:.0}, {rps_max:.0}]  p50 {p50:.2} ms [{p50_min:.2}, {p50_max:.2}]  p99 {p99:.2} ms [{p99_min:.2}, {p99_max:.2}]  cpu {cpu:.1} us/req [{cpu_min:.1}, {cpu_max:.1}]{redis}  wrk {wrk:.2} us/req [{wrk_min:.2}, {wrk_max:.2}]  backlog {backlog:.1} ms (max {backlog_max:.1})  /healthz slowest {health_max:.1} ms",
                contender.name
            );
        }
        for (contender, runs) in contenders.iter().zip(&all).take(reference) {
            let ratio_rps = stats(runs, |r| r.rps).0 / stats(&all[reference], |r| r.rps).0;
            let ratio_p99 = stats(runs, |r| r.p99_ms).0 / stats(&all[reference], |r| r.p99_ms).0;
            let worst_p99 = runs.iter().zip(&all[reference]).map(|(r, b)| r.p99_ms / b.p99_ms).fold(0.0, f64::max);
            let ratio_cpu = stats(runs, |r| r.cpu_us).0 / stats(&all[reference], |r| r.cpu_us).0;
            println!(
                "  {} / reference: throughput {ratio_rps:.2}x, p99 {ratio_p99:.2}x (worst round {worst_p99:.2}x), cpu per request {ratio_cpu:.2}x",
                contender.name
            );
        }
        if scenario == Scenario::Cold {
            for (contender, times) in contenders.iter().zip(startups) {
                let (ms, min, max) = median(times);
                println!("  {} start-up to its port answering: {ms:.0} ms [{min:.0}, {max:.0}]", contender.name);
            }
        }
    }
    Ok(())
}

/// A contender's wrk scripts, one per kind of visitor.
struct Scripts {
    repeat: std::path::PathBuf,
    campaign: std::path::PathBuf,
}

/// Writes contender `i`'s scripts, which draw among `codes` at random.
fn scripts_for(work: &Path, i: usize, codes: &[&str]) -> anyhow::Result<Scripts> {
    let codes_file = work.join(format!("codes-{i}.txt"));
    std::fs::write(&codes_file, codes.join("\n"))?;
    let script = |kind: &str, request: &str| -> anyhow::Result<std::path::PathBuf> {
        let script = work.join(format!("{kind}-{i}.lua"));
        std::fs::write(
            &script,
            format!(
                "local paths = {{}}\nfor line in io.lines(\"{}\") do paths[#paths + 1] = \"/\" .. line end\n\
                 local counter = 0\nfunction setup(thread) counter = counter + 1; thread:set(\"id\", counter) end\n\
                 function init(args) math.randomseed({SEED} + id); run = tonumber(args[1]) or 0; n = 0 end\n\
                 {request}",
                codes_file.display(),
            ),
        )?;
        Ok(script)
    };
    Ok(Scripts { repeat: script("repeat", REPEAT_REQUEST)?, campaign: script("campaign", NEW_VISITOR_REQUEST)? })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let o = options()?;
    let release = std::env::current_exe()?.parent().context("target dir")?.to_path_buf();
    let work = tempfile::tempdir()?;
    if o.amocrm_accounts {
        return amocrm_accounts::run(&release, work.path()).await;
    }
    if o.amocrm_drain {
        return amocrm_drain::run(&release, work.path(), o.rounds).await;
    }
    if o.backlog > 0 {
        return backlog::run(&release, work.path(), &o).await;
    }
    if o.compaction {
        return compaction::run(&release, work.path(), &o).await;
    }
    if o.restart {
        return restart::run(&release, work.path(), &o).await;
    }
    println!("links: {}, rounds: {}, {} s each, storage: {}", o.links, o.rounds, o.seconds, o.storages.join(", "));
    if let Some(baseline) = &o.baseline {
        println!("baseline: {}", baseline.display());
    }

    let mut contenders = Vec::new();
    let mut links = Vec::new();
    let mut runs: Vec<(String, std::path::PathBuf, &str)> =
        o.storages.iter().map(|s| (format!("shortlinks-{s}"), release.join("shortlinks"), s.as_str())).collect();
    if let Some(baseline) = &o.baseline {
        let storage = o.storages.first().map_or("sled", String::as_str);
        runs.push((format!("baseline-{storage}"), baseline.clone(), storage));
    }
    for (name, binary, storage) in &runs {
        let production = [("SHORTLINKS_NOTE_HOLD_SECS", "60"), ("SHORTLINKS_ADDRESS_RULE_CONTACTS", "3")];
        let env: &[(&str, &str)] = if o.production_rules { &production } else { &[] };
        let (contender, made) = shortlinks_on(name, binary, storage, work.path(), o.links, env).await?;
        contenders.push(contender);
        // Codes depend on each store's own secret: wrk uses the first server's.
        if links.is_empty() {
            links = made;
        } else {
            // Every contender must serve the same paths: map them by target.
            let by_target: std::collections::HashMap<&str, &str> =
                made.iter().map(|(c, t)| (t.as_str(), c.as_str())).collect();
            let codes: Vec<String> = links.iter().map(|(_, t)| by_target[t.as_str()].to_owned()).collect();
            contenders.last_mut().context("contender")?.server.codes = Some(codes);
        }
    }

    let links_file = work.path().join("links.txt");
    std::fs::write(&links_file, links.iter().map(|(c, t)| format!("{c} {t}\n")).collect::<String>())?;
    let reference =
        Launch { program: release.join("reference-server"), args: vec![links_file.clone().into()], envs: Vec::new() };
    contenders.push(Contender {
        name: "reference".into(),
        server: spawn(reference).await?,
        redis: None,
        _replica: None,
    });

    // wrk draws among the codes at random: no single hot key. The same codes (by position)
    // for every contender.
    let picks: Vec<usize> = match o.sample {
        0 => (0..links.len()).collect(),
        n => {
            let mut rng = Rng::new(SEED);
            (0..n.min(links.len())).map(|_| rng.below(links.len())).collect()
        }
    };
    println!("wrk draws at random from {} codes", picks.len());
    let mut scripts = Vec::new();
    for (i, contender) in contenders.iter().enumerate() {
        let codes: Vec<&str> = match &contender.server.codes {
            Some(codes) => picks.iter().map(|&p| codes[p].as_str()).collect(),
            None => picks.iter().map(|&p| links[p].0.as_str()).collect(),
        };
        scripts.push(scripts_for(work.path(), i, &codes)?);
    }

    if o.scenarios.contains(&Scenario::Cold) {
        rounds(&mut contenders, &scripts, Scenario::Cold, &o.connections[..1], &o).await?;
    }
    if o.scenarios.contains(&Scenario::Repeat) {
        // Warm every server up first (the reference is warm by construction; shortlinks
        // fills its cache), with the repeat visitor, whose first visits become notes
        // before any measured run (`wrk` settles).
        for (contender, scripts) in contenders.iter().zip(&scripts) {
            wrk(&contender.server, &scripts.repeat, 64, o.seconds.min(5), AGENT).await?;
        }
        rounds(&mut contenders, &scripts, Scenario::Repeat, &o.connections, &o).await?;
    }
    if o.scenarios.contains(&Scenario::Campaign) {
        rounds(&mut contenders, &scripts, Scenario::Campaign, &o.connections, &o).await?;
    }
    let reference = contenders.len() - 1;
    for contender in contenders.iter_mut().take(reference) {
        if let Some(id) = contender.server.child.id() {
            println!("{} RSS after the runs: {:.0} MiB", contender.name, rss_mib(id).unwrap_or(0.0));
        }
        // What the clicks became, to show which path the runs took.
        if let Some(c) = counters(&contender.server.addr).await? {
            let get = |name: &str| c.get(name).copied().unwrap_or(0);
            println!(
                "{} clicks since its last start: {} recorded, {} notes written, {} repeats, {} screened before the outbox",
                contender.name,
                get("shortlinks_clicks_recorded_total"),
                get("shortlinks_notes_written_total"),
                get("shortlinks_visits_deduplicated_total"),
                get("shortlinks_clicks_screened_total")
            );
        }
    }
    for contender in &mut contenders {
        let _ = stop(&mut contender.server).await;
    }
    Ok(())
}
