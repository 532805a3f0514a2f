// SecFlow console: shared helpers, the API client, live events and the router. Views register
// themselves in `SF.views` (runs.js, dlq.js, fleet.js); boot.js starts everything.
"use strict";
const SF = { views: {}, session: null, view: null, listeners: [] };

// Builds an element. Text is always set as text, never parsed as HTML.
SF.h = function (tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
};

// Replaces `el`'s children, skipping the empty ones (`cond && node` that was false).
SF.fill = function (el, ...children) {
  el.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
};

SF.api = async function (method, path, body) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") {
    headers["Content-Type"] = "application/json";
    if (SF.session && SF.session.csrf) headers["X-CSRF-Token"] = SF.session.csrf;
  }
  const res = await fetch("/api" + path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (res.status === 401) { location.href = "/login"; throw new Error("signed out"); }
  const data = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(data.error || res.status + " " + res.statusText);
  return data;
};

SF.flash = function (text, isError) {
  const box = document.getElementById("flash");
  const msg = SF.h("div", { class: "msg" + (isError ? " err" : ""), "data-flash": isError ? "error" : "ok" }, text);
  SF.fill(box, msg);
  setTimeout(() => { if (msg.parentNode) msg.remove(); }, 8000);
};

// Runs an action, says how it went, then calls `after`.
SF.act = async function (what, method, path, body, after) {
  try {
    const out = await SF.api(method, path, body);
    const note = out.event_published === false ? " (warning: its event was not published: " + out.event_error + ")" : "";
    SF.flash(what + ": done" + note);
    if (after) after(out);
    return out;
  } catch (e) {
    SF.flash(what + ": " + e.message, true);
    return null;
  }
};

SF.canAct = () => SF.session && SF.session.role === "operator";

SF.status = (s) => SF.h("span", { class: "status s-" + (s || "none"), "data-status": s || "" }, s || "-");

SF.ms = function (ms) {
  if (ms === null || ms === undefined) return "-";
  const s = Math.round(ms / 1000);
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m" + (s % 60) + "s";
  if (s < 86400) return Math.floor(s / 3600) + "h" + Math.floor((s % 3600) / 60) + "m";
  return Math.floor(s / 86400) + "d" + Math.floor((s % 86400) / 3600) + "h";
};
SF.time = (ms) => (ms ? new Date(ms).toLocaleString() : "-");
SF.bytes = (b) => (b > 1 << 20 ? (b / (1 << 20)).toFixed(0) + " MiB" : Math.round(b / 1024) + " KiB");

// Calls `fn` at most once per `ms`, trailing call included.
SF.throttle = function (fn, ms) {
  let timer = null, again = false;
  return function () {
    if (timer) { again = true; return; }
    fn();
    timer = setTimeout(function tick() {
      timer = null;
      if (again) { again = false; fn(); timer = setTimeout(tick, ms); }
    }, ms);
  };
};

// Live events: every view may listen while it is shown.
SF.onEvent = (fn) => SF.listeners.push(fn);
SF.connect = function () {
  const dot = document.getElementById("live");
  const es = new EventSource("/api/events");
  es.addEventListener("hello", (m) => { dot.classList.toggle("on", m.data === "live"); dot.dataset.live = m.data; });
  es.onmessage = (m) => {
    dot.classList.add("on");
    let ev;
    try { ev = JSON.parse(m.data); } catch (_) { return; }
    for (const fn of SF.listeners) fn(ev);
  };
  es.addEventListener("lagged", () => SF.listeners.forEach((fn) => fn({ kind: "lagged" })));
  es.onerror = () => dot.classList.remove("on");
};

SF.route = async function () {
  const hash = location.hash.replace(/^#\/?/, "");
  const [name, ...rest] = hash.split("/");
  const view = SF.views[name || "overview"] || SF.views.overview;
  SF.listeners = [];
  for (const a of document.querySelectorAll("[data-nav]")) {
    a.classList.toggle("active", a.dataset.nav === (view.nav || name || "overview"));
  }
  const main = document.getElementById("main");
  SF.fill(main, SF.h("p", { class: "muted" }, "Loading…"));
  try {
    await view.show(main, rest.map(decodeURIComponent));
  } catch (e) {
    SF.fill(main, SF.h("p", { class: "error" }, "Could not load: " + e.message));
  }
};

// The landing page: counts and the most recent dead letters.
SF.views.overview = {
  async show(main) {
    const draw = async () => {
      const o = await SF.api("GET", "/overview");
      const card = (n, label, href) => SF.h("a", { class: "card", href }, SF.h("div", { class: "n" }, n), SF.h("div", { class: "muted" }, label));
      const recent = SF.h("table", { id: "recent-dlq" },
        SF.h("tr", {}, ["Task", "Type", "Class", "Reason", "Age", "Message"].map((t) => SF.h("th", {}, t))),
        o.dlq.recent.map((r) => SF.h("tr", { class: "clickable", onclick: () => (location.hash = "#/dlq/" + encodeURIComponent(r.task_id || "")) },
          SF.h("td", {}, r.task_id || "-"), SF.h("td", {}, r.type || "-"), SF.h("td", {}, r.class),
          SF.h("td", {}, r.reason), SF.h("td", {}, SF.ms(r.dead_lettered_ms ? Date.now() - r.dead_lettered_ms : null)),
          SF.h("td", { class: "wrap" }, r.message))));
      SF.fill(main, 
        SF.h("h1", {}, "Overview"),
        SF.h("div", { class: "cards" },
          card(o.runs.running + " / " + o.runs.total, "runs running / kept", "#/runs"),
          card(o.dlq.total, "dead letters", "#/dlq"),
          card(o.breakers.not_closed + " / " + o.breakers.total, "breakers not closed / known", "#/breakers"),
          card(o.level.level + (o.level.auto ? " (auto)" : " (manual)"), "degradation level", "#/breakers"),
          card(o.workers, "workers registered", "#/workers")),
        SF.h("h2", {}, "Most recent dead letters"),
        o.dlq.recent.length ? recent : SF.h("p", { class: "muted" }, "The DLQ is empty."));
    };
    await draw();
    const again = SF.throttle(() => draw().catch(() => {}), 3000);
    SF.onEvent((e) => { if (e.kind === "node.dead_lettered" || e.kind === "operator.action") again(); });
  },
};
