// A cookie-session login in real headless Chromium: a page server on 127.0.0.1:PORT logs
// the browser in with an HttpOnly session cookie (the page's script cannot read it), then
// the page opens a WebSocket to WS_URL (a node whose connect hook reads the cookie),
// subscribes to a room and publishes; then it logs out and connects again. Prints, as one
// JSON line, what the page saw each time.
//
//   node cookie.mjs WS_URL PORT USER
//
// Bounded: every step waits at most 10 s.
import http from 'node:http';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { ARGS, EXECUTABLE } from './chromium.mjs';

const [wsUrl, port, user] = process.argv.slice(2);
if (!wsUrl || !port || !user) {
  console.error('usage: node cookie.mjs WS_URL PORT USER');
  process.exit(2);
}

const server = http.createServer((request, response) => {
  const cookie =
    request.url === '/login'
      ? `session=${user}; Path=/; HttpOnly; SameSite=Lax`
      : request.url === '/logout'
        ? 'session=; Path=/; HttpOnly; Max-Age=0'
        : undefined;
  const headers = { 'content-type': 'text/html' };
  if (cookie) headers['set-cookie'] = cookie;
  response.writeHead(200, headers);
  response.end('<!doctype html><title>switchboard cookie test</title>');
});
await new Promise((resolve, reject) => {
  server.on('error', reject);
  server.listen(Number(port), '127.0.0.1', resolve);
});

// What one page sees: every frame until the connection closes or `done` says so.
function session(url) {
  return new Promise((resolve) => {
    const frames = [];
    const timer = setTimeout(() => resolve({ frames, outcome: 'timeout' }), 10000);
    const ws = new WebSocket(url);
    ws.onmessage = (event) => {
      const frame = JSON.parse(event.data);
      frames.push(frame);
      if (frame.type === 'welcome' && frame.user) {
        ws.send(JSON.stringify({ type: 'subscribe', id: 1, channel: 'room:1' }));
      } else if (frame.type === 'subscribed' && frame.id === 1) {
        ws.send(JSON.stringify({ type: 'publish', id: 2, channel: 'room:1', data: { text: 'hi from chromium' } }));
      } else if (frame.type === 'message' && frame.channel === 'room:1') {
        clearTimeout(timer);
        ws.close();
        resolve({ frames, outcome: 'done' });
      }
    };
    ws.onclose = (event) => {
      clearTimeout(timer);
      resolve({ frames, outcome: 'closed', code: event.code });
    };
  });
}

const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'sb-chromium-'));
const browser = await chromium.launchPersistentContext(userDataDir, {
  executablePath: EXECUTABLE,
  headless: true,
  args: ARGS,
});
const results = {};
try {
  const page = await browser.newPage();
  const origin = `http://127.0.0.1:${port}`;
  await page.goto(`${origin}/login`);
  results.readable = await page.evaluate(() => document.cookie);
  results.loggedIn = await page.evaluate(session, wsUrl);
  await page.goto(`${origin}/logout`);
  results.loggedOut = await page.evaluate(session, wsUrl);
} finally {
  await browser.close();
  server.close();
  fs.rmSync(userDataDir, { recursive: true, force: true });
}
console.log(JSON.stringify(results));
