// The client's state machine against a scripted server: each test plays
// the server's side of the protocol on a fake socket and checks what the
// client sends and what the application sees. (The end-to-end tests against
// a real cluster are in tests/tests/js_client.rs.)
import { test } from "node:test";
import assert from "node:assert/strict";
import { Client, TurnoutError, tokenExpiry } from "../dist/index.js";

/** A fake WebSocket: the test plays the server. */
function fakeServer() {
  const sockets = [];
  let waiting = [];
  class FakeSocket {
    constructor(url) {
      this.url = new URL(url);
      this.readyState = 1;
      this.sent = [];
      this.closed = null;
      this.onopen = this.onmessage = this.onclose = this.onerror = null;
      this.frameWaiters = [];
      sockets.push(this);
      for (const w of waiting.splice(0)) w(this);
    }
    send(text) {
      const f = JSON.parse(text);
      this.sent.push(f);
      for (const w of this.frameWaiters.splice(0)) w();
    }
    close(code, reason) {
      this.readyState = 3;
      this.closed = { code, reason };
    }
    // server side
    frame(f) {
      this.onmessage?.({ data: JSON.stringify(f) });
    }
    welcome(node = "node-a") {
      this.frame({ type: "welcome", node, strategy: "pubsub", conn: "c1" });
    }
    drop(code, reason = "") {
      this.readyState = 3;
      this.onclose?.({ code, reason });
    }
    /** The n-th frame (from 1) the client sent that matches, once it is sent. */
    async nth(pred, n) {
      for (;;) {
        const all = this.sent.filter(pred);
        if (all.length >= n) return all[n - 1];
        await new Promise((r) => this.frameWaiters.push(r));
      }
    }
    /** The first frame the client sent that matches. */
    async next(pred = () => true) {
      let seen = 0;
      for (;;) {
        for (; seen < this.sent.length; seen++) {
          if (pred(this.sent[seen])) return this.sent[seen];
        }
        await new Promise((r) => this.frameWaiters.push(r));
      }
    }
  }
  return {
    WebSocket: FakeSocket,
    sockets,
    /** The socket the client opens next (or the latest, if already open). */
    socket(n) {
      if (sockets.length > n) return Promise.resolve(sockets[n]);
      return new Promise((resolve) => {
        const check = (s) => (sockets.length > n ? resolve(sockets[n]) : waiting.push(check));
        waiting.push(check);
      });
    },
  };
}

const fast = { minBackoffMs: 1, maxBackoffMs: 4, pingIntervalMs: 0 };
const joinOf = (room) => (f) => f.type === "join" && f.room === room;

async function joined(server, n, client, room, seq, extra = {}) {
  const s = await server.socket(n);
  if (!s.welcomed) {
    s.welcomed = true;
    s.welcome(`node-${n}`);
  }
  const j = await s.next(joinOf(room));
  s.frame({ type: "joined", room, seq, epoch: "e1", presence: ["alice"], ...extra });
  return { s, j };
}

test("joins, sees messages once in order, rejoins with since after a drop", async () => {
  const server = fakeServer();
  const c = new Client("ws://gw/ws", { ...fast, user: "alice", WebSocket: server.WebSocket });
  const got = [];
  const joinedInfo = [];
  const joining = c.join("r1", { onMessage: (m) => got.push(m.seq), onJoined: (i) => joinedInfo.push(i) });
  const { s } = await joined(server, 0, c, "r1", 3);
  await joining;
  assert.equal(s.url.searchParams.get("room"), "r1", "routes by the room");
  assert.equal(s.url.searchParams.get("user"), "alice");
  for (const seq of [4, 5, 5, 4, 6]) s.frame({ type: "message", room: "r1", seq, from: "b", node: "n", ts: 1, data: seq });
  assert.deepEqual(got, [4, 5, 6], "duplicates dropped");
  s.drop(1006);
  const { j } = await joined(server, 1, c, "r1", 8, { recovered: true });
  assert.deepEqual([j.since, j.epoch], [6, "e1"], "rejoined after the last seq, in its epoch");
  for (const seq of [7, 8]) server.sockets[1].frame({ type: "message", room: "r1", seq, from: "b", node: "n", ts: 1, data: seq });
  assert.deepEqual(got, [4, 5, 6, 7, 8]);
  assert.deepEqual(joinedInfo.map((i) => [i.first, i.recovered]), [[true, undefined], [false, true]]);
  c.close();
  assert.equal(c.state, "closed");
});

test("a room joined before its first message learns its epoch from that message", async () => {
  const server = fakeServer();
  const c = new Client("ws://gw/ws", { ...fast, WebSocket: server.WebSocket });
  const got = [];
  c.join("r", { onMessage: (m) => got.push(m.seq) });
  const { s } = await joined(server, 0, c, "r", 0, { epoch: "" });
  s.frame({ type: "message", room: "r", seq: 1, epoch: "e7", from: "b", node: "n", ts: 1, data: 1 });
  s.frame({ type: "message", room: "r", seq: 2, from: "b", node: "n", ts: 1, data: 2 });
  s.drop(1006);
  const { j } = await joined(server, 1, c, "r", 2, { epoch: "e7", recovered: true });
  assert.deepEqual(got, [1, 2]);
  assert.deepEqual([j.since, j.epoch], [2, "e7"], "the rejoin says which epoch since counts in");
  c.close();
});

test("a seq jump rejoins with since and takes the replay", async () => {
  const server = fakeServer();
  const c = new Client("ws://gw/ws", { ...fast, WebSocket: server.WebSocket });
  const got = [];
  const rejoins = [];
  c.on("rejoin", (r) => rejoins.push(r));
  c.join("r", { onMessage: (m) => got.push(m.seq) });
  const { s } = await joined(server, 0, c, "r", 1);
  s.frame({ type: "message", room: "r", seq: 2, data: 0 });
  s.frame({ type: "message", room: "r", seq: 4, data: 0 }); // 3 missing
  s.frame({ type: "message", room: "r", seq: 5, data: 0 }); // in flight meanwhile
  const leave = await s.next((f) => f.type === "leave");
  assert.equal(leave.room, "r");
  assert.ok(!s.sent.some((f) => f.type === "join" && f.since !== undefined), "the join waits for left");
  s.frame({ type: "left", room: "r" });
  const j = await s.next((f) => f.type === "join" && f.since !== undefined);
  assert.equal(j.since, 2);
  s.frame({ type: "joined", room: "r", seq: 5, epoch: "e1", presence: [], recovered: true });
  for (const seq of [3, 4, 5]) s.frame({ type: "message", room: "r", seq, data: 0 });
  assert.deepEqual(got, [2, 3, 4, 5]);
  assert.deepEqual(rejoins, [{ room: "r", since: 2, reason: "gap" }]);
  c.close();
});

test("publish resolves on its ack; unacked ones are resent with the same id after a reconnect", async () => {
  const server = fakeServer();
  const c = new Client("ws://gw/ws", { ...fast, WebSocket: server.WebSocket });
  const room = await (async () => {
    const p = c.join("r");
    await joined(server, 0, c, "r", 0);
    return p;
  })();
  const s = server.sockets[0];
  const a = room.publish({ text: "a" });
  const b = room.publish({ text: "b" });
  const pa = await s.next((f) => f.type === "publish" && f.data.text === "a");
  const pb = await s.next((f) => f.type === "publish" && f.data.text === "b");
  assert.notEqual(pa.id, pb.id);
  s.frame({ type: "ack", id: pa.id, seq: 1 });
  assert.deepEqual(await a, { seq: 1, duplicate: false });
  assert.equal(c.unacked, 1);
  s.drop(1006); // b's fate unknown
  const { s: s2 } = await joined(server, 1, c, "r", 2, { recovered: true });
  const again = await s2.next((f) => f.type === "publish");
  assert.equal(again.id, pb.id, "resent with its id");
  assert.deepEqual(again.data, { text: "b" });
  s2.frame({ type: "ack", id: pb.id, seq: 2, duplicate: true });
  assert.deepEqual(await b, { seq: 2, duplicate: true });
  assert.equal(c.unacked, 0);
  c.close();
});

test("publishes wait for the join; rate_limited and unavailable are retried, other refusals reject", async () => {
  const server = fakeServer();
  const c = new Client("ws://gw/ws", { ...fast, WebSocket: server.WebSocket });
  const joining = c.join("r");
  const early = c.publish("r", 1);
  const { s } = await joined(server, 0, c, "r", 0);
  await joining;
  const p1 = await s.next((f) => f.type === "publish");
  s.frame({ type: "error", code: "rate_limited", message: "slow down", room: "r", id: p1.id });
  const isP1 = (f) => f.type === "publish" && f.id === p1.id;
  const p1b = await s.nth(isP1, 2);
  s.frame({ type: "error", code: "unavailable", message: "redis", room: "r", id: p1b.id });
  await s.nth(isP1, 3);
  s.frame({ type: "ack", id: p1.id, seq: 1 });
  assert.equal((await early).seq, 1);
  const bad = c.publish("r", 2);
  const p2 = await s.next((f) => f.type === "publish" && f.data === 2);
  s.frame({ type: "error", code: "bad_frame", message: "no", room: "r", id: p2.id });
  await assert.rejects(bad, (e) => e instanceof TurnoutError && e.code === "bad_frame");
  await assert.rejects(c.publish("r", 3, { id: "x".repeat(65) }), /at most 64 bytes/);
  await assert.rejects(c.publish("elsewhere", 3), (e) => e.code === "not_joined");
  c.close();
});

test("wrong_node moves to the redirect soon; the node's death brings it back through the gateway", async () => {
  const server = fakeServer();
  const c = new Client("ws://gw/ws", { ...fast, user: "u", WebSocket: server.WebSocket });
  const redirects = [];
  c.on("redirect", (r) => redirects.push(r.url));
  c.join("r");
  const s0 = await server.socket(0);
  s0.welcome("node-x");
  await s0.next(joinOf("r"));
  s0.frame({ type: "error", code: "wrong_node", message: "elsewhere", room: "r", redirect: "ws://owner:9001/ws" });
  const s1 = await server.socket(1);
  assert.equal(s0.closed?.code, 1000, "left the wrong node");
  assert.equal(s1.url.host, "owner:9001");
  assert.equal(s1.url.searchParams.get("user"), "u");
  assert.deepEqual(redirects, ["ws://owner:9001/ws"]);
  s1.welcome("owner");
  await s1.next(joinOf("r"));
  s1.frame({ type: "joined", room: "r", seq: 0, epoch: "", presence: [] });
  s1.frame({ type: "reconnect", reason: "draining" });
  s1.drop(1012);
  const s2 = await server.socket(2);
  assert.equal(s2.url.host, "gw", "after a drain: through the gateway");
  c.close();
});

test("a terminal close code stops and rejects; 1012 and 3008 reconnect with growing, jittered backoff", async () => {
  const server = fakeServer();
  const c = new Client("ws://gw/ws", { minBackoffMs: 100, maxBackoffMs: 400, pingIntervalMs: 0, WebSocket: server.WebSocket });
  const waits = [];
  c.on("disconnect", (d) => waits.push(d));
  const connecting = c.connect();
  (await server.socket(0)).drop(1006); // never welcomed
  (await server.socket(1)).drop(1012);
  const s2 = await server.socket(2);
  s2.welcome();
  await connecting;
  s2.drop(3008, "slow consumer"); // up for less than 5 s: the backoff goes on growing
  const s3 = await server.socket(3);
  s3.welcome();
  const joining = c.join("r");
  await s3.next(joinOf("r"));
  const pending = c.publish("r", "x");
  s3.drop(3500, "banned");
  await assert.rejects(pending, (e) => e.code === "closed" && e.closeCode === 3500);
  await assert.rejects(joining, (e) => e.closeCode === 3500, "a join under way is refused too");
  assert.equal(c.state, "closed");
  assert.equal(waits.length, 4);
  const [w0, w1, w2] = waits.map((w) => w.retryInMs);
  assert.ok(w0 >= 50 && w0 <= 100, `first wait ${w0} in [50, 100]`);
  assert.ok(w1 >= 100 && w1 <= 200, `second wait ${w1} in [100, 200]`);
  assert.equal(waits[2].code, 3008);
  assert.ok(w2 >= 200 && w2 <= 400, `after 3008 ${w2} in [200, 400]`);
  assert.equal(waits[3].retryInMs, null, "3500: no retry");
  assert.equal(server.sockets.length, 4, "no reconnect after 3500");
});

test("recovered: false is reported and the messages after the hole are taken", async () => {
  const server = fakeServer();
  const c = new Client("ws://gw/ws", { ...fast, WebSocket: server.WebSocket });
  const got = [];
  const infos = [];
  c.join("r", { onMessage: (m) => got.push(m.seq), onJoined: (i) => infos.push(i) });
  const { s } = await joined(server, 0, c, "r", 10);
  s.drop(1006);
  // History was trimmed: 11..14 are gone, 15 and 16 are still there.
  await joined(server, 1, c, "r", 16, { recovered: false });
  const s1 = server.sockets[1];
  for (const seq of [15, 16, 17]) s1.frame({ type: "message", room: "r", seq, data: 0 });
  assert.deepEqual(got, [15, 16, 17]);
  assert.equal(infos[1].recovered, false);
  s1.drop(1006);
  // Redis lost the room: a new epoch, seq starting over.
  const s2 = await server.socket(2);
  s2.welcome();
  const j = await s2.next(joinOf("r"));
  assert.equal(j.since, 17);
  s2.frame({ type: "joined", room: "r", seq: 0, epoch: "e2", presence: [], recovered: false });
  s2.frame({ type: "message", room: "r", seq: 1, data: 0 });
  assert.deepEqual(got, [15, 16, 17, 1], "the new epoch's messages from 1");
  assert.equal(c.join("r") instanceof Promise, true);
  c.close();
});

test("a replay cut at max_replay_bytes asks for the rest", async () => {
  const server = fakeServer();
  const c = new Client("ws://gw/ws", { ...fast, WebSocket: server.WebSocket });
  const got = [];
  c.join("r", { onMessage: (m) => got.push(m.seq) });
  const { s } = await joined(server, 0, c, "r", 0);
  s.frame({ type: "message", room: "r", seq: 1, data: 0 });
  s.drop(1006);
  const { s: s1 } = await joined(server, 1, c, "r", 9, { recovered: true, replay_until: 3 });
  s1.frame({ type: "message", room: "r", seq: 2, data: 0 });
  s1.frame({ type: "message", room: "r", seq: 3, data: 0 });
  await s1.next((f) => f.type === "leave");
  s1.frame({ type: "left", room: "r" });
  const j = await s1.next((f) => f.type === "join" && f.since === 3);
  assert.equal(j.room, "r");
  assert.deepEqual(got, [1, 2, 3]);
  c.close();
});

test("tokens: refreshed before exp; 3010 reconnects with a fresh one", async () => {
  const jwt = (exp) => `h.${btoa(JSON.stringify({ sub: "u", exp })).replace(/=+$/, "")}.s`;
  const soon = Math.floor(Date.now() / 1000) + 1;
  assert.equal(tokenExpiry(jwt(soon)), soon * 1000);
  assert.equal(tokenExpiry("not a jwt"), undefined);
  const server = fakeServer();
  let n = 0;
  const c = new Client("ws://gw/ws", {
    ...fast,
    token: jwt(soon),
    refreshBeforeMs: 60_000, // at once
    refreshToken: () => jwt(soon + 3600 + ++n),
    WebSocket: server.WebSocket,
  });
  c.connect();
  const s = await server.socket(0);
  assert.equal(s.url.searchParams.get("token"), jwt(soon));
  s.welcome();
  const r = await s.next((f) => f.type === "refresh");
  assert.equal(r.token, jwt(soon + 3601));
  s.frame({ type: "refreshed", exp: soon + 3601 });
  s.drop(3010);
  const s1 = await server.socket(1);
  assert.equal(s1.url.searchParams.get("token"), jwt(soon + 3600 + n), "reconnected with the freshest token");
  c.close();
});

test("a connection that stops answering is given up and opened again", async () => {
  const server = fakeServer();
  const c = new Client("ws://gw/ws", { ...fast, pingIntervalMs: 20, pongTimeoutMs: 20, WebSocket: server.WebSocket });
  c.connect();
  const s = await server.socket(0);
  s.welcome();
  await s.next((f) => f.type === "ping");
  // No pong: the client drops it and opens another.
  const s1 = await server.socket(1);
  assert.ok(s.closed, "the silent socket was closed");
  assert.ok(s1);
  c.close();
});

test("without a WebSocket implementation it says what to do", async () => {
  const saved = globalThis.WebSocket;
  globalThis.WebSocket = undefined;
  try {
    const c = new Client("ws://gw/ws");
    await assert.rejects(c.connect(), (e) => e.code === "no_websocket" && /ws/.test(e.message));
  } finally {
    globalThis.WebSocket = saved;
  }
});

test("presence follows joins and leaves", async () => {
  const server = fakeServer();
  const c = new Client("ws://gw/ws", { ...fast, WebSocket: server.WebSocket });
  const events = [];
  const p = c.join("r", { onPresence: (e) => events.push([e.event, e.user, e.users.sort().join(",")]) });
  const { s } = await joined(server, 0, c, "r", 0);
  const room = await p;
  s.frame({ type: "presence", room: "r", event: "join", user: "bob" });
  s.frame({ type: "presence", room: "r", event: "leave", user: "alice" });
  assert.deepEqual(events, [["join", "bob", "alice,bob"], ["leave", "alice", "bob"]]);
  assert.deepEqual([...room.presence], ["bob"]);
  c.close();
});

test("a refused join rejects; leave rejects the room's pending publishes", async () => {
  const server = fakeServer();
  const c = new Client("ws://gw/ws", { ...fast, WebSocket: server.WebSocket });
  const no = c.join("secret");
  const s = await server.socket(0);
  s.welcome();
  await s.next(joinOf("secret"));
  s.frame({ type: "error", code: "forbidden", message: "no", room: "secret" });
  await assert.rejects(no, (e) => e.code === "forbidden");
  const yes = c.join("r");
  await s.next(joinOf("r"));
  s.frame({ type: "joined", room: "r", seq: 0, epoch: "", presence: [] });
  const room = await yes;
  const pending = room.publish("x");
  room.leave();
  await assert.rejects(pending, (e) => e.code === "closed");
  assert.ok(s.sent.some((f) => f.type === "leave" && f.room === "r"));
  c.close();
});

test("a rejoin whose leave is rate-limited retries the leave, then joins with since; an already-member answer goes round again", async () => {
  const server = fakeServer();
  const c = new Client("ws://gw/ws", { ...fast, WebSocket: server.WebSocket });
  const got = [];
  const infos = [];
  c.join("r", { onMessage: (m) => got.push(m.seq), onJoined: (i) => infos.push(i) });
  const { s } = await joined(server, 0, c, "r", 1);
  s.frame({ type: "message", room: "r", seq: 3, data: 0 }); // 2 missing
  await s.next((f) => f.type === "leave");
  s.frame({ type: "error", code: "rate_limited", message: "slow", room: "r" });
  const isLeave = (f) => f.type === "leave";
  await s.nth(isLeave, 2);
  assert.ok(!s.sent.some((f) => f.type === "join" && f.since !== undefined), "no join before the leave went through");
  // The leave goes through; the join is answered as for a member (as when
  // a leave was refused after all): no replay, so round again.
  s.frame({ type: "left", room: "r" });
  await s.next((f) => f.type === "join" && f.since === 1);
  s.frame({ type: "joined", room: "r", seq: 3, epoch: "e1", presence: [] }); // no `recovered`: not a replay
  await s.nth(isLeave, 3);
  s.frame({ type: "left", room: "r" });
  await s.nth((f) => f.type === "join" && f.since === 1, 2);
  s.frame({ type: "joined", room: "r", seq: 3, epoch: "e1", presence: [], recovered: true });
  for (const seq of [2, 3]) s.frame({ type: "message", room: "r", seq, data: 0 });
  assert.deepEqual(got, [2, 3]);
  assert.deepEqual(infos.map((i) => i.recovered), [undefined, true], "the already-member answer was not reported");
  c.close();
});

test("a publish waiting out rate_limited is sent after a reconnect", async () => {
  const server = fakeServer();
  const c = new Client("ws://gw/ws", { ...fast, minBackoffMs: 200, maxBackoffMs: 400, WebSocket: server.WebSocket });
  c.join("r");
  const { s } = await joined(server, 0, c, "r", 0);
  const p = c.publish("r", "x");
  const sent = await s.next((f) => f.type === "publish");
  s.frame({ type: "error", code: "rate_limited", message: "slow", room: "r", id: sent.id });
  s.drop(1006); // before the retry is due
  const { s: s1 } = await joined(server, 1, c, "r", 0, { recovered: true });
  const again = await s1.next((f) => f.type === "publish");
  assert.equal(again.id, sent.id);
  s1.frame({ type: "ack", id: sent.id, seq: 1 });
  assert.equal((await p).seq, 1);
  c.close();
});

test("what cannot be sent is refused at once", async () => {
  const server = fakeServer();
  const c = new Client("ws://gw/ws", { ...fast, maxFrameBytes: 100, WebSocket: server.WebSocket });
  await assert.rejects(c.join("bad room"), (e) => e.code === "bad_name");
  c.join("r");
  await joined(server, 0, c, "r", 0);
  await assert.rejects(c.publish("r", undefined), (e) => e.code === "bad_frame");
  const loop = {};
  loop.self = loop;
  await assert.rejects(c.publish("r", loop), (e) => e.code === "bad_frame");
  await assert.rejects(c.publish("r", "x".repeat(200)), (e) => e.code === "too_large");
  c.close();
  await assert.rejects(c.publish("r", 1), (e) => e.code === "closed");
  await assert.rejects(c.join("q"), (e) => e.code === "closed");
});

test("a connection that fails with error and no close is tried again at once", async () => {
  const server = fakeServer();
  const c = new Client("ws://gw/ws", { ...fast, connectTimeoutMs: 60_000, WebSocket: server.WebSocket });
  const joining = c.join("r");
  const s0 = await server.socket(0);
  // Node's WebSocket on a refused upgrade: `error`, never `close`.
  s0.readyState = 3;
  s0.onerror?.({});
  const { s } = await joined(server, 1, c, "r", 0);
  await joining;
  assert.equal(s0.closed?.code, 1000, "the failed socket was let go");
  assert.equal(c.state, "open");
  s.frame({ type: "message", room: "r", seq: 1, data: 1 });
  c.close();
});

test("redirects back and forth back off", async () => {
  const server = fakeServer();
  const c = new Client("ws://gw/ws", { ...fast, minBackoffMs: 20, maxBackoffMs: 40, WebSocket: server.WebSocket });
  const waits = [];
  c.on("disconnect", (d) => waits.push(d.retryInMs));
  c.join("r").catch(() => {}); // never joined: rejected at close
  for (let n = 0; n < 3; n++) {
    const s = await server.socket(n);
    s.welcome(`node-${n}`);
    await s.next(joinOf("r"));
    s.frame({ type: "error", code: "wrong_node", message: "elsewhere", room: "r", redirect: `ws://node-${(n + 1) % 2}/ws` });
  }
  await server.socket(3);
  assert.ok(waits[0] <= 20, `the first redirect is followed within minBackoffMs: ${waits}`);
  assert.ok(waits[1] >= 10 && waits[2] >= 10, `later ones wait: ${waits}`);
  c.close();
});

test("the members of a room that moved do not all arrive at its owner at once", async () => {
  const server = fakeServer();
  const waits = new Set();
  for (let i = 0; i < 20; i++) {
    const c = new Client("ws://gw/ws", { ...fast, minBackoffMs: 200, WebSocket: server.WebSocket });
    c.on("disconnect", (d) => waits.add(d.retryInMs));
    const n = server.sockets.length;
    c.join("r").catch(() => {});
    const s = await server.socket(n);
    s.welcome();
    await s.next(joinOf("r"));
    s.frame({ type: "error", code: "wrong_node", message: "elsewhere", room: "r", redirect: "ws://owner/ws" });
    c.close();
  }
  assert.ok(waits.size >= 10, `redirects are spread: ${[...waits]}`);
  assert.ok([...waits].every((w) => w >= 0 && w <= 200), `within minBackoffMs: ${[...waits]}`);
});

test("joins refused rate_limited slow down and go out one at a time, until all are joined", async () => {
  const server = fakeServer();
  const c = new Client("ws://gw/ws", { ...fast, maxBackoffMs: 1000, WebSocket: server.WebSocket });
  const names = Array.from({ length: 30 }, (_, i) => `r${i}`);
  const joining = Promise.all(names.map((n) => c.join(n)));
  const s = await server.socket(0);
  s.welcome();
  // Every join goes out at once; the server takes 10 and refuses the rest.
  await s.nth((f) => f.type === "join", 30);
  const sent = s.sent.filter((f) => f.type === "join").map((f) => f.room);
  assert.deepEqual(sent, names);
  for (const n of names.slice(0, 10)) s.frame({ type: "joined", room: n, seq: 0, epoch: "", presence: [] });
  const refusedAt = Date.now();
  for (const n of names.slice(10)) {
    s.frame({ type: "error", code: "rate_limited", message: "joining too fast", room: n });
  }
  // Again, at a pace: one join, then nothing for a while.
  const first = await s.nth((f) => f.type === "join", 31);
  const gaps = [];
  let last = Date.now();
  s.frame({ type: "joined", room: first.room, seq: 0, epoch: "", presence: [] });
  for (let k = 32; k <= 50; k++) {
    const f = await s.nth((f) => f.type === "join", k);
    const now = Date.now();
    gaps.push(now - last);
    last = now;
    s.frame({ type: "joined", room: f.room, seq: 0, epoch: "", presence: [] });
  }
  assert.ok(Date.now() - refusedAt >= 19 * 150, `paced: ${gaps}`);
  assert.ok(gaps.every((g) => g >= 150), `one join at a time: ${gaps}`);
  const rooms = await joining;
  assert.equal(rooms.length, 30);
  assert.equal(s.sent.filter((f) => f.type === "join").length, 50, "each refused join sent once more");
  // Joined everything: the next reconnect joins at full speed again.
  s.drop(1012);
  const s1 = await server.socket(1);
  s1.welcome();
  await s1.nth((f) => f.type === "join", 30);
  c.close();
});

test("closed for going over limits (1008), it comes back after the longest backoff", async () => {
  const server = fakeServer();
  const c = new Client("ws://gw/ws", { ...fast, minBackoffMs: 5, maxBackoffMs: 200, WebSocket: server.WebSocket });
  const waits = [];
  c.on("disconnect", (d) => waits.push(d.retryInMs));
  const got = [];
  c.join("r", { onMessage: (m) => got.push(m.seq) });
  const { s } = await joined(server, 0, c, "r", 3);
  s.drop(1008, "policy violation");
  const { s: s1 } = await joined(server, 1, c, "r", 4);
  assert.equal(c.state, "open");
  assert.ok(waits[0] >= 100 && waits[0] <= 200, `waited ${waits[0]}`);
  assert.equal(s1.sent.find(joinOf("r")).since, 3);
  c.close();
});

test("close stops token refreshes, even one under way", async () => {
  const jwt = (exp) => `h.${btoa(JSON.stringify({ sub: "u", exp })).replace(/=+$/, "")}.s`;
  const server = fakeServer();
  let calls = 0;
  let release;
  const c = new Client("ws://gw/ws", {
    ...fast,
    token: jwt(Math.floor(Date.now() / 1000) + 2),
    refreshBeforeMs: 60_000,
    refreshToken: () => {
      calls++;
      return new Promise((r) => (release = r));
    },
    WebSocket: server.WebSocket,
  });
  const errors = [];
  c.on("error", (e) => errors.push(e));
  c.connect();
  (await server.socket(0)).welcome();
  while (!release) await new Promise((r) => setImmediate(r));
  c.close();
  release(jwt(Math.floor(Date.now() / 1000) + 2));
  // What the token's arrival sets off runs in microtasks, all before the
  // next turn of the event loop.
  await new Promise((r) => setImmediate(r));
  assert.equal(calls, 1);
  assert.equal(errors.length, 0);
  assert.ok(!server.sockets[0].sent.some((f) => f.type === "refresh"));
});

test("a publish retried after a refusal holds back the ones behind it, without spinning", async () => {
  const server = fakeServer();
  const c = new Client("ws://gw/ws", { ...fast, minBackoffMs: 40, maxBackoffMs: 80, WebSocket: server.WebSocket });
  c.join("r");
  const { s } = await joined(server, 0, c, "r", 0);
  const first = c.publish("r", "a");
  const pa = await s.next((f) => f.type === "publish" && f.data === "a");
  s.frame({ type: "error", code: "rate_limited", message: "slow", room: "r", id: pa.id });
  const second = c.publish("r", "b"); // queued behind the retry
  let timers = 0;
  const real = globalThis.setTimeout;
  globalThis.setTimeout = (...args) => (timers++, real(...args));
  try {
    const isPublish = (f) => f.type === "publish";
    const retry = await s.nth(isPublish, 2);
    assert.equal(retry.id, pa.id, "the refused one goes first");
    const b = await s.nth(isPublish, 3);
    assert.equal(b.data, "b");
    assert.ok(timers < 10, `${timers} timers while waiting out a 20-80 ms delay`);
  } finally {
    globalThis.setTimeout = real;
  }
  s.frame({ type: "ack", id: pa.id, seq: 1 });
  s.frame({ type: "ack", id: (await s.nth((f) => f.type === "publish", 3)).id, seq: 2 });
  assert.deepEqual([(await first).seq, (await second).seq], [1, 2]);
  c.close();
});

test("rpc resolves with the backend's answer, rejects with its refusal, and with disconnected when the connection ends first", async () => {
  const server = fakeServer();
  const c = new Client("ws://gw/ws", { ...fast, WebSocket: server.WebSocket });
  const welcomes = [];
  c.on("welcome", (w) => welcomes.push(w.data));
  const connecting = c.connect();
  const s = await server.socket(0);
  s.frame({ type: "welcome", node: "n", strategy: "pubsub", conn: "c1", data: { plan: "pro" } });
  await connecting;
  assert.deepEqual(welcomes, [{ plan: "pro" }], "the connect hook's data");
  const asked = c.rpc("whoami", { x: 1 });
  const f = await s.next((f) => f.type === "rpc");
  assert.deepEqual([f.method, f.data], ["whoami", { x: 1 }]);
  s.frame({ type: "rpc_result", id: f.id, data: { user: "alice" } });
  assert.deepEqual(await asked, { user: "alice" });

  const refused = c.rpc("nope");
  const g = await s.next((g) => g.type === "rpc" && g.method === "nope");
  s.frame({ type: "error", code: "rejected", message: "no method nope", id: g.id });
  await assert.rejects(refused, (e) => e instanceof TurnoutError && e.code === "rejected" && e.message === "no method nope");

  const cut = c.rpc("slow");
  await s.next((h) => h.type === "rpc" && h.method === "slow");
  s.drop(1006);
  await assert.rejects(cut, (e) => e.code === "disconnected");
  const s1 = await server.socket(1);
  assert.equal(s1.sent.filter((h) => h.type === "rpc").length, 0, "an rpc is not resent");
  c.close();
  await assert.rejects(c.rpc("late"), (e) => e.code === "closed");
});

test("a connection the backend refused (4403) is not opened again", async () => {
  const server = fakeServer();
  const c = new Client("ws://gw/ws", { ...fast, WebSocket: server.WebSocket });
  const connecting = c.connect();
  const s = await server.socket(0);
  s.drop(4403, "banned");
  await assert.rejects(connecting, (e) => e.closeCode === 4403 && e.message.includes("banned"));
  assert.equal(c.state, "closed");
  assert.equal(server.sockets.length, 1, "no second try");
});

test("wrong_node about a room it does not follow (one the server joined it to) moves nothing", async () => {
  const server = fakeServer();
  const c = new Client("ws://gw/ws", { ...fast, WebSocket: server.WebSocket });
  const errors = [];
  c.on("error", (e) => errors.push(e.code));
  const joining = c.join("mine");
  await joined(server, 0, c, "mine", 0);
  await joining;
  server.sockets[0].frame({ type: "error", code: "wrong_node", message: "elsewhere", room: "hook:room", redirect: "ws://other/ws" });
  assert.equal(server.sockets[0].closed, null, "the connection stays");
  assert.deepEqual(errors, ["wrong_node"]);
  c.close();
});
