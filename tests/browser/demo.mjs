// The demo page in Debian's headless Chromium, end to end: two nodes of this build and a
// redis-server (started here, through clients/js/test/harness.mjs), the page loaded from
// node A; it must receive the ticker and the chat, survive a drain and a restart of node A,
// and show every offset of each channel once and in order. Prints a JSON report; exits 1
// when a check fails. Optional argument: a path to save a screenshot to.
//
// SWITCHBOARD_BIN names the binary (tests/it/browser.rs sets it).

import { launch } from "./chromium.mjs";

import { eventually, sleep, startNode, startRedis } from "../../clients/js/test/harness.mjs";

const screenshot = process.argv[2];
const redis = await startRedis();
const config = `
[demo]
enabled = true

[cluster]
redis = "${redis.url}"
partitions = 4
`;
// The demo's entry, as config/demo.toml ships it, tried before the harness's open `*` one
// (after it, it would never be used: the node refuses such a configuration).
const namespaces = `
[[namespaces]]
pattern = "demo:*"
subscribe = "anonymous"
publish = "anonymous"
history = "anonymous"
presence = "anonymous"
join_leave = true
`;
const env = { SWITCHBOARD_SHUTDOWN__DRAIN_DELAY: "0s", SWITCHBOARD_SHUTDOWN__DRAIN_WINDOW: "300ms" };
const a = await startNode({ config, env, namespaces });
const b = await startNode({ config, env, namespaces });

const browser = await launch();
const report = { ok: false };
let restarted;
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 720 } });
  const pageErrors = [];
  page.on("pageerror", (error) => pageErrors.push(String(error)));
  await page.goto(`http://127.0.0.1:${a.ws}/demo`);
  const demo = () => page.evaluate(() => window.demo);
  const count = async (channel) => (await demo()).channels[channel]?.offsets.length ?? 0;
  await eventually(async () => (await demo()).state === "connected", "the page connects");
  await eventually(async () => (await count("demo:ticker")) >= 3, "three ticks");
  // Chat: typed on the page, and published by a backend through node B.
  await page.fill("#name", "ada");
  await page.fill("#text", "hello from the page");
  await page.click("#send button");
  await b.publish("demo:chat", { name: "backend", text: "hello from node b" });
  await eventually(async () => (await count("demo:chat")) >= 2, "two chat messages");

  // Node A (the page's) drains and exits; it comes back on the same ports.
  const drained = await a.post("/v1/drain");
  if (drained.status !== 202) throw new Error(`drain: ${drained.status}`);
  if ((await a.exited) !== 0) throw new Error("the drained node did not exit 0");
  await b.publish("demo:chat", { name: "backend", text: "while node a was away" });
  await sleep(1500);
  restarted = await startNode({ config, env, namespaces, ports: { ws: a.ws, control: a.control } });
  await eventually(async () => {
    const state = await demo();
    return state.state === "connected" && state.reconnects >= 1;
  }, "the page reconnects to the restarted node", 20_000);
  const ticksBefore = await count("demo:ticker");
  await eventually(async () => (await count("demo:ticker")) >= ticksBefore + 3, "ticks after the restart");
  await b.publish("demo:chat", { name: "backend", text: "after the restart" });
  await eventually(async () => (await count("demo:chat")) >= 4, "chat after the restart");

  // A second tab, on node B: it shows the chat's last messages from history under the live
  // ones, offsets out of sight; each tab lists the other among who is here.
  const second = await browser.newPage({ viewport: { width: 1100, height: 720 } });
  second.on("pageerror", (error) => pageErrors.push(String(error)));
  await second.goto(`http://127.0.0.1:${b.ws}/demo`);
  const demo2 = () => second.evaluate(() => window.demo);
  await eventually(
    async () => ((await demo2()).channels["demo:chat"]?.history ?? 0) >= 4,
    "the second tab shows the chat's last messages",
  );
  const membersOf = (tab) => tab.evaluate(() => window.demo.members.size);
  await eventually(async () => (await membersOf(page)) === 2, "the first tab lists the second");
  await eventually(async () => (await membersOf(second)) === 2, "the second tab lists both");
  report.offsetsShown = await second.evaluate(
    () => getComputedStyle(document.querySelector("#chat li .offset")).display,
  );
  const secondChat = (await demo2()).channels["demo:chat"];
  report.secondTab = { history: secondChat.history, messages: secondChat.offsets.length };
  const seqs = secondChat.offsets.map((offset) => Number(offset.slice(offset.lastIndexOf("-") + 1)));
  report.secondTab.consecutive = seqs.every((seq, i) => i === 0 || seq === seqs[i - 1] + 1);
  await page.bringToFront();
  if (screenshot) await page.screenshot({ path: screenshot });
  await second.close();
  await eventually(async () => (await membersOf(page)) === 1, "the closed tab leaves the list");

  const state = await demo();
  report.reconnects = state.reconnects;
  report.pageErrors = pageErrors;
  report.channels = {};
  let ok = pageErrors.length === 0;
  for (const [channel, seen] of Object.entries(state.channels)) {
    // Consecutive offsets of one epoch: no gap, no duplicate, in order.
    const parsed = seen.offsets.map((offset) => {
      const dash = offset.lastIndexOf("-");
      return { epoch: offset.slice(0, dash), seq: Number(offset.slice(dash + 1)) };
    });
    const consecutive = parsed.every(
      (offset, i) => i === 0 || (offset.epoch === parsed[0].epoch && offset.seq === parsed[i - 1].seq + 1),
    );
    const recovered = seen.recovered.every((value) => value === true) && seen.recovered.length >= 1;
    report.channels[channel] = { messages: seen.offsets.length, consecutive, recovered: seen.recovered };
    ok &&= consecutive && recovered;
  }
  ok &&= report.offsetsShown === "none" && report.secondTab.consecutive;
  report.ok = ok;
} catch (error) {
  report.error = String(error);
} finally {
  await browser.close();
  await restarted?.kill();
  await b.kill();
  await a.kill();
  redis.kill();
}
console.log(JSON.stringify(report));
process.exit(report.ok ? 0 : 1);
