//! Throwaway `redis-server` processes on loopback, for tests and the load harness.
//!
//! Each server runs in its own temporary directory on a free port and is killed when its
//! handle is dropped. Needs `redis-server` (and `redis-cli` for clusters) on `PATH`.

use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{RedisConfig, RedisTarget};

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
        self.child = Some(child);
        wait_for_ping(self.port)
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
}

impl RedisCluster {
    /// Starts the nodes and waits until the cluster reports `cluster_state:ok`.
    pub fn start(masters: usize) -> Result<Self, StartError> {
        let mut nodes = Vec::with_capacity(masters);
        let first = free_port(true)?;
        let dir = scratch_dir(first)?;
        for i in 0..masters {
            let port = if i == 0 { first } else { free_port(true)? };
            let node_dir = dir.join(port.to_string());
            std::fs::create_dir_all(&node_dir).map_err(|e| StartError(format!("{}: {e}", node_dir.display())))?;
            let extra =
                ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000"];
            nodes.push(RedisServer::start(port, node_dir, false, extra.iter().map(|s| s.to_string()).collect())?);
        }
        let addresses: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let status = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| StartError(format!("cannot run redis-cli: {e}")))?;
        if !status.success() {
            return Err(StartError(format!("redis-cli --cluster create failed: {status}")));
        }
        let cluster = Self { nodes, dir };
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

    /// A store configuration for this cluster, under `prefix`.
    pub fn config(&self, prefix: &str) -> RedisConfig {
        RedisConfig { key_prefix: prefix.to_owned(), ..RedisConfig::new(RedisTarget::Cluster(self.urls())) }
    }

    /// The nodes, in creation order.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
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

fn wait_for_ping(port: u16) -> Result<(), StartError> {
    wait_until(Duration::from_secs(10), || cli(port, &["ping"]).is_some_and(|s| s.trim() == "PONG"))
        .map_err(|()| StartError(format!("redis-server on port {port} did not answer PING")))
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

/// A loopback port free now; for cluster nodes the bus port (port + 10000) must be too.
fn free_port(with_bus: bool) -> Result<u16, StartError> {
    for _ in 0..100 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| StartError(e.to_string()))?;
        let port = listener.local_addr().map_err(|e| StartError(e.to_string()))?.port();
        if !with_bus {
            return Ok(port);
        }
        if let Some(bus) = port.checked_add(10_000) {
            if TcpListener::bind((Ipv4Addr::LOCALHOST, bus)).is_ok() {
                return Ok(port);
            }
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
