//! The write side of one floor connection: a frame is written with one non-blocking write when
//! nothing is queued and the socket takes it, as confab's outbox does; what the socket does not
//! take is queued and written by the connection's flush task.

use std::{
    collections::VecDeque,
    io,
    sync::{Arc, Mutex},
};

use bytes::{Buf as _, Bytes};
use tokio::{net::tcp::OwnedWriteHalf, sync::Notify};

use super::lock;

/// Frames waiting for a reader that does not keep up before it is cut off (confab's
/// `ws.outbound_queue` plays this part there).
const MAX_QUEUED: usize = 64 * 1024;

/// The write side of one connection.
pub(super) struct Outbox {
    pub(super) socket: OwnedWriteHalf,
    pub(super) queue: Mutex<Queue>,
    pub(super) wake: Notify,
}

#[derive(Default)]
pub(super) struct Queue {
    frames: VecDeque<Bytes>,
    closed: bool,
}

impl Outbox {
    /// Writes `frame` now if nothing is queued and the socket takes it; queues what it does not.
    pub(super) fn send(&self, frame: &Bytes) {
        let mut q = lock(&self.queue);
        if q.closed {
            return;
        }
        if !q.frames.is_empty() {
            if q.frames.len() >= MAX_QUEUED {
                q.closed = true;
                q.frames.clear();
                self.wake.notify_one();
            } else {
                q.frames.push_back(frame.clone());
            }
            return;
        }
        match self.socket.try_write(frame) {
            Ok(n) if n == frame.len() => return,
            Ok(n) => q.frames.push_back(frame.slice(n..)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => q.frames.push_back(frame.clone()),
            Err(_) => q.closed = true,
        }
        self.wake.notify_one();
    }

    pub(super) fn close(&self) {
        lock(&self.queue).closed = true;
        self.wake.notify_one();
    }

    pub(super) fn is_closed(&self) -> bool {
        lock(&self.queue).closed
    }
}

/// Writes what [`Outbox::send`] had to queue, whenever the socket takes more.
pub(super) async fn flush(outbox: Arc<Outbox>) {
    loop {
        outbox.wake.notified().await;
        loop {
            {
                let mut q = lock(&outbox.queue);
                if q.closed {
                    return;
                }
                while let Some(front) = q.frames.front_mut() {
                    match outbox.socket.try_write(front) {
                        Ok(n) if n == front.len() => {
                            q.frames.pop_front();
                        }
                        Ok(n) => front.advance(n),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(_) => {
                            q.closed = true;
                            return;
                        }
                    }
                }
                if q.frames.is_empty() {
                    break;
                }
            }
            if outbox.socket.writable().await.is_err() {
                outbox.close();
                return;
            }
        }
    }
}
