// A chat on turnout-client for the end-to-end tests (tests/tests/js_client.rs):
// members publish without pause while the test kills, drains and restarts
// things, and at the end every member must hold every acked message once,
// in order.
//
//   GATEWAY=ws://127.0.0.1:8080/ws ROOMS=2 MEMBERS=4 RATE=10 node chat.mjs
//
// Lines on stdin: `mark N` (answered `marked N` once BETWEEN more publishes
// were acked and then a fresh message reached every member of every room:
// the cluster delivers again), `where` (answered with a JSON line: members
// per node), `stop` (answered
// with one JSON line of results, then the process exits).
import { createInterface } from "node:readline";
import { Client } from "../dist/index.js";

const gateway = process.env.GATEWAY;
const rooms = Number(process.env.ROOMS ?? 2);
const perRoom = Number(process.env.MEMBERS ?? 4);
const rate = Number(process.env.RATE ?? 10);
const between = Number(process.env.BETWEEN ?? 100); // acks before each mark
if (!globalThis.WebSocket) {
  console.error("no global WebSocket: run with Node 22+, or Node 20 with --experimental-websocket");
  process.exit(2);
}

const members = [];
for (let r = 0; r < rooms; r++) {
  for (let i = 0; i < perRoom; i++) {
    members.push({ user: `u${r}-${i}`, room: `chat-${r}`, seqs: [], keys: new Map(), events: [] });
  }
}

const acked = new Map(); // key -> {seq, room}
let rejected = 0;
let duplicates = 0;
let sentCount = 0;
const inflight = new Set();
let waiters = [];
const changed = () => {
  for (const w of waiters.splice(0)) w();
};

await Promise.all(
  members.map(async (m) => {
    m.client = new Client(gateway, {
      user: m.user,
      minBackoffMs: 50,
      maxBackoffMs: 1000,
      pingIntervalMs: 2000,
      pongTimeoutMs: 2000,
    });
    m.client.on("rejoin", (e) => m.events.push(`rejoin ${e.reason} after ${e.since}`));
    m.client.on("disconnect", (e) => m.events.push(`closed ${e.code} from ${e.node}`));
    m.client.on("redirect", (e) => m.events.push(`redirect ${e.url}`));
    m.client.on("error", (e) => m.events.push(`error ${e.code}`));
    m.room = await m.client.join(m.room, {
      onMessage(msg) {
        m.seqs.push(msg.seq);
        const k = msg.data.k;
        m.keys.set(k, (m.keys.get(k) ?? 0) + 1);
        changed();
      },
      onJoined(info) {
        if (info.recovered === false) m.events.push(`recovered false at ${info.seq}`);
      },
    });
  }),
);

let n = 0;
function publish(m, key) {
  sentCount++;
  const p = m.room
    .publish({ k: key })
    .then((r) => {
      acked.set(key, { seq: r.seq, room: m.room.name });
      if (r.duplicate) duplicates++;
    })
    .catch((e) => {
      rejected++;
      m.events.push(`publish ${key} rejected: ${e.code} ${e.message}`);
    })
    .finally(() => {
      inflight.delete(p);
      changed();
    });
  inflight.add(p);
  return p;
}

let publishing = true;
const timers = members.map((m, i) =>
  setTimeout(function tick() {
    if (!publishing) return;
    // Publishes go out without waiting for the previous ack: some are in
    // flight whenever a fault hits.
    publish(m, `${m.user}:${++n}`);
    timers[i] = setTimeout(tick, 1000 / rate);
  }, (i * 1000) / rate / members.length),
);

const until = (pred) =>
  new Promise((resolve) => {
    const check = () => (pred() ? resolve() : waiters.push(check));
    check();
  });

console.log("ready");

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  const [cmd, arg] = line.trim().split(/\s+/);
  if (cmd === "mark") {
    // Some traffic first, so that a fault meets publishes in flight.
    const before = acked.size;
    await until(() => acked.size >= before + between);
    const keys = [];
    for (let r = 0; r < rooms; r++) {
      const key = `mark-${arg}-${r}`;
      keys.push([r, key]);
      publish(members[r * perRoom], key);
    }
    await until(() => keys.every(([r, key]) => members.filter((m) => m.room.name === `chat-${r}`).every((m) => m.keys.has(key))));
    console.log(`marked ${arg}`);
  } else if (cmd === "where") {
    const count = {};
    for (const m of members) count[m.client.node] = (count[m.client.node] ?? 0) + 1;
    console.log(JSON.stringify(count));
  } else if (cmd === "stop") {
    publishing = false;
    timers.forEach(clearTimeout);
    await Promise.allSettled([...inflight]);
    // Every acked message reaches every member of its room.
    const missingOf = (m) => [...acked].filter(([k, a]) => a.room === m.room.name && !m.keys.has(k)).map(([k]) => k);
    await Promise.race([
      until(() => members.every((m) => missingOf(m).length === 0)),
      new Promise((r) => setTimeout(r, 20_000)),
    ]);
    const seqOwners = new Map();
    let seqClashes = 0;
    for (const [k, a] of acked) {
      const id = `${a.room}#${a.seq}`;
      if (seqOwners.has(id) && seqOwners.get(id) !== k) seqClashes++;
      seqOwners.set(id, k);
    }
    const result = {
      published: sentCount,
      acked: acked.size,
      rejected,
      duplicates_acked: duplicates,
      seq_clashes: seqClashes,
      members: members.map((m) => ({
        user: m.user,
        node: m.client.node,
        received: m.seqs.length,
        missing: missingOf(m).length,
        delivered_twice: [...m.keys.values()].filter((c) => c > 1).length,
        out_of_order: m.seqs.filter((s, i) => i > 0 && s !== m.seqs[i - 1] + 1).length,
        events: m.events,
      })),
    };
    console.log(JSON.stringify(result));
    for (const m of members) m.client.close();
    process.exit(0);
  }
}
