// Two tabs of Debian's headless Chromium in one room, through the JS client served by the
// demo (`/demo/switchboard.js`), on two nodes of this build and a redis-server (started
// here, through clients/js/test/harness.mjs): each tab sees the other come (`onJoin`),
// lists it (`sb.presence`), and sees it go (`onLeave`) when the other tab closes. Prints
// a JSON report; exits 1 when a check fails.
//
// SWITCHBOARD_BIN names the binary (tests/it/browser.rs sets it).

import { launch } from "./chromium.mjs";

import { eventually, startNode, startRedis } from "../../clients/js/test/harness.mjs";

const redis = await startRedis();
// Ahead of the harness's own `*` namespace, which would match first.
const namespaces = `
[[namespaces]]
pattern = "room:*"
subscribe = "anonymous"
publish = "none"
history = "none"
presence = "anonymous"
join_leave = true
`;
const config = `
[demo]
enabled = true

[presence]
coalesce = "100ms"

[cluster]
redis = "${redis.url}"
partitions = 4
`;
const a = await startNode({ config, namespaces });
const b = await startNode({ config, namespaces });

const browser = await launch();
const report = { ok: false };
try {
  const context = await browser.newContext();
  const pageErrors = [];
  // A tab on `node`: its own client in room:1, recording who came and went.
  const tab = async (node) => {
    const page = await context.newPage();
    page.on("pageerror", (error) => pageErrors.push(String(error)));
    await page.goto(`http://127.0.0.1:${node.ws}/demo`);
    await page.evaluate(async () => {
      const { Switchboard } = await import("/demo/switchboard.js");
      window.room = { joined: [], left: [], subscribed: false };
      window.sb = new Switchboard(`ws://${location.host}/ws`);
      window.sb.subscribe("room:1", {
        onJoin: (member) => window.room.joined.push(member.conn_id + "@" + member.node),
        onLeave: (member) => window.room.left.push(member.conn_id + "@" + member.node),
      });
    });
    return page;
  };
  const room = (page) => page.evaluate(() => window.room);
  const list = (page) =>
    page.evaluate(async () =>
      (await window.sb.presence("room:1")).members.map((member) => member.conn_id + "@" + member.node),
    );

  const first = await tab(a);
  await eventually(async () => (await list(first)).length === 1, "the first tab is listed");
  const [me] = await list(first);
  const second = await tab(b);
  await eventually(async () => (await list(first)).length === 2, "both tabs are listed");
  const other = (await list(first)).find((member) => member !== me);
  await eventually(async () => (await room(first)).joined.includes(other), "tab 1 sees tab 2 come");
  const secondSees = await list(second);
  report.listed = secondSees.length;

  await second.close();
  await eventually(async () => (await room(first)).left.includes(other), "tab 1 sees tab 2 go");
  await eventually(async () => (await list(first)).length === 1, "only tab 1 is listed");
  report.first = await room(first);
  report.pageErrors = pageErrors;
  report.ok = pageErrors.length === 0 && secondSees.includes(me) && secondSees.includes(other);
} catch (error) {
  report.error = String(error);
} finally {
  await browser.close();
  await b.kill();
  await a.kill();
  redis.kill();
}
console.log(JSON.stringify(report));
process.exit(report.ok ? 0 : 1);
