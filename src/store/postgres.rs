//! PostgreSQL backend, for clusters: every node shares it.
//!
//! Per-room seqs are serialised by the `rooms` row lock taken at the start of each append
//! transaction, so concurrent writers to one room queue there while other rooms proceed. Batches
//! are inserted with one `UNNEST` statement, which is prepared once whatever the batch size.

use std::{str::FromStr, time::Duration};

use chrono::{DateTime, Utc};
use sqlx::{
    PgPool, Postgres, Transaction,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use uuid::Uuid;

use super::{Message, StoreError, sql::Backend};

#[derive(Clone, Debug)]
pub struct PgStore {
    read: PgPool,
    /// The same pool as `read`: PostgreSQL takes concurrent writers.
    write: PgPool,
}

impl Backend for PgStore {
    type Db = Postgres;
}

impl PgStore {
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let options =
            PgConnectOptions::from_str(url).map_err(|e| StoreError::Open(format!("bad PostgreSQL URL: {e}")))?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await
            .map_err(|e| StoreError::Open(e.to_string()))?;
        Ok(Self { read: pool.clone(), write: pool })
    }

    fn migrator() -> sqlx::migrate::Migrator {
        sqlx::migrate!("migrations/postgres")
    }

    async fn begin_write(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        Ok(self.write.begin().await?)
    }

    async fn insert_messages(tx: &mut Transaction<'static, Postgres>, rows: &[Message]) -> Result<(), StoreError> {
        let mut ids = Vec::with_capacity(rows.len());
        let mut rooms = Vec::with_capacity(rows.len());
        let mut seqs = Vec::with_capacity(rows.len());
        let mut senders = Vec::with_capacity(rows.len());
        let mut emails = Vec::with_capacity(rows.len());
        let mut contents = Vec::with_capacity(rows.len());
        let mut times: Vec<DateTime<Utc>> = Vec::with_capacity(rows.len());
        let mut client_ids: Vec<Option<String>> = Vec::with_capacity(rows.len());
        for m in rows {
            ids.push(m.id);
            rooms.push(m.room.clone());
            seqs.push(m.seq);
            senders.push(m.sender_id);
            emails.push(m.sender_email.clone());
            contents.push(m.content.clone());
            times.push(m.created_at);
            client_ids.push(m.client_id.clone());
        }
        sqlx::query(
            "INSERT INTO messages (id, room, seq, sender_id, sender_email, content, created_at, client_id) \
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::bigint[], $4::uuid[], $5::text[], $6::text[], \
             $7::timestamptz[], $8::text[])",
        )
        .bind(ids)
        .bind(rooms)
        .bind(seqs)
        .bind::<Vec<Uuid>>(senders)
        .bind(emails)
        .bind(contents)
        .bind(times)
        .bind(client_ids)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

shared_queries!(PgStore);
