//! Coalesced user lookups: every authenticated request and WebSocket connect must see the
//! account as the database has it now (a disabled user is refused at once), so nothing is
//! cached. Instead, lookups that are waiting at the same moment share one query: a connect
//! storm costs one `SELECT … WHERE id IN (…)` per batch rather than one query (and, on
//! SQLite, two thread handoffs) per connection. Alone, a lookup is one query, as before.

use std::sync::{Arc, OnceLock};

use tokio::sync::{mpsc, oneshot};

use crate::{
    domain::{User, UserId},
    store::{Store, StoreError},
};

/// Most ids in one query.
const MAX_BATCH: usize = 256;

type Answer = oneshot::Sender<Result<Option<User>, StoreError>>;

#[derive(Clone)]
pub struct UserLookup {
    store: Store,
    /// Started on first use, inside the runtime.
    queue: Arc<OnceLock<mpsc::Sender<(UserId, Answer)>>>,
}

impl UserLookup {
    pub fn new(store: Store) -> Self {
        Self { store, queue: Arc::new(OnceLock::new()) }
    }

    /// The user with this id, read from the database in a batch with whoever else is asking.
    pub async fn user(&self, id: UserId) -> Result<Option<User>, StoreError> {
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
            tokio::spawn(serve(self.store.clone(), rx));
            tx
        });
        let (answer, answered) = oneshot::channel();
        if queue.send((id, answer)).await.is_err() {
            return self.store.user_by_id(id).await;
        }
        match answered.await {
            Ok(result) => result,
            // The batcher is gone (the runtime is stopping): ask directly.
            Err(_) => self.store.user_by_id(id).await,
        }
    }
}

/// Answers queued lookups, one query for everything queued; it stops when every sender is gone.
async fn serve(store: Store, mut rx: mpsc::Receiver<(UserId, Answer)>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let mut ids: Vec<UserId> = batch.iter().map(|(id, _)| *id).collect();
        ids.sort_unstable_by_key(|id| id.0);
        ids.dedup();
        // Padded to a power of two (a repeated id changes nothing in `IN`), so at most nine
        // statements exist, rather than one per batch size crowding the statement cache.
        if let Some(&last) = ids.last() {
            ids.resize(ids.len().next_power_of_two(), last);
        }
        match store.users_by_ids(&ids).await {
            Ok(users) => {
                for (id, answer) in batch.drain(..) {
                    let _ = answer.send(Ok(users.iter().find(|u| u.id == id).cloned()));
                }
            }
            Err(e) => {
                // Logged once here with its cause; each waiter gets an error of the same kind.
                tracing::warn!(error = ?e, waiting = batch.len(), "user lookup failed");
                let unavailable = e.is_unavailable();
                for (_, answer) in batch.drain(..) {
                    let err = if unavailable {
                        StoreError::Unavailable(sqlx::Error::PoolTimedOut)
                    } else {
                        StoreError::Other(sqlx::Error::Protocol(format!("{e:?}")))
                    };
                    let _ = answer.send(Err(err));
                }
            }
        }
    }
}
