//! `confab backup` and `confab restore`, run as an operator would (another process, sharing only
//! the database) while a node keeps storing messages: the backup is one consistent snapshot —
//! every message acked before it began, seqs without a gap, contents as stored — and a restore
//! into an empty database gives a node exactly that back.

use std::{
    path::Path,
    process::Output,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    time::{Duration, Instant},
};

use crate::{
    common::{Backend, TestDb, both_backends},
    helpers::{spawn_app_on, spawn_chat_node},
    ws::connect_user,
};

both_backends!(a_backup_taken_under_traffic_restores_every_acked_message);

/// `confab` with `args` against `db_url`, from `dir`, bounded. `listen` is a closed port, so
/// `restore` finds no server running on this configuration.
async fn confab(args: &[&str], db_url: &str, dir: &Path) -> Output {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_confab"))
        .args(args)
        .env("CONFAB_DATABASE__URL", db_url)
        .env("CONFAB_LISTEN", closed.to_string())
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .output();
    tokio::time::timeout(Duration::from_secs(120), out).await.expect("the CLI finished in time").expect("run the CLI")
}

#[track_caller]
fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn a_backup_taken_under_traffic_restores_every_acked_message(backend: Backend) {
    let app = spawn_chat_node(backend, |_| {}).await;
    let (_, mut alice) = connect_user(&app, "alice@example.com").await;
    alice.join("general").await;

    // Traffic: alice sends and waits for each ack until told to stop.
    let (stop, acked) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicI64::new(0)));
    let sender = {
        let (stop, acked) = (Arc::clone(&stop), Arc::clone(&acked));
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let ack = alice.send("general", &format!("message {n}")).await;
                acked.store(ack.seq, Ordering::Relaxed);
                n += 1;
            }
            alice
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.load(Ordering::Relaxed) < 20 {
        assert!(Instant::now() < deadline, "no traffic");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("confab.backup");
    let acked_before = acked.load(Ordering::Relaxed);
    let backup = confab(&["backup", "--out", file.to_str().expect("utf-8")], app.db.url(), dir.path()).await;
    assert_ok(&backup, "confab backup");
    let acked_after = acked.load(Ordering::Relaxed);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&file).expect("the backup exists").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the backup holds password hashes and keys: owner only");
    }
    // A second backup never overwrites the first.
    let again = confab(&["backup", "--out", file.to_str().expect("utf-8")], app.db.url(), dir.path()).await;
    assert!(!again.status.success(), "backup over an existing file must fail");

    stop.store(true, Ordering::Relaxed);
    let _alice = sender.await.expect("sender");
    let original = app
        .state
        .store
        .messages_after(&confab::domain::RoomName::parse("general").expect("room"), 0, 100_000)
        .await
        .expect("read");

    // Restored into an empty database, then served by a node.
    let restored_db = Arc::new(TestDb::create(backend).await);
    let restore = confab(&["restore", "--from", file.to_str().expect("utf-8")], restored_db.url(), dir.path()).await;
    assert_ok(&restore, "confab restore");
    let node = spawn_app_on(Arc::clone(&restored_db), |_| {}).await;
    let restored = node
        .state
        .store
        .messages_after(&confab::domain::RoomName::parse("general").expect("room"), 0, 100_000)
        .await
        .expect("read restored");
    let seqs: Vec<i64> = restored.iter().map(|m| m.seq).collect();
    let k = i64::try_from(restored.len()).expect("count");
    assert_eq!(seqs, (1..=k).collect::<Vec<_>>(), "the snapshot has no gap");
    assert!(k >= acked_before, "every message acked before the backup began is in it: {k} < {acked_before}");
    assert!(k <= acked_after + 1, "nothing that was not yet stored: {k} > {acked_after}");
    for (r, o) in restored.iter().zip(&original) {
        assert_eq!((r.id, &r.content, r.seq), (o.id, &o.content, o.seq), "restored as stored");
    }
    // The restored accounts sign in.
    let login = node.login_response("alice@example.com", crate::helpers::PASSWORD).await;
    assert_eq!(login.status(), reqwest::StatusCode::OK);

    // Restoring over a database that holds data needs --force.
    let refused = confab(&["restore", "--from", file.to_str().expect("utf-8")], app.db.url(), dir.path()).await;
    assert!(!refused.status.success(), "restore over live data without --force must fail");
}
