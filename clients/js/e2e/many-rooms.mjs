// One turnout-client in many rooms, for the end-to-end tests
// (tests/tests/js_client.rs): a user in ROOMS rooms must come through a
// drain of its node with every room joined again, within the server's
// join limits.
//
//   GATEWAY=ws://127.0.0.1:8080/ws ROOMS=100 node many-rooms.mjs
//
// Prints `ready` once every room is joined. Lines on stdin: `where`
// (answered with the node's id), `publish` (one message into every room;
// answered `published N` with the acks, or `failed <code> <message>`),
// `stop` (answered with a JSON line of what happened, then exits).
import { createInterface } from "node:readline";
import { Client } from "../dist/index.js";

const gateway = process.env.GATEWAY;
const count = Number(process.env.ROOMS ?? 100);
if (!globalThis.WebSocket) {
  console.error("no global WebSocket: run with Node 22+, or Node 20 with --experimental-websocket");
  process.exit(2);
}
const events = { closes: [], errors: [], rejoins: 0 };
const client = new Client(gateway, { user: "many", minBackoffMs: 50, maxBackoffMs: 2000 });
client.on("disconnect", (d) => events.closes.push(d.code));
client.on("error", (e) => events.errors.push(e.code));
client.on("rejoin", () => events.rejoins++);
let joins = 0;
const rooms = await Promise.all(
  Array.from({ length: count }, (_, i) =>
    client.join(`many-${i}`, {
      onJoined() {
        joins++;
      },
    }),
  ),
);
console.log("ready");

let n = 0;
for await (const line of createInterface({ input: process.stdin })) {
  if (line === "where") {
    console.log(client.node);
  } else if (line === "publish") {
    n++;
    try {
      const acks = await Promise.all(rooms.map((r) => r.publish({ n })));
      console.log(`published ${acks.length}`);
    } catch (e) {
      console.log(`failed ${e.code} ${e.message}`);
    }
  } else if (line === "stop") {
    console.log(JSON.stringify({ joins, ...events, state: client.state }));
    client.close();
    process.exit(0);
  }
}
