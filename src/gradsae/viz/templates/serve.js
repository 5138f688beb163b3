"use strict";
// gradsae serve: the page. Every piece of text from the server goes into the page as a DOM text node
// (textContent), never as markup.
(function () {
  var info = JSON.parse(document.getElementById("info").textContent);
  var $ = function (id) { return document.getElementById(id); };
  var state = { rank: null, check: null, intervene: null, sweep: null, selected: [], card: null };
  var running = null;

  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function clear(e) { while (e.firstChild) e.removeChild(e.firstChild); return e; }
  function num(x, d) {
    if (x === null || x === undefined) return "–";
    var a = Math.abs(x);
    if (a !== 0 && (a < 1e-3 || a >= 1e5)) return x.toExponential(2);
    return x.toFixed(d === undefined ? 4 : d);
  }
  function showError(msg) { var e = $("error"); e.textContent = msg; e.hidden = !msg; }
  function status(msg) { $("status-text").textContent = msg; }

  function options() {
    var o = {};
    ["target", "aggregation", "positions", "method", "error"].forEach(function (n) { o[n] = $("opt-" + n).value; });
    return o;
  }
  function request() {
    return { prompt: $("prompt").value, output: state.rank ? state.rank.output : $("output").value,
             sae: $("sae").value, options: options() };
  }

  async function api(method, path, body) {
    var r = await fetch(path, { method: method, headers: body === undefined ? {} : { "Content-Type": "application/json" },
                                body: body === undefined ? undefined : JSON.stringify(body) });
    var data = null;
    try { data = await r.json(); } catch (e) { data = { error: "the server answered " + r.status + " without JSON" }; }
    if (!r.ok) throw new Error(data && data.error ? data.error : "HTTP " + r.status);
    return data;
  }

  // Queue a job, poll it with progress, return its result (or throw its one-line error).
  async function run(label, path, body) {
    if (running) throw new Error("another request is running: wait for it or cancel it");
    showError("");
    return poll(label, await api("POST", path, body));
  }
  async function poll(label, sub) {
    var t0 = performance.now();
    running = sub.job;
    document.body.setAttribute("aria-busy", "true");
    $("cancel").hidden = false;
    try {
      for (;;) {
        var j = await api("GET", "/api/jobs/" + sub.job);
        var secs = ((performance.now() - t0) / 1000).toFixed(1);
        if (j.state === "done") { status(label + ": done in " + secs + " s"); return j.result; }
        if (j.state === "failed") throw new Error(j.error);
        if (j.state === "cancelled") throw new Error(label + " cancelled");
        var prog = j.total ? " " + j.done + "/" + j.total + " " + j.unit : "";
        status(label + ": " + j.state + prog + " (" + secs + " s)");
        await new Promise(function (res) { setTimeout(res, 150); });
      }
    } finally {
      running = null;
      // finished jobs so far (done, failed or cancelled): what a script driving the page waits on
      document.body.dataset.jobs = String(Number(document.body.dataset.jobs || 0) + 1);
      document.body.setAttribute("aria-busy", "false");
      $("cancel").hidden = true;
    }
  }
  async function guarded(fn) {
    try { await fn(); } catch (e) { showError(String(e.message || e)); status(""); }
  }

  // ---- prompt view ----------------------------------------------------------------------------------
  function colourTokens() {
    var v = state.rank, box = clear($("tokens"));
    if (!v) return;
    var c = $("colour-by").value, pt = v.per_token, vals = null;
    if (pt && c !== "") {
      var i = pt.latents.indexOf(Number(c));
      if (i >= 0) vals = pt.values[i];
    }
    var top = 0;
    if (vals) vals.forEach(function (x) { top = Math.max(top, Math.abs(x)); });
    v.tokens.forEach(function (t, n) {
      var s = el("span", t, n < v.n_prompt ? "tok" : "tok out");
      if (vals && top > 0) {
        var a = Math.min(1, Math.abs(vals[n]) / top);
        s.style.backgroundColor = vals[n] >= 0 ? "rgba(214,39,40," + a + ")" : "rgba(31,119,180," + a + ")";
        s.title = "g = " + num(vals[n]);
      }
      box.appendChild(s);
    });
  }

  function rankTable(table, rows, key) {
    clear(table);
    var h = el("tr");
    ["", "latent", "GradSAE score", "activation", key === "baseline" ? "GradSAE rank" : "activation rank", "promotes"]
      .forEach(function (x) { h.appendChild(el("th", x)); });
    table.appendChild(h);
    rows.forEach(function (r) {
      var tr = el("tr");
      var box = el("input"); box.type = "checkbox"; box.className = "pick"; box.dataset.latent = r.latent;
      box.checked = state.selected.indexOf(r.latent) >= 0;
      box.addEventListener("change", function () { toggle(r.latent, box.checked); });
      var td = el("td"); td.appendChild(box); tr.appendChild(td);
      var b = el("button", r.latent, "latent"); b.type = "button"; b.dataset.latent = r.latent;
      b.addEventListener("click", function () { openCard(r.latent); });
      td = el("td"); td.appendChild(b); tr.appendChild(td);
      tr.appendChild(el("td", num(r.score)));
      tr.appendChild(el("td", num(r.mean_activation, 3)));
      tr.appendChild(el("td", key === "baseline" ? r.gradsae_rank : r.activation_rank));
      tr.appendChild(el("td", (r.promotes || []).map(function (t) { return JSON.stringify(t); }).join(" ")));
      table.appendChild(tr);
    });
  }

  function renderRank() {
    var v = state.rank;
    $("result").hidden = !v; $("work").hidden = !v;
    if (!v) return;
    $("answer").textContent = v.output;
    var sel = clear($("colour-by"));
    sel.appendChild(el("option", "none")).value = "";
    if (v.per_token) v.per_token.latents.forEach(function (c) { sel.appendChild(el("option", c)).value = String(c); });
    if (v.per_token && v.per_token.latents.length) sel.value = String(v.per_token.latents[0]);
    colourTokens();
    var a = v.agreement;
    $("agreement").textContent = "Rank agreement over the " + a.latents + " active latents: Spearman ρ = " +
      (a.spearman === null ? "–" : a.spearman.toFixed(3)) + "; top " + a.k + " shared by both rankings: " +
      a.top_overlap + " of " + a.k + ". Target " + v.options.target + " = " + num(v.target_value) + ".";
    rankTable($("gradsae-table"), v.top, "gradsae");
    rankTable($("baseline-table"), v.baseline_top, "baseline");
    $("repro-rank-cli").textContent = v.reproduce.cli;
    $("repro-rank-py").textContent = v.reproduce.python;
    renderSelected();
  }

  function toggle(c, on) {
    var i = state.selected.indexOf(c);
    if (on && i < 0) state.selected.push(c);
    if (!on && i >= 0) state.selected.splice(i, 1);
    document.querySelectorAll("input.pick").forEach(function (b) { b.checked = state.selected.indexOf(Number(b.dataset.latent)) >= 0; });
    renderSelected();
  }
  function renderSelected() { $("selected").textContent = state.selected.length ? state.selected.join(", ") : "none"; }

  async function doRank() {
    var body = request();
    body.output = $("output").value;
    body.top = Number($("top").value) || 20;
    state.rank = null; state.check = null; state.intervene = null; state.sweep = null; state.selected = [];
    renderAll();
    state.rank = await run("ranking", "/api/rank", body);
    renderAll();
  }

  function namedLatent() {
    var raw = $("latent-no").value.trim(), c = Number(raw);
    var sae = info.saes.filter(function (x) { return x.name === $("sae").value; })[0];
    if (raw === "" || !Number.isInteger(c)) throw new Error("latent " + JSON.stringify(raw) + " is not a whole number: give e.g. 1030");
    if (c < 0 || c >= sae.d_sae) throw new Error("unknown latent " + c + ": this SAE's latents are 0 to " + (sae.d_sae - 1));
    return c;
  }

  // ---- check a number -------------------------------------------------------------------------------
  function renderCheck() {
    var t = clear($("check-table")), v = state.check;
    $("repro-check").hidden = !v;
    if (!v) return;
    $("repro-check-py").textContent = v.reproduce ? v.reproduce.python : "";
    var h = el("tr");
    ["latent", "grad × act (first order)", "second order", "exact", "first-order error", "flag"].forEach(function (x) { h.appendChild(el("th", x)); });
    t.appendChild(h);
    v.rows.forEach(function (r) {
      var tr = el("tr");
      [r.latent, num(r.first_order), num(r.second_order), num(r.exact),
       r.relative_error === null ? "–" : (100 * r.relative_error).toFixed(0) + "%",
       r.flagged ? "second order disagrees: trust the exact value" : ""].forEach(function (x) { tr.appendChild(el("td", x)); });
      t.appendChild(tr);
    });
    var cap = el("caption", "Change of " + v.target + " when the latent is zeroed at the scored positions");
    t.insertBefore(cap, t.firstChild);
  }
  async function doCheck() {
    if (!state.selected.length) throw new Error("select at least one latent (tick it in a ranking)");
    var body = request(); body.latents = state.selected.slice();
    state.check = await run("exact ablation", "/api/check", body);
    renderCheck();
  }

  // ---- intervene ------------------------------------------------------------------------------------
  function editBody() {
    if (!state.selected.length) throw new Error("select at least one latent (tick it in a ranking)");
    var raw = $("edit-value").value.trim(), v = Number(raw);
    if (raw === "" || !isFinite(v)) throw new Error("value " + JSON.stringify(raw) + " is not a number: give e.g. 0, 5 or -2.5");
    var body = request();
    body.edit = { latents: state.selected.slice(), kind: $("edit-kind").value, value: v, where: $("edit-where").value };
    return body;
  }
  function renderIntervene() {
    var v = state.intervene;
    $("edited").hidden = !v;
    if (!v) return;
    $("default-answer").textContent = v.default.answer;
    $("edited-answer").textContent = v.points[0].answer;
    $("default-target").textContent = v.target_name ? v.target_name + " of the explained answer: " + num(v.default.target) : "";
    $("edited-target").textContent = v.target_name ? v.target_name + ": " + num(v.points[0].target) : "";
    $("repro-edit-py").textContent = v.reproduce.python;
  }
  async function doIntervene() {
    state.intervene = await run("edited answer", "/api/intervene", editBody());
    renderIntervene();
  }

  function plot(svg, pts, base) {
    clear(svg);
    var W = 520, H = 220, L = 60, R = 10, T = 10, B = 30, NS = "http://www.w3.org/2000/svg";
    var ys = pts.map(function (p) { return p.target; }).concat([base]);
    var xs = pts.map(function (p) { return p.value; });
    var x0 = Math.min.apply(null, xs), x1 = Math.max.apply(null, xs), y0 = Math.min.apply(null, ys), y1 = Math.max.apply(null, ys);
    if (x1 === x0) { x0 -= 1; x1 += 1; }
    if (y1 === y0) { y0 -= 1; y1 += 1; }
    function X(x) { return L + (x - x0) / (x1 - x0) * (W - L - R); }
    function Y(y) { return H - B - (y - y0) / (y1 - y0) * (H - T - B); }
    function add(tag, attrs, text) {
      var e = document.createElementNS(NS, tag);
      Object.keys(attrs).forEach(function (k) { e.setAttribute(k, attrs[k]); });
      if (text !== undefined) e.textContent = text;
      svg.appendChild(e); return e;
    }
    add("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#444" });
    add("line", { x1: L, y1: T, x2: L, y2: H - B, stroke: "#444" });
    add("line", { x1: L, y1: Y(base), x2: W - R, y2: Y(base), stroke: "#999", "stroke-dasharray": "4 3" });
    add("text", { x: L - 4, y: Y(y1) + 4, "text-anchor": "end", "font-size": 11 }, num(y1, 2));
    add("text", { x: L - 4, y: Y(y0), "text-anchor": "end", "font-size": 11 }, num(y0, 2));
    add("text", { x: X(x0), y: H - 8, "font-size": 11 }, "α = " + x0);
    add("text", { x: X(x1), y: H - 8, "text-anchor": "end", "font-size": 11 }, String(x1));
    add("polyline", { points: pts.map(function (p) { return X(p.value) + "," + Y(p.target); }).join(" "), fill: "none", stroke: "#d62728", "stroke-width": 2 });
    pts.forEach(function (p) { add("circle", { cx: X(p.value), cy: Y(p.target), r: 3, fill: "#d62728" }); });
  }
  function renderSweep() {
    var v = state.sweep;
    $("sweep-out").hidden = !v;
    if (!v) return;
    if (v.target_name) plot($("sweep-plot"), v.points, v.default.target);
    var t = clear($("sweep-table")), h = el("tr");
    ["α", v.target_name || "target", "answer"].forEach(function (x) { h.appendChild(el("th", x)); });
    t.appendChild(h);
    var tr = el("tr"); [ "default", num(v.default.target), v.default.answer ].forEach(function (x) { tr.appendChild(el("td", x)); }); t.appendChild(tr);
    v.points.forEach(function (p) {
      var r = el("tr"); [p.value, num(p.target), p.answer].forEach(function (x) { r.appendChild(el("td", x)); }); t.appendChild(r);
    });
    $("repro-edit-py").textContent = v.reproduce.python;
  }
  async function doSweep() {
    var body = editBody();
    var alphas = $("alphas").value.split(",").map(function (s) { return s.trim(); }).filter(function (s) { return s; });
    var bad = alphas.filter(function (s) { return !isFinite(Number(s)); });
    if (!alphas.length || bad.length) throw new Error("α " + JSON.stringify(bad[0] || "") + " is not a number: give a comma-separated list such as -4,0,4");
    if (body.edit.kind === "zero") body.edit.kind = "add";
    body.alphas = alphas.map(Number);
    state.sweep = await run("α sweep", "/api/intervene", body);
    renderSweep();
  }

  // ---- latent card ----------------------------------------------------------------------------------
  function context(ctx) {
    var p = el("p", null, "ctx");
    p.appendChild(el("span", num(ctx.value, 2) + "  ", "val"));
    ctx.tokens.forEach(function (t, i) { p.appendChild(el("span", t, i === ctx.at ? "tok hit" : "tok")); });
    if (ctx.next) p.appendChild(el("span", " → " + ctx.next, "muted"));
    return p;
  }
  function renderCard() {
    var c = state.card, box = clear($("card-body"));
    $("card").hidden = !c;
    if (!c) return;
    $("repro-card-py").textContent = c.reproduce ? c.reproduce.python : "";
    box.appendChild(el("h2", "Latent " + c.latent + " (" + c.sae + ")"));
    box.appendChild(el("p", "fires on " + (100 * c.density).toFixed(3) + "% of tokens · mean activation " + num(c.mean_act, 3) +
      " · max " + num(c.max_act, 3) + (c.source ? " · from " + c.source.tokens + " tokens of " + c.source.data.join(", ") : ""), "muted"));
    box.appendChild(el("p", "promotes: " + c.promoted.map(function (t) { return JSON.stringify(t); }).join(" ")));
    box.appendChild(el("p", "suppresses: " + c.suppressed.map(function (t) { return JSON.stringify(t); }).join(" ")));
    box.appendChild(el("h3", "Strongest activations"));
    c.top.forEach(function (x) { box.appendChild(context(x)); });
    if (c.influence.length) { box.appendChild(el("h3", "Top influence on the next token")); c.influence.forEach(function (x) { box.appendChild(context(x)); }); }
    var nb = el("p", "decoder neighbours: ");
    c.neighbours.forEach(function (n) {
      var b = el("button", n, "latent neighbour"); b.type = "button"; b.dataset.latent = n;
      b.addEventListener("click", function () { guarded(function () { return openCard(n); }); });
      nb.appendChild(b);
    });
    box.appendChild(nb);
  }
  async function openCard(c) {
    showError("");
    var sae = $("sae").value;
    var card = await api("GET", "/api/card?sae=" + encodeURIComponent(sae) + "&latent=" + encodeURIComponent(c));
    if (card.job) {  // no dashboard for this SAE yet: the server computes one from its sample corpus first
      if (running) throw new Error("another request is running: wait for it or cancel it");
      card = await poll("latent card (computing a dashboard from the sample corpus)", card);
    }
    card.sae = sae;
    state.card = card;
    renderCard();
    if (state.rank && state.rank.per_token && state.rank.per_token.latents.indexOf(Number(c)) >= 0) {
      $("colour-by").value = String(c); colourTokens();
    }
  }

  // ---- sessions -------------------------------------------------------------------------------------
  function snapshot() {
    return { version: 1, model: info.model, prompt: $("prompt").value, output: $("output").value, sae: $("sae").value,
             options: options(), top: Number($("top").value), edit: { kind: $("edit-kind").value, value: $("edit-value").value,
             where: $("edit-where").value }, alphas: $("alphas").value,
             selected: state.selected, results: { rank: state.rank, check: state.check, intervene: state.intervene, sweep: state.sweep, card: state.card } };
  }
  function restore(s) {
    $("prompt").value = s.prompt || ""; $("output").value = s.output || "";
    if (s.sae) $("sae").value = s.sae;
    Object.keys(s.options || {}).forEach(function (k) { if ($("opt-" + k)) $("opt-" + k).value = s.options[k]; });
    if (s.top) $("top").value = s.top;
    if (s.edit) { $("edit-kind").value = s.edit.kind; $("edit-value").value = s.edit.value; $("edit-where").value = s.edit.where; }
    if (s.alphas) $("alphas").value = s.alphas;
    var r = s.results || {};
    state.rank = r.rank || null; state.check = r.check || null; state.intervene = r.intervene || null;
    state.sweep = r.sweep || null; state.card = r.card || null; state.selected = (s.selected || []).map(Number);
    renderAll();
  }
  async function listSessions() {
    var s = await api("GET", "/api/sessions"), sel = clear($("session-list"));
    s.sessions.forEach(function (n) { sel.appendChild(el("option", n)).value = n; });
  }
  async function doSave() {
    var name = $("session-name").value.trim();
    await api("PUT", "/api/sessions/" + encodeURIComponent(name), snapshot());
    status("saved session " + name);
    await listSessions();
    $("session-list").value = name;
  }
  async function doOpen() {
    var name = $("session-list").value;
    if (!name) throw new Error("no saved session to open: save one first");
    restore(await api("GET", "/api/sessions/" + encodeURIComponent(name)));
    status("opened session " + name);
  }

  function renderAll() { renderRank(); renderCheck(); renderIntervene(); renderSweep(); renderCard(); }

  // ---- wiring ---------------------------------------------------------------------------------------
  $("rank").addEventListener("click", function () { guarded(doRank); });
  $("prompt").addEventListener("keydown", function (e) {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); guarded(doRank); }
  });
  $("colour-by").addEventListener("change", colourTokens);
  $("select-latent").addEventListener("click", function () { guarded(async function () { showError(""); toggle(namedLatent(), true); }); });
  $("card-latent").addEventListener("click", function () { guarded(function () { return openCard(namedLatent()); }); });
  $("clear-selection").addEventListener("click", function () { state.selected = []; toggle(-1, false); });
  $("check").addEventListener("click", function () { guarded(doCheck); });
  $("intervene").addEventListener("click", function () { guarded(doIntervene); });
  $("sweep").addEventListener("click", function () { guarded(doSweep); });
  $("save").addEventListener("click", function () { guarded(doSave); });
  $("open").addEventListener("click", function () { guarded(doOpen); });
  $("cancel").addEventListener("click", function () { if (running) api("POST", "/api/jobs/" + running + "/cancel"); });
  document.querySelectorAll("button.copy").forEach(function (b) {
    b.addEventListener("click", function () {
      var text = $(b.dataset.copy).textContent;
      if (navigator.clipboard) navigator.clipboard.writeText(text).then(function () { status("copied"); }, function () { status("select the line and copy it"); });
    });
  });
  guarded(listSessions);
})();
