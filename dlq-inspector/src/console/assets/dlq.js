// The DLQ page: the inspector's filters, a page of at most 100 rows at a time (the DOM never
// holds more, whatever the DLQ's size), a task's full record (secrets masked), requeue
// (selected, all matching, paced), purge with confirmation, export.
"use strict";
SF.views.dlq = {
  async show(main, [openId]) {
    const KEYS = ["type", "class", "code", "reason", "run", "queue", "older", "newer"];
    const PAGE = 100;
    const st = { offset: 0, filter: {}, picked: new Set(), data: null };
    const inputs = Object.fromEntries(KEYS.map((k) => [k, SF.h("input", { name: k, placeholder: k, size: k === "run" ? 14 : 9 })]));
    const info = SF.h("span", { class: "muted", id: "dlq-info" });
    const body = SF.h("tbody", { id: "dlq-body" });
    const panel = SF.h("div", { class: "panel", id: "dlq-panel" }, SF.h("p", { class: "muted" }, "Pick a dead letter to see its record."));
    const query = () => new URLSearchParams(Object.entries(st.filter).filter(([, v]) => v)).toString();
    const selection = (all) => (all ? (Object.values(st.filter).some((v) => v) ? { filter: st.filter } : { all: true }) : { ids: [...st.picked] });
    const after = () => { st.picked.clear(); draw(true); };
    const requeue = (all, pace) => {
      const sel = selection(all);
      const what = sel.ids ? sel.ids.length + " selected" : "all " + st.data.matched + " matching";
      if (!sel.ids || sel.ids.length) SF.act("requeue " + what, "POST", "/dlq/requeue", { ...sel, pace: pace ? "auto" : "none" }, after);
    };
    const purge = async (all) => {
      const sel = selection(all);
      const n = sel.ids ? sel.ids.length : st.data.matched;
      if (!n) return;
      const typed = prompt("Purge removes " + n + " dead letters for good. Type " + n + " to confirm.");
      if (typed !== String(n)) return SF.flash("purge: not confirmed, nothing removed", true);
      SF.act("purge " + n, "POST", "/dlq/purge", { ...sel, confirm: n }, after);
    };
    const pager = SF.h("span", {});
    const operator = SF.canAct();
    SF.fill(main, SF.h("h1", {}, "Dead letters ", info),
      SF.h("form", { class: "toolbar", id: "dlq-filter", onsubmit: (e) => {
        e.preventDefault();
        st.filter = Object.fromEntries(KEYS.map((k) => [k, inputs[k].value.trim()]));
        st.offset = 0; st.picked.clear(); draw(true);
      } }, Object.values(inputs), SF.h("button", { type: "submit" }, "Filter")),
      SF.h("div", { class: "toolbar" }, pager,
        operator && SF.h("button", { class: "primary", id: "requeue-selected", onclick: () => requeue(false, false) }, "Requeue selected"),
        operator && SF.h("button", { id: "requeue-matching", onclick: () => requeue(true, false) }, "Requeue all matching"),
        operator && SF.h("button", { id: "requeue-paced", onclick: () => requeue(true, true) }, "Paced requeue (breakers)"),
        operator && SF.h("button", { class: "danger", id: "purge-selected", onclick: () => purge(false) }, "Purge selected"),
        SF.h("button", { id: "export", onclick: () => (location.href = "/api/dlq/export?" + query()) }, "Export matching"),
        SF.h("button", { onclick: () => draw(true) }, "Reload")),
      SF.h("div", { class: "split" },
        SF.h("div", { class: "grow scroller" }, SF.h("table", { id: "dlq" }, SF.h("thead", {}, SF.h("tr", {},
          SF.h("th", {}, ""), ["Task", "Run", "Node", "Type", "Class", "Code", "Reason", "Retries", "Age", "Message"].map((t) => SF.h("th", {}, t)))), body)),
        panel));
    const open = async (id) => {
      try {
        const v = await SF.api("GET", "/dlq/task/" + encodeURIComponent(id));
        SF.fill(panel, SF.h("h2", {}, id),
          SF.h("h2", {}, "Timeline"), SF.h("ul", {}, v.timeline.map((t) => SF.h("li", {}, SF.time(t.at_ms) + " " + t.event))),
          SF.h("h2", {}, "Record"), SF.h("pre", {}, JSON.stringify(v.record, null, 2)),
          SF.h("h2", {}, "Headers"), SF.h("pre", {}, JSON.stringify(v.headers, null, 2)),
          SF.h("h2", {}, "Body (secrets masked)"), SF.h("pre", { id: "dlq-body-json" }, JSON.stringify(v.body, null, 2)));
      } catch (e) { SF.fill(panel, SF.h("p", { class: "error" }, e.message)); }
    };
    const draw = async (refresh) => {
      const q = query();
      const data = await SF.api("GET", "/dlq?offset=" + st.offset + "&limit=" + PAGE + (q ? "&" + q : "") + (refresh ? "&refresh=1" : ""));
      st.data = data;
      info.textContent = "(" + data.matched + " matching of " + data.total + " in " + data.queue + ")";
      const last = Math.min(data.offset + data.items.length, data.matched);
      SF.fill(pager, 
        SF.h("button", { id: "prev", disabled: st.offset === 0, onclick: () => { st.offset = Math.max(0, st.offset - PAGE); draw(); } }, "‹"),
        " " + (data.matched ? data.offset + 1 : 0) + "–" + last + " of " + data.matched + " ",
        SF.h("button", { id: "next", disabled: last >= data.matched, onclick: () => { st.offset += PAGE; draw(); } }, "›"));
      const now = Date.now();
      SF.fill(body, ...data.items.map((r) => SF.h("tr", { class: "clickable", "data-task": r.task_id || "", onclick: () => open(r.task_id) },
        SF.h("td", { onclick: (e) => e.stopPropagation() }, SF.h("input", { type: "checkbox", checked: st.picked.has(r.task_id),
          disabled: !operator, onchange: (e) => (e.target.checked ? st.picked.add(r.task_id) : st.picked.delete(r.task_id)) })),
        SF.h("td", {}, r.task_id || "-"), SF.h("td", {}, r.run_id ? SF.h("a", { href: "#/run/" + r.run_id, onclick: (e) => e.stopPropagation() }, r.run_id.slice(0, 8)) : "-"),
        SF.h("td", {}, r.node_id || "-"), SF.h("td", {}, r.type || "-"), SF.h("td", {}, r.class), SF.h("td", {}, r.code),
        SF.h("td", {}, r.reason), SF.h("td", {}, r.retry_count), SF.h("td", {}, SF.ms(r.dead_lettered_ms ? now - r.dead_lettered_ms : null)),
        SF.h("td", { class: "wrap" }, r.message))));
    };
    await draw(false);
    if (openId) open(openId);
    const again = SF.throttle(() => draw(true).catch(() => {}), 5000);
    SF.onEvent((e) => { if (e.kind === "node.dead_lettered") again(); });
  },
};
