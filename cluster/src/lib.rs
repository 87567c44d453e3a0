//! A real Weir cluster of separate `weir` processes on this machine, each on its own loopback
//! address (`127.<c>.<k>.<n>`, with `<k>` chosen per cluster so clusters do not collide), with
//! its own data directory and log file. Integration tests, benchmarks and the fault-injection
//! suite use it; `weir-cluster` is its command line.
//!
//! The cluster is described by `<dir>/cluster.json` (node names, roles, ids, addresses, pids,
//! command lines), so a later `weir-cluster kill|pause|resume|restart|down --dir <dir>` can
//! act on processes started by an earlier one.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use weir_proto::v1 as pb;
use weir_proto::v1::admin_client::AdminClient;

pub mod tls;

pub const CONTROLLER_PORT: u16 = 9093;
pub const BROKER_PORT: u16 = 9092;
/// Brokers replicate on their internal listener: same address, this port.
pub const INTERNAL_PORT: u16 = 9094;
/// Controllers serve Raft and the broker registry on their internal listener: same address,
/// this port.
pub const CONTROLLER_INTERNAL_PORT: u16 = 9095;
/// Every node serves /metrics, /healthz and /readyz on its own address at this port.
pub const HTTP_PORT: u16 = 9080;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Controller,
    Broker,
    /// A controller and a broker in one process (`weir node`).
    Node,
}

impl Role {
    pub fn is_controller(self) -> bool {
        matches!(self, Role::Controller | Role::Node)
    }

    pub fn is_broker(self) -> bool {
        matches!(self, Role::Broker | Role::Node)
    }
}

/// One process of the cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Node {
    /// `controller-1`, `broker-2`, `node-3`, ...
    pub name: String,
    pub role: Role,
    pub id: u32,
    /// The controller's address, or the broker's for a broker.
    pub addr: String,
    pub data_dir: PathBuf,
    pub log_file: PathBuf,
    pub args: Vec<String>,
    pub pid: Option<u32>,
}

/// What to start.
#[derive(Debug, Clone)]
pub struct Spec {
    pub controllers: u32,
    pub brokers: u32,
    /// Run `controllers` nodes each holding a controller and a broker (`weir node`);
    /// `brokers` must then be 0.
    pub combined: bool,
    pub dir: PathBuf,
    /// The `weir` binary to run.
    pub weir: PathBuf,
    pub broker_lease_ms: u64,
    /// Extra environment variables for every node process; `{node}` in a value becomes the
    /// node's name and `{dir}` the cluster directory.
    pub env: Vec<(String, String)>,
    /// TLS on every listener and between nodes: a CA and node certificates are made in
    /// `<dir>/tls`, and this process's connections use them (`tls/client.crt`).
    pub tls: bool,
}

/// A running (or partly running) cluster.
#[derive(Debug, Serialize, Deserialize)]
pub struct Cluster {
    pub dir: PathBuf,
    pub weir: PathBuf,
    pub nodes: Vec<Node>,
    /// Extra environment variables for every node process.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Every listener speaks TLS (certificates in `<dir>/tls`).
    #[serde(default)]
    pub tls: bool,
    #[serde(skip)]
    children: BTreeMap<String, Child>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Children started by this process are reaped (not killed) here; `down` kills.
        for child in self.children.values_mut() {
            let _ = child.try_wait();
        }
    }
}

/// Is `pid` a live (not zombie) process?
pub fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

fn signal(pid: u32, sig: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .context("run kill")?;
    if !status.success() {
        bail!("kill {sig} {pid} failed");
    }
    Ok(())
}

/// Makes this process's connections use the cluster's CA and client certificate.
fn use_client_tls(dir: &Path) -> anyhow::Result<()> {
    let tls = dir.join("tls");
    weir_proto::call::set_client_security(&weir_proto::call::ClientSecurity {
        tls: Some(weir_proto::tls::ClientTlsFiles {
            ca: tls.join("ca.crt"),
            cert: Some(tls.join("client.crt")),
            key: Some(tls.join("client.key")),
        }),
        token: None,
    })
    .map_err(anyhow::Error::msg)
}

/// A free `127.<a>.<b>.x` prefix: no process listens on its first address.
fn pick_prefix() -> String {
    for _ in 0..64 {
        let a = 100 + rand::random::<u8>() % 100;
        let b = 1 + rand::random::<u8>() % 250;
        let prefix = format!("127.{a}.{b}");
        if std::net::TcpListener::bind(format!("{prefix}.11:{CONTROLLER_PORT}")).is_ok() {
            return prefix;
        }
    }
    "127.0.0".to_string()
}

/// The internal address of the controller at `addr` in a cluster this library started.
pub fn controller_internal_addr(addr: &str) -> String {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    format!("{host}:{CONTROLLER_INTERNAL_PORT}")
}

impl Cluster {
    /// Starts every node and waits until a controller leads and every broker is registered.
    pub fn up(spec: &Spec, timeout: Duration) -> anyhow::Result<Cluster> {
        if spec.controllers == 0 {
            bail!("--controllers must be at least 1");
        }
        if spec.combined && spec.brokers != 0 {
            bail!("combined nodes hold their own brokers: --brokers must be 0");
        }
        fs::create_dir_all(&spec.dir).with_context(|| format!("--dir {}", spec.dir.display()))?;
        let dir = spec.dir.canonicalize()?;
        let prefix = pick_prefix();
        let controller_addr = |i: u32| format!("{prefix}.{}:{CONTROLLER_PORT}", 10 + i);
        let voters: Vec<String> = (1..=spec.controllers)
            .map(|i| {
                let addr = controller_addr(i);
                format!("{i}={addr}/{}", controller_internal_addr(&addr))
            })
            .collect();
        // brokers talk to the controllers' internal listeners
        let controller_list: Vec<String> = (1..=spec.controllers)
            .map(|i| controller_internal_addr(&controller_addr(i)))
            .collect();
        let mut nodes = Vec::new();
        let authority = if spec.tls {
            let authority = tls::Authority::create(&dir.join("tls"))?;
            authority.issue("client", &[], &[])?;
            use_client_tls(&dir)?;
            Some(authority)
        } else {
            None
        };
        // TLS flags of node `name` (id `id`) at `ip`
        let tls_args = |name: &str, id: u32, ip: String| -> anyhow::Result<Vec<String>> {
            let Some(authority) = &authority else {
                return Ok(Vec::new());
            };
            let ip: std::net::IpAddr = ip.parse()?;
            let issued = authority.issue_member(name, id, &[], &[ip])?;
            Ok(vec![
                "--tls-ca".into(),
                authority.ca_file.display().to_string(),
                "--tls-cert".into(),
                issued.cert.display().to_string(),
                "--tls-key".into(),
                issued.key.display().to_string(),
            ])
        };
        // a controller's flags; a combined node adds its broker's address
        let controller_args = |command: &str, i: u32, data_dir: &Path| -> Vec<String> {
            let mut args = vec![
                command.to_string(),
                "--id".into(),
                i.to_string(),
                "--listen".into(),
                controller_addr(i),
                "--internal-listen".into(),
                controller_internal_addr(&controller_addr(i)),
            ];
            if spec.combined {
                args.push("--broker-listen".into());
                args.push(format!("{prefix}.{}:{BROKER_PORT}", 10 + i));
                args.push("--broker-internal-listen".into());
                args.push(format!("{prefix}.{}:{INTERNAL_PORT}", 10 + i));
            }
            args.extend([
                "--controllers".into(),
                voters.join(","),
                "--data-dir".into(),
                data_dir.display().to_string(),
                "--broker-lease-ms".into(),
                spec.broker_lease_ms.to_string(),
                "--preferred-leader-check-ms".into(),
                "2000".into(),
                "--http".into(),
                format!("{prefix}.{}:{HTTP_PORT}", 10 + i),
            ]);
            args
        };
        for i in 1..=spec.controllers {
            let (role, name, command) = if spec.combined {
                (Role::Node, format!("node-{i}"), "node")
            } else {
                (Role::Controller, format!("controller-{i}"), "controller")
            };
            let data_dir = dir.join(&name);
            let mut args = controller_args(command, i, &data_dir);
            args.extend(tls_args(&name, i, format!("{prefix}.{}", 10 + i))?);
            nodes.push(Node {
                role,
                id: i,
                addr: controller_addr(i),
                log_file: dir.join(format!("{name}.log")),
                args,
                data_dir,
                name,
                pid: None,
            });
        }
        for i in 1..=spec.brokers {
            let name = format!("broker-{i}");
            let data_dir = dir.join(&name);
            let addr = format!("{prefix}.{}:{BROKER_PORT}", 20 + i);
            nodes.push(Node {
                role: Role::Broker,
                id: i,
                log_file: dir.join(format!("{name}.log")),
                args: vec![
                    "broker".into(),
                    "--id".into(),
                    i.to_string(),
                    "--listen".into(),
                    addr.clone(),
                    "--internal-listen".into(),
                    format!("{prefix}.{}:{INTERNAL_PORT}", 20 + i),
                    "--controllers".into(),
                    controller_list.join(","),
                    "--data-dir".into(),
                    data_dir.display().to_string(),
                    "--http".into(),
                    format!("{prefix}.{}:{HTTP_PORT}", 20 + i),
                ]
                .into_iter()
                .chain(tls_args(&name, i, format!("{prefix}.{}", 20 + i))?)
                .collect(),
                addr,
                data_dir,
                name,
                pid: None,
            });
        }
        let mut cluster = Cluster {
            dir,
            weir: spec.weir.clone(),
            nodes,
            env: spec.env.clone(),
            tls: spec.tls,
            children: BTreeMap::new(),
        };
        let names: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
        for name in names {
            cluster.start(&name)?;
        }
        cluster.save()?;
        cluster.wait_ready(timeout)?;
        Ok(cluster)
    }

    pub fn load(dir: &Path) -> anyhow::Result<Cluster> {
        let path = dir.join("cluster.json");
        let text = fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        let cluster: Cluster =
            serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
        if cluster.tls {
            use_client_tls(&cluster.dir)?;
        }
        Ok(cluster)
    }

    pub fn save(&self) -> anyhow::Result<()> {
        let path = self.dir.join("cluster.json");
        fs::write(&path, serde_json::to_string_pretty(self)?)
            .with_context(|| format!("write {}", path.display()))
    }

    /// `ip:port` of a node's HTTP endpoints.
    pub fn http_addr(&self, name: &str) -> anyhow::Result<String> {
        let node = self.node(name)?;
        let ip = node
            .addr
            .rsplit_once(':')
            .map_or(node.addr.as_str(), |(ip, _)| ip);
        Ok(format!("{ip}:{HTTP_PORT}"))
    }

    pub fn node(&self, name: &str) -> anyhow::Result<&Node> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .with_context(|| format!("no node {name:?} in this cluster"))
    }

    /// Controller addresses, comma separated (for `--bootstrap`).
    pub fn bootstrap(&self) -> String {
        self.nodes
            .iter()
            .filter(|n| n.role.is_controller())
            .map(|n| n.addr.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn is_alive(&mut self, name: &str) -> bool {
        if let Some(child) = self.children.get_mut(name) {
            let _ = child.try_wait();
        }
        self.node(name).ok().and_then(|n| n.pid).is_some_and(alive)
    }

    /// Starts the node's process (it must not be running).
    pub fn start(&mut self, name: &str) -> anyhow::Result<()> {
        let node = self.node(name)?.clone();
        fs::create_dir_all(&node.data_dir)?;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_file)
            .with_context(|| format!("open {}", node.log_file.display()))?;
        use std::os::unix::process::CommandExt;
        let dir = self.dir.display().to_string();
        let env = self.env.iter().map(|(k, v)| {
            (
                k.as_str(),
                v.replace("{node}", &node.name).replace("{dir}", &dir),
            )
        });
        let child = Command::new(&self.weir)
            .args(&node.args)
            .envs(env)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("start {} ({})", name, self.weir.display()))?;
        let pid = child.id();
        self.children.insert(name.to_string(), child);
        if let Some(n) = self.nodes.iter_mut().find(|n| n.name == name) {
            n.pid = Some(pid);
        }
        self.save()
    }

    pub fn kill(&mut self, name: &str) -> anyhow::Result<()> {
        let pid = self
            .node(name)?
            .pid
            .with_context(|| format!("{name} was never started"))?;
        if alive(pid) {
            signal(pid, "-KILL")?;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.is_alive(name) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// SIGTERM (a controlled shutdown: a broker drains its leaderships first), then SIGKILL
    /// if it still runs after `grace`. Returns how long it took to exit.
    pub fn stop(&mut self, name: &str, grace: Duration) -> anyhow::Result<Duration> {
        let pid = self
            .node(name)?
            .pid
            .with_context(|| format!("{name} was never started"))?;
        let started = Instant::now();
        if alive(pid) {
            signal(pid, "-TERM")?;
        }
        while self.is_alive(name) && started.elapsed() < grace {
            std::thread::sleep(Duration::from_millis(10));
        }
        let took = started.elapsed();
        if self.is_alive(name) {
            self.kill(name)?;
        }
        Ok(took)
    }

    pub fn pause(&mut self, name: &str) -> anyhow::Result<()> {
        let pid = self
            .node(name)?
            .pid
            .with_context(|| format!("{name} was never started"))?;
        signal(pid, "-STOP")
    }

    /// SIGSTOP to every named node in one `kill` call, so they stop within microseconds of
    /// each other (a power loss of several machines at once).
    pub fn freeze(&mut self, names: &[String]) -> anyhow::Result<()> {
        let mut pids = Vec::new();
        for name in names {
            let pid = self
                .node(name)?
                .pid
                .with_context(|| format!("{name} was never started"))?;
            pids.push(pid.to_string());
        }
        let status = Command::new("kill")
            .arg("-STOP")
            .args(&pids)
            .status()
            .context("run kill")?;
        if !status.success() {
            bail!("kill -STOP {} failed", pids.join(" "));
        }
        Ok(())
    }

    pub fn resume(&mut self, name: &str) -> anyhow::Result<()> {
        let pid = self
            .node(name)?
            .pid
            .with_context(|| format!("{name} was never started"))?;
        signal(pid, "-CONT")
    }

    /// Kills the node if it runs, then starts it again with the same data.
    pub fn restart(&mut self, name: &str) -> anyhow::Result<()> {
        if self.is_alive(name) {
            self.kill(name)?;
        }
        self.start(name)
    }

    /// SIGTERM to every node, SIGKILL to any still running after `grace`.
    pub fn down(&mut self, grace: Duration) -> anyhow::Result<()> {
        let names: Vec<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
        for name in &names {
            if let Some(pid) = self.node(name)?.pid
                && alive(pid)
            {
                let _ = signal(pid, "-CONT");
                let _ = signal(pid, "-TERM");
            }
        }
        let deadline = Instant::now() + grace;
        for name in &names {
            while self.is_alive(name) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if self.is_alive(name) {
                self.kill(name)?;
            }
        }
        self.save()
    }

    /// The cluster as the controllers see it, asked of any live controller.
    pub fn describe(&self) -> anyhow::Result<pb::DescribeClusterResponse> {
        let bootstrap: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.role.is_controller() && n.pid.is_some_and(alive))
            .map(|n| n.addr.clone())
            .collect();
        describe_via(&bootstrap)
    }

    /// Waits until a controller leads and every broker of the cluster is registered and live.
    pub fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let brokers: Vec<u32> = self
            .nodes
            .iter()
            .filter(|n| n.role.is_broker())
            .map(|n| n.id)
            .collect();
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.describe() {
                Ok(d) if d.leader_id != 0 => {
                    let live: Vec<u32> = d
                        .brokers
                        .iter()
                        .filter(|b| !b.fenced)
                        .map(|b| b.id)
                        .collect();
                    if brokers.iter().all(|b| live.contains(b)) {
                        return Ok(());
                    }
                    format!("live brokers {live:?} of {brokers:?}")
                }
                Ok(_) => "no active controller yet".to_string(),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "cluster not ready after {timeout:?}: {last}; logs in {}",
                    self.dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `DescribeCluster` through the first reachable controller of `bootstrap`.
pub fn describe_via(bootstrap: &[String]) -> anyhow::Result<pb::DescribeClusterResponse> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        weir_proto::call::with_controller(bootstrap, Duration::from_millis(500), |ch| async move {
            AdminClient::new(ch)
                .describe_cluster(pb::DescribeClusterRequest {})
                .await
        })
        .await
        .map(tonic_inner)
        .map_err(anyhow::Error::from)
    })
}

fn tonic_inner<T>(r: weir_proto::Response<T>) -> T {
    r.into_inner()
}
