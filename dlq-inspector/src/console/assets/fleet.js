// The breakers page (each breaker's state, failures, open-until, hold; open / close / disable /
// enable; the degradation level, set or auto) and the workers & queues page (the registry,
// queue depths, completions and failures per 10 s as sparklines).
"use strict";
SF.views.breakers = {
  async show(main) {
    const draw = async () => {
      const d = await SF.api("GET", "/breakers");
      const op = SF.canAct();
      const act = (service, action, extra) => SF.act(action + " " + service, "POST", "/breakers/" + encodeURIComponent(service), { action, ...extra }, draw);
      const service = SF.h("input", { id: "breaker-service", placeholder: "service" });
      const forIn = SF.h("input", { id: "breaker-for", placeholder: "for (10m), empty: until closed", size: 24 });
      const level = SF.h("select", { id: "level-select" }, ["full", "high", "medium", "low", "minimal", "auto"].map((l) => SF.h("option", { value: l }, l)));
      const reason = SF.h("input", { id: "level-reason", placeholder: "reason" });
      SF.fill(main, SF.h("h1", {}, "Breakers"),
        SF.h("table", { id: "breakers" }, SF.h("tr", {}, ["Service", "State", "Failures", "Open until", "Hold", ""].map((t) => SF.h("th", {}, t))),
          d.breakers.map((b) => SF.h("tr", { "data-service": b.service, "data-state": b.state },
            SF.h("td", {}, b.service), SF.h("td", {}, SF.status(b.state)), SF.h("td", {}, b.failures),
            SF.h("td", {}, b.open_until_ms ? SF.time(b.open_until_ms) : "-"),
            SF.h("td", { class: "wrap" }, b.hold ? b.hold.mode + " by " + b.hold.by + (b.hold.reason ? ": " + b.hold.reason : "") : "-"),
            SF.h("td", {}, op && ["open", "close", "disable", "enable"].map((a) => SF.h("button", { "data-action": a, onclick: () => act(b.service, a, {}) }, a)))))),
        d.breakers.length ? null : SF.h("p", { class: "muted" }, "No breaker has a stored state or a hold."),
        op && SF.h("form", { class: "toolbar", id: "breaker-form", onsubmit: (e) => {
          e.preventDefault();
          if (service.value.trim()) act(service.value.trim(), "open", { for: forIn.value.trim() || null });
        } }, "Hold a breaker open: ", service, forIn, SF.h("button", { type: "submit", class: "danger" }, "Open")),
        SF.h("h2", {}, "Degradation level"),
        SF.h("p", { id: "level" }, SF.h("b", {}, d.level.level), d.level.auto ? " (auto: the fleet's controller moves it)" : " (manual)",
          d.level.by ? " · set by " + d.level.by : "", d.level.reason ? " · " + d.level.reason : ""),
        op && SF.h("div", { class: "toolbar" }, level, reason,
          SF.h("button", { id: "level-set", onclick: () => SF.act("level " + level.value, "POST", "/degrade", { level: level.value, reason: reason.value }, draw) }, "Set")),
        Object.keys(d.paused).length ? SF.h("div", {}, SF.h("h2", {}, "Paused types"),
          SF.h("ul", {}, Object.entries(d.paused).map(([t, p]) => SF.h("li", {}, t + " by " + p.by + (p.reason ? ": " + p.reason : ""))))) : null);
    };
    await draw();
    const again = SF.throttle(() => draw().catch(() => {}), 2000);
    SF.onEvent((e) => { if (e.kind === "operator.action") again(); });
  },
};

SF.spark = function (values, color) {
  const NS = "http://www.w3.org/2000/svg";
  const w = 180, h = 28, max = Math.max(1, ...values);
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("width", w); svg.setAttribute("height", h); svg.setAttribute("class", "spark");
  const line = document.createElementNS(NS, "polyline");
  line.setAttribute("points", values.map((v, i) => (i * w) / Math.max(1, values.length - 1) + "," + (h - 2 - ((h - 4) * v) / max)).join(" "));
  line.setAttribute("stroke", color);
  svg.append(line);
  return svg;
};

SF.views.workers = {
  async show(main) {
    const draw = async () => {
      const [w, q] = await Promise.all([SF.api("GET", "/workers"), SF.api("GET", "/queues")]);
      const done = w.rates.map((b) => b.done), failed = w.rates.map((b) => b.failed);
      const total = (xs) => xs.reduce((a, b) => a + b, 0);
      SF.fill(main, SF.h("h1", {}, "Workers & queues"),
        SF.h("div", { class: "cards" },
          SF.h("div", { class: "card" }, SF.h("div", { class: "muted" }, "completed per 10 s (last 10 min: " + total(done) + ")"), SF.spark(done, "#1f9d55")),
          SF.h("div", { class: "card" }, SF.h("div", { class: "muted" }, "failed attempts per 10 s (last 10 min: " + total(failed) + ")"), SF.spark(failed, "#d64545"))),
        SF.h("table", { id: "workers" }, SF.h("tr", {}, ["Worker", "Pool", "Host", "Version", "State", "Heartbeat", "In flight", "Done", "Failed", "RSS", "Level"].map((t) => SF.h("th", {}, t))),
          w.workers.map((r) => SF.h("tr", {}, SF.h("td", {}, r.id), SF.h("td", {}, r.pool), SF.h("td", {}, r.host), SF.h("td", {}, r.version),
            SF.h("td", {}, SF.status(r.unresponsive ? "unresponsive" : r.state)), SF.h("td", {}, SF.ms(r.heartbeat_age_ms) + " ago"),
            SF.h("td", {}, r.in_flight), SF.h("td", {}, r.done), SF.h("td", {}, r.failed), SF.h("td", {}, SF.bytes(r.rss_bytes)), SF.h("td", {}, r.level)))),
        w.workers.length ? null : SF.h("p", { class: "muted" }, "No worker is registered."),
        SF.h("h2", {}, "Queues"),
        SF.h("table", { id: "queues" }, SF.h("tr", {}, ["Queue", "Ready", "Consumers", "Oldest waited"].map((t) => SF.h("th", {}, t))),
          q.queues.map((r) => SF.h("tr", {}, SF.h("td", {}, r.queue), SF.h("td", {}, r.missing ? "not declared" : r.messages), SF.h("td", {}, r.consumers === undefined ? "-" : r.consumers),
            SF.h("td", {}, r.waited_ms === null || r.waited_ms === undefined ? "-" : SF.ms(r.waited_ms))))),
        q.dlq && q.dlq.oldest_age_ms !== null ? SF.h("p", { class: "muted" }, "Oldest dead letter: " + SF.ms(q.dlq.oldest_age_ms) + " old (as of " + SF.time(q.dlq.taken_ms) + ")") : null);
    };
    await draw();
    const again = SF.throttle(() => draw().catch(() => {}), 5000);
    SF.onEvent(() => again());
  },
};
