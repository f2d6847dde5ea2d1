// image-worker dashboard: reads api/overview every few seconds and draws it.
//
// Every value reaches the page through textContent or an attribute, never as markup: job error
// messages are user-influenced. Actions send the operator's token in an Authorization header,
// kept in sessionStorage for this tab only (never a cookie, so no other site can make the
// browser send it).
"use strict";

(() => {
  const TOKEN_KEY = "image-worker-dashboard-token";
  const SVG = "http://www.w3.org/2000/svg";
  const TRIGGERS = ["realtime", "catchup", "poll", "sweep", "unknown"];
  let refreshMs = 3000;
  let timer = null;
  let actions = false;

  const $ = (id) => document.getElementById(id);

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "className") node.className = value;
      else if (key === "text") node.textContent = value;
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
    for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    return node;
  }

  function age(seconds) {
    if (seconds === null || seconds === undefined) return "-";
    const negative = seconds < 0;
    let s = Math.abs(seconds);
    let text;
    if (s < 60) text = `${Math.round(s)}s`;
    else if (s < 3600) text = `${Math.floor(s / 60)}m ${Math.floor(s % 60)}s`;
    else if (s < 86400) text = `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
    else text = `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
    return negative ? `-${text}` : text;
  }

  const number = (n) => Number(n || 0).toLocaleString("en-US");

  // --- token

  function token() {
    try { return sessionStorage.getItem(TOKEN_KEY) || ""; } catch { return ""; }
  }

  function setToken(value) {
    try {
      if (value) sessionStorage.setItem(TOKEN_KEY, value);
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch { /* storage disabled: actions will be refused */ }
    showTokenState();
  }

  function showTokenState() {
    $("token-state").textContent = token()
      ? "token set for this tab"
      : "no token: actions will be refused";
  }

  // --- messages

  function flash(text, kind) {
    const node = $("flash");
    node.textContent = text;
    node.className = `flash ${kind}`;
    node.hidden = false;
  }

  function setConnection(ok, text) {
    const node = $("connection");
    node.textContent = text;
    node.classList.toggle("down", !ok);
  }

  // --- actions

  async function act(kind, id) {
    const verb = kind === "replay" ? "Replay" : "Cancel";
    if (!window.confirm(`${verb} job ${id}?`)) return;
    const headers = { "Accept": "application/json" };
    const secret = token();
    if (secret) headers["Authorization"] = `Bearer ${secret}`;
    let answer;
    let status = 0;
    try {
      const response = await fetch(`api/jobs/${encodeURIComponent(id)}/${kind}`, {
        method: "POST", headers, credentials: "omit", cache: "no-store",
      });
      status = response.status;
      answer = await response.json().catch(() => ({}));
    } catch (error) {
      flash(`${verb} of job ${id} failed: ${error.message}`, "refused");
      return;
    }
    const message = (answer && answer.message) || `HTTP ${status}`;
    if (status === 200 && answer.ok) {
      flash(`Job ${id}: ${message}`, "ok");
    } else if (status === 401 || status === 403) {
      flash(`Refused (HTTP ${status}): ${message}`, "refused");
    } else {
      flash(`Job ${id}: ${message} (HTTP ${status})`, "refused");
    }
    refreshNow();
  }

  function actionButtons(id, kinds) {
    if (!actions) return null;
    return el("td", { className: "actions" },
      kinds.map(([kind, disabled]) => el("button", {
        type: "button",
        className: kind === "cancel" ? "danger" : undefined,
        "data-action": kind,
        "data-job-id": id,
        "aria-label": `${kind} job ${id}`,
        disabled,
        onclick: () => act(kind, id),
      }, kind === "replay" ? "Replay" : "Cancel")));
  }

  // --- drawing

  function table(columns, rows, emptyText) {
    if (!rows.length) return el("p", { className: "empty" }, emptyText);
    const head = el("tr", {}, columns.map(([label, cls]) => el("th", { className: cls }, label)));
    if (actions && rows.some((r) => r.actions)) head.append(el("th", { className: "actions" }, ""));
    return el("table", {},
      el("thead", {}, head),
      el("tbody", {}, rows.map((r) => el("tr", { "data-job-id": r.id }, r.cells, r.actions))));
  }

  const cell = (value, cls) => el("td", { className: cls }, value);
  const idCell = (id) => el("td", {}, el("code", { className: "id" }, id));

  function progressCell(value) {
    const pct = Math.max(0, Math.min(100, Number(value) || 0));
    const fill = el("span", { className: "fill" });
    fill.style.width = `${pct}%`;  // CSSOM, allowed by the CSP (no inline style attribute)
    return el("td", {}, el("span", {
      className: "progress", role: "progressbar", "aria-valuenow": pct,
      "aria-valuemin": 0, "aria-valuemax": 100,
    }, el("span", { className: "track" }, fill), `${pct}%`));
  }

  function leaseText(left) {
    if (left === null || left === undefined) return el("span", { className: "expired" }, "no lease");
    if (left >= 0) return `${age(left)} left`;
    return el("span", { className: "expired" }, `expired ${age(-left)} ago`);
  }

  function drawCounts(doc) {
    const counts = doc.counts || {};
    const capped = new Set(doc.counts_capped || []);
    const shown = (name) => number(counts[name]) + (capped.has(name) ? "+" : "");
    const card = (name, label, value, note, alert) => el("div", {
      className: `card ${name}${alert ? " alert" : ""}`, "data-status": name,
    }, el("div", { className: "value" }, value), el("div", { className: "label" }, label),
    note ? el("div", { className: "note" }, note) : null);
    const delayed = doc.pending_delayed ? `${number(doc.pending_delayed)} delayed` : null;
    $("counts").replaceChildren(
      card("pending", "pending", shown("pending"), delayed),
      card("oldest", "oldest pending", age(doc.oldest_pending_age_seconds), "waiting"),
      card("running", "running", shown("running")),
      card("stuck", "stuck", number(doc.stuck_count), "lease expired", doc.stuck_count > 0),
      card("complete", "complete", shown("complete")),
      card("failed", "failed", shown("failed")),
      card("cancelled", "cancelled", shown("cancelled")),
    );
  }

  function drawChart(doc) {
    const points = doc.throughput || [];
    const totals = { complete: 0, failed: 0, cancelled: 0 };
    for (const p of points) for (const k in totals) totals[k] += p[k] || 0;
    $("chart-summary").textContent =
      `${number(totals.complete)} complete, ${number(totals.failed)} failed, ` +
      `${number(totals.cancelled)} cancelled`;
    // Drawn at the panel's own width, so text is never stretched.
    const width = Math.max(320, Math.round($("chart").clientWidth || 600));
    const height = 180, left = 34, bottom = 18, top = 8;
    const max = Math.max(1, ...points.map((p) => (p.complete || 0) + (p.failed || 0) + (p.cancelled || 0)));
    const plotH = height - bottom - top;
    const step = points.length ? (width - left) / points.length : 0;
    const root = svg("svg", {
      viewBox: `0 0 ${width} ${height}`, role: "img",
      "aria-label": `jobs ended per minute over the last hour, at most ${max} in a minute`,
    });
    root.append(
      svg("line", { class: "axis", x1: left, y1: top + plotH, x2: width, y2: top + plotH }),
      svg("text", { x: left - 4, y: top + 8, "text-anchor": "end" }, String(max)),
      svg("text", { x: left - 4, y: top + plotH, "text-anchor": "end" }, "0"),
    );
    points.forEach((p, i) => {
      const x = left + i * step + 1;
      let y = top + plotH;
      const minute = new Date(p.minute);
      const label = `${minute.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })}: ` +
        `${p.complete || 0} complete, ${p.failed || 0} failed, ${p.cancelled || 0} cancelled`;
      const group = svg("g", {}, svg("title", {}, label));
      for (const kind of ["complete", "failed", "cancelled"]) {
        const h = ((p[kind] || 0) / max) * plotH;
        if (h <= 0) continue;
        y -= h;
        group.append(svg("rect", {
          class: `bar-${kind}`, x, y, width: Math.max(step - 2, 1), height: h,
        }));
      }
      root.append(group);
    });
    if (points.length) {
      const n = points.length;
      const ticks = [
        [left, `-${n}m`, "start"],
        [left + (width - left) / 2, `-${Math.round(n / 2)}m`, "middle"],
        [width, "now", "end"],
      ];
      for (const [x, text, anchor] of ticks) {
        root.append(svg("text", { x, y: height - 4, "text-anchor": anchor }, text));
      }
    }
    $("chart").replaceChildren(root);
  }

  function drawPickups(doc) {
    const pickups = doc.pickups || {};
    const total = Object.values(pickups).reduce((a, b) => a + b, 0);
    if (!total) {
      $("pickups").replaceChildren(el("p", { className: "empty" }, "No claims in the last hour."));
      return;
    }
    const names = TRIGGERS.filter((t) => pickups[t]).concat(
      Object.keys(pickups).filter((t) => !TRIGGERS.includes(t)));
    const bar = el("div", { className: "pickup-bar", role: "img", "aria-label": "pickups by trigger" });
    for (const name of names) {
      const part = el("span", { className: TRIGGERS.includes(name) ? name : "unknown", title: `${name}: ${pickups[name]}` });
      part.style.width = `${(100 * pickups[name]) / total}%`;
      bar.append(part);
    }
    const realtime = pickups.realtime || 0;
    $("pickups").replaceChildren(
      el("p", {}, el("strong", {}, `${Math.round((100 * realtime) / total)}%`),
        ` by Realtime push (${number(realtime)} of ${number(total)})`),
      bar,
      table([["trigger"], ["jobs", "num"], ["share", "num"]],
        names.map((name) => ({
          id: name,
          cells: [cell(name), cell(number(pickups[name]), "num"),
            cell(`${Math.round((100 * pickups[name]) / total)}%`, "num")],
        })), ""),
    );
  }

  function drawWorkers(doc) {
    $("workers").replaceChildren(table(
      [["worker"], ["running", "num"], ["stuck", "num"], ["next lease expiry", "num"]],
      doc.workers.map((w) => ({
        id: w.worker_id,
        cells: [cell(w.worker_id || "-"), cell(number(w.running), "num"),
          cell(number(w.stuck), "num"), el("td", { className: "num" }, leaseText(w.min_lease_seconds_left))],
      })),
      "No worker holds a job right now."));
  }

  function drawRunning(doc) {
    const shown = doc.running.length;
    const total = (doc.counts || {}).running || 0;
    $("running-title").textContent = shown < total ? `Running (${shown} of ${number(total)}, oldest first)` : `Running (${number(total)})`;
    $("running").replaceChildren(table(
      [["job"], ["worker"], ["progress"], ["attempts", "num"], ["running for", "num"], ["lease", "num"]],
      doc.running.map((r) => ({
        id: r.id,
        cells: [idCell(r.id), cell(r.worker_id || "-"), progressCell(r.progress),
          cell(r.attempts, "num"), cell(age(r.running_seconds), "num"),
          el("td", { className: "num" }, leaseText(r.lease_seconds_left),
            r.cancel_requested ? el("div", { className: "muted" }, "cancel requested") : null)],
        actions: actionButtons(r.id, [["cancel", r.cancel_requested]]),
      })),
      "No job is running."));
  }

  function drawStuck(doc) {
    $("stuck").replaceChildren(table(
      [["job"], ["last worker"], ["progress"], ["attempts", "num"], ["lease expired", "num"]],
      doc.stuck.map((r) => ({
        id: r.id,
        cells: [idCell(r.id), cell(r.worker_id || "-"), progressCell(r.progress),
          cell(r.attempts, "num"),
          cell(r.lease_expired_seconds === null ? "no lease" : `${age(r.lease_expired_seconds)} ago`, "num expired")],
        actions: actionButtons(r.id, [["replay", false], ["cancel", r.cancel_requested]]),
      })),
      "Nothing is stuck."));
  }

  function drawFailures(doc) {
    $("failures").replaceChildren(table(
      [["job"], ["failed", "num"], ["attempts", "num"], ["reason"]],
      doc.recent_failures.map((f) => ({
        id: f.id,
        cells: [idCell(f.id), cell(`${age(f.failed_seconds_ago)} ago`, "num"),
          cell(f.attempts, "num"), cell(f.error_message || "", "reason")],
        actions: actionButtons(f.id, [["replay", false]]),
      })),
      "No failures."));
  }

  function drawPending(doc) {
    $("pending").replaceChildren(table(
      [["job"], ["waiting", "num"], ["attempts", "num"], ["not before", "num"]],
      doc.oldest_pending.map((p) => ({
        id: p.id,
        cells: [idCell(p.id), cell(age(p.waiting_seconds), "num"), cell(p.attempts, "num"),
          cell(p.delayed_seconds > 0 ? `in ${age(p.delayed_seconds)}` : "now", "num")],
        actions: actionButtons(p.id, [["cancel", false]]),
      })),
      "The queue is empty."));
  }

  function render(doc) {
    actions = Boolean(doc.actions);
    $("token-form").hidden = !actions;
    if (doc.refresh_seconds) refreshMs = Math.max(1000, doc.refresh_seconds * 1000);
    drawCounts(doc);
    drawChart(doc);
    drawPickups(doc);
    drawWorkers(doc);
    drawRunning(doc);
    drawStuck(doc);
    drawFailures(doc);
    drawPending(doc);
    const at = doc.now ? new Date(doc.now).toLocaleTimeString() : "";
    setConnection(true, `live · as of ${at} · refreshes every ${Math.round(refreshMs / 1000)} s` +
      (actions ? "" : " · read-only"));
    document.body.dataset.loaded = "true";
  }

  async function refresh() {
    clearTimeout(timer);
    try {
      const response = await fetch("api/overview", {
        headers: { "Accept": "application/json" }, credentials: "omit", cache: "no-store",
      });
      const doc = await response.json().catch(() => ({}));
      if (!response.ok) throw new Error(doc.error || `HTTP ${response.status}`);
      render(doc);
    } catch (error) {
      setConnection(false, `not updating: ${error.message} (retrying)`);
    } finally {
      timer = setTimeout(refresh, refreshMs);
    }
  }

  function refreshNow() { refresh(); }

  document.addEventListener("DOMContentLoaded", () => {
    $("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const input = $("token-input");
      setToken(input.value.trim());
      input.value = "";
    });
    $("token-forget").addEventListener("click", () => setToken(""));
    showTokenState();
    refresh();
  });
})();
