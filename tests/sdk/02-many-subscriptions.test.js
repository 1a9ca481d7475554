'use strict';
// 2. 100 subscriptions on one connection, each reaching 'subscribed'; a publication
// into each from another client arrives at the right subscription only.

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const h = require('./harness');

const N = 100;
const s = h.scope();
let relay;

before(async () => {
    relay = await s.relay(h.baseConfig({
        // Exactly N allowed: the test also checks the limit's boundary.
        client_channel_limit: N,
        namespaces: [h.chatNamespace({ allow_publish_for_client: true })],
    }));
});
after(() => s.cleanup());

test(`${N} subscriptions on one connection, each gets its own publication`, async () => {
    const c = await s.connected(relay.wsUrl);
    const subs = [];
    const subscribed = [];
    const received = [];
    for (let i = 0; i < N; i++) {
        const sub = c.newSubscription(`chat:room${i}`);
        subscribed.push(h.once(sub, 'subscribed', { what: `subscribed to chat:room${i}` }));
        received.push(h.collect(sub, 'publication'));
        subs.push(sub);
        sub.subscribe();
    }
    const ctxs = await Promise.all(subscribed);
    ctxs.forEach((ctx, i) => assert.equal(ctx.channel, `chat:room${i}`));
    for (const sub of subs) assert.equal(sub.state, 'subscribed');

    // Not subscribed itself: allow_publish_for_client lets an authenticated client
    // publish (anonymous ones would also need allow_publish_for_anonymous).
    const publisher = await s.connected(relay.wsUrl, { token: h.connToken('publisher') });
    await Promise.all(subs.map((_, i) =>
        h.withTimeout(publisher.publish(`chat:room${i}`, { room: i }), `publish into chat:room${i}`)));

    const got = await Promise.all(received.map((r, i) => r.waitFor(1, { what: `chat:room${i}` })));
    got.forEach(([pub], i) => {
        assert.equal(pub.channel, `chat:room${i}`);
        assert.deepEqual(pub.data, { room: i });
    });
    // Nothing delivered twice or to another room: a round trip on the connection after
    // all publications is a barrier for anything still in flight on it.
    await h.withTimeout(c.presenceStats('chat:room0'), 'presence stats barrier');
    received.forEach((r, i) => assert.equal(r.items.length, 1, `chat:room${i} got ${h.safeJson(r.items)}`));

    // client_channel_limit = N: one more is refused with 106 (limit exceeded), the
    // others stay subscribed.
    const extra = c.newSubscription(`chat:room${N}`);
    const refused = h.once(extra, 'unsubscribed');
    extra.subscribe();
    const ctx = await refused;
    assert.equal(ctx.code, 106, `unsubscribed ctx ${h.safeJson(ctx)}`);
    assert.equal(c.state, 'connected');
    for (const sub of subs) assert.equal(sub.state, 'subscribed');
    // Unsubscribing one frees a slot.
    subs[0].unsubscribe();
    const again = h.once(extra, 'subscribed', { what: `subscribed to chat:room${N} after a slot was freed` });
    extra.subscribe();
    await again;
});
