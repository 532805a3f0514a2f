// Drives the operator's web console in headless Chromium (tests/tests/console_browser.rs starts
// the console, a worker and the runs, and answers this script's requests on stdin).
// Environment: CONSOLE_URL, CONSOLE_TOKEN, FIXABLE_RUN (a failed run), FIXABLE_TASK (its dead
// letter, whose cause is fixed), SHOTS (where screenshots go), PROFILE (a fresh profile dir).
// Prints `step NAME` as it goes, `need run` when it wants the 20-node run submitted (the test
// answers with its id on stdin), and `ok` at the end; any failure exits non-zero.
"use strict";
const path = require("path");
const readline = require("readline");
const { env, launch, run } = require("./launch");

const URL = env("CONSOLE_URL"), SHOTS = env("SHOTS");
const lines = readline.createInterface({ input: process.stdin });
const nextLine = () => new Promise((resolve) => lines.once("line", resolve));
const step = (name) => console.log("step " + name);
const shot = (page, name) => page.screenshot({ path: path.join(SHOTS, name + ".png"), fullPage: true });
const T = { timeout: 60000 };

run(async () => {
  const { context, page } = await launch(env("PROFILE"));
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  page.on("dialog", (d) => d.accept(d.type() === "prompt" ? d.defaultValue() : undefined));
  // Nothing but the console itself may be asked for.
  page.on("request", (r) => {
    if (!r.url().startsWith(URL) && !r.url().startsWith("data:")) errors.push("request outside the console: " + r.url());
  });

  step("sign-in");
  await page.goto(URL + "/");
  await page.waitForURL(/\/login$/, T);
  await page.fill("input[name=token]", env("CONSOLE_TOKEN"));
  await page.click("button[type=submit]");
  await page.waitForSelector("#recent-dlq tr[class=clickable]", T);
  await page.waitForSelector("#live.on", T);
  await shot(page, "overview");

  step("runs");
  await page.goto(URL + "/#/runs");
  await page.waitForSelector("#runs tbody tr", T);
  const loaded = await page.evaluate(() => (window.__loaded = Math.random()));
  console.log("need run");
  const run = (await nextLine()).trim();
  await page.waitForSelector(`tr[data-run="${run}"]`, T);
  const first = await page.getAttribute(`tr[data-run="${run}"]`, "data-status");
  if (first !== "running") throw new Error("the run first showed as " + first + ", not running");
  const started = Date.now();
  await page.waitForSelector(`tr[data-run="${run}"][data-status="succeeded"]`, T);
  if ((await page.evaluate(() => window.__loaded)) !== loaded) throw new Error("the runs page was reloaded");
  console.log("run succeeded on the page " + (Date.now() - started) + " ms after it appeared");
  await shot(page, "runs");

  step("dag");
  await page.click(`tr[data-run="${run}"] a`);
  await page.waitForSelector("#dag svg[data-nodes='20']", T);
  await page.waitForFunction(() => [...document.querySelectorAll("#dag g.node")].every((g) => g.dataset.state === "succeeded"), null, T);
  await page.click("#dag g.node >> nth=19");
  await page.waitForSelector("#node-panel table", T);
  await shot(page, "run-dag");

  step("dlq");
  const task = env("FIXABLE_TASK");
  await page.goto(URL + "/#/dlq");
  await page.waitForSelector(`tr[data-task="${task}"]`, T);
  await page.click(`tr[data-task="${task}"] td:nth-child(2)`);
  await page.waitForSelector("#dlq-body-json", T);
  await page.check(`tr[data-task="${task}"] input[type=checkbox]`);
  await shot(page, "dlq");
  await page.click("#requeue-selected");
  await page.waitForSelector("[data-flash=ok]", T);
  await page.waitForFunction((t) => !document.querySelector(`tr[data-task="${t}"]`), task, T);
  step("run-continues");
  await page.goto(URL + "/#/run/" + env("FIXABLE_RUN"));
  await page.waitForSelector("#run-status [data-status=succeeded]", T);
  await shot(page, "run-continued");

  step("breakers");
  await page.goto(URL + "/#/breakers");
  await page.waitForSelector("#breaker-form", T);
  await page.fill("#breaker-service", "nvd.api");
  await page.fill("#breaker-for", "10m");
  await page.click("#breaker-form button[type=submit]");
  await page.waitForSelector('tr[data-service="nvd.api"][data-state="held_open"]', T);
  await shot(page, "breakers");
  await page.click('tr[data-service="nvd.api"] button[data-action=close]');
  await page.waitForFunction(() => {
    const row = document.querySelector('tr[data-service="nvd.api"]');
    return !row || row.dataset.state === "closed";
  }, null, T);

  step("workers");
  await page.goto(URL + "/#/workers");
  await page.waitForSelector("#workers tr:nth-child(2)", T);
  await page.waitForSelector("#queues tr:nth-child(2)", T);
  await shot(page, "workers");

  if (errors.length) throw new Error("page errors: " + errors.join("; "));
  console.log("ok");
  await context.close();
});
