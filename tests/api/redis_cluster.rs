//! Two nodes on PostgreSQL and a real Redis Cluster (three masters, three replicas, started by
//! the test on loopback ports): rooms ride sharded channels on the masters that own their slots,
//! presence works across nodes, and when a master is killed mid-traffic its replica takes over
//! and no acked message is lost or repeated on either node.
//!
//! Needs `redis-server` and `redis-cli` besides the services of the other cluster tests; skipped
//! like them without `CONFAB_TEST_DATABASE_URL`/`CONFAB_TEST_REDIS_URL`.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use confab::config::Secret;
use reqwest::StatusCode;
use tokio::{sync::mpsc, task::JoinHandle};

use crate::{
    cluster::{traffic, wait_for_redis},
    common::SERVICE_TIMEOUT,
    helpers::{ClusterSpec, Session, TestApp, TestSocket, expect_json},
    ws::connect_user,
};

/// How long the cluster may take to form, or to fail a master over (node timeout 1 s here).
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(60);

/// Six `redis-server`s in cluster mode with one replica per master; killed on drop.
struct RedisCluster {
    ports: Vec<u16>,
    servers: Vec<Option<Child>>,
    _dir: tempfile::TempDir,
}

/// What `CLUSTER NODES` says of one master.
struct Master {
    port: u16,
    slots: Vec<(u16, u16)>,
}

impl RedisCluster {
    async fn start() -> Self {
        for tool in ["redis-server", "redis-cli"] {
            let found = Command::new(tool).arg("--version").stdout(Stdio::null()).status().is_ok_and(|s| s.success());
            assert!(found, "{tool} is needed for the Redis Cluster test (apt-get install redis-server)");
        }
        let dir = tempfile::tempdir().expect("a directory for the cluster");
        let ports = free_port_pairs(6);
        let mut servers = Vec::new();
        for port in &ports {
            let node_dir: PathBuf = dir.path().join(port.to_string());
            std::fs::create_dir_all(&node_dir).expect("node dir");
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"])
                .args(["--cluster-node-timeout", "1000", "--loglevel", "warning", "--repl-diskless-sync-delay", "0"])
                .arg("--dir")
                .arg(&node_dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server starts");
            servers.push(Some(child));
        }
        let cluster = Self { ports, servers, _dir: dir };
        for port in &cluster.ports {
            let deadline = Instant::now() + CLUSTER_TIMEOUT;
            while cli(*port, &["PING"]).trim() != "PONG" {
                assert!(Instant::now() < deadline, "redis-server on {port} never answered");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let addrs: Vec<String> = cluster.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(out.status.success(), "cluster create failed: {}", String::from_utf8_lossy(&out.stdout));
        for port in &cluster.ports {
            settle(*port, || cli(*port, &["CLUSTER", "INFO"]).contains("cluster_state:ok")).await;
            // A replica that has not finished its first sync cannot take over from its master.
            settle(*port, || {
                let info = cli(*port, &["INFO", "replication"]);
                info.contains("role:master") || info.contains("master_link_status:up")
            })
            .await;
        }
        cluster
    }

    /// The seed list a node is configured with: two of the six, as an operator would give.
    fn seeds(&self) -> String {
        format!("redis://127.0.0.1:{},redis://127.0.0.1:{}", self.ports[0], self.ports[1])
    }

    /// The masters that are up and serve slots, as `port` sees them.
    fn masters(port: u16) -> Vec<Master> {
        cli(port, &["CLUSTER", "NODES"])
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let flags = fields.get(2)?;
                if !flags.contains("master") || flags.contains("fail") {
                    return None;
                }
                let port = fields[1].split(['@', ':']).nth(1)?.parse().ok()?;
                let slots = fields[8..]
                    .iter()
                    .filter(|r| !r.starts_with('['))
                    .filter_map(|r| match r.split_once('-') {
                        Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                        None => r.parse().ok().map(|s| (s, s)),
                    })
                    .collect::<Vec<_>>();
                (!slots.is_empty()).then_some(Master { port, slots })
            })
            .collect()
    }

    /// Room names (with the port of their channel's master), one per master.
    fn one_room_per_master(&self, prefix: &str) -> Vec<(u16, String)> {
        let mut rooms: BTreeMap<u16, String> = BTreeMap::new();
        for k in 0.. {
            let room = format!("shard{k}");
            let owner = Self::owner(self.ports[0], &format!("{prefix}:room:{room}")).expect("every slot is served");
            rooms.entry(owner).or_insert(room);
            if rooms.len() == 3 {
                break;
            }
        }
        rooms.into_iter().collect()
    }

    /// The port of the master that serves `channel`'s slot, as `port` sees it.
    fn owner(port: u16, channel: &str) -> Option<u16> {
        let slot: u16 = cli(port, &["CLUSTER", "KEYSLOT", channel]).trim().parse().ok()?;
        Self::masters(port).into_iter().find(|m| m.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))).map(|m| m.port)
    }

    fn kill(&mut self, port: u16) {
        let i = self.ports.iter().position(|p| *p == port).expect("a port of this cluster");
        if let Some(mut child) = self.servers[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits until `done` says the cluster, as `port` sees it, has settled.
async fn settle(port: u16, done: impl Fn() -> bool) {
    let deadline = Instant::now() + CLUSTER_TIMEOUT;
    // Redis announces nothing a client can await: poll, briefly, up to the deadline.
    while !done() {
        assert!(
            Instant::now() < deadline,
            "the cluster never settled (asked node {port}):\n{}",
            cli(port, &["CLUSTER", "NODES"])
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `redis-cli -p PORT ARGS…`'s output (empty when it fails).
fn cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for child in self.servers.iter_mut().filter_map(Option::take) {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `n` ports `p` whose cluster bus ports `p + 10000` are free too.
fn free_port_pairs(n: usize) -> Vec<u16> {
    let mut ports = Vec::new();
    let mut candidate = 20_000 + u16::try_from(std::process::id() % 5000).unwrap_or(0) * 2;
    while ports.len() < n {
        candidate += 1;
        assert!(candidate < 45_000, "no free port pairs");
        let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(candidate) && free(candidate + 10_000) {
            ports.push(candidate);
        }
    }
    ports
}

/// A cluster node given as a plain Redis URL is refused at start with the fix, rather than run
/// half-working (presence pipelines across slots would fail).
async fn a_cluster_node_as_a_plain_url_is_refused(spec: &ClusterSpec, redis: &RedisCluster) {
    let mut plain = crate::helpers::test_config(&spec.db);
    plain.redis.url = Some(Secret::new(format!("redis://127.0.0.1:{}", redis.ports[0])));
    plain.redis.prefix.clone_from(&spec.redis.prefix);
    let refused = tokio::time::timeout(SERVICE_TIMEOUT, confab::App::build(plain)).await.expect("App::build timed out");
    let error = format!("{:#}", refused.err().expect("a cluster node without redis.cluster is refused"));
    assert!(error.contains("redis.cluster = true"), "{error}");
}

/// Polls `room`'s member list on `node` until `n` members are online.
async fn wait_until_online(node: &TestApp, room: &str, who: &Session, n: usize) {
    let deadline = Instant::now() + CLUSTER_TIMEOUT;
    loop {
        let body =
            expect_json(node.get_authed(&format!("/api/rooms/{room}/members"), &who.token).await, StatusCode::OK).await;
        let online = body["members"].as_array().expect("members").iter().filter(|m| m["online"] == true).count();
        if online == n {
            return;
        }
        assert!(Instant::now() < deadline, "presence never counted both nodes' members: {body}");
        // Presence rounds are not observable from outside: poll, briefly, up to the deadline.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Each reader's seqs, up to and including the message "the end".
fn read_until_the_end(readers: Vec<(String, TestSocket)>) -> Vec<JoinHandle<(String, Vec<i64>)>> {
    readers
        .into_iter()
        .map(|(room, mut r)| {
            tokio::spawn(async move {
                let mut seqs = Vec::new();
                loop {
                    let msg = r.next_message().await;
                    seqs.push(msg.seq);
                    if msg.content == "the end" {
                        return (room, seqs);
                    }
                }
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_carries_rooms_on_their_shards_through_a_master_failover() {
    let Some(spec) = ClusterSpec::new().await else { return };
    let mut redis = RedisCluster::start().await;
    let seeds = redis.seeds();
    a_cluster_node_as_a_plain_url_is_refused(&spec, &redis).await;
    let mut nodes: Vec<TestApp> = Vec::new();
    for i in 0..2 {
        let seeds = seeds.clone();
        nodes.push(
            spec.node(i, move |cfg| {
                cfg.redis.url = Some(Secret::new(seeds));
                cfg.redis.cluster = true;
                cfg.chat.presence_interval = confab::config::HumanDuration(Duration::from_millis(200));
            })
            .await,
        );
        wait_for_redis(&nodes[i], "up").await;
    }
    // One room on each master: the cluster's traffic is spread over all of them.
    let prefix = spec.redis.prefix.clone();
    let rooms = redis.one_room_per_master(&prefix);

    // Per room: a sender on one node, a reader on each.
    let mut senders = Vec::new();
    let mut readers = Vec::new();
    let mut watcher = None;
    for (i, (_, room)) in rooms.iter().enumerate() {
        let (_, mut s) = connect_user(&nodes[i % 2], &format!("sender{i}@example.com")).await;
        s.join(room).await;
        for (n, node) in nodes.iter().enumerate() {
            let (session, mut r) = connect_user(node, &format!("reader{i}-{n}@example.com")).await;
            r.join(room).await;
            watcher.get_or_insert(session);
            readers.push((room.clone(), r));
        }
        senders.push((room.clone(), s));
    }

    // Each room's channel is a sharded channel on its own master, and no node uses plain pub/sub.
    for (master, room) in &rooms {
        let channel = format!("{prefix}:room:{room}");
        let sharded = cli(*master, &["PUBSUB", "SHARDCHANNELS", &format!("{prefix}:*")]);
        assert!(sharded.lines().any(|l| l.trim() == channel), "{channel} not subscribed on {master}: {sharded}");
        let plain = cli(*master, &["PUBSUB", "CHANNELS", &format!("{prefix}:*")]);
        assert!(plain.trim().is_empty(), "plain pub/sub channels on {master}: {plain}");
    }

    // Presence reaches across nodes through the cluster's hash-tagged keys.
    wait_until_online(&nodes[0], &rooms[0].1, &watcher.expect("a reader"), 3).await;

    let readers = read_until_the_end(readers);
    let stop = Arc::new(AtomicBool::new(false));
    let (progress, mut sent) = mpsc::unbounded_channel::<()>();
    let senders: Vec<JoinHandle<(String, TestSocket)>> = senders
        .into_iter()
        .map(|(room, mut s)| {
            let (stop, progress) = (Arc::clone(&stop), progress.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    s.send(&room, &format!("{room}: {n}")).await;
                    n += 1;
                    let _ = progress.send(());
                }
                (room, s)
            })
        })
        .collect();
    traffic(&mut sent, 30).await;

    // The master of the first room dies mid-traffic; its replica takes its slots over.
    let (victim, room) = rooms[0].clone();
    let channel = format!("{prefix}:room:{room}");
    redis.kill(victim);
    let witness = *redis.ports.iter().find(|p| **p != victim).expect("a survivor");
    settle(witness, || {
        RedisCluster::owner(witness, &channel).is_some_and(|p| p != victim)
            && cli(witness, &["CLUSTER", "INFO"]).contains("cluster_state:ok")
    })
    .await;
    let promoted = RedisCluster::owner(witness, &channel).expect("an owner");
    eprintln!("redis cluster: master {victim} killed, {promoted} took over {channel}");
    for node in &nodes {
        wait_for_redis(node, "up").await;
    }
    // The room is subscribed on its new master again.
    settle(promoted, || {
        cli(promoted, &["PUBSUB", "SHARDCHANNELS", &format!("{prefix}:*")]).lines().any(|l| l.trim() == channel)
    })
    .await;
    traffic(&mut sent, 30).await;

    stop.store(true, Ordering::Relaxed);
    let mut done = Vec::new();
    for task in senders {
        done.push(task.await.expect("sender"));
    }
    let mut ends = BTreeMap::new();
    for (room, s) in &mut done {
        ends.insert(room.clone(), s.send(room, "the end").await.seq);
    }
    let mut seen = BTreeSet::new();
    for task in readers {
        let (room, seqs) =
            tokio::time::timeout(SERVICE_TIMEOUT * 4, task).await.expect("a reader stalled").expect("reader");
        let expected: Vec<i64> = (1..=ends[&room]).collect();
        assert_eq!(seqs, expected, "a reader of {room} missed or repeated something");
        seen.insert(room);
    }
    assert_eq!(seen.len(), 3);
    eprintln!("redis cluster failover: {ends:?} messages per room, every one delivered once on both nodes");
}
