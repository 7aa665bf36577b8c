// edge-bridge console: reads only the daemon's public endpoints (the stream
// WebSocket, the dead-letter WebSocket, /api/console/*), so a script can get
// everything shown here.  The token lives in this tab's sessionStorage; every
// value from the network is put in the page as text, never as HTML.
"use strict";

const TOKEN_KEY = "edge-bridge-token";
const MAX_EVENTS = 500;
const SHOWN_ROWS = 100;
const MAX_DEAD = 100;
const CHART_POINTS = 300;
const CHART_SERIES = 6;
const HEALTH_EVERY_MS = 2000;
const COLORS = ["#0b5cad", "#c62828", "#1a7f37", "#9a6700", "#6a3d9a", "#00838f"];

const $ = (id) => document.getElementById(id);
const state = {
  token: null, claims: null, events: [], dead: [], metrics: new Map(),
  pinned: new Set(), series: new Map(), dirty: false, sockets: [], healthTimer: null,
  groups: new Map(),  // "tenant/group" -> Set of devices, from the device registry
  healthSoon: null,
};

// ------------------------------------------------------------------ sign-in
function decodeClaims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part + "===".slice((part.length + 3) % 4)));
  } catch (e) {
    return null;
  }
}

function takeTokenFromFragment() {
  // The first-run link carries the token in the fragment, which is never sent
  // to a server; move it to sessionStorage and out of the address bar.
  const match = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (match) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
}

function signIn(token) {
  state.token = token;
  state.claims = decodeClaims(token) || {};
  sessionStorage.setItem(TOKEN_KEY, token);
  $("signin").hidden = true;
  $("whoami").hidden = false;
  const c = state.claims;
  if (typeof c.exp === "number" && c.exp * 1000 <= Date.now()) {
    signOut("This token has expired: sign in with a new one (on a first run: edge-bridge sign-in-link).");
    return;
  }
  $("whoami-text").textContent = `${c.role || "?"}${c.tenant ? " · tenant " + c.tenant : ""}`;
  $("whoami").title = typeof c.exp === "number" ? `token valid until ${new Date(c.exp * 1000).toLocaleString()}` : "";
  $("try").hidden = c.role !== "admin";
  connect("/ws/telemetry/stream/", "stream-state", onTelemetry);
  connect("/ws/console/dead-letters/", "dead-state", onDeadLetter);
  loadMappings();
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  for (const ws of state.sockets) ws.close(1000);
  state.sockets = [];
  $("signin").hidden = false;
  $("whoami").hidden = true;
  $("signin-error").textContent = message || "";
}

// ------------------------------------------------------------------ sockets
function connect(path, badgeId, onMessage, delay = 1000) {
  if (!state.token) return;
  const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + path;
  const ws = new WebSocket(url, ["bearer", state.token]);
  state.sockets.push(ws);
  const badge = $(badgeId);
  ws.onopen = () => { setBadge(badge, "live", "ok"); delay = 1000; };
  ws.onmessage = (msg) => {
    let data;
    try { data = JSON.parse(msg.data); } catch (e) { return; }
    onMessage(data);
  };
  ws.onclose = (ev) => {
    state.sockets = state.sockets.filter((s) => s !== ws);
    if (ev.code === 4001 || ev.code === 4003) {
      setBadge(badge, "refused", "bad");
      signOut(`Refused (${ev.code}): ${ev.reason || "sign in again"}`);
      return;
    }
    setBadge(badge, "reconnecting", "bad");
    if (state.token) setTimeout(() => connect(path, badgeId, onMessage, Math.min(delay * 2, 15000)), delay);
  };
}

function setBadge(el, text, cls) {
  el.textContent = text;
  el.className = "badge " + (cls || "");
}

// ------------------------------------------------------------------ telemetry
function onTelemetry(msg) {
  if (msg.type !== "telemetry.update" || !msg.data) return;
  const d = msg.data;
  state.events.unshift(d);
  if (state.events.length > MAX_EVENTS) state.events.length = MAX_EVENTS;
  if (typeof d.value === "number") {
    if (!state.metrics.has(d.metric)) {
      state.metrics.set(d.metric, true);
      if (state.pinned.size === 0) state.pinned.add(d.metric);
      renderChips();
    }
    const key = d.metric;
    if (!state.series.has(key)) state.series.set(key, new Map());
    const bySeries = state.series.get(key);
    const name = `${d.tenant}/${d.device_serial_id}`;
    if (!bySeries.has(name) && bySeries.size >= CHART_SERIES) return schedule();
    if (!bySeries.has(name)) bySeries.set(name, []);
    const points = bySeries.get(name);
    points.push([Date.parse(d.ts) || Date.now(), d.value]);
    if (points.length > CHART_POINTS) points.shift();
  }
  schedule();
}

function filters() {
  const v = (id) => $(id).value.trim().toLowerCase();
  return { tenant: v("filter-tenant"), device: v("filter-device"), metric: v("filter-metric"),
    group: $("filter-group").value };
}

function inGroup(d, group) {
  // group is "tenant/name": a device of that tenant listed in that group
  const members = state.groups.get(group);
  return !!members && group.startsWith(d.tenant + "/") && members.has(d.device_serial_id);
}

function matches(d, f) {
  return (!f.group || inGroup(d, f.group))
    && (!f.tenant || String(d.tenant).toLowerCase().includes(f.tenant))
    && (!f.device || String(d.device_serial_id).toLowerCase().includes(f.device))
    && (!f.metric || String(d.metric).toLowerCase().includes(f.metric));
}

function healthSoon() {
  // Activity: look at the health again once the daemon sampled it (every second).
  if (state.healthSoon) return;
  state.healthSoon = setTimeout(() => { state.healthSoon = null; refreshHealth(); }, 1100);
}

function schedule() {
  healthSoon();
  if (state.dirty) return;
  state.dirty = true;
  setTimeout(() => { state.dirty = false; renderEvents(); renderCharts(); }, 200);
}

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

function renderEvents() {
  const f = filters();
  const body = $("events-body");
  const rows = [];
  for (const d of state.events) {
    if (!matches(d, f)) continue;
    const tr = document.createElement("tr");
    cell(tr, clock(d.ts));
    cell(tr, d.tenant);
    cell(tr, d.device_serial_id);
    cell(tr, d.metric);
    cell(tr, `${d.value}${d.unit ? " " + d.unit : ""}`);
    rows.push(tr);
    if (rows.length >= SHOWN_ROWS) break;
  }
  body.replaceChildren(...rows);
  $("events-note").textContent = state.events.length === 0 ? "Waiting for readings…"
    : `${rows.length} shown of the last ${state.events.length} readings.`;
}

function clock(iso) {
  // 2026-02-25T14:00:00.123Z -> 14:00:00.123 (UTC, as the records say)
  return typeof iso === "string" ? iso.slice(11, 23) : "";
}

function renderChips() {
  const chips = [...state.metrics.keys()].sort().map((name) => {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "chip";
    b.textContent = name;
    b.setAttribute("aria-pressed", String(state.pinned.has(name)));
    b.addEventListener("click", () => {
      if (state.pinned.has(name)) state.pinned.delete(name); else state.pinned.add(name);
      renderChips();
      renderCharts();
    });
    return b;
  });
  $("metric-chips").replaceChildren(...chips);
}

function renderCharts() {
  const holder = $("charts");
  const wanted = [...state.pinned].sort();
  const have = new Map([...holder.children].map((el) => [el.dataset.metric, el]));
  for (const [name, el] of have) if (!state.pinned.has(name)) el.remove();
  const f = filters();
  for (const name of wanted) {
    let box = have.get(name);
    if (!box) {
      box = document.createElement("figure");
      box.className = "chart";
      box.dataset.metric = name;
      const h = document.createElement("h3");
      h.textContent = name;
      const canvas = document.createElement("canvas");
      canvas.setAttribute("role", "img");
      box.append(h, canvas);
      holder.appendChild(box);
    }
    drawChart(box.querySelector("canvas"), name, f);
  }
}

function drawChart(canvas, metric, f) {
  const series = [...(state.series.get(metric) || new Map())].filter(([name]) => {
    const [tenant, device] = name.split("/");
    return matches({ tenant, device_serial_id: device, metric }, f);
  });
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 300, h = canvas.clientHeight || 120;
  canvas.width = w * ratio;
  canvas.height = h * ratio;
  const g = canvas.getContext("2d");
  g.scale(ratio, ratio);
  g.clearRect(0, 0, w, h);
  let count = 0, lo = Infinity, hi = -Infinity, t0 = Infinity, t1 = -Infinity;
  for (const [, pts] of series) for (const [t, v] of pts) {
    count++; lo = Math.min(lo, v); hi = Math.max(hi, v); t0 = Math.min(t0, t); t1 = Math.max(t1, t);
  }
  canvas.dataset.points = String(count);
  canvas.setAttribute("aria-label", `${metric}: ${count} points`);
  g.font = "11px system-ui, sans-serif";
  g.fillStyle = "#5c6675";
  if (!count) { g.fillText("no numeric readings yet", 8, h / 2); return; }
  if (hi === lo) { hi += 1; lo -= 1; }
  if (t1 === t0) { t1 += 1000; t0 -= 1000; }
  const left = 44, right = 8, top = 8, bottom = 16;
  const x = (t) => left + (t - t0) / (t1 - t0) * (w - left - right);
  const y = (v) => top + (hi - v) / (hi - lo) * (h - top - bottom);
  g.fillText(fmt(hi), 2, top + 8);
  g.fillText(fmt(lo), 2, h - bottom);
  g.strokeStyle = "#dde1e7";
  g.beginPath(); g.moveTo(left, h - bottom); g.lineTo(w - right, h - bottom); g.stroke();
  series.forEach(([name, pts], i) => {
    g.strokeStyle = g.fillStyle = COLORS[i % COLORS.length];
    g.lineWidth = 1.5;
    g.beginPath();
    pts.forEach(([t, v], j) => (j ? g.lineTo(x(t), y(v)) : g.moveTo(x(t), y(v))));
    g.stroke();
    for (const [t, v] of pts.slice(-1)) { g.beginPath(); g.arc(x(t), y(v), 2.5, 0, 7); g.fill(); }
    g.fillText(name, left + 4 + i * 110, h - 3);
  });
}

function fmt(v) {
  return Math.abs(v) >= 1000 ? v.toExponential(1) : String(Math.round(v * 100) / 100);
}

// ------------------------------------------------------------------ dead letters
function onDeadLetter(msg) {
  if (msg.type !== "dead_letter") return;
  healthSoon();
  state.dead.unshift(msg);
  if (state.dead.length > MAX_DEAD) state.dead.length = MAX_DEAD;
  const rows = state.dead.map((d) => {
    const tr = document.createElement("tr");
    tr.title = `from ${d.source}`;
    cell(tr, clock(d.received_at));
    cell(tr, d.reason + (d.metric ? ` (${d.metric})` : ""));
    cell(tr, d.detail, "wrap");
    cell(tr, d.mqtt_topic, "mono");
    const shownPayload = d.payload_encoding === "base64" ? `base64: ${d.payload}` : d.payload;
    cell(tr, shownPayload + (d.payload_truncated ? " …" : ""), "wrap mono");
    return tr;
  });
  $("dead-body").replaceChildren(...rows);
  $("dead-note").textContent = `${state.dead.length} shown (newest first).`;
}

// ------------------------------------------------------------------ JSON endpoints
async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (state.token) headers.Authorization = "Bearer " + state.token;
  const response = await fetch(path, Object.assign({}, options, { headers, cache: "no-store" }));
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  return { status: response.status, body };
}

async function loadMappings() {
  const { status, body } = await api("/api/console/mappings");
  if (status !== 200 || !body) return;
  const rows = body.mappings.map((m) => {
    const tr = document.createElement("tr");
    cell(tr, m.name);
    cell(tr, m.mqtt_filter, "brk mono");
    const k = m.kafka;
    cell(tr, `clean: ${k.clean} · raw: ${k.raw || "off"} · dead letters: ${k.dead_letter}`, "brk mono");
    cell(tr, m.key, "brk mono");
    return tr;
  });
  $("mappings-body").replaceChildren(...rows);
  state.groups = new Map();
  const options = [new Option("all", "")];
  for (const [tenant, groups] of Object.entries(body.groups || {})) {
    for (const [group, devices] of Object.entries(groups)) {
      state.groups.set(`${tenant}/${group}`, new Set(devices));
      options.push(new Option(`${group} (${tenant})`, `${tenant}/${group}`));
    }
  }
  $("filter-group").replaceChildren(...options);
  $("filter-group-label").hidden = state.groups.size === 0;
}

function seconds(value) {
  return value < 60 ? `${value.toFixed(0)} s` : `${(value / 60).toFixed(1)} min`;
}

function pill(id, label, value, good, bad) {
  const el = $(id);
  el.textContent = `${label}: ${value}`;
  el.className = "pill " + (good ? "ok" : bad ? "bad" : "warn");
}

async function refreshHealth() {
  let result;
  try { result = await api("/api/console/health"); } catch (e) { result = null; }
  if (!result || !result.body) {
    pill("pill-mqtt", "Bridge", "unreachable", false, true);
    return;
  }
  const h = result.body;
  pill("pill-mqtt", "MQTT", h.mqtt, h.mqtt === "connected", h.mqtt !== "connected");
  pill("pill-kafka", "Kafka", h.kafka, h.kafka === "up", h.kafka === "down");
  const waiting = h.spool.records || 0;
  pill("pill-spool", "Spool", `${waiting} record${waiting === 1 ? "" : "s"} waiting`, waiting === 0, false);
  const r = h.rates;
  $("h-in").textContent = `${r.messages_in_per_s} msg/s`;
  $("h-out").textContent = `${r.records_out_per_s} rec/s`;
  $("h-dead").textContent = `${r.dead_letters_per_s} /s`;
  $("h-waiting").textContent = `${h.in_flight_messages} msgs`;
  $("h-ack").textContent = h.kafka_ack_wait_s === null ? "nothing waits" : seconds(h.kafka_ack_wait_s);
  $("h-spool").textContent = h.spool.records === null ? "off" : `${h.spool.state}, ${h.spool.records} records`;
  $("h-oldest").textContent = h.spool.oldest_record_age_s === null ? "–" : seconds(h.spool.oldest_record_age_s);
  $("h-stream").textContent = `${h.stream.connections} conn. (${h.stream.source})`;
  setBadge($("ready"), h.status === "ready" ? "ready" : "not ready", h.status === "ready" ? "ok" : "bad");
  $("reasons").replaceChildren(...h.reasons.map((text) => {
    const li = document.createElement("li");
    li.textContent = text;
    return li;
  }));
}

// ------------------------------------------------------------------ try a payload
async function tryPayload(event) {
  event.preventDefault();
  const out = $("try-result");
  const topic = $("try-topic").value;
  const { status, body } = await api("/api/console/try?topic=" + encodeURIComponent(topic), {
    method: "POST", body: $("try-payload").value,
  });
  const parts = [];
  const line = (tag, text, cls) => {
    const el = document.createElement(tag);
    el.textContent = text;
    if (cls) el.className = cls;
    parts.push(el);
    return el;
  };
  if (status !== 200 || !body) {
    line("p", `Refused (${status}): ${body ? body.message : "no answer"}`, "error");
  } else if (body.mapping === null) {
    line("p", `No mapping matches topic ${topic}.`, "error");
  } else {
    const dead = body.dead_letters.length;
    line("p", `Mapping ${body.mapping}: ${body.records.length} record(s)` +
      (dead ? `, ${dead} dead letter(s): ${body.dead_letters.join(", ")}` : "") +
      (body.duplicate ? " (duplicate)" : ""));
    for (const r of body.records) {
      const isDead = r.value && typeof r.value === "object" && "reason" in r.value && "mqtt_topic" in r.value;
      const box = document.createElement("div");
      box.className = "record" + (isDead ? " dead" : "");
      const h = document.createElement("h3");
      h.textContent = `${r.topic}  key ${r.key}`;
      const pre = document.createElement("pre");
      pre.textContent = typeof r.value === "string" ? r.value : JSON.stringify(r.value, null, 2);
      box.append(h, pre);
      parts.push(box);
    }
  }
  out.replaceChildren(...parts);
}

// ------------------------------------------------------------------ start
function start() {
  takeTokenFromFragment();
  $("signin-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token-input").value.trim();
    $("token-input").value = "";
    if (token) signIn(token);
  });
  $("signout").addEventListener("click", () => signOut(""));
  $("try-form").addEventListener("submit", tryPayload);
  for (const id of ["filter-tenant", "filter-device", "filter-metric", "filter-group"]) {
    $(id).addEventListener("input", () => { renderEvents(); renderCharts(); });
  }
  window.addEventListener("resize", () => renderCharts());
  refreshHealth();
  state.healthTimer = setInterval(refreshHealth, HEALTH_EVERY_MS);
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) signIn(token); else signOut("");
}

document.addEventListener("DOMContentLoaded", start);
