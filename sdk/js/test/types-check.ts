// Compiled by `npm run test:types` (tsc --noEmit), never run: it uses the
// API the way an application would, so the declarations cannot drift from
// the README's example. The @ts-expect-error lines must stay errors.

import {
  Switchboard,
  SwitchboardError,
  type ConnectionState,
  type Member,
  type Position,
  type RecoverEvent,
  type StateEvent,
  type Subscription,
  type SwitchboardOptions,
  type Transport,
  type Format,
} from "../src/switchboard.js";

interface ChatMessage {
  text: string;
  from: string;
}

const options: SwitchboardOptions = {
  getToken: async () => "jwt",
  backoff: { min: 250, max: 10_000 },
  pingInterval: 20_000,
  requestTimeout: 10_000,
  maxAuthFailures: 3,
  WebSocket: globalThis.WebSocket,
  fetch: globalThis.fetch,
  clock: { random: () => 0.5 },
  transports: ["websocket", "sse"],
  fallbackTimeout: 5_000,
  format: "msgpack",
};
// @ts-expect-error: not a format
new Switchboard("wss://switchboard.example.com/ws", { getToken: () => "jwt", format: "cbor" });
new Switchboard("https://switchboard.example.com/ws", { getToken: () => "jwt", transports: ["sse"] });
// @ts-expect-error: not a transport
new Switchboard("wss://switchboard.example.com/ws", { getToken: () => "jwt", transports: ["long-polling"] });
const sb = new Switchboard("wss://switchboard.example.com/ws", options);
const using: Transport = sb.transport;
console.log(using);
new Switchboard(new URL("ws://localhost:8080/ws"), { getToken: () => "sync token" });

const removeListener: () => void = sb.on("state", (event: StateEvent) => {
  const state: ConnectionState = event.state;
  const code: number | undefined = event.code;
  if (event.error) console.log(state, code, event.error.code);
});
removeListener();
sb.on("error", (err) => {
  const code: string = err.code;
  const retryAfter: number | undefined = err.retryAfter;
  console.log(code, retryAfter, err instanceof SwitchboardError);
});
sb.on("welcome", (w) => {
  const format: Format = w.format;
  console.log(w.connection_id, w.node_id, w.user, w.expires_in, w.transport, format);
});
// @ts-expect-error: not an event of the client
sb.on("message", () => {});

sb.connect();
const sub: Subscription<ChatMessage> = sb.subscribe<ChatMessage>("chat:lobby", {
  onMessage(data, { offset, channel }) {
    const text: string = data.text;
    console.log(text, offset, channel);
  },
  onJoin(member: Member) {
    console.log(member.user, member.connection_id, member.info);
  },
  onLeave(member) {
    console.log(member.user);
  },
  onRecover({ recovered, offset, epoch }: RecoverEvent) {
    if (!recovered) console.log("reload", offset, epoch);
  },
  onReset(position: Position) {
    console.log(position.offset, position.epoch);
  },
  onError(err) {
    console.log(err.code);
  },
});

async function use(): Promise<void> {
  const ready = await sub.ready;
  console.log(ready.offset, ready.epoch, ready.recovered);
  const published = await sub.publish({ text: "hi", from: "alice" });
  console.log(published.offset, published.epoch);
  // @ts-expect-error: the payload type is ChatMessage
  await sub.publish({ txt: "typo" });
  const members: Member[] = await sub.presence();
  const history = await sub.history({ limit: 10, since: { offset: 3, epoch: "e" } });
  for (const m of history.messages) console.log(m.offset, m.data.text);
  await sub.unsubscribe();
  const rtt: number = await sb.ping();
  await sb.publish("notifications:alice", { any: "json" });
  const results = await sb.publishBatch<ChatMessage>([
    { channel: "chat:a", data: { text: "one", from: "alice" } },
    { channel: "chat:b", data: { text: "two", from: "alice" } },
  ]);
  for (const r of results) {
    if (r instanceof SwitchboardError) console.log(r.code, r.message);
    else console.log(r.offset, r.epoch);
  }
  // @ts-expect-error: every message has the batch's payload type
  await sb.publishBatch<ChatMessage>([{ channel: "chat:a", data: { txt: "typo" } }]);
  console.log(members.length, rtt, sub.state, sub.position?.offset, sb.state, sb.stats.unknownFrames);
  // @ts-expect-error: stats are read-only
  sb.stats.unknownFrames = 0;
  sb.disconnect();
}
void use();

try {
  new Switchboard("not a url", options);
} catch (err) {
  if (err instanceof SwitchboardError && err.code === "bad_url") console.log(err.message);
}

// @ts-expect-error: getToken is required
new Switchboard("ws://localhost/ws", {});
