// The live page: reads the state from /ui/events (Server-Sent Events) and
// draws it. Plain JavaScript, no framework, no build step.
//
// Safety rule: every string that comes from the registry (ids, addresses,
// tags, metadata, errors) reaches the page through textContent or a data-*
// attribute, never as markup. Do not use innerHTML here.
"use strict";

const COLORS = ["#1565c0", "#c62828", "#2e7d32", "#6a1b9a", "#ef6c00", "#00838f", "#5d4037", "#ad1457"];
const CHART_SECONDS = 120;
const MIN_CHART_SECONDS = 15;

let clockOffset = 0; // the browser's clock minus the server's
let last = null;

// An element with optional class and text (text set as text, never parsed).
function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function seconds(ms) {
  return (ms / 1000).toFixed(ms < 10000 ? 1 : 0) + " s";
}

function serverNow() {
  return Date.now() - clockOffset;
}

function timeOf(unixMs) {
  return new Date(unixMs + clockOffset).toLocaleTimeString();
}

function setBadge(node, state, text) {
  node.dataset.state = state;
  node.textContent = text;
}

function renderHeader(state) {
  document.getElementById("title").textContent = state.title;
  document.title = state.title;
  const badge = document.getElementById("registry");
  const reason = document.getElementById("reason");
  const r = state.registry;
  if (r.stale) {
    setBadge(badge, "stale", "stale for " + seconds(serverNow() - r.stale_since_unix_ms));
    reason.textContent = r.reason || "";
  } else if (r.synced) {
    setBadge(badge, "synced", "synced");
    reason.textContent = "";
  } else {
    setBadge(badge, "syncing", "waiting for the registry");
    reason.textContent = "";
  }
}

function renderServices(state) {
  const list = document.getElementById("services");
  const items = state.services.map((s) => {
    const li = el("li");
    li.dataset.service = s.name;
    li.append(el("span", "name", s.name), el("span", "count", s.count));
    return li;
  });
  if (items.length === 0) items.push(el("li", "empty", "no services with live instances"));
  list.replaceChildren(...items);
}

function cellList(className, values) {
  const td = el("td");
  for (const v of values) td.append(el("span", className, v));
  return td;
}

function num(value, digits) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
}

function renderDetails(state) {
  const gateway = state.source === "gateway";
  const sections = state.services.map((s) => {
    const section = el("section", "service");
    section.dataset.service = s.name;
    const h = el("h3", null, s.name + " — " + s.count + (s.count === 1 ? " instance" : " instances"));
    section.append(h);
    if (s.stale_since_unix_ms) {
      section.append(el("p", "stale", "stale for " + seconds(serverNow() - s.stale_since_unix_ms) + ": " + (s.last_error || "")));
    }
    const table = el("table");
    const head = el("tr");
    const columns = ["id", "address", "tags", "metadata", "weight", "zone"];
    if (gateway) columns.push("req/s", "latency ms", "errors/s", "errors", "in flight", "state");
    for (const c of columns) head.append(el("th", null, c));
    table.append(head);
    for (const i of s.instances) {
      const tr = el("tr");
      tr.dataset.instance = s.name + "/" + i.id;
      tr.append(el("td", "id", i.id), el("td", "address", i.authority));
      tr.append(cellList("tag", i.tags));
      tr.append(cellList("meta", Object.entries(i.metadata).map(([k, v]) => k + "=" + v)));
      tr.append(el("td", "num", i.weight), el("td", null, i.zone || ""));
      if (gateway) {
        const t = i.traffic || {};
        tr.dataset.ejected = t.ejected ? "true" : "false";
        tr.append(
          el("td", "num", num(t.rate_per_s, 1)),
          el("td", "num", num(t.latency_ms, 2)),
          el("td", "num", num(t.errors_per_s, 1)),
          el("td", "num", t.failed_total === undefined ? "–" : t.failed_total),
          el("td", "num", t.in_flight === undefined ? "–" : t.in_flight),
        );
        const stateCell = el("td");
        const badge = el("span", "badge state");
        setBadge(badge, t.ejected ? "ejected" : "ok", t.ejected ? "ejected" : "ok");
        stateCell.append(badge);
        tr.append(stateCell);
      }
      table.append(tr);
    }
    if (s.instances.length === 0) {
      const tr = el("tr");
      const td = el("td", "empty", "no live instances");
      td.colSpan = columns.length;
      tr.append(td);
      table.append(tr);
    }
    section.append(table);
    return section;
  });
  document.getElementById("details").replaceChildren(...sections);
}

function renderTimeline(state) {
  const items = state.events.map((e) => {
    const li = el("li");
    li.dataset.kind = e.kind;
    li.dataset.seq = e.seq;
    if (e.instance) li.dataset.instance = e.service + "/" + e.instance;
    li.append(
      el("span", "time", timeOf(e.at_unix_ms)),
      el("span", "kind", e.kind),
      el("span", "who", e.service + (e.instance ? "/" + e.instance : "")),
      document.createTextNode(" "),
      el("span", "detail", e.detail),
    );
    return li;
  });
  if (items.length === 0) items.push(el("li", "empty", "nothing yet"));
  document.getElementById("timeline").replaceChildren(...items);
}

function renderChart(state) {
  const section = document.getElementById("chart-section");
  section.hidden = state.source !== "gateway";
  if (section.hidden) return;
  const canvas = document.getElementById("chart");
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 900;
  const height = canvas.clientHeight || 180;
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  const ctx = canvas.getContext("2d");
  ctx.scale(ratio, ratio);
  ctx.clearRect(0, 0, width, height);
  const left = 40, bottom = height - 18, top = 8, right = width - 8;
  // From the oldest reading (at most CHART_SECONDS ago, at least
  // MIN_CHART_SECONDS) to now.
  const end = serverNow();
  let oldest = end;
  let max = 1;
  for (const s of state.chart) {
    for (const [t, v] of s.points) {
      max = Math.max(max, v);
      oldest = Math.min(oldest, t);
    }
  }
  const span = Math.min(CHART_SECONDS * 1000, Math.max(MIN_CHART_SECONDS * 1000, end - oldest));
  const start = end - span;
  max = Math.ceil(max * 1.1);
  ctx.strokeStyle = "#ccd";
  ctx.fillStyle = "#556";
  ctx.font = "11px sans-serif";
  ctx.beginPath();
  ctx.moveTo(left, top); ctx.lineTo(left, bottom); ctx.lineTo(right, bottom);
  ctx.stroke();
  ctx.fillText(String(max), 4, top + 10);
  ctx.fillText("0", 4, bottom);
  ctx.fillText("-" + Math.round(span / 1000) + " s", left, height - 4);
  ctx.fillText("now", right - 22, height - 4);
  const x = (t) => left + ((t - start) / (end - start)) * (right - left);
  const y = (v) => bottom - (v / max) * (bottom - top);
  const legend = [];
  state.chart.forEach((series, n) => {
    const color = COLORS[n % COLORS.length];
    ctx.strokeStyle = color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    let first = true;
    for (const [t, v] of series.points) {
      if (t < start) continue;
      if (first) ctx.moveTo(x(t), y(v)); else ctx.lineTo(x(t), y(v));
      first = false;
    }
    ctx.stroke();
    const li = el("li");
    const swatch = el("span", "swatch");
    swatch.style.background = color;
    li.append(swatch, el("span", null, series.label));
    legend.push(li);
  });
  document.getElementById("legend").replaceChildren(...legend);
}

function render(state) {
  last = state;
  renderHeader(state);
  renderServices(state);
  renderDetails(state);
  renderTimeline(state);
  renderChart(state);
}

function connect() {
  const connection = document.getElementById("connection");
  const source = new EventSource("/ui/events");
  source.addEventListener("state", (message) => {
    const state = JSON.parse(message.data);
    clockOffset = Date.now() - state.generated_unix_ms;
    setBadge(connection, "live", "live");
    render(state);
  });
  source.onerror = () => {
    // EventSource reconnects by itself; say so meanwhile.
    setBadge(connection, "lost", "reconnecting");
  };
}

// Durations ("stale for 3 s") move on between events.
setInterval(() => { if (last) renderHeader(last); }, 1000);
connect();
