//! One room with members on this node: its members, and in-order, exactly-once delivery to
//! them (the invariant the [hub](super) keeps).

use std::{
    collections::{BTreeMap, HashSet},
    sync::{Arc, Mutex, MutexGuard},
};

use tokio::sync::{OnceCell, oneshot};
use uuid::Uuid;

use super::super::{session::SessionHandle, writer};
use crate::{
    domain::{RoomName, Seq},
    protocol::{Codec, Encoded, EventKind},
    sync::MutexExt as _,
};

/// One room with members on this node.
pub struct Room {
    pub name: RoomName,
    pub(super) inner: Mutex<RoomInner>,
    /// Set once the room is subscribed on the bus and knows its latest seq.
    pub(super) ready: OnceCell<()>,
    /// The bus's confirmation of our subscription, awaited by the first initialiser.
    pub(super) subscribed: Mutex<Option<oneshot::Receiver<()>>>,
    /// This room's group-commit writer on this node, while sends come.
    pub writer: writer::Slot,
    /// Where the room lists itself when its members change, for the next presence round.
    pub(super) changes: Arc<MemberChanges>,
}

/// Rooms whose members changed since the last presence round: the round looks at these only,
/// so rooms whose members stay put cost it nothing.
#[derive(Default)]
pub(super) struct MemberChanges(Mutex<Vec<RoomName>>);

impl MemberChanges {
    pub(super) fn take(&self) -> Vec<RoomName> {
        std::mem::take(&mut *self.0.lock_unpoisoned())
    }
}

pub(super) struct RoomInner {
    pub(super) members: Vec<Member>,
    /// Last seq delivered, in order, to this node's members; `None` until initialised.
    pub(super) delivered: Option<Seq>,
    /// Messages that arrived ahead of a gap, by seq.
    pub(super) pending: BTreeMap<Seq, Arc<Encoded>>,
    /// Highest seq known to exist in the store; a repair task runs while `delivered` is below.
    pub(super) fill_target: Seq,
    pub(super) filling: bool,
    /// Removed from the hub: joiners holding this `Arc` must look the room up again.
    pub(super) closed: bool,
    /// Messages written to members, by transport (native, Socket.IO).
    pub(super) delivered_total: [metrics::Counter; 2],
    /// Who the members here were last told is online, sorted.
    pub(super) announced: Vec<Uuid>,
    /// Listed in [`MemberChanges`] and not yet looked at by a presence round.
    pub(super) changes_listed: bool,
}

pub(super) struct Member {
    pub(super) handle: SessionHandle,
    /// Last seq queued for this member; later events at or below it are duplicates.
    pub(super) last: Seq,
    /// False while the member catches up from the store; live events skip it meanwhile.
    pub(super) live: bool,
}

/// The room is gone from the hub; look it up again.
#[derive(Debug)]
pub struct RoomClosed;

/// Where a member starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Live from now on; the room's latest delivered seq is given.
    Live { latest: Seq },
    /// Must catch up from the store after `from` before going live.
    CatchUp { latest: Seq, from: Seq },
}

impl Room {
    pub(super) fn lock(&self) -> MutexGuard<'_, RoomInner> {
        // A panic while holding the lock cannot leave the room half-updated in a way that
        // matters more than stopping delivery would, so poisoning is ignored.
        self.inner.lock_unpoisoned()
    }

    /// Adds a session. With `since`, it must catch up (see [`Hub::go_live`](super::Hub::go_live)). `joined` runs
    /// under the room's lock just before the member is added, with the latest seq the join
    /// answers: whatever it writes to the session precedes every live event of the room.
    pub fn add_member(
        &self,
        handle: SessionHandle,
        since: Option<Seq>,
        joined: impl FnOnce(Seq),
    ) -> Result<Start, RoomClosed> {
        let mut inner = self.lock();
        if inner.closed {
            return Err(RoomClosed);
        }
        let latest = inner.delivered.unwrap_or(0);
        inner.members.retain(|m| m.handle.id != handle.id);
        let (member, start) = match since {
            Some(from) if from < latest => {
                (Member { handle, last: from, live: false }, Start::CatchUp { latest, from })
            }
            // A client that has seen more than this node delivered so far (it came from a node
            // further ahead) is live at once; what it has seen is skipped as it arrives.
            Some(from) => (Member { handle, last: from, live: true }, Start::Live { latest: latest.max(from) }),
            None => (Member { handle, last: latest, live: true }, Start::Live { latest }),
        };
        let (Start::Live { latest } | Start::CatchUp { latest, .. }) = start;
        joined(latest);
        inner.members.push(member);
        self.members_changed(&mut inner);
        Ok(start)
    }

    /// Lists the room for the next presence round (once until that round looks at it). Every
    /// change of `members` calls this: the rounds see no other way a member comes or goes.
    pub(super) fn members_changed(&self, inner: &mut RoomInner) {
        if !std::mem::replace(&mut inner.changes_listed, true) {
            self.changes.0.lock_unpoisoned().push(self.name.clone());
        }
    }

    /// A presence round took the listing: later changes list the room again.
    pub(super) fn looked_at(&self) {
        self.lock().changes_listed = false;
    }

    /// Records that the members here are told `online` is who is online; returns who came and
    /// who went since they were last told, or `None` when nothing changed.
    pub fn announce(&self, online: &HashSet<Uuid>) -> Option<(Vec<Uuid>, Vec<Uuid>)> {
        let mut inner = self.lock();
        let came: Vec<Uuid> = online.iter().filter(|u| inner.announced.binary_search(u).is_err()).copied().collect();
        let went: Vec<Uuid> = inner.announced.iter().filter(|u| !online.contains(u)).copied().collect();
        if came.is_empty() && went.is_empty() {
            return None;
        }
        let mut now: Vec<Uuid> = online.iter().copied().collect();
        now.sort_unstable();
        now.shrink_to_fit();
        inner.announced = now;
        Some((came, went))
    }

    /// Who the members here were last told is online.
    pub fn announced(&self) -> Vec<Uuid> {
        self.lock().announced.clone()
    }

    /// Members on this node.
    pub fn member_count(&self) -> usize {
        self.lock().members.len()
    }

    /// The users of this node's members.
    pub(super) fn users(&self) -> std::collections::HashSet<uuid::Uuid> {
        self.lock().members.iter().map(|m| m.handle.user).collect()
    }

    /// Delivers one message event in seq order, holding early ones back. Returns true when a
    /// gap appeared that no repair task is working on yet.
    pub(super) fn accept(&self, seq: Seq, frame: &Arc<Encoded>) -> bool {
        let mut inner = self.lock();
        let Some(delivered) = inner.delivered else {
            inner.pending.insert(seq, Arc::clone(frame));
            return false;
        };
        if seq <= delivered {
            return false; // already delivered: a duplicate from the bus or a repair
        }
        if seq > delivered + 1 {
            inner.pending.insert(seq, Arc::clone(frame));
            inner.fill_target = inner.fill_target.max(seq - 1);
            return !std::mem::replace(&mut inner.filling, true);
        }
        deliver(&mut inner, seq, frame);
        drain_pending(&mut inner);
        false
    }

    /// Delivers a system or typing event to live members other than its origin.
    pub(super) fn broadcast(&self, kind: EventKind, frame: &Arc<Encoded>) {
        let mut inner = self.lock();
        let mut kicked = false;
        for m in inner.members.iter().filter(|m| m.live) {
            let skip = match kind {
                EventKind::System { origin } => m.handle.id == origin,
                EventKind::Typing { user } => m.handle.user == user,
                EventKind::Message { .. }
                | EventKind::Deleted { .. }
                | EventKind::Edited { .. }
                | EventKind::Reacted { .. }
                | EventKind::Removed { .. }
                | EventKind::Muted { .. }
                | EventKind::Read { .. } => false,
                // The original platform's clients have no use for it.
                EventKind::Presence => m.handle.outbox.codec() == Codec::SocketIo,
            };
            if !skip && !m.handle.outbox.offer_event(frame) {
                kicked = true;
            }
        }
        if kicked {
            remove_kicked(&mut inner);
        }
        // The removed user's sessions, told above, are members no more: nothing else of this
        // room reaches them, and their sessions refuse to use it.
        if let EventKind::Muted { user, until } = kind {
            for m in inner.members.iter().filter(|m| m.handle.user == user) {
                m.handle.mute(&self.name, until);
            }
        }
        if let EventKind::Removed { user } = kind {
            // The nil user stands for everyone: the room was archived.
            let everyone = user.is_nil();
            let before = inner.members.len();
            inner.members.retain(|m| {
                let stays = !everyone && m.handle.user != user;
                if !stays {
                    m.handle.evict(&self.name);
                }
                stays
            });
            if inner.members.len() < before {
                self.members_changed(&mut inner);
            }
        }
    }
}

/// Queues message `seq` for every live member that has not had it. Caller holds the lock and
/// has checked `seq == delivered + 1`.
fn deliver(inner: &mut RoomInner, seq: Seq, frame: &Arc<Encoded>) {
    inner.delivered = Some(seq);
    let mut kicked = false;
    let mut written = [0u64; 2];
    for m in &mut inner.members {
        if !m.live || seq <= m.last {
            continue;
        }
        if m.handle.outbox.offer_event(frame) {
            m.last = seq;
            written[usize::from(m.handle.outbox.codec() == Codec::SocketIo)] += 1;
        } else {
            kicked = true;
        }
    }
    // Once per message, not per recipient: the counters are shared by every thread.
    for (counter, n) in inner.delivered_total.iter().zip(written) {
        if n > 0 {
            counter.increment(n);
        }
    }
    if kicked {
        remove_kicked(inner);
    }
}

pub(super) fn drain_pending(inner: &mut RoomInner) {
    while let Some(delivered) = inner.delivered {
        let Some(entry) = inner.pending.first_entry() else { break };
        if *entry.key() <= delivered {
            entry.remove();
        } else if *entry.key() == delivered + 1 {
            let (seq, frame) = entry.remove_entry();
            deliver(inner, seq, &frame);
        } else {
            break;
        }
    }
}

/// Drops members whose session was kicked (queue overflow) or has gone. Not listed for
/// presence here: a kicked session's task ends and leaves each of its rooms, which lists them.
fn remove_kicked(inner: &mut RoomInner) {
    inner.members.retain(|m| m.handle.outbox.is_open());
}
