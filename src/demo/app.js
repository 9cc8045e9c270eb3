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

const epochOf = (offset) => offset?.slice(0, offset.lastIndexOf("-"));
const seqOf = (offset) => Number(offset.slice(offset.lastIndexOf("-") + 1));

/** One message as a list item, its offset beside it (shown with "show offsets"). */
function item(text, offset) {
  const li = document.createElement("li");
  li.textContent = text;
  const tag = document.createElement("span");
  tag.className = "offset";
  tag.textContent = offset;
  li.append(tag);
  return li;
}

/**
 * Follows `channel` into the list `id`, newest first. With `history`, the last messages
 * sent before the page opened are shown under the live ones (once each: a message both
 * in the history page and live is shown once).
 */
function follow(channel, id, render, { history = 0, handlers = {} } = {}) {
  const seen = (demo.channels[channel] = { offsets: [], recovered: [] });
  const shown = new Set();
  const sub = sb.subscribe(channel, {
    ...handlers,
    onMessage(data, message) {
      if (shown.has(message.offset)) return;
      shown.add(message.offset);
      seen.offsets.push(message.offset);
      $(`${id}-offset`).textContent = message.offset;
      $(id).prepend(item(render(data), message.offset));
      while ($(id).children.length > 50) $(id).lastChild.remove();
    },
    onRecovered(recovered) {
      seen.recovered.push(recovered);
      const last = seen.offsets[seen.offsets.length - 1];
      // A new epoch: the server (or Redis) restarted without the channel's history.
      const restarted = !recovered && last && epochOf(sub.offset) !== epochOf(last);
      $(`${id}-recovered`).textContent = recovered
        ? "resumed without a gap"
        : restarted
          ? "the server restarted without its history: messages sent meanwhile are gone"
          : "missed more than the history holds: some messages are gone";
      log(`${channel}: ${recovered ? "recovered" : restarted ? "new epoch" : "not recovered"}`);
    },
    onError({ code, message }) {
      log(`${channel}: ${code} ${message}`);
    },
  });
  if (history > 0) {
    sb.history(channel, { limit: history })
      .then(({ messages }) => {
        const first = seen.offsets[0];
        const older = messages.filter(
          (message) =>
            !shown.has(message.offset) &&
            (first === undefined ||
              (epochOf(message.offset) === epochOf(first) && seqOf(message.offset) < seqOf(first))),
        );
        // Under the live ones, newest first: the oldest at the bottom.
        for (const message of [...older].reverse()) {
          shown.add(message.offset);
          $(id).append(item(render(message.data), message.offset));
        }
        seen.offsets.unshift(...older.map((message) => message.offset));
        seen.history = older.length;
      })
      .catch((error) => log(`${channel} history: ${error.code ?? ""} ${error.message}`));
  }
  return sub;
}

// Who is in the chat: the connections on every node (anonymous: each is a guest), kept
// by the `join`/`leave` frames and read whole after each connect.
const members = (demo.members = new Map());
function renderMembers() {
  const list = $("members");
  list.replaceChildren(
    ...[...members.values()].map((member) => {
      const li = document.createElement("li");
      li.textContent = `${member.user || "guest"} ${String(member.conn_id).slice(-4)} on ${member.node}${
        member.conn_id === demo.connId ? " (you)" : ""
      }`;
      return li;
    }),
  );
  $("member-count").textContent = members.size;
}
async function readMembers() {
  try {
    const { members: listed } = await sb.presence("demo:chat");
    members.clear();
    for (const member of listed) members.set(member.conn_id, member);
    renderMembers();
  } catch (error) {
    log(`demo:chat presence: ${error.code ?? ""} ${error.message}`);
  }
}
sb.on("connected", () => setTimeout(readMembers, 300));

follow("demo:ticker", "ticker", (data) => `tick ${data.n} from ${data.node}`);
follow("demo:chat", "chat", (data) => `${data.name}: ${data.text}`, {
  history: 20,
  handlers: {
    onJoin(member) {
      members.set(member.conn_id, member);
      renderMembers();
    },
    onLeave(member) {
      members.delete(member.conn_id);
      renderMembers();
    },
  },
});

$("offsets").addEventListener("change", (event) => {
  document.body.classList.toggle("offsets", event.target.checked);
});

// The assistant: each reply is one message with an id, kept by the subscription
// (`sub.messages`) and changed in place; the page renders it whenever it changes. A page
// loaded mid-reply gets the reply so far, then its appends.
const SHOWN_REPLIES = 5;
const assistant = (demo.assistant = { recovered: [] });


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
