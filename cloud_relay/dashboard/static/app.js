// cloud-relay dashboard: plain JS over the read-only JSON API, charts by vendored uPlot.
// Live updates: the page polls the API every `refresh_s` seconds (from /api/config)
// while the tab is visible and "live" is on. All text goes in with textContent.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const TOKEN_KEY = "cloud-relay-dashboard-token";
  const state = { page: 1, pageSize: 50, refreshS: 5, timer: null, charts: {}, busy: false, again: false, bucketS: 60 };

  // -- auth: a token from the URL fragment (never sent to the server) or the form --
  function takeTokenFromHash() {
    const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
    if (m) {
      sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
      history.replaceState(null, "", location.pathname + location.search);
    }
  }

  class Unauthorized extends Error {}

  async function api(path, params) {
    const qs = params ? "?" + new URLSearchParams(params).toString() : "";
    const headers = { Accept: "application/json" };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = "Bearer " + token;
    const res = await fetch("api/" + path + qs, { headers, credentials: "same-origin" });
    if (res.status === 401) throw new Unauthorized();
    const body = await res.json();
    if (!res.ok) throw new Error((body.error && body.error.message) || res.statusText);
    return body;
  }

  function showLogin(refused) {
    $("main").hidden = true;
    $("login").hidden = false;
    $("login-error").hidden = !refused;
    $("token").focus();
  }

  // -- formatting --------------------------------------------------------------
  const pad = (n) => String(n).padStart(2, "0");
  function when(ts) {
    if (ts == null) return "–";
    const d = new Date(ts * 1000);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
      `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }
  function ago(ts, now) {
    if (ts == null) return "never";
    const s = Math.max(0, now - ts);
    if (s < 60) return `${Math.round(s)} s ago`;
    if (s < 3600) return `${Math.round(s / 60)} min ago`;
    if (s < 86400) return `${Math.round(s / 3600)} h ago`;
    return `${Math.round(s / 86400)} d ago`;
  }
  const pct = (v) => (v == null ? "–" : `${(v * 100).toFixed(1)} %`);
  const ms = (v) => (v == null ? "–" : v < 10000 ? `${Math.round(v)} ms` : `${(v / 1000).toFixed(1)} s`);
  function usd(v) {
    if (v == null) return "–";
    if (v === 0) return "$0";
    return v >= 0.01 ? `$${v.toFixed(2)}` : `$${v.toPrecision(3)}`;
  }
  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text != null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function short(text, n) {
    if (!text) return "";
    const flat = String(text).replace(/\s+/g, " ").trim();
    return flat.length > n ? flat.slice(0, n - 1) + "…" : flat;
  }
  // An act answer as a call: set_temperature(room="bedroom", celsius=21).
  function callText(call) {
    const args = Object.entries(call.arguments || {}).map(([k, v]) => `${k}=${JSON.stringify(v)}`);
    return `${call.name}(${args.join(", ")})`;
  }
  // What a side answered: its call (act), object (extract), label, or text.
  function answerText(call, data, label, answer) {
    if (call) return callText(call);
    if (data) return JSON.stringify(data);
    return label || answer;
  }

  // -- filters -----------------------------------------------------------------
  function epochOf(input) {
    return input.value ? String(new Date(input.value).getTime() / 1000) : "";
  }
  function filterParams() {
    const p = {};
    const device = $("f-device").value;
    const outcome = $("f-outcome").value;
    const q = $("f-q").value.trim();
    const range = $("f-range").value;
    if (device) p.device = device;
    if (outcome) p.outcome = outcome;
    if (q) p.q = q;
    if (range === "custom") {
      const since = epochOf($("f-from"));
      const until = epochOf($("f-to"));
      if (since) p.since = since;
      if (until) p.until = until;
    } else if (range !== "all") {
      p.since = String(Date.now() / 1000 - Number(range));
    }
    return p;
  }
  function syncCustom() {
    document.body.classList.toggle("custom-range", $("f-range").value === "custom");
  }
  function filtersChanged() {
    state.page = 1;
    refresh();
  }

  // -- rendering ---------------------------------------------------------------
  function renderSummary(s) {
    $("c-escalations").textContent = s.escalations;
    $("c-errors").textContent =
      `${s.errors} error${s.errors === 1 ? "" : "s"} (${pct(s.error_rate)})` +
      (s.in_flight ? ` · ${s.in_flight} in flight` : "");
    $("c-latency").textContent = s.p50_ms == null ? "–" : `${ms(s.p50_ms)} / ${ms(s.p95_ms)}`;
    $("c-cost").textContent = usd(s.cost_usd);
    $("c-avoided").textContent = usd(s.cost_avoided_usd);
    $("c-agree").textContent = pct(s.agreement_rate);
    $("c-online").textContent = `${s.online} / ${s.devices}`;
    $("c-devices").textContent = `${s.devices} device${s.devices === 1 ? "" : "s"} known`;
  }

  function renderDeviceOptions(devices) {
    const select = $("f-device");
    const current = select.value;
    const known = new Set(devices.map((d) => d.device_id));
    if (current) known.add(current);
    const wanted = ["", ...[...known].sort()];
    const have = [...select.options].map((o) => o.value);
    if (wanted.join("\n") === have.join("\n")) return;
    select.replaceChildren(el("option", "all devices"));
    select.options[0].value = "";
    for (const id of wanted.slice(1)) {
      const o = el("option", id);
      o.value = id;
      select.append(o);
    }
    select.value = current;
  }

  // The classify head per skill: the version the relay pushed, @0 for the device's own fit;
  // then how many learned label sets (named _labels-<hash>) the device keeps.
  function heads(h) {
    const names = Object.keys(h || {}).sort();
    const skills = names.filter((k) => !k.startsWith("_labels-"));
    const sets = names.length - skills.length;
    const parts = skills.map((k) => `${k}@${h[k]}`);
    if (sets) parts.push(`+${sets} label set${sets > 1 ? "s" : ""}`);
    return parts.length ? parts.join(", ") : "–";
  }

  function renderDevices(body) {
    const tbody = $("devices").tBodies[0];
    const selected = $("f-device").value;
    const rows = body.devices.map((d) => {
      const tr = document.createElement("tr");
      tr.dataset.device = d.device_id;
      tr.dataset.status = d.status;
      if (d.device_id === selected) tr.classList.add("selected");
      const status = el("td");
      status.append(el("span", d.status, `badge status-${d.status}`));
      const r = d.requests || {}; // null before the device's first telemetry: unknown
      const n = (v) => v ?? "–";
      tr.append(
        el("td", d.device_id, "mono"), status, el("td", ago(d.last_seen, body.now)),
        el("td", d.model ? (d.model_version ? `${d.model}@${d.model_version}` : d.model) : "–"),
        el("td", d.provider || "–"),
        el("td", heads(d.heads), "mono"),
        el("td", d.embedder || "–", "mono"),
        el("td", n(r.edge), "n"), el("td", n(r.cloud), "n"), el("td", n(r["edge-fallback"]), "n"),
        el("td", n(r.error), "n"), el("td", pct(d.escalation_rate), "n"),
        el("td", usd(d.cost_avoided_usd), "n"),
      );
      tr.title = "show only this device";
      tr.addEventListener("click", () => {
        $("f-device").value = $("f-device").value === d.device_id ? "" : d.device_id;
        filtersChanged();
      });
      return tr;
    });
    if (!rows.length) {
      const tr = el("tr");
      const td = el("td", "No device has reported yet.", "empty");
      td.colSpan = 13;
      tr.append(td);
      rows.push(tr);
    }
    tbody.replaceChildren(...rows);
    const online = body.devices.filter((d) => d.status === "online").length;
    $("devices-meta").textContent = `${online} online of ${body.devices.length}`;
  }

  function renderLogs(body) {
    const tbody = $("logs").tBodies[0];
    const rows = body.rows.map((r) => {
      const tr = document.createElement("tr");
      tr.dataset.device = r.device_id;
      tr.dataset.outcome = r.outcome || "in_flight";
      tr.dataset.request = r.request_id;
      const outcome = el("td");
      outcome.append(el("span", r.outcome || "in flight", `badge outcome-${r.outcome || "in_flight"}`));
      const agree = r.agreement == null ? "–" : r.agreement ? "yes" : "no";
      const edge = answerText(r.edge_tool_call, r.edge_data, r.edge_label, r.edge_answer);
      const edgeText = edge
        ? `${short(edge, 40)}${r.edge_confidence == null ? "" : ` (${r.edge_confidence.toFixed(2)})`}`
        : "–";
      const cloud = r.outcome && r.outcome !== "ok" && r.error
        ? r.error
        : answerText(r.cloud_tool_call, r.cloud_data, r.cloud_label, r.cloud_answer);
      const edgeCell = el("td", edgeText, "answer");
      const cloudCell = el("td", short(cloud, 60) || "–", "answer");
      if (edge) edgeCell.title = edge; // the whole call when the cell cuts it short
      if (cloud) cloudCell.title = cloud;
      const reqCell = el("td", short(r.request_id, 18), "mono");
      reqCell.title = r.text ? `${r.request_id}\n${r.text}` : r.request_id;
      tr.append(
        el("td", when(r.received_at), "nowrap"), el("td", r.device_id, "mono"), reqCell,
        el("td", r.task || "–"), el("td", r.reason || "–"), outcome,
        el("td", ms(r.latency_ms), "n"), el("td", `${r.tokens_in}/${r.tokens_out}`, "n"),
        el("td", usd(r.cost_usd), "n"), el("td", agree, `agree-${agree}`),
        edgeCell, cloudCell,
      );
      return tr;
    });
    if (!rows.length) {
      const tr = el("tr");
      const td = el("td", "No escalation matches these filters.", "empty");
      td.colSpan = 12;
      tr.append(td);
      rows.push(tr);
    }
    tbody.replaceChildren(...rows);
    const first = body.total ? (body.page - 1) * body.page_size + 1 : 0;
    const last = Math.min(body.page * body.page_size, body.total);
    $("logs-meta").textContent = `${body.total} matching`;
    $("page-info").textContent = `rows ${first}–${last} of ${body.total} · page ${body.page} of ${body.pages}`;
    $("prev").disabled = body.page <= 1;
    $("next").disabled = body.page >= body.pages;
  }

  // -- charts (uPlot) ----------------------------------------------------------
  const COLORS = { blue: "#2563eb", sky: "#0ea5e9", amber: "#d97706", green: "#059669", violet: "#7c3aed", rose: "#e11d48" };
  const CHARTS = {
    rate: {
      el: "chart-rate",
      series: [{ label: "escalation rate", stroke: COLORS.violet, fill: "rgba(124,58,237,0.08)", key: "escalation_rate" }],
      fmt: (v) => (v == null ? "–" : `${Math.round(v * 100)}%`),
      range: "share",
    },
    latency: {
      el: "chart-latency",
      series: [
        { label: "cloud p50", stroke: COLORS.blue, key: "cloud_p50_ms" },
        { label: "cloud p95", stroke: COLORS.sky, dash: [4, 4], key: "cloud_p95_ms" },
        { label: "edge p50", stroke: COLORS.amber, key: "edge_p50_ms" },
      ],
      fmt: (v) => (v == null ? "–" : `${Math.round(v)}`),
    },
    cost: {
      el: "chart-cost",
      series: [
        { label: "cloud cost", stroke: COLORS.rose, key: "cost_usd" },
        { label: "cost avoided", stroke: COLORS.green, fill: "rgba(5,150,105,0.08)", key: "cost_avoided_usd" },
      ],
      fmt: (v) => (v == null ? "–" : `$${v.toPrecision(2)}`),
    },
    agree: {
      el: "chart-agree",
      series: [{ label: "agreement", stroke: COLORS.green, key: "agreement_rate" }],
      fmt: (v) => (v == null ? "–" : `${Math.round(v * 100)}%`),
      range: "share",
    },
  };

  // Axis ticks: the clock for short buckets, the date for day-sized ones.
  function tick(v) {
    const d = new Date(v * 1000);
    if (state.bucketS >= 86400) return `${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
    const hm = `${pad(d.getHours())}:${pad(d.getMinutes())}`;
    return state.bucketS < 60 ? `${hm}:${pad(d.getSeconds())}` : hm;
  }

  function yRange(kind) {
    if (kind === "share") return [0, 1];
    return (_u, _lo, hi) => [0, hi > 0 ? hi * 1.1 : 1];
  }

  function chartSize(box) {
    return { width: Math.max(240, box.clientWidth), height: 190 };
  }

  function makeChart(def, data) {
    const box = $(def.el);
    const opts = {
      ...chartSize(box),
      cursor: { drag: { x: false, y: false } },
      legend: { show: true, live: true },
      scales: { x: { time: true }, y: { range: yRange(def.range) } },
      axes: [
        {
          stroke: "#64748b", grid: { stroke: "#eef2f7" }, ticks: { stroke: "#e2e8f0" },
          values: (_u, vals) => vals.map(tick),
          space: 80, // px between time ticks: HH:MM:SS labels must not touch
        },
        {
          stroke: "#64748b", grid: { stroke: "#eef2f7" }, ticks: { stroke: "#e2e8f0" }, size: 72,
          values: (_u, vals) => vals.map(def.fmt),
        },
      ],
      series: [
        { value: (_u, v) => (v == null ? "–" : when(v)) },
        ...def.series.map((s) => ({
          label: s.label, stroke: s.stroke, fill: s.fill, dash: s.dash, width: 2, spanGaps: true,
          points: { show: true, size: 7 }, value: (_u, v) => def.fmt(v),
        })),
      ],
    };
    return new uPlot(opts, data, box);
  }

  function renderCharts(series) {
    state.bucketS = series.bucket_s;
    for (const [name, def] of Object.entries(CHARTS)) {
      const data = [series.t, ...def.series.map((s) => series[s.key])];
      if (state.charts[name]) state.charts[name].setData(data);
      else state.charts[name] = makeChart(def, data);
    }
  }

  function resizeCharts() {
    for (const [name, def] of Object.entries(CHARTS)) {
      const chart = state.charts[name];
      if (chart) chart.setSize(chartSize($(def.el)));
    }
  }

  // -- refresh loop ------------------------------------------------------------
  async function refresh() {
    if (state.busy) {
      state.again = true; // filters changed mid-flight: run once more with the new ones
      return;
    }
    state.busy = true;
    const params = filterParams();
    try {
      const [devices, summary, series, logs] = await Promise.all([
        api("devices"),
        api("summary", params),
        api("series", params),
        api("logs", { ...params, page: String(state.page), page_size: String(state.pageSize) }),
      ]);
      renderDeviceOptions(devices.devices);
      renderDevices(devices);
      renderSummary(summary);
      renderCharts(series);
      renderLogs(logs);
      $("updated").textContent = `updated ${when(Date.now() / 1000).slice(11)}`;
      $("updated").classList.remove("error");
      document.body.dataset.loaded = "true";
    } catch (err) {
      if (err instanceof Unauthorized) {
        sessionStorage.removeItem(TOKEN_KEY);
        showLogin(true);
      } else {
        $("updated").textContent = `update failed: ${err.message}`;
        $("updated").classList.add("error");
      }
    } finally {
      state.busy = false;
      if (state.again) {
        state.again = false;
        refresh();
      }
    }
  }

  function schedule() {
    clearInterval(state.timer);
    state.timer = null;
    if ($("live").checked) {
      state.timer = setInterval(() => {
        if (!document.hidden) refresh();
      }, state.refreshS * 1000);
    }
  }

  async function start() {
    takeTokenFromHash();
    let config;
    try {
      config = await api("config");
    } catch (err) {
      if (err instanceof Unauthorized) return showLogin(false);
      $("updated").textContent = `cannot reach the API: ${err.message}`;
      return undefined;
    }
    state.refreshS = config.refresh_s;
    $("version").textContent = `edge-slm ${config.version} · refresh every ${config.refresh_s} s`;
    if ($("f-outcome").options.length === 1) for (const o of config.outcomes) {
      const opt = el("option", o.replace(/_/g, " "));
      opt.value = o;
      $("f-outcome").append(opt);
    }
    if (config.auth === "token" && !sessionStorage.getItem(TOKEN_KEY)) return showLogin(false);
    $("main").hidden = false;
    $("login").hidden = true;
    await refresh();
    schedule();
    return undefined;
  }

  // -- wiring ------------------------------------------------------------------
  document.addEventListener("DOMContentLoaded", () => {
    for (const id of ["f-device", "f-outcome", "f-from", "f-to"]) $(id).addEventListener("change", filtersChanged);
    $("f-range").addEventListener("change", () => { syncCustom(); filtersChanged(); });
    let debounce = null;
    $("f-q").addEventListener("input", () => {
      clearTimeout(debounce);
      debounce = setTimeout(filtersChanged, 300);
    });
    $("filters").addEventListener("submit", (e) => { e.preventDefault(); filtersChanged(); });
    $("f-reset").addEventListener("click", () => {
      $("filters").reset();
      syncCustom();
      filtersChanged();
    });
    $("prev").addEventListener("click", () => { state.page = Math.max(1, state.page - 1); refresh(); });
    $("next").addEventListener("click", () => { state.page += 1; refresh(); });
    $("live").addEventListener("change", schedule);
    $("login-form").addEventListener("submit", (e) => {
      e.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, $("token").value);
      $("token").value = "";
      start();
    });
    let resizeTimer = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(resizeCharts, 150);
    });
    // A link with #token=... opened on this page only changes the fragment: no reload.
    window.addEventListener("hashchange", () => {
      if (/(?:^#|&)token=/.test(location.hash)) start();
    });
    syncCustom();
    start();
  });
})();
