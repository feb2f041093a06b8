// fednode dashboard: one EventSource, plain DOM and SVG, no dependencies.
"use strict";
(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const query = location.search.includes("token=") ? location.search : "";
  const state = { rounds: new Map(), events: [], nodes: [], graph: null, meta: {} };
  const MAX_LOG = 200;

  function el(tag, attrs, parent) {
    const e = document.createElementNS(SVG, tag);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }
  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }
  function fmtBytes(n) {
    const units = ["B", "kB", "MB", "GB"];
    let i = 0;
    while (Math.abs(n) >= 1000 && i < units.length - 1) { n /= 1000; i++; }
    return (i ? n.toFixed(1) : n.toFixed(0)) + " " + units[i];
  }
  function fmtTime(t) {
    if (t === null || t === undefined) return "-";
    if (state.meta.clock === "virtual") return t.toFixed(1) + " s";
    return new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19) + "Z";
  }

  function merge(msg) {
    state.meta = { title: msg.title, kind: msg.kind, clock: msg.clock, status: msg.status,
                   now: msg.now, hidden: msg.hidden_nodes };
    for (const r of msg.rounds) state.rounds.set(r.round, r);
    const seen = state.events.length ? state.events[state.events.length - 1].seq : 0;
    state.events = state.events.concat(msg.events.filter((e) => e.seq > seen)).slice(-MAX_LOG);
    state.nodes = msg.nodes;
    if (msg.graph) state.graph = msg.graph;
    render();
  }

  function render() {
    const m = state.meta;
    document.getElementById("title").textContent = "fednode · " + m.title + " (" + m.kind + ")";
    const rounds = [...state.rounds.values()].sort((a, b) => a.round - b.round);
    const last = rounds.length ? rounds[rounds.length - 1] : null;
    document.getElementById("status").textContent = m.status + " · " + rounds.length +
      " rounds" + (last && last.accuracy !== null ? " · accuracy " + last.accuracy.toFixed(4) : "") +
      " · t " + fmtTime(m.now) + (m.clock === "virtual" ? " (simulated)" : "");
    drawGraph();
    drawAccuracy(rounds);
    drawBytes(rounds);
    drawTable();
    drawLog();
  }

  function drawGraph() {
    const svg = document.getElementById("graph");
    clear(svg);
    if (!state.graph) return;
    const W = 1000, H = 560, pad = 30;
    const rows = new Map(state.nodes.map((n) => [n.id, n]));
    const pos = new Map(state.graph.nodes.map((n) => [n.id, [pad + n.x * (W - 2 * pad), pad + n.y * (H - 2 * pad)]]));
    for (const [a, b] of state.graph.edges) {
      const p = pos.get(a), q = pos.get(b);
      if (p && q) el("line", { x1: p[0], y1: p[1], x2: q[0], y2: q[1], class: "edge" }, svg);
    }
    const n = state.graph.nodes.length;
    const r = n > 200 ? 4 : n > 60 ? 6 : 10;
    for (const node of state.graph.nodes) {
      const row = rows.get(node.id) || { role: "other", state: "up", label: node.id };
      const p = pos.get(node.id);
      const c = el("circle", { cx: p[0], cy: p[1], r: row.role === "coordinator" ? r * 1.6 : r,
        class: "node " + row.role + " " + row.state, "data-node": node.id, "data-state": row.state }, svg);
      el("title", {}, c).textContent = row.label + " (" + row.role + ", " + row.state + ")";
      if (n <= 12 || row.role === "coordinator" || (row.role === "aggregator" && n <= 200)) {
        const t = el("text", { x: p[0] + r + 3, y: p[1] + 4, class: "label" }, svg);
        t.textContent = row.label;
      }
    }
    svg.setAttribute("data-nodes", String(n));
    document.getElementById("graph-note").textContent = n + " nodes" +
      (state.meta.hidden ? " (" + state.meta.hidden + " more not drawn)" : "");
  }

  function axes(svg, box, xs, yTicks, yFmt, right) {
    const [x0, y0, x1, y1] = box;
    for (const [v, y] of yTicks) {
      el("line", { x1: x0, x2: x1, y1: y, y2: y, class: "grid" }, svg);
      const t = el("text", { x: right ? x1 + 4 : x0 - 4, y: y + 4, class: "tick",
        "text-anchor": right ? "start" : "end" }, svg);
      t.textContent = yFmt(v);
    }
    el("line", { x1: x0, x2: x1, y1: y1, y2: y1, class: "axis" }, svg);
    el("line", { x1: x0, x2: x0, y1: y0, y2: y1, class: "axis" }, svg);
    const step = Math.max(1, Math.ceil(xs.length / 10));
    xs.forEach(([label, x], i) => {
      if (i % step) return;
      const t = el("text", { x: x, y: y1 + 14, class: "tick", "text-anchor": "middle" }, svg);
      t.textContent = label;
    });
  }

  function drawAccuracy(rounds) {
    const svg = document.getElementById("acc-chart");
    clear(svg);
    const box = [44, 10, 556, 230];
    const [x0, y0, x1, y1] = box;
    const n = rounds.length;
    const x = (i) => (n <= 1 ? (x0 + x1) / 2 : x0 + (i * (x1 - x0)) / (n - 1));
    const losses = rounds.map((r) => r.loss).filter((v) => v !== null);
    const maxLoss = losses.length ? Math.max(...losses) * 1.1 || 1 : 1;
    const yAcc = (v) => y1 - v * (y1 - y0);
    const yLoss = (v) => y1 - (v / maxLoss) * (y1 - y0);
    axes(svg, box, rounds.map((r, i) => [r.round, x(i)]),
      [0, 0.25, 0.5, 0.75, 1].map((v) => [v, yAcc(v)]), (v) => v.toFixed(2), false);
    for (const v of [0, 0.5, 1]) {
      const t = el("text", { x: x1 + 4, y: yLoss(v * maxLoss) + 4, class: "tick" }, svg);
      t.textContent = (v * maxLoss).toFixed(2);
    }
    for (const [key, y] of [["accuracy", yAcc], ["loss", yLoss]]) {
      const cls = key === "accuracy" ? "acc" : "loss";
      const pts = rounds.map((r, i) => [r[key], i]).filter(([v]) => v !== null);
      if (pts.length > 1) {
        el("polyline", { points: pts.map(([v, i]) => x(i) + "," + y(v)).join(" "), class: "series " + cls }, svg);
      }
      if (n <= 120) {
        for (const [v, i] of pts) {
          el("circle", { cx: x(i), cy: y(v), r: 3, class: "point " + cls, "data-round": rounds[i].round }, svg);
        }
      }
    }
    svg.setAttribute("data-rounds", String(n));
  }

  function drawBytes(rounds) {
    document.getElementById("bytes-title").textContent = state.meta.kind === "gossip"
      ? "Bytes per round (sent by all peers)"
      : state.meta.kind === "star" || state.meta.kind === "two-tier" || state.meta.kind === "coordinator"
        ? "Bytes per round at the coordinator (up: updates in, down: models out)"
        : "Bytes per round";
    const svg = document.getElementById("bytes-chart");
    clear(svg);
    const box = [60, 10, 590, 230];
    const [x0, y0, x1, y1] = box;
    const n = rounds.length;
    const max = Math.max(1, ...rounds.map((r) => Math.max(r.bytes_up, r.bytes_down)));
    const y = (v) => y1 - (v / max) * (y1 - y0);
    const slot = n ? (x1 - x0) / n : 0;
    axes(svg, box, rounds.map((r, i) => [r.round, x0 + slot * (i + 0.5)]),
      [0, 0.5, 1].map((f) => [f * max, y(f * max)]), fmtBytes, false);
    rounds.forEach((r, i) => {
      const w = Math.max(1, slot * 0.4);
      const left = x0 + slot * i + slot * 0.1;
      el("rect", { x: left, y: y(r.bytes_up), width: w, height: y1 - y(r.bytes_up), class: "bar up", "data-round": r.round }, svg);
      el("rect", { x: left + w, y: y(r.bytes_down), width: w, height: y1 - y(r.bytes_down), class: "bar down", "data-round": r.round }, svg);
    });
    svg.setAttribute("data-rounds", String(n));
  }

  function drawTable() {
    const body = document.querySelector("#nodes tbody");
    clear(body);
    for (const row of state.nodes) {
      const tr = document.createElement("tr");
      tr.className = row.state;
      const cells = [row.label, row.role, row.state, row.round === null ? "-" : row.round,
        fmtTime(row.last_seen), row.rejections];
      cells.forEach((v, i) => {
        const td = document.createElement("td");
        td.textContent = String(v);
        if (i === 3 || i === 5) td.className = "num";
        tr.appendChild(td);
      });
      body.appendChild(tr);
    }
    document.getElementById("nodes-note").textContent = state.nodes.length + " shown" +
      (state.meta.hidden ? ", " + state.meta.hidden + " more" : "");
  }

  function drawLog() {
    const list = document.getElementById("log");
    clear(list);
    for (const e of state.events.slice().reverse()) {
      const li = document.createElement("li");
      const ev = document.createElement("span");
      ev.className = "ev " + e.event;
      ev.textContent = e.event;
      li.appendChild(document.createTextNode(fmtTime(e.t) + "  " + e.node.slice(0, 16) + "  "));
      li.appendChild(ev);
      li.appendChild(document.createTextNode("  " + JSON.stringify(e.data)));
      list.appendChild(li);
    }
  }

  const source = new EventSource("/api/events" + query);
  source.addEventListener("state", (e) => merge(JSON.parse(e.data)));
  source.onerror = () => {
    document.getElementById("status").textContent = "disconnected: retrying…";
  };
})();
