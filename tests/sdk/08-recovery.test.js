'use strict';
// 8. Recovery after a network blip: the client goes through a TCP proxy whose sockets
// are destroyed; publications made while it is away come back on reconnect, in order,
// with recovered: true. With more missed than the history holds: recovered: false.

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const h = require('./harness');

const HISTORY = 5;
const s = h.scope();
let relay;

before(async () => {
    relay = await s.relay(h.baseConfig({
        namespaces: [
            h.chatNamespace({ allow_publish_for_client: true }),
            h.chatNamespace({ name: 'small', history_size: HISTORY, allow_publish_for_client: true }),
        ],
    }));
});
after(() => s.cleanup());

// How the missed publications are made: the server API (as the brief asks), or another
// centrifuge-js client connected directly (needs no server API).
const publishers = {
    api: async () => (channel, data) => h.api(relay, 'publish', { channel, data }),
    client: async () => {
        const p = await s.connected(relay.wsUrl, { token: h.connToken('publisher') });
        return (channel, data) => h.withTimeout(p.publish(channel, data), `publish into ${channel}`);
    },
};

/**
 * Connects through a fresh proxy, subscribes to `channel`, receives one live
 * publication, then cuts the network, publishes `missed` messages (with `via`) while
 * the client is away and lets it back. Returns the resubscribe context and the
 * publications delivered after it.
 */
async function blip(via, channel, missed) {
    const publish = await publishers[via]();
    const proxy = await s.proxy(relay.port);
    const c = await s.connected(proxy.wsUrl);
    const sub = c.newSubscription(channel);
    const subscribedCtxs = h.collect(sub, 'subscribed');
    const pubs = h.collect(sub, 'publication');
    sub.subscribe();
    const [first] = await subscribedCtxs.waitFor(1);
    assert.equal(first.recoverable, true, `force_recovery makes the subscription recoverable: ${h.safeJson(first)}`);
    assert.equal(first.wasRecovering, false);

    await publish(channel, { live: true });
    const [live] = await pubs.waitFor(1, { what: 'live publication before the blip' });
    assert.deepEqual(live.data, { live: true });

    // Cut the network and keep it cut until the missed publications are in.
    const connecting = h.once(c, 'connecting', { what: 'client notices the dropped connection' });
    const subscribing = h.once(sub, 'subscribing');
    proxy.block();
    proxy.dropAll();
    const connectingCtx = await connecting;
    await subscribing;
    assert.equal(c.state, 'connecting');
    assert.notEqual(connectingCtx.code, 0);

    const results = [];
    for (let i = 0; i < missed; i++) {
        results.push(await publish(channel, { i }));
    }
    if (via === 'api') {
        // Centrifugo's publish result: the stream position of the publication.
        results.forEach((r, k) => assert.equal(r && r.offset, live.offset + 1 + k, `API publish result ${h.safeJson(r)}`));
        assert.ok(results.every((r) => typeof r.epoch === 'string' && r.epoch.length > 0), h.safeJson(results));
    }
    const resubscribed = h.once(sub, 'subscribed', { what: 'resubscribed after the blip', timeoutMs: 15000 });
    const reconnected = h.once(c, 'connected', { timeoutMs: 15000, what: 'reconnected after the blip' });
    proxy.unblock();
    await reconnected;
    const ctx = await resubscribed;
    return { c, sub, ctx, pubs, live, publish };
}

for (const via of ['api', 'client']) {
    test(`missed publications (published via ${via}) are recovered in order (recovered: true)`, async () => {
        const MISSED = 10;
        const { ctx, pubs, live } = await blip(via, `chat:rec-${via}`, MISSED);
        assert.equal(ctx.wasRecovering, true, `subscribed ctx ${h.safeJson(ctx)}`);
        assert.equal(ctx.recovered, true, `subscribed ctx ${h.safeJson(ctx)}`);
        const all = await pubs.waitFor(1 + MISSED, { what: 'the missed publications' });
        const after = all.slice(1);
        assert.deepEqual(after.map((p) => p.data), Array.from({ length: MISSED }, (_, i) => ({ i })));
        after.forEach((p, k) => assert.equal(p.offset, live.offset + 1 + k, `offset of missed #${k}`));
    });

    test(`more missed (via ${via}) than history_size: recovered: false`, async () => {
        const MISSED = HISTORY + 3;
        const { ctx, pubs, live, sub, publish } = await blip(via, `small:rec-${via}`, MISSED);
        assert.equal(ctx.wasRecovering, true, `subscribed ctx ${h.safeJson(ctx)}`);
        assert.equal(ctx.recovered, false, `subscribed ctx ${h.safeJson(ctx)}`);
        // Whatever the server chose to deliver, it is not a gap-free continuation; and the
        // subscription follows the stream from its new position on.
        const next = h.once(sub, 'publication', { filter: (p) => p.data && p.data.after === true });
        await publish(`small:rec-${via}`, { after: true });
        const got = await next;
        assert.equal(got.offset, live.offset + MISSED + 1);
        assert.equal(pubs.items[0], live);
    });
}
