'use strict';
// 4. Interop with raw rooms: the channel `chat:x` and the raw room `/rooms/chat:x` are
// the same thing. Raw members get the payload bytes; protocol subscribers get a `pub`
// push whose `data` is the payload.

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const h = require('./harness');

const s = h.scope();
let relay;

before(async () => {
    relay = await s.relay(h.baseConfig({
        publish_token: h.PUBLISH_TOKEN,
        // Raw members are anonymous: they may publish only where anonymous clients may.
        namespaces: [
            h.chatNamespace({ allow_publish_for_anonymous: true }),
            // Anonymous clients may subscribe but not publish: raw members are read-only.
            h.chatNamespace({ name: 'ro', allow_publish_for_anonymous: false }),
        ],
    }));
});
after(() => s.cleanup());

/** Messages of a raw `ws` socket as {text, isBinary}. */
function rawMessages(ws) {
    const box = new (require('node:events').EventEmitter)();
    const r = h.collect(box, 'message');
    ws.on('message', (data, isBinary) => box.emit('message', { text: data.toString(), isBinary }));
    return r;
}

async function setup(room) {
    const raw = await s.rawSocket(`ws://127.0.0.1:${relay.port}/rooms/${room}`);
    const rawIn = rawMessages(raw);
    const c = await s.connected(relay.wsUrl, { token: h.connToken('proto-user') });
    const sub = c.newSubscription(room);
    const pubs = h.collect(sub, 'publication');
    const ok = h.once(sub, 'subscribed');
    sub.subscribe();
    await ok;
    return { raw, rawIn, c, sub, pubs };
}

test('protocol publish reaches a raw member as the exact JSON text', async () => {
    const { rawIn, sub, pubs } = await setup('chat:x');
    await h.withTimeout(sub.publish({ text: 'hi' }), 'sub.publish');
    const [msg] = await rawIn.waitFor(1, { what: 'raw member receives the protocol publication' });
    assert.equal(msg.text, '{"text":"hi"}');
    assert.equal(msg.isBinary, false);
    // The protocol publisher gets its own publication (and the raw member only one copy).
    const [own] = await pubs.waitFor(1);
    assert.deepEqual(own.data, { text: 'hi' });
    assert.equal(rawIn.items.length, 1);
});

test('raw member text reaches protocol subscribers as data', async () => {
    const { raw, rawIn, pubs } = await setup('chat:x2');
    raw.send('{"n":1}');
    const [pub] = await pubs.waitFor(1, { what: 'protocol subscriber receives the raw message' });
    assert.deepEqual(pub.data, { n: 1 });
    assert.equal(pub.channel, 'chat:x2');
    // echo_self is off for raw members.
    assert.equal(rawIn.items.length, 0);
});

test('raw text that is not JSON reaches protocol subscribers as a JSON string', async () => {
    const { raw, pubs } = await setup('chat:x3');
    raw.send('plain words, not JSON');
    const [pub] = await pubs.waitFor(1, { what: 'protocol subscriber receives the raw text' });
    assert.equal(pub.data, 'plain words, not JSON');
});

test('POST /publish/chat:x reaches both the raw member and the protocol subscriber', async () => {
    const { rawIn, pubs } = await setup('chat:x4');
    const res = await h.httpRequest('POST', `${relay.httpBase}/publish/chat:x4`, {
        headers: { Authorization: `Bearer ${h.PUBLISH_TOKEN}` },
        body: '{"from":"http","k":[1,2]}',
    });
    assert.ok(res.status >= 200 && res.status < 300, `HTTP ${res.status}: ${res.body}`);
    const [msg] = await rawIn.waitFor(1, { what: 'raw member receives the HTTP publication' });
    assert.equal(msg.text, '{"from":"http","k":[1,2]}');
    const [pub] = await pubs.waitFor(1, { what: 'protocol subscriber receives the HTTP publication' });
    assert.deepEqual(pub.data, { from: 'http', k: [1, 2] });
});

test('POST /publish with a wrong bearer token is refused and delivers nothing', async () => {
    const { rawIn, pubs, c } = await setup('chat:x5');
    const res = await h.httpRequest('POST', `${relay.httpBase}/publish/chat:x5`, {
        headers: { Authorization: 'Bearer wrong' },
        body: '{"bad":true}',
    });
    assert.ok(res.status === 401 || res.status === 403, `HTTP ${res.status}: ${res.body}`);
    // A publication after it is a barrier: it arrives, the refused one never did.
    await h.withTimeout(c.publish('chat:x5', { good: true }), 'publish');
    const [pub] = await pubs.waitFor(1);
    assert.deepEqual(pub.data, { good: true });
    const [msg] = await rawIn.waitFor(1);
    assert.equal(msg.text, '{"good":true}');
});

test('raw member where anonymous clients may not publish: receives, and is closed (1008) when it sends', async () => {
    const { raw, rawIn, c, pubs } = await setup('ro:z');
    await h.withTimeout(c.publish('ro:z', { to: 'raw' }), 'publish');
    const [msg] = await rawIn.waitFor(1, { what: 'read-only raw member receives' });
    assert.equal(msg.text, '{"to":"raw"}');
    const closed = h.withTimeout(new Promise((resolve) => raw.once('close', (code, reason) => resolve({ code, reason: reason.toString() }))), 'close of the raw member');
    raw.send('{"from":"raw"}');
    const { code } = await closed;
    assert.equal(code, 1008);
    await h.withTimeout(c.publish('ro:z', { barrier: true }), 'publish');
    await pubs.waitFor(2);
    assert.deepEqual(pubs.items.map((p) => p.data), [{ to: 'raw' }, { barrier: true }]);
});
