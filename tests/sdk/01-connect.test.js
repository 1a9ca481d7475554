'use strict';
// 1. Connecting: anonymous when allowed, with a token (user visible in presence), a
// token with a bad signature (3500, terminal) and anonymous when not allowed (3501).

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const h = require('./harness');

const s = h.scope();
let relay;
let strict; // anonymous connect not allowed

before(async () => {
    relay = await s.relay(h.baseConfig({ namespaces: [h.chatNamespace()] }));
    strict = await s.relay(h.baseConfig({
        allow_anonymous_connect_without_token: false,
        namespaces: [h.chatNamespace()],
    }));
});
after(() => s.cleanup());

test('anonymous connect is accepted when allowed', async () => {
    const c = await s.connected(relay.wsUrl);
    assert.equal(c.state, 'connected');
    assert.equal(typeof c.connectedCtx.client, 'string');
    assert.ok(c.connectedCtx.client.length > 0, 'connect reply carries a client id');
    assert.equal(c.connectedCtx.transport, 'websocket');
});

test('token connect: the user id and info are visible in presence', async () => {
    const info = { name: 'Alice' };
    const c = await s.connected(relay.wsUrl, { token: h.connToken('alice', { info }) });
    const sub = c.newSubscription('chat:who');
    const subscribed = h.once(sub, 'subscribed');
    sub.subscribe();
    await subscribed;
    const presence = await h.withTimeout(sub.presence(), 'presence');
    const clients = Object.values(presence.clients);
    assert.equal(clients.length, 1, `one client in presence: ${h.safeJson(presence)}`);
    assert.equal(clients[0].client, c.connectedCtx.client);
    assert.equal(clients[0].user, 'alice');
    assert.deepEqual(clients[0].connInfo, info);
});

test('token with a bad signature: disconnected with 3500 "invalid token", no reconnect', async () => {
    const c = s.client(relay.wsUrl, { token: h.connToken('mallory', { secret: 'not-the-secret' }) });
    const connecting = [];
    const disconnected = h.once(c, 'disconnected');
    c.connect();
    // connect() itself emits 'connecting' (code 0); any later one would be a reconnect.
    c.on('connecting', (ctx) => connecting.push(ctx));
    const ctx = await disconnected;
    assert.equal(ctx.code, 3500, `disconnect ctx ${h.safeJson(ctx)}`);
    assert.equal(ctx.reason, 'invalid token');
    // A reconnecting client goes to 'connecting' instead of emitting 'disconnected':
    // the event itself means the SDK took the disconnect as terminal.
    assert.equal(c.state, 'disconnected');
    assert.deepEqual(connecting, []);
});

test('anonymous connect when not allowed: disconnected with 3501', async () => {
    const c = s.client(strict.wsUrl);
    const disconnected = h.once(c, 'disconnected');
    c.connect();
    const ctx = await disconnected;
    assert.equal(ctx.code, 3501, `disconnect ctx ${h.safeJson(ctx)}`);
    assert.equal(ctx.reason, 'bad request');
    assert.equal(c.state, 'disconnected');
});

test('token connect still works where anonymous is not allowed', async () => {
    const c = await s.connected(strict.wsUrl, { token: h.connToken('bob') });
    assert.equal(c.state, 'connected');
});
