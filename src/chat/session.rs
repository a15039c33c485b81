//! A connection's session as the chat core sees it: [`Session`], the state its transport task
//! owns (its rooms, no locks), and [`SessionHandle`], how rooms, writers and the registry reach
//! it (who it is, and its [`Outbox`]).

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use uuid::Uuid;

use super::{hub::Room, outbox::Outbox, registry::SessionSlot};
use crate::{
    domain::{RoomName, User},
    sync::MutexExt as _,
};

/// One connection's chat state, owned by its transport task (no locks).
pub struct Session {
    pub handle: SessionHandle,
    pub user: User,
    pub(super) rooms: HashMap<RoomName, Arc<Room>>,
    pub(super) last_typing: HashMap<RoomName, Instant>,
    /// This session's place in its account's session count: freed by
    /// [`ChatService::close_session`](super::ChatService::close_session), before the client hears the close, so it can reconnect
    /// at once (or when the session drops, whatever ended it).
    pub(super) slot: Option<SessionSlot>,
}

impl Session {
    pub fn id(&self) -> u64 {
        self.handle.id
    }
    pub fn is_member(&self, room: &RoomName) -> bool {
        self.rooms.contains_key(room)
    }
}

/// Why a session lost its right to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Revocation {
    /// Its access token expired and was not refreshed in-band.
    Expired,
    /// The account was disabled, its password changed, or it was signed out everywhere.
    Revoked,
}

impl Revocation {
    /// The `error` code the client is told before the close.
    pub fn code(self) -> &'static str {
        match self {
            Self::Expired => "token_expired",
            Self::Revoked => "session_revoked",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Self::Expired => "the access token expired: refresh it and reconnect (or send auth before it expires)",
            Self::Revoked => "this session was revoked: sign in again",
        }
    }
}

/// The hub's handle on a session: who it is, and where its frames go.
#[derive(Clone)]
pub struct SessionHandle {
    /// Random per session, unique across nodes for all practical purposes.
    pub id: u64,
    pub user: Uuid,
    pub outbox: Arc<Outbox>,
    /// What others changed about the session's standing in its rooms (one allocation: every
    /// idle connection holds it).
    standing: Arc<Standing>,
}

/// Rooms a session was removed from by someone else, until the session catches up with it,
/// and the rooms it may not send in.
#[derive(Default)]
struct Standing {
    /// Whether `evicted` has anything: the check every send makes, without the lock.
    any_evicted: AtomicBool,
    evicted: Mutex<Vec<RoomName>>,
    /// Rooms the user may not send in, until when (Unix seconds).
    muted: Mutex<Vec<(RoomName, i64)>>,
}

impl SessionHandle {
    pub fn new(user: Uuid, outbox: Arc<Outbox>) -> Self {
        Self { id: rand::random(), user, outbox, standing: Arc::default() }
    }

    /// The user may not send in `room` until `until` (Unix seconds); 0 lifts it.
    pub fn mute(&self, room: &RoomName, until: i64) {
        let mut muted = self.standing.muted.lock_unpoisoned();
        muted.retain(|(r, _)| r != room);
        if until > 0 {
            muted.push((room.clone(), until));
        }
    }

    /// Until when the user may not send in `room`, if they are muted there now.
    pub fn muted_until(&self, room: &RoomName, now: i64) -> Option<i64> {
        let muted = self.standing.muted.lock_unpoisoned();
        muted.iter().find(|(r, until)| r == room && *until > now).map(|(_, until)| *until)
    }

    /// The user is no longer a member of `room`.
    pub fn evict(&self, room: &RoomName) {
        let mut rooms = self.standing.evicted.lock_unpoisoned();
        if !rooms.contains(room) {
            rooms.push(room.clone());
        }
        self.standing.any_evicted.store(true, Ordering::Release);
    }

    pub fn is_evicted_from(&self, room: &RoomName) -> bool {
        self.standing.any_evicted.load(Ordering::Acquire) && self.standing.evicted.lock_unpoisoned().contains(room)
    }

    /// The rooms removed from since the last call.
    pub fn take_evicted(&self) -> Vec<RoomName> {
        if !self.standing.any_evicted.swap(false, Ordering::AcqRel) {
            return Vec::new();
        }
        std::mem::take(&mut *self.standing.evicted.lock_unpoisoned())
    }
}
