//! One measured window: [`Clients::phase`] sets the window, runs the pacer, waits out the drain,
//! and sums what the receivers counted into a [`Phase`], the figures every report prints.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, bail};

use super::{
    Clients,
    pacer::{Schedule, pace},
    receive::{Counters, histogram},
};
use crate::{
    clock,
    procfs::{CpuDelta, CpuSample},
    report::Summary,
};

impl Clients {
    /// Runs one open-loop phase at `rate` messages/s and measures its window.
    pub async fn phase(
        &mut self,
        rate: f64,
        warmup: Duration,
        duration: Duration,
        drain: Duration,
    ) -> anyhow::Result<Phase> {
        if self.senders.is_empty() || rate <= 0.0 {
            bail!("a phase needs senders and a positive rate");
        }
        // Close the old window before zeroing, so stragglers of the last phase count nowhere.
        self.shared.window_start.store(u64::MAX, Ordering::Relaxed);
        self.shared.window_end.store(u64::MAX, Ordering::Relaxed);
        for c in &self.counters {
            c.reset();
        }
        for h in &self.shared.hists {
            let mut h = h.lock().expect("no panics under this lock");
            h.all.reset();
            h.same.reset();
            h.cross.reset();
            h.read_delay.reset();
        }
        *self.shared.first_error.lock().expect("no panics") = None;
        let closed_before = self.shared.closed.load(Ordering::Relaxed);

        let t0 = clock::now_ns() + 100_000_000;
        let start = t0 + duration_ns(warmup);
        let end = start + duration_ns(duration);
        let schedule = Schedule { rate, t0, start, end, flush_until: end + duration_ns(drain) };
        self.shared.window_start.store(start, Ordering::Relaxed);
        self.shared.window_end.store(end, Ordering::Relaxed);
        let mut senders = std::mem::take(&mut self.senders);
        let (size, client_ids) = (self.plan.size, self.plan.client_ids);
        let shared = Arc::clone(&self.shared);
        let pacer = tokio::task::spawn_blocking(move || {
            let report = pace(&mut senders, schedule, (size, client_ids), &shared.stop);
            (senders, report)
        });
        tokio::time::sleep_until(clock::instant(start).into()).await;
        let cpu_start = CpuSample::take(&self.pids);
        tokio::time::sleep_until(clock::instant(end).into()).await;
        let cpu_end = CpuSample::take(&self.pids);
        let (senders, report) = pacer.await.context("the pacer thread panicked")?;
        self.senders = senders;

        // Drain: wait for what is still in flight, up to the drain time after the window.
        let deadline = end + duration_ns(drain);
        let delivered = loop {
            let delivered = self.sum(|c| &c.delivered);
            if delivered >= report.expected || clock::now_ns() >= deadline {
                break delivered;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // A last moment for duplicates that arrive right behind the final delivery.
        tokio::time::sleep(Duration::from_millis(50)).await;

        let mut all = histogram();
        let mut same = histogram();
        let mut cross = histogram();
        let mut read_delay = histogram();
        for h in &self.shared.hists {
            let h = h.lock().expect("no panics under this lock");
            all.add(&h.all).expect("same bounds");
            same.add(&h.same).expect("same bounds");
            cross.add(&h.cross).expect("same bounds");
            read_delay.add(&h.read_delay).expect("same bounds");
        }
        let cpu = cpu_start.until(&cpu_end);
        let window_s = duration.as_secs_f64();
        let (closed, first_close) = self.closed();
        Ok(Phase {
            rate,
            window_s,
            window_ns: (start, end),
            sent: report.sent,
            expected: report.expected,
            delivered,
            lost: report.expected.saturating_sub(delivered),
            duplicates: self.sum(|c| &c.duplicates),
            ooo_seq: self.sum(|c| &c.ooo_seq),
            ooo_sender: self.sum(|c| &c.ooo_sender),
            acks: self.sum(|c| &c.acks),
            errors: self.sum(|c| &c.errors),
            unstamped: self.sum(|c| &c.unstamped),
            first_error: self.shared.first_error.lock().expect("no panics").clone(),
            send_errors: report.send_errors,
            unflushed_bytes: report.unflushed_bytes,
            closed: closed - closed_before,
            first_close,
            latency: Summary::of(&all),
            same_node: Summary::of(&same),
            cross_node: Summary::of(&cross),
            read_delay: Summary::of(&read_delay),
            send_lag: Summary::of(&report.lag),
            cpu,
        })
    }

    fn sum(&self, field: impl Fn(&Counters) -> &AtomicU64) -> u64 {
        self.counters.iter().map(|c| field(c).load(Ordering::Relaxed)).sum()
    }
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// One measured window.
#[derive(Clone, Debug)]
pub struct Phase {
    pub rate: f64,
    pub window_s: f64,
    /// The measured window on the bench's clock: messages scheduled in `start..end` count.
    pub window_ns: (u64, u64),
    pub sent: u64,
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub ooo_seq: u64,
    pub ooo_sender: u64,
    pub acks: u64,
    pub errors: u64,
    /// Deliveries whose latency runs to the read, the kernel having given no arrival time.
    pub unstamped: u64,
    pub first_error: Option<String>,
    pub send_errors: u64,
    pub unflushed_bytes: usize,
    pub closed: u64,
    pub first_close: Option<String>,
    pub latency: Summary,
    pub same_node: Summary,
    pub cross_node: Summary,
    /// From a delivery's arrival in the socket to the bench's read of it: the generator's own
    /// queueing, left out of `latency`.
    pub read_delay: Summary,
    pub send_lag: Summary,
    pub cpu: CpuDelta,
}

impl Phase {
    pub fn deliveries_per_s(&self) -> f64 {
        self.delivered as f64 / self.window_s
    }

    /// The read delay, and whether any latency ran to the read instead.
    pub fn read_delay_line(&self) -> String {
        match self.unstamped {
            0 => self.read_delay.line(),
            n => format!(
                "{} ({n} deliveries had no arrival time: their latency runs to the read)",
                self.read_delay.line()
            ),
        }
    }

    pub fn out_of_order(&self) -> u64 {
        self.ooo_seq + self.ooo_sender
    }

    /// Nothing lost, duplicated, reordered or refused.
    pub fn correct(&self) -> bool {
        self.lost == 0
            && self.duplicates == 0
            && self.out_of_order() == 0
            && self.errors == 0
            && self.send_errors == 0
            && self.closed == 0
            && self.expected > 0
    }
}
