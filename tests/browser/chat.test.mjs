// Headless-Chromium test of the demo chat page served by `wsrelay --demo`.
//
//   RELAY=target/release/wsrelay CHROMIUM=/usr/bin/chromium node --test chat.test.mjs
//
// (scripts/test-browser.sh sets both up.) Starts the relay on a free loopback
// port with 1s protocol pings (2s pong timeout), opens the page as bob (directly) and as alice
// (through a TCP proxy the test can cut, to simulate a network blip), and
// checks what a person would see: presence, messages both ways, escaping,
// history after a reload, pings answered, recovery after a blip, changing
// rooms, leave.
//
// Every wait is a waitForFunction/waitForSelector on page state with a
// several-second timeout; nothing sleeps for a fixed time.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import puppeteer from 'puppeteer-core';

const RELAY = process.env.RELAY;
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const WAIT = { timeout: 20000 };
const START_TIMEOUT_MS = 30000;
const ROOM = 'demo:lobby';

// ---- relay --------------------------------------------------------------

// Starts the relay, resolves with its port once it logs the listening line.
function startRelay(logFile) {
  return new Promise((resolve, reject) => {
    const log = fs.createWriteStream(logFile);
    const env = { ...process.env, RUST_LOG: 'info' };
    const proc = spawn(
      RELAY,
      ['--demo', '--listen', '127.0.0.1:0', '--ping-interval', '1s', '--pong-timeout', '2s'],
      { env, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let seen = '';
    let done = false;
    const timer = setTimeout(() => finish(new Error(`relay did not log its port in ${START_TIMEOUT_MS} ms`)), START_TIMEOUT_MS);
    function finish(err, port) {
      if (done) return;
      done = true;
      clearTimeout(timer);
      if (err) {
        proc.kill('SIGKILL');
        reject(new Error(`${err.message}; relay output:\n${seen}`));
      } else {
        resolve({ proc, port });
      }
    }
    proc.stdout.pipe(log);
    proc.stderr.on('data', (chunk) => {
      log.write(chunk);
      if (done) return;
      seen += chunk.toString();
      const m = /listening on ws:\/\/127\.0\.0\.1:(\d+)/.exec(seen);
      if (m) finish(null, Number(m[1]));
    });
    proc.on('error', (e) => finish(e));
    proc.on('exit', (code, sig) => finish(new Error(`relay exited early (code ${code}, signal ${sig})`)));
  });
}

// ---- a TCP proxy that can be cut ----------------------------------------

// Forwards 127.0.0.1:<port> to the relay. `cut()` resets every proxied
// connection (the page sees its WebSocket die), `hold()` refuses new ones
// until `release()`: together, a network blip.
function startProxy(targetPort) {
  const sockets = new Set();
  let held = false;
  const server = net.createServer((client) => {
    if (held) {
      client.destroy();
      return;
    }
    const upstream = net.connect(targetPort, '127.0.0.1');
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => {});
    }
    client.pipe(upstream);
    upstream.pipe(client);
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
  });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => {
      resolve({
        port: server.address().port,
        hold() {
          held = true;
        },
        release() {
          held = false;
        },
        cut() {
          for (const s of sockets) s.resetAndDestroy ? s.resetAndDestroy() : s.destroy();
        },
        close() {
          this.cut();
          server.close();
        },
      });
    });
  });
}

// ---- page helpers -------------------------------------------------------

const messages = (page) =>
  page.$$eval('#messages li.msg', (lis) =>
    lis.map((li) => [li.querySelector('.user').textContent, li.querySelector('.text').textContent]),
  );

const users = (page) => page.$$eval('#users li', (lis) => lis.map((li) => li.textContent));

const statusState = (page) => page.$eval('#status', (s) => s.dataset.state);

function waitForState(page, state) {
  return page.waitForFunction((st) => document.querySelector('#status').dataset.state === st, WAIT, state);
}

function waitForMessage(page, user, text) {
  return page.waitForFunction(
    (u, t) =>
      [...document.querySelectorAll('#messages li.msg')].some(
        (li) => li.querySelector('.user').textContent === u && li.querySelector('.text').textContent === t,
      ),
    WAIT,
    user,
    text,
  );
}

async function join(page, url, name) {
  await page.goto(url, { waitUntil: 'load' });
  await page.waitForSelector('#name', { visible: true, ...WAIT });
  await page.type('#name', name);
  await page.click('#join');
  await waitForState(page, 'subscribed');
}

async function switchRoom(page, room) {
  await page.$eval('#room', (r) => {
    r.value = '';
  });
  await page.type('#room', room);
  await page.click('#room-form button');
  const channel = room.startsWith('demo:') ? room : `demo:${room}`;
  await page.waitForFunction(
    (ch) => {
      const s = document.querySelector('#status').dataset;
      return s.state === 'subscribed' && s.channel === ch;
    },
    WAIT,
    channel,
  );
}

async function say(page, text) {
  await page.type('#text', text);
  await page.keyboard.press('Enter');
  // The input is cleared once the publish command is on its way.
  await page.waitForFunction(() => document.querySelector('#text').value === '', WAIT);
}

// ---- the test -----------------------------------------------------------

describe('demo chat in Chromium', { timeout: 180000 }, () => {
  let relay;
  let proxy;
  let browser;
  let alice;
  let bob;
  const logFile = path.join(os.tmpdir(), `wsrelay-browser-test-${process.pid}.log`);
  const pageErrors = [];

  // Uncaught exceptions fail the test; console output is only shown (a
  // blip legitimately logs failed requests).
  function watch(page, who) {
    page.on('pageerror', (e) => pageErrors.push(`${who}: ${e.message}`));
    page.on('console', (m) => {
      if (m.type() === 'error' || m.type() === 'warn') console.log(`[${who} console.${m.type()}] ${m.text()}`);
    });
  }

  before(async () => {
    assert.ok(RELAY, 'set RELAY to the wsrelay binary');
    relay = await startRelay(logFile);
    proxy = await startProxy(relay.port);
    browser = await puppeteer.launch({
      executablePath: CHROMIUM,
      headless: true,
      // --no-sandbox: CI runs as root, where Chromium's sandbox cannot start.
      args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
    });
    // Separate profiles, as two people on two machines would be.
    bob = await (await browser.createBrowserContext()).newPage();
    alice = await (await browser.createBrowserContext()).newPage();
    watch(bob, 'bob');
    watch(alice, 'alice');
  });

  after(async () => {
    if (browser) await browser.close();
    if (proxy) proxy.close();
    if (relay) {
      const exited = new Promise((r) => relay.proc.once('exit', r));
      relay.proc.kill('SIGTERM');
      await exited;
    }
    console.log(`relay log: ${logFile}`);
  });

  it('serves the page at /demo and /demo/', async () => {
    for (const p of ['/demo', '/demo/']) {
      const resp = await fetch(`http://127.0.0.1:${relay.port}${p}`);
      assert.equal(resp.status, 200, p);
      assert.match(resp.headers.get('content-type'), /^text\/html/, p);
    }
    const js = await fetch(`http://127.0.0.1:${relay.port}/demo/chat.js`);
    assert.equal(js.status, 200);
    assert.match(js.headers.get('content-type'), /javascript/);
  });

  it('two people join the room and see each other', async () => {
    await join(bob, `http://127.0.0.1:${relay.port}/demo`, 'bob');
    // alice comes in through the proxy, on the /demo/ form of the URL.
    await join(alice, `http://127.0.0.1:${proxy.port}/demo/`, 'alice');
    assert.equal(await alice.$eval('#room', (r) => r.value), ROOM);
    // bob learns of alice from the join push and a presence refresh.
    await bob.waitForFunction(
      () => [...document.querySelectorAll('#users li')].map((li) => li.textContent).join(',') === 'alice,bob',
      WAIT,
    );
    await alice.waitForFunction(
      () => [...document.querySelectorAll('#users li')].map((li) => li.textContent).join(',') === 'alice,bob',
      WAIT,
    );
    assert.deepEqual(await bob.$$eval('#users li.me', (l) => l.map((li) => li.textContent)), ['bob']);
  });

  it('a message typed by one appears for the other', async () => {
    await say(alice, 'hello from alice');
    await waitForMessage(bob, 'alice', 'hello from alice');
    await waitForMessage(alice, 'alice', 'hello from alice');

    // User text is shown as text, never parsed as HTML.
    const tricky = '<b>not bold</b> & <img src=x onerror="window.pwned=1">';
    await say(bob, tricky);
    await waitForMessage(alice, 'bob', tricky);
    assert.equal(await alice.$('#messages b'), null);
    assert.equal(await alice.$('#messages img'), null);
    assert.equal(await alice.evaluate(() => window.pwned), undefined);
    assert.deepEqual(await alice.$$eval('#messages li.msg', (l) => l.length), 2);
  });

  it('a reloaded page shows the earlier messages from history', async () => {
    await bob.reload({ waitUntil: 'load' });
    // The tab remembers its name and room and rejoins by itself.
    await waitForState(bob, 'subscribed');
    await bob.waitForFunction(() => document.querySelectorAll('#messages li.msg').length >= 2, WAIT);
    assert.deepEqual(await messages(bob), [
      ['alice', 'hello from alice'],
      ['bob', '<b>not bold</b> & <img src=x onerror="window.pwned=1">'],
    ]);
    assert.deepEqual(await users(bob), ['alice', 'bob']);
  });

  it("answers the server's pings", async () => {
    // With ping_interval = 1s and pong_timeout = 2s a page that did not
    // answer {} with {} would be disconnected (and reconnect) meanwhile.
    await alice.waitForFunction(() => Number(document.querySelector('#status').dataset.pings || 0) >= 6, WAIT);
    assert.equal(await alice.$eval('#status', (s) => s.dataset.connects), '1');
    assert.equal(await statusState(alice), 'subscribed');
  });

  it('after a network blip the page reconnects and misses nothing', async () => {
    const before = await messages(alice);
    proxy.hold();
    proxy.cut();
    await waitForState(alice, 'reconnecting');
    await say(bob, 'while you were away 1');
    await say(bob, 'while you were away 2');
    await waitForMessage(bob, 'bob', 'while you were away 2');
    proxy.release();
    await alice.waitForFunction(() => Number(document.querySelector('#status').dataset.connects || 0) >= 2, WAIT);
    await waitForMessage(alice, 'bob', 'while you were away 2');
    await waitForState(alice, 'subscribed');
    assert.deepEqual(await messages(alice), [
      ...before,
      ['bob', 'while you were away 1'],
      ['bob', 'while you were away 2'],
    ]);
    // Recovered from its position, not reloaded from history.
    assert.equal(await alice.$eval('#status', (s) => s.dataset.recoveries), '1');
    const notices = await alice.$$eval('#messages li.notice', (l) => l.map((li) => li.textContent));
    assert.deepEqual(notices, []);
    // And the conversation goes on.
    await say(alice, 'back again');
    await waitForMessage(bob, 'alice', 'back again');
  });

  it('a room can be changed', async () => {
    const lobby = await messages(bob);
    await switchRoom(bob, 'other'); // the page adds the demo: namespace
    assert.equal(await bob.$eval('#room', (r) => r.value), 'demo:other');
    await bob.waitForFunction(
      () => [...document.querySelectorAll('#users li')].map((li) => li.textContent).join(',') === 'bob',
      WAIT,
    );
    assert.deepEqual(await messages(bob), []);
    await say(bob, 'in the other room');
    await waitForMessage(bob, 'bob', 'in the other room');
    // bob left the lobby: alice sees him go, and not his message.
    await alice.waitForFunction(
      () => [...document.querySelectorAll('#users li')].map((li) => li.textContent).join(',') === 'alice',
      WAIT,
    );
    await switchRoom(bob, 'demo:lobby');
    // Back in the lobby: its history again (the other room's message is gone).
    await bob.waitForFunction((n) => document.querySelectorAll('#messages li.msg').length >= n, WAIT, lobby.length);
    assert.deepEqual(await messages(bob), lobby);
    assert.deepEqual(
      (await messages(alice)).filter(([, text]) => text === 'in the other room'),
      [],
    );
    await bob.waitForFunction(
      () => [...document.querySelectorAll('#users li')].map((li) => li.textContent).join(',') === 'alice,bob',
      WAIT,
    );
  });

  it('the user list drops someone who leaves', async () => {
    await alice.close();
    await bob.waitForFunction(
      () => [...document.querySelectorAll('#users li')].map((li) => li.textContent).join(',') === 'bob',
      WAIT,
    );
  });

  it('no script errors in the pages', () => {
    assert.deepEqual(pageErrors, []);
  });
});
