// Interop: Node's `ws` client (pinned in tests/interop/package.json) against
// the relay binary over ws:// and wss:// (a test CA made at run time, trusted
// through the `ca` option), with permessage-deflate.
//
//   WSRELAY_BIN=target/debug/wsrelay node --test tests/interop/node/
//
// (scripts/test-interop.sh runs it.) What the relay documents
// (docs/protocol.md, "Extensions") and what is asserted here:
// - an offer it can honour is accepted, answered with
//   `server_no_context_takeover; client_no_context_takeover`;
// - an offer with `server_max_window_bits` below 15 is declined: the
//   handshake succeeds without the extension, and messages flow uncompressed;
// - room broadcasts reach deflate members compressed and plain members
//   uncompressed, identical once decoded.
// Whether a message travelled compressed is read from a byte-counting TCP
// proxy between client and relay (the proxy does not terminate TLS).

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import WebSocket from 'ws';
import { makePki, startRelay, countingProxy, withTimeout, compressibleText } from '../harness.mjs';

const MIB = 1 << 20;

let pki;
let relay;
const closers = [];

before(async () => {
  pki = makePki();
  relay = await startRelay(pki);
});

after(async () => {
  for (const c of closers.splice(0)) await c();
  if (relay) await relay.stop();
});

/**
 * Opens `path` on the relay (directly, or through `proxy`) with `ws`
 * options; resolves `{ws, ext}` where `ext` is the 101's
 * Sec-WebSocket-Extensions header ('' when absent).
 */
async function open(scheme, path, options = {}, proxy = null) {
  const url = proxy
    ? `${scheme}://127.0.0.1:${proxy.port}${path}`
    : relay.url(scheme, path);
  const ws = new WebSocket(url, { ...(scheme === 'wss' ? { ca: pki.caPem } : {}), ...options });
  closers.push(async () => ws.terminate());
  let ext = '';
  ws.on('upgrade', (res) => {
    ext = res.headers['sec-websocket-extensions'] || '';
  });
  const inbox = [];
  const waiters = [];
  let closed = null;
  ws.on('message', (data, isBinary) => {
    inbox.push({ data: Buffer.from(data), isBinary });
    while (waiters.length && inbox.length) waiters.shift().resolve(inbox.shift());
  });
  ws.on('close', (code, reason) => {
    closed = new Error(`${url}: closed by the relay, code ${code} '${reason}'`);
    for (const w of waiters.splice(0)) w.reject(closed);
  });
  await withTimeout(
    new Promise((resolve, reject) => {
      ws.once('open', resolve);
      ws.once('error', reject);
      ws.once('unexpected-response', (_req, res) => reject(new Error(`HTTP ${res.statusCode} instead of 101`)));
    }),
    `open ${url}`,
  );
  ws.next = (what = 'a message') =>
    withTimeout(
      new Promise((resolve, reject) => {
        if (inbox.length) resolve(inbox.shift());
        else if (closed) reject(closed);
        else waiters.push({ resolve, reject });
      }),
      `${url}: ${what}`,
    );
  ws.sendAsync = (data, opts = {}) =>
    new Promise((resolve, reject) => ws.send(data, opts, (e) => (e ? reject(e) : resolve())));
  return { ws, ext };
}

async function proxyFor(scheme) {
  const p = await countingProxy(relay.portOf(scheme));
  closers.push(() => p.close());
  return p;
}

/** The header's parameters of its first element, e.g. {'server_no_context_takeover': true}. */
function extParams(header) {
  const [name, ...params] = header.split(',')[0].split(';').map((s) => s.trim());
  const out = { name };
  for (const p of params) {
    const [k, v] = p.split('=');
    out[k.trim()] = v === undefined ? true : v.trim();
  }
  return out;
}

async function echoRoundTrip(ws, payload, binary) {
  await ws.sendAsync(payload, { binary });
  const m = await ws.next(`echo of ${payload.length} bytes`);
  assert.equal(m.isBinary, binary, 'the echo keeps the opcode');
  assert.equal(m.data.length, Buffer.byteLength(payload), 'echo length');
  assert.ok(m.data.equals(Buffer.from(payload)), 'the echo is byte for byte the message');
}

for (const scheme of ['ws', 'wss']) {
  describe(`ws client over ${scheme}://`, { timeout: 120000 }, () => {
    it('perMessageDeflate: true negotiates permessage-deflate; echo of text and binary, small and 1 MiB', async () => {
      const proxy = await proxyFor(scheme);
      const { ws, ext } = await open(scheme, '/echo', { perMessageDeflate: true }, proxy);
      const p = extParams(ext);
      assert.equal(p.name, 'permessage-deflate', `negotiated: ${ext}`);
      assert.equal(p.server_no_context_takeover, true, ext);
      assert.equal(p.client_no_context_takeover, true, ext);
      assert.equal(ws.extensions, 'permessage-deflate');

      await echoRoundTrip(ws, 'hello', false);
      await echoRoundTrip(ws, crypto.randomBytes(100), true);
      const upBefore = proxy.up();
      const text = compressibleText(MIB);
      await echoRoundTrip(ws, text, false);
      // ws compresses what it sends (above its 1 KiB threshold): the 1 MiB
      // of JSON text went up in far fewer bytes (TLS records included).
      const sent = proxy.up() - upBefore;
      assert.ok(sent < MIB / 4, `1 MiB of JSON text went up compressed: ${sent} bytes`);
      await echoRoundTrip(ws, Buffer.from(compressibleText(MIB)), true);
      // Incompressible: ws sends it compressed all the same, a little larger
      // than the message (stored deflate blocks); kept below 1 MiB so the
      // frame stays within max_frame_bytes (see the next test).
      await echoRoundTrip(ws, crypto.randomBytes(MIB - 4096), true);
      // Text with multi-byte UTF-8 (checked by the relay after inflating).
      await echoRoundTrip(ws, 'żółć ✓ 🚀 '.repeat(5000), false);
    });

    // deflate makes an incompressible message a little longer; the relay's
    // limit on a compressed frame allows that overhead, so a message of
    // exactly max_message_bytes is echoed with deflate as without.
    it('perMessageDeflate: true: an incompressible message of max_message_bytes (1 MiB) is echoed', async () => {
      const { ws } = await open(scheme, '/echo', { perMessageDeflate: true });
      await echoRoundTrip(ws, crypto.randomBytes(MIB), true);
    });

    it('perMessageDeflate: false: no extension; echo of text and binary, small and 1 MiB', async () => {
      const { ws, ext } = await open(scheme, '/echo', { perMessageDeflate: false });
      assert.equal(ext, '');
      await echoRoundTrip(ws, 'hello', false);
      await echoRoundTrip(ws, crypto.randomBytes(100), true);
      await echoRoundTrip(ws, compressibleText(MIB), false);
      await echoRoundTrip(ws, crypto.randomBytes(MIB), true);
    });

    it('clientNoContextTakeover and serverNoContextTakeover offers are accepted; messages in a row inflate', async () => {
      const { ws, ext } = await open(scheme, '/echo', {
        perMessageDeflate: { clientNoContextTakeover: true, serverNoContextTakeover: true, threshold: 0 },
      });
      const p = extParams(ext);
      assert.equal(p.name, 'permessage-deflate', ext);
      assert.equal(p.client_no_context_takeover, true, ext);
      assert.equal(p.server_no_context_takeover, true, ext);
      // The same text several times: with context takeover the later ones
      // would be back-references into the previous message.
      const text = compressibleText(50000);
      for (let i = 0; i < 5; i++) await echoRoundTrip(ws, text, false);
    });

    for (const bits of [8, 10]) {
      it(`clientMaxWindowBits: ${bits} is accepted (the relay inflates with a 15-bit window)`, async () => {
        const { ws, ext } = await open(scheme, '/echo', {
          perMessageDeflate: { clientMaxWindowBits: bits, threshold: 0 },
        });
        assert.equal(extParams(ext).name, 'permessage-deflate', ext);
        assert.equal(extParams(ext).client_max_window_bits, undefined, `never answered: ${ext}`);
        for (let i = 0; i < 3; i++) await echoRoundTrip(ws, compressibleText(200000), false);
      });
    }

    it('serverMaxWindowBits: 15 is accepted and answered', async () => {
      const { ws, ext } = await open(scheme, '/echo', { perMessageDeflate: { serverMaxWindowBits: 15 } });
      const p = extParams(ext);
      assert.equal(p.name, 'permessage-deflate', ext);
      assert.equal(p.server_max_window_bits, '15', ext);
      await echoRoundTrip(ws, compressibleText(100000), false);
    });

    it('serverMaxWindowBits: 10 is declined cleanly: the connection opens without compression', async () => {
      const proxy = await proxyFor(scheme);
      const { ws, ext } = await open(
        scheme,
        '/echo',
        { perMessageDeflate: { serverMaxWindowBits: 10, clientNoContextTakeover: true } },
        proxy,
      );
      assert.equal(ext, '', 'no Sec-WebSocket-Extensions in the 101');
      assert.equal(ws.extensions, '');
      const upBefore = proxy.up();
      const text = compressibleText(200000);
      await echoRoundTrip(ws, text, false);
      assert.ok(proxy.up() - upBefore >= text.length, 'sent uncompressed');
      // And a room broadcast reaches it uncompressed and intact.
      const room = `/rooms/declined-${scheme}`;
      const rproxy = await proxyFor(scheme);
      const { ws: member } = await open(scheme, room, { perMessageDeflate: { serverMaxWindowBits: 10 } }, rproxy);
      const { ws: sender } = await open(scheme, room, { perMessageDeflate: true });
      const downBefore = rproxy.down();
      await sender.sendAsync(text);
      const m = await member.next('room message');
      assert.equal(m.data.toString(), text);
      assert.ok(rproxy.down() - downBefore >= text.length, 'received uncompressed');
    });

    // Known interop limitation (docs/protocol.md "Interop tests"): the relay
    // always answers client_no_context_takeover (RFC 7692 §7.1.1.2 lets a
    // server add it to any offer; it lets one inflater per worker serve every
    // connection), and ws configured with clientNoContextTakeover: false
    // refuses such an answer, so that client cannot connect at all while
    // compression is on. Asserted as it is: if the relay starts honouring
    // this client, this test fails and should assert the echo instead.
    it('KNOWN LIMITATION: ws with clientNoContextTakeover: false refuses the relay\'s answer', async () => {
      await assert.rejects(
        open(scheme, '/echo', { perMessageDeflate: { clientNoContextTakeover: false } }),
        /Invalid Sec-WebSocket-Extensions header/,
      );
      // The same client without deflate connects.
      const { ws } = await open(scheme, '/echo', { perMessageDeflate: false });
      await echoRoundTrip(ws, 'still fine', false);
    });

    it('room fan-out: a deflate member and a plain member receive identical messages, the first compressed', async () => {
      const room = `/rooms/fanout-${scheme}`;
      const zProxy = await proxyFor(scheme);
      const plainProxy = await proxyFor(scheme);
      const { ws: zMember, ext: zExt } = await open(scheme, room, { perMessageDeflate: true }, zProxy);
      const { ws: plainMember, ext: plainExt } = await open(scheme, room, { perMessageDeflate: false }, plainProxy);
      const { ws: sender } = await open(scheme, room, { perMessageDeflate: true });
      assert.equal(extParams(zExt).name, 'permessage-deflate', zExt);
      assert.equal(plainExt, '', 'no extension without an offer');

      const messages = [
        { data: Buffer.from('hi'), binary: false },
        { data: Buffer.from(compressibleText(MIB)), binary: false },
        { data: crypto.randomBytes(64 * 1024), binary: true },
        { data: Buffer.from(compressibleText(300000)), binary: true },
        { data: Buffer.from('{"text":"a small JSON message in a room"}'), binary: false },
      ];
      const total = messages.reduce((n, m) => n + m.data.length, 0);
      const compressible = MIB + 300000;
      const zBefore = zProxy.down();
      const plainBefore = plainProxy.down();
      for (const m of messages) await sender.sendAsync(m.data, { binary: m.binary });
      for (const member of [zMember, plainMember]) {
        for (const [i, m] of messages.entries()) {
          const got = await member.next(`room message ${i}`);
          assert.equal(got.isBinary, m.binary, `message ${i} opcode`);
          assert.ok(got.data.equals(m.data), `message ${i} (${m.data.length} bytes) intact`);
        }
      }
      const zBytes = zProxy.down() - zBefore;
      const plainBytes = plainProxy.down() - plainBefore;
      assert.ok(plainBytes >= total, `plain member: ${plainBytes} bytes for ${total} of messages`);
      assert.ok(
        zBytes < total - compressible / 2,
        `deflate member: ${zBytes} bytes for ${total} of messages (${compressible} of them compressible)`,
      );
    });

    it('many members, many messages: 20 members (half deflate) each receive 200 messages in order', async () => {
      const room = `/rooms/burst-${scheme}`;
      const members = [];
      for (let i = 0; i < 20; i++) {
        members.push((await open(scheme, room, { perMessageDeflate: i % 2 === 0 })).ws);
      }
      const { ws: sender } = await open(scheme, room, { perMessageDeflate: true });
      const messages = Array.from({ length: 200 }, (_, i) => `${i}:${compressibleText(10000 + 37 * i)}`);
      // In windows of 20 (about 250 KB in flight per member, well under
      // max_outbound_bytes), so a member that reads late on a busy machine is
      // not a slow consumer; every wait is for the messages themselves.
      for (let w = 0; w < messages.length; w += 20) {
        const window = messages.slice(w, w + 20);
        for (const m of window) await sender.sendAsync(m);
        for (const [k, member] of members.entries()) {
          for (const [j, m] of window.entries()) {
            const got = await member.next(`member ${k}, message ${w + j}`);
            assert.equal(got.isBinary, false);
            assert.ok(got.data.equals(Buffer.from(m)), `member ${k}: message ${w + j} differs`);
          }
        }
      }
    });
  });
}

describe('relay still healthy', () => {
  it('the relay did not exit during the tests', () => {
    assert.equal(relay.exited(), null, relay.log());
  });
});
