// Headless Chromium against the relay over https:// and wss:// with
// permessage-deflate (Chromium always offers it).
//
//   RELAY=target/debug/wsrelay CHROMIUM=/usr/bin/chromium node --test wss-deflate.test.mjs
//
// (scripts/test-interop.sh runs it.) The relay gets a certificate from a test
// CA made at run time (tests/interop/harness.mjs, openssl CLI). Chromium is
// told to trust exactly that certificate's key with
// `--ignore-certificate-errors-spki-list=<base64 SHA-256 of its SPKI>`: it
// works headless, needs no NSS database in the user's home (certutil, shared
// state between runs), and unlike `acceptInsecureCerts` it still refuses any
// other certificate. Chromium honours the flag only with a `--user-data-dir`,
// which puppeteer always passes (a temporary profile).
//
// Every wait is a waitForFunction / promise with a several-second hang guard;
// nothing sleeps for a fixed time.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import puppeteer from 'puppeteer-core';
import { makePki, startRelay, countingProxy, compressibleText } from '../interop/harness.mjs';

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
// The relay binary: WSRELAY_BIN (the interop harness's variable), or RELAY
// like chat.test.mjs, or the harness's default (target/debug, then release).
if (!process.env.WSRELAY_BIN && process.env.RELAY) process.env.WSRELAY_BIN = process.env.RELAY;
const WAIT = { timeout: 20000 };

// Runs in the page: opens `url`, resolves {extensions, protocol} once open
// and keeps the socket and its received messages on window.sockets[name].
function pageOpen(name, url) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    ws.binaryType = 'arraybuffer';
    window.sockets = window.sockets || {};
    const entry = { ws, received: [], closed: null };
    window.sockets[name] = entry;
    ws.onmessage = (e) => {
      entry.received.push(
        typeof e.data === 'string'
          ? { text: e.data }
          : { binary: Array.from(new Uint8Array(e.data)) },
      );
    };
    ws.onclose = (e) => {
      entry.closed = { code: e.code, reason: e.reason };
      reject(new Error(`closed before open: ${e.code} ${e.reason}`));
    };
    ws.onopen = () => resolve({ extensions: ws.extensions, protocol: ws.protocol });
  });
}

describe('Chromium over wss:// with permessage-deflate', { timeout: 180000 }, () => {
  let pki;
  let relay;
  let browser;
  let pageA;
  let pageB;
  const proxies = [];
  const pageErrors = [];

  before(async () => {
    pki = makePki();
    relay = await startRelay(pki, ['--demo']);
    browser = await puppeteer.launch({
      executablePath: CHROMIUM,
      headless: true,
      // --no-sandbox: CI runs as root, where Chromium's sandbox cannot start.
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-dev-shm-usage',
        `--ignore-certificate-errors-spki-list=${pki.spki}`,
      ],
    });
    pageA = await (await browser.createBrowserContext()).newPage();
    pageB = await (await browser.createBrowserContext()).newPage();
    for (const [who, page] of [['A', pageA], ['B', pageB]]) {
      page.on('pageerror', (e) => pageErrors.push(`${who}: ${e.message}`));
    }
  });

  after(async () => {
    if (browser) await browser.close();
    for (const p of proxies) await p.close();
    if (relay) {
      await relay.stop();
      if (process.exitCode) console.log(relay.log());
    }
  });

  it('loads a page over https:// from the relay with the test certificate', async () => {
    for (const page of [pageA, pageB]) {
      const resp = await page.goto(`https://127.0.0.1:${relay.tlsPort}/demo`, { waitUntil: 'load' });
      assert.equal(resp.status(), 200);
      const tls = resp.securityDetails();
      assert.ok(tls, 'the response came over TLS');
      assert.match(tls.protocol(), /^TLS 1\.[23]$/);
      assert.equal(await page.evaluate(() => window.isSecureContext), true);
    }
  });

  it('wss:// echo negotiates permessage-deflate; text and binary come back intact', async () => {
    const opened = await pageA.evaluate(pageOpen, 'echo', `wss://127.0.0.1:${relay.tlsPort}/echo`);
    const params = opened.extensions.split(';').map((s) => s.trim());
    assert.equal(params[0], 'permessage-deflate', `ws.extensions = ${opened.extensions}`);
    assert.ok(params.includes('server_no_context_takeover'), opened.extensions);
    assert.ok(params.includes('client_no_context_takeover'), opened.extensions);

    const result = await pageA.evaluate(
      async (big) => {
        const entry = window.sockets.echo;
        const bin = new Uint8Array(65536);
        crypto.getRandomValues(bin);
        const sent = [{ text: 'hello from Chromium' }, { text: big }, { binary: Array.from(bin) }, { text: 'żółć ✓ 🚀' }];
        entry.ws.send('hello from Chromium');
        entry.ws.send(big);
        entry.ws.send(bin);
        entry.ws.send('żółć ✓ 🚀');
        const deadline = Date.now() + 20000;
        while (entry.received.length < sent.length && !entry.closed && Date.now() < deadline) {
          await new Promise((r) => setTimeout(r, 20));
        }
        return { sent, received: entry.received, closed: entry.closed };
      },
      compressibleText(300000),
    );
    assert.equal(result.closed, null, `closed: ${JSON.stringify(result.closed)}`);
    assert.equal(result.received.length, result.sent.length, 'every echo arrived');
    result.sent.forEach((m, i) => assert.deepEqual(result.received[i], m, `echo ${i}`));
  });

  it('a room message from one page reaches the other, compressed on the wire', async () => {
    const proxy = await countingProxy(relay.tlsPort);
    proxies.push(proxy);
    const room = '/rooms/browser-wss';
    // B listens through the byte-counting proxy (same certificate, same
    // 127.0.0.1 host, another port).
    const b = await pageB.evaluate(pageOpen, 'room', `wss://127.0.0.1:${proxy.port}${room}`);
    const a = await pageA.evaluate(pageOpen, 'room', `wss://127.0.0.1:${relay.tlsPort}${room}`);
    for (const o of [a, b]) assert.match(o.extensions, /^permessage-deflate/, o.extensions);

    const downBefore = proxy.down();
    const sent = ['short one', compressibleText(500000)];
    await pageA.evaluate((messages) => {
      for (const m of messages) window.sockets.room.ws.send(m);
    }, sent);
    await pageB.waitForFunction(() => window.sockets.room.received.length >= 2 || window.sockets.room.closed, WAIT);
    const got = await pageB.evaluate(() => ({ received: window.sockets.room.received, closed: window.sockets.room.closed }));
    assert.equal(got.closed, null);
    assert.deepEqual(got.received.map((m) => m.text), sent);
    const down = proxy.down() - downBefore;
    assert.ok(down < sent[1].length / 4, `${sent[1].length} bytes of JSON text arrived as ${down} bytes: not compressed`);
  });

  it('the demo chat works over https:// and wss:// (Centrifugo protocol)', async () => {
    // The page picks wss:// itself on an https:// origin (demo/chat.js).
    for (const [page, name] of [[pageA, 'alice'], [pageB, 'bob']]) {
      await page.reload({ waitUntil: 'load' });
      await page.waitForSelector('#name', { visible: true, ...WAIT });
      await page.type('#name', name);
      await page.click('#join');
      await page.waitForFunction(() => document.querySelector('#status').dataset.state === 'subscribed', WAIT);
    }
    await pageA.type('#text', 'hello over wss');
    await pageA.keyboard.press('Enter');
    await pageB.waitForFunction(
      () =>
        [...document.querySelectorAll('#messages li.msg')].some(
          (li) => li.querySelector('.user').textContent === 'alice' && li.querySelector('.text').textContent === 'hello over wss',
        ),
      WAIT,
    );
  });

  it('no script errors in the pages', () => {
    assert.deepEqual(pageErrors, []);
    assert.equal(relay.exited(), null, 'the relay is still running');
  });
});
