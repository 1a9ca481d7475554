// Interop test harness (Node): a throwaway test CA and server certificate made
// at run time with the openssl CLI, the real relay binary started with a plain
// and a TLS listener and permessage-deflate on, and a byte-counting TCP proxy
// (to see on the wire whether a message travelled compressed).
//
// Used by tests/interop/node/*.test.mjs and tests/browser/wss-deflate.test.mjs.
// Only Node built-ins here: each suite brings its own client packages.
//
// Environment: WSRELAY_BIN, the relay binary (default target/debug/wsrelay,
// then target/release/wsrelay, under the repository root).

import { spawn, execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

/** Generous hang guard for every awaited event; never a synchronisation window. */
export const TIMEOUT_MS = 20000;

export function relayBinary() {
  if (process.env.WSRELAY_BIN) return process.env.WSRELAY_BIN;
  for (const profile of ['debug', 'release']) {
    const p = path.join(REPO_ROOT, 'target', profile, 'wsrelay');
    if (fs.existsSync(p)) return p;
  }
  throw new Error('no relay binary: build it (cargo build --bin wsrelay) or set WSRELAY_BIN');
}

// ---------------------------------------------------------------- temp dirs

const tempDirs = new Set();
const liveRelays = new Set();

function cleanupSync() {
  for (const child of liveRelays) {
    try {
      child.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
  liveRelays.clear();
  for (const d of tempDirs) fs.rmSync(d, { recursive: true, force: true });
  tempDirs.clear();
}
process.on('exit', cleanupSync);

function tempDir(prefix) {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  tempDirs.add(d);
  return d;
}

// ---------------------------------------------------------------- PKI

/**
 * A test CA (EC P-256, valid 2 days) and a server certificate it signed for
 * `localhost` and `127.0.0.1`, in a fresh temporary directory. Returns the
 * paths (`chainPath`: leaf then CA, what the relay serves; `keyPath`), the
 * CA as PEM text (`caPem`, what clients trust) and `spki`: the base64
 * SHA-256 of the leaf's SubjectPublicKeyInfo, the form Chromium's
 * `--ignore-certificate-errors-spki-list` takes.
 */
export function makePki() {
  const dir = tempDir('wsrelay-interop-pki-');
  const p = (f) => path.join(dir, f);
  const openssl = (...args) => execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  openssl(
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
    '-keyout', p('ca.key'), '-out', p('ca.pem'), '-days', '2',
    '-subj', '/CN=wsrelay interop test CA',
    '-addext', 'basicConstraints=critical,CA:TRUE',
    '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
  );
  openssl(
    'req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
    '-keyout', p('server.key'), '-out', p('server.csr'), '-subj', '/CN=localhost',
  );
  fs.writeFileSync(
    p('ext.cnf'),
    [
      'subjectAltName=DNS:localhost,IP:127.0.0.1',
      'basicConstraints=critical,CA:FALSE',
      'keyUsage=critical,digitalSignature',
      'extendedKeyUsage=serverAuth',
      '',
    ].join('\n'),
  );
  openssl(
    'x509', '-req', '-in', p('server.csr'), '-CA', p('ca.pem'), '-CAkey', p('ca.key'),
    '-CAcreateserial', '-out', p('server.pem'), '-days', '2', '-extfile', p('ext.cnf'),
  );
  const leaf = fs.readFileSync(p('server.pem'), 'utf8');
  const caPem = fs.readFileSync(p('ca.pem'), 'utf8');
  fs.writeFileSync(p('chain.pem'), leaf + caPem);
  const spkiDer = new crypto.X509Certificate(leaf).publicKey.export({ type: 'spki', format: 'der' });
  const spki = crypto.createHash('sha256').update(spkiDer).digest('base64');
  return { dir, chainPath: p('chain.pem'), keyPath: p('server.key'), caPem, spki };
}

// ---------------------------------------------------------------- relay

/** A TCP port that was free a moment ago (the relay does not log its TLS port). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function startOnce(args, logPath) {
  return new Promise((resolve, reject) => {
    const log = fs.openSync(logPath, 'w');
    const child = spawn(relayBinary(), args, {
      stdio: ['ignore', log, log],
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'info' },
    });
    fs.closeSync(log);
    liveRelays.add(child);
    let done = false;
    const read = () => fs.readFileSync(logPath, 'utf8');
    const finish = (err, value) => {
      if (done) return;
      done = true;
      clearInterval(poll);
      clearTimeout(guard);
      if (err) {
        child.kill('SIGKILL');
        err.log = read();
        reject(err);
      } else {
        resolve(value);
      }
    };
    // The start-up line is logged once every listener is bound.
    const poll = setInterval(() => {
      const m = /listening on ws:\/\/127\.0\.0\.1:(\d+)/.exec(read());
      if (m) finish(null, { child, port: Number(m[1]) });
    }, 20);
    const guard = setTimeout(() => finish(new Error(`relay did not log its port in ${TIMEOUT_MS} ms`)), TIMEOUT_MS);
    child.on('error', (e) => finish(e));
    child.on('exit', (code, sig) => {
      liveRelays.delete(child);
      finish(new Error(`relay exited early (code ${code}, signal ${sig})`));
    });
  });
}

/**
 * Starts the relay: `--listen 127.0.0.1:0`, a TLS listener on a free port
 * with `pki`'s certificate, `--compression true`, plus `extraArgs`. Returns
 * `{port, tlsPort, url(scheme, path), log(), stop()}`.
 */
export async function startRelay(pki, extraArgs = []) {
  const dir = tempDir('wsrelay-interop-relay-');
  const logPath = path.join(dir, 'relay.log');
  let lastErr;
  // The TLS port is chosen here (closed, then bound by the relay): retry if
  // something else took it in between.
  for (let attempt = 0; attempt < 3; attempt++) {
    const tlsPort = await freePort();
    const args = [
      '--listen', '127.0.0.1:0',
      '--tls-listen', `127.0.0.1:${tlsPort}`,
      '--tls-cert', pki.chainPath,
      '--tls-key', pki.keyPath,
      '--compression', 'true',
      ...extraArgs,
    ];
    try {
      const { child, port } = await startOnce(args, logPath);
      let exited = null;
      const exitPromise = new Promise((r) => {
        if (child.exitCode !== null) r();
        child.on('exit', (code, signal) => {
          exited = { code, signal };
          r();
        });
      });
      return {
        port,
        tlsPort,
        /** `ws://127.0.0.1:port/path` or `wss://127.0.0.1:tlsPort/path`. */
        url(scheme, p) {
          return scheme === 'wss' ? `wss://127.0.0.1:${tlsPort}${p}` : `ws://127.0.0.1:${port}${p}`;
        },
        portOf(scheme) {
          return scheme === 'wss' ? tlsPort : port;
        },
        log: () => fs.readFileSync(logPath, 'utf8'),
        exited: () => exited,
        async stop() {
          if (exited === null) {
            child.kill('SIGTERM');
            const t = setTimeout(() => child.kill('SIGKILL'), 10000);
            await exitPromise;
            clearTimeout(t);
          }
        },
      };
    } catch (e) {
      lastErr = e;
      if (!/in use/i.test(e.log || '')) break;
    }
  }
  throw new Error(`${lastErr.message}\n--- relay output ---\n${lastErr.log || ''}`);
}

// ---------------------------------------------------------------- counting proxy

/**
 * A TCP proxy to 127.0.0.1:targetPort counting the bytes it carries:
 * `up()` client -> relay, `down()` relay -> client (TLS records included on
 * a wss:// connection: the proxy does not terminate TLS).
 */
export function countingProxy(targetPort) {
  let up = 0;
  let down = 0;
  const sockets = new Set();
  const server = net.createServer((client) => {
    const upstream = net.connect(targetPort, '127.0.0.1');
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => {});
    }
    client.on('data', (b) => {
      up += b.length;
    });
    upstream.on('data', (b) => {
      down += b.length;
    });
    client.pipe(upstream);
    upstream.pipe(client);
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      resolve({
        port: server.address().port,
        up: () => up,
        down: () => down,
        close() {
          for (const s of sockets) s.destroy();
          return new Promise((r) => server.close(() => r()));
        },
      });
    });
  });
}

/** Rejects a promise that does not settle within `ms` (a hang guard). */
export function withTimeout(promise, what, ms = TIMEOUT_MS) {
  let timer;
  const t = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, t]).finally(() => clearTimeout(timer));
}

/**
 * `n` bytes of realistic, compressible ASCII text (a JSON chat log, cut to
 * length, so not valid JSON): deflate shrinks it several times over, so a
 * compressed transfer is obvious on the wire.
 */
export function compressibleText(n) {
  const rows = [];
  let size = 2;
  for (let i = 0; size < n; i++) {
    const row = JSON.stringify({ id: i, user: `user${i % 17}`, room: 'lobby', text: `message number ${i} in the lobby`, ts: 1764900000 + i });
    rows.push(row);
    size += row.length + 1;
  }
  const s = `[${rows.join(',')}]`;
  // Pad or cut to exactly n bytes while staying plain ASCII.
  return s.length >= n ? s.slice(0, n) : s + ' '.repeat(n - s.length);
}
