//! Joining and leaving rooms: access control (public, private, direct, bans, archives), the
//! announcement, the ack under the room's lock, and resume — a member that comes back with
//! `since` gets what it missed from the store, page by page, before it goes live.

use std::sync::Arc;

use super::{
    ChatError, ChatService, Session,
    hub::{self, Room, Start},
    who,
};
use crate::{
    domain::{NewRoom, Role, RoomKind, User},
    domain::{RoomName, Seq},
    protocol::{
        Codec, Reply, ReplyBody, Tag,
        events::{self, Presence},
    },
    telemetry,
};

impl ChatService {
    /// Takes a token from the user's join/leave bucket.
    fn check_membership_rate(&self, s: &Session) -> Result<(), ChatError> {
        self.inner.membership_limiter.check(&s.user.id.0).map_err(|_| {
            metrics::counter!(telemetry::CHAT_RATE_LIMITED, "command" => "membership").increment(1);
            ChatError::RateLimited("joins and leaves")
        })
    }

    /// Joins `room` and acks it (tagged `tag`) before any of the room's live messages; with
    /// `since` below the room's latest seq, resumes: the missed messages come first, then live
    /// delivery. Joining a room again restarts delivery from `since` (no new `system`).
    pub async fn join(&self, s: &mut Session, room: &str, since: Option<Seq>, tag: &Tag) -> Result<(), ChatError> {
        let name = RoomName::parse(room).map_err(|_| ChatError::InvalidRoom)?;
        if matches!(since, Some(n) if n < 0) {
            return Err(ChatError::InvalidPayload("since must be a seq (0 or more)".into()));
        }
        self.forget_evicted(s);
        let rejoin = s.rooms.contains_key(&name);
        let max_rooms = self.inner.settings.max_rooms_per_session;
        if !rejoin && s.rooms.len() >= max_rooms {
            return Err(ChatError::InvalidPayload(format!("a connection can be in at most {max_rooms} rooms")));
        }
        self.check_membership_rate(s)?;
        if !rejoin {
            let muted_until = self.admit(&name, &s.user).await?;
            s.handle.mute(&name, muted_until.unwrap_or(0));
        }
        if let Some(old) = s.rooms.remove(&name) {
            self.remove_member(&old, s.id());
        }
        // The room hears of the join before the joiner gets its ack: whatever the joiner (or
        // anyone it tells) does after the ack — another join, a message — is published after
        // this announcement, so every member hears joins in ack order and never sees a
        // member's message before its join.
        let mut announce = !rejoin;
        let (room, start) = loop {
            let room = self.inner.hub.room_or_insert(&name, || self.inner.bus.subscribe(&name));
            self.inner.hub.ensure_ready(&room).await?;
            if std::mem::take(&mut announce) {
                self.inner.bus.publish(vec![events::system(&name, Presence::Join, s.id(), who(&s.user))]);
            }
            // Err: the room emptied and left the hub meanwhile; look it up again.
            // The ack goes out under the room's lock, ahead of any live message.
            let ack = |latest| {
                let body = ReplyBody::Joined { room: name.to_string(), seq: latest };
                s.handle.outbox.offer_reply(&Reply::new(tag.clone(), body));
            };
            if let Ok(start) = room.add_member(s.handle.clone(), since, ack) {
                break (room, start);
            }
        };
        s.rooms.insert(name.clone(), room);
        // Who is online here, as this node last told the room; changes follow as they come.
        if s.handle.outbox.codec() == Codec::Native {
            let online = self.inner.presence.announced(&name);
            s.handle.outbox.offer_event(&events::presence(&name, online, Vec::new()));
        }
        if let Start::CatchUp { from, .. } = start {
            self.resume(s, &name, from).await;
        }
        Ok(())
    }

    /// Streams what a returning member missed after `sent` straight from the store, a page at
    /// a time, then switches it to live delivery (fetching again if more was delivered
    /// meanwhile). Each page is written out before the next is read: a resuming client is not
    /// cut off as slow for the backlog it asked for. A socket that breaks meanwhile ends it; the
    /// session's task hears of that from the outbox.
    async fn resume(&self, s: &mut Session, room: &RoomName, mut sent: Seq) {
        let out = Arc::clone(&s.handle.outbox);
        let codec = out.codec();
        loop {
            let page = match self.inner.store.messages_after(room, sent, hub::PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    // Cannot resume now: leave, so the client's retry starts clean.
                    self.part(s, room);
                    let e = ChatError::from(e);
                    out.offer_reply(&Reply::error(Tag::default(), e.code(), e.client_message()));
                    return;
                }
            };
            if page.is_empty() && self.go_live(s, room, sent) {
                return;
            }
            for msg in &page {
                out.send_raw(events::message(room, msg).frame.frame(codec));
                sent = msg.seq;
            }
            if out.drained().await.is_err() {
                return;
            }
        }
    }

    /// Whether `user` may join `room`, making them a member of a public room (created first,
    /// when unknown and `rooms.auto_create` is on). Private and direct rooms admit their
    /// members (and administrators) only; a ban keeps anyone out; an archived room admits
    /// nobody. Returns until when (Unix seconds) the user is muted there, if they are.
    async fn admit(&self, room: &RoomName, who: &User) -> Result<Option<i64>, ChatError> {
        let user = who.id;
        let store = &self.inner.store;
        let (found, standing) = match store.room_and_membership(room, user).await? {
            Some(found) => found,
            // Direct rooms are made by `POST /api/dm/{userId}`, never by joining.
            None if room.as_str().starts_with(crate::domain::DIRECT_PREFIX) => return Err(ChatError::NoSuchRoom),
            None if self.inner.settings.auto_create_rooms => {
                let new =
                    NewRoom { name: room.clone(), kind: RoomKind::Public, title: None, topic: None, created_by: user };
                // Lost races are fine: someone else created it (and may have banned us since).
                store.create_room(&new, None).await?;
                store.room_and_membership(room, user).await?.ok_or(ChatError::NoSuchRoom)?
            }
            None => return Err(ChatError::NoSuchRoom),
        };
        if found.archived_at.is_some() {
            return Err(ChatError::Forbidden("this room is archived"));
        }
        match standing {
            Some(m) if m.banned_at.is_some() => Err(ChatError::Forbidden("you are banned from this room")),
            Some(m) => Ok(m.muted_until.map(|t| t.timestamp())),
            // Administrators enter any room without becoming members of it.
            None if who.is_admin && found.kind != RoomKind::Public => Ok(None),
            None if found.kind == RoomKind::Public => {
                store.add_member(room, user, Role::Member).await?;
                Ok(None)
            }
            None => Err(ChatError::Forbidden("this room is for its members only")),
        }
    }

    /// Switches a caught-up member to live delivery. False: more was delivered meanwhile,
    /// catch up again from `sent_upto`.
    fn go_live(&self, s: &Session, room: &RoomName, sent_upto: Seq) -> bool {
        match s.rooms.get(room) {
            Some(r) => self.inner.hub.go_live(r, s.id(), sent_upto),
            None => true,
        }
    }

    /// `leave_room`: leaves and tells the room (rate limited with joins).
    pub fn leave(&self, s: &mut Session, room: &str) -> Result<RoomName, ChatError> {
        let name = RoomName::parse(room).map_err(|_| ChatError::InvalidRoom)?;
        self.forget_evicted(s);
        if !s.rooms.contains_key(&name) {
            return Err(ChatError::NotJoined);
        }
        self.check_membership_rate(s)?;
        self.part(s, &name);
        Ok(name)
    }

    /// Leaves `room` (if a member) and tells the room; never refused, for the server's own
    /// leaves (the connection ended, a resume failed).
    pub fn part(&self, s: &mut Session, room: &RoomName) {
        let Some(r) = s.rooms.remove(room) else { return };
        self.remove_member(&r, s.id());
        s.last_typing.remove(room);
        self.inner.bus.publish(vec![events::system(room, Presence::Leave, s.id(), who(&s.user))]);
    }

    /// Drops the rooms this session was removed from (the room dropped it already).
    pub(super) fn forget_evicted(&self, s: &mut Session) {
        for name in s.handle.take_evicted() {
            if let Some(room) = s.rooms.remove(&name) {
                self.remove_member(&room, s.id());
                s.last_typing.remove(&name);
            }
        }
    }

    fn remove_member(&self, room: &Arc<Room>, session: u64) {
        self.inner.hub.remove_member(room, session, |name| self.inner.bus.unsubscribe(name));
    }
}
