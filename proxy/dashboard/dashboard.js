// comfygate's fleet dashboard. It reads the /stats document from the
// server-sent event stream at /dashboard/events (one document a second, and
// at once on a drain or a health change; first, a "viewer" event says
// whether the drain buttons work for this reader) and draws it. Prompt rates come
// from the document's recent steps (the last 10 minutes, kept by the
// server); the request rate from the difference of successive documents.
// Every value is written as text, never as HTML.
"use strict";
(function () {
  // A key given as ?token= is kept in memory only, sent with the stream and
  // the admin calls, and taken out of the address bar.
  const params = new URLSearchParams(location.search);
  const token = params.get("token") || "";
  if (token) {
    params.delete("token");
    const q = params.toString();
    history.replaceState(null, "", location.pathname + (q ? "?" + q : "") + location.hash);
  }

  const $ = (id) => document.getElementById(id);
  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else if (k === "style") e.style.cssText = v;
      else e.setAttribute(k, v === true ? "" : v);
    }
    for (const c of kids.flat()) {
      if (c !== undefined && c !== null && c !== false) e.append(c instanceof Node ? c : String(c));
    }
    return e;
  }
  const fmt = (n, d = 0) => (Number.isFinite(n) ? n.toLocaleString(undefined, { maximumFractionDigits: d }) : "–");
  function dur(ms) {
    if (!ms) return "–";
    if (ms < 1000) return fmt(ms) + " ms";
    const s = ms / 1000;
    return s < 120 ? fmt(s, 1) + " s" : fmt(s / 60, 1) + " min";
  }
  function ago(sec) {
    if (sec < 60) return fmt(sec) + " s";
    if (sec < 3600) return fmt(sec / 60) + " min";
    return fmt(sec / 3600, 1) + " h";
  }
  const short = (id) => (id && id.length > 13 ? id.slice(0, 8) + "…" : id || "");

  // Requests per second: the request counter of the last minute's documents.
  const samples = [];
  function addSample(st) {
    const t = Date.parse(st.timestamp) || Date.now();
    const last = samples[samples.length - 1];
    if (last && st.requests < last.req) samples.length = 0; // a restart: the counter began again
    samples.push({ t, req: st.requests || 0 });
    while (samples.length > 2 && samples[1].t < t - 60000) samples.shift();
  }
  function requestRate() {
    if (samples.length < 2) return NaN;
    const a = samples[0], b = samples[samples.length - 1];
    return b.t > a.t ? ((b.req - a.req) * 1000) / (b.t - a.t) : NaN;
  }
  // lastSteps sums the last n steps of a recent series.
  const lastSteps = (xs, n) => (xs || []).slice(-n).reduce((a, b) => a + b, 0);

  function drawChart(rc) {
    const done = (rc && rc.finished) || [], err = (rc && rc.failed) || [];
    const top = Math.max(1, ...done);
    const step = (rc && rc.stepSeconds) || 30;
    $("chart").replaceChildren(...done.map((d, i) =>
      el("div", { class: "col", title: `${(done.length - 1 - i) * step}–${(done.length - i) * step} s ago: ${d} finished, ${err[i]} failed` },
        el("span", { class: "ok", style: `height:${(100 * (d - err[i])) / top}%` }),
        el("span", { class: "err", style: `height:${(100 * err[i]) / top}%` }))));
  }

  let viewer = { admin: false, note: "" };
  let current = null;

  function notice(text, ok) {
    const n = $("notice");
    n.hidden = !text;
    n.textContent = text || "";
    n.classList.toggle("ok", !!ok);
  }

  function tiles(st) {
    const jl = st.jobLine, rc = st.recent || {};
    const per = (rc.stepSeconds || 30) / 60; // minutes per step
    const done5 = lastSteps(rc.finished, 5 / per), failed5 = lastSteps(rc.failed, 5 / per);
    const t = [
      ["instances up", `${st.instancesUp} / ${st.instancesTotal}`, st.instancesUp < st.instancesTotal],
      ["prompts finished, last 5 min", fmt(done5)],
      ["prompts / min, last 5 min", fmt(done5 / 5, 1)],
      ["failed, last 5 min", fmt(failed5), failed5 > 0],
      ["requests / s, last min", fmt(requestRate(), 1)],
      ["error rate (all)", fmt(100 * (st.errorRate || 0), 1) + " %", st.errorRate > 0],
      ["avg prompt time", dur(st.avgProcessingTime)],
      ["in flight", fmt(st.inFlight)],
      ["queued at instances", fmt(st.queueDepth)],
      ["job wait line", fmt(jl ? jl.waitingTotal : st.waitLine)],
      ["jobs in flight", fmt(st.jobsInFlight)],
      ["WebSocket clients", fmt(st.wsClients)],
      ["finished (all)", fmt(st.jobsProcessed)],
      ["resubmitted", fmt(st.resubmissions)],
    ];
    $("tiles").replaceChildren(...t.map(([k, v, bad]) =>
      el("div", { class: "tile" + (bad ? " bad" : "") }, el("div", { class: "v", text: v }), el("div", { class: "k", text: k }))));
  }

  // stateOf is an instance's one-word state, most serious first.
  function stateOf(is) {
    if (!is.healthy) return "unhealthy";
    if (is.breaker === "open") return "breaker-open";
    if (is.drained) return "drained";
    if (is.draining) return "draining";
    if (is.breaker === "half-open") return "half-open";
    return "healthy";
  }

  const cards = new Map(); // name -> {root, body, drain, undrain}
  function card(name) {
    let c = cards.get(name);
    if (c) return c;
    const drain = el("button", { type: "button", "data-action": "drain", text: "Drain" });
    const undrain = el("button", { type: "button", "data-action": "undrain", text: "Undrain" });
    drain.addEventListener("click", () => admin(name, "drain"));
    undrain.addEventListener("click", () => admin(name, "undrain"));
    const body = el("div", { class: "body" });
    const root = el("article", { class: "card", "data-instance": name }, body, el("div", { class: "actions" }, drain, undrain));
    c = { root, body, drain, undrain };
    cards.set(name, c);
    return c;
  }

  function badge(text, cls, field) {
    return el("span", { class: "badge " + cls, "data-field": field, text });
  }

  function instanceBody(name, is) {
    const state = stateOf(is);
    const badges = [
      badge(is.healthy ? "healthy" : "unhealthy", is.healthy ? "ok" : "bad", "health"),
      badge("breaker " + (is.breaker || "closed"), is.breaker === "open" ? "bad" : is.breaker === "half-open" ? "warn" : "ok", "breaker"),
      is.drained ? badge("drained", "warn", "drain") : is.draining ? badge("draining", "warn", "drain") : null,
      is.removing ? badge("leaving", "warn") : null,
      !is.socketConnected ? badge("socket down", "bad") : null,
      is.warmup && is.warmup !== "ok" ? badge("warm-up " + is.warmup, is.warmup === "running" ? "info" : "bad") : null,
    ];
    const labels = Object.entries(is.labels || {}).sort().map(([k, v]) => badge(`${k}=${v}`, "label"));
    const kv = [
      ["queue", fmt(is.queueDepth)],
      ["in flight", fmt(is.inFlight)],
      ["weight", fmt(is.weight)],
      ["finished", fmt(is.jobsProcessed)],
      ["avg time", dur(is.avgProcessingTime)],
      ["errors", fmt(100 * (is.errorRate || 0), 1) + " %"],
      ["health check", dur(is.healthCheckAvg)],
      ["reconnects", fmt(is.reconnects)],
    ];
    let running;
    const r = is.running;
    if (r) {
      const pct = r.max > 0 ? Math.min(100, (100 * r.value) / r.max) : 0;
      running = el("div", { class: "running", "data-field": "running" },
        el("div", {}, "running ", el("code", { title: r.promptId || "", text: short(r.promptId) || "a prompt" }),
          r.node ? ` · node ${r.node}` : "", r.max > 0 ? ` · ${fmt(r.value)}/${fmt(r.max)}` : "", ` · ${ago(r.seconds || 0)}`),
        el("div", { class: "progress", role: "progressbar", "aria-valuenow": fmt(pct), "aria-valuemin": "0", "aria-valuemax": "100" },
          el("span", { style: `width:${pct}%` })));
    } else {
      running = el("div", { class: "running muted", "data-field": "running", text: "idle" });
    }
    const cat = is.catalogue;
    let catText = "catalogue not read";
    if (cat && cat.known) catText = `catalogue: ${fmt(cat.node_classes)} node classes, ${fmt(cat.model_files)} model files`;
    if (cat && cat.error) catText += ` (last read failed: ${cat.error})`;
    return [
      el("div", { class: "title" },
        el("span", { class: "name", text: name }),
        el("span", { class: "muted small", "data-field": "state", text: state })),
      el("div", { class: "host", text: is.host + (is.comfyVersion ? ` · ComfyUI ${is.comfyVersion}` : "") }),
      el("div", { class: "badges" }, badges, labels),
      el("dl", { class: "kv" }, kv.map(([k, v]) => el("div", {}, el("dt", { text: k }), el("dd", { text: v })))),
      running,
      (is.affinity && is.affinity.length)
        ? el("div", { class: "small", title: "model affinity: its last prompt loaded these" }, "affinity: ", el("code", { text: is.affinity.join(", ") }))
        : el("div", { class: "small muted", text: "affinity: none yet" }),
      el("div", { class: "small muted", text: cat ? catText : "catalogue: not routed by catalogue" }),
    ];
  }

  function instances(st) {
    const names = st.instances || Object.keys(st.instanceStats || {}).sort();
    const list = [];
    for (const name of names) {
      const is = st.instanceStats[name];
      if (!is) continue;
      const c = card(name);
      c.root.dataset.state = stateOf(is);
      c.body.replaceChildren(...instanceBody(name, is));
      const why = viewer.admin ? "" : viewer.note || "drain and undrain need an admin key";
      c.drain.disabled = !viewer.admin || is.draining;
      c.undrain.disabled = !viewer.admin || !is.draining || is.removing;
      c.drain.title = c.undrain.title = why;
      list.push(c.root);
    }
    for (const name of [...cards.keys()]) if (!names.includes(name)) cards.delete(name);
    $("instances").replaceChildren(...list);
    const note = $("viewer-note");
    note.hidden = viewer.admin;
    note.textContent = viewer.admin ? "" : "Read-only: " + (viewer.note || "drain and undrain need an admin key") + ".";
  }

  function jobItem(j, active) {
    const kids = [el("code", { title: j.id, text: short(j.id) }), ` ${j.workflow}`,
      active ? ` · ${j.state}${j.instance ? " on " + j.instance : ""}` : "", ` · ${ago(j.ageSeconds)}`];
    if (active && j.state === "running") {
      kids.push(el("div", { class: "progress" }, el("span", { style: `width:${j.progress}%` })));
    }
    return el("li", {}, kids);
  }
  function jobs(st) {
    const jl = st.jobLine;
    if (!jl) {
      $("waiting").replaceChildren(el("li", { class: "muted", text: "the job API is off" }));
      $("active").replaceChildren();
      return;
    }
    const more = (shown, total) => (total > shown ? [el("li", { class: "muted", text: `… ${total - shown} more` })] : []);
    $("wait-count").textContent = `(${jl.waitingTotal})`;
    $("active-count").textContent = `(${jl.activeTotal})`;
    $("waiting").replaceChildren(...(jl.waiting.length ? jl.waiting.map((j) => jobItem(j, false)) : [el("li", { class: "muted", text: "empty" })]),
      ...more(jl.waiting.length, jl.waitingTotal));
    $("active").replaceChildren(...(jl.active.length ? jl.active.map((j) => jobItem(j, true)) : [el("li", { class: "muted", text: "none" })]),
      ...more(jl.active.length, jl.activeTotal));
  }

  function render(st) {
    current = st;
    $("version").textContent = st.version ? (/^[0-9]/.test(st.version) ? "v" : "") + st.version : "";
    tiles(st);
    drawChart(st.recent);
    instances(st);
    jobs(st);
    $("footer").textContent = `up ${ago(st.uptime || 0)} · ${fmt(st.promptsSubmitted)} prompts submitted · updated ${new Date(st.timestamp).toLocaleTimeString()}`;
  }

  async function admin(name, action) {
    const c = cards.get(name);
    if (c) c.drain.disabled = c.undrain.disabled = true;
    const headers = token ? { Authorization: "Bearer " + token } : {};
    try {
      const r = await fetch(`/admin/instances/${encodeURIComponent(name)}/${action}`, { method: "POST", headers, credentials: "same-origin" });
      let msg = "";
      try { const b = await r.json(); msg = (b.error && b.error.message) || ""; } catch (e) { /* not JSON */ }
      if (r.ok) notice(`${action} ${name}: done`, true);
      else notice(`${action} ${name} refused: ${r.status}${msg ? " – " + msg : ""}`);
    } catch (e) {
      notice(`${action} ${name} failed: ${e.message}`);
    }
    if (current) instances(current);
  }

  function setConn(state, text) {
    $("conn").dataset.state = state;
    $("conn-text").textContent = text;
  }

  const url = "/dashboard/events" + (token ? "?token=" + encodeURIComponent(token) : "");
  const es = new EventSource(url);
  es.onopen = () => setConn("live", "live");
  es.addEventListener("viewer", (ev) => {
    try { viewer = JSON.parse(ev.data); } catch (e) { return; }
    if (current) instances(current);
  });
  es.onmessage = (ev) => {
    let st;
    try { st = JSON.parse(ev.data); } catch (e) { return; }
    addSample(st);
    render(st);
    setConn("live", "live");
  };
  es.onerror = () => setConn(es.readyState === EventSource.CLOSED ? "down" : "connecting", es.readyState === EventSource.CLOSED ? "disconnected (reload the page)" : "reconnecting…");
})();
