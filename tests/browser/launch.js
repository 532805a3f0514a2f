// What the browser scripts share: required environment variables and Chromium launched as the
// tests want it (Debian's /usr/bin/chromium, headless, no background traffic, a fresh profile).
"use strict";
const { chromium } = require("playwright-core");

const FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync"];

// The value of environment variable `k`; missing is an error.
exports.env = (k) => {
  if (!process.env[k]) throw new Error("missing " + k);
  return process.env[k];
};

// A page in a fresh Chromium profile at `profile`, with its context (close it at the end).
exports.launch = async (profile) => {
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: "/usr/bin/chromium",
    headless: true,
    viewport: { width: 1400, height: 860 },
    args: FLAGS,
  });
  const page = context.pages()[0] || (await context.newPage());
  return { context, page };
};

// Runs `main`; any failure is printed and exits non-zero.
exports.run = (main) => main().then(() => process.exit(0), (e) => {
  console.error(e && e.stack ? e.stack : String(e));
  process.exit(1);
});
