// The example backend (deploy/examples/backend.py) in the loop, as a user
// of the demo meets it through the gateway: deploy/docker/test.sh runs it
// against the compose cluster.
//
//   GATEWAY=ws://127.0.0.1:8080/ws API=http://127.0.0.1:8080 node backend.mjs
//
// Checks, each with its own bound: a banned user is refused at connect
// (4403, and the client gives up); a user is greeted in `welcome`; a
// `moderated:` message comes back marked by the backend to another member
// on another connection; a blocked word is refused `rejected` and reaches
// nobody; a staff room is `forbidden`; rpc `whoami` answers the user; a
// message to a user (POST /api/users/{user}/publish) reaches them. Prints
// `ok` and exits 0, or says what failed and exits 1.
import { Client } from "../dist/index.js";

const gateway = process.env.GATEWAY;
const api = process.env.API;
const WAIT_MS = Number(process.env.WAIT_MS ?? 20000);
if (!globalThis.WebSocket) {
  console.error("no global WebSocket: run with Node 22+, or Node 20 with --experimental-websocket");
  process.exit(2);
}
const clients = [];
const fail = (msg) => {
  console.error(`backend check: ${msg}`);
  for (const c of clients) c.close();
  process.exit(1);
};
const within = (p, what) =>
  Promise.race([p, new Promise((_, reject) => setTimeout(() => reject(new Error(`no ${what} within ${WAIT_MS} ms`)), WAIT_MS))]);
const client = (user) => {
  const c = new Client(gateway, { user, minBackoffMs: 50, maxBackoffMs: 1000 });
  clients.push(c);
  return c;
};
const refusal = async (p) => {
  try {
    await p;
    return null;
  } catch (e) {
    return e.code ?? String(e);
  }
};

try {
  // Connect: mallory is banned by the demo's backend. (No room named: in
  // sticky too the gateway sends such a client to some node.)
  const mallory = client("mallory");
  const closed = new Promise((resolve) => mallory.on("disconnect", resolve));
  mallory.connect().catch(() => {});
  const d = await within(closed, "close for a banned user");
  if (d.code !== 4403) fail(`a banned user was closed with ${d.code}, not 4403`);
  if (d.retryInMs !== null || mallory.state !== "closed") fail("the client retries a connection the backend refused");

  // A moderated room: the backend checks and marks what is stored.
  const bob = client("bob");
  const got = [];
  let arrived;
  const arrival = new Promise((resolve) => (arrived = resolve));
  const lobby = "moderated:lobby";
  await within(
    bob.join(lobby, {
      onMessage(m) {
        got.push(m.data);
        arrived();
      },
    }),
    "bob's join",
  );
  // Welcome data from the connect hook.
  const alice = client("alice");
  const greeted = new Promise((resolve) => alice.on("welcome", (w) => resolve(w.data)));
  const room = await within(alice.join(lobby), "alice's join");
  const data = await within(greeted, "welcome");
  if (!data || !String(data.greeting ?? "").includes("alice")) fail(`welcome carries ${JSON.stringify(data)}, not a greeting`);
  const refused = await refusal(within(room.publish({ text: "buy spam now" }), "answer to a blocked word"));
  if (refused !== "rejected") fail(`a blocked word was answered ${refused ?? "ok"}, not rejected`);
  await within(room.publish({ text: "hello from alice" }), "ack");
  await within(arrival, "moderated message at another member");
  if (got.length !== 1 || got[0].text !== "hello from alice" || got[0].moderated !== true) {
    fail(`bob got ${JSON.stringify(got)}: not one message marked moderated (or the refused one came through)`);
  }

  // The join hook guards staff rooms.
  const staff = await refusal(within(alice.join("moderated:staff-room"), "answer to a staff room join"));
  if (staff !== "forbidden") fail(`alice's join of a staff room was answered ${staff ?? "ok"}, not forbidden`);

  // rpc over the same socket.
  const me = await within(alice.rpc("whoami"), "rpc answer");
  if (me?.user !== "alice") fail(`whoami answered ${JSON.stringify(me)}`);

  // A message to a user reaches their personal room, wherever they are.
  const personal = [];
  let toBob;
  const direct = new Promise((resolve) => (toBob = resolve));
  await within(
    bob.join("#bob", {
      onMessage(m) {
        personal.push(m.data);
        toBob();
      },
    }),
    "bob's personal room",
  );
  const res = await fetch(`${api}/api/users/bob/publish`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ data: { note: "for bob" } }),
  });
  if (!res.ok) fail(`POST /api/users/bob/publish answered ${res.status}: ${await res.text()}`);
  await within(direct, "message to bob");
  if (personal.length !== 1 || personal[0].note !== "for bob") fail(`bob's room got ${JSON.stringify(personal)}`);
} catch (e) {
  fail(e.message);
}
for (const c of clients) c.close();
console.log("ok");
process.exit(0);
