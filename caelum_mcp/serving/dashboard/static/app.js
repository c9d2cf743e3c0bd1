// caelum-mcp dashboard. Plain JS, no dependencies, no build step: it renders the server's snapshot
// (GET /dashboard/api/snapshot, then every `snapshot` event of /dashboard/events) into the page.
// Every value is set as text (never parsed as HTML), so nothing a model or a tool wrote can run here.
"use strict";

(() => {
  const SVG = "http://www.w3.org/2000/svg";
  const COLORS = { local: "#3fb97f", low: "#e0a93b", claude: "#a688f0", failed: "#e5605b", none: "#5d6b7d", grid: "#263241" };
  const PATH_LABEL = {
    local: "local", local_low_confidence: "low confidence", claude: "claude", failed: "failed", none: "no LLM",
  };
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const signedIn = document.querySelector('meta[name="signed-in"]').content === "true";
  const $ = (id) => document.getElementById(id);
  const seenCalls = new Set();
  let firstRender = true;
  let selectedCall = null;

  // helpers ---------------------------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "style") node.style.cssText = value; // CSSOM: allowed by the page's CSP, unlike a style attribute
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const usd = (v) => (v === null || v === undefined ? "–" : v >= 0.01 || v === 0 ? `$${v.toFixed(2)}` : `$${v.toFixed(4)}`);
  const pct = (v) => `${Math.round(v * 100)}%`;
  const num = (v) => (v === null || v === undefined ? "–" : Number(v).toLocaleString("en-US"));
  const ms = (v) => (v === null || v === undefined ? "–" : v >= 1000 ? `${(v / 1000).toFixed(2)} s` : `${Math.round(v)} ms`);
  const clock = (ts) => new Date(ts * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  const badge = (kind, text) => el("span", { class: `badge ${kind}` }, text ?? kind);

  function duration(seconds) {
    const s = Math.floor(seconds);
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min`;
    return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  }

  function arc(cx, cy, r, from, to) {
    // An SVG arc from angle `from` to `to` (radians, 0 = 12 o'clock, clockwise).
    const x1 = cx + r * Math.sin(from), y1 = cy - r * Math.cos(from);
    const x2 = cx + r * Math.sin(to), y2 = cy - r * Math.cos(to);
    const large = to - from > Math.PI ? 1 : 0;
    return `M ${x1.toFixed(2)} ${y1.toFixed(2)} A ${r} ${r} 0 ${large} 1 ${x2.toFixed(2)} ${y2.toFixed(2)}`;
  }

  // charts ----------------------------------------------------------------------------------------

  function renderShare(share) {
    // Model calls as the ledger counts them (whether a local answer cleared the confidence
    // threshold is known per tool call: see the calls table).
    const parts = [
      ["local", share.local_calls, COLORS.local, "local"],
      ["claude", share.claude_calls, COLORS.claude, "claude"],
      ["failed", share.failed_calls, COLORS.failed, "failed"],
    ];
    const total = parts.reduce((sum, p) => sum + p[1], 0);
    const chart = svg("svg", { viewBox: "0 0 200 140", role: "img", "aria-label": "local versus Claude calls", "data-chart": "share" });
    chart.append(svg("circle", { cx: 100, cy: 70, r: 52, fill: "none", stroke: COLORS.grid, "stroke-width": 18 }));
    let angle = 0;
    for (const [key, count, color] of parts) {
      if (!count) continue;
      const sweep = (count / total) * 2 * Math.PI;
      const shape = sweep >= 2 * Math.PI - 1e-6
        ? svg("circle", { cx: 100, cy: 70, r: 52, fill: "none", stroke: color, "stroke-width": 18 })
        : svg("path", { d: arc(100, 70, 52, angle, angle + sweep), fill: "none", stroke: color, "stroke-width": 18 });
      shape.setAttribute("data-part", key);
      chart.append(shape);
      angle += sweep;
    }
    chart.append(svg("text", { x: 100, y: 72, "text-anchor": "middle", class: "big" }, total ? pct(share.local_share) : "–"));
    chart.append(svg("text", { x: 100, y: 90, "text-anchor": "middle" }, "served locally"));
    $("share-chart").replaceChildren(chart);
    $("share-legend").replaceChildren(
      ...parts.map(([, count, color, label]) => el("li", {}, el("i", { style: `background:${color}` }), `${label} ${num(count)}`)),
    );
  }

  function renderBudget(budget) {
    const limit = budget.limit_usd;
    const used = budget.spent_usd + budget.reserved_usd;
    const ratio = limit ? Math.min(1, used / limit) : 0;
    const color = ratio >= 0.9 ? COLORS.failed : ratio >= 0.6 ? COLORS.low : COLORS.local;
    const from = -Math.PI / 2, to = Math.PI / 2;
    const gauge = svg("svg", { viewBox: "0 0 200 120", role: "img", "aria-label": "today's Claude budget", "data-chart": "budget" });
    gauge.append(svg("path", { d: arc(100, 100, 70, from, to), fill: "none", stroke: COLORS.grid, "stroke-width": 16, "stroke-linecap": "round" }));
    if (ratio > 0) {
      gauge.append(svg("path", {
        d: arc(100, 100, 70, from, from + Math.max(ratio, 0.01) * Math.PI), fill: "none", stroke: color,
        "stroke-width": 16, "stroke-linecap": "round", "data-part": "used",
      }));
    }
    gauge.append(svg("text", { x: 100, y: 95, "text-anchor": "middle", class: "big" }, limit ? pct(ratio) : "no cap"));
    $("budget-gauge").replaceChildren(gauge);
    const status = !budget.claude_enabled ? "Claude disabled" : budget.claude_configured ? budget.model : "Claude not configured (set ANTHROPIC_API_KEY)";
    const held = budget.reserved_usd > 0 ? ` + ${usd(budget.reserved_usd)} held` : "";
    $("budget-text").replaceChildren(
      `${usd(budget.spent_usd)} spent${held}${limit !== null ? ` of ${usd(limit)}` : ""}`,
      el("br"), el("span", { class: "muted" }, status),
    );
  }

  function renderTotals(share) {
    const rows = [
      ["tool calls", num(share.tool_calls)],
      ["model calls", num(share.calls)],
      ["embedding work (index syncs and queries)", `${num(share.embedding_rows)}, ${num(share.embedding_tokens)} tokens` +
        (share.embedding_failed ? `, ${num(share.embedding_failed)} failed` : "")],
      ["local tokens", num(share.local_tokens)],
      ["Claude tokens", num(share.claude_tokens)],
      ["Claude cost", usd(share.claude_cost_usd)],
      ["saved by running locally", usd(share.savings_usd)],
    ];
    $("totals").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  }

  function renderDaily(days) {
    const W = 1200, H = 220, left = 52, bottom = 24, top = 10;
    const peak = Math.max(0.01, ...days.map((d) => Math.max(d.cost_usd, d.savings_usd)));
    const scale = (v) => ((H - bottom - top) * v) / peak;
    const slot = (W - left) / days.length;
    const bar = Math.max(3, slot / 3 - 2);
    const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "Claude cost and savings per day", "data-chart": "daily" });
    for (const f of [0, 0.5, 1]) {
      const y = H - bottom - scale(peak * f);
      chart.append(svg("line", { x1: left, x2: W, y1: y, y2: y, stroke: COLORS.grid }));
      chart.append(svg("text", { x: left - 6, y: y + 4, "text-anchor": "end" }, usd(peak * f)));
    }
    days.forEach((d, i) => {
      const x = left + i * slot + slot / 2;
      const title = `${d.day}: Claude ${usd(d.cost_usd)}, saved ${usd(d.savings_usd)}, ${d.local_calls} local / ${d.claude_calls} Claude calls`;
      const group = svg("g", { "data-day": d.day }, svg("title", {}, title));
      group.append(svg("rect", { x: x - bar - 1, y: H - bottom - scale(d.cost_usd), width: bar, height: scale(d.cost_usd), fill: COLORS.claude, "data-series": "cost" }));
      group.append(svg("rect", { x: x + 1, y: H - bottom - scale(d.savings_usd), width: bar, height: scale(d.savings_usd), fill: COLORS.local, "data-series": "savings" }));
      if (i % 2 === days.length % 2 || i === days.length - 1) {
        group.append(svg("text", { x, y: H - 6, "text-anchor": "middle" }, d.day.slice(5)));
      }
      chart.append(group);
    });
    $("daily-chart").replaceChildren(chart);
    $("daily-legend").replaceChildren(
      el("li", {}, el("i", { style: `background:${COLORS.claude}` }), "Claude cost"),
      el("li", {}, el("i", { style: `background:${COLORS.local}` }), "saved by running locally (what Claude would have cost)"),
    );
  }

  function sparkline(points) {
    // One bar per 5-minute bucket of the last hour (the server's buckets), height = mean latency.
    const W = 160, H = 34, bucket = 300, slots = 12, now = Date.now() / 1000;
    const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, "data-chart": "latency" });
    chart.append(svg("line", { x1: 0, x2: W, y1: H - 0.5, y2: H - 0.5, stroke: COLORS.grid }));
    if (!points.length) {
      chart.append(svg("text", { x: 2, y: H - 8 }, "no calls in the last hour"));
      return chart;
    }
    const peak = Math.max(...points.map((p) => p.mean_ms), 1);
    const width = W / slots - 2;
    for (const p of points) {
      const slot = Math.min(slots - 1, Math.max(0, slots - 1 - Math.floor((now - p.start - bucket) / bucket)));
      const height = Math.max(2, ((H - 4) * p.mean_ms) / peak);
      chart.append(svg(
        "rect", { x: slot * (W / slots) + 1, y: H - 1 - height, width, height, fill: COLORS.local, "data-calls": p.calls },
        svg("title", {}, `${new Date(p.start * 1000).toLocaleTimeString()}: mean ${ms(p.mean_ms)}, max ${ms(p.max_ms)}, ${p.calls} calls`),
      ));
    }
    return chart;
  }

  // tables ----------------------------------------------------------------------------------------

  function renderHosts(hosts, tiers) {
    $("tiers").textContent = tiers.length ? `(tiers up: ${tiers.join(", ")})` : "(no tier is up)";
    const rows = hosts.map(({ status: h, latency }) => {
      const health = !h.enabled ? badge("disabled", "disabled") : h.healthy ? badge("healthy", "healthy") : badge("down", "down");
      const models = h.models.length
        ? h.models.map((m) => el("div", { class: "model" }, m.name, ...m.tiers.map((t) => el("span", { class: "tier" }, t))))
        : el("span", { class: "muted" }, h.last_error || "no models");
      const toggle = el("input", { type: "checkbox", checked: h.enabled, "aria-label": `${h.name} in rotation` });
      toggle.addEventListener("change", () => setEnabled(h.name, toggle.checked, toggle));
      return el(
        "tr", { dataset: { host: h.name } },
        el("td", {}, el("strong", {}, h.name), el("div", { class: "muted" }, `${h.kind} ${h.embedded ? "(embedded)" : ""}`)),
        el("td", {}, health, h.outlier ? el("div", { class: "muted" }, "outlier") : null),
        el("td", {}, badge(h.breaker, h.breaker.replace("_", "-"))),
        el("td", { class: "num" }, `${h.in_flight} / ${h.max_concurrency}`, el("div", { class: "muted" }, `${num(h.served)} served, ${num(h.failed)} failed`)),
        el("td", {}, sparkline(latency), el("div", { class: "muted" }, `now ${ms(h.latency_ewma_ms)}`)),
        el("td", {}, models),
        el("td", {}, el("label", { class: "switch" }, toggle, el("span"))),
      );
    });
    $("hosts").tBodies[0].replaceChildren(...rows);
  }

  function renderCalls(calls) {
    $("calls-empty").hidden = calls.length > 0;
    const rows = calls.map((c) => {
      const fresh = !firstRender && !seenCalls.has(c.id);
      seenCalls.add(c.id);
      const path = c.outcome === null ? badge("running", "running") : badge(c.path, PATH_LABEL[c.path] || c.path);
      const outcome = c.outcome && c.outcome !== "ok" ? badge(c.outcome, c.outcome) : null;
      const row = el(
        "tr",
        { dataset: { callId: c.id, path: c.path }, class: [fresh ? "fresh" : "", c.id === selectedCall ? "selected" : ""].join(" ").trim() || null, title: c.error || null },
        el("td", {}, clock(c.started)),
        el("td", { class: "id" }, c.id),
        el("td", {}, c.tool, outcome ? " " : null, outcome),
        el("td", {}, path),
        el("td", {}, c.host || "–"),
        el("td", {}, c.model || "–"),
        el("td", { class: "num" }, c.confidence === null ? "–" : c.confidence.toFixed(2)),
        el("td", { class: "num" }, c.seconds === null ? "…" : ms(c.seconds * 1000)),
        el("td", { class: "num" }, usd(c.cost_usd)),
        el("td", { class: "num" }, usd(c.savings_usd)),
      );
      row.addEventListener("click", () => showCall(c.id));
      return row;
    });
    $("calls").tBodies[0].replaceChildren(...rows);
  }

  function renderKinds(kinds, threshold) {
    $("kinds-threshold").textContent = threshold;
    $("kinds-empty").hidden = kinds.length > 0;
    const share = (v) => (v === null || v === undefined ? "–" : pct(v));
    const rows = kinds.map((k) => {
      const routing = !k.local ? badge("claude", "Claude")
        : k.competent === true ? badge("healthy", "competent")
        : k.competent === false ? badge("down", "skipped")
        : el("span", { class: "muted" }, "min_tier (prior)");
      const labelled = k.labels ? `${num(k.labels)} (${share(k.labelled_accuracy)})` : "–";
      const measured = k.measured_accuracy === null ? "–"
        : `${share(k.measured_accuracy)}, ${share(k.clear_accuracy)} of cleared (n=${num(k.measured_n)})`;
      return el(
        "tr", { dataset: { model: k.model, kind: k.kind } },
        el("td", {}, k.model),
        el("td", {}, k.kind),
        el("td", { class: "num" }, num(k.answers)),
        el("td", { class: "num" }, share(k.local_share)),
        el("td", { class: "num" }, labelled),
        el("td", { class: "num" }, measured),
        el("td", { class: "num" }, k.ece === null ? "–" : k.ece.toFixed(3)),
        el("td", { class: "num" }, k.threshold.toFixed(2)),
        el("td", {}, routing),
        el("td", { class: "muted" }, k.calibration),
      );
    });
    $("kinds").tBodies[0].replaceChildren(...rows);
  }

  // execution record ------------------------------------------------------------------------------

  function fields(pairs) {
    return el("dl", {}, pairs.filter(([, v]) => v !== undefined).flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v ?? "–")]));
  }

  async function showCall(id) {
    selectedCall = id;
    for (const row of $("calls").tBodies[0].rows) row.classList.toggle("selected", row.dataset.callId === id);
    $("detail").hidden = false;
    $("detail-title").textContent = `Execution record ${id}`;
    $("detail-body").replaceChildren(el("p", { class: "muted" }, "loading…"));
    const response = await fetch(`/dashboard/api/calls/${encodeURIComponent(id)}`, { headers: { Accept: "application/json" } });
    const data = await response.json();
    if (!response.ok) {
      $("detail-body").replaceChildren(el("p", { class: "login-error" }, data.error || `HTTP ${response.status}`));
      return;
    }
    const call = data.call, summary = data.summary;
    const parts = [
      el("h3", {}, "tool call"),
      fields([
        ["request id", el("code", {}, call.id)],
        ["tool", call.tool],
        ["started", new Date(call.started * 1000).toLocaleString()],
        ["took", call.seconds === null ? "running" : ms(call.seconds * 1000)],
        ["outcome", call.outcome ?? "running"],
        ["error", call.error ?? undefined],
        ["path", summary ? PATH_LABEL[summary.path] || summary.path : undefined],
        ["cost", summary ? `${usd(summary.cost_usd)} (saved ${usd(summary.savings_usd)})` : undefined],
      ]),
    ];
    data.executions.forEach((e, i) => {
      const c = e.confidence_parts || {};
      parts.push(
        el("h3", {}, data.executions.length > 1 ? `LLM answer ${i + 1}` : "LLM answer"),
        fields([
          ["path", badge(e.path, PATH_LABEL[e.path] || e.path)],
          ["host / model", `${e.host} / ${e.model}`],
          ["tier", e.tier],
          ["confidence", `${e.confidence.toFixed(3)} (threshold ${e.threshold})`],
          ["parts", Object.entries(c).filter(([, v]) => typeof v === "number" || typeof v === "boolean").map(([k, v]) => `${k} ${typeof v === "number" ? v.toFixed(2) : v}`).join(", ") || "–"],
          ["attempts", e.attempts],
          ["escalations", e.escalations.length ? e.escalations.join("; ") : "none"],
          ["reason", e.reason ?? undefined],
          ["tokens in / out", `${num(e.input_tokens)} / ${num(e.output_tokens)}`],
          ["latency", ms(e.latency_ms)],
          ["Claude cost", usd(e.cost_usd)],
          ["counterfactual Claude cost", usd(e.counterfactual_cost_usd)],
          ["timed out", e.timed_out ? "yes" : undefined],
        ]),
      );
    });
    if (!data.executions.length) {
      parts.push(el("p", { class: "muted" }, "No LLM answer recorded in this process (none was made, or the server restarted since); the ledger rows follow."));
    }
    parts.push(el("h3", {}, `model calls in the ledger (${data.model_calls.length})`));
    if (data.model_calls.length) {
      parts.push(el(
        "table", { class: "grid" },
        el("thead", {}, el("tr", {}, ["time", "path", "host", "model", "tier", "tokens", "latency", "cost"].map((h) => el("th", {}, h)))),
        el("tbody", {}, data.model_calls.map((r) => el(
          "tr", { title: r.error || null },
          el("td", {}, clock(r.ts)), el("td", {}, badge(r.path, PATH_LABEL[r.path] || r.path)), el("td", {}, r.host || "–"),
          el("td", {}, r.model || "–"), el("td", {}, r.tier || "–"), el("td", { class: "num" }, `${r.input_tokens}+${r.output_tokens}`),
          el("td", { class: "num" }, ms(r.latency_ms)), el("td", { class: "num" }, usd(r.cost_usd)),
        ))),
      ));
    }
    if (data.children.length) {
      parts.push(el("h3", {}, "tool calls it made"), el("ul", {}, data.children.map((k) => el("li", {}, `${k.tool} `, el("code", {}, k.id), ` ${k.outcome ?? "running"}`))));
    }
    if (selectedCall === id) $("detail-body").replaceChildren(...parts);
  }

  // actions ---------------------------------------------------------------------------------------

  async function setEnabled(name, enabled, toggle) {
    toggle.disabled = true;
    try {
      const response = await fetch(`/dashboard/api/hosts/${encodeURIComponent(name)}/enabled`, {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
        body: JSON.stringify({ enabled }),
      });
      if (!response.ok) {
        const data = await response.json().catch(() => ({}));
        toggle.checked = !enabled;
        showBanner(`Could not ${enabled ? "enable" : "disable"} ${name}: ${data.error || `HTTP ${response.status}`}`);
      }
    } finally {
      toggle.disabled = false;
    }
  }

  function showBanner(text) {
    $("banner").textContent = text;
    $("banner").hidden = !text;
  }

  // live updates ----------------------------------------------------------------------------------

  function render(snap) {
    $("uptime").textContent = `up ${duration(snap.uptime_s)} · threshold ${snap.threshold} · embedded: ${snap.embedded}`;
    renderShare(snap.share);
    renderBudget(snap.budget);
    renderTotals(snap.share);
    renderDaily(snap.daily);
    renderHosts(snap.hosts, snap.tiers_available);
    renderCalls(snap.calls);
    renderKinds(snap.kinds || [], snap.threshold);
    firstRender = false;
    document.body.dataset.rendered = String(Number(document.body.dataset.rendered || 0) + 1);
  }

  function live(state, text) {
    $("live").dataset.state = state;
    $("live-text").textContent = text;
  }

  function connect() {
    const events = new EventSource("/dashboard/events");
    events.addEventListener("snapshot", (event) => {
      live("live", "live");
      render(JSON.parse(event.data));
    });
    events.addEventListener("error", () => live("lost", "reconnecting…"));
  }

  $("detail-close").addEventListener("click", () => {
    $("detail").hidden = true;
    selectedCall = null;
    for (const row of $("calls").tBodies[0].rows) row.classList.remove("selected");
  });
  if (signedIn) {
    $("logout").hidden = false;
    $("logout").addEventListener("click", async () => {
      await fetch("/dashboard/logout", { method: "POST", headers: { "X-CSRF-Token": csrf } });
      window.location.reload();
    });
  }
  fetch("/dashboard/api/snapshot", { headers: { Accept: "application/json" } })
    .then((r) => (r.ok ? r.json() : null))
    .then((snap) => { if (snap && firstRender) render(snap); })
    .catch(() => {});
  connect();
})();
