'use strict';
// 5. History (limit, since, reverse), presence, presence stats, join/leave events.

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const h = require('./harness');

const s = h.scope();
let relay;

before(async () => {
    relay = await s.relay(h.baseConfig({ namespaces: [h.chatNamespace()] }));
});
after(() => s.cleanup());

async function subscribe(client, channel, options) {
    const sub = client.newSubscription(channel, options);
    const ok = h.once(sub, 'subscribed', { what: `subscribed to ${channel}` });
    sub.subscribe();
    const ctx = await ok;
    return { sub, ctx };
}

test('history: limit, since and reverse', async () => {
    const c = await s.connected(relay.wsUrl, { token: h.connToken('alice') });
    const { sub } = await subscribe(c, 'chat:hist');
    for (let i = 1; i <= 5; i++) {
        await h.withTimeout(sub.publish({ i }), 'publish');
    }

    const all = await h.withTimeout(sub.history({ limit: 10 }), 'history limit 10');
    assert.deepEqual(all.publications.map((p) => p.data), [1, 2, 3, 4, 5].map((i) => ({ i })));
    const offsets = all.publications.map((p) => p.offset);
    for (let k = 1; k < offsets.length; k++) assert.equal(offsets[k], offsets[k - 1] + 1, `offsets ${offsets}`);
    assert.equal(all.offset, offsets[4], 'stream top is the last offset');
    assert.equal(typeof all.epoch, 'string');
    assert.ok(all.epoch.length > 0, 'history has an epoch');

    const first2 = await h.withTimeout(sub.history({ limit: 2 }), 'history limit 2');
    assert.deepEqual(first2.publications.map((p) => p.data), [{ i: 1 }, { i: 2 }]);

    const since = await h.withTimeout(
        sub.history({ limit: 2, since: { offset: offsets[1], epoch: all.epoch } }), 'history since');
    assert.deepEqual(since.publications.map((p) => p.data), [{ i: 3 }, { i: 4 }]);

    const rev = await h.withTimeout(sub.history({ limit: 2, reverse: true }), 'history reverse');
    assert.deepEqual(rev.publications.map((p) => p.data), [{ i: 5 }, { i: 4 }]);

    const revSince = await h.withTimeout(
        sub.history({ limit: 10, reverse: true, since: { offset: offsets[3], epoch: all.epoch } }),
        'history reverse since');
    assert.deepEqual(revSince.publications.map((p) => p.data), [{ i: 3 }, { i: 2 }, { i: 1 }]);

    const pos = await h.withTimeout(sub.history({ limit: 0 }), 'history limit 0');
    assert.deepEqual(pos.publications, []);
    assert.equal(pos.offset, offsets[4]);
    assert.equal(pos.epoch, all.epoch);
});

test('history with a stale epoch is refused (112 unrecoverable position)', async () => {
    const c = await s.connected(relay.wsUrl, { token: h.connToken('alice') });
    const { sub } = await subscribe(c, 'chat:hist-epoch');
    await h.withTimeout(sub.publish({ i: 1 }), 'publish');
    await assert.rejects(
        h.withTimeout(sub.history({ limit: 10, since: { offset: 0, epoch: 'not-the-epoch' } }), 'history'),
        (err) => {
            assert.equal(err.code, 112, `error ${h.safeJson(err)}`);
            return true;
        },
    );
});

test('presence and presence stats', async () => {
    const a = await s.connected(relay.wsUrl, { token: h.connToken('alice', { info: { n: 'A' } }) });
    const b = await s.connected(relay.wsUrl, { token: h.connToken('bob') });
    const a2 = await s.connected(relay.wsUrl, { token: h.connToken('alice') });
    const { sub } = await subscribe(a, 'chat:pres');
    await subscribe(b, 'chat:pres');
    await subscribe(a2, 'chat:pres');

    const p = await h.withTimeout(sub.presence(), 'presence');
    const byClient = p.clients;
    assert.deepEqual(Object.keys(byClient).sort(),
        [a.connectedCtx.client, b.connectedCtx.client, a2.connectedCtx.client].sort());
    assert.equal(byClient[a.connectedCtx.client].user, 'alice');
    assert.deepEqual(byClient[a.connectedCtx.client].connInfo, { n: 'A' });
    assert.equal(byClient[b.connectedCtx.client].user, 'bob');
    assert.equal(byClient[a2.connectedCtx.client].user, 'alice');
    assert.equal(byClient[b.connectedCtx.client].client, b.connectedCtx.client);

    const stats = await h.withTimeout(sub.presenceStats(), 'presence stats');
    assert.deepEqual(stats, { numClients: 3, numUsers: 2 });

    // centrifuge.presence works too while subscribed.
    const p2 = await h.withTimeout(b.presence('chat:pres'), 'centrifuge.presence');
    assert.equal(Object.keys(p2.clients).length, 3);
});

test('join and leave events are seen by another subscriber', async () => {
    const a = await s.connected(relay.wsUrl, { token: h.connToken('alice') });
    const b = await s.connected(relay.wsUrl, { token: h.connToken('bob', { info: { role: 'guest' } }) });
    const { sub: subA } = await subscribe(a, 'chat:jl', { joinLeave: true });
    const joins = h.collect(subA, 'join');
    const leaves = h.collect(subA, 'leave');

    const joined = h.once(subA, 'join', {
        filter: (ctx) => ctx.info && ctx.info.user === 'bob', what: 'join of bob',
    });
    const { sub: subB } = await subscribe(b, 'chat:jl', { joinLeave: true });
    const join = await joined;
    assert.equal(join.channel, 'chat:jl');
    assert.equal(join.info.client, b.connectedCtx.client);
    assert.deepEqual(join.info.connInfo, { role: 'guest' });

    const leave = h.once(subA, 'leave', { filter: (ctx) => ctx.info && ctx.info.user === 'bob', what: 'leave of bob' });
    subB.unsubscribe();
    const l = await leave;
    assert.equal(l.channel, 'chat:jl');
    assert.equal(l.info.client, b.connectedCtx.client);

    // Presence no longer has bob.
    const p = await h.withTimeout(subA.presence(), 'presence after leave');
    assert.deepEqual(Object.values(p.clients).map((x) => x.user), ['alice']);
    // Exactly one join and one leave of bob's client.
    assert.equal(joins.items.filter((x) => x.info.client === b.connectedCtx.client).length, 1, h.safeJson(joins.items));
    assert.equal(leaves.items.filter((x) => x.info.client === b.connectedCtx.client).length, 1, h.safeJson(leaves.items));
});

test('a client disconnecting produces a leave', async () => {
    const a = await s.connected(relay.wsUrl, { token: h.connToken('alice') });
    const c = await s.connected(relay.wsUrl, { token: h.connToken('carol') });
    const { sub: subA } = await subscribe(a, 'chat:jl2', { joinLeave: true });
    const joined = h.once(subA, 'join', { filter: (ctx) => ctx.info.user === 'carol' });
    await subscribe(c, 'chat:jl2', { joinLeave: true });
    await joined;
    const left = h.once(subA, 'leave', { filter: (ctx) => ctx.info.user === 'carol', what: 'leave of carol' });
    c.disconnect();
    const l = await left;
    assert.equal(l.info.client, c.connectedCtx.client);
});
