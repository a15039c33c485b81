// An independent second client for bench/tests/bench.rs: it shares no code with confab-bench, joins
// the same rooms on the same server as a fan-out run, and measures the delivery latency of the
// same messages with its own clock, so the test can check that the bench measures what a client
// sees.
//
// Every bench message's content starts with the tag `~B~<sender>~<seq>~<scheduled send time,
// Unix ns>~`. Latency here is (the system clock when the `message` event is handled) − (that
// scheduled time): the same definition as the bench's, taken by another process, another
// WebSocket implementation (the `ws` package) and a real JSON parse.
//
// Environment: CONFAB_URL (http://host:port), CONFAB_ROOMS (comma-separated room names).
// Protocol on stdio:
//   stdout `READY` once registered, connected and joined to every room;
//   stdin  `DONE <window start ns> <window end ns> <messages sent in the window>` (Unix ns);
//   stdout `CROSSCHECK {"count", "p50_ms", "p99_ms", "duplicates"}` over the messages scheduled in
//          the window, once all of them arrived (or 15 s passed), then it exits.

import { randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { createInterface } from 'node:readline';
import WebSocket from 'ws';

const base = process.env.CONFAB_URL;
const rooms = (process.env.CONFAB_ROOMS ?? '').split(',').filter(Boolean);
if (!base || rooms.length === 0) {
  console.error('set CONFAB_URL and CONFAB_ROOMS');
  process.exit(2);
}

// Wall-clock time in ns, to sub-µs: the process's start on the system clock (µs) plus the
// monotonic time since. Date.now() alone has only millisecond resolution.
const originNs = BigInt(Math.round(performance.timeOrigin * 1e3)) * 1000n;
const nowUnixNs = () => originNs + BigInt(Math.round(performance.now() * 1e6));

const email = `crosscheck-${randomUUID()}@bench.example.com`;
const registered = await fetch(`${base}/api/auth/register`, {
  method: 'POST',
  headers: { 'content-type': 'application/json' },
  body: JSON.stringify({ email, password: 'crosscheck-password' }),
});
if (registered.status !== 200) {
  console.error(`register answered ${registered.status}: ${await registered.text()}`);
  process.exit(1);
}
const { token } = await registered.json();

const ws = new WebSocket(`${base.replace(/^http/, 'ws')}/ws`, {
  headers: { authorization: `Bearer ${token}` },
  perMessageDeflate: false,
});

// Each tagged message once: [scheduled ns, latency ns].
const samples = [];
const seen = new Set();
let duplicates = 0;
const acks = new Map();
let onSample = () => {};

ws.on('message', (data) => {
  const at = nowUnixNs();
  const frame = JSON.parse(data.toString());
  if (frame.type === 'ack' && acks.has(frame.ref)) {
    acks.get(frame.ref)(frame);
    acks.delete(frame.ref);
  } else if (frame.type === 'error') {
    console.error(`error frame: ${JSON.stringify(frame)}`);
    process.exit(1);
  } else if (frame.type === 'message' && frame.content.startsWith('~B~')) {
    const [, , sender, k, sched] = frame.content.split('~');
    const key = `${frame.room}/${sender}/${k}`;
    if (seen.has(key)) {
      duplicates += 1;
      return;
    }
    seen.add(key);
    const scheduled = BigInt(sched);
    samples.push([scheduled, at - scheduled]);
    onSample();
  }
});
ws.on('close', (code) => {
  console.error(`connection closed (${code})`);
  process.exit(1);
});

await new Promise((resolve, reject) => {
  ws.once('open', resolve);
  ws.once('error', reject);
});
for (const [i, room] of rooms.entries()) {
  const ref = `join-${i}`;
  await new Promise((resolve) => {
    acks.set(ref, resolve);
    ws.send(JSON.stringify({ type: 'join_room', room, ref }));
  });
}
console.log('READY');

// Nearest rank, as a histogram's value at a quantile.
const percentile = (sorted, q) => sorted[Math.max(0, Math.ceil(q * sorted.length) - 1)];

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  const [word, startText, endText, sentText] = line.trim().split(/\s+/);
  if (word !== 'DONE') {
    continue;
  }
  const [start, end, sent] = [BigInt(startText), BigInt(endText), Number(sentText)];
  const inWindow = () => samples.filter(([scheduled]) => scheduled >= start && scheduled < end);
  await new Promise((resolve) => {
    const timer = setTimeout(resolve, 15_000);
    onSample = () => {
      if (inWindow().length >= sent) {
        clearTimeout(timer);
        resolve();
      }
    };
    onSample();
  });
  const latencies = inWindow()
    .map(([, latency]) => Number(latency) / 1e6)
    .sort((a, b) => a - b);
  const result = {
    count: latencies.length,
    p50_ms: latencies.length ? percentile(latencies, 0.5) : null,
    p99_ms: latencies.length ? percentile(latencies, 0.99) : null,
    duplicates,
  };
  console.log(`CROSSCHECK ${JSON.stringify(result)}`);
  ws.removeAllListeners('close');
  ws.close();
  process.exit(0);
}
