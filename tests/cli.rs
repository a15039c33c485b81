//! The `confab` binary as an operator runs it: in an empty directory, with an environment that
//! holds only what the test sets. Covers `--help`, `migrate`, `create-user`, `config` (layering,
//! redaction, errors) and `serve` until SIGTERM.
//!
//! Every wait on the child process is bounded; readiness is polled over HTTP with a deadline.

mod common;

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tempfile::TempDir;

use crate::common::{Backend, SERVICE_TIMEOUT, TestDb, both_backends};

/// Upper bound on a one-shot command (`migrate`, `config`, …).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Upper bound on `serve` becoming healthy.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `serve` may take to exit after SIGTERM with nothing in flight. The configured grace
/// period is longer, so a server that waits it out fails this.
const PROMPT_EXIT: Duration = Duration::from_secs(5);
const PASSWORD: &str = "a long enough password";

/// `confab` with a cleared environment, run from `dir`, with cheap password hashing.
fn confab(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_confab"));
    cmd.env_clear()
        .current_dir(dir)
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir)
        // A panic would print a backtrace; the error tests check that none does.
        .env("RUST_BACKTRACE", "1")
        .env("CONFAB_AUTH__ARGON2__MEMORY_KIB", "64")
        .env("CONFAB_AUTH__ARGON2__ITERATIONS", "1")
        .stdin(Stdio::null());
    cmd
}

/// Runs `cmd` to completion (bounded), feeding `stdin` if given.
fn run(mut cmd: Command, stdin: Option<&str>) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    if stdin.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd.spawn().expect("spawn confab");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin piped");
        pipe.write_all(input.as_bytes()).expect("write stdin");
    }
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let Ok(output) = rx.recv_timeout(COMMAND_TIMEOUT) else {
        kill(pid, "-KILL");
        panic!("confab did not finish within {COMMAND_TIMEOUT:?}: {cmd:?}");
    };
    output.expect("wait for confab")
}

fn kill(pid: u32, signal: &str) {
    let status = Command::new("kill").arg(signal).arg(pid.to_string()).status().expect("run kill");
    assert!(status.success(), "kill {signal} {pid} failed");
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn assert_success(o: &Output) {
    assert!(o.status.success(), "exit {:?}\nstdout: {}\nstderr: {}", o.status, stdout(o), stderr(o));
}

fn temp_dir() -> TempDir {
    tempfile::Builder::new().prefix("confab-cli-").tempdir().expect("temp dir")
}

// ---------------------------------------------------------------------------------------------
// --help

#[test]
fn every_subcommand_has_help() {
    let dir = temp_dir();
    let subcommands: [&[&str]; 20] = [
        &[],
        &["serve"],
        &["migrate"],
        &["create-user"],
        &["config"],
        &["user"],
        &["user", "list"],
        &["user", "disable"],
        &["user", "enable"],
        &["user", "set-password"],
        &["user", "promote"],
        &["user", "demote"],
        &["user", "sessions"],
        &["invite"],
        &["invite", "create"],
        &["audit"],
        &["audit", "list"],
        &["healthcheck"],
        &["backup"],
        &["restore"],
    ];
    for args in subcommands {
        let mut cmd = confab(dir.path());
        cmd.args(args).arg("--help");
        let out = run(cmd, None);
        assert_success(&out);
        let usage = ["Usage: confab"].into_iter().chain(args.iter().copied()).collect::<Vec<_>>().join(" ");
        assert!(stdout(&out).contains(&usage), "{args:?}: no {usage:?} in\n{}", stdout(&out));
    }
    let mut cmd = confab(dir.path());
    cmd.arg("--help");
    let top = stdout(&run(cmd, None));
    for name in
        ["serve", "migrate", "create-user", "config", "user", "invite", "audit", "healthcheck", "backup", "restore"]
    {
        assert!(top.contains(name), "top-level help does not list {name}:\n{top}");
    }
    let mut cmd = confab(dir.path());
    cmd.arg("--version");
    let out = run(cmd, None);
    assert_success(&out);
    assert!(stdout(&out).contains(env!("CARGO_PKG_VERSION")), "{}", stdout(&out));
}

#[test]
fn an_unknown_subcommand_fails_with_usage() {
    let dir = temp_dir();
    let mut cmd = confab(dir.path());
    cmd.arg("frobnicate");
    let out = run(cmd, None);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("frobnicate"), "{}", stderr(&out));
}

// ---------------------------------------------------------------------------------------------
// migrate

both_backends!(migrate_is_idempotent);

/// The `N` of "database is up to date (N migration(s) applied)".
fn applied(out: &Output) -> usize {
    let text = stdout(out);
    let n = text
        .split('(')
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no migration count in {text:?}"));
    assert!(text.contains("up to date"), "{text}");
    n
}

async fn migrate_is_idempotent(backend: Backend) {
    let dir = temp_dir();
    let db = TestDb::create(backend).await;
    let migrate = || {
        let mut cmd = confab(dir.path());
        cmd.arg("migrate").env("CONFAB_DATABASE__URL", db.url());
        run(cmd, None)
    };
    let first = migrate();
    assert_success(&first);
    assert!(applied(&first) >= 1, "{}", stdout(&first));
    let second = migrate();
    assert_success(&second);
    assert_eq!(applied(&second), 0, "{}", stdout(&second));
    if backend == Backend::Sqlite {
        let path = db.url().strip_prefix("sqlite://").expect("sqlite URL");
        assert!(Path::new(path).exists(), "migrate creates the SQLite file");
    }
}

// ---------------------------------------------------------------------------------------------
// create-user and user …

fn create_user(dir: &Path, email: &str, password: Option<&str>) -> Output {
    let mut cmd = confab(dir);
    cmd.args(["create-user", "--email", email]);
    if password.is_some() {
        cmd.arg("--password-stdin");
    }
    run(cmd, password.map(|p| format!("{p}\n")).as_deref())
}

#[test]
fn create_user_reads_the_password_from_stdin_and_refuses_duplicates() {
    let dir = temp_dir();
    let out = create_user(dir.path(), "X@Y.zz", Some(PASSWORD));
    assert_success(&out);
    assert!(stdout(&out).contains("x@y.zz"), "{}", stdout(&out));
    assert!(!stdout(&out).contains(PASSWORD) && !stderr(&out).contains(PASSWORD));
    // The default database, relative to the working directory.
    assert!(dir.path().join("data/confab.db").exists());

    let again = create_user(dir.path(), "x@y.zz", Some("another long password"));
    assert_eq!(again.status.code(), Some(1), "{}", stderr(&again));
    assert!(stderr(&again).contains("already exists") && stderr(&again).contains("x@y.zz"), "{}", stderr(&again));

    let short = create_user(dir.path(), "short@y.zz", Some("short"));
    assert!(!short.status.success());
    assert!(stderr(&short).contains("at least 8"), "{}", stderr(&short));

    let bad_email = create_user(dir.path(), "not-an-email", Some(PASSWORD));
    assert!(!bad_email.status.success());
    assert!(stderr(&bad_email).contains("--email"), "{}", stderr(&bad_email));

    let mut list = confab(dir.path());
    list.args(["user", "list"]);
    let listed = run(list, None);
    assert_success(&listed);
    let lines: Vec<String> = stdout(&listed).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("x@y.zz") && lines[0].ends_with("active\tuser"), "{lines:?}");
}

#[test]
fn create_user_without_a_terminal_asks_for_password_stdin() {
    let dir = temp_dir();
    let out = create_user(dir.path(), "x@y.zz", None);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("--password-stdin"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

#[test]
fn users_can_be_disabled_and_enabled() {
    let dir = temp_dir();
    assert_success(&create_user(dir.path(), "zoe@y.zz", Some(PASSWORD)));
    let user = |args: &[&str]| {
        let mut cmd = confab(dir.path());
        cmd.arg("user").args(args);
        run(cmd, None)
    };
    assert_success(&user(&["disable", "--email", "Zoe@y.zz"]));
    assert!(stdout(&user(&["list"])).trim_end().ends_with("disabled\tuser"));
    assert_success(&user(&["enable", "--email", "zoe@y.zz"]));
    assert!(stdout(&user(&["list"])).trim_end().ends_with("active\tuser"));
    let missing = user(&["disable", "--email", "nobody@y.zz"]);
    assert!(!missing.status.success());
    assert!(stderr(&missing).contains("nobody@y.zz"), "{}", stderr(&missing));
}

/// Run from the wrong directory, an admin command refuses instead of making a new, empty
/// database and reporting success on it; pointed at the server's settings with `--env-file`
/// (as systemd's `EnvironmentFile=`), it finds the server's data, and lists it as JSON.
#[test]
fn admin_commands_find_the_servers_database_or_refuse() {
    let server_dir = temp_dir();
    assert_success(&create_user(server_dir.path(), "ops@y.zz", Some(PASSWORD)));
    let elsewhere = temp_dir();
    for args in
        [&["user", "list"][..], &["user", "disable", "--email", "ops@y.zz"], &["invite", "create"], &["audit", "list"]]
    {
        let mut cmd = confab(elsewhere.path());
        cmd.args(args);
        let out = run(cmd, None);
        assert!(!out.status.success(), "{args:?} succeeded in an empty directory");
        assert!(stderr(&out).contains("no database at"), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("--config"), "{args:?}: {}", stderr(&out));
    }
    assert!(!elsewhere.path().join("data").exists(), "an admin command created a database");

    let env_file = elsewhere.path().join("confab.env");
    let db = server_dir.path().join("data/confab.db");
    std::fs::write(&env_file, format!("# the server's settings\nCONFAB_DATABASE__URL=sqlite://{}\n", db.display()))
        .expect("write env file");
    let mut cmd = confab(elsewhere.path());
    cmd.arg("--env-file").arg(&env_file).args(["user", "list", "--json"]);
    let out = run(cmd, None);
    assert_success(&out);
    let users: Vec<Value> =
        stdout(&out).lines().map(|l| serde_json::from_str(l).expect("one JSON object per line")).collect();
    assert_eq!(users.len(), 1, "{users:?}");
    assert_eq!(
        (&users[0]["email"], &users[0]["state"], &users[0]["role"]),
        (&json!("ops@y.zz"), &json!("active"), &json!("user"))
    );
    // The command line's environment wins over the file, as over the configuration file.
    let mut cmd = confab(elsewhere.path());
    cmd.arg("--env-file").arg(&env_file).env("CONFAB_DATABASE__URL", "sqlite://nowhere/x.db").args(["user", "list"]);
    assert!(stderr(&run(cmd, None)).contains("no database at"));
    let mut cmd = confab(elsewhere.path());
    cmd.args(["--env-file", "missing.env", "user", "list"]);
    let out = run(cmd, None);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("missing.env"), "{}", stderr(&out));
}

#[test]
fn administrators_are_made_at_creation_or_by_promotion_and_unmade_by_demotion() {
    let dir = temp_dir();
    let user = |args: &[&str]| {
        let mut cmd = confab(dir.path());
        cmd.args(args);
        run(cmd, None)
    };
    let mut cmd = confab(dir.path());
    cmd.args(["create-user", "--email", "root@y.zz", "--admin", "--password-stdin"]);
    let created = run(cmd, Some(&format!("{PASSWORD}\n")));
    assert_success(&created);
    assert!(stdout(&created).contains("created administrator root@y.zz"), "{}", stdout(&created));
    assert_success(&create_user(dir.path(), "amy@y.zz", Some(PASSWORD)));
    let roles = || -> Vec<String> {
        stdout(&user(&["user", "list"]))
            .lines()
            .map(|l| l.split('\t').map(str::to_owned).collect::<Vec<_>>().join(" "))
            .collect()
    };
    let listed = roles();
    assert!(listed.iter().any(|l| l.contains("root@y.zz") && l.ends_with("admin")), "{listed:?}");
    assert!(listed.iter().any(|l| l.contains("amy@y.zz") && l.ends_with("user")), "{listed:?}");
    assert_success(&user(&["user", "promote", "--email", "Amy@y.zz"]));
    assert_success(&user(&["user", "demote", "--email", "root@y.zz"]));
    let listed = roles();
    assert!(listed.iter().any(|l| l.contains("amy@y.zz") && l.ends_with("admin")), "{listed:?}");
    assert!(listed.iter().any(|l| l.contains("root@y.zz") && l.ends_with("user")), "{listed:?}");
    let missing = user(&["user", "promote", "--email", "nobody@y.zz"]);
    assert!(!missing.status.success());
    assert!(stderr(&missing).contains("nobody@y.zz"), "{}", stderr(&missing));
}

// ---------------------------------------------------------------------------------------------
// config

/// `confab config` in `dir` with `env`, parsed.
fn config_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> toml::Value {
    let mut cmd = confab(dir);
    cmd.args(args).arg("config").envs(env.iter().copied());
    let out = run(cmd, None);
    assert_success(&out);
    toml::from_str(&stdout(&out)).unwrap_or_else(|e| panic!("`confab config` is not TOML ({e}):\n{}", stdout(&out)))
}

fn max_len(config: &toml::Value) -> i64 {
    config["chat"]["message_max_len"].as_integer().expect("chat.message_max_len")
}

#[test]
fn config_prints_toml_with_secrets_redacted() {
    let dir = temp_dir();
    let secret = "s3cr3t-0123456789abcdefghijklmnopqrstuvw";
    assert_eq!(secret.len(), 40);
    let mut cmd = confab(dir.path());
    cmd.arg("config")
        .env("CONFAB_AUTH__JWT_SECRET", secret)
        .env("DATABASE_URL", "postgres://u:hunter2@h/db")
        .env("REDIS_URL", "redis://:redispw@r:6379/0");
    let out = run(cmd, None);
    assert_success(&out);
    let text = stdout(&out);
    for leaked in [secret, "hunter2", "redispw"] {
        assert!(!text.contains(leaked), "{leaked} leaked:\n{text}");
        assert!(!stderr(&out).contains(leaked), "{leaked} leaked on stderr");
    }
    assert!(text.contains("***"), "{text}");
    let config: toml::Value = toml::from_str(&text).expect("TOML");
    assert_eq!(config["auth"]["jwt_secret"].as_str(), Some("***"));
    assert_eq!(config["database"]["url"].as_str(), Some("postgres://u:***@h/db"));
    // Non-secret keys are all there, with their defaults.
    assert_eq!(config["listen"].as_str(), Some("0.0.0.0:4000"));
    assert_eq!(max_len(&config), 2000);
    assert_eq!(config["limits"]["auth_per_minute"].as_integer(), Some(20));
}

#[test]
fn config_layers_file_then_legacy_env_then_confab_env() {
    let dir = temp_dir();
    assert_eq!(max_len(&config_in(dir.path(), &[], &[])), 2000, "built-in default");

    std::fs::write(dir.path().join("confab.toml"), "listen = \"127.0.0.1:4100\"\n[chat]\nmessage_max_len = 111\n")
        .expect("write confab.toml");
    let from_file = config_in(dir.path(), &[], &[]);
    assert_eq!(max_len(&from_file), 111, "./confab.toml is read");
    assert_eq!(from_file["listen"].as_str(), Some("127.0.0.1:4100"));

    let env = config_in(dir.path(), &[], &[("CONFAB_CHAT__MESSAGE_MAX_LEN", "222")]);
    assert_eq!(max_len(&env), 222, "CONFAB_* beats the file");
    let legacy = config_in(dir.path(), &[], &[("MESSAGE_MAX_LEN", "333")]);
    assert_eq!(max_len(&legacy), 333, "the original platform's variable beats the file");
    let both = config_in(dir.path(), &[], &[("MESSAGE_MAX_LEN", "333"), ("CONFAB_CHAT__MESSAGE_MAX_LEN", "222")]);
    assert_eq!(max_len(&both), 222, "CONFAB_* beats the legacy variable");

    // PORT sets only the port; CONFAB_LISTEN wins over it.
    let port = config_in(dir.path(), &[], &[("PORT", "4321")]);
    assert_eq!(port["listen"].as_str(), Some("127.0.0.1:4321"));
    let listen = config_in(dir.path(), &[], &[("PORT", "4321"), ("CONFAB_LISTEN", "127.0.0.1:5000")]);
    assert_eq!(listen["listen"].as_str(), Some("127.0.0.1:5000"));

    // An explicit file replaces ./confab.toml, by flag or by CONFAB_CONFIG.
    let elsewhere = dir.path().join("etc");
    std::fs::create_dir(&elsewhere).expect("mkdir");
    let other = elsewhere.join("other.toml");
    std::fs::write(&other, "[chat]\nmessage_max_len = 444\n").expect("write other.toml");
    let other_str = other.to_str().expect("utf-8 path");
    let flag = config_in(dir.path(), &["--config", other_str], &[]);
    assert_eq!(max_len(&flag), 444);
    assert_eq!(flag["listen"].as_str(), Some("0.0.0.0:4000"), "./confab.toml is not read as well");
    assert_eq!(max_len(&config_in(dir.path(), &["-c", other_str], &[])), 444);
    assert_eq!(max_len(&config_in(dir.path(), &[], &[("CONFAB_CONFIG", other_str)])), 444);
    let flag_env = config_in(dir.path(), &["--config", other_str], &[("CONFAB_CHAT__MESSAGE_MAX_LEN", "555")]);
    assert_eq!(max_len(&flag_env), 555, "the environment still beats an explicit file");
}

/// Runs `confab <args>` expecting a configuration error: exit code 2 and one line on stderr
/// that names `key`, with no panic or backtrace. Returns the line.
#[track_caller]
fn expect_config_error(dir: &Path, args: &[&str], env: &[(&str, &str)], key: &str) -> String {
    let mut cmd = confab(dir);
    cmd.args(args).envs(env.iter().copied());
    let out = run(cmd, None);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: exit {:?}, stderr: {err}", out.status);
    assert_eq!(err.trim_end().lines().count(), 1, "{env:?}: not one line:\n{err}");
    // figment reports environment keys in upper case (`CHAT.MESSAGE_MAX_LEN`).
    assert!(err.to_lowercase().contains(&key.to_lowercase()), "{env:?}: {key:?} not named in: {err}");
    let lower = err.to_lowercase();
    assert!(!lower.contains("panicked") && !lower.contains("backtrace"), "{err}");
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
    err
}

#[test]
fn bad_configuration_fails_with_exit_2_and_one_line_naming_the_key() {
    let dir = temp_dir();
    let path = dir.path();
    for args in [&["config"][..], &["serve"], &["migrate"]] {
        expect_config_error(path, args, &[("CONFAB_DATABASE__URL", "mysql://x")], "database.url");
    }
    expect_config_error(path, &["config"], &[("DATABASE_URL", "mysql://x")], "database.url");
    expect_config_error(path, &["config"], &[("CONFAB_CHAT__MESSAGE_MAX_LEN", "0")], "chat.message_max_len");
    expect_config_error(path, &["config"], &[("CONFAB_CHAT__MESSAGE_MAX_LEN", "many")], "message_max_len");
    expect_config_error(path, &["serve"], &[("CONFAB_LISTEN", "nonsense")], "listen");
    expect_config_error(path, &["config"], &[("PORT", "http")], "PORT");
    expect_config_error(path, &["config"], &[("CONFAB_AUTH__JWT_SECRET", "too-short")], "auth.jwt_secret");
    expect_config_error(path, &["config"], &[("CONFAB_HTTP__CORS_ORIGINS", "*")], "http.cors_origins");
    expect_config_error(path, &["config"], &[("CONFAB_AUTH__ACCESS_TOKEN_TTL", "soon")], "access_token_ttl");
    expect_config_error(path, &["config"], &[("CONFAB_NO_SUCH_KEY", "1")], "no_such_key");

    let missing = expect_config_error(path, &["--config", "missing.toml", "config"], &[], "missing.toml");
    assert!(missing.contains("no such file"), "{missing}");

    std::fs::write(path.join("confab.toml"), "[chat]\nmax_len = 5\n").expect("write");
    expect_config_error(path, &["config"], &[], "max_len");
    std::fs::write(path.join("confab.toml"), "[chat\nmessage_max_len = 5\n").expect("write");
    expect_config_error(path, &["config"], &[], "confab.toml");
}

// ---------------------------------------------------------------------------------------------
// serve

/// A port that was free a moment ago (the server binds it itself; a race with another process
/// taking it in between is possible but not likely on a test machine).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A running `confab serve`, killed on drop if the test did not stop it.
struct Server {
    child: Option<Child>,
    pid: u32,
    addr: String,
    log: PathBuf,
}

impl Server {
    /// `confab serve` on a free port, configured by `CONFAB_LISTEN`.
    fn start(dir: &Path, env: &[(&str, &str)]) -> Self {
        let addr = format!("127.0.0.1:{}", free_port());
        let mut cmd = confab(dir);
        cmd.arg("serve").env("CONFAB_LISTEN", &addr).envs(env.iter().copied());
        Self::spawn(cmd, dir, addr)
    }

    /// Starts `cmd` (a `serve` that will listen on `addr`), logging to a file in `dir`.
    fn spawn(mut cmd: Command, dir: &Path, addr: String) -> Self {
        let log = dir.join("serve.log");
        let file = std::fs::File::create(&log).expect("log file");
        // Longer than PROMPT_EXIT, so waiting it out is caught.
        cmd.env("CONFAB_SHUTDOWN__GRACE", "8s").stdout(file.try_clone().expect("dup log")).stderr(file);
        let child = cmd.spawn().expect("spawn confab serve");
        Self { pid: child.id(), child: Some(child), addr, log }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls `/health` until it answers 200, the process dies, or the deadline passes.
    async fn wait_healthy(&mut self, client: &reqwest::Client) {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Ok(resp) = client.get(self.url("/health")).send().await
                && resp.status() == reqwest::StatusCode::OK
            {
                return;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().expect("try_wait")) {
                panic!("confab serve exited early with {status}:\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "confab serve not healthy within {STARTUP_TIMEOUT:?}:\n{}", self.log());
            // The pause between polls, not a synchronisation: the loop is bounded by `deadline`.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit.
    fn terminate(&mut self) -> (ExitStatus, Duration) {
        let child = self.child.take().expect("still running");
        let started = Instant::now();
        kill(self.pid, "-TERM");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut child = child;
            let _ = tx.send(child.wait());
        });
        let Ok(status) = rx.recv_timeout(SERVICE_TIMEOUT) else {
            kill(self.pid, "-KILL");
            panic!("confab serve ignored SIGTERM for {SERVICE_TIMEOUT:?}:\n{}", self.log());
        };
        (status.expect("wait"), started.elapsed())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

both_backends!(
    a_user_created_on_the_command_line_signs_in_to_serve_until_sigterm,
    an_invitation_from_the_command_line_lets_one_person_register_and_the_audit_log_records_it,
);

async fn an_invitation_from_the_command_line_lets_one_person_register_and_the_audit_log_records_it(backend: Backend) {
    let dir = temp_dir();
    let db = TestDb::create(backend).await;
    let env = [("CONFAB_DATABASE__URL", db.url()), ("CONFAB_AUTH__REGISTRATION", "invite")];
    let cli = |args: &[&str]| {
        let mut cmd = confab(dir.path());
        cmd.args(args).envs(env);
        run(cmd, None)
    };
    // A new server's database: admin commands never create one themselves.
    assert_success(&cli(&["migrate"]));
    let made = cli(&["invite", "create", "--ttl", "1h"]);
    assert_success(&made);
    let code = stdout(&made).trim().to_owned();
    assert!(code.len() >= 22 && !code.contains(char::is_whitespace), "{code:?}");

    let mut server = Server::start(dir.path(), &env);
    let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build().expect("client");
    server.wait_healthy(&client).await;
    let register = |email: &str, code: Option<&str>| {
        let mut body = json!({ "email": email, "password": PASSWORD });
        if let Some(code) = code {
            body["inviteCode"] = json!(code);
        }
        client.post(server.url("/api/auth/register")).json(&body).send()
    };
    let refused = register("new@example.com", None).await.expect("register");
    assert_eq!(refused.status(), reqwest::StatusCode::FORBIDDEN);
    let joined = register("new@example.com", Some(&code)).await.expect("register");
    assert_eq!(joined.status(), reqwest::StatusCode::OK);
    let spent = register("other@example.com", Some(&code)).await.expect("register");
    assert_eq!(spent.status(), reqwest::StatusCode::FORBIDDEN, "single use");
    drop(server);

    assert_success(&cli(&["user", "disable", "--email", "new@example.com"]));
    let listed = cli(&["audit", "list", "--json"]);
    assert_success(&listed);
    let entries: Vec<Value> =
        stdout(&listed).lines().map(|l| serde_json::from_str(l).expect("one JSON object a line")).collect();
    let actions: Vec<(&str, &str, Option<&str>)> = entries
        .iter()
        .map(|e| (e["action"].as_str().expect("action"), e["actor"].as_str().expect("actor"), e["target"].as_str()))
        .collect();
    assert_eq!(
        actions,
        [("user.disable", "cli", Some("new@example.com")), ("invite.create", "cli", None)],
        "newest first: {entries:?}"
    );
    assert!(entries.iter().all(|e| e["source"].as_str().is_some_and(|s| s.starts_with("cli:"))), "{entries:?}");
    assert!(!stdout(&listed).contains(&code), "the code itself is never recorded");
}

async fn a_user_created_on_the_command_line_signs_in_to_serve_until_sigterm(backend: Backend) {
    let dir = temp_dir();
    let db = TestDb::create(backend).await;
    let env = [("CONFAB_DATABASE__URL", db.url())];

    let mut cmd = confab(dir.path());
    cmd.args(["create-user", "--email", "ops@example.com", "--password-stdin"]).envs(env);
    assert_success(&run(cmd, Some(&format!("{PASSWORD}\n"))));

    let mut server = Server::start(dir.path(), &env);
    let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build().expect("client");
    server.wait_healthy(&client).await;

    let ready = client.get(server.url("/ready")).send().await.expect("ready");
    assert_eq!(ready.status(), reqwest::StatusCode::OK);
    let ready: Value = ready.json().await.expect("json");
    assert_eq!(ready["database"], "up", "{ready}");

    let login = client
        .post(server.url("/api/auth/login"))
        .json(&json!({ "email": "ops@example.com", "password": PASSWORD }))
        .send()
        .await
        .expect("login");
    assert_eq!(login.status(), reqwest::StatusCode::OK);
    let login: Value = login.json().await.expect("json");
    let token = login["token"].as_str().expect("token");
    let me: Value = client
        .get(server.url("/api/me"))
        .bearer_auth(token)
        .send()
        .await
        .expect("me")
        .error_for_status()
        .expect("200")
        .json()
        .await
        .expect("json");
    assert_eq!(me["email"], "ops@example.com");
    // Idle keep-alive connections must not hold shutdown up; close ours to measure the server alone.
    drop(client);

    let (status, took) = server.terminate();
    let log = server.log();
    assert!(status.success(), "exit {status} after SIGTERM:\n{log}");
    assert!(took < PROMPT_EXIT, "took {took:?} to stop:\n{log}");
    assert!(log.contains("SIGTERM"), "the log says which signal stopped it:\n{log}");
    assert!(!log.contains(PASSWORD), "the password was logged:\n{log}");
}

/// `confab user sessions` lists an account's live WebSockets on the running server (as the
/// node publishes them, here every 200 ms), from another process on the same database.
#[tokio::test]
async fn user_sessions_lists_the_open_websockets_of_an_account() {
    let dir = temp_dir();
    let env = [("CONFAB_AUTH__REVOCATION_CHECK_INTERVAL", "200ms")];
    let mut server = Server::start(dir.path(), &env);
    let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build().expect("client");
    server.wait_healthy(&client).await;
    let body = json!({ "email": "sam@example.com", "password": PASSWORD });
    let registered: Value = client
        .post(server.url("/api/auth/register"))
        .json(&body)
        .send()
        .await
        .expect("register")
        .json()
        .await
        .expect("json");
    let token = registered["token"].as_str().expect("token");
    let url = format!("ws://{}/ws?access_token={token}", server.addr);
    let (socket, _) = tokio_tungstenite::connect_async(url).await.expect("websocket");

    let sessions = || {
        let mut cmd = confab(dir.path());
        cmd.args(["user", "sessions", "--email", "sam@example.com", "--json"]).envs(env);
        let out = run(cmd, None);
        assert_success(&out);
        stdout(&out).lines().map(|l| serde_json::from_str::<Value>(l).expect("a JSON line")).collect::<Vec<_>>()
    };
    // The node publishes its list on its next tick; poll, bounded.
    let deadline = Instant::now() + Duration::from_secs(10);
    let listed = loop {
        let listed = sessions();
        if !listed.is_empty() || Instant::now() > deadline {
            break listed;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!((&listed[0]["address"], &listed[0]["transport"]), (&json!("127.0.0.1"), &json!("native")));
    assert!(
        listed[0]["node"].as_str().is_some_and(|n| n.ends_with(&server.addr[server.addr.rfind(':').expect("port")..]))
    );

    drop(socket);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sessions().is_empty() {
        assert!(Instant::now() < deadline, "the closed session is still listed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut cmd = confab(dir.path());
    cmd.args(["user", "sessions", "--email", "nobody@example.com"]);
    assert!(!run(cmd, None).status.success());
}

#[tokio::test]
async fn serve_takes_a_listen_flag_and_idle_connections_do_not_delay_shutdown() {
    let dir = temp_dir();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut cmd = confab(dir.path());
    // The operator's own allocator setting wins over serve's.
    cmd.args(["serve", "--listen", &addr]).env("CONFAB_LISTEN", "127.0.0.1:1").env("MALLOC_ARENA_MAX", "4");
    let mut server = Server::spawn(cmd, dir.path(), addr);

    let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build().expect("client");
    server.wait_healthy(&client).await;
    // serve executed itself again (same process, same arguments) with glibc's allocator
    // settings it was started without.
    let environ = std::fs::read(format!("/proc/{}/environ", server.pid)).expect("environ");
    let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
    for var in [&b"MALLOC_MMAP_THRESHOLD_=1048576"[..], b"MALLOC_ARENA_MAX=4"] {
        assert!(
            vars.contains(&var),
            "{} is not set: {:?}",
            String::from_utf8_lossy(var),
            String::from_utf8_lossy(&environ)
        );
    }
    // Keep-alive connections left idle by a client that is still around.
    for _ in 0..3 {
        client.get(server.url("/health")).send().await.expect("health").error_for_status().expect("200");
    }
    let (status, took) = server.terminate();
    assert!(status.success(), "exit {status}:\n{}", server.log());
    assert!(took < PROMPT_EXIT, "idle connections held shutdown for {took:?}:\n{}", server.log());
    drop(client);
}

/// The next notification `serve` sends to the test's `NOTIFY_SOCKET` (bounded wait).
async fn notification(socket: &tokio::net::UnixDatagram, server: &Server) -> String {
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(STARTUP_TIMEOUT, socket.recv(&mut buf)).await {
        Ok(Ok(n)) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        Ok(Err(e)) => panic!("notify socket: {e}"),
        Err(tokio::time::error::Elapsed { .. }) => {
            panic!("no notification within {STARTUP_TIMEOUT:?}:\n{}", server.log())
        }
    }
}

/// As systemd's `Type=notify` sees it: READY=1 only once the port answers, SIGHUP reloads the
/// log level instead of killing the node, and SIGTERM says STOPPING=1 before the node exits.
#[tokio::test]
async fn serve_tells_systemd_it_is_ready_and_stopping_and_reloads_on_sighup() {
    let dir = temp_dir();
    let socket_path = dir.path().join("notify.sock");
    let socket = tokio::net::UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    let config = dir.path().join("confab.toml");
    std::fs::write(&config, "log_level = \"info\"\n").expect("write config");
    let env = [
        ("NOTIFY_SOCKET", socket_path.to_str().expect("utf-8 path")),
        ("CONFAB_CONFIG", config.to_str().expect("utf-8 path")),
    ];
    let mut server = Server::start(dir.path(), &env);
    let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build().expect("client");

    let ready = notification(&socket, &server).await;
    assert!(ready.lines().any(|l| l == "READY=1"), "first notification: {ready:?}");
    assert!(ready.lines().any(|l| l.starts_with("STATUS=listening on")), "{ready:?}");
    // READY=1 means serving: no polling here.
    let health = client.get(server.url("/health")).send().await.expect("/health right after READY=1");
    assert_eq!(health.status(), reqwest::StatusCode::OK);

    // SIGHUP: the new log level applies (info lines stop), the node keeps serving.
    std::fs::write(&config, "log_level = \"warn\"\n").expect("rewrite config");
    kill(server.pid, "-HUP");
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    while !server.log().contains("log level applied") {
        assert!(Instant::now() < deadline, "no reload logged after SIGHUP:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let health = client.get(server.url("/health")).send().await.expect("/health after SIGHUP");
    assert_eq!(health.status(), reqwest::StatusCode::OK, "SIGHUP must not stop the node");
    drop(client);

    let (status, _) = server.terminate();
    let log = server.log();
    assert!(status.success(), "exit {status} after SIGTERM:\n{log}");
    let stopping = notification(&socket, &server).await;
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "after SIGTERM: {stopping:?}");
    let after_reload = &log[log.find("log level applied").expect("reload line")..];
    assert!(!after_reload.contains("shutting down"), "info lines still logged at level warn:\n{log}");
}

/// The shipped unit waits for READY=1, reloads with SIGHUP, and keeps its hardening: systemd's
/// own offline analysis rates its exposure 1.2 ("OK"), and a change that raises it fails here.
#[test]
fn the_systemd_unit_is_type_notify_and_stays_hardened() {
    let unit_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/confab.service");
    let unit = std::fs::read_to_string(&unit_path).expect("read the unit");
    for line in ["Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "NoNewPrivileges=yes", "User=confab"] {
        assert!(unit.lines().any(|l| l == line), "{line} missing from {}", unit_path.display());
    }
    let analyze = Command::new("systemd-analyze").arg("--version").output();
    if analyze.is_err() {
        assert!(std::env::var_os("CONFAB_TEST_REQUIRE_SERVICES").is_none(), "systemd-analyze is not installed");
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    }
    // The analysis names the unit after its file: copy it under its own name.
    let dir = temp_dir();
    let copy = dir.path().join("confab.service");
    std::fs::copy(&unit_path, &copy).expect("copy the unit");
    let mut cmd = Command::new("systemd-analyze");
    // Exposure in tenths: 12 is the 1.2 it has today.
    cmd.args(["security", "--offline=yes", "--threshold=12"]).arg(&copy);
    let out = run(cmd, None);
    assert!(out.status.success(), "exposure above 1.2:\n{}{}", stdout(&out), stderr(&out));
}

/// `confab healthcheck` exits 0 while the node configured beside it is ready, and not once it
/// is gone: what a container's HEALTHCHECK runs, with the port from the configuration.
#[tokio::test]
async fn healthcheck_follows_the_configured_node() {
    let dir = temp_dir();
    let mut server = Server::start(dir.path(), &[]);
    let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build().expect("client");
    server.wait_healthy(&client).await;
    drop(client);
    let check = |env: &[(&str, &str)], args: &[&str]| {
        let mut cmd = confab(dir.path());
        cmd.arg("healthcheck").args(args).envs(env.iter().copied());
        run(cmd, None)
    };
    let listen = server.addr.clone();
    let up = check(&[("CONFAB_LISTEN", &listen)], &[]);
    assert_success(&up);
    assert!(stdout(&up).contains(r#""database":"up""#), "{}", stdout(&up));
    // A wildcard listen address is probed on loopback.
    let port = listen.rsplit(':').next().expect("port");
    assert_success(&check(&[("CONFAB_LISTEN", &format!("0.0.0.0:{port}"))], &[]));
    assert_success(&check(&[], &["--url", &format!("http://{listen}")]));

    let (status, _) = server.terminate();
    assert!(status.success());
    let down = check(&[("CONFAB_LISTEN", &listen)], &[]);
    assert!(!down.status.success(), "healthy with the node stopped");
    assert!(stderr(&down).contains("does not answer"), "{}", stderr(&down));
}

/// A configuration file holding a secret that every user may read gets a warning at start; the
/// same file readable by its owner only does not.
#[tokio::test]
async fn serve_warns_about_a_world_readable_file_holding_secrets() {
    use std::os::unix::fs::PermissionsExt as _;
    for (mode, warned) in [(0o644, true), (0o600, false)] {
        let dir = temp_dir();
        let config = dir.path().join("confab.toml");
        std::fs::write(&config, "[auth]\njwt_secret = \"0123456789abcdef0123456789abcdef-not-for-production\"\n")
            .expect("write config");
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(mode)).expect("chmod");
        let mut server = Server::start(dir.path(), &[("CONFAB_CONFIG", config.to_str().expect("utf-8"))]);
        let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build().expect("client");
        server.wait_healthy(&client).await;
        drop(client);
        let (status, _) = server.terminate();
        let log = server.log();
        assert!(status.success(), "{log}");
        assert_eq!(log.contains("holds secrets and every user may read it"), warned, "mode {mode:o}:\n{log}");
        assert!(!log.contains("not-for-production"), "the secret was logged:\n{log}");
    }
}
