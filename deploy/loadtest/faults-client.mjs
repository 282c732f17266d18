// turnout-client members of the fault campaign (turnout-bench faults): each
// client joins its rooms and publishes round-robin into them, and every
// thing the application sees is printed as one JSON line, which the bench
// records for its checker:
//   {"t":"joined","member","user","room","at","seq","epoch","recovered"}
//   {"t":"message","member","room","at","seq","key"}
//   {"t":"sent","key","room","publisher","at"}, {"t":"ack","key","seq"},
//   {"t":"refused","key"} (the publish rejected: no ack will come)
//   {"t":"ready"} once every room of every client is joined.
// CLIENTS is a JSON array of {"name","user","rooms":[…],"every":ms}.
// Lines on stdin: `stop-publishing`, `stop` (answered {"t":"done"}).
import { createInterface } from "node:readline";
import { Client } from "../../clients/js/dist/index.js";

const gateway = process.env.GATEWAY;
const specs = JSON.parse(process.env.CLIENTS ?? "[]");
if (!globalThis.WebSocket) {
  console.error("no global WebSocket: run with Node 22+, or Node 20 with --experimental-websocket");
  process.exit(2);
}
const out = (o) => process.stdout.write(JSON.stringify(o) + "\n");

const clients = [];
const timers = [];
await Promise.all(
  specs.map(async (spec) => {
    const client = new Client(gateway, {
      user: spec.user,
      minBackoffMs: 50,
      maxBackoffMs: 1000,
      pingIntervalMs: 2000,
      pongTimeoutMs: 2000,
      publishTimeoutMs: 90_000,
    });
    // What the library does, for the run's log (stderr).
    const log = (what) => console.error(`${new Date().toISOString()} ${spec.name}: ${what}`);
    client.on("error", (e) => log(`error ${e.code}: ${e.message}`));
    client.on("disconnect", (d) => log(`closed ${d.code} ${d.reason} from ${d.node}; retry in ${d.retryInMs} ms`));
    client.on("redirect", (r) => log(`redirect ${r.room} to ${r.url}`));
    client.on("reconnect", (r) => log(`told to reconnect: ${r.reason}`));
    client.on("rejoin", (r) => log(`rejoin ${r.room} after ${r.since}: ${r.reason}`));
    client.on("welcome", (w) => log(`welcome from ${w.node}`));
    clients.push(client);
    const rooms = await Promise.all(
      spec.rooms.map((name) =>
        client.join(name, {
          onJoined(info) {
            out({
              t: "joined",
              member: spec.name,
              user: spec.user,
              room: name,
              at: Date.now(),
              seq: info.seq,
              epoch: info.epoch,
              recovered: info.recovered ?? null,
            });
          },
          onMessage(m) {
            out({ t: "message", member: spec.name, room: name, at: Date.now(), seq: m.seq, key: m.data?.k ?? "" });
          },
        }),
      ),
    );
    let n = 0;
    const publish = () => {
      const room = rooms[n % rooms.length];
      const key = `${spec.name}-${++n}`;
      out({ t: "sent", key, room: room.name, publisher: spec.name, at: Date.now() });
      room.publish({ k: key }, { id: key }).then(
        (r) => out({ t: "ack", key, seq: r.seq }),
        (e) => {
          log(`${key} refused: ${e.code}`);
          out({ t: "refused", key });
        },
      );
    };
    spec.start = () => timers.push(setInterval(publish, spec.every));
  }),
);
out({ t: "ready" });
for (const spec of specs) spec.start();

for await (const line of createInterface({ input: process.stdin })) {
  if (line === "stop-publishing") {
    for (const t of timers.splice(0)) clearInterval(t);
  } else if (line === "stop") {
    for (const c of clients) c.close();
    out({ t: "done" });
    process.exit(0);
  }
}
