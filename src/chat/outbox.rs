//! A session's way out: the [`Outbox`] that writes its frames to its socket.
//!
//! The outbox writes straight to the socket from whichever task delivers (the hub fanning out a
//! message, a room writer acking a send): when nothing is queued ahead, a frame goes out with
//! one non-blocking write and the session's own task is never woken. Only when the socket
//! would block are frames queued, and the session task finishes writing them when the socket
//! drains. A queue that overflows marks the session too slow (it is closed with 1013 and
//! resumes later with `since`) rather than letting memory grow.
//!
//! Under load, writes are batched: a room writer delivers a whole committed batch (its acks and
//! its messages) inside [`corked`](super::cork::corked), which then gives each recipient
//! everything for it in one write instead of one write per frame.

use std::{
    collections::VecDeque,
    future::poll_fn,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWrite;

use super::{cork, session::Revocation};
use crate::{
    protocol::{Codec, Encoded, Reply, text_frame},
    sync::MutexExt as _,
};

/// Why an outbox stopped taking frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Its queue overflowed: the client does not read as fast as frames arrive.
    Slow,
    /// The socket failed.
    Broken,
    /// The session lost its right to run: it must end, telling the client why.
    Revoked(Revocation),
}

/// A session's way out: frames written in the order they are offered, straight to the socket
/// when nothing is queued, otherwise queued for the session task.
pub struct Outbox {
    codec: Codec,
    /// Frames queued before the session counts as too slow.
    limit: usize,
    state: Mutex<State>,
}

struct State {
    wire: Pin<Box<dyn AsyncWrite + Send>>,
    /// Whole frames, except that the first may be the unwritten rest of one. Allocated only
    /// while the socket is backed up.
    queue: VecDeque<Bytes>,
    /// The session task, woken when the queue needs writing or the outbox failed.
    waker: Option<Waker>,
    /// When the queued bytes last made progress (none queued: `None`).
    stalled_since: Option<Instant>,
    failure: Option<Failure>,
    /// `send_message` commands not yet answered: shutdown waits for them.
    inflight: usize,
    wake_when_settled: bool,
    life: Life,
    /// Frames were queued under a cork on some thread, which writes them when it uncorks
    /// (unless the session task wrote them first).
    corked: bool,
}

/// Where a session is in its life, as far as writing goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Life {
    Open,
    /// Only control frames are taken (see [`Outbox::begin_close`]).
    Closing,
    /// Nothing is taken, and the backlog is gone.
    Closed,
}

/// What a poll of the outbox waits for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Until {
    Failure,
    Empty,
    Settled,
}

/// Most bytes of queued frames joined into one write.
const COALESCE: usize = 16 * 1024;

impl Outbox {
    pub fn new(wire: impl AsyncWrite + Send + 'static, codec: Codec, limit: usize) -> Arc<Self> {
        let state = State {
            wire: Box::pin(wire),
            queue: VecDeque::new(),
            waker: None,
            stalled_since: None,
            failure: None,
            inflight: 0,
            wake_when_settled: false,
            life: Life::Open,
            corked: false,
        };
        Arc::new(Self { codec, limit, state: Mutex::new(state) })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update leaves the state consistent before anything that could panic.
        self.state.lock_unpoisoned()
    }

    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// Writes a fan-out event. False: the session is gone or too slow, drop it.
    pub fn offer_event(self: &Arc<Self>, ev: &Encoded) -> bool {
        self.push(std::slice::from_ref(ev.frame(self.codec)), Some(self.limit), false)
    }

    /// Writes the answer to a command.
    pub fn offer_reply(self: &Arc<Self>, reply: &Reply) -> bool {
        self.reply(reply, false)
    }

    /// Writes the answer to a `send_message` handed to a room writer (its ack, or why it was
    /// not stored), which settles it: see [`Outbox::settled`].
    pub fn settle_send(self: &Arc<Self>, reply: &Reply) -> bool {
        self.reply(reply, true)
    }

    fn reply(self: &Arc<Self>, reply: &Reply, settles: bool) -> bool {
        let frames = self.codec.encode_reply(reply);
        self.push(&frames, Some(self.limit), settles)
    }

    /// Writes a text frame outside the queue limit (handshakes, protocol answers).
    pub fn send_text(self: &Arc<Self>, payload: impl Into<Bytes>) -> bool {
        self.send_raw(&text_frame(payload))
    }

    /// Writes an already framed buffer outside the queue limit (heartbeats, close frames).
    pub fn send_raw(self: &Arc<Self>, frame: &Bytes) -> bool {
        self.push(std::slice::from_ref(frame), None, false)
    }

    /// Writes `frames` in order; with `settles`, counts a send as answered once they are in
    /// (under the same lock, so [`Outbox::settled`] never sees it answered but not queued).
    fn push(self: &Arc<Self>, frames: &[Bytes], limit: Option<usize>, settles: bool) -> bool {
        let cork = cork::is_corked();
        let mut st = self.lock();
        let mut taken = true;
        let mut corked = false;
        for frame in frames {
            match st.push(frame, limit, cork) {
                Pushed::Refused => {
                    taken = false;
                    break;
                }
                Pushed::Corked => corked = true,
                Pushed::Written | Pushed::Queued => {}
            }
        }
        if settles {
            st.inflight = st.inflight.saturating_sub(1);
            if st.inflight == 0 && st.wake_when_settled {
                st.wake();
            }
        }
        drop(st);
        if corked {
            cork::hold(Arc::clone(self));
        }
        taken
    }

    /// Writes what was queued under a cork, in one write; whatever the socket does
    /// not take is left to the session task.
    pub(super) fn uncork(&self) {
        let mut st = self.lock();
        if !std::mem::take(&mut st.corked) {
            return; // the session task wrote it already
        }
        st.flush(&mut Context::from_waker(Waker::noop()));
        if !st.queue.is_empty() {
            st.wake();
        }
    }

    /// A `send_message` is being handed to a room writer; [`Outbox::settle_send`] answers it.
    pub fn began_send(&self) {
        self.lock().inflight += 1;
    }

    /// The room writer never got the send (it is gone), so it will not answer it.
    pub fn cancel_send(&self) {
        let mut st = self.lock();
        st.inflight = st.inflight.saturating_sub(1);
    }

    /// The session is closing: from now on only control frames (its close frame) are written,
    /// so nothing follows the close frame. Room writers may still be answering its sends.
    pub fn begin_close(&self) {
        self.lock().life = Life::Closing;
    }

    /// Ends the session for `why`: deliveries stop at once (its rooms drop it as they would a
    /// slow member) and the session task wakes to tell the client and close. False if the
    /// session had already failed or is closing.
    pub fn revoke(&self, why: Revocation) -> bool {
        let mut st = self.lock();
        if st.failure.is_some() || st.life != Life::Open {
            return false;
        }
        st.fail(Failure::Revoked(why));
        true
    }

    /// Whether frames are still taken for delivery.
    pub fn is_open(&self) -> bool {
        let st = self.lock();
        st.life == Life::Open && st.failure.is_none()
    }

    /// How long queued frames have made no progress.
    pub fn stalled_for(&self) -> Duration {
        self.lock().stalled_since.map_or(Duration::ZERO, |t| t.elapsed())
    }

    /// Writes queued frames as the socket takes them; resolves only when the outbox fails.
    pub async fn failed(&self) -> Failure {
        match poll_fn(|cx| self.poll_until(cx, Until::Failure)).await {
            Err(f) => f,
            Ok(()) => Failure::Broken,
        }
    }

    /// Writes until nothing is queued (a session marked slow still drains).
    pub async fn drained(&self) -> Result<(), Failure> {
        poll_fn(|cx| self.poll_until(cx, Until::Empty)).await
    }

    /// Writes until every `send_message` is answered and nothing is queued.
    pub async fn settled(&self) -> Result<(), Failure> {
        poll_fn(|cx| self.poll_until(cx, Until::Settled)).await
    }

    /// Sends FIN once queued frames are out.
    pub async fn shutdown(&self) {
        if self.drained().await.is_ok() {
            let _ = poll_fn(|cx| self.lock().wire.as_mut().poll_shutdown(cx)).await;
        }
    }

    /// The session is over: later offers are dropped and the backlog is freed.
    pub fn close(&self) {
        let mut st = self.lock();
        st.life = Life::Closed;
        st.queue = VecDeque::new();
        st.waker = None;
    }

    fn poll_until(&self, cx: &mut Context<'_>, until: Until) -> Poll<Result<(), Failure>> {
        let mut st = self.lock();
        if !st.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            st.waker = Some(cx.waker().clone());
        }
        // Writing with this task's waker: from now on a blocked socket wakes this task, and
        // an uncork must not write (with a no-op waker) over that registration.
        st.corked = false;
        st.flush(cx);
        match (st.failure, until) {
            (Some(Failure::Broken), _) => return Poll::Ready(Err(Failure::Broken)),
            (Some(f @ (Failure::Slow | Failure::Revoked(_))), Until::Failure | Until::Settled) => {
                return Poll::Ready(Err(f));
            }
            _ => {}
        }
        let done = match until {
            Until::Failure => false,
            Until::Empty => st.queue.is_empty(),
            Until::Settled => {
                st.wake_when_settled = true;
                st.queue.is_empty() && st.inflight == 0
            }
        };
        if done { Poll::Ready(Ok(())) } else { Poll::Pending }
    }
}

impl State {
    /// Writes `frame`, or queues it (a reference-counted clone: the buffer is shared) when
    /// something is ahead of it or the socket would block.
    fn push(&mut self, frame: &Bytes, limit: Option<usize>, cork: bool) -> Pushed {
        match self.failure {
            _ if self.life == Life::Closed => return Pushed::Refused,
            Some(Failure::Broken) => return Pushed::Refused,
            Some(Failure::Slow | Failure::Revoked(_)) if limit.is_some() => return Pushed::Refused,
            _ if self.life == Life::Closing && limit.is_some() => return Pushed::Refused,
            _ => {}
        }
        if self.queue.is_empty() {
            if cork {
                self.queue.push_back(frame.clone());
                self.corked = true;
                return Pushed::Corked;
            }
            // Nothing ahead of it: write now, from this task. A socket that would block has the
            // rest queued and the session task woken to finish it with a real waker.
            let mut cx = Context::from_waker(Waker::noop());
            match self.wire.as_mut().poll_write(&mut cx, frame) {
                Poll::Ready(Ok(n)) if n == frame.len() => return Pushed::Written,
                Poll::Ready(Ok(n)) if n > 0 => self.queue.push_back(frame.slice(n..)),
                Poll::Pending => self.queue.push_back(frame.clone()),
                Poll::Ready(_) => {
                    self.fail(Failure::Broken);
                    return Pushed::Refused;
                }
            }
            self.stalled_since = Some(Instant::now());
            self.wake();
            return Pushed::Queued;
        }
        if limit.is_some_and(|limit| self.queue.len() >= limit) {
            self.fail(Failure::Slow);
            return Pushed::Refused;
        }
        self.queue.push_back(frame.clone());
        Pushed::Queued
    }

    /// Writes as much of the queue as the socket takes now.
    fn flush(&mut self, cx: &mut Context<'_>) {
        let mut progressed = false;
        while !self.queue.is_empty() && self.failure != Some(Failure::Broken) {
            self.coalesce();
            match self.wire.as_mut().poll_write(cx, &self.queue[0]) {
                Poll::Ready(Ok(written)) if written > 0 => {
                    self.advance(written);
                    progressed = true;
                }
                Poll::Pending => {
                    // The clock is read only when the socket is backed up.
                    if progressed || self.stalled_since.is_none() {
                        self.stalled_since = Some(Instant::now());
                    }
                    return;
                }
                Poll::Ready(_) => self.fail(Failure::Broken),
            }
        }
        if self.queue.is_empty() {
            self.stalled_since = None;
            // Idle sessions keep no queue: most connections are idle most of the time.
            if self.queue.capacity() > 0 {
                self.queue = VecDeque::new();
            }
        }
    }

    /// Joins the frames at the front of the queue into one buffer (up to [`COALESCE`] bytes),
    /// so they go out in one write: the upgraded connection has no vectored writes (a
    /// vectored write would send only the first frame), and a copy of a few small frames costs
    /// far less than a system call each.
    fn coalesce(&mut self) {
        if self.queue.len() < 2 || self.queue[0].len() + self.queue[1].len() > COALESCE {
            return;
        }
        let mut size = 0;
        for frame in &self.queue {
            if size + frame.len() > COALESCE {
                break;
            }
            size += frame.len();
        }
        let mut joined = BytesMut::with_capacity(size);
        while let Some(frame) = self.queue.front() {
            if joined.len() + frame.len() > COALESCE {
                break;
            }
            joined.extend_from_slice(frame);
            self.queue.pop_front();
        }
        self.queue.push_front(joined.freeze());
    }

    /// Drops `written` bytes from the front of the queue.
    fn advance(&mut self, mut written: usize) {
        while written > 0 {
            let Some(front) = self.queue.front_mut() else { return };
            if written < front.len() {
                *front = front.slice(written..);
                return;
            }
            written -= front.len();
            self.queue.pop_front();
        }
    }

    fn fail(&mut self, failure: Failure) {
        if self.failure != Some(Failure::Broken) {
            self.failure = Some(failure);
        }
        match failure {
            Failure::Broken => self.queue = VecDeque::new(),
            // What a slow peer has not taken yet is dropped (it resumes with `since`), so the
            // close frame that tells it so is next in line. The head may be partly written
            // and is kept whole: the frames behind it start on a frame boundary.
            Failure::Slow => self.queue.truncate(1),
            Failure::Revoked(_) => {}
        }
        self.wake();
    }

    fn wake(&self) {
        if let Some(w) = &self.waker {
            w.wake_by_ref();
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Pushed {
    Written,
    Queued,
    /// Queued under this thread's cork; the cork must flush it.
    Corked,
    Refused,
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt as _;
    use uuid::Uuid;

    use super::*;
    use crate::{
        chat::cork::corked,
        protocol::{ReplyBody, Tag},
    };

    fn outbox(wire: tokio::io::DuplexStream, limit: usize) -> Arc<Outbox> {
        Outbox::new(wire, Codec::Native, limit)
    }

    /// Reads `n` text frames of up to 125 bytes (one-byte length) off the client's end.
    async fn read_frames(client: &mut tokio::io::DuplexStream, n: usize) -> Vec<String> {
        let mut frames = Vec::new();
        for _ in 0..n {
            let mut header = [0u8; 2];
            client.read_exact(&mut header).await.unwrap();
            assert_eq!(header[0], 0x81, "a final text frame");
            let mut payload = vec![0u8; usize::from(header[1])];
            client.read_exact(&mut payload).await.unwrap();
            frames.push(String::from_utf8(payload).unwrap());
        }
        frames
    }

    #[tokio::test]
    async fn frames_go_out_in_order_whether_written_at_once_or_queued() {
        // A 64-byte pipe: most of these 20 frames cannot be written at once.
        let (server, mut client) = tokio::io::duplex(64);
        let out = outbox(server, 100);
        for i in 0..20 {
            assert!(out.send_text(format!("frame number {i:02}")));
        }
        assert!(out.stalled_for() < Duration::from_secs(1));
        let (frames, drained) = tokio::join!(read_frames(&mut client, 20), out.drained());
        assert_eq!(drained, Ok(()));
        let expected: Vec<String> = (0..20).map(|i| format!("frame number {i:02}")).collect();
        assert_eq!(frames, expected);
        assert_eq!(out.stalled_for(), Duration::ZERO, "nothing left queued");
    }

    #[tokio::test]
    async fn a_reader_that_falls_behind_the_limit_is_marked_slow_and_its_close_skips_the_backlog() {
        let (server, mut client) = tokio::io::duplex(16);
        let out = outbox(server, 4);
        let reply = Reply::new(Tag::default(), ReplyBody::Pong);
        let accepted = (0..10).take_while(|_| out.offer_reply(&reply)).count();
        assert!(accepted < 10, "the queue limit was enforced");
        assert!(!out.is_open());
        assert_eq!(out.failed().await, Failure::Slow);
        assert!(!out.offer_reply(&reply), "no more deliveries to a slow session");
        // What the reader had not taken is dropped, so the close comes next: behind at most
        // the frame that was partly written.
        assert!(out.send_text(Bytes::from_static(b"bye")));
        let read = async {
            let mut frames = Vec::new();
            while frames.last().is_none_or(|f| f != "bye") {
                frames.extend(read_frames(&mut client, 1).await);
            }
            frames
        };
        let (frames, drained) = tokio::join!(read, out.drained());
        assert_eq!(drained, Ok(()));
        assert!(frames.len() < accepted + 1, "the backlog was dropped: {frames:?}");
    }

    #[tokio::test]
    async fn a_cork_holds_writes_back_and_then_writes_each_session_once() {
        let (server_a, mut client_a) = tokio::io::duplex(4096);
        let (server_b, mut client_b) = tokio::io::duplex(4096);
        let (a, b) = (outbox(server_a, 100), outbox(server_b, 100));
        corked(|| {
            for i in 0..3 {
                assert!(a.send_text(format!("a{i}")));
                assert!(b.send_text(format!("b{i}")));
            }
            let mut byte = [0u8; 1];
            assert!(
                futures_util::FutureExt::now_or_never(client_a.read(&mut byte)).is_none(),
                "nothing is written while corked"
            );
        });
        // Written when the cork came off: nobody else drives these outboxes.
        assert_eq!(read_frames(&mut client_a, 3).await, ["a0", "a1", "a2"]);
        assert_eq!(read_frames(&mut client_b, 3).await, ["b0", "b1", "b2"]);
        assert_eq!(a.stalled_for(), Duration::ZERO);
    }

    #[tokio::test]
    async fn a_closed_peer_breaks_the_outbox() {
        let (server, client) = tokio::io::duplex(64);
        let out = outbox(server, 8);
        drop(client);
        assert!(!out.send_text(Bytes::from_static(b"lost")));
        assert_eq!(out.failed().await, Failure::Broken);
        assert_eq!(out.drained().await, Err(Failure::Broken));
    }

    #[tokio::test]
    async fn settled_waits_for_every_send_to_be_answered() {
        let (server, mut client) = tokio::io::duplex(1024);
        let out = outbox(server, 8);
        out.began_send();
        let settled = tokio::spawn({
            let out = Arc::clone(&out);
            async move { out.settled().await }
        });
        tokio::task::yield_now().await;
        assert!(!settled.is_finished());
        out.settle_send(&Reply::new(Tag::default(), ReplyBody::Sent { id: Uuid::nil(), seq: 1 }));
        assert_eq!(settled.await.unwrap(), Ok(()));
        assert!(read_frames(&mut client, 1).await[0].contains(r#""seq":1"#), "the ack");
    }
}
