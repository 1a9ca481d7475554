'use strict';
// 10. Protocol heartbeat: the relay sends `{}` every ping_interval and the connect reply
// advertises `ping`/`pong`; centrifuge-js answers every ping with `{}` and stays
// connected; a raw client that never answers is closed with 3012 "no pong".

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { EventEmitter } = require('node:events');
const h = require('./harness');

const s = h.scope();
let relay;

before(async () => {
    relay = await s.relay(h.baseConfig({
        ping_interval: '1s',
        pong_timeout: '2s',
        namespaces: [h.chatNamespace()],
    }));
});
after(() => s.cleanup());

/** A `ws` WebSocket class that records the text frames each socket sends and receives. */
function tappedWebSocket() {
    const frames = new EventEmitter();
    class Tapped extends h.WebSocket {
        constructor(...args) {
            super(...args);
            this.on('message', (data) => {
                const text = data.toString();
                frames.emit('in', text);
                if (text === '{}') frames.emit('ping', text);
            });
        }

        send(data, ...rest) {
            const text = String(data);
            frames.emit('out', text);
            if (text === '{}') frames.emit('pong', text);
            return super.send(data, ...rest);
        }
    }
    return { Tapped, frames };
}

test('centrifuge-js answers the relay\'s pings and stays connected', async () => {
    const { Tapped, frames } = tappedWebSocket();
    const inbound = h.collect(frames, 'in');
    const pings = h.collect(frames, 'ping');
    const pongs = h.collect(frames, 'pong');
    const c = s.client(relay.wsUrl, { websocket: Tapped });
    const lost = [];
    c.on('disconnected', (ctx) => lost.push(ctx));
    c.on('connecting', (ctx) => ctx.code !== 0 && lost.push(ctx));
    const connected = h.once(c, 'connected');
    c.connect();
    await connected;
    const reply = JSON.parse(inbound.items[0].split('\n')[0]);
    assert.equal(reply.connect.ping, 1, `connect reply ${inbound.items[0]}`);
    assert.equal(reply.connect.pong, true);

    await pings.waitFor(4, { what: 'four server pings' });
    await pongs.waitFor(3, { what: 'three client pongs' });
    // After more than one pong_timeout of pings and pongs, still the same connection.
    const sub = c.newSubscription('chat:hb');
    const subscribed = h.once(sub, 'subscribed');
    sub.subscribe();
    await subscribed;
    assert.deepEqual(await h.withTimeout(sub.presenceStats(), 'presence stats'), { numClients: 1, numUsers: 1 });
    assert.equal(c.state, 'connected');
    assert.deepEqual(lost, []);
});

test('a raw client that never answers pings is closed with 3012', async () => {
    const ws = await s.rawSocket(relay.wsUrl);
    const msgs = [];
    ws.on('message', (d) => msgs.push(d.toString()));
    const closed = h.withTimeout(new Promise((resolve) => {
        ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() }));
    }), 'close for missing pongs', 15000);
    ws.send('{"id":1,"connect":{}}');
    const { code, reason } = await closed;
    assert.equal(code, 3012, `close ${code} ${reason}; received ${JSON.stringify(msgs)}`);
    assert.ok(msgs.includes('{}'), `a ping was sent first: ${JSON.stringify(msgs)}`);
});
