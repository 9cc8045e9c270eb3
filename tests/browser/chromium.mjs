// Debian's headless Chromium as the tests run it (root, no sandbox, nothing fetched from
// the network at run time).
import { chromium } from "playwright-core";

export const EXECUTABLE = "/usr/bin/chromium";

export const ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

/** A headless browser with a fresh profile. */
export function launch() {
  return chromium.launch({ executablePath: EXECUTABLE, headless: true, args: ARGS });
}
