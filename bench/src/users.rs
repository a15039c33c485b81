//! Provisioning: one account per client, registered over REST with bounded concurrency.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Instant,
};

use anyhow::{Context as _, bail};

use crate::{http::HttpConn, nodes::Targets};

/// Every bench account's password (accounts live in a scratch database or are unique per run).
const PASSWORD: &str = "confab-bench-password";

/// Access tokens for `count` new accounts, in order, and how many registrations per second.
pub async fn provision(targets: &Targets, count: usize, concurrency: usize, run: &str) -> anyhow::Result<Vec<String>> {
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..concurrency.clamp(1, count.max(1)) {
        let addr = targets.nodes[w % targets.nodes.len()].addr.clone();
        let next = Arc::clone(&next);
        let run = run.to_owned();
        workers.spawn(async move {
            let mut http = HttpConn::new(&addr);
            let mut tokens = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return Ok::<_, anyhow::Error>(tokens);
                }
                let body = serde_json::json!({ "email": format!("bench-{run}-{i}@bench.example.com"), "password": PASSWORD })
                    .to_string();
                let resp = http.request("POST", "/api/auth/register", Some(&body)).await?;
                match resp.status {
                    200 => {
                        let v: serde_json::Value = serde_json::from_str(&resp.body).context("register: not JSON")?;
                        let token = v["token"].as_str().context("register: no token in the answer")?;
                        tokens.push((i, token.to_owned()));
                    }
                    429 => bail!(
                        "registering users was rate limited (Retry-After {:?} s): start the nodes with CONFAB_LIMITS__AUTH_PER_MINUTE=0",
                        resp.retry_after
                    ),
                    status => bail!("register answered {status}: {}", resp.body.trim()),
                }
            }
        });
    }
    let mut tokens = vec![String::new(); count];
    while let Some(done) = workers.join_next().await {
        for (i, token) in done.context("provisioning worker panicked")?? {
            tokens[i] = token;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!("confab-bench: registered {count} users in {secs:.1} s ({:.0}/s)", count as f64 / secs.max(1e-9));
    Ok(tokens)
}
