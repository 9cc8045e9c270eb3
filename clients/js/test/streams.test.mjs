// Message streams (docs/streams.md) through the client, against real server processes:
// messages with a message_id live in `sub.messages` and change in place; a resume replays
// them as state frames, so the text a subscriber holds is the server's, exactly.

import assert from "node:assert/strict";
import { after, test } from "node:test";

import { Switchboard, SwitchboardError } from "../dist/index.js";
import { HS256_SECRET, eventually, hs256, killAll, sleep, startNode } from "./harness.mjs";

const clients = [];
function client(url, options = {}) {
  const sb = new Switchboard(url, { minReconnectDelay: 50, maxReconnectDelay: 500, serverCloseDelay: 200, ...options });
  clients.push(sb);
  return sb;
}
after(() => {
  for (const sb of clients) sb.close();
  killAll();
});

/** A backend's change through the control API; its offset. */
async function backend(node, path, body) {
  const { status, body: reply } = await node.post(path, body);
  assert.equal(status, 200, `${path}: ${status} ${JSON.stringify(reply)}`);
  return reply.offset;
}

/** The message with this id as the server's history API gives it. */
async function serverMessage(node, channel, id) {
  const response = await fetch(`${node.controlUrl}/v1/channels/${encodeURIComponent(channel)}/history?limit=1000`);
  assert.equal(response.status, 200);
  const { messages } = await response.json();
  return messages.find((message) => message.message_id === id);
}

/** Subscribes and records what the handlers were told; resolves once the subscription has its position. */
async function follow(sb, channel, options = {}) {
  const seen = { messages: [], changes: [], recovered: [], firstSeen: [] };
  const sub = sb.subscribe(channel, {
    ...options,
    onMessage: (data, message) => {
      seen.messages.push(message);
      // What the message was when it first appeared (the object changes later).
      seen.firstSeen.push({ id: message.id, status: message.status, text: message.text, data });
    },
    onUpdate: (message, change) => seen.changes.push({ id: message.id, ...change }),
    onRecovered: (ok) => seen.recovered.push(ok),
  });
  await eventually(() => sub.offset !== undefined, `subscribed to ${channel}`);
  return { sub, seen };
}

/** The subscription's view of a message equals the server's: status, text, data, offset. */
async function assertSameAsServer(node, sub, id) {
  const server = await serverMessage(node, sub.channel, id);
  const held = sub.messages.get(id);
  assert.ok(server, `the server has ${id}`);
  assert.ok(held, `the subscription holds ${id}`);
  assert.equal(held.status, server.status, `${id}: status`);
  assert.equal(held.text, server.text, `${id}: text`);
  assert.deepEqual(held.data, server.data, `${id}: data`);
  assert.equal(held.created, server.offset, `${id}: created`);
  assert.equal(held.offset, server.updated ?? server.offset, `${id}: offset of the last operation`);
}

test("a stream grows in place: onMessage once, onUpdate per change, the server's text exactly", async () => {
  const node = await startNode();
  const sb = client(node.url);
  const { sub, seen } = await follow(sb, "chat:1");

  // A backend's stream, through the control API.
  await backend(node, "/v1/publish", { channel: "chat:1", message_id: "reply-1", stream: true, data: { role: "assistant" } });
  await eventually(() => sub.messages.has("reply-1"), "the stream appears");
  assert.deepEqual(seen.firstSeen, [{ id: "reply-1", status: "open", text: "", data: { role: "assistant" } }]);
  const words = "Once upon a time there was a stream that grew one token at a time".split(/(?= )/);
  for (const [i, word] of words.entries()) {
    await backend(node, "/v1/append", { channel: "chat:1", message_id: "reply-1", text: word });
    if (i % 4 === 0) await sleep(60); // some appends alone, some coalesced
  }
  const text = words.join("");
  await eventually(() => sub.messages.get("reply-1").text === text, "every append applied");
  const finished = await backend(node, "/v1/finish", { channel: "chat:1", message_id: "reply-1", data: { role: "assistant", tokens: words.length } });
  await eventually(() => sub.messages.get("reply-1").status === "finished", "finished");

  const message = sub.messages.get("reply-1");
  assert.equal(seen.messages.length, 1, "onMessage once");
  assert.equal(seen.messages[0], message, "the object onMessage got is the one that grew");
  assert.equal(message.offset, finished);
  assert.deepEqual(message.data, { role: "assistant", tokens: words.length });
  const appends = seen.changes.filter((change) => change.type === "append");
  assert.equal(appends.map((change) => change.text).join(""), text, "the appends' deltas add up to the text");
  assert.ok(appends.length >= 2 && appends.length <= words.length, `${appends.length} append frames`);
  assert.deepEqual(seen.changes.at(-1), { id: "reply-1", type: "finish", offset: finished, data: { role: "assistant", tokens: words.length } });
  await assertSameAsServer(node, sub, "reply-1");

  // The same from a client: publish with an id and a stream, append, finish.
  const writer = client(node.url);
  const opened = await writer.publish("chat:1", { role: "user" }, { messageId: "c-1", stream: true });
  assert.match(opened, /^[0-9a-f]+-\d+$/);
  assert.equal(await writer.publish("chat:1", { other: true }, { messageId: "c-1", stream: true }), opened, "a retried publish is a duplicate");
  const first = await writer.append("chat:1", "c-1", "Hi");
  const second = await writer.append("chat:1", "c-1", " there");
  assert.ok(Number(second.split("-")[1]) > Number(first.split("-")[1]));
  const done = await writer.finish("chat:1", "c-1");
  await eventually(() => sub.messages.get("c-1")?.status === "finished", "the client's stream finished");
  assert.equal(sub.messages.get("c-1").text, "Hi there");
  assert.equal(sub.offset, done);
  await assertSameAsServer(node, sub, "c-1");
  await assert.rejects(writer.append("chat:1", "c-1", "!"), (error) => error instanceof SwitchboardError && error.code === "conflict");
  await assert.rejects(writer.append("chat:1", "nope", "!"), (error) => error instanceof SwitchboardError && error.code === "not_found");
  // Plain messages keep coming to onMessage as before, outside `messages`.
  await node.publish("chat:1", { plain: true });
  await eventually(() => seen.messages.length === 3, "a plain message");
  assert.deepEqual(seen.messages[2].data, { plain: true });
  assert.equal(sub.messages.size, 2);
  await node.kill();
});

test("a reconnect mid-stream resumes with the exact text (state frames replace what was held)", async () => {
  const node = await startNode();
  // A WebSocket the test can force closed, and that cannot reach the server while the gate is shut.
  const gate = { open: true };
  const sockets = [];
  class TestWebSocket extends WebSocket {
    constructor(url) {
      super(gate.open ? url : "ws://127.0.0.1:1/ws");
      sockets.push(this);
    }
  }
  const sb = client(node.url, { WebSocket: TestWebSocket });
  const { sub, seen } = await follow(sb, "chat:2");
  await backend(node, "/v1/publish", { channel: "chat:2", message_id: "reply-1", stream: true, data: { role: "assistant" } });
  await backend(node, "/v1/publish", { channel: "chat:2", message_id: "note-1", data: { n: 1 } });
  let text = "";
  const append = async (id, piece) => {
    await backend(node, "/v1/append", { channel: "chat:2", message_id: id, text: piece });
    if (id === "reply-1") text += piece;
  };
  for (let n = 0; n < 10; n++) await append("reply-1", `tok${n} `);
  await eventually(() => sub.messages.get("reply-1")?.text === text, "the first tokens");

  // Forced closed mid-stream; the stream grows, a note is edited and a second stream
  // opens and finishes while the client is away.
  gate.open = false;
  sockets.at(-1).close();
  await eventually(() => sb.state === "reconnecting", "reconnecting");
  for (let n = 10; n < 30; n++) await append("reply-1", `tok${n} `);
  await backend(node, "/v1/update", { channel: "chat:2", message_id: "note-1", data: { n: 2 } });
  await backend(node, "/v1/publish", { channel: "chat:2", message_id: "reply-2", stream: true, data: {} });
  await append("reply-2", "whole ");
  await append("reply-2", "while away");
  await backend(node, "/v1/finish", { channel: "chat:2", message_id: "reply-2" });
  assert.notEqual(sb.state, "connected");
  gate.open = true;
  await eventually(() => seen.recovered.length === 1, "resumed", 10_000);
  assert.deepEqual(seen.recovered, [true]);
  await eventually(() => sub.messages.get("reply-1").text === text, "the exact text after the resume");
  for (const id of ["reply-1", "note-1", "reply-2"]) await assertSameAsServer(node, sub, id);
  const states = seen.changes.filter((change) => change.type === "state");
  assert.deepEqual(states.map((change) => change.id).sort(), ["note-1", "reply-1"], "changed messages replaced whole");
  const replaced = states.find((change) => change.id === "reply-1");
  assert.equal(replaced.previous.text, Array.from({ length: 10 }, (_, n) => `tok${n} `).join(""), "what was held before");
  assert.deepEqual(sub.messages.get("note-1").data, { n: 2 });
  assert.equal(sub.messages.get("reply-2").text, "whole while away");

  // And it keeps growing live, to the end.
  for (let n = 30; n < 40; n++) await append("reply-1", `tok${n} `);
  await backend(node, "/v1/finish", { channel: "chat:2", message_id: "reply-1" });
  await eventually(() => sub.messages.get("reply-1").status === "finished", "finished");
  assert.equal(sub.messages.get("reply-1").text, text);
  await assertSameAsServer(node, sub, "reply-1");
  assert.deepEqual(seen.messages.map((message) => message.id), ["reply-1", "note-1", "reply-2"], "each message once to onMessage");
  await node.kill();
});

test("edits and deletes apply in place", async () => {
  const node = await startNode();
  const sb = client(node.url);
  const { sub, seen } = await follow(sb, "chat:3");
  const writer = client(node.url);
  await writer.publish("chat:3", { text: "helo" }, { messageId: "msg-1" });
  await writer.publish("chat:3", { role: "assistant" }, { messageId: "reply-1", stream: true });
  await writer.append("chat:3", "reply-1", "Draft text");
  await writer.finish("chat:3", "reply-1");
  await eventually(() => sub.messages.get("reply-1")?.status === "finished", "two messages");
  const [msg, reply] = [sub.messages.get("msg-1"), sub.messages.get("reply-1")];
  assert.equal(msg.status, "finished");
  assert.equal(msg.text, undefined, "a message published whole has no text");

  const edited = await writer.update("chat:3", "msg-1", { data: { text: "hello" } });
  await eventually(() => msg.offset === edited, "the edit");
  assert.deepEqual(msg.data, { text: "hello" });
  assert.deepEqual(seen.changes.at(-1), { id: "msg-1", type: "update", offset: edited, data: { text: "hello" } });

  // A backend edits the reply's text (and its data) after it finished.
  const rewritten = await backend(node, "/v1/update", { channel: "chat:3", message_id: "reply-1", text: "Final text", data: { role: "assistant", edited: true } });
  await eventually(() => reply.offset === rewritten, "the rewrite");
  assert.equal(reply.text, "Final text");
  assert.deepEqual(reply.data, { role: "assistant", edited: true });
  assert.equal(reply.status, "finished");

  const deleted = await writer.delete("chat:3", "msg-1");
  await eventually(() => msg.status === "deleted", "the delete");
  assert.equal(msg.data, undefined);
  assert.equal(msg.offset, deleted);
  assert.equal(await writer.delete("chat:3", "msg-1"), deleted, "deleting again answers the first delete");
  await assert.rejects(writer.update("chat:3", "msg-1", { data: 1 }), (error) => error.code === "conflict");

  assert.equal(sub.messages.get("msg-1"), msg, "the same objects, changed in place");
  assert.equal(sub.messages.get("reply-1"), reply);
  assert.deepEqual([...sub.messages.keys()], ["msg-1", "reply-1"]);
  assert.equal(seen.messages.length, 2, "onMessage once per message");
  for (const id of ["msg-1", "reply-1"]) await assertSameAsServer(node, sub, id);
  // The history API through the client carries the same state.
  const history = await sb.history("chat:3");
  assert.deepEqual(
    history.messages.map(({ id, status, text }) => ({ id, status, text })),
    [
      { id: "msg-1", status: "deleted", text: undefined },
      { id: "reply-1", status: "finished", text: "Final text" },
    ],
  );
  await node.kill();
});

test("a late subscriber gets the open stream whole, then its appends", async () => {
  const node = await startNode();
  const early = client(node.url);
  const { sub: earlySub } = await follow(early, "chat:4");
  await backend(node, "/v1/publish", { channel: "chat:4", message_id: "reply-1", stream: true, data: { role: "assistant" } });
  await backend(node, "/v1/publish", { channel: "chat:4", message_id: "reply-empty", stream: true, data: { role: "assistant" } });
  await backend(node, "/v1/publish", { channel: "chat:4", message_id: "done-1", stream: true, data: {} });
  await backend(node, "/v1/finish", { channel: "chat:4", message_id: "done-1" });
  let text = "";
  for (let n = 0; n < 25; n++) {
    const piece = `w${n} `;
    await backend(node, "/v1/append", { channel: "chat:4", message_id: "reply-1", text: piece });
    text += piece;
  }

  const late = client(node.url);
  const { sub, seen } = await follow(late, "chat:4");
  await eventually(() => sub.messages.size === 2, "the open streams");
  assert.deepEqual(
    seen.firstSeen.map(({ id, status, text }) => ({ id, status, text })),
    [
      { id: "reply-1", status: "open", text },
      { id: "reply-empty", status: "open", text: "" },
    ],
    "each open stream whole, the finished one not",
  );
  for (let n = 25; n < 40; n++) {
    const piece = `w${n} `;
    await backend(node, "/v1/append", { channel: "chat:4", message_id: "reply-1", text: piece });
    text += piece;
    if (n % 5 === 0) await sleep(50);
  }
  await backend(node, "/v1/append", { channel: "chat:4", message_id: "reply-empty", text: "now" });
  await backend(node, "/v1/finish", { channel: "chat:4", message_id: "reply-1" });
  await eventually(() => sub.messages.get("reply-1").status === "finished", "finished");
  await eventually(() => sub.messages.get("reply-empty").text === "now", "the second stream's append");
  assert.equal(sub.messages.get("reply-1").text, text);
  assert.equal(earlySub.messages.get("reply-1").text, text, "the same as the subscriber that saw every append");
  await assertSameAsServer(node, sub, "reply-1");
  await assertSameAsServer(node, sub, "reply-empty");
  assert.equal(seen.changes.filter((change) => change.type === "state").length, 0);
  await node.kill();
});

test("an idle stream is abandoned; maxMessages bounds what a subscription keeps", async () => {
  const node = await startNode({ config: "[streams]\nidle_timeout = \"1s\"\n" });
  const sb = client(node.url);
  const { sub, seen } = await follow(sb, "chat:5", { maxMessages: 3 });
  await backend(node, "/v1/publish", { channel: "chat:5", message_id: "stalled", stream: true, data: {} });
  await backend(node, "/v1/append", { channel: "chat:5", message_id: "stalled", text: "so far" });
  await eventually(() => sub.messages.get("stalled")?.status === "abandoned", "abandoned by the sweep", 20_000);
  assert.equal(sub.messages.get("stalled").text, "so far", "its text stays");
  assert.deepEqual(
    seen.changes.map(({ type, reason }) => ({ type, reason })),
    [{ type: "append", reason: undefined }, { type: "abandon", reason: "idle" }],
  );
  await backend(node, "/v1/publish", { channel: "chat:5", message_id: "open-1", stream: true, data: {} });
  for (let n = 1; n <= 4; n++) await backend(node, "/v1/publish", { channel: "chat:5", message_id: `m-${n}`, data: n });
  await eventually(() => sub.messages.has("m-4"), "the last message");
  assert.deepEqual([...sub.messages.keys()], ["open-1", "m-3", "m-4"], "the oldest messages that are not open went first");
  await node.kill();
});

/** A node where `user:{sub}` is each user's own inbox, the way the server-side subscriptions' tests use it. */
function inboxNode(extra = "") {
  return startNode({
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
${extra}`,
  });
}

/** Records a client's server-side subscriptions' events. */
function record(sb) {
  const seen = { subscribed: [], messages: [], updates: [] };
  sb.on("subscribed", ({ channel }) => seen.subscribed.push(channel));
  sb.on("message", (detail) => seen.messages.push(detail));
  sb.on("update", (detail) => seen.updates.push(detail));
  return seen;
}

/** A server-side subscription's view of a message equals the server's history. */
async function assertServerSubSameAsServer(node, sb, channel, id) {
  const server = await serverMessage(node, channel, id);
  const held = sb.serverMessages(channel)?.get(id);
  assert.ok(server, `the server has ${id}`);
  assert.ok(held, `the server-side subscription holds ${id}`);
  assert.equal(held.status, server.status, `${id}: status`);
  assert.equal(held.text, server.text, `${id}: text`);
  assert.deepEqual(held.data, server.data, `${id}: data`);
  assert.equal(held.created, server.offset, `${id}: created`);
  assert.equal(held.offset, server.updated ?? server.offset, `${id}: offset of the last operation`);
}

test("a backend's POST /v1/subscribe: a stream grows through on(\"update\"), held in sb.serverMessages", async () => {
  const node = await inboxNode();
  const sb = client(node.url, { token: hs256({ sub: "ada", exp: Math.floor(Date.now() / 1000) + 600 }) });
  const seen = record(sb);
  await new Promise((resolve) => {
    const off = sb.on("connected", () => resolve(off()));
    sb.connect();
  });
  // Open before the subscription: it comes whole, right after `subscribed`.
  await backend(node, "/v1/publish", { channel: "user:ada", message_id: "early", stream: true, data: { role: "assistant" } });
  await backend(node, "/v1/append", { channel: "user:ada", message_id: "early", text: "already " });
  assert.equal(sb.serverMessages("user:ada"), undefined, "not subscribed yet");
  const { status, body } = await node.post("/v1/subscribe", { user: "ada", channel: "user:ada" });
  assert.equal(status, 200, JSON.stringify(body));
  await eventually(() => sb.serverMessages("user:ada")?.has("early"), "the open stream whole");
  assert.deepEqual(seen.subscribed, ["user:ada"]);
  assert.equal(sb.serverMessages("user:ada").get("early").text, "already ");

  await backend(node, "/v1/publish", { channel: "user:ada", message_id: "reply-1", stream: true, data: { role: "assistant" } });
  await eventually(() => sb.serverMessages("user:ada").has("reply-1"), "the new stream");
  const message = sb.serverMessages("user:ada").get("reply-1");
  const words = "An assistant reply streaming into every device of its user".split(/(?= )/);
  for (const [i, word] of words.entries()) {
    await backend(node, "/v1/append", { channel: "user:ada", message_id: "reply-1", text: word });
    if (i % 3 === 0) await sleep(60);
  }
  const text = words.join("");
  await eventually(() => message.text === text, "every append applied");
  const finished = await backend(node, "/v1/finish", { channel: "user:ada", message_id: "reply-1", data: { role: "assistant", done: true } });
  await eventually(() => message.status === "finished", "finished");
  assert.equal(message.offset, finished);
  assert.deepEqual(message.data, { role: "assistant", done: true });

  // `message` once per message, with the live object; the old fields as before.
  assert.deepEqual(
    seen.messages.map(({ channel, id, data }) => ({ channel, id, data })),
    [
      { channel: "user:ada", id: "early", data: { role: "assistant" } },
      { channel: "user:ada", id: "reply-1", data: { role: "assistant" } },
    ],
    "data: as the message came (the object has changed since)",
  );
  assert.equal(seen.messages[1].message, message, "the object that grew");
  assert.equal(seen.messages[1].offset, seen.messages[1].message.created, "offset: where it was when it came (its publish)");
  const updates = seen.updates.filter((update) => update.message.id === "reply-1");
  assert.ok(updates.every((update) => update.channel === "user:ada" && update.message === message));
  const appends = updates.filter(({ change }) => change.type === "append");
  assert.equal(appends.map(({ change }) => change.text).join(""), text, "the appends' deltas add up to the text");
  assert.ok(appends.length >= 2 && appends.length <= words.length, `${appends.length} append frames`);
  assert.deepEqual(updates.at(-1).change, { type: "finish", offset: finished, data: { role: "assistant", done: true } });
  await assertServerSubSameAsServer(node, sb, "user:ada", "reply-1");

  // Edits, deletes, the early stream's end; plain messages still reach on("message") as before.
  const edited = await backend(node, "/v1/update", { channel: "user:ada", message_id: "reply-1", text: "Edited." });
  await backend(node, "/v1/append", { channel: "user:ada", message_id: "early", text: "done" });
  await backend(node, "/v1/finish", { channel: "user:ada", message_id: "early" });
  const deleted = await backend(node, "/v1/delete", { channel: "user:ada", message_id: "early" });
  await node.publish("user:ada", { plain: 1 });
  await eventually(() => seen.messages.length === 3, "the plain message");
  assert.equal(message.text, "Edited.");
  assert.deepEqual(
    seen.updates.slice(-4).map(({ message, change }) => [message.id, change.type, change.offset]),
    [
      ["reply-1", "update", edited],
      ["early", "append", seen.updates.at(-3).change.offset],
      ["early", "finish", seen.updates.at(-2).change.offset],
      ["early", "delete", deleted],
    ],
  );
  const plain = seen.messages[2];
  assert.deepEqual([plain.channel, plain.data, plain.id], ["user:ada", { plain: 1 }, undefined]);
  assert.match(plain.offset, /^[0-9a-f]+-\d+$/);
  for (const id of ["reply-1", "early"]) await assertServerSubSameAsServer(node, sb, "user:ada", id);
  assert.deepEqual([...sb.serverMessages("user:ada").keys()], ["early", "reply-1"]);

  await node.post("/v1/unsubscribe", { user: "ada", channel: "user:ada" });
  await eventually(() => sb.serverMessages("user:ada") === undefined, "dropped with the unsubscribe");
  await node.kill();
});

test("server-side subscriptions across a reconnect mid-stream: the open stream is replaced whole and keeps growing", async () => {
  const node = await inboxNode();
  const gate = { open: true };
  const sockets = [];
  class TestWebSocket extends WebSocket {
    constructor(url) {
      super(gate.open ? url : "ws://127.0.0.1:1/ws");
      sockets.push(this);
    }
  }
  // `user:ada` from the token's subs claim (made again on every connection), `inbox:ada`
  // from a backend's POST /v1/subscribe (this connection only: the backend makes it again).
  const token = hs256({ sub: "ada", exp: Math.floor(Date.now() / 1000) + 600, subs: ["user:ada"] });
  const sb = client(node.url, { token, WebSocket: TestWebSocket });
  const seen = record(sb);
  sb.connect();
  await eventually(() => seen.subscribed.includes("user:ada"), "the claim's subscription");
  assert.equal((await node.post("/v1/subscribe", { user: "ada", channel: "inbox:ada" })).status, 200);
  await eventually(() => seen.subscribed.includes("inbox:ada"), "the backend's subscription");

  const texts = { "user:ada": "", "inbox:ada": "" };
  const append = async (channel, piece) => {
    await backend(node, "/v1/append", { channel, message_id: "reply-1", text: piece });
    texts[channel] += piece;
  };
  for (const channel of Object.keys(texts)) {
    await backend(node, "/v1/publish", { channel, message_id: "reply-1", stream: true, data: { role: "assistant" } });
    await backend(node, "/v1/publish", { channel, message_id: "ends-away", stream: true, data: {} });
    for (let n = 0; n < 8; n++) await append(channel, `tok${n} `);
  }
  await eventually(
    () => Object.entries(texts).every(([channel, text]) => sb.serverMessages(channel)?.get("reply-1")?.text === text),
    "the first tokens",
  );
  const held = sb.serverMessages("user:ada").get("reply-1");
  const heldBefore = held.text;

  gate.open = false;
  sockets.at(-1).close();
  await eventually(() => sb.state === "reconnecting", "reconnecting");
  for (let n = 8; n < 20; n++) for (const channel of Object.keys(texts)) await append(channel, `tok${n} `);
  await backend(node, "/v1/finish", { channel: "user:ada", message_id: "ends-away" });
  const updatesBefore = seen.updates.length;
  gate.open = true;
  await eventually(() => seen.subscribed.filter((channel) => channel === "user:ada").length === 2, "subscribed again", 10_000);
  await eventually(() => held.text === texts["user:ada"], "the open stream replaced whole");
  const state = seen.updates.slice(updatesBefore).find(({ change }) => change.type === "state");
  assert.equal(state.channel, "user:ada");
  assert.equal(state.message, held, "replaced in place: the same object");
  assert.equal(state.change.previous.text, heldBefore, "what was held before");
  assert.equal(sb.serverMessages("user:ada").get("reply-1"), held);

  // The backend's subscription was this connection's: until the backend makes it again,
  // what it held stays as it was. Then its open stream comes whole too.
  assert.equal(sb.serverMessages("inbox:ada").get("reply-1").text, Array.from({ length: 8 }, (_, n) => `tok${n} `).join(""));
  assert.equal((await node.post("/v1/subscribe", { user: "ada", channel: "inbox:ada" })).status, 200);
  await eventually(() => sb.serverMessages("inbox:ada").get("reply-1").text === texts["inbox:ada"], "the backend's channel whole again");

  // And both keep growing live, to the end: the server's text exactly.
  for (let n = 20; n < 30; n++) for (const channel of Object.keys(texts)) await append(channel, `tok${n} `);
  for (const channel of Object.keys(texts)) {
    await backend(node, "/v1/finish", { channel, message_id: "reply-1" });
    await eventually(() => sb.serverMessages(channel).get("reply-1").status === "finished", `${channel} finished`);
    assert.equal(sb.serverMessages(channel).get("reply-1").text, texts[channel]);
    await assertServerSubSameAsServer(node, sb, channel, "reply-1");
  }
  assert.deepEqual(
    seen.messages.filter(({ id }) => id === "reply-1").map(({ channel }) => channel),
    ["user:ada", "inbox:ada"],
    "on(\"message\") once per message, also across the reconnect",
  );
  // A stream that ended while the client was away is not open, so a new subscription does
  // not send it: what was held stays (server-side subscriptions do not resume).
  assert.equal(sb.serverMessages("user:ada").get("ends-away").status, "open");
  assert.equal((await serverMessage(node, "user:ada", "ends-away")).status, "finished");
  await node.kill();
});
