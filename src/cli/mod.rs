//! The command line: `serve`, `migrate`, `create-user`, `config`, `healthcheck`, `backup`,
//! `restore`, and the `user …`, `invite …` and `audit …` admin commands ([`admin`]).

mod admin;
mod maintenance;

use std::{io::BufRead as _, path::PathBuf};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

pub use self::admin::{AuditCommand, InviteCommand, UserCommand};
use self::admin::{audit_cli, run_audit, run_invite, run_user};
use crate::{
    app::{App, open_store},
    auth::{self, AuthError, PasswordHasher},
    config::{Config, DatabaseKind},
    domain::{Email, Password},
    store::Store,
};

/// confab: a single-binary real-time chat server.
#[derive(Debug, Parser)]
#[command(
    name = "confab",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("BUILD_GIT_SHA"), ")"),
    about,
    long_about = None,
    propagate_version = true
)]
pub struct Cli {
    /// Configuration file (default: ./confab.toml, then /etc/confab/confab.toml, if present).
    #[arg(long, short = 'c', global = true, env = "CONFAB_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Environment file read before the configuration, `KEY=value` lines as systemd's
    /// `EnvironmentFile=` (e.g. /etc/confab/confab.env); variables already set win.
    #[arg(long, global = true, env = "CONFAB_ENV_FILE", value_name = "PATH")]
    pub env_file: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the chat server (HTTP API, WebSocket, web UI, metrics).
    Serve {
        /// Address to listen on, overriding `listen` (e.g. 127.0.0.1:4000).
        #[arg(long, value_name = "HOST:PORT")]
        listen: Option<String>,
    },
    /// Apply pending database migrations and exit. Safe to run repeatedly.
    Migrate,
    /// Create an account. The password is read from a prompt (or stdin), never from arguments.
    CreateUser {
        /// Email address of the new account.
        #[arg(long)]
        email: String,
        /// Read the password from the first line of standard input instead of prompting.
        #[arg(long)]
        password_stdin: bool,
        /// Make the account a server administrator (sees and moderates every room).
        #[arg(long)]
        admin: bool,
    },
    /// Print the effective configuration (secrets redacted) and exit; fails if it is invalid.
    Config,
    /// Manage accounts.
    #[command(subcommand)]
    User(UserCommand),
    /// Invitation codes, for `auth.registration = "invite"`.
    #[command(subcommand)]
    Invite(InviteCommand),
    /// The audit log of administrative and moderation actions.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Exit 0 if the server answers `/ready` (for container HEALTHCHECKs without curl).
    Healthcheck {
        /// Base URL of the server (default: http://127.0.0.1:<port of `listen`>).
        #[arg(long, value_name = "URL")]
        url: Option<String>,
    },
    /// Write a consistent copy of the database to FILE, while the server runs. SQLite: a
    /// compacted database file (`VACUUM INTO`); PostgreSQL: a `pg_dump` archive (custom format).
    Backup {
        /// The backup file to create (it must not exist).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Replace the database with a backup made by `confab backup`. Stop the server first.
    Restore {
        /// The backup file.
        #[arg(long, value_name = "FILE")]
        from: PathBuf,
        /// Replace a database that holds data (SQLite: the old file is kept beside it).
        #[arg(long)]
        force: bool,
    },
}

/// Runs a parsed command with a loaded configuration.
pub async fn run(
    command: Command,
    mut config: Config,
    config_path: Option<PathBuf>,
    env_file: Option<PathBuf>,
) -> anyhow::Result<()> {
    match command {
        Command::Serve { listen } => {
            if let Some(listen) = listen {
                config.listen = listen;
                config.validate()?;
            }
            for file in crate::config::config_file(config_path.as_deref()).into_iter().chain(env_file) {
                crate::config::warn_if_secrets_exposed(&file);
            }
            // SIGHUP's default is to end the process: handled from here on, migrations included.
            let reload = tokio_util::sync::CancellationToken::new();
            crate::systemd::reload_on_hangup(config_path, reload.clone());
            let _reload_ends = reload.drop_guard();
            let app = App::build(config).await?;
            // Spawned, not awaited here: `main` drives this future with `block_on`, which keeps
            // it on the main thread, and the accept loop with everything it awaits would compete
            // there instead of on the workers (measured: the main thread at 100% of a core while
            // the workers idled, at 100,000 deliveries/s).
            tokio::spawn(app.run_until_stopped(shutdown_signal()))
                .await
                .map_err(|e| anyhow::anyhow!("the server task failed: {e}"))?
        }
        Command::Migrate => {
            let store = open_store(&config, false).await?;
            let applied = store.migrate().await.context("cannot apply database migrations")?;
            println!("database is up to date ({applied} migration(s) applied)");
            store.close().await;
            Ok(())
        }
        Command::CreateUser { email, password_stdin, admin } => {
            let email = Email::parse(&email).context("invalid --email")?;
            let password = read_password(password_stdin)?;
            let store = open_store(&config, config.auto_migrate).await?;
            let hasher = PasswordHasher::new(&config.auth.argon2)?;
            let mut result = auth::create_account(&store, &hasher, email.as_str(), password.expose()).await;
            if admin && let Ok(user) = &result {
                result = store.set_admin(&user.email, true).await.map(|_| user.clone()).map_err(AuthError::from);
            }
            if let Ok(user) = &result {
                let detail = admin.then(|| "administrator".to_owned());
                audit_cli(&store, "user.create", Some(user.email.clone()), detail).await;
            }
            store.close().await;
            match result {
                Ok(user) => {
                    let what = if admin { "administrator" } else { "user" };
                    println!("created {what} {} ({})", user.email, user.id);
                    Ok(())
                }
                Err(AuthError::EmailTaken) => bail!("a user with email {email} already exists"),
                Err(e) => Err(e.into()),
            }
        }
        Command::Config => {
            print!("{}", config.redacted_toml());
            Ok(())
        }
        Command::User(cmd) => run_user(cmd, &config).await,
        Command::Invite(cmd) => run_invite(cmd, &config).await,
        Command::Audit(cmd) => run_audit(cmd, &config).await,
        Command::Healthcheck { url } => maintenance::healthcheck(&config, url.as_deref()).await,
        Command::Backup { out } => maintenance::backup(&config, &out).await,
        Command::Restore { from, force } => maintenance::restore(&config, &from, force).await,
    }
}

/// The server's database for an admin command: never created. A relative SQLite path that
/// does not exist here means the command runs in the wrong directory or with the wrong
/// settings; acting on a new, empty database would silently do nothing.
async fn open_server_store(config: &Config) -> anyhow::Result<Store> {
    if config.database_kind()? == DatabaseKind::Sqlite
        && let Some(path) = crate::store::sqlite_path(config.database.url.expose())
        && !path.exists()
    {
        let shown = std::path::absolute(&path).unwrap_or(path);
        bail!(
            "no database at {}; is this the server's working directory (the systemd unit's is \
             /var/lib/confab)? see --config, --env-file and database.url",
            shown.display()
        );
    }
    open_store(config, config.auto_migrate).await
}

/// Loads `path` into the environment: variables already set are kept (the command line's
/// environment wins, as it does over the configuration file).
pub fn load_env_file(path: &std::path::Path) -> anyhow::Result<()> {
    dotenvy::from_path(path).with_context(|| format!("cannot read the environment file {}", path.display()))
}

/// The password from stdin's first line, or from a no-echo prompt (asked twice).
fn read_password(from_stdin: bool) -> anyhow::Result<Password> {
    let raw = if from_stdin {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).context("cannot read the password from stdin")?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    } else {
        if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
            bail!("no terminal to prompt for the password: pipe it in with --password-stdin");
        }
        let first = rpassword::prompt_password("Password: ").context("cannot read the password")?;
        let again = rpassword::prompt_password("Repeat password: ").context("cannot read the password")?;
        if first != again {
            bail!("the passwords do not match");
        }
        first
    };
    Ok(Password::parse(&raw)?)
}

/// Completes on SIGTERM or SIGINT (Ctrl-C), logging which.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!(signal = "SIGTERM", "signal received"),
                    _ = int.recv() => tracing::info!(signal = "SIGINT", "signal received"),
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
