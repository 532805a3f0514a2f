// The runs page (status, progress, findings, duration, live) and one run's page (its DAG, each
// node's details, cancel / resume / resume one node).
"use strict";
SF.views.runs = {
  async show(main) {
    const body = SF.h("tbody", { id: "runs-body" });
    const count = SF.h("span", { class: "muted" });
    SF.fill(main, SF.h("h1", {}, "Runs ", count),
      SF.h("table", { id: "runs" }, SF.h("thead", {}, SF.h("tr", {},
        ["Run", "Recipe", "Status", "Progress", "Findings", "Duration", "Submitted"].map((t) => SF.h("th", {}, t)))), body));
    const draw = async () => {
      const data = await SF.api("GET", "/runs?limit=500");
      count.textContent = "(" + data.total + ")";
      SF.fill(body, ...data.runs.map((r) => {
        const pct = r.total ? Math.min(100, Math.round((100 * r.ended) / r.total)) : 0;
        return SF.h("tr", { class: "clickable", "data-run": r.run_id, "data-status": r.status,
          onclick: () => (location.hash = "#/run/" + r.run_id) },
        SF.h("td", {}, SF.h("a", { href: "#/run/" + r.run_id }, r.run_id)),
        SF.h("td", {}, r.name), SF.h("td", {}, SF.status(r.status)),
        SF.h("td", {}, SF.h("span", { class: "bar" }, SF.h("span", { style: "width:" + pct + "%" })), " " + r.ended + " / " + r.total),
        SF.h("td", {}, r.findings), SF.h("td", {}, SF.ms(r.duration_ms)), SF.h("td", {}, SF.time(r.created_ms)));
      }));
    };
    await draw();
    const again = SF.throttle(() => draw().catch(() => {}), 500);
    SF.onEvent((e) => { if (e.run_id || e.kind === "lagged") again(); });
  },
};

SF.views.run = {
  nav: "runs",
  async show(main, [id]) {
    let picked = null;
    const head = SF.h("div");
    const dag = SF.h("div", { class: "dag", id: "dag" });
    const panel = SF.h("div", { class: "panel", id: "node-panel" }, SF.h("p", { class: "muted" }, "Pick a node."));
    SF.fill(main, head, SF.h("div", { class: "split" }, SF.h("div", { class: "grow" }, dag), panel));
    let run = null;
    const detail = () => {
      const n = run && run.nodes.find((x) => x.id === picked);
      if (!n) return;
      const row = (k, v) => SF.h("tr", {}, SF.h("th", {}, k), SF.h("td", { class: "wrap" }, v === null || v === undefined || v === "" ? "-" : v));
      const served = n.served_by ? "#" + n.served_by.index + " " + n.served_by.type : "its own handler";
      SF.fill(panel, SF.h("h2", {}, n.id),
        SF.h("table", {}, row("type", n.type), row("state", SF.status(n.state)), row("attempts", n.attempts),
          row("duration", n.duration_s === null ? null : n.duration_s.toFixed(2) + " s"), row("findings", n.findings),
          row("served by", n.state === "succeeded" ? served : null), row("quality", n.quality), row("level", n.level),
          row("skipped", n.skipped), row("worker", n.worker), row("blocked by", n.blocked_by), row("error", n.error),
          row("upstream", (n.upstream || []).join(", "))),
        n.state === "failed" && SF.canAct() ? SF.h("p", {}, SF.h("button", { class: "primary", id: "resume-node",
          onclick: () => SF.act("resume " + n.id, "POST", "/runs/" + id + "/resume", { node: n.id }, draw) }, "Resume this node")) : null);
    };
    const draw = async () => {
      run = await SF.api("GET", "/runs/" + encodeURIComponent(id));
      const counts = Object.entries(run.counts).map(([k, v]) => k + " " + v).join(", ");
      SF.fill(head, 
        SF.h("h1", {}, "Run ", SF.h("span", { id: "run-id" }, run.run_id), " ", SF.h("span", { id: "run-status" }, SF.status(run.status))),
        SF.h("p", { class: "muted" }, run.name + " · " + run.ended + " / " + run.total + " nodes ended (" + counts + ") · " +
          run.findings + " findings · " + SF.ms(run.duration_ms) + (run.blocking_node ? " · blocked by " + run.blocking_node : "")),
        SF.canAct() ? SF.h("div", { class: "toolbar" },
          SF.h("button", { class: "danger", id: "cancel-run", disabled: run.status !== "running",
            onclick: () => confirm("Cancel run " + id + "?") && SF.act("cancel", "POST", "/runs/" + id + "/cancel", {}, draw) }, "Cancel run"),
          SF.h("button", { id: "resume-run", disabled: !run.nodes.some((n) => n.state === "failed"),
            onclick: () => SF.act("resume", "POST", "/runs/" + id + "/resume", {}, draw) }, "Resume failed nodes")) : null);
      SF.fill(dag, SF.dag(run.nodes, picked, (nid) => { picked = nid; draw(); }));
      detail();
    };
    await draw();
    const again = SF.throttle(() => draw().catch(() => {}), 400);
    SF.onEvent((e) => { if (e.run_id === id || e.kind === "lagged") again(); });
  },
};
