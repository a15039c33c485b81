// What the browser tests stand on: confab nodes started from the built binary on free ports,
// a scratch PostgreSQL database, and headless Debian Chromium driven by playwright-core.
//
// Environment:
//   CONFAB_BIN                    the confab binary (tests/browser.rs passes its own build)
//   CONFAB_TEST_DATABASE_URL      an admin URL, e.g. postgres://postgres@127.0.0.1:5432/postgres
//   CONFAB_TEST_REDIS_URL         e.g. redis://127.0.0.1:6379
//   CONFAB_TEST_REQUIRE_SERVICES  =1: a missing piece is a failure, not a skip
//   CONFAB_CHROMIUM               the browser (default /usr/bin/chromium); never downloaded

import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const ARTIFACTS = path.join(ROOT, 'test-artifacts');
export const CHROMIUM = process.env.CONFAB_CHROMIUM || '/usr/bin/chromium';

/** Flags for Chromium on a machine with a closed network (see e2e/README.md). */
export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--no-first-run',
  '--disable-quic',
  '--disable-sync',
];

/** Why the browser suite cannot run here, or null. */
export function missingPrerequisite() {
  if (!process.env.CONFAB_BIN) return 'CONFAB_BIN is not set (cargo test --test browser sets it)';
  if (!existsSync(process.env.CONFAB_BIN)) return `CONFAB_BIN=${process.env.CONFAB_BIN} does not exist`;
  if (!process.env.CONFAB_TEST_DATABASE_URL) return 'CONFAB_TEST_DATABASE_URL is not set (two nodes share PostgreSQL)';
  if (!process.env.CONFAB_TEST_REDIS_URL) return 'CONFAB_TEST_REDIS_URL is not set (two nodes share Redis)';
  if (!existsSync(CHROMIUM)) return `${CHROMIUM} is missing: apt-get install -y chromium`;
  return null;
}

/** `{ skip }` options for node:test: skip with the reason, or fail if services are required. */
export function skipUnlessReady() {
  const missing = missingPrerequisite();
  if (missing && process.env.CONFAB_TEST_REQUIRE_SERVICES === '1') {
    throw new Error(`CONFAB_TEST_REQUIRE_SERVICES=1 but ${missing}`);
  }
  return missing ? { skip: missing } : {};
}

/** A port nobody listens on right now (bound, then released). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

export function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

/** A fresh PostgreSQL database next to the admin URL's; `drop()` removes it. */
export async function scratchDatabase(adminUrl) {
  const { default: pg } = await import('pg');
  const name = `confab_e2e_${randomBytes(6).toString('hex')}`;
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE ${name}`);
  } finally {
    await admin.end();
  }
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  return {
    name,
    url: url.toString(),
    async drop() {
      const c = new pg.Client({ connectionString: adminUrl });
      await c.connect();
      try {
        await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      } finally {
        await c.end();
      }
    },
  };
}

/** Variables of the outer environment that would override what a test node is given. */
const FOREIGN_CONFIG = /^(CONFAB_|DATABASE_URL$|REDIS_URL$|PORT$|JWT_SECRET$|CORS_ORIGIN$|MESSAGE_MAX_LEN$)/;

/** One `confab serve` process, restartable on the same port. */
export class ConfabNode {
  constructor(name, { port, env }) {
    this.name = name;
    this.port = port;
    this.url = `http://127.0.0.1:${port}`;
    this.env = env;
    this.dir = mkdtempSync(path.join(tmpdir(), `confab-e2e-${name}-`));
    this.log = [];
    this.proc = null;
  }

  #processEnv() {
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !FOREIGN_CONFIG.test(k)));
    return Object.assign(env, this.env, { CONFAB_NODE_ID: this.name });
  }

  /** Runs an admin command (`confab user disable …`) against this node's configuration. */
  async admin(args) {
    const proc = spawn(process.env.CONFAB_BIN, args, { cwd: this.dir, env: this.#processEnv(), stdio: 'pipe' });
    let out = '';
    proc.stdout.on('data', (c) => (out += c));
    proc.stderr.on('data', (c) => (out += c));
    const code = await new Promise((r) => proc.once('exit', r));
    if (code !== 0) throw new Error(`confab ${args.join(' ')} exited ${code}: ${out}`);
    return out;
  }

  async start() {
    const env = this.#processEnv();
    const proc = spawn(process.env.CONFAB_BIN, ['serve', '--listen', `127.0.0.1:${this.port}`], {
      cwd: this.dir,
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.proc = proc;
    const keep = (chunk) => {
      for (const line of chunk.toString().split('\n')) if (line) this.log.push(line);
      if (this.log.length > 2000) this.log.splice(0, this.log.length - 2000);
    };
    proc.stdout.on('data', keep);
    proc.stderr.on('data', keep);
    let exited = null;
    proc.once('exit', (code, signal) => {
      exited = `exited (${code ?? signal})`;
      this.log.push(`-- ${this.name} ${exited}`);
    });
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline) {
      if (exited) throw new Error(`${this.name} ${exited} before it was ready:\n${this.tail()}`);
      try {
        const res = await fetch(`${this.url}/ready`);
        if (res.status === 200) return;
      } catch {
        // not listening yet
      }
      await sleep(100);
    }
    throw new Error(`${this.name} was not ready within 30 s:\n${this.tail()}`);
  }

  /** Stops the process with `signal` and waits for it to exit. */
  async stop(signal = 'SIGTERM') {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = new Promise((r) => proc.once('exit', r));
    proc.kill(signal);
    const timer = setTimeout(() => proc.kill('SIGKILL'), 15_000);
    await exited;
    clearTimeout(timer);
  }

  tail(n = 60) {
    return this.log.slice(-n).join('\n');
  }

  saveLog() {
    mkdirSync(ARTIFACTS, { recursive: true });
    writeFileSync(path.join(ARTIFACTS, `${this.name}.log`), `${this.log.join('\n')}\n`);
  }

  cleanup() {
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/**
 * Chromium with a fresh profile directory, one page, and a record of everything a test wants
 * to assert on afterwards: dialogs (there must be none), page errors, CSP violations.
 */
export async function openBrowser(name, { viewport = { width: 1100, height: 720 }, colorScheme = 'light' } = {}) {
  const { chromium } = await import('playwright-core');
  const profile = mkdtempSync(path.join(tmpdir(), `confab-e2e-chromium-${name}-`));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    viewport,
    colorScheme,
  });
  const page = context.pages()[0] ?? (await context.newPage());
  const record = { dialogs: [], errors: [], csp: [], console: [] };
  page.on('dialog', (d) => {
    record.dialogs.push(d.message());
    d.dismiss().catch(() => {});
  });
  page.on('pageerror', (e) => record.errors.push(e.message));
  page.on('console', (m) => {
    const text = m.text();
    record.console.push(`${m.type()}: ${text}`);
    if (/Content Security Policy/i.test(text)) record.csp.push(text);
  });
  return {
    name,
    context,
    page,
    record,
    async close() {
      await context.close().catch(() => {});
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

/**
 * axe-core's serious and critical findings on the page as it is now (WCAG 2 A/AA rules:
 * names, labels, roles, contrast). Evaluated through the DevTools protocol, which the page's
 * CSP does not govern, so the page itself needs no change to be checked.
 */
export async function accessibilityProblems(page) {
  const source = readFileSync(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8');
  await page.evaluate(source);
  return page.evaluate(async () => {
    const result = await globalThis.axe.run(document, {
      runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice'] },
      resultTypes: ['violations'],
    });
    return result.violations
      .filter((v) => v.impact === 'serious' || v.impact === 'critical')
      .map((v) => `${v.id} (${v.impact}): ${v.help} — ${v.nodes.map((n) => n.target.join(' ')).slice(0, 4).join(', ')}`);
  });
}

export async function screenshot(browser, file) {
  mkdirSync(ARTIFACTS, { recursive: true });
  await browser.page.screenshot({ path: path.join(ARTIFACTS, file) });
}
