//! Commands an operator runs beside the server: `healthcheck` (a container's HEALTHCHECK
//! without curl), `backup` and `restore`.
//!
//! SQLite backups are `VACUUM INTO` a new file: one consistent snapshot, taken while the server
//! keeps writing (WAL readers do not block the writer). PostgreSQL backups wrap `pg_dump` (the
//! custom format, which `pg_restore` reads), with the password passed in the environment rather
//! than on a command line other users can read.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs as _},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, bail};

use super::open_server_store;
use crate::{
    app::open_store,
    config::{Config, DatabaseKind},
    store::{Store, sqlite_path},
};

/// How long `healthcheck` (and restore's is-it-running probe) waits for an answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

pub async fn healthcheck(config: &Config, url: Option<&str>) -> anyhow::Result<()> {
    let base = match url {
        Some(url) => url.to_owned(),
        None => local_base(config)?,
    };
    let target = format!("{}/ready", base.trim_end_matches('/'));
    let (status, body) = tokio::task::spawn_blocking(move || http_get(&target))
        .await
        .context("the probe task failed")?
        .with_context(|| format!("{base} does not answer"))?;
    if status != 200 {
        bail!("{base}/ready answered {status}: {}", body.trim());
    }
    println!("ready: {}", body.trim());
    Ok(())
}

/// `http://127.0.0.1:<port>` for a server configured to listen on `config.listen` (a wildcard
/// address is reached on the loopback address of its family).
fn local_base(config: &Config) -> anyhow::Result<String> {
    let addr = config.listen_addr()?;
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    Ok(format!("http://{}", SocketAddr::new(ip, addr.port())))
}

/// A plain HTTP/1.1 GET of an `http://` URL: the status code and up to 4 KiB of the answer's
/// body. Enough for a health probe; never follows redirects.
fn http_get(target: &str) -> anyhow::Result<(u16, String)> {
    let url = url::Url::parse(target).with_context(|| format!("invalid URL {target}"))?;
    if url.scheme() != "http" {
        bail!("only http:// URLs can be probed (put TLS in front of confab, probe it behind)");
    }
    let host = url.host_str().context("the URL has no host")?;
    let port = url.port_or_known_default().unwrap_or(80);
    let addr = (host, port).to_socket_addrs()?.next().with_context(|| format!("{host} has no address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT)?;
    stream.set_read_timeout(Some(PROBE_TIMEOUT))?;
    stream.set_write_timeout(Some(PROBE_TIMEOUT))?;
    write!(stream, "GET {} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n", url.path())?;
    let mut answer = Vec::new();
    stream.take(8192).read_to_end(&mut answer)?;
    let text = String::from_utf8_lossy(&answer);
    let status =
        text.split_whitespace().nth(1).and_then(|s| s.parse::<u16>().ok()).context("the answer is not HTTP")?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((status, body.chars().take(4096).collect()))
}

pub async fn backup(config: &Config, out: &Path) -> anyhow::Result<()> {
    // Created empty and private first: the copy holds password hashes and the JWT key.
    create_private(out)?;
    let result = match config.database_kind()? {
        DatabaseKind::Sqlite => backup_sqlite(config, out).await,
        DatabaseKind::Postgres => backup_postgres(config, out).await,
    };
    if result.is_err() {
        let _ = std::fs::remove_file(out);
    }
    result?;
    let size = std::fs::metadata(out).map_or(0, |m| m.len());
    println!("backed up to {} ({size} bytes)", out.display());
    Ok(())
}

async fn backup_sqlite(config: &Config, out: &Path) -> anyhow::Result<()> {
    let store = open_server_store(config).await?;
    let Store::Sqlite(sqlite) = &store else { unreachable!("a sqlite: URL opens SQLite") };
    let result = sqlite.vacuum_into(out).await.context("cannot copy the database");
    store.close().await;
    result
}

async fn backup_postgres(config: &Config, out: &Path) -> anyhow::Result<()> {
    let (url, password) = split_password(config.database.url.expose())?;
    let mut cmd = Command::new("pg_dump");
    cmd.args(["--format=custom", "--no-owner", "--no-privileges", "--file"]).arg(out).arg("--dbname").arg(&url);
    run_pg_tool(cmd, password, "pg_dump").await
}

pub async fn restore(config: &Config, from: &Path, force: bool) -> anyhow::Result<()> {
    if !from.is_file() {
        bail!("no backup at {}", from.display());
    }
    // A node still serving on this configuration would keep writing the database it has open.
    let base = local_base(config)?;
    let probe = format!("{base}/health");
    if tokio::task::spawn_blocking(move || http_get(&probe)).await.is_ok_and(|r| r.is_ok()) {
        bail!("a server answers on {base}; stop it first (systemctl stop confab), then restore");
    }
    match config.database_kind()? {
        DatabaseKind::Sqlite => restore_sqlite(config, from, force).await?,
        DatabaseKind::Postgres => restore_postgres(config, from, force).await?,
    }
    // Brings an older backup up to this version's schema, and proves it opens.
    let store = open_store(config, config.auto_migrate).await?;
    let users = store.list_users().await.map(|u| u.len());
    store.close().await;
    println!("restored from {} ({} users)", from.display(), users?);
    Ok(())
}

async fn restore_sqlite(config: &Config, from: &Path, force: bool) -> anyhow::Result<()> {
    let target = sqlite_path(config.database.url.expose()).context("database.url names no SQLite file")?;
    check_sqlite_backup(from).await?;
    if target.exists() {
        if !force {
            bail!("{} holds a database; --force replaces it (the current one is kept beside it)", target.display());
        }
        let kept = set_aside(&target)?;
        eprintln!("the replaced database is kept as {}", kept.display());
    } else if let Some(dir) = target.parent().filter(|d| !d.as_os_str().is_empty()) {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // Copied next to the target, then renamed over it: never a half-written database.
    let partial = with_suffix(&target, ".restoring");
    let _ = std::fs::remove_file(&partial);
    create_private(&partial)?;
    let copied = (|| {
        let mut src = std::fs::File::open(from)?;
        let mut dst = std::fs::OpenOptions::new().write(true).open(&partial)?;
        std::io::copy(&mut src, &mut dst)?;
        dst.sync_all()?;
        std::fs::rename(&partial, &target)
    })();
    if let Err(e) = copied {
        let _ = std::fs::remove_file(&partial);
        return Err(e).with_context(|| format!("cannot write {}", target.display()));
    }
    Ok(())
}

/// Refuses a file that is not an intact confab SQLite database.
async fn check_sqlite_backup(from: &Path) -> anyhow::Result<()> {
    use sqlx::{Connection as _, sqlite::SqliteConnectOptions};
    let options = SqliteConnectOptions::new().filename(from).read_only(true);
    let mut conn = sqlx::SqliteConnection::connect_with(&options)
        .await
        .with_context(|| format!("{} is not a SQLite database", from.display()))?;
    let (integrity,): (String,) = sqlx::query_as("PRAGMA integrity_check")
        .fetch_one(&mut conn)
        .await
        .with_context(|| format!("{} is not a SQLite database", from.display()))?;
    if integrity != "ok" {
        bail!("{} is damaged: {integrity}", from.display());
    }
    let migrated: Result<(i64,), _> =
        sqlx::query_as("SELECT COUNT(*) FROM _sqlx_migrations").fetch_one(&mut conn).await;
    let _ = conn.close().await;
    if !matches!(migrated, Ok((n,)) if n > 0) {
        bail!("{} is not a confab database", from.display());
    }
    Ok(())
}

/// Moves the database at `target` (and its WAL files) to `<target>.before-restore-<time>`.
fn set_aside(target: &Path) -> anyhow::Result<PathBuf> {
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let kept = with_suffix(target, &format!(".before-restore-{stamp}"));
    for extra in ["-wal", "-shm"] {
        let from = with_suffix(target, extra);
        if from.exists() {
            std::fs::rename(&from, with_suffix(&kept, extra))
                .with_context(|| format!("cannot move {}", from.display()))?;
        }
    }
    std::fs::rename(target, &kept).with_context(|| format!("cannot move {}", target.display()))?;
    Ok(kept)
}

async fn restore_postgres(config: &Config, from: &Path, force: bool) -> anyhow::Result<()> {
    if !force {
        let store = open_store(config, false).await?;
        let users = store.list_users().await;
        store.close().await;
        if users.is_ok_and(|u| !u.is_empty()) {
            bail!("the database holds accounts; --force replaces its contents with the backup's");
        }
    }
    let (url, password) = split_password(config.database.url.expose())?;
    let mut cmd = Command::new("pg_restore");
    cmd.args(["--clean", "--if-exists", "--no-owner", "--no-privileges", "--single-transaction", "--exit-on-error"])
        .arg("--dbname")
        .arg(&url)
        .arg(from);
    run_pg_tool(cmd, password, "pg_restore").await
}

/// Runs a PostgreSQL client tool to completion, its output passed through.
async fn run_pg_tool(mut cmd: Command, password: Option<String>, name: &str) -> anyhow::Result<()> {
    if let Some(password) = password {
        cmd.env("PGPASSWORD", password);
    }
    let status = tokio::task::spawn_blocking(move || cmd.status())
        .await
        .context("the child task failed")?
        .with_context(|| format!("cannot run {name} (install PostgreSQL's client tools)"))?;
    if !status.success() {
        bail!("{name} failed ({status})");
    }
    Ok(())
}

/// The URL without its password, and the password: for the environment, not the command line.
fn split_password(raw: &str) -> anyhow::Result<(String, Option<String>)> {
    let mut url = url::Url::parse(raw).context("database.url is not a URL")?;
    // Percent-decoded; a `+` in a URL's password is a plus, not a space as in a form.
    let password = url.password().map(|p| {
        let form = format!("p={}", p.replace('+', "%2B"));
        url::form_urlencoded::parse(form.as_bytes()).next().map_or_else(|| p.to_owned(), |(_, v)| v.into_owned())
    });
    let _ = url.set_password(None);
    // libpq reads `%20`, not a form's `+`, as a space (`options=-c statement_timeout=…`).
    let query: Option<String> = url.query().map(|_| {
        url.query_pairs()
            .map(|(k, v)| {
                let encode = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
                format!("{}={}", encode(&k), encode(&v)).replace('+', "%20")
            })
            .collect::<Vec<_>>()
            .join("&")
    });
    url.set_query(query.as_deref());
    Ok((url.to_string(), password))
}

/// Creates `path` empty, readable and writable by this user only; fails if it exists.
fn create_private(path: &Path) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).with_context(|| format!("cannot create {}", path.display()))?;
    Ok(())
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_leaves_the_url_and_libpq_reads_the_rest() {
        let (url, password) =
            split_password("postgres://app:p%40ss+w@db:5432/chat?options=-c+statement_timeout%3D30000").expect("url");
        assert_eq!(password.as_deref(), Some("p@ss+w"));
        assert_eq!(url, "postgres://app@db:5432/chat?options=-c%20statement_timeout%3D30000");
        let (url, password) = split_password("postgres://db/chat").expect("url");
        assert_eq!((url.as_str(), password), ("postgres://db/chat", None));
    }
}
