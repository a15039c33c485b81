//! Rooms and their members: creating and changing rooms, direct rooms, roles, bans, mutes and
//! read markers.

use chrono::{DateTime, SubsecRound as _, Utc};

use super::{Store, StoreError};
use crate::domain::{
    Ban, Member, Membership, NewRoom, Peer, ReadMarker, Role, Room, RoomListing, RoomName, RoomSummary, Seq, UserId,
    direct_room_name,
};

impl Store {
    /// Mutes a member of `room` until `until` (None: unmutes). False if not a member.
    pub async fn set_muted(
        &self,
        room: &RoomName,
        user: UserId,
        until: Option<DateTime<Utc>>,
    ) -> Result<bool, StoreError> {
        each_backend!(self, s => s.set_muted(room.as_str(), user.0, until).await)
    }

    /// Changes a room's title and/or topic (`Some(None)` clears one).
    pub async fn update_room(
        &self,
        room: &RoomName,
        title: Option<Option<&str>>,
        topic: Option<Option<&str>>,
    ) -> Result<(), StoreError> {
        each_backend!(self, s => s.update_room(room.as_str(), title, topic).await)
    }

    /// Archives a room (`Some(now)`) or brings it back (`None`).
    pub async fn set_archived(&self, room: &RoomName, archived: bool) -> Result<(), StoreError> {
        each_backend!(self, s => s.set_archived(room.as_str(), archived.then(Utc::now)).await)
    }

    /// The direct room of users `a` and `b` (the same for `b` and `a`), created with both as
    /// members if it does not exist yet.
    pub async fn open_direct(&self, a: UserId, b: UserId) -> Result<RoomName, StoreError> {
        let name = direct_room_name(a, b);
        each_backend!(self, s => s.open_direct(name.as_str(), a.0, b.0, Utc::now().trunc_subsecs(6)).await)?;
        Ok(name)
    }

    /// For each direct room `user` is in, who the other member is.
    pub async fn direct_peers(&self, user: UserId) -> Result<Vec<Peer>, StoreError> {
        each_backend!(self, s => s.direct_peers(user.0).await)
    }

    /// How many (non-direct) rooms `user` created.
    pub async fn rooms_created_by(&self, user: UserId) -> Result<u64, StoreError> {
        let n = each_backend!(self, s => s.rooms_created_by(user.0).await)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// The room's latest seq (0 for a room without messages).
    pub async fn last_seq(&self, room: &RoomName) -> Result<Seq, StoreError> {
        each_backend!(self, s => s.last_seq(room.as_str()).await)
    }

    /// Rooms with at least one message, by name.
    pub async fn list_rooms(&self) -> Result<Vec<RoomSummary>, StoreError> {
        each_backend!(self, s => s.list_rooms().await)
    }

    /// Creates `room`, with `owner` (if any) as its owner. False if the name is taken.
    pub async fn create_room(&self, room: &NewRoom, owner: Option<UserId>) -> Result<bool, StoreError> {
        each_backend!(self, s => s.create_room(room, owner, Utc::now()).await)
    }

    pub async fn room(&self, name: &RoomName) -> Result<Option<Room>, StoreError> {
        each_backend!(self, s => s.room(name.as_str()).await)
    }

    /// The room and `user`'s standing in it (`None`: not a member, not banned), in one read:
    /// what every join needs to know.
    pub async fn room_and_membership(
        &self,
        name: &RoomName,
        user: UserId,
    ) -> Result<Option<(Room, Option<Membership>)>, StoreError> {
        let row = each_backend!(self, s => s.room_and_membership(name.as_str(), user.0).await)?;
        Ok(row.map(StandingRow::split))
    }

    /// Public rooms and the rooms `user` is a member of, without archived rooms and rooms
    /// `user` is banned from.
    pub async fn rooms_for(&self, user: UserId) -> Result<Vec<RoomListing>, StoreError> {
        each_backend!(self, s => s.rooms_for(user.0).await)
    }

    pub async fn membership(&self, room: &RoomName, user: UserId) -> Result<Option<Membership>, StoreError> {
        each_backend!(self, s => s.membership(room.as_str(), user.0).await)
    }

    /// Makes `user` a member with `role` unless they already have a standing in the room
    /// (a role, or a ban). True if they were added.
    pub async fn add_member(&self, room: &RoomName, user: UserId, role: Role) -> Result<bool, StoreError> {
        each_backend!(self, s => s.add_member(room, user, role, Utc::now()).await)
    }

    /// Moves `user`'s read marker in `room` forward to `seq`, clamped to the room's latest seq;
    /// a marker never moves back. Returns where it stands and how many messages come after it,
    /// or `None` when `user` is not a member (or is banned).
    pub async fn mark_read(&self, room: &RoomName, user: UserId, seq: Seq) -> Result<Option<ReadMarker>, StoreError> {
        // A concurrent move of the same marker won the race: look again from where it is now.
        for _ in 0..3 {
            match each_backend!(self, s => s.mark_read(room.as_str(), user.0, seq).await) {
                Err(StoreError::Conflict) => {}
                other => return other,
            }
        }
        each_backend!(self, s => s.mark_read(room.as_str(), user.0, seq).await)
    }

    /// Mentions of `user` (by name, or of everyone) in `room` after seq `after`.
    pub async fn unread_mentions(&self, room: &RoomName, user: UserId, after: Seq) -> Result<i64, StoreError> {
        each_backend!(self, s => s.unread_mentions(room.as_str(), user.0, after).await)
    }

    /// Ends `user`'s membership (a ban stays). True if they were a member.
    pub async fn remove_member(&self, room: &RoomName, user: UserId) -> Result<bool, StoreError> {
        each_backend!(self, s => s.remove_member(room.as_str(), user.0).await)
    }

    /// Bans `user` from `room`, whether or not a member: a member loses their role.
    pub async fn ban_member(&self, room: &RoomName, user: UserId) -> Result<(), StoreError> {
        each_backend!(self, s => s.ban_member(room.as_str(), user.0, Utc::now()).await)
    }

    /// Lifts `user`'s ban from `room`; false if they were not banned.
    pub async fn unban_member(&self, room: &RoomName, user: UserId) -> Result<bool, StoreError> {
        each_backend!(self, s => s.unban_member(room.as_str(), user.0).await)
    }

    /// Who is banned from `room`, earliest first, at most `limit`.
    pub async fn bans(&self, room: &RoomName, limit: u32) -> Result<Vec<Ban>, StoreError> {
        each_backend!(self, s => s.bans(room.as_str(), i64::from(limit)).await)
    }

    /// The room's members (not the banned), oldest first, at most `limit`.
    pub async fn members(&self, room: &RoomName, limit: u32) -> Result<Vec<Member>, StoreError> {
        each_backend!(self, s => s.members(room.as_str(), i64::from(limit)).await)
    }
}

/// A room and one user's standing in it, as `room_and_membership` reads them (the standing's
/// columns are all NULL when the user has none).
#[derive(sqlx::FromRow)]
pub(super) struct StandingRow {
    #[sqlx(flatten)]
    room: Room,
    role: Option<String>,
    banned_at: Option<DateTime<Utc>>,
    muted_until: Option<DateTime<Utc>>,
    last_read_seq: Option<Seq>,
    read_count: Option<i64>,
}

impl StandingRow {
    fn split(self) -> (Room, Option<Membership>) {
        // A role that does not parse is no standing at all (the schema allows only known ones).
        let membership = self.role.and_then(|role| Role::try_from(role).ok()).map(|role| Membership {
            role,
            banned_at: self.banned_at,
            muted_until: self.muted_until,
            last_read_seq: self.last_read_seq.unwrap_or(0),
            read_count: self.read_count.unwrap_or(0),
        });
        (self.room, membership)
    }
}
