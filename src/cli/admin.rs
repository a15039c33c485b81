//! The admin commands: `user …`, `invite …` and `audit …`. They work on the server's existing
//! database and never create one: run from another directory, a relative SQLite path would
//! otherwise make a new, empty database and the command would act on nothing.

use anyhow::{Context as _, bail};
use clap::Subcommand;

use super::{open_server_store, read_password};
use crate::{
    auth::{self, PasswordHasher},
    config::{Config, HumanDuration},
    domain::{Email, NewAudit},
    store::Store,
};

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
    /// List accounts: id, email, display name, created, state, role.
    List {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
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

pub(super) async fn run_user(cmd: UserCommand, config: &Config) -> anyhow::Result<()> {
    let store = open_server_store(config).await?;
    let result = run_user_on(cmd, config, &store).await;
    store.close().await;
    result
}

async fn run_user_on(cmd: UserCommand, config: &Config, store: &Store) -> anyhow::Result<()> {
    let email_of = |raw: &str| Email::parse(raw).context("invalid --email");
    let (action, found, email, done) = match cmd {
        UserCommand::List { json } => {
            for u in store.list_users().await? {
                let state = if u.disabled_at.is_some() { "disabled" } else { "active" };
                let role = if u.is_admin { "admin" } else { "user" };
                if json {
                    let line = serde_json::json!({
                        "id": u.id, "email": u.email, "displayName": u.display_name,
                        "createdAt": u.created_at.to_rfc3339(), "state": state, "role": role,
                    });
                    println!("{line}");
                    continue;
                }
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
pub(super) async fn audit_cli(store: &Store, action: &'static str, target: Option<String>, detail: Option<String>) {
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

pub(super) async fn run_invite(cmd: InviteCommand, config: &Config) -> anyhow::Result<()> {
    let store = open_server_store(config).await?;
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

pub(super) async fn run_audit(cmd: AuditCommand, config: &Config) -> anyhow::Result<()> {
    let store = open_server_store(config).await?;
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
