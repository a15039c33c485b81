//! Messages: the rows of a room's seq stream (messages, edits, deletions, reactions), and how
//! they appear on the wire.

/// A per-room message sequence number; the first message of a room has seq 1.
pub type Seq = i64;
