'use strict';
// 7. Connection token refresh: a token expiring in 3 s and a getToken giving fresh
// ones; the client refreshes (getToken called again and again, which it only does
// after a refresh reply that carried a new ttl) and stays on the same connection past
// the original expiry.

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const h = require('./harness');

const s = h.scope();
let relay;

before(async () => {
    relay = await s.relay(h.baseConfig({ namespaces: [h.chatNamespace()] }));
});
after(() => s.cleanup());

test('connection token refresh keeps the connection past the original expiry', async () => {
    const TTL = 3;
    const originalExp = h.nowSecs() + TTL;
    const calls = [];
    const box = new (require('node:events').EventEmitter)();
    const c = s.client(relay.wsUrl, {
        token: h.connToken('alice', { ttl: TTL }),
        getToken: async () => {
            calls.push(Date.now());
            box.emit('getToken', calls.length);
            return h.connToken('alice', { ttl: TTL });
        },
    });
    const events = [];
    for (const ev of ['connecting', 'disconnected']) c.on(ev, (ctx) => events.push({ ev, ctx }));
    const connectedEvents = h.collect(c, 'connected');
    c.connect();
    const [first] = await connectedEvents.waitFor(1);

    // The second call comes only after the server accepted the first refresh and
    // answered it with `expires`/`ttl` (see centrifuge-js _refreshResponse).
    await h.once(box, 'getToken', { filter: (n) => n >= 2, timeoutMs: 15000, what: 'second getToken call' });
    assert.ok(Date.now() / 1000 > originalExp, 'the original token has expired by now');

    // Same connection, still working: a round trip after the original expiry.
    const sub = c.newSubscription('chat:refresh');
    const subscribed = h.once(sub, 'subscribed');
    sub.subscribe();
    await subscribed;
    const stats = await h.withTimeout(sub.presenceStats(), 'presence stats');
    assert.deepEqual(stats, { numClients: 1, numUsers: 1 });
    assert.equal(c.state, 'connected');
    assert.deepEqual(events.filter((e) => e.ev !== 'connecting' || e.ctx.code !== 0), [],
        `no reconnect or disconnect: ${h.safeJson(events)}`);
    assert.equal(connectedEvents.items.length, 1);
    assert.equal(first.client, connectedEvents.items[0].client);
    assert.deepEqual(c.errors, []);
});

test('refresh with another user\'s token is refused: disconnected with 3500', async () => {
    const c = s.client(relay.wsUrl, {
        token: h.connToken('alice', { ttl: 2 }),
        getToken: async () => h.connToken('mallory', { ttl: 3600 }),
    });
    const connected = h.once(c, 'connected');
    const disconnected = h.once(c, 'disconnected', { timeoutMs: 15000 });
    c.connect();
    await connected;
    const ctx = await disconnected;
    assert.equal(ctx.code, 3500, `disconnect ctx ${h.safeJson(ctx)}`);
    assert.equal(ctx.reason, 'invalid token');
});

test('expired connection token on connect: 109, getToken is called, then connected', async () => {
    let calls = 0;
    const c = s.client(relay.wsUrl, {
        token: h.connToken('alice', { ttl: -60 }),
        getToken: async () => {
            calls++;
            return h.connToken('alice');
        },
    });
    const errors = h.collect(c, 'error');
    const connected = h.once(c, 'connected');
    c.connect();
    await connected;
    assert.equal(calls, 1);
    assert.deepEqual(errors.items.map((e) => e.error.code), [109], h.safeJson(errors.items));
});
