'use strict';
// 3. Publish with an ack: the promise resolves, another connection's subscription
// receives it, and the publisher's own subscription receives it too (Centrifugo).

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const h = require('./harness');

const s = h.scope();
let relay;

before(async () => {
    relay = await s.relay(h.baseConfig({ namespaces: [h.chatNamespace()] }));
});
after(() => s.cleanup());

async function subscribed(client, channel, options) {
    const sub = client.newSubscription(channel, options);
    const pubs = h.collect(sub, 'publication');
    const ok = h.once(sub, 'subscribed', { what: `subscribed to ${channel}` });
    sub.subscribe();
    await ok;
    return { sub, pubs };
}

test('sub.publish resolves; both the other subscriber and the publisher receive it', async () => {
    const a = await s.connected(relay.wsUrl, { token: h.connToken('alice') });
    const b = await s.connected(relay.wsUrl, { token: h.connToken('bob', { info: { name: 'Bob' } }) });
    const ra = await subscribed(a, 'chat:pub');
    const rb = await subscribed(b, 'chat:pub');

    const ack = await h.withTimeout(rb.sub.publish({ text: 'from bob' }), 'sub.publish ack');
    assert.deepEqual(ack, {});

    const [atA] = await ra.pubs.waitFor(1, { what: 'alice receives bob\'s publication' });
    assert.deepEqual(atA.data, { text: 'from bob' });
    assert.equal(atA.channel, 'chat:pub');
    const [atB] = await rb.pubs.waitFor(1, { what: 'bob receives his own publication' });
    assert.deepEqual(atB.data, { text: 'from bob' });
    // History is on in this namespace: publications carry their stream offset.
    assert.ok(atA.offset > 0, `offset in ${h.safeJson(atA)}`);
    assert.equal(atA.offset, atB.offset);
});

test('centrifuge.publish resolves and reaches subscribers, including the publisher', async () => {
    const a = await s.connected(relay.wsUrl);
    const b = await s.connected(relay.wsUrl);
    const ra = await subscribed(a, 'chat:pub2');
    const rb = await subscribed(b, 'chat:pub2');

    await h.withTimeout(a.publish('chat:pub2', { n: 1 }), 'centrifuge.publish ack');
    await h.withTimeout(a.publish('chat:pub2', { n: 2 }), 'centrifuge.publish ack');

    const atB = await rb.pubs.waitFor(2, { what: 'b receives both' });
    assert.deepEqual(atB.map((p) => p.data), [{ n: 1 }, { n: 2 }]);
    const atA = await ra.pubs.waitFor(2, { what: 'a receives its own' });
    assert.deepEqual(atA.map((p) => p.data), [{ n: 1 }, { n: 2 }]);
    assert.ok(atB[1].offset === atB[0].offset + 1, `consecutive offsets ${atB[0].offset}, ${atB[1].offset}`);
});

test('publishing into a channel one is not subscribed to is refused (103) without allow_publish_for_client', async () => {
    const a = await s.connected(relay.wsUrl, { token: h.connToken('alice') });
    await assert.rejects(
        h.withTimeout(a.publish('chat:not-subscribed', { x: 1 }), 'publish refusal'),
        (err) => {
            assert.equal(err.code, 103, `error ${h.safeJson(err)}`);
            return true;
        },
    );
    assert.equal(a.state, 'connected');
});
