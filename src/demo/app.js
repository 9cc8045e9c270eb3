// The demo page's script: the Switchboard client (served beside it) on this server's
// WebSocket, a ticker the server publishes every second and a chat anyone on the page
// can write to. `window.demo` holds what arrived, for the end-to-end test.
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
