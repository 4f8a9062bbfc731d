//! Throwaway `redis-server` processes on loopback, for tests and the load harness.
//!
//! Each server runs in its own temporary directory on a free port and is killed when its
//! handle is dropped. Needs `redis-server` (and `redis-cli` for clusters) on `PATH`.

use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::time::{Duration, Instant};

use crate::{RedisConfig, RedisTarget};

/// Set to `1` where tests must not skip for want of Redis (CI, after installing it).
pub const REQUIRE_ENV: &str = "SHORTLINKS_REQUIRE_REDIS";

/// Whether `redis-server` and `redis-cli` are on `PATH`, for a test that needs them.
///
/// A test calls this first and returns on `false`. The notice names the test (the harness
/// names its thread after it) and goes straight to stderr, past the harness's capture, so
/// a skip is never silent. With [`REQUIRE_ENV`] set to `1` a missing Redis panics instead.
pub fn available() -> bool {
    programs_available(&["redis-server", "redis-cli"], "redis-server")
}

/// As [`available`], for a test that also makes TLS certificates (with `openssl`).
pub fn tls_available() -> bool {
    programs_available(&["redis-server", "redis-cli", "openssl"], "redis-server and openssl")
}

fn programs_available(programs: &[&str], packages: &str) -> bool {
    let test = std::thread::current().name().unwrap_or("a test").to_owned();
    if programs.iter().all(|program| on_path(program)) {
        return true;
    }
    let names = programs.join(", ");
    if std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1") {
        panic!("{test}: {names} must be on PATH ({REQUIRE_ENV}=1)");
    }
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: one of {names} is not on PATH (install {packages}; {REQUIRE_ENV}=1 makes this a failure)"
    );
    false
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// A failure to start Redis, with what was tried.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

/// One `redis-server` process.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    owns_dir: bool,
    extra: Vec<String>,
}

impl RedisServer {
    /// A standalone server with append-only persistence (`appendfsync everysec`).
    pub fn standalone() -> Result<Self, StartError> {
        Self::standalone_with(&[])
    }

    /// A standalone server with extra `redis-server` arguments, such as
    /// `["--appendfsync", "always"]`.
    pub fn standalone_with(extra: &[&str]) -> Result<Self, StartError> {
        let port = free_port(false)?;
        Self::start(port, scratch_dir(port)?, true, extra.iter().map(|s| s.to_string()).collect())
    }

    fn start(port: u16, dir: PathBuf, owns_dir: bool, extra: Vec<String>) -> Result<Self, StartError> {
        let mut server = Self { child: None, port, dir, owns_dir, extra };
        server.spawn()?;
        Ok(server)
    }

    fn spawn(&mut self) -> Result<(), StartError> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| StartError(format!("cannot run redis-server (is it installed?): {e}")))?;
        let ours = format!("process_id:{}", child.id());
        let child = self.child.insert(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(StartError(format!("redis-server on port {} exited at start: {status}", self.port)));
            }
            // Answered by this process, not by another one that holds the port.
            if cli(self.port, &["info", "server"]).is_some_and(|info| info.lines().any(|l| l.trim() == ours)) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(StartError(format!("redis-server on port {} did not answer", self.port)))
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// A store configuration for this server, under `prefix`.
    pub fn config(&self, prefix: &str) -> RedisConfig {
        RedisConfig { key_prefix: prefix.to_owned(), ..RedisConfig::new(RedisTarget::Standalone(self.url())) }
    }

    /// Kills the process (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and directory (its append-only file is replayed).
    pub fn restart(&mut self) -> Result<(), StartError> {
        self.kill();
        self.spawn()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        if self.owns_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A Redis Cluster of `masters` nodes, no replicas, built with `redis-cli --cluster create`.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    dir: PathBuf,
    /// Each node's TLS port, for a cluster started with TLS.
    tls_ports: Vec<u16>,
}

impl RedisCluster {
    /// Starts the nodes and waits until the cluster reports `cluster_state:ok`.
    pub fn start(masters: usize) -> Result<Self, StartError> {
        Self::start_with_replicas(masters, 0)
    }

    /// As [`RedisCluster::start`], with `replicas` replicas of each master (nodes after the
    /// first `masters` are replicas, as `redis-cli --cluster create` assigns them).
    pub fn start_with_replicas(masters: usize, replicas: usize) -> Result<Self, StartError> {
        Self::build(masters, replicas, None)
    }

    /// A cluster of `masters` whose nodes also listen with TLS (`tls_urls`), the cluster bus
    /// and replication over TLS too; the plain ports stay for the test's own checks.
    pub fn start_tls(masters: usize, certificates: &TestCertificates) -> Result<Self, StartError> {
        Self::build(masters, 0, Some(certificates))
    }

    fn build(masters: usize, replicas: usize, tls: Option<&TestCertificates>) -> Result<Self, StartError> {
        let total = masters * (1 + replicas);
        let mut tls_ports = Vec::new();
        let mut nodes = Vec::with_capacity(total);
        let first = free_port(true)?;
        let dir = scratch_dir(first)?;
        for i in 0..total {
            let port = if i == 0 { first } else { free_port(true)? };
            let node_dir = dir.join(port.to_string());
            std::fs::create_dir_all(&node_dir).map_err(|e| StartError(format!("{}: {e}", node_dir.display())))?;
            let mut extra: Vec<String> =
                ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000"]
                    .map(String::from)
                    .to_vec();
            if let Some(certificates) = tls {
                let tls_port = free_port(true)?;
                tls_ports.push(tls_port);
                extra.extend(tls_args(certificates, tls_port, false));
                extra.extend(["--tls-cluster", "yes", "--tls-replication", "yes"].map(String::from));
            }
            nodes.push(RedisServer::start(port, node_dir, false, extra)?);
        }
        // Over TLS the cluster's ports are the TLS ports (the bus is at each plus 10000).
        let (ports, tls_cli): (Vec<u16>, Vec<String>) = match tls {
            Some(certificates) => (
                tls_ports.clone(),
                vec!["--tls".into(), "--cacert".into(), certificates.path("ca.crt").display().to_string()],
            ),
            None => (nodes.iter().map(|n| n.port).collect(), Vec::new()),
        };
        let addresses: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let mut create = Command::new("redis-cli")
            .args(&tls_cli)
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| StartError(format!("cannot run redis-cli: {e}")))?;
        // It waits without end for a node that died to join.
        let status = exit_within(&mut create, Duration::from_secs(60))?;
        if !status.success() {
            return Err(StartError(format!("redis-cli --cluster create failed: {status}")));
        }
        let cluster = Self { nodes, dir, tls_ports };
        for node in &cluster.nodes {
            wait_until(Duration::from_secs(20), || {
                cli(node.port, &["cluster", "info"]).is_some_and(|info| info.contains("cluster_state:ok"))
            })
            .map_err(|()| StartError(format!("node {} never reported cluster_state:ok", node.port)))?;
        }
        Ok(cluster)
    }

    /// `redis://127.0.0.1:<port>/` of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// `rediss://127.0.0.1:<tls port>/` of every node of a cluster started with TLS.
    pub fn tls_urls(&self) -> Vec<String> {
        self.tls_ports.iter().map(|p| format!("rediss://127.0.0.1:{p}/")).collect()
    }

    /// A store configuration for this cluster, under `prefix`.
    pub fn config(&self, prefix: &str) -> RedisConfig {
        RedisConfig { key_prefix: prefix.to_owned(), ..RedisConfig::new(RedisTarget::Cluster(self.urls())) }
    }

    /// The nodes, in creation order.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The nodes, to kill one.
    pub fn nodes_mut(&mut self) -> &mut [RedisServer] {
        &mut self.nodes
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `redis-cli -p port args…` and returns its output, if it succeeded.
pub fn cli(port: u16, args: &[&str]) -> Option<String> {
    let out =
        Command::new("redis-cli").args(["-p", &port.to_string()]).args(args).stderr(Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Waits for `child` to exit; kills it after `limit`.
fn exit_within(child: &mut Child, limit: Duration) -> Result<ExitStatus, StartError> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| StartError(e.to_string()))? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(StartError(format!("redis-cli did not finish within {limit:?}")));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_until(limit: Duration, mut ready: impl FnMut() -> bool) -> Result<(), ()> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if ready() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(())
}

/// Server ports are 12000–21999, cluster bus ports 10000 above: below the kernel's
/// ephemeral ports (32768 and up by default), so a port a test frees and takes back, as a
/// restart does, is never handed meanwhile to a socket bound to port 0 (a client's, or
/// another test's).
const FIRST_PORT: u32 = 12_000;
const PORTS: u32 = 10_000;
/// Ports taken so far in this process: each server gets a new one, so no two servers of
/// one process ever share a port, even one freed by a restart.
static PORTS_TAKEN: AtomicU32 = AtomicU32::new(0);

/// A loopback port free now and never handed out before in this process; for cluster
/// nodes the bus port (port + 10000) must be free too.
fn free_port(with_bus: bool) -> Result<u16, StartError> {
    // Processes start at different places, so that two test binaries rarely meet.
    let start = std::process::id() % 500 * 20;
    let free = |port: u32| u16::try_from(port).is_ok_and(|p| TcpListener::bind((Ipv4Addr::LOCALHOST, p)).is_ok());
    for _ in 0..PORTS {
        let port = FIRST_PORT + (start + PORTS_TAKEN.fetch_add(1, Relaxed)) % PORTS;
        if free(port) && (!with_bus || free(port + 10_000)) {
            return u16::try_from(port).map_err(|e| StartError(e.to_string()));
        }
    }
    Err(StartError("no free loopback port".into()))
}

fn scratch_dir(port: u16) -> Result<PathBuf, StartError> {
    let dir = std::env::temp_dir().join(format!("shortlinks-redis-{}-{port}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| StartError(format!("{}: {e}", dir.display())))?;
    Ok(dir)
}

/// Certificates made for a test by `openssl`: a CA, a server certificate for 127.0.0.1
/// signed by it, a client certificate signed by it, and a second CA that signed nothing
/// of these (to be refused).
pub struct TestCertificates {
    /// Where the PEM files are.
    pub dir: tempfile::TempDir,
}

impl TestCertificates {
    /// Makes them (P-256 keys, valid a day).
    pub fn make() -> Result<Self, StartError> {
        let dir = tempfile::tempdir().map_err(|e| StartError(e.to_string()))?;
        let d = dir.path();
        let run = |args: &[&str]| -> Result<(), StartError> {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(d)
                .output()
                .map_err(|e| StartError(format!("cannot run openssl: {e}")))?;
            match out.status.success() {
                true => Ok(()),
                false => Err(StartError(format!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr)))),
            }
        };
        let key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        for ca in ["ca", "rogue-ca"] {
            let (key_file, cert_file, subject) =
                (format!("{ca}.key"), format!("{ca}.crt"), format!("/CN=shortlinks test {ca}"));
            run(&[
                &["req", "-x509"][..],
                &key,
                &["-keyout", &key_file, "-out", &cert_file, "-days", "1", "-subj", &subject],
            ]
            .concat())?;
        }
        // clientAuth too: cluster nodes show their certificate to each other on the bus.
        std::fs::write(
            d.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
        )
        .map_err(|e| StartError(e.to_string()))?;
        std::fs::write(d.join("client.ext"), "extendedKeyUsage=clientAuth\n").map_err(|e| StartError(e.to_string()))?;
        for who in ["server", "client"] {
            let (k, csr, crt, ext) =
                (format!("{who}.key"), format!("{who}.csr"), format!("{who}.crt"), format!("{who}.ext"));
            run(&[&["req", "-new"][..], &key, &["-keyout", &k, "-out", &csr, "-subj", &format!("/CN={who}")]].concat())?;
            run(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "1",
                "-extfile",
                &ext,
            ])?;
        }
        Ok(Self { dir })
    }

    /// A file of theirs, such as `ca.crt`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl RedisServer {
    /// A standalone server that also listens with TLS on a port of its own (returned), with
    /// `certificates`' server certificate; `client_auth` makes it require a client
    /// certificate signed by their CA. The plain port stays, for the test's own checks.
    pub fn standalone_tls(certificates: &TestCertificates, client_auth: bool) -> Result<(Self, u16), StartError> {
        let tls_port = free_port(false)?;
        let args = tls_args(certificates, tls_port, client_auth);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        Ok((Self::standalone_with(&refs)?, tls_port))
    }
}

/// `redis-server` arguments for a TLS port with `certificates`' server certificate.
fn tls_args(certificates: &TestCertificates, tls_port: u16, client_auth: bool) -> Vec<String> {
    let path = |name: &str| certificates.path(name).display().to_string();
    vec![
        "--tls-port".to_owned(),
        tls_port.to_string(),
        "--tls-cert-file".into(),
        path("server.crt"),
        "--tls-key-file".into(),
        path("server.key"),
        "--tls-ca-cert-file".into(),
        path("ca.crt"),
        "--tls-auth-clients".into(),
        if client_auth { "yes" } else { "no" }.into(),
    ]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A server whose port another one holds must fail to start, not go on talking to the
    /// other one (as a restart did when its port had been handed out meanwhile).
    #[test]
    fn a_server_whose_port_is_taken_does_not_start() {
        if !available() {
            return;
        }
        let holder = RedisServer::standalone().unwrap();
        let dir = scratch_dir(holder.port() + 1).unwrap();
        let started = RedisServer::start(holder.port(), dir.clone(), true, Vec::new());
        assert!(started.is_err(), "a second server on port {} reported started", holder.port());
        assert!(cli(holder.port(), &["ping"]).is_some_and(|p| p.trim() == "PONG"), "the holder is untouched");
        assert_ne!(free_port(false).unwrap(), free_port(false).unwrap(), "a port is handed out once");
    }
}
