// Times the console's first render with a large DLQ and a large run in headless Chromium
// (tests/tests/console_browser.rs fills both). Environment: CONSOLE_URL, CONSOLE_TOKEN, BIG_RUN,
// BIG_NODES, PROFILE. Prints `NAME VALUE` figures, then `ok`; any failure exits non-zero.
"use strict";
const { env, launch, run } = require("./launch");

const URL = env("CONSOLE_URL");
const T = { timeout: 120000 };

run(async () => {
  const { context, page } = await launch(env("PROFILE"));
  // The overview is the first to read the DLQ: its time includes taking all 10,000 messages.
  let t = Date.now();
  await page.goto(URL + "/login?token=" + encodeURIComponent(env("CONSOLE_TOKEN")));
  await page.waitForSelector(".cards", T);
  console.log("overview_first_render_ms " + (Date.now() - t));

  // Past the console's 3 s snapshot, so the DLQ page's time includes reading the DLQ again.
  await page.waitForTimeout(3500);
  t = Date.now();
  await page.goto(URL + "/#/dlq");
  await page.waitForFunction(() => document.querySelectorAll("#dlq-body tr").length === 100, null, T);
  console.log("dlq_first_render_ms " + (Date.now() - t));
  console.log("dlq_info " + JSON.stringify(await page.textContent("#dlq-info")));
  console.log("dlq_rows_in_dom " + (await page.$$eval("#dlq-body tr", (rows) => rows.length)));
  t = Date.now();
  await page.click("#next");
  await page.waitForSelector("#prev:not([disabled])", T);
  console.log("dlq_next_page_ms " + (Date.now() - t));

  const nodes = env("BIG_NODES");
  t = Date.now();
  await page.goto(URL + "/#/run/" + env("BIG_RUN"));
  await page.waitForSelector(`#dag svg[data-nodes='${nodes}']`, T);
  console.log("dag_first_render_ms " + (Date.now() - t));
  t = Date.now();
  await page.click("#dag g.node >> nth=1000");
  await page.waitForSelector("#node-panel table", T);
  console.log("dag_pick_node_ms " + (Date.now() - t));
  console.log("ok");
  await context.close();
});
