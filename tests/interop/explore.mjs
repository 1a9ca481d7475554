import WebSocket from 'ws';
import crypto from 'node:crypto';
import { makePki, startRelay, compressibleText } from './harness.mjs';
const pki = makePki();
const relay = await startRelay(pki);
const open = (scheme, path, opts={}) => new Promise((res, rej) => {
  const ws = new WebSocket(relay.url(scheme, path), { ca: pki.caPem, ...opts });
  ws.msgs = []; ws.on('message', (d, b) => ws.msgs.push(Buffer.from(d)));
  ws.on('close', (c, r) => { ws.closeInfo = [c, String(r)]; });
  ws.once('open', () => res(ws)); ws.once('error', rej);
});
const waitFor = async (pred, ms=20000) => { const t0=Date.now(); while(!pred()) { if (Date.now()-t0>ms) return false; await new Promise(r=>setTimeout(r,10)); } return true; };

// 1. fragmented compressed message
for (const scheme of ['ws','wss']) {
  const ws = await open(scheme, '/echo', { perMessageDeflate: { threshold: 0 } });
  const parts = [compressibleText(30000), compressibleText(40000), 'end'];
  ws.send(parts[0], { fin: false }); ws.send(parts[1], { fin: false }); ws.send(parts[2], { fin: true });
  const ok = await waitFor(() => ws.msgs.length >= 1 || ws.closeInfo);
  console.log('fragmented', scheme, ok, ws.closeInfo, ws.msgs[0]?.toString() === parts.join(''));
  ws.terminate();
}
// 3. fan-out burst over wss with deflate
for (const scheme of ['ws', 'wss']) {
  const members = [];
  for (let i = 0; i < 30; i++) members.push(await open(scheme, '/rooms/burst-'+scheme, { perMessageDeflate: i % 2 === 0 }));
  const sender = await open(scheme, '/rooms/burst-'+scheme, { perMessageDeflate: true });
  const N = 300;
  const msgs = Array.from({length: N}, (_, i) => `${i}:` + compressibleText(10000 + i));
  for (const m of msgs) sender.send(m);
  const ok = await waitFor(() => members.every(m => m.msgs.length >= N || m.closeInfo), 60000);
  const bad = members.filter(m => m.msgs.length !== N || m.msgs.some((d, i) => d.toString() !== msgs[i]));
  console.log('burst', scheme, ok, 'bad members', bad.length, bad.slice(0,3).map(m => [m.msgs.length, m.closeInfo]));
  for (const m of [...members, sender]) m.terminate();
}
// 4. slow reader over TLS
for (const scheme of ['ws','wss']) {
  const slow = await open(scheme, '/rooms/slow-'+scheme, { perMessageDeflate: true });
  slow._socket.pause();
  const sender = await open(scheme, '/rooms/slow-'+scheme, { perMessageDeflate: true });
  const N = 2000;
  for (let i = 0; i < N; i++) sender.send(`${i}:` + crypto.randomBytes(3000).toString('hex'));
  await new Promise(r => setTimeout(r, 2000));
  slow._socket.resume();
  await waitFor(() => slow.msgs.length >= N || slow.closeInfo, 20000);
  console.log('slow', scheme, 'got', slow.msgs.length, 'close', slow.closeInfo, 'in order', slow.msgs.every((d,i)=>d.toString().startsWith(i+':')));
  slow.terminate(); sender.terminate();
}
await relay.stop();
console.log(relay.log().split('\n').filter(l => /WARN|ERROR|panic/i.test(l) && !/open-files/.test(l)).slice(0,10).join('\n'));
