// personalive-trt live page: camera -> WebSocket (binary JPEG) -> animated JPEG back, with a HUD.
// Plain browser JavaScript, no build step. Protocol: see personalive_trt/web/session.py.
// The page opens its WebSocket when the user presses Start and closes it on Stop: an open socket holds an
// animation slot (under Ray, one of a replica's request slots), so a page that is not animating holds none.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  ws: null, wsReady: null, hello: null,
  referenceId: null, camera: null, running: false, preparing: false,  // preparing: the portrait is being fused
  fps: 30, timer: null, grabbing: false,
  sent: 0, grabTimes: new Map(),     // binary message number -> performance.now() at grab
  pendingMeta: null, metaByUrl: new Map(), shownUrl: null,
  shown: [], frames: 0, g2g: null, clientDropped: 0, serverDropped: 0, malformed: 0, step: null,
};
const DECODERS = { full: "full (SD VAE)", tiny: "tiny (TAESD)" };  // hello.vae -> HUD text
window.__hud = { frames: 0, fps: 0, g2g: null, step: null, vae: null };  // read by the browser test

function setStatus(text, kind = "idle") {
  const el = $("status");
  el.textContent = text;
  el.dataset.state = kind;
}

function updateHud() {
  const now = performance.now();
  state.shown = state.shown.filter((t) => now - t < 2000);
  const fps = state.shown.length > 2 ? (state.shown.length - 1) / ((state.shown.at(-1) - state.shown[0]) / 1000) : 0;
  $("hud-fps").textContent = fps.toFixed(1);
  $("hud-step").textContent = state.step == null ? "–" : Math.round(state.step);
  $("hud-g2g").textContent = state.g2g == null ? "–" : Math.round(state.g2g);
  $("hud-dropped").textContent = state.serverDropped + state.clientDropped;
  $("hud-malformed").textContent = state.malformed;
  $("hud-frames").textContent = state.frames;
  Object.assign(window.__hud, { frames: state.frames, fps, g2g: state.g2g, step: state.step });
}

// This session's own MJPEG address (from `started`); none while no session runs: the old one stops working.
function showMjpeg(path) {
  const link = $("mjpeg-link");
  link.hidden = !path;
  $("mjpeg-none").hidden = Boolean(path);
  link.href = path || "";
  link.textContent = path ? `${location.origin}${path}` : "";
}

function refreshButtons() {
  $("start").disabled = state.running || !state.referenceId || !state.camera;
  $("stop").disabled = !state.running;
}

// ------------------------------------------------------------------------------------------ WebSocket
function connect() {
  if (state.ws && state.ws.readyState <= WebSocket.OPEN) return state.wsReady;
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/api/ws`;
  const ws = new WebSocket(url);
  ws.binaryType = "blob";
  ws.opened = false;
  state.ws = ws;
  state.sent = 0;  // the server numbers this connection's binary messages from 0
  state.grabTimes.clear();
  state.wsReady = new Promise((resolve, reject) => {
    ws.onopen = () => { ws.opened = true; resolve(ws); };
    ws.onerror = () => reject(new Error("WebSocket error"));
  });
  ws.onmessage = (event) => {
    if (typeof event.data === "string") onMessage(JSON.parse(event.data));
    else showFrame(event.data);
  };
  ws.onclose = (event) => {
    if (ws !== state.ws) return;  // an older socket closing after Stop
    stopSending();
    state.running = false;
    state.ws = null;
    showMjpeg(null);
    refreshButtons();
    if (!ws.opened) return;  // a refused handshake: the Start handler says why
    if (event.code === 1000) setStatus(`stopped${event.reason ? ": " + event.reason : ""}`);
    else if (event.code === 1013 || event.code === 4408) setStatus(event.reason || "try again later", "error");
    else if (event.code === 1006) setStatus("connection lost: the server (or its animator replica) went away; "
                                            + "press Start to try again", "error");
    else setStatus(`disconnected${event.reason ? ": " + event.reason : ""}`, "error");
  };
  return state.wsReady;
}

function send(payload) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(payload));
}

function onMessage(msg) {
  switch (msg.type) {
    case "hello":
      state.hello = msg;
      $("hud-vae").textContent = DECODERS[msg.vae] || msg.vae || "–";  // the animator's per-step decoder
      window.__hud.vae = msg.vae || null;
      $("animator").textContent = `animator: ${msg.animator} · ${msg.resolution}px · sessions ${msg.sessions_active}/${msg.max_sessions}`;
      setStatus("connected");
      break;
    case "started":
      state.running = true;
      showMjpeg(msg.mjpeg);
      refreshButtons();
      startSending();
      state.preparing = true;  // frames sent until stats say ready are dropped as stale (the HUD counts them)
      setStatus("preparing the portrait…", "running");
      break;
    case "swapped":
      state.preparing = true;
      setStatus("reference swapped: preparing the portrait…", "running");
      break;
    case "stopped": showMjpeg(null); setStatus("stopped"); break;
    case "frame": state.pendingMeta = msg; break;
    case "stats":
      state.step = msg.step_ms;
      state.serverDropped = (msg.dropped_input || 0) + (msg.dropped_output || 0);
      state.malformed = msg.malformed || 0;
      if (state.preparing && msg.ready && state.running) {
        state.preparing = false;
        setStatus("running (the first frames take a few steps)", "running");
      }
      updateHud();
      break;
    case "error":
      setStatus(msg.message || msg.code, "error");
      if (["busy", "animation_failed", "malformed_frames", "idle"].includes(msg.code)) {
        stopSending();
        state.running = false;
        showMjpeg(null);
        const ws = state.ws;
        state.ws = null;  // its close event must not replace this message
        if (ws) ws.close(1000);  // a page that is not animating holds no slot
        refreshButtons();
      }
      break;
  }
}

function showFrame(blob) {
  const meta = state.pendingMeta;
  state.pendingMeta = null;
  const url = URL.createObjectURL(blob);
  state.metaByUrl.set(url, meta);
  $("output").src = url;
}

$("output").addEventListener("load", () => {
  const img = $("output");
  const url = img.src;
  const meta = state.metaByUrl.get(url);
  state.metaByUrl.delete(url);
  if (state.shownUrl && state.shownUrl !== url) URL.revokeObjectURL(state.shownUrl);
  state.shownUrl = url;
  for (const [u] of state.metaByUrl) { URL.revokeObjectURL(u); state.metaByUrl.delete(u); }  // skipped frames
  const now = performance.now();
  if (meta && state.grabTimes.has(meta.index)) state.g2g = now - state.grabTimes.get(meta.index);
  if (meta) for (const k of state.grabTimes.keys()) { if (k <= meta.index) state.grabTimes.delete(k); else break; }
  state.frames += 1;
  state.shown.push(now);
  updateHud();
});

// ------------------------------------------------------------------------------------------ camera
async function listCameras() {
  const select = $("camera-select");
  try {
    const probe = await navigator.mediaDevices.getUserMedia({ video: true });  // labels need permission
    probe.getTracks().forEach((t) => t.stop());
  } catch (err) {
    setStatus(`camera unavailable: ${err.message}`, "error");
    return;
  }
  const devices = (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === "videoinput");
  select.innerHTML = "";
  devices.forEach((d, i) => select.add(new Option(d.label || `camera ${i + 1}`, d.deviceId)));
  if (devices.length) await openCamera(devices[0].deviceId);
  else setStatus("no camera found", "error");
}

async function openCamera(deviceId) {
  if (state.camera) state.camera.getTracks().forEach((t) => t.stop());
  state.camera = await navigator.mediaDevices.getUserMedia({
    video: { deviceId: deviceId ? { exact: deviceId } : undefined, width: { ideal: 640 }, height: { ideal: 480 } },
  });
  $("camera").srcObject = state.camera;
  refreshButtons();
}

// ------------------------------------------------------------------------------------------ sending
function startSending() {
  stopSending();
  state.timer = setInterval(grabAndSend, 1000 / state.fps);
}

function stopSending() {
  if (state.timer) clearInterval(state.timer);
  state.timer = null;
}

function grabAndSend() {
  const ws = state.ws, video = $("camera");
  if (!state.running || !ws || ws.readyState !== WebSocket.OPEN || video.videoWidth === 0) return;
  // Latest-frame-wins on this side too: skip a tick rather than queue behind a slow encode or socket.
  if (state.grabbing || ws.bufferedAmount > 1_000_000) { state.clientDropped += 1; return; }
  state.grabbing = true;
  const canvas = $("grab");
  const scale = Math.min(1, 640 / Math.max(video.videoWidth, video.videoHeight));
  canvas.width = Math.round(video.videoWidth * scale);
  canvas.height = Math.round(video.videoHeight * scale);
  canvas.getContext("2d").drawImage(video, 0, 0, canvas.width, canvas.height);
  const grabbedAt = performance.now();
  canvas.toBlob((blob) => {
    state.grabbing = false;
    if (!blob || !state.running || ws.readyState !== WebSocket.OPEN || ws !== state.ws) return;
    state.grabTimes.set(state.sent, grabbedAt);
    state.sent += 1;
    ws.send(blob);
  }, "image/jpeg", 0.85);
}

// ------------------------------------------------------------------------------------------ reference
async function uploadReference(blob, name) {
  setStatus("uploading reference…");
  const form = new FormData();
  form.append("file", blob, name);
  const response = await fetch("/api/reference", { method: "POST", body: form });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    setStatus(`reference rejected: ${body.error || response.statusText}`, "error");
    return;
  }
  state.referenceId = body.id;
  const preview = $("reference-preview");
  preview.src = `/api/reference/${body.id}.jpg`;
  preview.hidden = false;
  if (state.running) send({ type: "swap", reference: body.id });
  else setStatus("reference ready");
  refreshButtons();
}

$("reference-input").addEventListener("change", (event) => {
  const file = event.target.files[0];
  if (file) uploadReference(file, file.name);
});
$("use-sample").addEventListener("click", async () => {
  const response = await fetch("/api/sample-reference");
  uploadReference(await response.blob(), "sample.png");
});
$("camera-select").addEventListener("change", (event) => openCamera(event.target.value));
$("fps-input").addEventListener("change", (event) => {
  const fps = Math.max(1, Math.min(60, Number(event.target.value) || 30));
  event.target.value = fps;
  state.fps = fps;
  send({ type: "fps", fps });
  if (state.running) startSending();
});
// A refused handshake carries no reason the page can read; the health check says whether the server is up and
// every slot taken (busy) or the server is unreachable.
async function explainRefusal() {
  try {
    const health = await (await fetch("/api/health")).json();
    if (health.sessions_active >= health.max_sessions) {
      setStatus(`busy: all ${health.max_sessions} animation slot(s) are in use; try again later`, "error");
    } else {
      setStatus("the server refused the connection; try again", "error");
    }
  } catch (err) {
    setStatus("cannot connect to the server", "error");
  }
}

async function showServer() {
  try {
    const health = await (await fetch("/api/health")).json();
    if (health.animator) {
      $("animator").textContent = `animator: ${health.animator} · ${health.resolution}px · sessions ${health.sessions_active}/${health.max_sessions}`;
    }
  } catch (err) {
    setStatus("cannot connect to the server", "error");
  }
}

$("start").addEventListener("click", async () => {
  setStatus("connecting…");
  try {
    await connect();
  } catch (err) {
    state.ws = null;
    await explainRefusal();
    return;
  }
  state.fps = Math.max(1, Math.min(60, Number($("fps-input").value) || 30));
  send({ type: "start", reference: state.referenceId, fps: state.fps });
  setStatus("starting…");
});
$("stop").addEventListener("click", () => {
  stopSending();
  send({ type: "stop" });
  if (state.ws) state.ws.close(1000, "stopped");  // frees the slot at once
  state.ws = null;
  state.running = false;
  showMjpeg(null);
  refreshButtons();
  setStatus("stopped");
});

showServer();
listCameras();
refreshButtons();
