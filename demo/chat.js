// wsrelay demo chat: the Gorilla WebSocket chat example, rebuilt on the
// Centrifugo client protocol v2 (JSON codec) that wsrelay speaks at
// /connection/websocket. A deliberately small client written for this page,
// no SDK: it shows what goes over the wire.
//
// Wire format in short:
// - every command is {"id":N,"<method>":{...}} and gets one reply with the
//   same id: {"id":N,"<method>":{...}} or {"id":N,"error":{code,message}};
// - the server sends asynchronous pushes {"push":{"channel":C,"pub"|"join"|
//   "leave"|"unsubscribe":{...}}} and {"push":{"disconnect":{...}}};
// - the server's ping is {} and must be answered with {};
// - several replies/pushes may share one frame, separated by "\n".
//
// All user-controlled text reaches the DOM through textContent only.
(function () {
  'use strict';

  const NAMESPACE = 'demo:';
  const DEFAULT_ROOM = 'demo:lobby';
  // Room names are the relay's channel grammar minus markers: [A-Za-z0-9._~-].
  const ROOM_NAME = /^[A-Za-z0-9._~-]{1,64}$/;
  const HISTORY_LIMIT = 50;
  const MAX_NAME = 32;
  // Reconnect backoff: 0.5s, 1s, 2s ... capped at 20s, each with jitter.
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 20000;
  // How much later than announced a server ping may arrive before the
  // connection is considered dead (centrifuge-js uses the same 10s).
  const PING_GRACE_MS = 10000;
  // Dialling plus the connect round trip must finish within this.
  const CONNECT_TIMEOUT_MS = 10000;

  const $ = (id) => document.getElementById(id);
  const ui = {
    status: $('status'),
    login: $('login'),
    name: $('name'),
    loginError: $('login-error'),
    chat: $('chat'),
    roomForm: $('room-form'),
    room: $('room'),
    messages: $('messages'),
    users: $('users'),
    sendForm: $('send-form'),
    text: $('text'),
    send: $('send'),
  };

  const state = {
    user: '',
    channel: DEFAULT_ROOM,
    // Connection.
    ws: null,
    connected: false,
    nextId: 1,
    pending: new Map(), // command id -> function(reply)
    attempts: 0, // failed connection attempts since the last success
    reconnectTimer: 0,
    pingTimer: 0,
    pingMs: 0,
    refreshTimer: 0,
    lastDisconnect: null, // the server's disconnect push, if one came
    stopped: false, // terminal error: no more reconnects
    // Subscription to state.channel.
    subscribed: false,
    subGen: 0, // bumped on every (re)subscribe; stale replies are dropped
    epoch: '', // stream position we have seen up to: recovery resumes here
    offset: 0,
    positioned: false, // we hold a position worth recovering from
    historyLoaded: false,
    shown: new Set(), // offsets already on screen (replies and pushes overlap)
    presenceBusy: false,
    presenceAgain: false,
  };

  // ---- UI helpers --------------------------------------------------------

  // `phase` (also in #status's data-state, for tests and styling) is one of
  // connecting, connected, subscribed, reconnecting, stopped, idle; when
  // subscribed, data-channel names the channel.
  function setStatus(text, phase, channel) {
    const ok = phase === 'connected' || phase === 'subscribed';
    ui.status.textContent = text;
    ui.status.className = ok ? 'ok' : 'bad';
    ui.status.dataset.state = phase;
    ui.status.dataset.channel = channel || '';
    ui.send.disabled = phase !== 'subscribed';
  }

  // Counters kept on #status for tests: successful connects, server pings
  // answered, successful recoveries.
  function bump(counter) {
    ui.status.dataset[counter] = String(Number(ui.status.dataset[counter] || 0) + 1);
  }

  function nearBottom() {
    const m = ui.messages;
    return m.scrollHeight - m.scrollTop - m.clientHeight < 40;
  }

  function addNotice(text) {
    const stick = nearBottom();
    const li = document.createElement('li');
    li.className = 'notice';
    li.textContent = text;
    ui.messages.appendChild(li);
    if (stick) ui.messages.scrollTop = ui.messages.scrollHeight;
  }

  // Renders one publication. Messages are kept in offset order, whatever
  // order history, recovery and live pushes deliver them in, and each offset
  // is shown once. Publications without an offset (unpositioned channel)
  // are appended.
  function addPublication(pub) {
    const offset = typeof pub.offset === 'number' ? pub.offset : 0;
    if (offset > 0) {
      if (state.shown.has(offset)) return;
      state.shown.add(offset);
      if (offset > state.offset) state.offset = offset;
    }
    const data = pub.data;
    let user = '';
    let text;
    if (data && typeof data === 'object' && typeof data.text === 'string') {
      text = data.text;
      user = typeof data.user === 'string' ? data.user : '';
    } else {
      // Someone published something else (e.g. a raw room member or the
      // HTTP API): show it as JSON.
      text = JSON.stringify(data);
    }
    // The server-attested publisher, when the relay includes it, wins over
    // the name written in the data.
    if (pub.info && typeof pub.info.user === 'string' && pub.info.user !== '') {
      user = pub.info.user;
    }
    const li = document.createElement('li');
    li.className = 'msg';
    if (offset > 0) li.dataset.offset = String(offset);
    const who = document.createElement('span');
    who.className = 'user';
    who.textContent = user || '?';
    const what = document.createElement('span');
    what.className = 'text';
    what.textContent = text;
    li.append(who, what);

    const stick = nearBottom();
    let before = null;
    if (offset > 0) {
      // Scan from the end: the new message is nearly always the last.
      for (let el = ui.messages.lastElementChild; el; el = el.previousElementSibling) {
        const o = Number(el.dataset.offset || 0);
        if (o > 0 && o < offset) break;
        if (o > offset) before = el;
      }
    }
    ui.messages.insertBefore(li, before);
    if (stick) ui.messages.scrollTop = ui.messages.scrollHeight;
  }

  function showUsers(presence) {
    const names = new Set();
    for (const id of Object.keys(presence || {})) {
      const info = presence[id];
      if (info && typeof info.user === 'string') names.add(info.user);
    }
    ui.users.replaceChildren();
    for (const name of [...names].sort()) {
      const li = document.createElement('li');
      li.textContent = name;
      if (name === state.user) li.className = 'me';
      ui.users.appendChild(li);
    }
  }

  // ---- Protocol ----------------------------------------------------------

  function wsUrl() {
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    return scheme + '//' + location.host + '/connection/websocket';
  }

  // Sends a command and calls onReply with its reply ({method: result} or
  // {error}). Replies of a connection that is gone are never delivered.
  function call(method, params, onReply) {
    if (!state.ws || state.ws.readyState !== WebSocket.OPEN) return false;
    const id = state.nextId++;
    state.pending.set(id, onReply || (() => {}));
    state.ws.send(JSON.stringify({ id: id, [method]: params }));
    return true;
  }

  function onFrame(ws, text) {
    armPingWatchdog();
    for (const line of text.split('\n')) {
      // A reply handler may have given up on this connection.
      if (state.ws !== ws) return;
      if (line.trim() === '') continue;
      let msg;
      try {
        msg = JSON.parse(line);
      } catch (e) {
        console.warn('unparsable line from server', line);
        continue;
      }
      if (msg.id) {
        const cb = state.pending.get(msg.id);
        state.pending.delete(msg.id);
        if (cb) cb(msg);
      } else if (msg.push) {
        onPush(msg.push);
      } else if (Object.keys(msg).length === 0) {
        // Server ping: answer with an empty command (the pong).
        ws.send('{}');
        bump('pings');
      }
    }
  }

  function onPush(push) {
    if (push.disconnect) {
      // The close frame follows; remember why, in case it gets lost.
      state.lastDisconnect = push.disconnect;
      return;
    }
    if (push.channel !== state.channel) return;
    if (push.pub) {
      addPublication(push.pub);
    } else if (push.join || push.leave) {
      refreshPresence();
    } else if (push.unsubscribe) {
      state.subscribed = false;
      const u = push.unsubscribe;
      if (u.code >= 2500) {
        // The server asks us to come back (e.g. it lost our position).
        subscribe();
      } else {
        addNotice('Unsubscribed by the server: ' + (u.reason || u.code));
        setStatus('unsubscribed from ' + state.channel, 'connected');
      }
    }
  }

  // The server pings every `ping` seconds (from the connect reply); if
  // nothing arrives for that long plus a grace period, the connection is
  // dead even if the browser has not noticed yet (a network blip can leave
  // a socket open for minutes), so drop it and reconnect.
  function armPingWatchdog() {
    clearTimeout(state.pingTimer);
    if (state.connected && state.pingMs > 0) {
      state.pingTimer = setTimeout(() => dropConnection('no ping from server'), state.pingMs + PING_GRACE_MS);
    }
  }

  // ---- Connection life cycle --------------------------------------------

  // A connection token for state.user from the demo's token endpoint.
  // Resolves to null (after going back to the login form) when the server
  // does not accept the name; throws on other failures.
  async function fetchToken() {
    const resp = await fetch('/demo/token?user=' + encodeURIComponent(state.user), { cache: 'no-store' });
    if (resp.status === 400 || resp.status === 403) {
      const why = (await resp.text()).trim();
      stop('name not accepted' + (why ? ': ' + why : ''));
      ui.chat.hidden = true;
      ui.login.hidden = false;
      ui.loginError.textContent = 'Name not accepted' + (why ? ': ' + why : '');
      ui.loginError.hidden = false;
      sessionStorage.removeItem('wsrelay-demo-user');
      return null;
    }
    if (!resp.ok) throw new Error('token request: HTTP ' + resp.status);
    const token = (await resp.json()).token;
    if (typeof token !== 'string') throw new Error('token request: no token in answer');
    return token;
  }

  async function connect() {
    state.reconnectTimer = 0;
    if (state.stopped) return;
    setStatus('connecting…', 'connecting');
    let token;
    try {
      token = await fetchToken();
    } catch (e) {
      scheduleReconnect(String(e.message || e));
      return;
    }
    if (state.stopped || token === null) return;

    const ws = new WebSocket(wsUrl());
    state.ws = ws;
    state.lastDisconnect = null;
    // Re-armed as the ping watchdog once the connect reply arrives.
    clearTimeout(state.pingTimer);
    state.pingTimer = setTimeout(() => dropConnection('connect timeout'), CONNECT_TIMEOUT_MS);
    ws.onopen = () => {
      call('connect', { token: token, name: 'wsrelay-demo' }, onConnectReply);
    };
    ws.onmessage = (ev) => {
      if (typeof ev.data === 'string') onFrame(ws, ev.data);
    };
    ws.onclose = (ev) => {
      let code = ev.code;
      let reason = ev.reason;
      if (state.lastDisconnect && (code === 1006 || code === 1005)) {
        code = state.lastDisconnect.code;
        reason = state.lastDisconnect.reason;
      }
      connectionLost(code, reason);
    };
    // onerror is always followed by onclose, which does the work.
  }

  function onConnectReply(reply) {
    if (reply.error) {
      const e = reply.error;
      // As centrifuge-js: codes < 100, temporary errors and 109 (token
      // expired: we fetch a fresh one anyway) are worth retrying.
      if (e.code < 100 || e.temporary || e.code === 109) {
        dropConnection('connect refused: ' + e.message);
      } else {
        stop('connect refused: ' + e.message + ' (' + e.code + ')');
      }
      return;
    }
    const r = reply.connect || {};
    state.connected = true;
    state.attempts = 0;
    state.pingMs = (r.ping || 0) * 1000;
    armPingWatchdog();
    bump('connects');
    setStatus('connected as ' + state.user, 'connected');
    scheduleRefresh(r);
    subscribe();
  }

  // A token with an expiry makes the connection expire too (the reply says
  // `expires` and `ttl` seconds): send a fresh token with `refresh` before
  // then, or the server disconnects us (and we would reconnect).
  function scheduleRefresh(result) {
    clearTimeout(state.refreshTimer);
    if (!result.expires || !(result.ttl > 0)) return;
    const ws = state.ws;
    state.refreshTimer = setTimeout(async () => {
      let token;
      try {
        token = await fetchToken();
      } catch (e) {
        if (state.ws === ws) dropConnection('token refresh failed: ' + (e.message || e));
        return;
      }
      if (token === null || state.ws !== ws) return;
      call('refresh', { token: token }, (reply) => {
        if (reply.error) dropConnection('token refresh refused: ' + reply.error.message);
        else scheduleRefresh(reply.refresh || {});
      });
    }, Math.max(1000, result.ttl * 800));
  }

  // Forgets the current socket without waiting for a closing handshake
  // (which may never complete on a dead network) and reconnects.
  function dropConnection(why) {
    const ws = state.ws;
    if (!ws) return;
    ws.onclose = ws.onmessage = ws.onopen = null;
    try {
      ws.close(1000);
    } catch (e) {
      /* already closing */
    }
    connectionLost(0, why);
  }

  function connectionLost(code, reason) {
    state.ws = null;
    state.connected = false;
    state.subscribed = false;
    state.pending.clear();
    state.presenceBusy = false;
    state.presenceAgain = false;
    clearTimeout(state.pingTimer);
    clearTimeout(state.refreshTimer);
    if (state.stopped) return;
    // Close codes as centrifuge-js reads them: 3500-3999, 4500-4999 and
    // 1009 (message too big) mean "do not come back".
    if ((code >= 3500 && code <= 3999) || (code >= 4500 && code <= 4999) || code === 1009) {
      stop('disconnected: ' + (reason || code));
      return;
    }
    scheduleReconnect(reason || 'connection closed (' + code + ')');
  }

  function scheduleReconnect(why) {
    if (state.reconnectTimer || state.stopped) return;
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** Math.min(state.attempts, 10));
    const delay = Math.round(base * (0.5 + Math.random() / 2));
    state.attempts++;
    setStatus('reconnecting in ' + Math.ceil(delay / 1000) + 's (' + why + ')', 'reconnecting');
    state.reconnectTimer = setTimeout(connect, delay);
  }

  function stop(why) {
    state.stopped = true;
    clearTimeout(state.reconnectTimer);
    state.reconnectTimer = 0;
    if (state.ws) dropConnection(why);
    setStatus(why, 'stopped');
    addNotice(why + '. Reload the page to try again.');
  }

  // The browser knows when the network is back: do not wait out the backoff.
  window.addEventListener('online', () => {
    if (state.reconnectTimer) {
      clearTimeout(state.reconnectTimer);
      connect();
    }
  });

  // ---- Subscription ------------------------------------------------------

  // Subscribes to state.channel. The first time, the last messages are
  // loaded with a `history` call (limit 50, newest first, shown oldest
  // first), which works the same for a fresh page and a reload. After that
  // (reconnect, server-side resubscribe) we subscribe with recover:true
  // from the last offset/epoch we saw: the subscribe reply then carries
  // exactly the publications we missed, so none is lost or shown twice.
  function subscribe() {
    const gen = ++state.subGen;
    const channel = state.channel;
    const req = { channel: channel, recoverable: true, join_leave: true };
    const recovering = state.positioned;
    if (recovering) {
      req.recover = true;
      req.epoch = state.epoch;
      req.offset = state.offset;
    }
    call('subscribe', req, (reply) => {
      if (gen !== state.subGen) return;
      if (reply.error) {
        const e = reply.error;
        if (e.code < 100 || e.temporary) {
          addNotice('Subscribe to ' + channel + ' failed (' + e.message + '), retrying');
          dropConnection('subscribe failed');
        } else {
          addNotice('Cannot join ' + channel + ': ' + e.message + ' (' + e.code + ')');
          setStatus('not in a room', 'connected');
        }
        return;
      }
      const r = reply.subscribe || {};
      state.subscribed = true;
      setStatus('connected as ' + state.user + ' in ' + channel, 'subscribed', channel);
      if (recovering && r.recovered) {
        bump('recoveries');
        for (const p of r.publications || []) addPublication(p);
      } else if (recovering) {
        // Our position is gone (history expired or the stream restarted):
        // start over from what history still has.
        addNotice('Some messages may have been missed; reloading recent history.');
        clearMessages();
      }
      // Recover from here next time, even if the history call below does
      // not make it before the connection drops.
      if (r.epoch) {
        state.epoch = r.epoch;
        state.positioned = true;
        if ((r.offset || 0) > state.offset) state.offset = r.offset;
      }
      if (!state.historyLoaded) loadHistory(gen);
      refreshPresence();
    });
  }

  function loadHistory(gen) {
    const channel = state.channel;
    call('history', { channel: channel, limit: HISTORY_LIMIT, reverse: true }, (reply) => {
      if (gen !== state.subGen) return;
      if (reply.error) {
        addNotice('No history for ' + channel + ': ' + reply.error.message);
        return;
      }
      const h = reply.history || {};
      const pubs = (h.publications || []).slice().reverse();
      for (const p of pubs) addPublication(p);
      state.historyLoaded = true;
    });
  }

  // One presence call at a time; join/leave pushes that arrive meanwhile
  // trigger one more call when it returns.
  function refreshPresence() {
    if (state.presenceBusy) {
      state.presenceAgain = true;
      return;
    }
    const gen = state.subGen;
    const sent = call('presence', { channel: state.channel }, (reply) => {
      state.presenceBusy = false;
      if (gen === state.subGen && !reply.error) showUsers((reply.presence || {}).presence);
      if (state.presenceAgain) {
        state.presenceAgain = false;
        refreshPresence();
      }
    });
    state.presenceBusy = sent;
    if (!sent) state.presenceAgain = false;
  }

  function clearMessages() {
    ui.messages.replaceChildren();
    state.shown.clear();
    state.offset = 0;
    state.epoch = '';
    state.positioned = false;
    state.historyLoaded = false;
  }

  // ---- Page --------------------------------------------------------------

  function normalizeRoom(input) {
    let name = input.trim();
    if (name.startsWith(NAMESPACE)) name = name.slice(NAMESPACE.length);
    return ROOM_NAME.test(name) ? NAMESPACE + name : null;
  }

  function switchRoom(channel) {
    if (channel === state.channel) return;
    // Also when the subscribe is still in flight: commands run in order, so
    // this ends it either way (an error reply, if there was none, is fine).
    call('unsubscribe', { channel: state.channel });
    state.subGen++;
    state.subscribed = false;
    state.channel = channel;
    sessionStorage.setItem('wsrelay-demo-room', channel);
    clearMessages();
    ui.users.replaceChildren();
    if (state.connected) {
      setStatus('connected as ' + state.user + ', joining ' + channel, 'connected');
      subscribe();
    }
  }

  function start(user, room) {
    state.user = user;
    state.channel = room;
    ui.room.value = room;
    ui.login.hidden = true;
    ui.chat.hidden = false;
    sessionStorage.setItem('wsrelay-demo-user', user);
    sessionStorage.setItem('wsrelay-demo-room', room);
    ui.text.focus();
    connect();
  }

  ui.login.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const user = ui.name.value.trim();
    if (user === '' || user.length > MAX_NAME) {
      ui.loginError.textContent = 'Please enter a name of 1 to ' + MAX_NAME + ' characters.';
      ui.loginError.hidden = false;
      return;
    }
    ui.loginError.hidden = true;
    state.stopped = false;
    start(user, normalizeRoom(ui.room.value) || DEFAULT_ROOM);
  });

  ui.roomForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const channel = normalizeRoom(ui.room.value);
    if (!channel) {
      addNotice('Room names use letters, digits and . _ ~ - (at most 64).');
      return;
    }
    ui.room.value = channel;
    switchRoom(channel);
  });

  ui.sendForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const text = ui.text.value;
    if (text.trim() === '') return;
    if (!state.subscribed) {
      addNotice('Not connected, message not sent.');
      return;
    }
    const channel = state.channel;
    const sent = call('publish', { channel: channel, data: { user: state.user, text: text } }, (reply) => {
      if (reply.error) addNotice('Message not sent: ' + reply.error.message);
    });
    if (sent) ui.text.value = '';
  });

  // A reload keeps the name and room of this tab.
  const savedUser = sessionStorage.getItem('wsrelay-demo-user');
  const savedRoom = normalizeRoom(sessionStorage.getItem('wsrelay-demo-room') || '') || DEFAULT_ROOM;
  ui.room.value = savedRoom;
  setStatus('not connected', 'idle');
  if (savedUser) start(savedUser, savedRoom);
})();
