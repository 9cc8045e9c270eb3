// Real server processes for the client's tests: the switchboard binary (SWITCHBOARD_BIN,
// set by tests/it/js_client.rs) and redis-server, on free loopback ports, killed at exit.

import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { mkdtempSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

const BIN = process.env.SWITCHBOARD_BIN;
if (!BIN) throw new Error("SWITCHBOARD_BIN must name the switchboard binary (tests/it/js_client.rs sets it)");

const children = new Set();
/** Kills every process started here (also at exit); for a test file's `after` hook. */
export function killAll() {
  for (const child of children) {
    child.kill("SIGCONT");
    child.kill("SIGKILL");
  }
}
process.on("exit", killAll);
for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, () => {
    killAll();
    process.exit(1);
  });
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `check` until it is true, for at most `ms`. */
export async function eventually(check, what, ms = 10_000) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await check()) return;
    await sleep(20);
  }
  throw new Error(`timed out waiting for: ${what}`);
}

/** Anyone may subscribe and publish; the test's own configuration beside it. */
const BASE_CONFIG = `
[[namespaces]]
pattern = "*"
subscribe = "anonymous"
publish = "anonymous"
history = "anonymous"
`;

export const HS256_SECRET = "js-client-test-secret-js-client-test-secret";

export function hs256(claims) {
  const encode = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const body = `${encode({ alg: "HS256", typ: "JWT" })}.${encode(claims)}`;
  const signature = createHmac("sha256", HS256_SECRET).update(body).digest("base64url");
  return `${body}.${signature}`;
}

/**
 * A switchboard node. `config`: extra TOML; `env`: extra variables; `namespaces`: TOML
 * `[[namespaces]]` tried before the open `*` one.
 */
export async function startNode({ config = "", env = {}, ports, namespaces = "" } = {}) {
  const ws = ports?.ws ?? (await freePort());
  const control = ports?.control ?? (await freePort());
  const dir = mkdtempSync(join(tmpdir(), "sb-js-"));
  const path = join(dir, "switchboard.toml");
  writeFileSync(path, namespaces + BASE_CONFIG + config);
  const child = spawn(
    BIN,
    ["--config", path, "--listen", `127.0.0.1:${ws}`, "--control", `127.0.0.1:${control}`, "--log-level", "warn"],
    // No pipe to this process: a node left running must not hold the test runner's output.
    { env: { ...process.env, ...env }, stdio: "ignore" },
  );
  children.add(child);
  const exited = new Promise((resolve) => child.once("exit", (code) => resolve(code)));
  exited.then(() => children.delete(child));
  const node = {
    ws,
    control,
    url: `ws://127.0.0.1:${ws}/ws`,
    controlUrl: `http://127.0.0.1:${control}`,
    child,
    exited,
    async publish(channel, data) {
      const response = await fetch(`${node.controlUrl}/v1/publish`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ channel, data }),
      });
      if (response.status !== 200) throw new Error(`publish: ${response.status} ${await response.text()}`);
      return (await response.json()).offset;
    },
    async post(path, body) {
      const response = await fetch(`${node.controlUrl}${path}`, {
        method: "POST",
        headers: body === undefined ? {} : { "content-type": "application/json" },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      return { status: response.status, body: await response.json().catch(() => null) };
    },
    kill() {
      child.kill("SIGKILL");
      return exited;
    },
  };
  await eventually(async () => {
    try {
      return (await fetch(`${node.controlUrl}/readyz`)).status === 200;
    } catch {
      return false;
    }
  }, `node on ${ws} ready`);
  return node;
}

/** A redis-server without persistence, on `port` (a restart where nodes expect it) or a free one. */
export async function startRedis({ port: wanted } = {}) {
  const port = wanted ?? (await freePort());
  const child = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], {
    stdio: "ignore",
  });
  children.add(child);
  child.once("error", (error) => {
    throw new Error(`redis-server is needed (apt-get install redis-server; tests/run.sh does): ${error}`);
  });
  await eventually(
    () =>
      new Promise((resolve) => {
        const socket = createServer();
        socket.close();
        import("node:net").then(({ connect }) => {
          const probe = connect(port, "127.0.0.1");
          probe.once("connect", () => {
            probe.end();
            resolve(true);
          });
          probe.once("error", () => resolve(false));
        });
      }),
    "redis-server up",
  );
  const exited = new Promise((resolve) => child.once("exit", resolve));
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    kill() {
      child.kill("SIGKILL");
      return exited;
    },
  };
}
