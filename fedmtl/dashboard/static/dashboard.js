// fedmtl dashboard: polls /api/run for rounds it has not seen and redraws the charts (Plotly).
// Read-only; every number comes from the run folder through the server (fedmtl/dashboard/state.py).
"use strict";

(function () {
  const POLL_MS = Math.max(250, parseInt(document.body.dataset.pollMs || "2000", 10) || 2000);
  const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
  const KIND_CODE = { never: 0, "cross-client": 1, "same-client": 2, measured: 3 };
  const KIND_COLOURS = ["#d9d9d9", "#f4a259", "#3f6fd8", "#2ca02c"];
  const PLOT_CONFIG = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["sendDataToCloud"] };
  const state = { run: null, rounds: [], since: -1, polls: 0, lastChange: null, renders: 0 };
  window.fedmtlDashboard = state;

  const $ = (id) => document.getElementById(id);
  const fmt = (v, d = 3) => (v === null || v === undefined || Number.isNaN(v) ? "–" : Number(v).toFixed(d));

  function discreteScale(colours) {
    const n = colours.length, scale = [];
    colours.forEach((c, i) => { scale.push([i / n, c]); scale.push([(i + 1) / n, c]); });
    return scale;
  }

  function merge(rounds) {
    if (!rounds.length) return false;
    const byRound = new Map(state.rounds.map((r) => [r.round, r]));
    rounds.forEach((r) => byRound.set(r.round, r));
    state.rounds = Array.from(byRound.values()).sort((a, b) => a.round - b.round);
    state.since = state.rounds[state.rounds.length - 1].round;
    state.lastChange = Date.now();
    return true;
  }

  // ---------------------------------------------------------------- header and progress
  function renderHeader() {
    const run = state.run, rounds = state.rounds;
    $("run-name").textContent = run.name || "";
    const bits = [];
    if (run.suite) bits.push("suite " + run.suite);
    if (run.mode) bits.push("mode " + run.mode);
    if (run.tasks && run.tasks.length) bits.push(run.tasks.length + " tasks");
    $("run-meta").textContent = bits.join(" · ");
    const status = $("status");
    const last = rounds.length ? rounds[rounds.length - 1] : null;
    if (run.waiting || !last) { status.textContent = "waiting for the first round"; status.className = "status waiting"; }
    else if (run.finished) { status.textContent = "finished"; status.className = "status finished"; }
    else {
      const ago = state.lastChange ? Math.round((Date.now() - state.lastChange) / 1000) : 0;
      status.textContent = "running · last round " + ago + "s ago"; status.className = "status running";
    }
    const planned = run.planned_rounds, done = last ? last.round : 0;
    $("progress-bar").style.width = planned ? Math.min(100, (100 * done) / planned) + "%" : "0";
    const trained = rounds.filter((r) => r.round > 0 && r.seconds !== null);
    const perRound = trained.length ? trained.reduce((s, r) => s + r.seconds, 0) / trained.length : null;
    const text = [planned ? `round ${done} of ${planned}` : `round ${done}`];
    if (perRound !== null) text.push(perRound.toFixed(1) + " s/round");
    if (perRound !== null && planned && !run.finished && planned > done) {
      const left = perRound * (planned - done);
      text.push("~" + (left >= 90 ? Math.round(left / 60) + " min" : Math.round(left) + " s") + " left");
    }
    if (last) text.push("mean acc " + fmt(last.mean_accuracy));
    const best = bestRound();
    if (best) text.push(`best ${fmt(best.mean_accuracy)} @ round ${best.round}`);
    $("progress-text").textContent = text.join(" · ");
  }

  function bestRound() {
    let best = null;
    state.rounds.forEach((r) => {
      if (r.evaluated && r.mean_accuracy !== null && (!best || r.mean_accuracy > best.mean_accuracy)) best = r;
    });
    return best;
  }

  // ---------------------------------------------------------------- charts
  function renderAccuracy() {
    const evaluated = state.rounds.filter((r) => r.evaluated);
    const xs = evaluated.map((r) => r.round);
    const traces = state.run.tasks.map((t, i) => ({
      name: t, x: xs, y: evaluated.map((r) => r.accuracy[t] === undefined ? null : r.accuracy[t]),
      mode: "lines+markers", marker: { size: 5 }, line: { width: 1.6, color: PALETTE[i % PALETTE.length] },
      hovertemplate: t + " round %{x}: %{y:.3f}<extra></extra>",
    }));
    traces.push({ name: "mean", x: xs, y: evaluated.map((r) => r.mean_accuracy), mode: "lines", line: { width: 3.5, color: "#111" },
      hovertemplate: "mean round %{x}: %{y:.3f}<extra></extra>" });
    Plotly.react($("accuracy"), traces, {
      margin: { t: 10, r: 10, b: 40, l: 50 }, xaxis: { title: { text: "round" }, dtick: xs.length > 20 ? undefined : 1 },
      yaxis: { title: { text: "test accuracy" }, range: [0, 1.02] }, legend: { orientation: "h", y: -0.18 },
    }, PLOT_CONFIG);
  }

  function renderGroups() {
    const tasks = state.run.tasks, rounds = state.rounds;
    const colourOf = new Map();
    const z = tasks.map(() => rounds.map(() => null));
    const text = tasks.map(() => rounds.map(() => ""));
    rounds.forEach((r, j) => {
      r.groups.forEach((g) => {
        const key = g.slice().sort().join(",");
        if (!colourOf.has(key)) colourOf.set(key, colourOf.size);
        g.forEach((t) => {
          const i = tasks.indexOf(t);
          if (i >= 0) { z[i][j] = colourOf.get(key) % PALETTE.length; text[i][j] = "group of " + g.join(", "); }
        });
      });
    });
    const shapes = [], annotations = [];
    rounds.forEach((r) => {
      const split = r.events.some((e) => e.startsWith("split into"));
      const merged = r.events.some((e) => e.startsWith("merged"));
      if (split || merged) {
        shapes.push({ type: "line", x0: r.round + 0.5, x1: r.round + 0.5, yref: "paper", y0: 0, y1: 1,
          line: { dash: "dash", width: 2, color: split ? "#222" : "#b3261e" } });
        annotations.push({ x: r.round + 0.5, y: 1.02, yref: "paper", text: split ? "split" : "merge", showarrow: false,
          font: { size: 11, color: split ? "#222" : "#b3261e" }, yanchor: "bottom" });
      }
    });
    Plotly.react($("groups"), [{
      type: "heatmap", x: rounds.map((r) => r.round), y: tasks, z: z, text: text, zmin: -0.5, zmax: PALETTE.length - 0.5,
      colorscale: discreteScale(PALETTE), showscale: false, xgap: 1, ygap: 1,
      hovertemplate: "%{y}, round %{x}: %{text}<extra></extra>",
    }], { margin: { t: 24, r: 10, b: 40, l: 130 }, xaxis: { title: { text: "round" } }, yaxis: { autorange: "reversed" },
          shapes: shapes, annotations: annotations }, PLOT_CONFIG);
  }

  function latestAffinity() {
    for (let k = state.rounds.length - 1; k >= 0; k--) {
      const a = state.rounds[k].affinity;
      if (a && a.matrix && a.matrix.length) return { round: state.rounds[k].round, a: a };
    }
    return null;
  }

  function renderAffinity() {
    const found = latestAffinity();
    if (!found) {
      $("affinity-caption").textContent = "(not measured yet)";
      $("coverage-caption").textContent = "";
      Plotly.react($("affinity"), [], { margin: { t: 10 }, xaxis: { visible: false }, yaxis: { visible: false } }, PLOT_CONFIG);
      Plotly.react($("coverage"), [], { margin: { t: 10 }, xaxis: { visible: false }, yaxis: { visible: false } }, PLOT_CONFIG);
      return;
    }
    const a = found.a, n = a.tasks.length;
    const z = a.matrix.map((row, i) => row.map((v, j) => (i === j ? null : v)));
    let bound = 0;
    z.forEach((row) => row.forEach((v) => { if (v !== null && Math.abs(v) > bound) bound = Math.abs(v); }));
    bound = bound || 1;
    $("affinity-caption").textContent = `(${a.signal}, after round ${found.round}; row i stepped, column j helped)`;
    Plotly.react($("affinity"), [{
      type: "heatmap", x: a.tasks, y: a.tasks, z: z, zmin: -bound, zmax: bound, zmid: 0, colorscale: "RdBu",
      texttemplate: n <= 12 ? "%{z:.2g}" : "", hovertemplate: "%{y} → %{x}: %{z:.4g}<extra></extra>", xgap: 1, ygap: 1,
      colorbar: { thickness: 12 },
    }], { margin: { t: 10, r: 10, b: 110, l: 130 }, yaxis: { autorange: "reversed" }, xaxis: { tickangle: -45 } }, PLOT_CONFIG);

    const cov = a.coverage;
    if (!cov) { $("coverage-caption").textContent = "(not recorded by this run)"; return; }
    const kinds = a.tasks.map(() => a.tasks.map(() => null));
    const counts = a.tasks.map(() => a.tasks.map(() => ""));
    const tally = {};
    cov.forEach(([i, j, kind, count]) => {
      if (i === j || i >= n || j >= n) return;
      kinds[i][j] = KIND_CODE[kind] === undefined ? 3 : KIND_CODE[kind];
      counts[i][j] = kind === "never" ? "" : String(count);
      tally[kind] = (tally[kind] || 0) + 1;
    });
    const measured = Object.entries(tally).filter(([k]) => k !== "never").reduce((s, [, v]) => s + v, 0);
    const parts = Object.entries(tally).map(([k, v]) => `${k} ${v}`).join(", ");
    $("coverage-caption").textContent = `(${measured} of ${n * (n - 1)} pairs measured${a.coverage_scope === "round" ? " this round" : ""}: ${parts})`;
    Plotly.react($("coverage"), [{
      type: "heatmap", x: a.tasks, y: a.tasks, z: kinds, text: counts, texttemplate: n <= 12 ? "%{text}" : "",
      zmin: -0.5, zmax: KIND_COLOURS.length - 0.5, colorscale: discreteScale(KIND_COLOURS), xgap: 1, ygap: 1,
      customdata: kinds.map((row) => row.map((k) => (k === null ? "" : Object.keys(KIND_CODE)[k]))),
      hovertemplate: "%{y} → %{x}: %{customdata}, %{text} measurements<extra></extra>",
      colorbar: { thickness: 12, tickvals: [0, 1, 2, 3], ticktext: Object.keys(KIND_CODE) },
    }], { margin: { t: 10, r: 10, b: 110, l: 130 }, yaxis: { autorange: "reversed" }, xaxis: { tickangle: -45 } }, PLOT_CONFIG);
  }

  function renderClients() {
    const rounds = state.rounds.filter((r) => r.round > 0);
    const xs = rounds.map((r) => r.round);
    const bar = (name, ys, colour) => ({ type: "bar", name: name, x: xs, y: ys, marker: { color: colour } });
    Plotly.react($("clients"), [
      bar("trained", rounds.map((r) => r.clients.length), "#3f6fd8"),
      bar("dropped", rounds.map((r) => r.dropped.length), "#f4a259"),
      bar("rejected", rounds.map((r) => r.rejected.length), "#b3261e"),
      bar("failed", rounds.map((r) => r.errors.length), "#7f7f7f"),
    ], { barmode: "stack", margin: { t: 10, r: 10, b: 40, l: 50 }, xaxis: { title: { text: "round" } },
         yaxis: { title: { text: "clients" } }, legend: { orientation: "h", y: -0.25 } }, PLOT_CONFIG);

    const table = new Map();
    const row = (name) => {
      if (!table.has(name)) table.set(name, { first: null, last: null, trained: 0, dropped: 0, rejected: 0, failed: 0 });
      return table.get(name);
    };
    rounds.forEach((r) => {
      r.clients.forEach((c) => { const e = row(c); e.first = e.first === null ? r.round : e.first; e.last = r.round; e.trained++; });
      r.dropped.forEach((d) => { row(d.client).dropped++; });
      r.rejected.forEach((d) => { row(d.client).rejected++; });
      r.errors.forEach((d) => { row(d.client).failed++; });
    });
    const body = $("client-table").querySelector("tbody");
    body.replaceChildren();
    Array.from(table.keys()).sort().forEach((name) => {
      const e = table.get(name), tr = document.createElement("tr");
      [name, e.first ?? "–", e.last ?? "–", e.trained, e.dropped, e.rejected, e.failed].forEach((v, k) => {
        const td = document.createElement("td");
        td.textContent = String(v);
        if (k >= 4 && v > 0) td.className = "bad";
        tr.appendChild(td);
      });
      body.appendChild(tr);
    });
  }

  function renderEvents() {
    const items = [];
    state.rounds.forEach((r) => {
      r.events.forEach((e) => items.push([r.round, e]));
      r.dropped.forEach((d) => items.push([r.round, `${d.client} dropped (group ${d.group}): ${d.reason}`]));
      r.rejected.forEach((d) => items.push([r.round, `${d.client} rejected (group ${d.group}): ${d.reason}`]));
      r.errors.forEach((d) => items.push([r.round, `${d.client} failed (group ${d.group}): ${d.reason}`]));
    });
    const list = $("events");
    list.replaceChildren();
    items.slice(-60).reverse().forEach(([r, text]) => {
      const li = document.createElement("li"), span = document.createElement("span");
      span.className = "r"; span.textContent = "round " + r + ": ";
      li.appendChild(span); li.appendChild(document.createTextNode(text));
      list.appendChild(li);
    });
    if (!items.length) { const li = document.createElement("li"); li.textContent = "none yet"; list.appendChild(li); }
  }

  function render() {
    renderHeader();
    if (!state.rounds.length) return;
    renderAccuracy();
    renderGroups();
    renderAffinity();
    renderClients();
    renderEvents();
    state.renders++;
    document.body.dataset.lastRound = String(state.since);
  }

  // ---------------------------------------------------------------- polling
  async function poll() {
    try {
      const response = await fetch("api/run?since=" + state.since, { cache: "no-store", credentials: "same-origin" });
      if (!response.ok) throw new Error("HTTP " + response.status + ": " + (await response.text()));
      const payload = await response.json();
      state.polls++;
      const err = $("error");
      if (payload.error) { err.hidden = false; err.textContent = payload.error; } else { err.hidden = true; }
      const changed = merge(payload.rounds) || JSON.stringify(payload.run) !== JSON.stringify(state.run);
      state.run = payload.run;
      if (changed) render(); else renderHeader();
    } catch (e) {
      $("status").textContent = "cannot reach the dashboard server (" + e.message + ")";
      $("status").className = "status waiting";
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }
  poll();
})();
