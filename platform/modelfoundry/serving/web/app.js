// The demo page: plain JavaScript over the service's public REST API (/v1/models...), no build
// step and nothing fetched from elsewhere. The model's metadata picks the panel: a drawing pad
// for image classifiers, samples and a latent walk for the VAE, a forecast plot for regressors,
// streamed generation for language models, a JSON form for anything else.
"use strict";

const $ = (id) => document.getElementById(id);
const BASE = document.body.dataset.base; // the app's route prefix, ending in "/"
let meta = null;

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

function show(text, kind = "error") { $("message").textContent = text; $("message").className = text ? kind : ""; }

function headers(extra = {}) {
  const key = $("key").value.trim();
  return key ? { ...extra, "X-API-Key": key } : extra;
}

async function api(path, init = {}) {
  let r;
  try {
    r = await fetch(path, { ...init, headers: headers(init.headers || {}) });
  } catch (err) {
    throw new ApiError(0, `cannot reach the service (${err.message})`);
  }
  if (!r.ok) {
    let text = r.statusText;
    try { text = (await r.json()).error || text; } catch (_) { /* not JSON */ }
    throw new ApiError(r.status, text);
  }
  return r;
}

function explain(err) {
  if (err.status === 401) return "This service needs an API key: enter it above and press Use key.";
  if (err.status === 403) return "The API key was not accepted.";
  return err.status ? `The service answered ${err.status}: ${err.message}` : err.message;
}

// a multiplexed app serves several models: the one picked in the list
const target = () => (meta.kind === "multiplex" ? $("model-select").value : meta.name);
const verb = (v) => `${BASE}v1/models/${encodeURIComponent(target())}:${v}`;
const postJSON = (v, body) => api(verb(v), { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });

async function connect() {
  show("");
  try {
    meta = (await (await api(`${BASE}v1/models`)).json()).models[0];
  } catch (err) {
    show(explain(err));
    return;
  }
  sessionStorage.setItem("mf-key", $("key").value.trim());
  $("model-name").textContent = `${meta.name} v${meta.version}`;
  const metrics = Object.entries(meta.metrics || {}).filter(([k, v]) => k.startsWith("test_") && typeof v === "number")
    .map(([k, v]) => `${k} ${v.toFixed(4)}`).join(", ");
  $("model-info").textContent = `${meta.family} ${meta.task} (${meta.kind})${metrics ? "; " + metrics : ""}`;
  $("model-pick").hidden = meta.kind !== "multiplex";
  if (meta.kind === "multiplex") {
    $("model-select").replaceChildren(...meta.members.map((m) => new Option(m, m)));
    $("model-name").textContent = `${meta.name} (${meta.members.length} models)`;
  }
  for (const s of document.querySelectorAll("section")) s.hidden = true;
  const shape = meta.input_spec.shape;
  if (meta.verbs.includes("generate")) return startGenerate();
  if (meta.verbs.includes("sample")) return startVae();
  if (meta.task === "classification" && shape.length === 3 && shape[0] === 1) return startDraw();
  if (meta.task === "regression" && (shape.length === 1 || (shape.length === 2 && shape[1] === 1))) return startForecast();
  return startJson();
}

// ---- classifiers of one-channel images: draw, send the canvas as a PNG
function startDraw() {
  $("panel-draw").hidden = false;
  const pad = $("pad"), ctx = pad.getContext("2d");
  const clear = () => { ctx.fillStyle = "#000"; ctx.fillRect(0, 0, pad.width, pad.height); };
  clear();
  let last = null;
  const at = (e) => { const b = pad.getBoundingClientRect(); return [(e.clientX - b.left) * pad.width / b.width, (e.clientY - b.top) * pad.height / b.height]; };
  pad.onpointerdown = (e) => { pad.setPointerCapture(e.pointerId); last = at(e); stroke(last, last); };
  pad.onpointermove = (e) => { if (!last) return; const p = at(e); stroke(last, p); last = p; };
  pad.onpointerup = () => { if (last) { last = null; predictDrawing(); } };
  function stroke(a, b) {
    ctx.strokeStyle = "#fff"; ctx.lineWidth = pad.width / 12; ctx.lineCap = "round"; ctx.lineJoin = "round";
    ctx.beginPath(); ctx.moveTo(...a); ctx.lineTo(...b); ctx.stroke();
  }
  $("clear").onclick = () => {
    clear(); $("prediction").textContent = "-"; $("confidence").textContent = ""; $("bars").replaceChildren();
    $("explanation").hidden = true; show("");
  };
  $("predict").onclick = predictDrawing;
  $("explain").hidden = !meta.verbs.includes("explain");
  $("explain").onclick = explainDrawing;
}

// :explain on the drawing (Integrated Gradients): which pixels raised the predicted class's score
// (red) and which lowered it (blue), over the drawing
async function explainDrawing() {
  const answer = await postDrawing("explain");
  if (!answer) return;
  const e = answer.explanations[0];
  overlay($("saliency"), $("pad"), e.attributions[0]); // (1, H, W) -> (H, W)
  $("saliency").dataset.target = e.target;
  $("explained").textContent = `Why ${e.target}: red pixels raised its score, blue lowered it (delta ${e.delta.toFixed(3)}).`;
  $("explanation").hidden = false;
}

function overlay(canvas, under, rows) {
  const ctx = canvas.getContext("2d"), h = rows.length, w = rows[0].length;
  const top = Math.max(1e-12, ...rows.flat().map(Math.abs));
  ctx.drawImage(under, 0, 0, canvas.width, canvas.height);
  ctx.fillStyle = "rgba(0, 0, 0, 0.6)"; ctx.fillRect(0, 0, canvas.width, canvas.height);
  const cw = canvas.width / w, ch = canvas.height / h;
  rows.forEach((row, y) => row.forEach((v, x) => {
    const a = (0.9 * Math.abs(v)) / top;
    ctx.fillStyle = v > 0 ? `rgba(255, 64, 64, ${a})` : `rgba(64, 128, 255, ${a})`;
    ctx.fillRect(x * cw, y * ch, cw, ch);
  }));
}

function canvasEmpty(canvas) {
  const px = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  for (let i = 0; i < px.length; i += 4) if (px[i] > 0) return false;
  return true;
}

// the drawing sent as a PNG to verb `v`: its JSON answer, or null with the reason shown (nothing
// drawn: nothing sent)
async function postDrawing(v) {
  const pad = $("pad");
  if (canvasEmpty(pad)) { show("The canvas is empty: draw a digit first."); return null; }
  const png = await (await new Promise((done) => pad.toBlob(done, "image/png"))).arrayBuffer();
  try {
    const r = await api(verb(v), { method: "POST", headers: { "content-type": "image/png" }, body: png });
    const answer = await r.json();
    show("");
    return answer;
  } catch (err) { show(explain(err)); return null; }
}

async function predictDrawing() {
  const answer = await postDrawing("predict");
  if (!answer) return;
  const p = answer.predictions[0];
  $("prediction").textContent = String(p.class);
  $("confidence").textContent = `(${(100 * p.probabilities[p.class]).toFixed(1)}%)`;
  bars($("bars"), p.probabilities, p.class);
}

function bars(box, probs, top) {
  box.replaceChildren(...probs.map((v, k) => {
    const row = document.createElement("div");
    row.className = k === top ? "bar top" : "bar";
    row.dataset.class = k; row.dataset.p = v;
    row.innerHTML = `<span class="label">${k}</span><span class="fill" style="width:${Math.max(1, 240 * v)}px"></span><span class="value">${(100 * v).toFixed(1)}%</span>`;
    return row;
  }));
}

// ---- VAE: a grid of samples (the :sample verb's PNG) and decoded points of the latent space
function startVae() {
  $("panel-vae").hidden = false;
  let seed = 0;
  $("sample").onclick = async () => {
    try {
      const r = await postJSON("sample", { n: 16, seed: seed++, format: "png" });
      const img = $("samples");
      if (img.src) URL.revokeObjectURL(img.src);
      img.src = URL.createObjectURL(await r.blob());
      show("");
    } catch (err) { show(explain(err)); }
  };
  const dims = meta.latent_dim;
  const box = $("sliders");
  box.replaceChildren();
  const z = new Array(dims).fill(0);
  for (let i = 0; i < Math.min(dims, 8); i++) {
    const label = document.createElement("label");
    label.innerHTML = `z<sub>${i}</sub> <input type="range" min="-3" max="3" step="0.1" value="0" data-dim="${i}"> <output>0.0</output>`;
    const input = label.querySelector("input");
    input.oninput = () => { z[i] = Number(input.value); label.querySelector("output").textContent = z[i].toFixed(1); decode(z); };
    box.append(label);
  }
  $("sample").onclick();
  decode(z);
}

let decoding = null, pendingZ = null;
async function decode(z) {
  if (decoding) { pendingZ = [...z]; return; } // one call at a time; the latest slider position wins
  decoding = postJSON("decode", { instances: [z] });
  try {
    const img = (await (await decoding).json()).predictions[0][0]; // (1, H, W) -> (H, W)
    drawGray($("decoded"), img);
    $("decoded").dataset.z = JSON.stringify(z);
    show("");
  } catch (err) { show(explain(err)); }
  decoding = null;
  if (pendingZ) { const next = pendingZ; pendingZ = null; decode(next); }
}

function drawGray(canvas, rows) {
  const h = rows.length, w = rows[0].length, ctx = canvas.getContext("2d");
  const img = ctx.createImageData(w, h);
  rows.flat().forEach((v, i) => { const c = Math.round(255 * v); img.data.set([c, c, c, 255], 4 * i); });
  const tmp = document.createElement("canvas"); tmp.width = w; tmp.height = h;
  tmp.getContext("2d").putImageData(img, 0, 0);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(tmp, 0, 0, canvas.width, canvas.height);
}

// ---- regressors of a univariate window: forecast step by step, each prediction fed back
function startForecast() {
  $("panel-forecast").hidden = false;
  const t = meta.input_spec.shape[0];
  if (!$("history").value) $("history").value = Array.from({ length: t }, (_, i) => (60 + 50 * Math.sin(i / 4)).toFixed(1)).join(", ");
  $("forecast").onclick = forecast;
}

async function forecast() {
  const t = meta.input_spec.shape[0];
  const history = $("history").value.split(/[\s,]+/).filter((s) => s !== "").map(Number);
  if (history.some((v) => !Number.isFinite(v))) { show("History must be numbers separated by commas."); return; }
  if (history.length < t) { show(`History needs at least ${t} values (the model's window); it has ${history.length}.`); return; }
  const steps = Number($("horizon").value);
  if (!Number.isInteger(steps) || steps < 1 || steps > 100) { show("Steps ahead must be a whole number from 1 to 100."); return; }
  const series = [...history], ahead = [];
  try {
    for (let s = 0; s < steps; s++) {
      const window = series.slice(-t).map((v) => (meta.input_spec.shape.length === 2 ? [v] : v));
      const y = (await (await postJSON("predict", { instances: [window] })).json()).predictions[0];
      ahead.push(y); series.push(y);
    }
  } catch (err) { show(explain(err)); return; }
  show("");
  $("forecast-values").textContent = ahead.map((v) => v.toFixed(2)).join(", ");
  plot($("plot"), history, ahead);
}

function plot(canvas, history, ahead) {
  const ctx = canvas.getContext("2d"), all = [...history, ...ahead], pad = 30;
  const lo = Math.min(...all), hi = Math.max(...all), span = hi - lo || 1;
  const x = (i) => pad + (i * (canvas.width - 2 * pad)) / Math.max(1, all.length - 1);
  const y = (v) => canvas.height - pad - ((v - lo) * (canvas.height - 2 * pad)) / span;
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.fillStyle = "#555"; ctx.font = "12px sans-serif";
  ctx.fillText(hi.toFixed(1), 2, pad - 6); ctx.fillText(lo.toFixed(1), 2, canvas.height - 8);
  const line = (points, start, color) => {
    ctx.strokeStyle = color; ctx.lineWidth = 2; ctx.beginPath();
    points.forEach((v, i) => (i ? ctx.lineTo(x(start + i), y(v)) : ctx.moveTo(x(start + i), y(v))));
    ctx.stroke();
  };
  line(history, 0, "#3b7dd8");
  line([history[history.length - 1], ...ahead], history.length - 1, "#d8663b");
}

// ---- language models: the :generate verb's JSON lines, shown as they arrive
let controller = null;
function startGenerate() {
  $("panel-generate").hidden = false;
  const g = meta.generate || {};
  $("max-new").max = g.max_new_tokens || 1024;
  $("generate").onclick = generate;
  $("stop").onclick = () => controller && controller.abort();
}

async function generate() {
  const prompt = $("prompt").value;
  if (!prompt) { show("Write a prompt first."); return; }
  const out = $("generated");
  out.textContent = prompt; out.dataset.chunks = "0"; out.dataset.done = "false";
  controller = new AbortController();
  $("generate").disabled = true; $("stop").disabled = false;
  try {
    const body = { prompt, max_new_tokens: Number($("max-new").value), temperature: Number($("temperature").value), stream: true };
    const r = await api(verb("generate"), { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body), signal: controller.signal });
    const reader = r.body.getReader(), text = new TextDecoder();
    let buffer = "";
    show("");
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      out.dataset.chunks = String(Number(out.dataset.chunks) + 1);
      buffer += text.decode(value, { stream: true });
      const lines = buffer.split("\n");
      buffer = lines.pop();
      for (const l of lines.filter(Boolean)) {
        const msg = JSON.parse(l);
        if (msg.error) throw new ApiError(0, msg.error);
        if (msg.done) { out.dataset.done = "true"; out.dataset.text = msg.text; }
        else out.textContent += msg.token;
      }
    }
  } catch (err) {
    if (err.name === "AbortError") show("Stopped.", "info");
    else show(explain(err));
  } finally {
    $("generate").disabled = false; $("stop").disabled = true; controller = null;
  }
}

// ---- anything else: instances as JSON
function startJson() {
  $("panel-json").hidden = false;
  $("predict-json").onclick = async () => {
    let instances;
    try { instances = JSON.parse($("instances").value); } catch (err) { show(`Instances are not valid JSON: ${err.message}`); return; }
    try {
      const r = await postJSON("predict", { instances });
      $("json-out").textContent = JSON.stringify((await r.json()).predictions, null, 1);
      show("");
    } catch (err) { show(explain(err)); }
  };
}

$("key").value = sessionStorage.getItem("mf-key") || "";
$("key-apply").onclick = connect;
$("key").onkeydown = (e) => { if (e.key === "Enter") connect(); };
connect();
