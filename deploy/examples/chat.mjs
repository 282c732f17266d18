// A chat on turnout-client in Node: join a room, print what arrives,
// publish each line you type. Reconnects, recovery and resending unacked
// publishes are the library's.
//
//   (cd clients/js && npm ci && npm run build)   # once, or use the committed dist/
//   node --experimental-websocket deploy/examples/chat.mjs ws://127.0.0.1:8080/ws lobby alice
//
// Node 22 and later have WebSocket without the flag; on Node 20 without it,
// pass an implementation: new Client(url, { WebSocket: (await import("ws")).default }).
import { createInterface } from "node:readline";
import { Client } from "../../clients/js/dist/index.js";

const [url = "ws://127.0.0.1:8080/ws", roomName = "lobby", user = `node-${process.pid}`] = process.argv.slice(2);
const client = new Client(url, { user });
client.on("welcome", (w) => console.log(`* on ${w.node} (${w.strategy})`));
client.on("disconnect", (d) =>
  console.log(`* left ${d.node ?? "the gateway"} (${d.code})` + (d.retryInMs === null ? "; giving up" : `; back in ${d.retryInMs} ms`)),
);
client.on("error", (e) => console.log(`* ${e.code}: ${e.message}`));

const room = await client.join(roomName, {
  onMessage: (m) => console.log(`#${m.seq} ${m.from}@${m.node}: ${typeof m.data?.text === "string" ? m.data.text : JSON.stringify(m.data)}`),
  onPresence: (e) => console.log(`* ${e.user} ${e.event === "join" ? "joined" : "left"}`),
  onJoined: (i) => {
    if (!i.first) console.log(i.recovered ? "* rejoined, nothing missed" : "* rejoined; history could not fill everything missed");
  },
});
console.log(`* joined ${roomName} as ${user}; type to publish, Ctrl-D to quit`);

for await (const line of createInterface({ input: process.stdin })) {
  if (!line.trim()) continue;
  room.publish({ text: line }).catch((e) => console.log(`* not sent: ${e.message}`));
}
client.close();
