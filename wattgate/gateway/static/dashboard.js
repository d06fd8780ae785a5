// wattgate dashboard: polls /dashboard/data every second and draws plain-canvas charts (no libraries).
"use strict";

const COLORS = { total: "#d62728", baseline: "#7f7f7f", rps: "#1f77b4", slo: "#2ca02c", sloMiss: "#ff7f0e" };
const NODE_COLORS = ["#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#393b79"];

function fmt(x, digits) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  return Number(x).toLocaleString("en-US", { maximumFractionDigits: digits ?? 0 });
}

function esc(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function setupCanvas(canvas) {
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || canvas.width;
  const h = canvas.clientHeight || canvas.height;
  canvas.width = w * ratio;
  canvas.height = h * ratio;
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, w, h);
  return { ctx, w, h };
}

function axes(ctx, w, h, ymax, unit) {
  const pad = { l: 48, r: 8, t: 8, b: 18 };
  ctx.strokeStyle = "#d5d9df";
  ctx.fillStyle = "#5a6475";
  ctx.font = "11px system-ui, sans-serif";
  ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = pad.t + ((h - pad.t - pad.b) * i) / 4;
    ctx.beginPath(); ctx.moveTo(pad.l, y); ctx.lineTo(w - pad.r, y); ctx.stroke();
    ctx.fillText(fmt(ymax * (1 - i / 4), ymax < 10 ? 1 : 0) + unit, 2, y + 4);
  }
  return pad;
}

// series: [{values: [[t, v], ...], color, width}]
function lineChart(canvas, series, unit) {
  const { ctx, w, h } = setupCanvas(canvas);
  const all = series.flatMap((s) => s.values.filter((p) => p[1] !== null));
  if (all.length === 0) { ctx.fillStyle = "#7a8494"; ctx.fillText("waiting for data…", 60, h / 2); return; }
  const t0 = Math.min(...all.map((p) => p[0])), t1 = Math.max(...all.map((p) => p[0]));
  const ymax = Math.max(1e-9, ...all.map((p) => p[1])) * 1.1;
  const pad = axes(ctx, w, h, ymax, unit);
  const x = (t) => pad.l + ((w - pad.l - pad.r) * (t - t0)) / Math.max(1, t1 - t0);
  const y = (v) => h - pad.b - ((h - pad.t - pad.b) * v) / ymax;
  ctx.fillStyle = "#5a6475";
  ctx.fillText(`last ${fmt(t1 - t0)} s`, w - 80, h - 4);
  for (const s of series) {
    ctx.strokeStyle = s.color; ctx.lineWidth = s.width || 2; ctx.setLineDash(s.dash || []);
    ctx.beginPath();
    let started = false;
    for (const [t, v] of s.values) {
      if (v === null) { started = false; continue; }
      if (started) ctx.lineTo(x(t), y(v)); else ctx.moveTo(x(t), y(v));
      started = true;
    }
    ctx.stroke();
  }
  ctx.setLineDash([]);
}

function barChart(canvas, bars) {
  const { ctx, w, h } = setupCanvas(canvas);
  if (bars.length === 0) { ctx.fillStyle = "#7a8494"; ctx.fillText("no streamed requests yet", 60, h / 2); return; }
  const pad = axes(ctx, w, h, 100, "%");
  const slot = (w - pad.l - pad.r) / bars.length;
  bars.forEach((b, i) => {
    const bh = ((h - pad.t - pad.b) * b.value) / 100;
    ctx.fillStyle = b.value >= 99 ? COLORS.slo : COLORS.sloMiss;
    ctx.fillRect(pad.l + i * slot + slot * 0.15, h - pad.b - bh, slot * 0.7, bh);
    ctx.fillStyle = "#1d2330";
    ctx.fillText(b.label, pad.l + i * slot + slot * 0.3, h - 4);
  });
}

function render(d) {
  const hist = d.history || [];
  const sources = (d.power_source || []).join(", ") || "no GPU telemetry";
  document.getElementById("power").textContent = fmt(d.power_w) + " W";
  document.getElementById("power-source").textContent = `${(d.nodes || []).length} node(s), ${sources}`;
  const e = d.energy || {};
  const pct = e.baseline_j > 0 ? (100 * e.saved_j) / e.baseline_j : null;
  document.getElementById("saved").textContent = e.baseline_j > 0 ? `${fmt(e.saved_j / 3.6e6, 3)} kWh (${fmt(pct, 1)}%)` : "–";
  const baselineName = (e.baseline || "").startsWith("the multi-pool") ? "multi-pool baseline" : "single-pool baseline";
  document.getElementById("saved-label").textContent = `energy saved vs the ${baselineName}`;
  if (e.baseline) document.getElementById("saved-note").textContent = `vs ${e.baseline}`;
  document.getElementById("rps").textContent = fmt(d.rps, 2);
  document.getElementById("requests").textContent = `${fmt(d.requests)} requests so far (measured)`;
  const models = d.models || [];
  const tokens = models.reduce((a, m) => a + m.tokens, 0);
  const joules = models.reduce((a, m) => a + m.energy_j, 0);
  document.getElementById("jpt").textContent = tokens > 0 ? `${fmt(joules / tokens, 2)} J` : "–";
  const msources = [...new Set(models.map((m) => m.source))].join(", ");
  if (models.length) document.getElementById("jpt-note").textContent = `${fmt(tokens)} tokens, ${msources}`;
  document.querySelector("#models tbody").innerHTML = models.map((m) =>
    `<tr><td>${esc(m.model)}</td><td>${esc(m.source)}</td><td>${fmt(m.energy_j / 1000, 1)}</td><td>${fmt(m.tokens)}</td>` +
    `<td>${m.j_per_token === null ? "–" : fmt(m.j_per_token, 2)}</td><td>${fmt(m.carbon_g, 2)}</td></tr>`).join("");
  const plan = d.plan;
  document.getElementById("plan").textContent = plan ? `v${plan.version}, ${plan.gpus} GPUs` : "none";
  document.getElementById("plan-note").textContent = plan
    ? `its instances ${fmt(plan.predicted_power_w)} W vs the multi-pool baseline ${fmt(plan.baseline_power_w)} W (modelled)` : "";

  const nodes = Object.keys((hist[hist.length - 1] || {}).node_power_w || {});
  const series = [{ values: hist.map((p) => [p.t, p.power_w]), color: COLORS.total, width: 3 }];
  series.push({ values: hist.map((p) => [p.t, p.baseline_power_w]), color: COLORS.baseline, dash: [5, 4] });
  nodes.forEach((n, i) => series.push({
    values: hist.map((p) => [p.t, (p.node_power_w || {})[n] ?? null]), color: NODE_COLORS[i % NODE_COLORS.length],
  }));
  lineChart(document.getElementById("chart-power"), series, "");
  const legend = [["total", COLORS.total], [`${baselineName} (modelled)`, COLORS.baseline]]
    .concat(nodes.map((n, i) => [n, NODE_COLORS[i % NODE_COLORS.length]]));
  document.getElementById("legend-power").innerHTML = legend
    .map(([n, c]) => `<span style="--c:${c}">${n}</span>`).join("");
  lineChart(document.getElementById("chart-rps"), [{ values: hist.map((p) => [p.t, p.rps]), color: COLORS.rps, width: 3 }], "");
  const bars = Object.entries(d.pools || {})
    .filter(([, p]) => p.slo_attainment !== null && p.slo_attainment !== undefined)
    .map(([name, p]) => ({ label: name, value: 100 * p.slo_attainment }));
  barChart(document.getElementById("chart-slo"), bars);

  const tbody = document.querySelector("#instances tbody");
  tbody.innerHTML = (d.instances || []).map((i) =>
    `<tr><td>${i.pool}</td><td>${i.id}</td><td>${i.node}</td><td>${i.tp}</td><td>${i.sm_clock_mhz ?? "–"}</td>` +
    `<td>${i.state}</td><td>${i.in_flight}</td></tr>`).join("");
}

async function poll() {
  try {
    const r = await fetch("/dashboard/data", { cache: "no-store" });
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    const d = await r.json();
    render(d);
    document.getElementById("status").textContent = "live · updated " + new Date(d.ts * 1000).toLocaleTimeString();
  } catch (err) {
    document.getElementById("status").textContent = "gateway unreachable: " + err.message;
  }
  setTimeout(poll, 1000);
}

poll();
