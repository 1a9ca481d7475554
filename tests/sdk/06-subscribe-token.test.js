'use strict';
// 6. Subscriptions in a namespace that requires a subscription token: a token with a
// wrong signature is refused with 103 (terminal, unsubscribed); an expired token is
// answered with 109, on which the SDK calls getToken again and then subscribes.

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const h = require('./harness');

const s = h.scope();
let relay;

before(async () => {
    relay = await s.relay(h.baseConfig({
        namespaces: [
            h.chatNamespace(),
            {
                // No allow_subscribe_for_client: a subscription token is required.
                name: 'private',
                history_size: 10,
                history_ttl: '60s',
                allow_history_for_subscriber: true,
            },
        ],
    }));
});
after(() => s.cleanup());

test('without a token a token-only channel is refused with 103', async () => {
    const c = await s.connected(relay.wsUrl, { token: h.connToken('alice') });
    const sub = c.newSubscription('private:none');
    const unsubscribed = h.once(sub, 'unsubscribed');
    sub.subscribe();
    const ctx = await unsubscribed;
    assert.equal(ctx.code, 103, `unsubscribed ctx ${h.safeJson(ctx)}`);
    assert.equal(ctx.reason, 'permission denied');
    assert.equal(c.state, 'connected');
});

test('subscription token with a wrong signature: unsubscribed with 103, connection kept', async () => {
    const c = await s.connected(relay.wsUrl, { token: h.connToken('alice') });
    const sub = c.newSubscription('private:a', {
        token: h.subToken('alice', 'private:a', { secret: 'wrong-secret' }),
    });
    const errors = h.collect(sub, 'error');
    const unsubscribed = h.once(sub, 'unsubscribed');
    sub.subscribe();
    const ctx = await unsubscribed;
    assert.equal(ctx.code, 103, `unsubscribed ctx ${h.safeJson(ctx)}; errors ${h.safeJson(errors.items)}`);
    assert.equal(ctx.reason, 'permission denied');
    assert.equal(sub.state, 'unsubscribed');
    assert.equal(c.state, 'connected');
    // The connection still works.
    const ok = c.newSubscription('chat:after-refusal');
    const subscribed = h.once(ok, 'subscribed');
    ok.subscribe();
    await subscribed;
});

test('expired subscription token: 109, getToken is called, then subscribed', async () => {
    const c = await s.connected(relay.wsUrl, { token: h.connToken('alice') });
    const channel = 'private:b';
    let getTokenCalls = 0;
    const sub = c.newSubscription(channel, {
        token: h.subToken('alice', channel, { ttl: -60 }),
        getToken: async (ctx) => {
            getTokenCalls++;
            assert.equal(ctx.channel, channel);
            return h.subToken('alice', channel, { ttl: 3600 });
        },
        minResubscribeDelay: 100,
        maxResubscribeDelay: 1000,
    });
    const errors = h.collect(sub, 'error');
    const subscribed = h.once(sub, 'subscribed');
    const unsubscribed = h.once(sub, 'unsubscribed');
    unsubscribed.catch(() => {});
    sub.subscribe();
    const ctx = await Promise.race([
        subscribed,
        unsubscribed.then((u) => {
            throw new Error(`unsubscribed instead: ${h.safeJson(u)}; errors ${h.safeJson(errors.items)}`);
        }),
    ]).finally(() => {
        subscribed.cancel();
        unsubscribed.cancel();
    });
    assert.equal(ctx.channel, channel);
    assert.equal(getTokenCalls, 1, 'getToken called once, after the 109');
    const codes = errors.items.map((e) => e.error && e.error.code);
    assert.deepEqual(codes, [109], `subscription errors ${h.safeJson(errors.items)}`);
    assert.equal(c.state, 'connected');
    // Subscribed for real: history (allowed for subscribers here) answers.
    const hist = await h.withTimeout(sub.history({ limit: 0 }), 'history');
    assert.deepEqual(hist.publications, []);
});

test('subscription token for another channel: disconnected with 3500 (Centrifugo)', async () => {
    const c = s.client(relay.wsUrl, { token: h.connToken('alice') });
    const connected = h.once(c, 'connected');
    c.connect();
    await connected;
    const sub = c.newSubscription('private:c', { token: h.subToken('alice', 'private:other') });
    const disconnected = h.once(c, 'disconnected');
    sub.subscribe();
    const ctx = await disconnected;
    assert.equal(ctx.code, 3500, `disconnect ctx ${h.safeJson(ctx)}`);
});
