// A run's DAG as SVG, layered: each node sits one layer right of its deepest upstream; within a
// layer nodes are ordered by the mean position of their upstreams to keep edges short.
"use strict";
SF.dag = function (nodes, selected, onPick) {
  const NS = "http://www.w3.org/2000/svg";
  const W = 168, H = 30, GX = 56, GY = 12, PAD = 12;
  const byId = new Map(nodes.map((n) => [n.id, n]));
  const layer = new Map();
  const depth = (id, seen) => {
    if (layer.has(id)) return layer.get(id);
    if (seen.has(id)) return 0; // a cycle cannot be stored; stay safe anyway
    seen.add(id);
    const ups = (byId.get(id).upstream || []).filter((u) => byId.has(u));
    const d = ups.length ? 1 + Math.max(...ups.map((u) => depth(u, seen))) : 0;
    layer.set(id, d);
    return d;
  };
  nodes.forEach((n) => depth(n.id, new Set()));
  const layers = [];
  for (const n of nodes) (layers[layer.get(n.id)] = layers[layer.get(n.id)] || []).push(n);
  const pos = new Map();
  layers.forEach((col, x) => {
    if (x > 0) {
      const mean = (n) => {
        const ys = (n.upstream || []).map((u) => pos.get(u)).filter((p) => p).map((p) => p.row);
        return ys.length ? ys.reduce((a, b) => a + b, 0) / ys.length : 0;
      };
      col.sort((a, b) => mean(a) - mean(b));
    }
    col.forEach((n, row) => pos.set(n.id, { x: PAD + x * (W + GX), y: PAD + row * (H + GY), row }));
  });
  const rows = Math.max(1, ...layers.map((c) => c.length));
  const width = PAD * 2 + layers.length * (W + GX) - GX;
  const height = PAD * 2 + rows * (H + GY) - GY;
  const el = (tag, attrs) => {
    const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    return e;
  };
  const svg = el("svg", { width, height, viewBox: `0 0 ${width} ${height}`, "data-nodes": nodes.length });
  const colors = { succeeded: "#1f9d55", failed: "#d64545", running: "#2f80ed", queued: "#7fb0f5",
    pending: "#9aa3ae", skipped: "#d98b00", standby: "#c5cad3" };
  for (const n of nodes) {
    const to = pos.get(n.id);
    for (const u of n.upstream || []) {
      const from = pos.get(u);
      if (!from) continue;
      const x1 = from.x + W, y1 = from.y + H / 2, x2 = to.x, y2 = to.y + H / 2, mx = (x1 + x2) / 2;
      svg.append(el("path", { d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}` }));
    }
  }
  for (const n of nodes) {
    const p = pos.get(n.id);
    const g = el("g", { class: "node" + (n.id === selected ? " sel" : ""), "data-node": n.id, "data-state": n.state,
      transform: `translate(${p.x},${p.y})` });
    g.append(el("rect", { width: W, height: H, fill: colors[n.state] || "#9aa3ae" }));
    const label = el("text", { x: 8, y: 19, fill: "#fff" });
    const text = n.id.length > 24 ? n.id.slice(0, 23) + "…" : n.id;
    label.textContent = text + (n.attempts > 1 ? " ×" + n.attempts : "");
    g.append(label);
    const title = el("title", {});
    title.textContent = `${n.id} (${n.type}): ${n.state}`;
    g.append(title);
    g.addEventListener("click", () => onPick(n.id));
    svg.append(g);
  }
  return svg;
};
