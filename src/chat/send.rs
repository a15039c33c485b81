//! Sending (validated here, stored by the room's writer, acked after the commit), typing, read
//! markers, and the events moderation and REST edits publish.

use std::time::{Duration, Instant};

use chrono::{SubsecRound as _, Utc};
use uuid::Uuid;

use super::{
    ChatError, ChatService, Session, mentions::MENTION_CANDIDATES, resolve_mentions, who, writer::WriteRequest,
};
use crate::{
    domain::{ClientId, Content, InvalidContent, RoomName, Seq, UserId},
    domain::{Mentions, NewMessage, ReadMarker, User},
    protocol::{Tag, events},
    telemetry,
};

/// At most one `typing` per user and room in this interval is passed on.
const TYPING_INTERVAL: Duration = Duration::from_millis(1000);

impl ChatService {
    /// Validates and queues a message for storing; the ack (or error) goes out through the
    /// session's outbox once the room's writer has committed it.
    pub async fn send_message(
        &self,
        s: &Session,
        room: &str,
        content: &str,
        client_id: Option<&str>,
        tag: Tag,
    ) -> Result<(), ChatError> {
        self.inner.received.increment(1);
        // A block, so that every refusal below is counted once, by its code.
        let queued = async {
            let name = RoomName::parse(room).map_err(|_| ChatError::InvalidRoom)?;
            let content = Content::parse(content, self.inner.settings.message_max_len).map_err(|e| match e {
                InvalidContent::Empty => ChatError::InvalidPayload(e.to_string()),
                InvalidContent::TooLong { max } => ChatError::TooLong { max },
            })?;
            let client_id = client_id
                .map(|c| {
                    ClientId::parse(c)
                        .map_err(|_| ChatError::InvalidPayload("clientId must be 1 to 64 characters".into()))
                })
                .transpose()?;
            let room = s.rooms.get(&name).ok_or(ChatError::NotJoined)?;
            if s.handle.is_evicted_from(&name) {
                return Err(ChatError::Forbidden("you are no longer a member of this room"));
            }
            if let Some(until) = s.handle.muted_until(&name, Utc::now().timestamp()) {
                let until = chrono::DateTime::from_timestamp(until, 0).unwrap_or_default().to_rfc3339();
                return Err(ChatError::Muted { until });
            }
            self.check_message_rate(s.user.id, "send_message")?;
            // Only a message that could mention someone pays for the member list.
            let mentions = if content.as_str().contains('@') {
                self.mentions_in(&name, &s.user, content.as_str()).await?
            } else {
                Mentions::default()
            };
            let msg = NewMessage {
                id: Uuid::now_v7(),
                room: name,
                sender_id: s.user.id,
                sender_email: s.user.email.clone(),
                sender_name: s.user.display_name.clone(),
                content: content.into_string(),
                client_id: client_id.map(|c| c.as_str().to_owned()),
                // PostgreSQL keeps microseconds: truncate now so live frames and history agree.
                created_at: Utc::now().trunc_subsecs(6),
                kind: crate::domain::MessageKind::Message,
                target_id: None,
                mentions,
            };
            // Counted before the writer can answer, so the answer always finds it counted.
            s.handle.outbox.began_send();
            let accepted = std::time::Instant::now();
            let request = WriteRequest { msg, tag, reply_to: s.handle.clone(), accepted };
            room.writer.submit(&room.name, &self.inner.writers, request).await.map_err(|_| {
                s.handle.outbox.cancel_send();
                ChatError::Unavailable
            })
        }
        .await;
        if let Err(e) = &queued {
            metrics::counter!(telemetry::MESSAGES_REJECTED, "reason" => e.code()).increment(1);
        }
        queued
    }

    /// Whom `content`, sent by `sender` in `room`, mentions: members by display name, and
    /// everyone for `@room` / `@here` from an owner, moderator or administrator.
    async fn mentions_in(&self, room: &RoomName, sender: &User, content: &str) -> Result<Mentions, ChatError> {
        let members = self.inner.store.members(room, MENTION_CANDIDATES).await?;
        let may_mention_all = sender.is_admin
            || members.iter().any(|m| m.user_id == sender.id.0 && m.role >= crate::domain::Role::Moderator);
        let named: Vec<(Uuid, &str)> =
            members.iter().filter(|m| m.user_id != sender.id.0).map(|m| (m.user_id, m.display_name.as_str())).collect();
        Ok(resolve_mentions(content, &named, may_mention_all))
    }

    /// Takes one token from `user`'s message budget (`limits.messages_per_second`), which sends
    /// and the REST edits and deletions share: each of them is a write and a fan-out.
    pub fn check_message_rate(&self, user: UserId, command: &'static str) -> Result<(), ChatError> {
        self.inner.limiter.check(&user.0).map_err(|_| {
            metrics::counter!(telemetry::CHAT_RATE_LIMITED, "command" => command).increment(1);
            ChatError::RateLimited("messages")
        })
    }

    /// Tells the room's other members this user is typing (at most once a second).
    pub fn typing(&self, s: &mut Session, room: &str) -> Result<(), ChatError> {
        let name = RoomName::parse(room).map_err(|_| ChatError::InvalidRoom)?;
        self.forget_evicted(s);
        if !s.rooms.contains_key(&name) {
            return Err(ChatError::NotJoined);
        }
        let now = Instant::now();
        if s.last_typing.get(&name).is_some_and(|t| now.duration_since(*t) < TYPING_INTERVAL) {
            return Ok(());
        }
        s.last_typing.insert(name.clone(), now);
        self.inner.bus.publish(vec![events::typing(&name, who(&s.user))]);
        Ok(())
    }

    /// Moves `user`'s read marker in `room` forward to `seq` (clamped to the room's latest;
    /// never back) and tells the user's other sessions, on every node, except `origin` (0 for
    /// none). Returns where the marker stands and the messages after it. Refused for
    /// non-members.
    pub async fn mark_read(
        &self,
        user: UserId,
        origin: u64,
        room: &str,
        seq: Seq,
    ) -> Result<(RoomName, ReadMarker), ChatError> {
        let name = RoomName::parse(room).map_err(|_| ChatError::InvalidRoom)?;
        if seq < 0 {
            return Err(ChatError::InvalidPayload("seq must be 0 or more".into()));
        }
        self.inner.read_limiter.check(&user.0).map_err(|_| {
            metrics::counter!(telemetry::CHAT_RATE_LIMITED, "command" => "mark_read").increment(1);
            ChatError::RateLimited("read markers")
        })?;
        let marked = self
            .inner
            .store
            .mark_read(&name, user, seq)
            .await?
            .ok_or(ChatError::Forbidden("only members of a room have a read marker there"))?;
        self.inner.bus.publish(vec![events::read(&name, user.0, origin, marked)]);
        Ok((name, marked))
    }

    /// Tells every node that `user` is no longer a member of `room` (`reason`: `kicked`,
    /// `banned`, `left`; or, for the nil user, everyone: `archived`): the room hears it, and
    /// the user's sessions there, told too, leave it.
    pub fn evict(&self, room: &RoomName, user: UserId, reason: &str) {
        self.inner.bus.publish(vec![events::removed(room, user.0, reason)]);
    }

    /// Hands a row of `room`'s seq stream stored outside the room's writer (a deletion) to
    /// every node's members, in its seq order.
    pub fn announce_stored(&self, room: &RoomName, stored: &crate::domain::Message) {
        self.inner.indexer.stored(room);
        self.inner.bus.publish(vec![events::message(room, stored)]);
    }

    /// Tells every node that `user` may not send in `room` until `until` (Unix seconds; 0 lifts
    /// it): the room hears it, and the user's sessions there refuse to send.
    pub fn mute(&self, room: &RoomName, user: UserId, until: i64) {
        self.inner.bus.publish(vec![events::muted(room, user.0, until)]);
    }
}
