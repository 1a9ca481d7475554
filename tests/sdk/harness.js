'use strict';
// Test harness for running the official centrifuge-js client against the wsrelay
// binary: spawns a relay with a temporary TOML config on 127.0.0.1:0, mints HS256
// JWTs, provides a TCP proxy that can drop connections, event-waiting helpers with
// timeouts, and cleanup that never leaks relay processes.

const { spawn } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const http = require('node:http');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const { Centrifuge } = require('centrifuge');
const WebSocket = require('ws');

const REPO_ROOT = path.resolve(__dirname, '..', '..');
const RELAY_BIN = process.env.WSRELAY_BIN || path.join(REPO_ROOT, 'target', 'release', 'wsrelay');

// Generous default for every awaited event: CI machines can be slow, and a timeout
// only ever fails a test, it never synchronises one.
const TIMEOUT_MS = 10000;

const SECRET = 'test-secret';
const API_KEY = 'test-api-key';
const PUBLISH_TOKEN = 'test-publish-token';

// ---------------------------------------------------------------- process cleanup

const liveRelays = new Set();
const tempDirs = new Set();

function killAllSync() {
    for (const child of liveRelays) {
        try {
            child.kill('SIGKILL');
        } catch (_) {
            // already gone
        }
    }
    liveRelays.clear();
    for (const dir of tempDirs) fs.rmSync(dir, { recursive: true, force: true });
    tempDirs.clear();
}

// The test file's process ends however the tests went: take the relays with it.
process.on('exit', killAllSync);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
    process.once(sig, () => {
        killAllSync();
        process.kill(process.pid, sig);
    });
}

// ---------------------------------------------------------------- TOML config

function tomlValue(v) {
    if (typeof v === 'string') return JSON.stringify(v); // JSON escapes are valid TOML basic-string escapes
    if (typeof v === 'boolean') return v ? 'true' : 'false';
    if (typeof v === 'number' && Number.isInteger(v)) return String(v);
    throw new Error(`unsupported TOML value ${JSON.stringify(v)}`);
}

/** Renders `{key: scalar, ..., namespaces: [{name, ...}]}` as TOML. */
function toToml(config) {
    const lines = [];
    const tables = [];
    for (const [k, v] of Object.entries(config)) {
        if (v === undefined) continue;
        if (Array.isArray(v) && v.length > 0 && typeof v[0] === 'object') {
            tables.push([k, v]);
        } else if (Array.isArray(v)) {
            lines.push(`${k} = [${v.map(tomlValue).join(', ')}]`);
        } else {
            lines.push(`${k} = ${tomlValue(v)}`);
        }
    }
    for (const [k, rows] of tables) {
        for (const row of rows) {
            lines.push('', `[[${k}]]`);
            for (const [rk, rv] of Object.entries(row)) {
                if (rv !== undefined) lines.push(`${rk} = ${tomlValue(rv)}`);
            }
        }
    }
    return lines.join('\n') + '\n';
}

/** The config of common.md's example: anonymous allowed, a `chat` namespace with everything on. */
function baseConfig(overrides = {}) {
    return {
        listen: '127.0.0.1:0',
        max_connections: 1000,
        token_hmac_secret_key: SECRET,
        api_key: API_KEY,
        allow_anonymous_connect_without_token: true,
        allow_subscribe_for_client: true,
        allow_publish_for_subscriber: true,
        ...overrides,
    };
}

function chatNamespace(overrides = {}) {
    return {
        name: 'chat',
        history_size: 100,
        history_ttl: '300s',
        presence: true,
        join_leave: true,
        force_recovery: true,
        allow_subscribe_for_client: true,
        allow_subscribe_for_anonymous: true,
        allow_publish_for_subscriber: true,
        allow_publish_for_anonymous: true,
        allow_history_for_subscriber: true,
        allow_presence_for_subscriber: true,
        ...overrides,
    };
}

// ---------------------------------------------------------------- relay process

/**
 * Starts the relay with `config` (object rendered to TOML). Resolves once it logged its
 * listening address. The returned object has `port`, `wsUrl` (the Centrifugo
 * endpoint), `httpBase`, `log()` (everything it printed) and `stop()`.
 */
async function startRelay(config, { timeoutMs = TIMEOUT_MS } = {}) {
    if (!fs.existsSync(RELAY_BIN)) {
        throw new Error(`relay binary not found at ${RELAY_BIN} (build it, or set WSRELAY_BIN)`);
    }
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'wsrelay-sdk-'));
    tempDirs.add(dir);
    const configPath = path.join(dir, 'wsrelay.toml');
    const toml = toToml(config);
    fs.writeFileSync(configPath, toml);
    const child = spawn(RELAY_BIN, ['--config', configPath], {
        stdio: ['ignore', 'pipe', 'pipe'],
        env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'info' },
    });
    liveRelays.add(child);
    let output = '';
    let exited = null;
    const exitPromise = new Promise((resolve) => {
        child.on('exit', (code, signal) => {
            exited = { code, signal };
            liveRelays.delete(child);
            resolve(exited);
        });
    });
    const cleanupDir = () => {
        fs.rmSync(dir, { recursive: true, force: true });
        tempDirs.delete(dir);
    };

    const port = await new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
            fail(new Error(`relay did not report its port within ${timeoutMs} ms`));
        }, timeoutMs);
        function fail(err) {
            clearTimeout(timer);
            child.kill('SIGKILL');
            cleanupDir();
            err.message += `\n--- config ---\n${toml}--- relay output ---\n${output}`;
            reject(err);
        }
        const onData = (chunk) => {
            output += chunk.toString();
            const m = /listening on ws:\/\/127\.0\.0\.1:(\d+)/.exec(output);
            if (m) {
                clearTimeout(timer);
                resolve(Number(m[1]));
            }
        };
        child.stdout.on('data', onData);
        child.stderr.on('data', onData);
        child.on('error', (e) => fail(e));
        exitPromise.then((e) => fail(new Error(`relay exited early (code ${e.code}, signal ${e.signal})`)));
    });

    const relay = {
        port,
        host: '127.0.0.1',
        wsUrl: `ws://127.0.0.1:${port}/connection/websocket`,
        httpBase: `http://127.0.0.1:${port}`,
        log: () => output,
        exited: () => exited,
        /** SIGTERM (graceful), SIGKILL if still there after 7 s. Idempotent. */
        async stop() {
            if (exited === null) {
                child.kill('SIGTERM');
                const t = setTimeout(() => child.kill('SIGKILL'), 7000);
                await exitPromise;
                clearTimeout(t);
            }
            cleanupDir();
        },
    };
    return relay;
}

// ---------------------------------------------------------------- JWT (HS256)

function b64url(buf) {
    return Buffer.from(buf).toString('base64').replace(/=+$/, '').replace(/\+/g, '-').replace(/\//g, '_');
}

function jwt(claims, secret = SECRET) {
    const header = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
    const payload = b64url(JSON.stringify(claims));
    const sig = b64url(crypto.createHmac('sha256', secret).update(`${header}.${payload}`).digest());
    return `${header}.${payload}.${sig}`;
}

const nowSecs = () => Math.floor(Date.now() / 1000);

/** Connection token: `sub`, `exp` (seconds from now), optional `info` and `channels`. */
function connToken(sub, { ttl = 3600, info, channels, secret } = {}) {
    const claims = { sub, exp: nowSecs() + ttl };
    if (info !== undefined) claims.info = info;
    if (channels !== undefined) claims.channels = channels;
    return jwt(claims, secret);
}

/** Subscription token: `sub` + `channel`, `exp` seconds from now (negative = expired). */
function subToken(sub, channel, { ttl = 3600, secret } = {}) {
    return jwt({ sub, channel, exp: nowSecs() + ttl }, secret);
}

// ---------------------------------------------------------------- waiting for events

/**
 * Resolves with the first `event` from `emitter` whose args pass `filter`; rejects after
 * `timeoutMs` naming what it waited for.
 */
function once(emitter, event, { filter = () => true, timeoutMs = TIMEOUT_MS, what } = {}) {
    let cancel;
    const promise = new Promise((resolve, reject) => {
        const label = what || `'${event}' event`;
        const timer = setTimeout(() => {
            emitter.removeListener(event, handler);
            reject(new Error(`timed out after ${timeoutMs} ms waiting for ${label}`));
        }, timeoutMs);
        function handler(...args) {
            let ok;
            try {
                ok = filter(...args);
            } catch (e) {
                ok = false;
            }
            if (!ok) return;
            clearTimeout(timer);
            emitter.removeListener(event, handler);
            resolve(args.length <= 1 ? args[0] : args);
        }
        cancel = () => {
            clearTimeout(timer);
            emitter.removeListener(event, handler);
        };
        emitter.on(event, handler);
    });
    // Stops waiting (no timer left behind, no rejection).
    promise.cancel = cancel;
    return promise;
}

/** Rejects a promise that does not settle within `timeoutMs`. */
function withTimeout(promise, label, timeoutMs = TIMEOUT_MS) {
    let timer;
    const t = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms: ${label}`)), timeoutMs);
    });
    return Promise.race([promise, t]).finally(() => clearTimeout(timer));
}

/**
 * Records every `event` of `emitter`; `waitFor(n)` resolves with the first n records
 * once there are n of them.
 */
function collect(emitter, event) {
    const items = [];
    const waiters = [];
    emitter.on(event, (arg) => {
        items.push(arg);
        for (let i = waiters.length - 1; i >= 0; i--) {
            if (items.length >= waiters[i].n) {
                waiters[i].resolve(items.slice(0, waiters[i].n));
                clearTimeout(waiters[i].timer);
                waiters.splice(i, 1);
            }
        }
    });
    return {
        items,
        waitFor(n, { timeoutMs = TIMEOUT_MS, what } = {}) {
            if (items.length >= n) return Promise.resolve(items.slice(0, n));
            return new Promise((resolve, reject) => {
                const w = { n, resolve };
                w.timer = setTimeout(() => {
                    const i = waiters.indexOf(w);
                    if (i >= 0) waiters.splice(i, 1);
                    reject(new Error(`timed out after ${timeoutMs} ms waiting for ${n} '${event}' events ` +
                        `(${what || ''}); got ${items.length}: ${safeJson(items)}`));
                }, timeoutMs);
                waiters.push(w);
            });
        },
    };
}

function safeJson(v) {
    try {
        return JSON.stringify(v, (k, x) => (typeof x === 'bigint' ? String(x) : x)).slice(0, 2000);
    } catch (_) {
        return String(v);
    }
}

// ---------------------------------------------------------------- clients

/**
 * Per-test resource tracker: relays, centrifuge clients, raw sockets and proxies made
 * through it are all torn down by `cleanup()` (call it from `after`/`t.after`).
 */
function scope() {
    const clients = [];
    const sockets = [];
    const proxies = [];
    const relays = [];
    return {
        async relay(config) {
            const r = await startRelay(config);
            relays.push(r);
            return r;
        },
        /** A centrifuge-js client (not connected yet) with fast reconnects. */
        client(url, options = {}) {
            const c = new Centrifuge(url, {
                websocket: WebSocket,
                minReconnectDelay: 100,
                maxReconnectDelay: 1000,
                timeout: 5000,
                ...options,
            });
            // An 'error' event without a listener is harmless in the events package, but
            // keep the latest errors around for failure messages.
            c.errors = [];
            c.on('error', (ctx) => c.errors.push(ctx));
            clients.push(c);
            return c;
        },
        /** Connects a client and waits for 'connected' (fails fast on 'disconnected'). */
        async connected(url, options = {}) {
            const c = this.client(url, options);
            const ok = once(c, 'connected', { what: `client connected to ${url}` });
            const bad = once(c, 'disconnected');
            bad.catch(() => {});
            c.connect();
            try {
                c.connectedCtx = await Promise.race([
                    ok,
                    bad.then((x) => {
                        throw new Error(`client disconnected instead of connecting: ${safeJson(x)}; errors: ${safeJson(c.errors)}`);
                    }),
                ]);
            } catch (e) {
                e.message += ` (client state ${c.state}; errors: ${safeJson(c.errors)})`;
                throw e;
            } finally {
                ok.cancel();
                bad.cancel();
            }
            return c;
        },
        /** A raw `ws` socket, resolved once open. */
        async rawSocket(url, protocols) {
            const ws = new WebSocket(url, protocols);
            sockets.push(ws);
            await new Promise((resolve, reject) => {
                const timer = setTimeout(() => reject(new Error(`raw socket to ${url} did not open`)), TIMEOUT_MS);
                ws.once('open', () => {
                    clearTimeout(timer);
                    resolve();
                });
                ws.once('error', (e) => {
                    clearTimeout(timer);
                    reject(e);
                });
                ws.once('unexpected-response', (req, res) => {
                    clearTimeout(timer);
                    reject(new Error(`raw socket to ${url}: HTTP ${res.statusCode}`));
                });
            });
            return ws;
        },
        async proxy(targetPort) {
            const p = await startProxy(targetPort);
            proxies.push(p);
            return p;
        },
        async cleanup() {
            for (const c of clients) {
                try {
                    c.disconnect();
                } catch (_) {
                    // ignore
                }
            }
            for (const ws of sockets) {
                try {
                    ws.terminate();
                } catch (_) {
                    // ignore
                }
            }
            for (const p of proxies) await p.close();
            for (const r of relays) await r.stop();
        },
    };
}

// ---------------------------------------------------------------- HTTP

/** One HTTP request without keep-alive; resolves `{status, headers, body}`. */
function httpRequest(method, url, { headers = {}, body } = {}) {
    return withTimeout(new Promise((resolve, reject) => {
        const data = body === undefined ? undefined : Buffer.from(typeof body === 'string' ? body : JSON.stringify(body));
        const req = http.request(url, {
            method,
            agent: false,
            headers: {
                Connection: 'close',
                ...(data ? { 'Content-Type': 'application/json', 'Content-Length': data.length } : {}),
                ...headers,
            },
        }, (res) => {
            const chunks = [];
            res.on('data', (c) => chunks.push(c));
            res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString() }));
            res.on('error', reject);
        });
        req.on('error', reject);
        if (data) req.write(data);
        req.end();
    }), `${method} ${url}`);
}

/** Server API call (`POST /api/<method>` with `X-API-Key`); returns `result`, throws on `error`. */
async function api(relay, method, params) {
    const res = await httpRequest('POST', `${relay.httpBase}/api/${method}`, {
        headers: { 'X-API-Key': API_KEY },
        body: params,
    });
    if (res.status !== 200) {
        throw new Error(`API ${method}: HTTP ${res.status}: ${res.body}`);
    }
    let parsed;
    try {
        parsed = JSON.parse(res.body);
    } catch (e) {
        throw new Error(`API ${method}: response is not JSON: ${res.body}`);
    }
    if (parsed.error) {
        throw new Error(`API ${method}: error ${safeJson(parsed.error)}`);
    }
    return parsed.result;
}

// ---------------------------------------------------------------- TCP proxy

/**
 * A TCP proxy to 127.0.0.1:targetPort. `dropAll()` destroys every proxied connection
 * (both sides); while `block()`ed new connections are destroyed on accept, so a client
 * stays disconnected until `unblock()`.
 */
function startProxy(targetPort) {
    const pairs = new Set();
    let blocked = false;
    let accepted = 0;
    const server = net.createServer((down) => {
        accepted++;
        if (blocked) {
            down.destroy();
            return;
        }
        const up = net.connect(targetPort, '127.0.0.1');
        const pair = { down, up };
        pairs.add(pair);
        const end = () => {
            down.destroy();
            up.destroy();
            pairs.delete(pair);
        };
        down.on('error', end);
        up.on('error', end);
        down.on('close', end);
        up.on('close', end);
        down.pipe(up);
        up.pipe(down);
    });
    return new Promise((resolve, reject) => {
        server.once('error', reject);
        server.listen(0, '127.0.0.1', () => {
            const port = server.address().port;
            resolve({
                port,
                wsUrl: `ws://127.0.0.1:${port}/connection/websocket`,
                accepted: () => accepted,
                open: () => pairs.size,
                block() {
                    blocked = true;
                },
                unblock() {
                    blocked = false;
                },
                dropAll() {
                    for (const { down, up } of pairs) {
                        down.destroy();
                        up.destroy();
                    }
                    pairs.clear();
                },
                close() {
                    this.dropAll();
                    return new Promise((r) => server.close(() => r()));
                },
            });
        });
    });
}

module.exports = {
    API_KEY,
    PUBLISH_TOKEN,
    RELAY_BIN,
    SECRET,
    TIMEOUT_MS,
    Centrifuge,
    WebSocket,
    api,
    baseConfig,
    chatNamespace,
    collect,
    connToken,
    httpRequest,
    jwt,
    nowSecs,
    once,
    safeJson,
    scope,
    startProxy,
    startRelay,
    subToken,
    toToml,
    withTimeout,
};
