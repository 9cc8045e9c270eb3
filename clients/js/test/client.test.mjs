// The client against real server processes (node --experimental-websocket --test).

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { after, test } from "node:test";

import { Switchboard, SwitchboardError, isAfter } from "../dist/index.js";
import { eventually, hs256, HS256_SECRET, killAll, sleep, startNode, startRedis } from "./harness.mjs";

const clients = [];
function client(url, options = {}) {
  const sb = new Switchboard(url, { minReconnectDelay: 50, maxReconnectDelay: 500, serverCloseDelay: 200, ...options });
  clients.push(sb);
  return sb;
}
// Also after a failed test, so that no server outlives the file and keeps it running.
after(() => {
  for (const sb of clients) sb.close();
  killAll();
});

test("offsets compare within an epoch; another epoch always comes after", () => {
  assert.equal(isAfter("ab-5", "ab-4"), true);
  assert.equal(isAfter("ab-4", "ab-4"), false);
  assert.equal(isAfter("ab-3", "ab-4"), false);
  assert.equal(isAfter("cd-1", "ab-9"), true);
  assert.equal(isAfter("ab-1", undefined), true);
});

test("subscribes, receives in order, publishes with an offset, and reports errors", async () => {
  const node = await startNode();
  const sb = client(node.url);
  const received = [];
  const events = [];
  sb.on("connected", (detail) => events.push(["connected", detail]));
  sb.subscribe("news", { onMessage: (data) => received.push(data) });
  await eventually(() => sb.state === "connected", "connected");
  await sleep(50);
  for (let n = 1; n <= 5; n++) await node.publish("news", { n });
  await eventually(() => received.length === 5, "five messages");
  assert.deepEqual(received.map((data) => data.n), [1, 2, 3, 4, 5]);
  const offset = await sb.publish("news", { n: 6 });
  assert.match(offset, /^[0-9a-f]+-6$/);
  await eventually(() => received.length === 6, "its own message too");
  // A bad channel name is refused and the subscription dropped, the connection kept.
  const errors = [];
  sb.subscribe("bad name!", { onError: (error) => errors.push(error) });
  await eventually(() => errors.length === 1, "subscribe error");
  assert.equal(errors[0].code, "bad_request");
  await assert.rejects(sb.publish("bad name!", 1), (error) => error instanceof SwitchboardError && error.code === "bad_request");
  assert.ok((await sb.ping()) >= 0);
  const newest = await sb.history("news", { limit: 2 });
  assert.deepEqual(newest.messages.map((message) => message.data.n), [5, 6]);
  assert.equal(newest.truncated, false);
  const after = await sb.history("news", { since: newest.messages[0].offset });
  assert.deepEqual(after.messages.map((message) => message.data.n), [6]);
  assert.equal(after.recovered, true);
  assert.equal(events.length, 1);
  assert.equal(typeof events[0][1].connId, "number");
  await node.kill();
});

test("a drain and a restart of its node: resumes with since, no gap, no duplicate", async () => {
  const redis = await startRedis();
  const env = { SWITCHBOARD_SHUTDOWN__DRAIN_DELAY: "0s", SWITCHBOARD_SHUTDOWN__DRAIN_WINDOW: "200ms" };
  const config = `[cluster]\nredis = "${redis.url}"\npartitions = 4\n`;
  const a = await startNode({ config, env });
  const b = await startNode({ config, env });
  const sb = client(a.url);
  const received = [];
  const recovered = [];
  const nodes = [];
  sb.on("connected", (detail) => nodes.push(detail.node));
  sb.subscribe("ticker", { onMessage: (data) => received.push(data), onRecovered: (ok) => recovered.push(ok) });
  await eventually(() => sb.state === "connected", "connected");
  await sleep(100);
  // Published through node b throughout, while node a drains, exits and comes back.
  let publishing = true;
  const published = [];
  const publisher = (async () => {
    for (let n = 0; publishing; n++) {
      await b.publish("ticker", n);
      published.push(n);
      await sleep(10);
    }
  })();
  await sleep(200);
  const drain = await a.post("/v1/drain");
  assert.equal(drain.status, 202);
  assert.equal(await a.exited, 0, "the drained node exits 0");
  const restarted = await startNode({ config, env, ports: { ws: a.ws, control: a.control } });
  await eventually(() => nodes.length === 2, "reconnected to the restarted node", 15_000);
  await sleep(300);
  publishing = false;
  await publisher;
  await eventually(() => received.length >= published.length, "caught up", 10_000);
  assert.deepEqual(received, published, "every message once, in order");
  assert.deepEqual(recovered, [true]);
  await restarted.kill();
  await b.kill();
  redis.kill();
});

test("when history cannot cover the gap, onRecovered(false) says so", async () => {
  const node = await startNode({ config: "[history]\nsize = 2\n" });
  // A WebSocket that cannot reach the server while `gate.open` is false.
  const gate = { open: true };
  class GatedWebSocket extends WebSocket {
    constructor(url) {
      super(gate.open ? url : "ws://127.0.0.1:1/ws");
    }
  }
  const sb = client(node.url, { WebSocket: GatedWebSocket });
  const received = [];
  const recovered = [];
  sb.subscribe("room", { onMessage: (data) => received.push(data), onRecovered: (ok) => recovered.push(ok) });
  await eventually(() => sb.state === "connected", "connected");
  await sleep(50);
  await node.publish("room", 1);
  await eventually(() => received.length === 1, "first message");
  gate.open = false;
  const { status } = await node.post("/v1/disconnect", { conn_id: sb.connId });
  assert.equal(status, 200);
  await eventually(() => sb.state === "reconnecting", "reconnecting");
  for (let n = 2; n <= 10; n++) await node.publish("room", n);
  gate.open = true;
  await eventually(() => recovered.length === 1, "resubscribed", 10_000);
  assert.deepEqual(recovered, [false], "eight messages fell out of a two-message history");
  await node.publish("room", 11);
  await eventually(() => received.at(-1) === 11, "live again");
  assert.deepEqual(received, [1, 11], "nothing replayed twice or out of order");
  await node.kill();
});

test("Redis restarted empty while subscribed: a reset, onRecovered(false), then the new epoch", async () => {
  const redis = await startRedis();
  const config = `[cluster]\nredis = "${redis.url}"\npartitions = 4\n`;
  const node = await startNode({ config });
  const sb = client(node.url);
  const received = [];
  const recovered = [];
  const sub = sb.subscribe("ticker", { onMessage: (data) => received.push(data), onRecovered: (ok) => recovered.push(ok) });
  await eventually(() => sb.state === "connected", "connected");
  await sleep(100);
  for (let n = 1; n <= 3; n++) await node.publish("ticker", n);
  await eventually(() => received.length === 3, "the first epoch");
  const before = sub.offset;
  await redis.kill();
  await startRedis({ port: redis.port });
  // The node answers 503 until it has reconnected.
  let after;
  await eventually(async () => {
    try {
      after = await node.publish("ticker", 4);
      return true;
    } catch {
      return false;
    }
  }, "publishing again", 15_000);
  await eventually(() => received.length === 4, "the new epoch's first message");
  assert.deepEqual(recovered, [false], "told without a reconnect");
  assert.equal(sb.state, "connected");
  assert.notEqual(after.split("-")[0], before.split("-")[0], "a new epoch");
  assert.equal(sub.offset, after, "following the new epoch");
  assert.deepEqual(received, [1, 2, 3, 4]);
  await node.kill();
  await redis.kill();
});

const authConfig = `
[[auth.keys]]
algorithm = "HS256"
secret = "${HS256_SECRET}"
`;

test("a refused token (4003) ends the client: no reconnect", async () => {
  const node = await startNode({ config: authConfig });
  const sb = client(node.url, { token: "not-a-jwt" });
  const errors = [];
  const closed = [];
  let connects = 0;
  sb.on("connecting", () => connects++);
  sb.on("error", (error) => errors.push(error));
  sb.on("closed", (detail) => closed.push(detail));
  sb.connect();
  await eventually(() => closed.length === 1, "closed");
  assert.equal(closed[0].code, 4003);
  assert.equal(sb.state, "closed");
  await sleep(500);
  assert.equal(connects, 1, "no reconnect after 4003");
  assert.ok(errors.some((error) => error.code === "unauthorized"), JSON.stringify(errors));
  await node.kill();
});

test("a token that expired while the page slept (4004 at connect) is replaced by getToken", async () => {
  const node = await startNode({ config: authConfig });
  // The app's token cache hands out what it held before the laptop slept: expired.
  let issued = 0;
  const getToken = async () => {
    issued++;
    const exp = Math.floor(Date.now() / 1000) + (issued === 1 ? -120 : 600);
    return hs256({ sub: "ada", exp });
  };
  const sb = client(node.url, { getToken });
  const disconnects = [];
  const errors = [];
  sb.on("disconnected", (detail) => disconnects.push(detail));
  sb.on("error", (error) => errors.push(error));
  sb.subscribe("news", {});
  await eventually(() => sb.state === "connected" && sb.user === "ada", "connected with a fresh token");
  assert.equal(disconnects[0].code, 4004, JSON.stringify(disconnects));
  assert.equal(issued, 2);
  assert.ok(!errors.some((error) => error.code === "unauthorized"), JSON.stringify(errors));
  await node.kill();
});

test("tokens come from getToken and are refreshed before they expire", async () => {
  const node = await startNode({ config: authConfig });
  let issued = 0;
  const getToken = async () => {
    issued++;
    return hs256({ sub: "ada", exp: Math.floor(Date.now() / 1000) + 32 });
  };
  // Refresh 31 s before exp: about a second after each token is issued.
  const sb = client(node.url, { getToken, refreshBefore: 31_000 });
  const received = [];
  sb.subscribe("news", { onMessage: (data) => received.push(data) });
  await eventually(() => sb.state === "connected", "connected");
  assert.equal(sb.user, "ada");
  await eventually(() => issued >= 3, "refreshed twice", 10_000);
  assert.equal(sb.state, "connected", "the same connection throughout");
  await node.publish("news", "still here");
  await eventually(() => received.length === 1, "delivered after the refreshes");
  await node.kill();
});

test("the page coming back or the network returning reconnects at once; offline, no retries", async () => {
  let node = await startNode();
  const target = new EventTarget();
  let online = true;
  let visible = true;
  const lifecycle = {
    addEventListener: (type, listener) => target.addEventListener(type, listener),
    removeEventListener: (type, listener) => target.removeEventListener(type, listener),
    isOnline: () => online,
    isVisible: () => visible,
  };
  // Retries a minute apart: only the page's life can bring the client back within seconds.
  const slow = { minReconnectDelay: 60_000, maxReconnectDelay: 60_000, serverCloseDelay: 60_000 };
  const sb = client(node.url, { lifecycle, ...slow });
  let connects = 0;
  sb.on("connecting", () => connects++);
  sb.subscribe("news", {});
  await eventually(() => sb.state === "connected", "connected");
  const ports = { ws: node.ws, control: node.control };

  // The node goes away while the page is hidden; it comes back, the page is shown again.
  visible = false;
  target.dispatchEvent(new Event("visibilitychange"));
  await node.kill();
  await eventually(() => sb.state === "reconnecting", "waiting to retry");
  node = await startNode({ ports });
  target.dispatchEvent(new Event("visibilitychange"));
  await sleep(500);
  assert.equal(sb.state, "reconnecting", "hidden: no hurry");
  visible = true;
  target.dispatchEvent(new Event("visibilitychange"));
  await eventually(() => sb.state === "connected", "connected when shown", 5_000);

  // Offline: no retry at all; back online: one at once (within a second's jitter).
  online = false;
  target.dispatchEvent(new Event("offline"));
  await node.kill();
  await eventually(() => sb.state === "reconnecting", "waiting to retry");
  const before = connects;
  node = await startNode({ ports });
  sb.reconnectNow();
  await sleep(1500);
  assert.equal(connects, before, "no attempt while offline");
  online = true;
  target.dispatchEvent(new Event("online"));
  await eventually(() => sb.state === "connected", "connected when back online", 5_000);
  sb.close();
  await node.kill();
});

test("a silent connection is detected and replaced", async () => {
  const node = await startNode({ env: { SWITCHBOARD_SESSION__HEARTBEAT: "1s", SWITCHBOARD_SESSION__IDLE_TIMEOUT: "30s" } });
  // Declared dead after a heartbeat (1 s) and this much more of silence; generous enough
  // for a loaded machine, where a live server's pong can take hundreds of ms.
  const sb = client(node.url, { pongTimeout: 2000 });
  const received = [];
  const disconnects = [];
  sb.on("disconnected", (detail) => disconnects.push(detail));
  sb.subscribe("news", { onMessage: (data) => received.push(data) });
  await eventually(() => sb.state === "connected", "connected");
  // The server stops answering (SIGSTOP): no message, no pong.
  node.child.kill("SIGSTOP");
  await eventually(() => disconnects.length === 1, "declared dead", 15_000);
  assert.equal(disconnects[0].code, 4900);
  node.child.kill("SIGCONT");
  await eventually(() => sb.state === "connected", "connected again", 15_000);
  await node.publish("news", 1);
  await eventually(() => received.length === 1, "delivered");
  await node.kill();
});

test("presence lists the room's members; onJoin and onLeave follow them, also coalesced", async () => {
  const node = await startNode({
    namespaces: `
[[namespaces]]
pattern = "room:*"
subscribe = "anonymous"
publish = "none"
history = "none"
presence = "authenticated"
join_leave = true
`,
    config: `
[presence]
coalesce = "300ms"
[[auth.keys]]
algorithm = "HS256"
secret = "${HS256_SECRET}"
`,
  });
  const token = (sub) => hs256({ sub, exp: Math.floor(Date.now() / 1000) + 600, info: { name: sub.toUpperCase() } });
  const ada = client(node.url, { token: token("ada") });
  const joined = [];
  const left = [];
  ada.subscribe("room:1", {
    onJoin: (member) => joined.push(member.user),
    onLeave: (member) => left.push(member.user),
  });
  await eventually(() => joined.includes("ada"), "ada's own join");
  await sleep(400);
  const bob = client(node.url, { token: token("bob") });
  bob.subscribe("room:1");
  await eventually(() => joined.includes("bob"), "bob's join");
  const { members, truncated } = await ada.presence("room:1");
  assert.equal(truncated, false);
  assert.deepEqual(members.map((member) => member.user).sort(), ["ada", "bob"]);
  assert.deepEqual(members.find((member) => member.user === "bob").info, { name: "BOB" });
  assert.deepEqual(await ada.presenceStats("room:1"), { connections: 2, users: 2 });

  // A burst: five members within one interval reach ada as one coalesced frame, which the
  // client hands over member by member.
  await sleep(400);
  const burst = [1, 2, 3, 4, 5].map((n) => client(node.url, { token: token(`u${n}`) }));
  for (const sb of burst) sb.subscribe("room:1");
  await eventually(() => joined.length === 7, "seven joins");
  bob.close();
  await eventually(() => left.includes("bob"), "bob's leave");

  // Without a token, presence is refused.
  const anonymous = client(node.url);
  await assert.rejects(anonymous.presence("room:1"), (error) => error instanceof SwitchboardError && error.code === "forbidden");
});

test("server-side subscriptions: the token's subs claim and POST /v1/subscribe reach on(\"message\")", async () => {
  const node = await startNode({
    namespaces: `
[[namespaces]]
pattern = "user:{sub}"
subscribe = "owner"
publish = "none"
history = "none"
`,
    config: `
[[auth.keys]]
algorithm = "HS256"
secret = "${HS256_SECRET}"
`,
  });
  const token = hs256({ sub: "ada", exp: Math.floor(Date.now() / 1000) + 600, subs: ["user:ada"] });
  const sb = client(node.url, { token });
  const subscribed = [];
  const unsubscribed = [];
  const messages = [];
  sb.on("subscribed", ({ channel }) => subscribed.push(channel));
  sb.on("unsubscribed", ({ channel }) => unsubscribed.push(channel));
  sb.on("message", ({ channel, data }) => messages.push([channel, data.n]));
  sb.connect();
  await eventually(() => subscribed.includes("user:ada"), "the claim's subscription");
  await node.publish("user:ada", { n: 1 });
  await eventually(() => messages.length === 1, "the personal channel's message");
  const response = await fetch(`${node.controlUrl}/v1/subscribe`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ user: "ada", channel: "news" }),
  });
  assert.equal(response.status, 200);
  await eventually(() => subscribed.includes("news"), "the API's subscription");
  await node.publish("news", { n: 2 });
  await eventually(() => messages.length === 2, "the news");
  assert.deepEqual(messages, [["user:ada", 1], ["news", 2]]);
  await fetch(`${node.controlUrl}/v1/unsubscribe`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ user: "ada", channel: "news" }),
  });
  await eventually(() => unsubscribed.includes("news"), "the API's unsubscribe");
});

test("rpc is answered by the backend; a failing connect hook sends the client back later, and it comes back", async () => {
  const http = await import("node:http");
  let connectWorks = false;
  const backend = http.createServer(async (request, response) => {
    let body = "";
    for await (const chunk of request) body += chunk;
    const hook = JSON.parse(body);
    let answer;
    if (request.url === "/connect") {
      if (!connectWorks) {
        response.writeHead(500).end();
        return;
      }
      answer = { result: { user: "ada" } };
    } else if (hook.method === "refuse") {
      answer = { error: { message: "not today" } };
    } else {
      answer = { result: { data: { method: hook.method, echo: hook.data, user: hook.user } } };
    }
    response.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(answer));
  });
  await new Promise((resolve) => backend.listen(0, "127.0.0.1", resolve));
  const port = backend.address().port;
  try {
    const node = await startNode({
      config: `
[hooks]
connect_url = "http://127.0.0.1:${port}/connect"
rpc_url = "http://127.0.0.1:${port}/rpc"
`,
    });
    const sb = client(node.url);
    const closes = [];
    sb.on("disconnected", ({ code }) => closes.push(code));
    sb.connect();
    // The connect hook fails: close 1013 after a reconnect frame advising 1-5 s.
    await eventually(() => closes.includes(1013), "closed with 1013");
    connectWorks = true;
    await eventually(() => sb.state === "connected" && sb.user === "ada", "connected once the backend is back", 8000);
    assert.deepEqual(await sb.rpc("profile", { x: 1 }), { method: "profile", echo: { x: 1 }, user: "ada" });
    await assert.rejects(sb.rpc("refuse"), (err) => err instanceof SwitchboardError && err.code === "forbidden" && err.message === "not today");
  } finally {
    backend.close();
  }
});

test("a gap under drop_oldest is filled from history by itself, in order, before what follows", async () => {
  const node = await startNode({
    namespaces: `[[namespaces]]
pattern = "feed:*"
subscribe = "anonymous"
publish = "none"
history = "anonymous"
history_size = 300
slow_consumer = "drop_oldest"
`,
    config: "[limits]\noutbound_queue_messages = 512\noutbound_queue_bytes = 262144\nmax_publish_payload_bytes = 65536\n",
  });
  const sb = client(node.url);
  const received = [];
  const recovered = [];
  sb.subscribe("feed:news", { onMessage: (data) => received.push(data.n), onRecovered: (ok) => recovered.push(ok) });
  await eventually(() => sb.state === "connected", "connected");
  await sleep(100);
  // 250 messages of 60 KB (15 MB, more than both ends' socket buffers hold) published by
  // another process while this one's event loop reads nothing for 4 s. Random base64, not
  // "x"s: Node's WebSocket negotiates permessage-deflate, which makes 60 KB of "x"s 100 bytes
  // and the queue would never fill; base64 still takes about 45 KB compressed.
  const script = `
    const pad = require("node:crypto").randomBytes(45000).toString("base64");
    (async () => {
      for (let n = 1; n <= 250; n++) {
        const response = await fetch("${node.controlUrl}/v1/publish", {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ channel: "feed:news", data: { n, pad } }),
        });
        if (response.status !== 200) process.exit(1);
      }
    })();`;
  const publisher = spawn(process.execPath, ["-e", script], { stdio: "ignore" });
  const published = new Promise((resolve) => publisher.once("exit", resolve));
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 4000);
  assert.equal(await published, 0, "the publisher published every message");
  await eventually(() => received.length >= 250, "every message, the gap's from history", 20_000);
  assert.deepEqual(received, Array.from({ length: 250 }, (_, index) => index + 1));
  assert.deepEqual(recovered, [], "nothing was lost");
  const metrics = await (await fetch(`${node.controlUrl}/metrics`)).text();
  assert.match(metrics, /switchboard_slow_consumer_gaps_total\{namespace="feed:\*"\} [1-9]/, "a gap was sent");
  sb.close();
  await node.kill();
});
