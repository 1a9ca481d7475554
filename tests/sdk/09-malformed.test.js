'use strict';
// 9. Malformed input from a raw client on /connection/websocket is answered with a
// close frame 3501 ("bad request"), as Centrifugo does.

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const h = require('./harness');

const s = h.scope();
let relay;

before(async () => {
    relay = await s.relay(h.baseConfig({ namespaces: [h.chatNamespace()] }));
});
after(() => s.cleanup());

function closed(ws) {
    return h.withTimeout(new Promise((resolve) => {
        ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() }));
    }), 'close frame from the relay');
}

function nextMessage(ws) {
    return h.withTimeout(new Promise((resolve) => {
        ws.once('message', (data) => resolve(data.toString()));
    }), 'message from the relay');
}

test('invalid JSON as the first message: close 3501', async () => {
    const ws = await s.rawSocket(relay.wsUrl);
    const c = closed(ws);
    ws.send('this is {not json');
    const { code, reason } = await c;
    assert.equal(code, 3501, `close reason ${reason}`);
});

test('invalid JSON after a successful connect: close 3501', async () => {
    const ws = await s.rawSocket(relay.wsUrl);
    const reply = nextMessage(ws);
    ws.send('{"id":1,"connect":{}}');
    const r = JSON.parse((await reply).split('\n')[0]);
    assert.equal(r.id, 1);
    assert.ok(r.connect && typeof r.connect.client === 'string', `connect reply ${JSON.stringify(r)}`);
    const c = closed(ws);
    ws.send('{"id":2,"subscribe":');
    const { code, reason } = await c;
    assert.equal(code, 3501, `close reason ${reason}`);
});

test('a well-formed connect gets a reply with ping/pong advertised', async () => {
    const ws = await s.rawSocket(relay.wsUrl);
    const reply = nextMessage(ws);
    ws.send('{"id":1,"connect":{"name":"raw-test"}}');
    const r = JSON.parse((await reply).split('\n')[0]);
    assert.equal(r.id, 1);
    assert.ok(r.connect.ping > 0, JSON.stringify(r));
    assert.equal(r.connect.pong, true, JSON.stringify(r));
});
