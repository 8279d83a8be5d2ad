// The live admin page: reads one JSON object a second from the page's WebSocket (opened
// at the page's own path) and draws it. Nothing here sends anything but the handshake.
// Every text from the server goes in with textContent, never as HTML.
"use strict";

(() => {
  const SERIES = [
    ["ws_in", "WebSocket in", "#2b7bb9"],
    ["ws_out", "WebSocket out", "#4aa564"],
    ["http", "HTTP responses", "#c77b30"],
    ["group_send", "group_send", "#9b59b6"],
  ];
  const KINDS = ["http", "websocket", "sse", "longpoll", "http2"];
  const HISTORY = 60;
  const $ = (id) => document.getElementById(id);
  const state = { last: null, received: 0, history: [], opened: 0 };
  window.tidingsLive = state; // read-only, for tests and curious staff

  function cell(tag, text, cls) {
    const el = document.createElement(tag);
    el.textContent = text;
    if (cls) el.className = cls;
    return el;
  }

  function fillRows(tbody, rows, empty) {
    const body = $(tbody);
    body.replaceChildren();
    if (!rows.length) {
      const tr = document.createElement("tr");
      const td = cell("td", empty, "tl-empty");
      td.colSpan = 3;
      tr.append(td);
      body.append(tr);
      return;
    }
    for (const [key, ...values] of rows) {
      const tr = document.createElement("tr");
      tr.dataset.key = String(key);
      tr.append(cell("th", String(key)));
      for (const value of values) tr.append(cell("td", String(value), "tl-num"));
      body.append(tr);
    }
  }

  function sum(counts) {
    return counts ? Object.values(counts).reduce((a, b) => a + b, 0) : null;
  }

  function duration(seconds) {
    const s = Math.floor(seconds);
    if (s < 120) return `${s} s`;
    if (s < 7200) return `${Math.floor(s / 60)} min`;
    if (s < 172800) return `${Math.floor(s / 3600)} h`;
    return `${Math.floor(s / 86400)} d`;
  }

  function drawChart() {
    const canvas = $("tl-chart");
    const ctx = canvas.getContext("2d");
    const width = canvas.clientWidth || canvas.width;
    const height = canvas.height;
    if (canvas.width !== width) canvas.width = width;
    ctx.clearRect(0, 0, width, height);
    const points = state.history.slice(-HISTORY);
    let top = 1;
    for (const p of points) for (const [name] of SERIES) top = Math.max(top, p[name] || 0);
    top = niceCeiling(top);
    const left = 48;
    const plotW = width - left - 8;
    const plotH = height - 20;
    const style = getComputedStyle(document.body);
    ctx.font = "11px sans-serif";
    ctx.fillStyle = style.color;
    ctx.strokeStyle = "rgba(128,128,128,0.35)";
    for (const f of [0, 0.5, 1]) {
      const y = 6 + plotH * (1 - f);
      ctx.beginPath();
      ctx.moveTo(left, y);
      ctx.lineTo(width - 8, y);
      ctx.stroke();
      ctx.fillText(formatRate(top * f), 4, y + 4);
    }
    const step = plotW / (HISTORY - 1);
    const start = HISTORY - points.length;
    for (const [name, , color] of SERIES) {
      ctx.strokeStyle = color;
      ctx.lineWidth = 2;
      ctx.beginPath();
      points.forEach((p, i) => {
        const x = left + (start + i) * step;
        const y = 6 + plotH * (1 - (p[name] || 0) / top);
        if (i === 0) ctx.moveTo(x, y);
        else ctx.lineTo(x, y);
      });
      ctx.stroke();
    }
    ctx.fillStyle = style.color;
    ctx.fillText(`last ${HISTORY} s`, left, height - 2);
  }

  function niceCeiling(value) {
    const power = 10 ** Math.floor(Math.log10(value));
    for (const m of [1, 2, 5, 10]) if (value <= m * power) return m * power;
    return 10 * power;
  }

  function formatRate(value) {
    return value >= 100 ? value.toFixed(0) : value >= 10 ? value.toFixed(1) : value.toFixed(2);
  }

  function drawLegend(rates) {
    const legend = $("tl-legend");
    legend.replaceChildren();
    for (const [name, label, color] of SERIES) {
      const li = document.createElement("li");
      li.dataset.series = name;
      const swatch = cell("span", "", "tl-swatch");
      swatch.style.background = color;
      li.append(swatch, cell("span", `${label}: `), cell("b", rates ? formatRate(rates[name]) : "–"));
      legend.append(li);
    }
  }

  function show(message) {
    state.last = message;
    state.received += 1;
    if (message.history) state.history = message.history.slice(-HISTORY);
    else if (message.rates) {
      state.history.push(message.rates);
      if (state.history.length > HISTORY) state.history.shift();
    }
    const root = $("tidings-live");
    root.dataset.state = "live";
    $("tl-status").textContent = "live";
    $("tl-updated").textContent = `updated ${new Date(message.at * 1000).toLocaleTimeString()}`;
    $("tl-metrics-off").hidden = message.metrics;

    // Every worker when the supervisor sends their figures, else the serving process.
    const workers = message.workers;
    fillRows(
      "tl-workers-rows",
      workers.map((w) => [
        workers.length > 1 && w.this ? `${w.pid} (this page)` : w.pid,
        duration(w.uptime),
        w.connections ? sum(w.connections) : "–",
      ]),
      "none",
    );
    $("tl-workers").querySelector(".tl-note").textContent =
      workers.length > 1 ? `${workers.length} workers.` : "The process that serves this page.";
    const conns = message.connections;
    fillRows(
      "tl-connections-rows",
      conns ? [...KINDS.map((k) => [k, conns[k] ?? 0]), ["total", sum(conns)]] : [],
      "metrics are off",
    );
    fillRows("tl-groups-rows", message.groups.top, "no groups");
    const g = message.groups;
    $("tl-groups-note").textContent =
      `${g.total} group${g.total === 1 ? "" : "s"}${g.partial ? " (sweep under way)" : ""}` +
      (g.note ? ` · ${g.note}` : "");
    fillRows("tl-presence-rows", message.presence.top, "no topics");
    const p = message.presence;
    $("tl-presence-note").textContent =
      `${p.total} topic${p.total === 1 ? "" : "s"}` + (p.note ? ` · ${p.note}` : "");

    const layer = message.layer;
    const rows = [["backend", layer.backend ?? "none"]];
    for (const h of layer.hosts) {
      rows.push([h.host, h.reachable ? `reachable, ${h.ping_ms} ms` : "UNREACHABLE"]);
    }
    if (layer.outages !== null) rows.push(["Redis outages", layer.outages]);
    if (layer.reconnects !== null) rows.push(["Redis reconnects", layer.reconnects]);
    fillRows("tl-layer-rows", rows, "");
    for (const tr of $("tl-layer-rows").children) {
      if (tr.textContent.includes("UNREACHABLE")) tr.classList.add("tl-bad");
    }
    drawLegend(message.rates);
    drawChart();
  }

  function connect(delay) {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(`${scheme}//${location.host}${location.pathname}`);
    socket.onopen = () => {
      state.opened += 1;
      delay = 1000;
    };
    socket.onmessage = (event) => show(JSON.parse(event.data));
    socket.onclose = (event) => {
      $("tidings-live").dataset.state = "closed";
      if (event.code === 4003) {
        $("tl-status").textContent = "closed: no longer staff";
        return;
      }
      $("tl-status").textContent = `disconnected; retrying in ${Math.round(delay / 1000)} s`;
      setTimeout(() => connect(Math.min(delay * 2, 30000)), delay);
    };
  }

  document.addEventListener("DOMContentLoaded", () => {
    drawLegend(null);
    drawChart();
    connect(1000);
  });
})();
