// The demo's assistant pane in Debian's headless Chromium: one node of this build with the
// demo on (no Redis: the clustered bus does not carry message streams yet), which streams a
// scripted reply to demo:assistant every 15 s. Mid-reply the page is reloaded, a second tab
// opens, and the server drops the first tab's connection (its client resumes with `since`).
// Once the reply finished, every tab must show exactly the text the server's history holds
// (GET /v1/channels/demo:assistant/history). Prints a JSON report; exits 1 when a check
// fails, or after 90 s.
//
// SWITCHBOARD_BIN names the binary (tests/it/browser.rs sets it).

import { launch } from "./chromium.mjs";

import { eventually, sleep, startNode } from "../../clients/js/test/harness.mjs";

const report = { ok: false };
const deadline = setTimeout(() => {
  report.error = "timed out after 90 s";
  console.log(JSON.stringify(report));
  process.exit(1); // the harness kills the node at exit
}, 90_000);

const node = await startNode({ config: "\n[demo]\nenabled = true\n" });
const browser = await launch();

/** What a page shows of the reply `id` (or, without one, of its newest reply). */
function shown(page, id) {
  return page.evaluate((id) => {
    const replies = [...document.querySelectorAll("#assistant .reply")];
    const el = id === undefined ? replies.at(-1) : replies.find((reply) => reply.dataset.id === id);
    if (!el) return null;
    return {
      id: el.dataset.id,
      status: el.querySelector(".status").textContent,
      text: el.querySelector(".text").textContent,
    };
  }, id);
}

/** The reply as the server's history holds it. */
async function onServer(id) {
  const response = await fetch(`${node.controlUrl}/v1/channels/demo%3Aassistant/history?limit=100`);
  const { messages } = await response.json();
  return messages.find((message) => message.message_id === id);
}

async function openPage(context, errors) {
  const page = await context.newPage();
  page.on("pageerror", (error) => errors.push(String(error)));
  await page.goto(`http://127.0.0.1:${node.ws}/demo`);
  await eventually(async () => (await page.evaluate(() => window.demo.state)) === "connected", "the page connects");
  return page;
}

try {
  const context = await browser.newContext({ viewport: { width: 1100, height: 800 } });
  const errors = [];
  const first = await openPage(context, errors);

  // A reply early in its stream (this one, or the next within 15 s).
  let reply;
  await eventually(
    async () => {
      reply = await shown(first);
      return reply?.status === "streaming" && reply.text.length > 0 && reply.text.length < 300;
    },
    "a reply that just started",
    20_000,
  );
  const id = reply.id;
  report.id = id;
  await sleep(800);
  const before = (await shown(first, id)).text;
  report.beforeReload = before.length;

  // Reloaded mid-reply: the reply comes back whole (everything said before the reload) and
  // goes on growing.
  await first.reload();
  await eventually(async () => (await first.evaluate(() => window.demo.state)) === "connected", "connected after the reload");
  await eventually(async () => (await shown(first, id))?.text.startsWith(before), "the reply whole after the reload", 5_000);
  const afterReload = await shown(first, id);
  report.afterReload = { status: afterReload.status, length: afterReload.text.length };
  if (afterReload.status !== "streaming") throw new Error(`the reply finished before the reload's check: ${JSON.stringify(report)}`);

  // A second tab mid-reply.
  const second = await openPage(context, errors);
  await eventually(async () => (await shown(second, id))?.text.startsWith(before), "the reply whole in a second tab", 5_000);
  report.secondTab = (await shown(second, id)).text.length;

  // The server drops the first tab's connection: its client resumes from the offset of
  // the last frame it applied.
  const connId = await first.evaluate(() => window.demo.connId);
  const dropped = await node.post("/v1/disconnect", { conn_id: connId });
  if (dropped.status !== 200) throw new Error(`disconnect: ${dropped.status}`);

  // The reply finishes (about 7 s of tokens in all).
  let server;
  await eventually(
    async () => {
      server = await onServer(id);
      return server?.status === "finished";
    },
    "the reply finished on the server",
    20_000,
  );
  report.server = { length: server.text.length, tokens: server.data.tokens };
  await eventually(
    async () => (await first.evaluate(() => window.demo.assistant.recovered)).length >= 1,
    "the first tab resumed",
    15_000,
  );
  report.recovered = await first.evaluate(() => window.demo.assistant.recovered);
  report.pages = {};
  for (const [name, page] of [
    ["reloaded", first],
    ["second", second],
  ]) {
    await eventually(async () => (await shown(page, id))?.status === "finished", `${name}: finished`, 10_000);
    const final = await shown(page, id);
    report.pages[name] = { status: final.status, length: final.text.length, exact: final.text === server.text };
  }
  report.pageErrors = errors;
  report.ok =
    errors.length === 0 &&
    report.recovered.every((recovered) => recovered === true) &&
    Object.values(report.pages).every((page) => page.exact) &&
    server.text.startsWith(before) &&
    server.text.length > before.length;
} catch (error) {
  report.error = String(error);
} finally {
  clearTimeout(deadline);
  await browser.close();
  await node.kill();
}
console.log(JSON.stringify(report));
process.exit(report.ok ? 0 : 1);
