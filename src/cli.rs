//! The command line: `serve`, `migrate`, `create-user`, `config`, and the `user …`, `invite …`
//! and `audit …` admin commands.

use std::{io::BufRead as _, path::PathBuf};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

use crate::{
    app::{App, open_store},
    auth::{self, AuthError, PasswordHasher},
    config::{Config, HumanDuration},
    domain::{Email, Password},
    store::{NewAudit, Store},
};

/// confab: a single-binary real-time chat server.
#[derive(Debug, Parser)]
#[command(name = "confab", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Configuration file (default: ./confab.toml, then /etc/confab/confab.toml, if present).
    #[arg(long, short = 'c', global = true, env = "CONFAB_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

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
}

#[derive(Debug, Subcommand)]
pub enum InviteCommand {
    /// Create a single-use invitation code and print it.
    Create {
        /// How long it stays valid (e.g. 7d, 12h); default `auth.invite_ttl`.
        #[arg(long)]
        ttl: Option<HumanDuration>,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Print the newest entries, newest first: id, time, actor, source, action, target, room, detail.
    List {
        /// How many entries.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// List accounts.
    List,
    /// Disable an account: it can no longer sign in, and its sessions are refused.
    Disable {
        #[arg(long)]
        email: String,
    },
    /// Re-enable a disabled account.
    Enable {
        #[arg(long)]
        email: String,
    },
    /// Sign an account out everywhere: its refresh tokens are revoked and its open sessions, on
    /// every node, are closed within `auth.revocation_check_interval`.
    Kick {
        #[arg(long)]
        email: String,
    },
    /// List an account's open sessions on every node: node, since, client address, transport.
    /// As the nodes last published them (when they change, at least every 30 s).
    Sessions {
        #[arg(long)]
        email: String,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Make an account a server administrator: it sees and moderates every room.
    Promote {
        #[arg(long)]
        email: String,
    },
    /// Take server administration away from an account.
    Demote {
        #[arg(long)]
        email: String,
    },
    /// Set a new password (and sign the account out everywhere).
    SetPassword {
        #[arg(long)]
        email: String,
        /// Read the password from the first line of standard input instead of prompting.
        #[arg(long)]
        password_stdin: bool,
    },
}

/// Runs a parsed command with a loaded configuration.
pub async fn run(command: Command, mut config: Config, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    match command {
        Command::Serve { listen } => {
            if let Some(listen) = listen {
                config.listen = listen;
                config.validate()?;
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
    }
}

async fn run_user(cmd: UserCommand, config: &Config) -> anyhow::Result<()> {
    let store = open_store(config, config.auto_migrate).await?;
    let result = run_user_on(cmd, config, &store).await;
    store.close().await;
    result
}

async fn run_user_on(cmd: UserCommand, config: &Config, store: &Store) -> anyhow::Result<()> {
    let email_of = |raw: &str| Email::parse(raw).context("invalid --email");
    let (action, found, email, done) = match cmd {
        UserCommand::List => {
            for u in store.list_users().await? {
                let state = if u.disabled_at.is_some() { "disabled" } else { "active" };
                let role = if u.is_admin { "admin" } else { "user" };
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    u.id,
                    u.email,
                    u.display_name,
                    u.created_at.to_rfc3339(),
                    state,
                    role
                );
            }
            return Ok(());
        }
        UserCommand::Sessions { email, json } => return list_sessions(store, &email_of(&email)?, json).await,
        UserCommand::Disable { email } => {
            let email = email_of(&email)?;
            ("user.disable", store.set_user_disabled(email.as_str(), true).await?, email, "disabled")
        }
        UserCommand::Enable { email } => {
            let email = email_of(&email)?;
            ("user.enable", store.set_user_disabled(email.as_str(), false).await?, email, "enabled")
        }
        UserCommand::Promote { email } => {
            let email = email_of(&email)?;
            ("user.promote", store.set_admin(email.as_str(), true).await?, email, "promoted")
        }
        UserCommand::Demote { email } => {
            let email = email_of(&email)?;
            ("user.demote", store.set_admin(email.as_str(), false).await?, email, "demoted")
        }
        UserCommand::Kick { email } => {
            let email = email_of(&email)?;
            ("user.kick", store.revoke_sessions(email.as_str()).await?, email, "kicked")
        }
        UserCommand::SetPassword { email, password_stdin } => {
            let email = email_of(&email)?;
            let password = read_password(password_stdin)?;
            let hash = PasswordHasher::new(&config.auth.argon2)?.hash(password.expose().to_owned()).await?;
            let found = store.set_password_hash(email.as_str(), &hash).await?;
            ("user.set_password", found, email, "password changed")
        }
    };
    if !found {
        bail!("no user with email {email}");
    }
    audit_cli(store, action, Some(email.as_str().to_owned()), None).await;
    match action {
        "user.disable" => println!("disabled {email}"),
        "user.enable" => println!("enabled {email}"),
        "user.promote" => println!("{email} is an administrator"),
        "user.demote" => println!("{email} is no longer an administrator"),
        "user.kick" => println!("signed {email} out everywhere"),
        _ => println!("{done} for {email}; its sessions are signed out"),
    }
    Ok(())
}

/// Prints `email`'s open sessions, as every live node last published them.
async fn list_sessions(store: &Store, email: &Email, json: bool) -> anyhow::Result<()> {
    let Some(user) = store.credentials_by_email(email.as_str()).await?.map(|c| c.user) else {
        bail!("no user with email {email}");
    };
    let stale = crate::chat::SESSION_LIST_HEARTBEAT * 3;
    let fresh_since = chrono::Utc::now() - chrono::Duration::from_std(stale).unwrap_or(chrono::Duration::seconds(90));
    let mut found = 0;
    for node in store.node_sessions(fresh_since).await? {
        let Ok(list) = serde_json::from_str::<Vec<crate::chat::registry::LiveSession>>(&node.sessions) else {
            eprintln!("warning: node {} published a session list this version cannot read", node.node);
            continue;
        };
        for s in list.into_iter().filter(|s| s.user_id == user.id.0) {
            found += 1;
            if json {
                let line = serde_json::json!({
                    "node": node.node, "since": s.since.to_rfc3339(), "address": s.address, "transport": s.transport,
                });
                println!("{line}");
            } else {
                println!("{}\t{}\t{}\t{}", node.node, s.since.to_rfc3339(), s.address, s.transport);
            }
        }
    }
    if found == 0 && !json {
        eprintln!("{email} has no open sessions");
    }
    Ok(())
}

/// Records an action taken on the command line. The action is done: a failure to record it is
/// reported but does not undo it.
async fn audit_cli(store: &Store, action: &'static str, target: Option<String>, detail: Option<String>) {
    let login = std::env::var("SUDO_USER").or_else(|_| std::env::var("USER")).unwrap_or_else(|_| "unknown".into());
    let entry = NewAudit {
        actor_id: None,
        actor: "cli".into(),
        source: format!("cli:{login}"),
        action,
        target,
        room: None,
        detail,
    };
    if let Err(e) = store.append_audit(&entry).await {
        eprintln!("warning: could not record this action in the audit log: {e}");
    }
}

async fn run_invite(cmd: InviteCommand, config: &Config) -> anyhow::Result<()> {
    let store = open_store(config, config.auto_migrate).await?;
    let result = async {
        match cmd {
            InviteCommand::Create { ttl } => {
                let ttl = ttl.map_or(config.auth.invite_ttl.0, |t| t.0);
                let expires_at = chrono::Utc::now() + chrono::Duration::from_std(ttl).context("--ttl is too long")?;
                let code = auth::new_invite_code();
                store.insert_invite(&auth::invite_hash(&code), None, expires_at).await?;
                audit_cli(&store, "invite.create", None, Some(format!("expires {}", expires_at.to_rfc3339()))).await;
                println!("{code}");
                eprintln!("single-use invitation code, valid until {}", expires_at.to_rfc3339());
                Ok(())
            }
        }
    }
    .await;
    store.close().await;
    result
}

async fn run_audit(cmd: AuditCommand, config: &Config) -> anyhow::Result<()> {
    let store = open_store(config, config.auto_migrate).await?;
    let result = async {
        match cmd {
            AuditCommand::List { limit, json } => {
                let entries = store.audit_log(None, limit.clamp(1, 10_000)).await?;
                for e in entries {
                    if json {
                        println!("{}", serde_json::to_string(&e)?);
                    } else {
                        let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
                        println!(
                            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                            e.id,
                            e.at.to_rfc3339(),
                            e.actor,
                            e.source,
                            e.action,
                            opt(&e.target),
                            opt(&e.room),
                            opt(&e.detail)
                        );
                    }
                }
                Ok(())
            }
        }
    }
    .await;
    store.close().await;
    result
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
