// Opens a WebSocket (ws:// or wss://) from pages of several origins in real headless Chromium and prints, as
// one JSON line, what each page saw: the server's first frame (`welcome`), the extensions
// the browser negotiated and the first message on `browser-deflate`, or that the
// connection failed (a refused upgrade is an error plus close 1006 to a page).
//
//   node origin.mjs WS_URL PORT[,PORT..]
//
// Each PORT gets a small page server on 127.0.0.1, so each is its own origin
// (http://127.0.0.1:PORT). Bounded: every page waits at most 10 s.
import http from 'node:http';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { ARGS, EXECUTABLE } from './chromium.mjs';

const [wsUrl, ports] = process.argv.slice(2);
if (!wsUrl || !ports) {
  console.error('usage: node origin.mjs WS_URL PORT[,PORT..]');
  process.exit(2);
}

const servers = await Promise.all(
  ports.split(',').map(
    (port) =>
      new Promise((resolve, reject) => {
        const server = http.createServer((_, response) => {
          response.writeHead(200, { 'content-type': 'text/html' });
          response.end('<!doctype html><title>switchboard origin test</title>');
        });
        server.on('error', reject);
        server.listen(Number(port), '127.0.0.1', () => resolve(server));
      }),
  ),
);

const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'sb-chromium-'));
const browser = await chromium.launchPersistentContext(userDataDir, {
  executablePath: EXECUTABLE,
  headless: true,
  // wss:// tests use a certificate made by the test, which Chromium cannot know.
  ignoreHTTPSErrors: true,
  args: ARGS,
});

const results = {};
try {
  for (const port of ports.split(',')) {
    const origin = `http://127.0.0.1:${port}`;
    const page = await browser.newPage();
    await page.goto(`${origin}/`);
    results[origin] = await page.evaluate(
      (url) =>
        new Promise((resolve) => {
          const timer = setTimeout(() => resolve({ outcome: 'timeout' }), 10000);
          const ws = new WebSocket(url);
          let welcome = null;
          // The welcome, then the first message on `browser-deflate` (the test publishes
          // 2 KiB there until the pages are done): compressed if the browser negotiated it.
          ws.onmessage = (event) => {
            const frame = JSON.parse(event.data);
            if (!welcome) {
              welcome = frame;
              ws.send(JSON.stringify({ type: 'subscribe', channel: 'browser-deflate', id: 1 }));
              return;
            }
            if (frame.type !== 'message') return;
            clearTimeout(timer);
            resolve({ outcome: 'message', data: welcome, extensions: ws.extensions, message: frame.data });
            ws.close();
          };
          ws.onclose = (event) => {
            clearTimeout(timer);
            resolve({ outcome: 'closed', code: event.code });
          };
        }),
      wsUrl,
    );
    await page.close();
  }
} finally {
  await browser.close();
  for (const server of servers) server.close();
  fs.rmSync(userDataDir, { recursive: true, force: true });
}
console.log(JSON.stringify(results));
