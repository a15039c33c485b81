//! The servers under test: running nodes given by URL, or nodes the bench starts itself on free
//! ports with a scratch database, and stops again at the end.
//!
//! Spawned nodes get a configuration that makes a run measurable rather than realistic: rate
//! limits off (the generator registers thousands of users from one IP and sends far above a
//! human's rate), argon2 at its cheapest (registration is setup, not what is measured), and
//! access tokens that outlive the longest setup. The rest is confab's defaults. They run in a
//! private temp directory with an empty config file, so no `confab.toml` of the caller's working
//! directory leaks in.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use sqlx::{AssertSqlSafe, Connection as _, PgConnection};

use crate::{cli::TargetArgs, http::HttpConn};

/// How long a spawned node may take to answer `/ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a node may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Environment the original platform or a caller's shell may set, which would change what the
/// spawned nodes do behind the bench's back.
const INHERITED_ENV: [&str; 7] =
    ["DATABASE_URL", "REDIS_URL", "JWT_SECRET", "CORS_ORIGIN", "MESSAGE_MAX_LEN", "PORT", "RUST_LOG"];

/// One server: where it listens, and its process if known.
pub struct Node {
    /// `host:port`, for TCP connections and the `Host` header.
    pub addr: String,
    pub pid: Option<i32>,
    child: Option<Child>,
    log: Option<PathBuf>,
}

/// All servers of a run, and what must be cleaned up after it.
pub struct Targets {
    pub nodes: Vec<Node>,
    /// What the run measured against, for the report: `sqlite`, `postgres`, or `external`.
    pub database: String,
    pub redis: bool,
    /// `--server-pid`: the processes behind `--url` nodes, for CPU and RSS figures.
    external_pids: Vec<i32>,
    tmp: Option<PathBuf>,
    /// The admin URL, the scratch database's name and its URL.
    scratch_db: Option<(String, String, String)>,
}

impl Targets {
    /// `VACUUM ANALYZE` of the run's scratch PostgreSQL database, if it has one: what autovacuum
    /// would have done after a preload on a real server (a server whose autovacuum is off, as
    /// on some CI machines, would otherwise measure a database no deployment runs). Returns the
    /// seconds it took, or `None` without a scratch database.
    pub async fn vacuum_analyze(&self) -> anyhow::Result<Option<f64>> {
        let Some((_, _, scratch)) = &self.scratch_db else { return Ok(None) };
        let started = std::time::Instant::now();
        let mut conn = PgConnection::connect(scratch).await.context("connecting to the scratch database")?;
        sqlx::query("VACUUM ANALYZE").execute(&mut conn).await.context("VACUUM ANALYZE")?;
        let _ = conn.close().await;
        Ok(Some(started.elapsed().as_secs_f64()))
    }

    /// Writes the preload left in memory to the disk: a `CHECKPOINT` of the scratch PostgreSQL
    /// database, if there is one, then `sync()`. A preload dirties hundreds of megabytes of page
    /// cache (data files, indexes); left alone, the kernel writes them back half a minute later,
    /// in the middle of a measured window, and commits' fsyncs wait behind that for 100–300 ms.
    /// A server whose million messages came in over days has no such backlog. Returns the
    /// seconds it took.
    pub async fn settle_disk(&self) -> anyhow::Result<f64> {
        let started = std::time::Instant::now();
        if let Some((_, _, scratch)) = &self.scratch_db {
            let mut conn = PgConnection::connect(scratch).await.context("connecting to the scratch database")?;
            sqlx::query("CHECKPOINT").execute(&mut conn).await.context("CHECKPOINT")?;
            let _ = conn.close().await;
        }
        tokio::task::spawn_blocking(nix::unistd::sync).await.context("sync() panicked")?;
        Ok(started.elapsed().as_secs_f64())
    }

    /// Running nodes, or `spawn_default` new ones when neither `--url` nor `--spawn` is given.
    pub async fn start(args: &TargetArgs, spawn_default: usize) -> anyhow::Result<Self> {
        if !args.urls.is_empty() {
            if args.spawn.is_some() {
                bail!("give either --url (running nodes) or --spawn N (the bench starts them), not both");
            }
            return external(args);
        }
        let count = args.spawn.unwrap_or(spawn_default);
        if count == 0 {
            bail!("--spawn must be at least 1");
        }
        let mut targets = Self {
            nodes: Vec::new(),
            database: String::new(),
            redis: false,
            external_pids: Vec::new(),
            tmp: None,
            scratch_db: None,
        };
        // Whatever fails half-way, the nodes and the scratch database already made are cleaned up.
        match targets.spawn(args, count).await {
            Ok(()) => Ok(targets),
            Err(e) => {
                targets.stop().await;
                Err(e)
            }
        }
    }

    /// The floor of `--floor`: `confab-bench floor-server` (this executable) started on a free
    /// port of 127.0.0.1, as a process of its own so that its CPU time can be read apart from
    /// the generator's. Stopped like a spawned node.
    pub async fn floor() -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new(&exe)
            .args(["floor-server", "--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {} floor-server", exe.display()))?;
        let pid = i32::try_from(child.id()).ok();
        let stdout = child.stdout.take().context("the floor's stdout is piped")?;
        let first_line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).map(|_| line)
        });
        let addr = match tokio::time::timeout(READY_TIMEOUT, first_line).await {
            Ok(Ok(Ok(line))) => line.trim().strip_prefix(crate::floor::LISTENING).map(str::to_owned),
            _ => None,
        };
        let node = Node { addr: addr.clone().unwrap_or_default(), pid, child: Some(child), log: None };
        let targets = Self {
            nodes: vec![node],
            database: "floor".into(),
            redis: false,
            external_pids: Vec::new(),
            tmp: None,
            scratch_db: None,
        };
        if addr.is_none() {
            // Dropping the targets kills it.
            bail!("the floor server did not say where it listens");
        }
        Ok(targets)
    }

    /// Server pids known for CPU and RSS figures.
    pub fn pids(&self) -> Vec<i32> {
        self.nodes.iter().filter_map(|n| n.pid).chain(self.external_pids.iter().copied()).collect()
    }

    async fn spawn(&mut self, args: &TargetArgs, count: usize) -> anyhow::Result<()> {
        let bin = match &args.confab_bin {
            Some(bin) => bin.clone(),
            None => std::env::current_exe()?.with_file_name("confab"),
        };
        if !bin.exists() {
            bail!("no confab binary at {}: build it (cargo build --release) or pass --confab-bin", bin.display());
        }
        let run = uuid::Uuid::new_v4().simple().to_string();
        let tmp = std::env::temp_dir().join(format!("confab-bench-{}", &run[..12]));
        std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        self.tmp = Some(tmp.clone());
        let config = tmp.join("bench.toml");
        std::fs::write(&config, "# confab-bench: everything comes from the environment\n")?;

        let database_url = match args.database_url.as_deref() {
            None if count > 1 => {
                bail!(
                    "--spawn {count} needs a shared database: pass --database-url postgres://USER@HOST/DB (an admin URL; the bench creates and drops a scratch database)"
                )
            }
            None => {
                self.database = "sqlite".into();
                format!("sqlite://{}", tmp.join("bench.db").display())
            }
            Some(url) if url.starts_with("postgres") => {
                self.database = "postgres".into();
                let (scratch, name) = create_scratch_database(url).await?;
                self.scratch_db = Some((url.to_owned(), name, scratch.clone()));
                scratch
            }
            Some(url) if count > 1 => bail!("--spawn {count} needs PostgreSQL, not {url}"),
            Some(url) => {
                self.database = "sqlite".into();
                url.to_owned()
            }
        };
        if count > 1 && args.redis_url.is_none() {
            bail!("--spawn {count} needs Redis for fan-out between nodes: pass --redis-url redis://127.0.0.1:6379");
        }
        self.redis = args.redis_url.is_some();
        // One signing key for all nodes, so a token from one is good on every other.
        let jwt_secret = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
        for i in 0..count {
            let port = free_port()?;
            let addr = format!("127.0.0.1:{port}");
            let log = tmp.join(format!("node-{i}.log"));
            let log_file = std::fs::File::create(&log)?;
            let mut cmd = Command::new(&bin);
            cmd.arg("--config").arg(&config).args(["serve", "--listen", &addr]);
            cmd.current_dir(&tmp).stdin(Stdio::null()).stdout(log_file.try_clone()?).stderr(log_file);
            for (key, _) in std::env::vars_os() {
                let key = key.to_string_lossy();
                if key.starts_with("CONFAB_") || INHERITED_ENV.contains(&key.as_ref()) {
                    cmd.env_remove(key.as_ref());
                }
            }
            cmd.envs([
                ("CONFAB_DATABASE__URL", database_url.as_str()),
                ("CONFAB_AUTH__JWT_SECRET", jwt_secret.as_str()),
                ("CONFAB_LIMITS__AUTH_PER_MINUTE", "0"),
                ("CONFAB_LIMITS__MESSAGES_PER_SECOND", "0"),
                ("CONFAB_LIMITS__JOINS_PER_SECOND", "0"),
                ("CONFAB_WS__MAX_SESSIONS_PER_USER", "0"),
                ("CONFAB_HTTP__MAX_CONNECTIONS_PER_IP", "0"),
                ("CONFAB_AUTH__ARGON2__MEMORY_KIB", "64"),
                ("CONFAB_AUTH__ARGON2__ITERATIONS", "1"),
                // A session ends when its token expires (15 min by default); the joins of a
                // big `rooms` run can take longer than that.
                ("CONFAB_AUTH__ACCESS_TOKEN_TTL", "2h"),
                ("CONFAB_LOG_LEVEL", "warn"),
                ("CONFAB_SHUTDOWN__GRACE", "2s"),
                ("NO_COLOR", "1"),
                // As the systemd unit and the image deploy it (see there).
                ("MALLOC_ARENA_MAX", "2"),
            ]);
            cmd.env("CONFAB_NODE_ID", format!("bench-{i}"));
            if let Some(redis) = &args.redis_url {
                cmd.env("CONFAB_REDIS__URL", redis).env("CONFAB_REDIS__PREFIX", format!("confab-bench-{}", &run[..12]));
            }
            for pair in &args.node_env {
                let (key, value) = pair.split_once('=').with_context(|| format!("--node-env {pair}: use KEY=VALUE"))?;
                cmd.env(key, value);
            }
            let child = cmd.spawn().with_context(|| format!("starting {}", bin.display()))?;
            let pid = i32::try_from(child.id()).ok();
            self.nodes.push(Node { addr, pid, child: Some(child), log: Some(log) });
            // The first node migrates the database; the others start once it is ready.
            let node = self.nodes.last_mut().expect("just pushed");
            wait_ready(node).await?;
        }
        Ok(())
    }

    /// Stops spawned nodes (SIGTERM, then SIGKILL), drops the scratch database and the temp dir.
    pub async fn stop(&mut self) {
        for node in &mut self.nodes {
            let Some(mut child) = node.child.take() else { continue };
            if let Some(pid) = node.pid {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
            let status = wait_exit(&mut child, STOP_TIMEOUT).await;
            if status.is_none() {
                eprintln!("confab-bench: node {} did not stop within {STOP_TIMEOUT:?}; killing it", node.addr);
                let _ = child.kill();
                let _ = child.wait();
            }
            if !status.is_some_and(|s| s.success()) {
                eprintln!("confab-bench: node {} exited with {status:?}", node.addr);
                if let Some(log) = &node.log {
                    eprint!("{}", log_tail(log));
                }
            }
        }
        if let Some((admin, name, _)) = self.scratch_db.take()
            && let Err(e) = drop_scratch_database(&admin, &name).await
        {
            eprintln!("confab-bench: could not drop scratch database {name}: {e:#}");
        }
        if let Some(tmp) = self.tmp.take() {
            let _ = std::fs::remove_dir_all(tmp);
        }
    }
}

/// Should the bench fail or panic before [`Targets::stop`], its nodes do not outlive it.
impl Drop for Targets {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Waits up to `timeout` for `child` to exit (std's `Child` has no async wait).
async fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if started.elapsed() < timeout => tokio::time::sleep(Duration::from_millis(20)).await,
            _ => return None,
        }
    }
}

fn external(args: &TargetArgs) -> anyhow::Result<Targets> {
    let mut nodes = Vec::new();
    for raw in &args.urls {
        let url = url::Url::parse(raw).with_context(|| format!("--url {raw}: not a URL like http://127.0.0.1:4000"))?;
        if url.scheme() != "http" {
            bail!("--url {raw}: only http:// is supported (terminate TLS elsewhere)");
        }
        let host = url.host_str().with_context(|| format!("--url {raw}: no host"))?;
        let port = url.port_or_known_default().unwrap_or(80);
        nodes.push(Node { addr: format!("{host}:{port}"), pid: None, child: None, log: None });
    }
    Ok(Targets {
        nodes,
        external_pids: args.server_pids.clone(),
        database: "external".into(),
        redis: false,
        tmp: None,
        scratch_db: None,
    })
}

/// A port that was free a moment ago (the node binds it right after).
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn wait_ready(node: &mut Node) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut http = HttpConn::new(&node.addr);
    loop {
        if let Some(child) = &mut node.child
            && let Some(status) = child.try_wait()?
        {
            let tail = node.log.as_deref().map(log_tail).unwrap_or_default();
            bail!("node {} exited with {status} before it was ready:\n{tail}", node.addr);
        }
        if let Ok(resp) = http.request("GET", "/ready", None).await
            && resp.status == 200
        {
            return Ok(());
        }
        if started.elapsed() > READY_TIMEOUT {
            bail!("node {} not ready after {READY_TIMEOUT:?}", node.addr);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(20)..].join("\n");
    if tail.is_empty() { String::new() } else { format!("--- {} (last lines) ---\n{tail}\n", path.display()) }
}

/// Creates `confab_bench_<random>` next to the admin URL's database; returns its URL and name.
async fn create_scratch_database(admin: &str) -> anyhow::Result<(String, String)> {
    let name = format!("confab_bench_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let mut conn = PgConnection::connect(admin).await.context("connecting to --database-url")?;
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut conn)
        .await
        .context("CREATE DATABASE (does the --database-url role have CREATEDB?)")?;
    let _ = conn.close().await;
    let mut url = url::Url::parse(admin)?;
    url.set_path(&format!("/{name}"));
    Ok((url.to_string(), name))
}

async fn drop_scratch_database(admin: &str, name: &str) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect(admin).await?;
    // FORCE: a node killed after the timeout may have left pooled connections behind.
    sqlx::query(AssertSqlSafe(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))).execute(&mut conn).await?;
    conn.close().await?;
    Ok(())
}
