// The demo page's script: the Switchboard client (served beside it) on this server's
// WebSocket, a ticker the server publishes every second, a chat anyone on the page can
// write to, and the assistant's replies, streamed by the server as messages that grow.
// `window.demo` holds what arrived, for the end-to-end tests.
import { Switchboard } from "/demo/switchboard.js";

const $ = (id) => document.getElementById(id);
const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
const sb = new Switchboard(url);
const demo = (window.demo = { state: "disconnected", node: null, reconnects: 0, channels: {} });

function log(line) {
  const el = $("log");
  el.textContent = `${new Date().toLocaleTimeString()} ${line}\n${el.textContent}`.slice(0, 4000);
}

sb.on("connecting", () => show("connecting"));
sb.on("reconnecting", ({ delay }) => {
  show("reconnecting");
  log(`reconnecting in ${Math.round(delay)} ms`);
});
sb.on("disconnected", ({ code, reason }) => log(`disconnected: ${code} ${reason}`));
sb.on("connected", ({ node, connId }) => {
  if (demo.node !== null) demo.reconnects += 1;
  demo.node = node;
  demo.connId = connId;
  $("node").textContent = node;
  $("conn").textContent = connId;
  $("reconnects").textContent = demo.reconnects;
  show("connected");
  log(`connected to ${node}`);
});
sb.on("error", ({ code, message }) => log(`error ${code}: ${message}`));

function show(state) {
  demo.state = state;
  $("state").textContent = state;
  $("state").className = `state ${state}`;
}

function follow(channel, id, render) {
  const seen = (demo.channels[channel] = { offsets: [], recovered: [] });
  sb.subscribe(channel, {
    onMessage(data, message) {
      seen.offsets.push(message.offset);
      $(`${id}-offset`).textContent = message.offset;
      const li = document.createElement("li");
      li.textContent = render(data);
      const offset = document.createElement("span");
      offset.className = "offset";
      offset.textContent = message.offset;
      li.append(offset);
      $(id).prepend(li);
      while ($(id).children.length > 50) $(id).lastChild.remove();
    },
    onRecovered(recovered) {
      seen.recovered.push(recovered);
      $(`${id}-recovered`).textContent = recovered
        ? "resumed without a gap"
        : "history too short: missed messages are gone";
      log(`${channel}: ${recovered ? "recovered" : "not recovered"}`);
    },
    onError({ code, message }) {
      log(`${channel}: ${code} ${message}`);
    },
  });
}

follow("demo:ticker", "ticker", (data) => `tick ${data.n} from ${data.node}`);
follow("demo:chat", "chat", (data) => `${data.name}: ${data.text}`);

// The assistant: each reply is one message with an id, kept by the subscription
// (`sub.messages`) and changed in place; the page renders it whenever it changes. A page
// loaded mid-reply gets the reply so far, then its appends.
const SHOWN_REPLIES = 5;
const assistant = (demo.assistant = { recovered: [] });

const seqOf = (offset) => Number(offset.slice(offset.lastIndexOf("-") + 1));

function renderReply(message) {
  const list = $("assistant");
  let el = list.querySelector(`[data-id="${CSS.escape(message.id)}"]`);
  if (!el) {
    el = document.createElement("div");
    el.className = "reply";
    el.dataset.id = message.id;
    el.dataset.created = String(seqOf(message.created));
    const head = document.createElement("div");
    head.className = "prompt";
    const prompt = document.createElement("span");
    prompt.className = "question";
    const status = document.createElement("span");
    status.className = "status";
    head.append(prompt, status);
    const text = document.createElement("div");
    text.className = "text";
    el.append(head, text);
    // In the order the replies were created; only the newest few.
    const later = [...list.children].find((other) => Number(other.dataset.created) > seqOf(message.created));
    list.insertBefore(el, later ?? null);
    while (list.children.length > SHOWN_REPLIES) list.firstChild.remove();
  }
  el.querySelector(".question").textContent = message.data?.prompt ? `> ${message.data.prompt}` : "";
  const status = el.querySelector(".status");
  status.textContent = message.status === "open" ? "streaming" : message.status;
  status.className = `status ${message.status}`;
  el.querySelector(".text").textContent = message.text ?? "";
  if (message.status === "open") list.scrollTop = list.scrollHeight;
}

const assistantSub = sb.subscribe("demo:assistant", {
  maxMessages: 20,
  onMessage(data, message) {
    if (message.id !== undefined) renderReply(message);
    $("assistant-offset").textContent = message.offset;
  },
  onUpdate(message, change) {
    renderReply(message);
    $("assistant-offset").textContent = change.offset;
  },
  onRecovered(recovered) {
    assistant.recovered.push(recovered);
    $("assistant-recovered").textContent = recovered
      ? "resumed without a gap"
      : "history too short: replies may be stale";
    log(`demo:assistant: ${recovered ? "recovered" : "not recovered"}`);
  },
  onError({ code, message }) {
    log(`demo:assistant: ${code} ${message}`);
  },
});

// The last replies that already finished come from history; the subscription brings the
// open one and everything after.
sb.history("demo:assistant", { limit: SHOWN_REPLIES })
  .then(({ messages }) => {
    for (const message of messages) {
      if (message.id === undefined || message.status === "open" || message.status === "deleted") continue;
      if (assistantSub.messages.has(message.id)) continue;
      renderReply({ ...message, created: message.offset });
    }
  })
  .catch((error) => log(`demo:assistant history: ${error.code ?? ""} ${error.message}`));

$("name").value = `guest${Math.floor(Math.random() * 1000)}`;
$("send").addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = $("text").value.trim();
  if (!text) return;
  $("text").value = "";
  try {
    await sb.publish("demo:chat", { name: $("name").value.slice(0, 20) || "guest", text });
  } catch (error) {
    log(`publish failed: ${error.code ?? ""} ${error.message}`);
  }
});
