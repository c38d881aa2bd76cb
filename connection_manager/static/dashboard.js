/*
 * Connection Manager admin dashboard.
 *
 * A single page that reads and corrects connection records through the JSON admin API.
 * No framework and no build step: the page must work from a Lambda package as-is.
 * Every value that comes from the API reaches the DOM through textContent or
 * setAttribute, never through HTML parsing, because user ids and metadata are
 * attacker-controlled (they come from WebSocket clients).
 */
"use strict";

(() => {
  const REFRESH_EVERY_MS = 10_000;
  const RELATIVE_TIME_TICK_MS = 15_000;
  const HISTORY_POINTS = 90; // 15 minutes of samples at the auto-refresh rate
  const SVG_NS = "http://www.w3.org/2000/svg";
  const STORAGE = {
    token: "connectionManager.adminToken",
    autoRefresh: "connectionManager.autoRefresh",
    pageSize: "connectionManager.pageSize",
  };

  // ---------------------------------------------------------------------------------
  // Small DOM helpers

  const byId = (id) => document.getElementById(id);

  /** Build an element; `text` goes through textContent, everything else through setAttribute. */
  function h(tag, attrs = {}, children = []) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "text") node.textContent = String(value);
      else if (key === "class") node.className = value;
      else if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
      else if (key === "disabled") node.disabled = Boolean(value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of [].concat(children)) {
      if (child !== null && child !== undefined && child !== false) node.append(child);
    }
    return node;
  }

  const els = {
    tableName: byId("table-name"),
    apiState: byId("api-state"),
    lastUpdated: byId("last-updated"),
    autoRefresh: byId("auto-refresh"),
    refreshBtn: byId("refresh-btn"),
    tokenBox: byId("token-box"),
    token: byId("admin-token"),
    status: byId("status-line"),
    kpiActive: byId("kpi-active"),
    kpiUsers: byId("kpi-users"),
    kpiStale: byId("kpi-stale"),
    kpiStaleCard: byId("kpi-stale-card"),
    kpiStaleSub: byId("kpi-stale-sub"),
    cleanupForm: byId("cleanup-form"),
    cleanupStaleAfter: byId("cleanup-stale-after"),
    cleanupHuman: byId("cleanup-threshold-human"),
    cleanupDryRun: byId("cleanup-dry-run"),
    cleanupRun: byId("cleanup-run"),
    cleanupResult: byId("cleanup-result"),
    scope: byId("scope"),
    filterForm: byId("filter-form"),
    userFilter: byId("user-filter"),
    statusFilter: byId("status-filter"),
    idleFilter: byId("idle-filter"),
    idleUnit: byId("idle-unit"),
    ipFilter: byId("ip-filter"),
    uaFilter: byId("ua-filter"),
    filterClear: byId("filter-clear"),
    exportCsv: byId("export-csv"),
    charts: { sweeps: byId("chart-sweeps"), idle: byId("chart-idle"), topUsers: byId("chart-top-users") },
    sweepsNote: byId("sweeps-note"),
    idleNote: byId("idle-note"),
    topUsersNote: byId("top-users-note"),
    findForm: byId("find-form"),
    findInput: byId("find-connection"),
    rows: byId("rows"),
    details: byId("details"),
    pagerControls: byId("pager-controls"),
    pageInfo: byId("page-info"),
    pageSize: byId("page-size"),
    firstPage: byId("first-page"),
    prevPage: byId("prev-page"),
    nextPage: byId("next-page"),
    sparks: { activeConnections: byId("spark-active"), distinctUsers: byId("spark-users"), staleConnections: byId("spark-stale") },
    dialog: byId("confirm-dialog"),
    dialogTitle: byId("confirm-title"),
    dialogMessage: byId("confirm-message"),
    dialogOk: byId("confirm-ok"),
  };

  // ---------------------------------------------------------------------------------
  // State

  const state = {
    // { kind: "list", filters } (live rows, filtered as GET /connections filters them),
    // { kind: "history", userId } (a user's DISCONNECTED rows) or { kind: "single", connectionId }
    view: { kind: "list", filters: {} },
    pageTokens: [null], // the token that opens each page we have visited; index 0 is the first page
    pageIndex: 0,
    nextToken: null,
    records: [],
    viewGeneration: 0, // answers to an older view are dropped
    stats: null,
    staleAfterSeconds: 3600,
    thresholdEdited: false,
    skewMs: 0, // server clock minus browser clock, so "3 min ago" is right on a skewed laptop
    refreshing: null, // the running refresh, a Promise
    lastRefreshAt: 0,
    statusFromRefresh: false,
    dryRun: null, // { staleAfterSeconds, count } from the last dry run, enabling "Run cleanup"
    busy: new Set(),
    history: [], // KPI samples taken while the page is open, for the sparklines
    sweeps: null, // GET /stats/history, for the sweep chart
  };

  const serverNow = () => Date.now() + state.skewMs;

  // ---------------------------------------------------------------------------------
  // API access

  const apiBase = (document.querySelector('meta[name="api-base"]')?.getAttribute("content") || "").replace(/\/+$/, "");

  /** Without a base, URLs stay relative to the page so a stage prefix in front of "/" still works. */
  function apiUrl(path) {
    return apiBase ? apiBase + path : path.replace(/^\//, "");
  }

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
    get isAuth() {
      return this.status === 401 || this.status === 403;
    }
  }

  function getToken() {
    try {
      return sessionStorage.getItem(STORAGE.token) || "";
    } catch {
      return els.token.value.trim();
    }
  }

  /** The URL of an API path with its query; empty values are left out. */
  function urlWithQuery(path, query) {
    let url = apiUrl(path);
    if (query) {
      const params = new URLSearchParams();
      for (const [key, value] of Object.entries(query)) {
        if (value !== null && value !== undefined && value !== "") params.set(key, String(value));
      }
      const qs = params.toString();
      if (qs) url += "?" + qs;
    }
    return url;
  }

  /** Every request carries the admin token when one is set: with ADMIN_TOKEN, reads need it too. */
  function requestHeaders(accept, withBody = false) {
    const headers = { Accept: accept };
    if (withBody) headers["Content-Type"] = "application/json";
    const token = getToken();
    if (token) headers.Authorization = `Bearer ${token}`;
    return headers;
  }

  async function api(method, path, { query, body } = {}) {
    const url = urlWithQuery(path, query);
    const headers = requestHeaders("application/json", body !== undefined);

    let response;
    try {
      response = await fetch(url, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
        credentials: "same-origin",
      });
    } catch (err) {
      throw new ApiError(0, "NetworkError", `the API cannot be reached (${err.message || err})`);
    }
    const data = parseJson(await response.text());
    if (!response.ok) throw errorOf(response, data);
    if (!data || typeof data !== "object") {
      throw new ApiError(response.status, "BadResponse", "the API answered with something that is not a JSON object");
    }
    return data;
  }

  function parseJson(text) {
    if (!text) return null;
    try {
      return JSON.parse(text);
    } catch {
      return null;
    }
  }

  function errorOf(response, data) {
    const code = (data && typeof data.error === "string" && data.error) || `HTTP ${response.status}`;
    const message =
      (data && typeof data.message === "string" && data.message) || response.statusText || "request failed";
    return new ApiError(response.status, code, message);
  }

  /**
   * A listing as CSV. Fetched rather than followed as a link: a link can carry neither the
   * admin token nor `Accept: text/csv`, which is what selects CSV over JSON.
   */
  async function fetchCsv(path, query) {
    let response;
    try {
      response = await fetch(urlWithQuery(path, query), {
        headers: requestHeaders("text/csv"),
        cache: "no-store",
        credentials: "same-origin",
      });
    } catch (err) {
      throw new ApiError(0, "NetworkError", `the API cannot be reached (${err.message || err})`);
    }
    if (!response.ok) throw errorOf(response, parseJson(await response.text()));
    return response.blob();
  }

  // ---------------------------------------------------------------------------------
  // Formatting

  const numberFormat = new Intl.NumberFormat();
  const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  const dateTimeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });
  const shortTimeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });

  function parseTime(iso) {
    const ms = typeof iso === "string" ? Date.parse(iso) : NaN;
    return Number.isFinite(ms) ? ms : null;
  }

  /** "1 h 5 min" ("1h 5m" when compact): the two largest units are all an operator needs at a glance. */
  function formatDuration(seconds, compact = false) {
    const total = Math.max(0, Math.floor(seconds));
    const units = [
      ["d", 86400],
      ["h", 3600],
      ["min", 60],
      ["s", 1],
    ];
    const label = (value, name) => (compact ? `${value}${name[0]}` : `${value} ${name}`);
    const index = units.findIndex(([, size]) => total >= size);
    if (index < 0) return label(0, "s");
    const [name, size] = units[index];
    const parts = [label(Math.floor(total / size), name)];
    const next = units[index + 1];
    // Only the next smaller unit follows ("3 h 5 min", never "3 h 13 s").
    if (next) {
      const rest = Math.floor((total % size) / next[1]);
      if (rest) parts.push(label(rest, next[0]));
    }
    return parts.join(" ");
  }

  function formatRelative(ms) {
    const seconds = Math.round((serverNow() - ms) / 1000);
    if (seconds < -5) return `in ${formatDuration(-seconds)}`;
    if (seconds < 10) return "just now";
    if (seconds < 60) return `${seconds} s ago`;
    const [first] = formatDuration(seconds).split(/ (?=\d)/);
    return `${first} ago`;
  }

  function absoluteTitle(iso, ms) {
    return `${dateTimeFormat.format(new Date(ms))} (${iso})`;
  }

  /** A <time> that keeps saying "3 min ago" correctly: see refreshRelativeTimes(). */
  function relativeTime(iso, prefix = "") {
    const ms = parseTime(iso);
    if (ms === null) return h("span", { class: "muted", text: iso ? String(iso) : "–" });
    return h("time", {
      datetime: iso,
      title: absoluteTitle(iso, ms),
      "data-relative": prefix,
      text: prefix + formatRelative(ms),
    });
  }

  function refreshRelativeTimes() {
    for (const node of document.querySelectorAll("time[data-relative]")) {
      const ms = parseTime(node.getAttribute("datetime"));
      if (ms !== null) node.textContent = node.getAttribute("data-relative") + formatRelative(ms);
    }
  }

  /** Turn a long user agent into "Chrome 120 · macOS"; the full string stays in the tooltip. */
  function summarizeUserAgent(ua) {
    if (typeof ua !== "string" || !ua) return "";
    const product =
      ua.match(/\b(Edg|OPR|Firefox|Chrome|Version)\/(\d+)/) ||
      ua.match(/^([A-Za-z][\w.-]*)\/(\d+[\w.]*)/);
    let name = "";
    if (product) {
      const label = { Edg: "Edge", OPR: "Opera", Version: "Safari" }[product[1]] || product[1];
      name = `${label} ${product[2]}`;
    }
    const os = [
      [/iPhone|iPad|iOS/, "iOS"],
      [/Android/, "Android"],
      [/Mac OS X|Macintosh/, "macOS"],
      [/Windows/, "Windows"],
      [/Linux/, "Linux"],
    ].find(([re]) => re.test(ua));
    const summary = [name, os && os[1]].filter(Boolean).join(" · ");
    return summary || (ua.length > 32 ? ua.slice(0, 31) + "…" : ua);
  }

  function stringifyValue(value) {
    if (value === null || value === undefined) return "";
    return typeof value === "object" ? JSON.stringify(value) : String(value);
  }

  function isStale(record) {
    if (record.status !== "CONNECTED") return false;
    const last = parseTime(record.lastActiveAt) ?? parseTime(record.createdAt);
    return last !== null && serverNow() - last > state.staleAfterSeconds * 1000;
  }

  // ---------------------------------------------------------------------------------
  // Status line

  function setStatus(tone, message, { fromRefresh = false } = {}) {
    state.statusFromRefresh = fromRefresh;
    els.status.dataset.tone = tone;
    els.status.replaceChildren(
      h("span", { class: "status-text", text: message }),
      h("time", { class: "status-time", text: timeFormat.format(new Date()) }),
    );
    // Restart the highlight animation so a repeated message is still noticed.
    els.status.classList.remove("flash");
    void els.status.offsetWidth;
    els.status.classList.add("flash");
  }

  function describeError(what, err) {
    if (!(err instanceof ApiError)) return `${what} failed: ${err && err.message ? err.message : err}`;
    if (err.status === 0) return `${what} failed: ${err.message}.`;
    if (err.isAuth) {
      const hint = getToken()
        ? "the admin token in the header was not accepted."
        : "this server needs an admin token: enter it in the header.";
      return `${what} was refused (${err.status} ${err.code}): ${err.message} – ${hint}`;
    }
    return `${what} failed (${err.status} ${err.code}): ${err.message}`;
  }

  function reportError(what, err, options = {}) {
    setStatus("error", describeError(what, err), options);
    if (err instanceof ApiError && err.isAuth) {
      els.tokenBox.classList.add("attention");
      if (!options.fromRefresh) els.token.focus();
    }
  }

  function setApiState(ok) {
    els.apiState.dataset.state = ok ? "ok" : "error";
    els.apiState.textContent = ok ? "live" : "API error";
  }

  // ---------------------------------------------------------------------------------
  // Stats (KPIs, header)

  function renderStats() {
    const stats = state.stats;
    if (!stats) return;
    const fmt = (n) => (typeof n === "number" ? numberFormat.format(n) : "–");
    els.kpiActive.textContent = fmt(stats.activeConnections);
    els.kpiUsers.textContent = fmt(stats.distinctUsers);
    els.kpiStale.textContent = fmt(stats.staleConnections);
    els.kpiStaleCard.classList.toggle("warn", stats.staleConnections > 0);
    els.kpiStaleSub.textContent = `no activity for more than ${formatDuration(state.staleAfterSeconds)}`;
    els.tableName.textContent = stats.table || "–";
    document.title = `${fmt(stats.activeConnections)} active · Connection Manager`;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
    return node;
  }

  /** A tiny trend line per KPI: how the number moved while this page has been open. */
  function renderSparklines() {
    const samples = state.history;
    for (const [key, container] of Object.entries(els.sparks)) {
      if (!container) continue;
      if (samples.length < 2) {
        container.replaceChildren();
        continue;
      }
      const values = samples.map((s) => s[key]);
      const max = Math.max(...values);
      const min = Math.min(...values);
      const span = max - min || 1;
      const width = 100;
      const height = 24;
      const step = width / (values.length - 1);
      const offset = 0;
      // A flat series sits in the middle rather than on the floor.
      const level = (v) => (max === min ? height / 2 : height - 2 - ((v - min) / span) * (height - 4));
      const points = values.map((v, i) => [offset + i * step, level(v)]);
      const line = points.map(([x, y]) => `${x.toFixed(2)},${y.toFixed(2)}`).join(" ");
      const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none", class: "spark-svg" });
      chart.append(
        svg("polygon", { points: `${offset},${height} ${line} ${width},${height}`, class: "spark-area" }),
        svg("polyline", { points: line, class: "spark-line", "vector-effect": "non-scaling-stroke" }),
      );
      const first = samples[0].at;
      const minutes = Math.max(1, Math.round((Date.now() - first) / 60000));
      container.title = `Last ${minutes} min: min ${numberFormat.format(min)}, max ${numberFormat.format(max)}`;
      container.replaceChildren(chart);
    }
  }

  function recordSample(stats) {
    const sample = { at: Date.now() };
    for (const key of Object.keys(els.sparks)) {
      if (typeof stats[key] !== "number") return;
      sample[key] = stats[key];
    }
    state.history.push(sample);
    if (state.history.length > HISTORY_POINTS) state.history.shift();
    renderSparklines();
  }

  async function loadStats() {
    const stats = await api("GET", "/stats");
    const generated = parseTime(stats.generatedAt);
    if (generated !== null) state.skewMs = generated - Date.now();
    if (Number.isInteger(stats.staleAfterSeconds) && stats.staleAfterSeconds > 0) {
      state.staleAfterSeconds = stats.staleAfterSeconds;
    }
    state.stats = stats;
    renderStats();
    renderSnapshotCharts();
    recordSample(stats);
    if (!state.thresholdEdited && els.cleanupStaleAfter.value !== String(state.staleAfterSeconds)) {
      els.cleanupStaleAfter.value = String(state.staleAfterSeconds);
      renderThresholdHint();
    }
  }

  // ---------------------------------------------------------------------------------
  // Charts (drawn by charts.js)

  const Charts = window.ConnectionManagerCharts;
  const SWEEP_HOURS = 48;

  async function loadSweeps() {
    const data = await api("GET", "/stats/history", { query: { hours: SWEEP_HOURS } });
    state.sweeps = Array.isArray(data.sweeps) ? data.sweeps : [];
    renderSweepChart();
  }

  function renderSweepChart() {
    const sweeps = state.sweeps || [];
    Charts.sweepChart(els.charts.sweeps, sweeps, { hours: SWEEP_HOURS });
    const cleaned = sweeps.reduce((sum, sweep) => sum + (Number(sweep.cleaned) || 0), 0);
    els.sweepsNote.textContent = sweeps.length
      ? `${numberFormat.format(sweeps.length)} sweep${sweeps.length === 1 ? "" : "s"} · ${numberFormat.format(cleaned)} cleaned`
      : "";
  }

  /** The idle-time distribution and the heaviest users come from the latest snapshot (`asOf`). */
  function renderSnapshotCharts() {
    const stats = state.stats;
    Charts.idleChart(els.charts.idle, stats, {
      onSelect: (bin) => filterBy({ idleMoreThan: Number(bin.fromSeconds) || 0 }),
    });
    Charts.topUsersChart(els.charts.topUsers, stats, {
      onSelect: (user) => filterBy({ userId: String(user.userId) }),
    });
    const asOf = parseTime(stats && stats.asOf);
    const when = asOf === null ? "" : ` · as of ${shortTimeFormat.format(new Date(asOf))}`;
    els.idleNote.textContent = `live connections${when}`;
    els.topUsersNote.textContent = asOf === null ? "by live connections" : when.slice(3);
    if (asOf !== null) {
      els.idleNote.title = els.topUsersNote.title = `Snapshot taken by the sweep of ${dateTimeFormat.format(new Date(asOf))}`;
    }
  }

  // ---------------------------------------------------------------------------------
  // Connections table

  function statusCell(record) {
    const connected = record.status === "CONNECTED";
    const children = [
      h("span", {
        class: `badge ${connected ? "badge-ok" : "badge-off"}`,
        "data-testid": "status-badge",
        text: record.status || "?",
      }),
    ];
    if (isStale(record)) {
      children.push(
        h("span", {
          class: "badge badge-warn",
          title: `No activity for more than ${formatDuration(state.staleAfterSeconds)}`,
          text: "stale",
        }),
      );
    }
    if (!connected && (record.disconnectReason || record.disconnectedAt)) {
      const detail = h("span", { class: "sub" });
      if (record.disconnectReason) detail.append(record.disconnectReason);
      if (record.disconnectedAt) detail.append(relativeTime(record.disconnectedAt, record.disconnectReason ? " · " : ""));
      children.push(detail);
    }
    return h("td", { class: "col-status" }, children);
  }

  function clientCell(metadata) {
    if (!metadata || typeof metadata !== "object" || Array.isArray(metadata)) {
      return h("td", { class: "col-client" }, h("span", { class: "muted", text: "–" }));
    }
    const { sourceIp, userAgent, ...rest } = metadata;
    const parts = [];
    if (sourceIp !== undefined) parts.push(h("span", { class: "mono ip", text: stringifyValue(sourceIp) }));
    if (userAgent !== undefined) {
      parts.push(h("span", { class: "ua", title: stringifyValue(userAgent), text: summarizeUserAgent(stringifyValue(userAgent)) }));
    }
    const extraKeys = Object.keys(rest);
    if (extraKeys.length) {
      const lines = extraKeys.map((key) => `${key}: ${stringifyValue(rest[key])}`);
      parts.push(h("span", { class: "chip", title: lines.join("\n"), text: `+${extraKeys.length}` }));
    }
    if (!parts.length) parts.push(h("span", { class: "muted", text: "–" }));
    return h("td", { class: "col-client" }, parts);
  }

  function buildRow(record) {
    const id = String(record.connectionId ?? "");
    const user = String(record.userId ?? "");
    const created = parseTime(record.createdAt);
    const connected = record.status === "CONNECTED";
    const pending = state.busy.has(id);

    const tr = h("tr", {
      "data-testid": "connection-row",
      "data-connection-id": id,
      "data-status": record.status,
      class: [connected ? "" : "is-disconnected", isStale(record) ? "is-stale" : ""].filter(Boolean).join(" "),
    });
    tr.append(
      h("td", { class: "col-id" }, h("span", { class: "mono id", title: id, text: id })),
      h("td", { class: "col-user" },
        h("button", {
          type: "button",
          class: "link",
          title: `Show the connections of ${user}`,
          "data-testid": "user-link",
          text: user,
          onclick: () => applyUserFilter(user),
        }),
      ),
      statusCell(record),
      h("td", { class: "col-age", title: created !== null ? `Created ${absoluteTitle(record.createdAt, created)}` : undefined },
        created !== null ? formatDuration((serverNow() - created) / 1000, true) : "–"),
      h("td", { class: "col-last" }, relativeTime(record.lastActiveAt || record.createdAt)),
      clientCell(record.metadata),
      h("td", { class: "col-actions" },
        h("button", {
          type: "button",
          class: "btn btn-sm btn-danger-outline",
          "data-testid": "disconnect-btn",
          "aria-label": `Disconnect ${id}`,
          title: connected ? "Mark this connection DISCONNECTED (reason admin)" : "Already disconnected",
          disabled: !connected || pending,
          text: pending ? "Disconnecting…" : "Disconnect",
          onclick: () => disconnectConnection(record),
        }),
      ),
    );
    return tr;
  }

  function hasFilters(filters) {
    return Object.values(filters || {}).some((v) => v !== undefined && v !== null && v !== "");
  }

  function emptyMessage() {
    const view = state.view;
    if (view.kind === "single") return "No such connection.";
    if (view.kind === "history") return `User ${view.userId} has no DISCONNECTED connections.`;
    if (!hasFilters(view.filters)) return "No CONNECTED connections.";
    // sourceIp and userAgent stop a page at a read budget: an empty page may not be the end.
    return state.nextToken
      ? "Nothing matches on this page; more rows remain to be read: use Next."
      : "No CONNECTED connection matches these filters.";
  }

  function renderRows() {
    const records = state.records;
    const fragment = document.createDocumentFragment();
    for (const record of records) fragment.append(buildRow(record));
    if (!records.length) {
      fragment.append(
        h("tr", { class: "empty" }, h("td", { colspan: 7, "data-testid": "empty-state", text: emptyMessage() })),
      );
    }
    els.rows.replaceChildren(fragment);
    renderDetails();
    renderPager();
  }

  /** Every field of the one connection that was looked up, since a row shows only a summary. */
  function renderDetails() {
    const record = state.view.kind === "single" ? state.records[0] : null;
    els.details.hidden = !record;
    if (!record) {
      els.details.replaceChildren();
      return;
    }
    const items = [];
    const add = (label, value) => items.push(h("div", { class: "detail" }, [h("dt", { text: label }), h("dd", {}, value)]));
    const when = (iso) => {
      const ms = parseTime(iso);
      return ms === null ? String(iso) : [h("span", { class: "mono", text: iso }), " ", relativeTime(iso, "· ")];
    };
    add("Connection ID", h("span", { class: "mono", text: String(record.connectionId ?? "") }));
    add("User", h("span", { class: "mono", text: String(record.userId ?? "") }));
    add("Status", [String(record.status ?? ""), record.disconnectReason ? ` (reason ${record.disconnectReason})` : ""]);
    for (const [key, label] of [
      ["createdAt", "Created"],
      ["lastActiveAt", "Last activity"],
      ["updatedAt", "Updated"],
      ["disconnectedAt", "Disconnected"],
    ]) {
      if (record[key]) add(label, when(record[key]));
    }
    const metadata = record.metadata && typeof record.metadata === "object" ? record.metadata : {};
    for (const [key, value] of Object.entries(metadata)) {
      add(`metadata.${key}`, h("span", { class: "mono wrap", text: stringifyValue(value) }));
    }
    els.details.replaceChildren(...items);
  }

  function renderPager() {
    const single = state.view.kind === "single";
    const pageSize = Number(els.pageSize.value);
    const first = state.pageIndex * pageSize;
    let info;
    if (single) {
      info = state.records.length ? "1 connection (any status)" : "";
    } else if (!state.records.length) {
      info = state.pageIndex || state.nextToken ? `Page ${state.pageIndex + 1} is empty` : "";
      if (state.nextToken) info += " · more available";
    } else {
      info = `Page ${state.pageIndex + 1} · rows ${numberFormat.format(first + 1)}–${numberFormat.format(
        first + state.records.length,
      )}`;
      info += state.nextToken ? " · more available" : " · last page";
    }
    els.pageInfo.textContent = info;
    els.firstPage.disabled = single || state.pageIndex === 0;
    els.prevPage.disabled = single || state.pageIndex === 0;
    els.nextPage.disabled = single || !state.nextToken;
    els.pageSize.disabled = single;
    els.pagerControls.hidden = single;
  }

  /** What the list shows, in words, with the actions that fit it. */
  /** Whether the user in scope is online, from GET /users/{userId}/presence (filled in when it answers). */
  function presenceBadge(userId) {
    const badge = h("span", { class: "badge", "data-testid": "user-presence", text: "presence…" });
    api("GET", `/users/${encodeURIComponent(userId)}/presence`)
      .then((p) => {
        const seen = p.lastSeenAt ? ` · last seen ${timeFormat.format(new Date(p.lastSeenAt))}` : "";
        badge.textContent = p.online
          ? `online · ${p.connections} connection${p.connections === 1 ? "" : "s"}${seen}`
          : `offline${seen}`;
        badge.classList.add(p.online ? "badge-ok" : "badge-off");
      })
      .catch(() => {
        badge.textContent = "presence unknown";
      });
    return badge;
  }

  function renderScope() {
    const view = state.view;
    const nodes = [];
    const strong = (text) => h("strong", { class: "mono", text });
    if (view.kind === "list") {
      const f = view.filters;
      const parts = [];
      if (f.userId) parts.push(" of user ", strong(f.userId));
      if (f.idleMoreThan !== undefined) parts.push(" idle more than ", h("strong", { text: formatDuration(f.idleMoreThan) }));
      if (f.sourceIp) parts.push(" from ", strong(f.sourceIp));
      if (f.userAgent) parts.push(" with a user agent containing ", strong(f.userAgent));
      nodes.push(h("span", {}, [hasFilters(f) ? "CONNECTED connections" : "All CONNECTED connections", ...parts]));
      if (f.userId) {
        nodes.push(
          h("button", {
            type: "button",
            class: "btn btn-sm btn-danger",
            "data-testid": "disconnect-user-btn",
            text: "Disconnect user",
            onclick: () => disconnectUser(f.userId),
          }),
        );
      }
      if (hasFilters(f)) {
        nodes.push(h("button", { type: "button", class: "btn btn-sm", "data-testid": "clear-filter", text: "Show all", onclick: showAll }));
      }
    } else if (view.kind === "history") {
      nodes.push(
        h("span", {}, ["DISCONNECTED connections of user ", strong(view.userId)]),
        h("button", {
          type: "button",
          class: "btn btn-sm",
          "data-testid": "show-live",
          text: "Show live",
          onclick: () => filterBy({ userId: view.userId }),
        }),
        h("button", { type: "button", class: "btn btn-sm", "data-testid": "clear-filter", text: "Show all", onclick: showAll }),
      );
    } else {
      nodes.push(
        h("span", {}, ["Connection ", strong(view.connectionId)]),
        h("button", { type: "button", class: "btn btn-sm", "data-testid": "clear-filter", text: "Back to list", onclick: showAll }),
      );
    }
    const user = view.kind === "list" ? view.filters.userId : view.kind === "history" ? view.userId : null;
    if (user) nodes.splice(1, 0, presenceBadge(user));
    els.scope.replaceChildren(...nodes);
    renderExportLink();
  }

  /** Load the current page of the current view; `quiet` is for the periodic refresh. */
  async function loadView({ quiet = false } = {}) {
    const generation = ++state.viewGeneration;
    const view = state.view;
    els.rows.closest(".table-wrap").classList.add("is-loading");
    try {
      let records;
      let nextToken = null;
      if (view.kind === "single") {
        try {
          const data = await api("GET", `/connections/${encodeURIComponent(view.connectionId)}`);
          records = data.connection ? [data.connection] : [];
        } catch (err) {
          if (err instanceof ApiError && err.status === 404) {
            records = [];
            if (generation === state.viewGeneration && !quiet) {
              setStatus("warn", `No connection with id ${view.connectionId}: ${err.message}`);
            }
          } else {
            throw err;
          }
        }
      } else {
        const page = { limit: els.pageSize.value, nextToken: state.pageTokens[state.pageIndex] };
        const data =
          view.kind === "history"
            ? await api("GET", `/users/${encodeURIComponent(view.userId)}/connections`, {
                query: { ...page, status: "DISCONNECTED" },
              })
            : await api("GET", "/connections", { query: { ...page, ...view.filters } });
        records = Array.isArray(data.connections) ? data.connections : [];
        nextToken = typeof data.nextToken === "string" && data.nextToken ? data.nextToken : null;
      }
      if (generation !== state.viewGeneration) return false;
      state.records = records;
      state.nextToken = nextToken;
      renderRows();
      return true;
    } finally {
      if (generation === state.viewGeneration) els.rows.closest(".table-wrap").classList.remove("is-loading");
    }
  }

  // ---------------------------------------------------------------------------------
  // Refresh (manual and automatic)

  function markUpdated() {
    state.lastRefreshAt = Date.now();
    els.lastUpdated.textContent = timeFormat.format(new Date());
    els.lastUpdated.setAttribute("datetime", new Date().toISOString());
  }

  /** Stats and the current page together; a call made during a refresh waits and runs again. */
  async function refreshAll({ auto = false } = {}) {
    if (state.refreshing) {
      if (auto) return;
      await state.refreshing.catch(() => {});
      if (state.refreshing) return state.refreshing;
    }
    state.refreshing = doRefresh(auto);
    try {
      await state.refreshing;
    } finally {
      state.refreshing = null;
    }
  }

  async function doRefresh(auto) {
    els.refreshBtn.classList.add("spinning");
    try {
      const results = await Promise.allSettled([loadStats(), loadSweeps(), loadView({ quiet: auto })]);
      const failure = results.find((r) => r.status === "rejected");
      if (failure) {
        setApiState(false);
        reportError("Refresh", failure.reason, { fromRefresh: true });
      } else {
        setApiState(true);
        markUpdated();
        if (state.statusFromRefresh) setStatus("ok", "Connected to the API again.");
        else if (els.status.dataset.tone === "info" && els.status.textContent.trim() === "Loading…") {
          setStatus("info", "Ready.");
        }
      }
    } finally {
      els.refreshBtn.classList.remove("spinning");
    }
  }

  function tick() {
    if (
      els.autoRefresh.checked &&
      !document.hidden &&
      !state.refreshing &&
      Date.now() - state.lastRefreshAt >= REFRESH_EVERY_MS
    ) {
      refreshAll({ auto: true });
    }
  }

  // ---------------------------------------------------------------------------------
  // Views: all / one user / one connection

  function setView(view) {
    state.view = view;
    state.pageTokens = [null];
    state.pageIndex = 0;
    state.nextToken = null;
    state.records = [];
    fillFilterForm(view);
    renderScope();
    writeHash();
    return loadView().catch((err) => reportError("Loading connections", err));
  }

  /** A fresh list of live connections with these filters (the others cleared). */
  function filterBy(filters) {
    els.findInput.value = "";
    return setView({ kind: "list", filters: cleanFilters(filters) });
  }

  function applyUserFilter(userId) {
    const value = String(userId).trim();
    return filterBy(value ? { userId: value } : {});
  }

  function showAll() {
    return filterBy({});
  }

  function cleanFilters(filters) {
    const out = {};
    for (const key of ["userId", "idleMoreThan", "sourceIp", "userAgent"]) {
      const value = filters[key];
      if (value !== undefined && value !== null && value !== "") out[key] = value;
    }
    return out;
  }

  /**
   * The view the filter form describes, or a message saying what to fix. Values are sent as
   * typed: the API is the one judge of what is valid (a 400 is shown as it says).
   */
  function readFilterForm() {
    const userId = els.userFilter.value.trim();
    if (els.statusFilter.value === "DISCONNECTED") {
      if (!userId) return { error: "The history lists one user's DISCONNECTED connections: enter a user id." };
      return { view: { kind: "history", userId } };
    }
    const filters = { userId };
    const idle = els.idleFilter.value.trim();
    if (idle) {
      const amount = Number(idle);
      if (!Number.isInteger(amount) || amount < 0) return { error: "Idle time: enter a whole number, 0 or more." };
      filters.idleMoreThan = amount * Number(els.idleUnit.value);
    }
    filters.sourceIp = els.ipFilter.value.trim();
    filters.userAgent = els.uaFilter.value;
    return { view: { kind: "list", filters: cleanFilters(filters) } };
  }

  /** Show a view's filters in the form, so the form always says what the list shows. */
  function fillFilterForm(view) {
    const f = view.kind === "list" ? view.filters : {};
    els.userFilter.value = view.kind === "history" ? view.userId : f.userId || "";
    els.statusFilter.value = view.kind === "history" ? "DISCONNECTED" : "CONNECTED";
    if (f.idleMoreThan === undefined) {
      els.idleFilter.value = "";
    } else {
      const unit = [3600, 60, 1].find((size) => f.idleMoreThan % size === 0 && (size === 1 || f.idleMoreThan > 0));
      els.idleUnit.value = String(unit || 1);
      els.idleFilter.value = String(f.idleMoreThan / (unit || 1));
    }
    els.ipFilter.value = f.sourceIp || "";
    els.uaFilter.value = f.userAgent || "";
    if (view.kind !== "single") els.findInput.value = "";
    renderFilterFields();
  }

  /** A user's history is read from UserIdIndex: the other filters do not apply to it. */
  function renderFilterFields() {
    const isHistory = els.statusFilter.value === "DISCONNECTED";
    for (const input of [els.idleFilter, els.idleUnit, els.ipFilter, els.uaFilter]) input.disabled = isHistory;
  }

  /** The export link: GET /connections with the list's filters (and no page), as CSV. */
  function renderExportLink() {
    const view = state.view;
    const filters = view.kind === "list" ? view.filters : null;
    els.exportCsv.href = urlWithQuery("/connections", filters || {});
    els.exportCsv.classList.toggle("is-disabled", !filters);
    els.exportCsv.setAttribute("aria-disabled", filters ? "false" : "true");
    els.exportCsv.title = filters
      ? "Every CONNECTED connection matching these filters, as CSV"
      : "Export lists live connections: pick Live in Status first";
  }

  async function exportCsv() {
    const view = state.view;
    if (view.kind !== "list") {
      setStatus("warn", "Export lists live connections: choose Live (CONNECTED) and apply.");
      return;
    }
    const label = els.exportCsv.textContent;
    els.exportCsv.textContent = "Exporting…";
    els.exportCsv.classList.add("is-disabled");
    try {
      const blob = await fetchCsv("/connections", view.filters);
      const url = URL.createObjectURL(blob);
      const link = h("a", { href: url, download: "connections.csv", hidden: true });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60_000);
      setStatus("ok", `Exported the ${hasFilters(view.filters) ? "filtered " : ""}connections as CSV.`);
    } catch (err) {
      reportError("Export", err);
    } finally {
      els.exportCsv.textContent = label;
      renderExportLink();
    }
  }

  function goToPage(index) {
    state.pageIndex = index;
    return loadView().catch((err) => reportError("Loading the page", err));
  }

  const HASH_KEYS = { userId: "user", idleMoreThan: "idle", sourceIp: "ip", userAgent: "ua" };

  /** The view lives in the URL's fragment, so a filtered list can be bookmarked and shared. */
  function writeHash() {
    const view = state.view;
    const params = new URLSearchParams();
    if (view.kind === "list") {
      for (const [key, name] of Object.entries(HASH_KEYS)) {
        if (view.filters[key] !== undefined) params.set(name, String(view.filters[key]));
      }
    }
    if (view.kind === "history") {
      params.set("user", view.userId);
      params.set("status", "DISCONNECTED");
    }
    if (view.kind === "single") params.set("connection", view.connectionId);
    const hash = params.toString();
    history.replaceState(null, "", hash ? `#${hash}` : location.pathname + location.search);
  }

  function readHash() {
    const params = new URLSearchParams(location.hash.replace(/^#/, ""));
    const connection = params.get("connection");
    if (connection) {
      els.findInput.value = connection;
      return { kind: "single", connectionId: connection };
    }
    const user = params.get("user");
    if (user && params.get("status") === "DISCONNECTED") return { kind: "history", userId: user };
    const filters = {};
    for (const [key, name] of Object.entries(HASH_KEYS)) {
      const value = params.get(name);
      if (value === null || value === "") continue;
      if (key === "idleMoreThan") {
        const seconds = Number(value);
        if (Number.isInteger(seconds) && seconds >= 0) filters[key] = seconds;
      } else {
        filters[key] = value;
      }
    }
    return { kind: "list", filters };
  }

  // ---------------------------------------------------------------------------------
  // Actions

  function confirmAction(title, message, okLabel) {
    if (typeof els.dialog.showModal !== "function") return Promise.resolve(window.confirm(message));
    els.dialogTitle.textContent = title;
    els.dialogMessage.textContent = message;
    els.dialogOk.textContent = okLabel;
    els.dialog.returnValue = "cancel";
    return new Promise((resolve) => {
      els.dialog.addEventListener("close", () => resolve(els.dialog.returnValue === "ok"), { once: true });
      els.dialog.showModal();
      els.dialog.querySelector('[value="cancel"]').focus();
    });
  }

  async function disconnectConnection(record) {
    const id = String(record.connectionId);
    if (state.busy.has(id)) return;
    state.busy.add(id);
    renderRows();
    try {
      const data = await api("PATCH", `/connections/${encodeURIComponent(id)}`, { body: { status: "DISCONNECTED" } });
      const updated = data.connection || { ...record, status: "DISCONNECTED" };
      state.records = state.records.map((r) => (r.connectionId === id ? updated : r));
      setStatus("ok", `Disconnected ${id} (user ${updated.userId ?? record.userId}).`);
      els.tokenBox.classList.remove("attention");
      loadStats().catch(() => {});
    } catch (err) {
      reportError(`Disconnecting ${id}`, err);
    } finally {
      state.busy.delete(id);
      renderRows();
    }
  }

  async function disconnectUser(userId) {
    const ok = await confirmAction(
      "Disconnect user?",
      `Every CONNECTED connection of user ${userId} will be marked DISCONNECTED (reason admin). This cannot be undone.`,
      "Disconnect user",
    );
    if (!ok) {
      setStatus("info", `Kept the connections of ${userId}.`);
      return;
    }
    try {
      const data = await api("POST", `/users/${encodeURIComponent(userId)}/disconnect`, { body: {} });
      const count = Number(data.disconnectedCount) || 0;
      setStatus("ok", `Disconnected ${count} connection${count === 1 ? "" : "s"} of user ${userId}.`);
      els.tokenBox.classList.remove("attention");
      await refreshAll();
    } catch (err) {
      reportError(`Disconnecting user ${userId}`, err);
    }
  }

  function readThreshold() {
    const value = Number(els.cleanupStaleAfter.value);
    return Number.isInteger(value) && value >= 1 ? value : null;
  }

  function renderThresholdHint() {
    const value = readThreshold();
    els.cleanupHuman.textContent = value ? `= ${formatDuration(value)}` : "enter whole seconds";
  }

  function setCleanupResult(tone, message) {
    els.cleanupResult.dataset.tone = tone;
    els.cleanupResult.textContent = message;
  }

  function resetRunButton() {
    state.dryRun = null;
    els.cleanupRun.disabled = true;
    els.cleanupRun.textContent = "Run cleanup";
  }

  async function cleanup(dryRun) {
    const threshold = readThreshold();
    if (!threshold) {
      setCleanupResult("error", "The threshold must be a whole number of seconds, at least 1.");
      els.cleanupStaleAfter.focus();
      return;
    }
    const button = dryRun ? els.cleanupDryRun : els.cleanupRun;
    const label = button.textContent;
    els.cleanupDryRun.disabled = true;
    els.cleanupRun.disabled = true;
    button.textContent = dryRun ? "Counting…" : "Cleaning…";
    let ran = false;
    try {
      const data = await api("POST", "/connections/cleanup", { body: { dryRun, staleAfterSeconds: threshold } });
      ran = true;
      els.tokenBox.classList.remove("attention");
      const count = Number(data.cleanedCount) || 0;
      const noun = `connection${count === 1 ? "" : "s"}`;
      const partial = data.complete === false;
      const cutoff = parseTime(data.cutoff);
      const since = cutoff !== null ? ` (no activity since ${dateTimeFormat.format(new Date(cutoff))})` : "";
      if (dryRun) {
        state.dryRun = { staleAfterSeconds: threshold, count };
        const message =
          `Dry run: ${count} ${noun} would be marked stale${since}.` +
          (partial ? " The count is partial: the sweep ran out of time, more may be stale." : "") +
          " Nothing was changed.";
        setCleanupResult(count ? "warn" : "ok", message);
        setStatus("info", `Dry run found ${count} stale ${noun}.`);
      } else {
        const message =
          `${data.message || "Cleanup done"}: ${count} ${noun} marked DISCONNECTED.` +
          (partial ? " More remain: run it again." : "");
        setCleanupResult(partial ? "warn" : "ok", message);
        setStatus("ok", `Cleanup marked ${count} ${noun} stale.`);
        await refreshAll();
      }
    } catch (err) {
      setCleanupResult("error", describeError(dryRun ? "Dry run" : "Cleanup", err));
      reportError(dryRun ? "Dry run" : "Cleanup", err);
    } finally {
      button.textContent = label;
      els.cleanupDryRun.disabled = false;
      if (dryRun && ran) {
        els.cleanupRun.disabled = false;
        els.cleanupRun.textContent = `Run cleanup (${state.dryRun.count})`;
      } else if (!dryRun && ran) {
        resetRunButton();
      } else {
        els.cleanupRun.disabled = !state.dryRun;
      }
    }
  }

  // ---------------------------------------------------------------------------------
  // Wiring

  function restorePreferences() {
    let token = "";
    let auto = "on";
    let pageSize = null;
    try {
      token = sessionStorage.getItem(STORAGE.token) || "";
      auto = localStorage.getItem(STORAGE.autoRefresh) || "on";
      pageSize = localStorage.getItem(STORAGE.pageSize);
    } catch {
      /* storage disabled: defaults */
    }
    els.token.value = token;
    els.tokenBox.classList.toggle("has-token", Boolean(token));
    els.autoRefresh.checked = auto !== "off";
    if (pageSize && [...els.pageSize.options].some((o) => o.value === pageSize)) els.pageSize.value = pageSize;
  }

  function store(storage, key, value) {
    try {
      if (value) storage.setItem(key, value);
      else storage.removeItem(key);
    } catch {
      /* storage disabled: the setting lasts until reload */
    }
  }

  function wire() {
    els.refreshBtn.addEventListener("click", () => refreshAll());
    els.autoRefresh.addEventListener("change", () => {
      store(localStorage, STORAGE.autoRefresh, els.autoRefresh.checked ? "on" : "off");
      setStatus("info", els.autoRefresh.checked ? "Auto-refresh on: every 10 s." : "Auto-refresh paused.");
    });
    els.tokenBox.addEventListener("submit", (event) => {
      // With ADMIN_TOKEN set, reads need the token too: Enter loads what was refused.
      event.preventDefault();
      els.token.blur();
      refreshAll();
    });
    els.token.addEventListener("input", () => {
      const token = els.token.value.trim();
      store(sessionStorage, STORAGE.token, token);
      els.tokenBox.classList.toggle("has-token", Boolean(token));
      els.tokenBox.classList.remove("attention");
    });

    els.filterForm.addEventListener("submit", (event) => {
      event.preventDefault();
      const { view, error } = readFilterForm();
      if (error) {
        setStatus("warn", error);
        els.userFilter.focus();
        return;
      }
      els.findInput.value = "";
      setView(view);
    });
    els.filterClear.addEventListener("click", showAll);
    els.statusFilter.addEventListener("change", renderFilterFields);
    els.exportCsv.addEventListener("click", (event) => {
      event.preventDefault();
      exportCsv();
    });
    els.findForm.addEventListener("submit", (event) => {
      event.preventDefault();
      const id = els.findInput.value.trim();
      if (!id) {
        setStatus("warn", "Enter a connection id to look up.");
        els.findInput.focus();
        return;
      }
      setView({ kind: "single", connectionId: id });
    });

    els.pageSize.addEventListener("change", () => {
      store(localStorage, STORAGE.pageSize, els.pageSize.value);
      state.pageTokens = [null];
      goToPage(0);
    });
    els.firstPage.addEventListener("click", () => {
      state.pageTokens = [null];
      goToPage(0);
    });
    els.prevPage.addEventListener("click", () => {
      if (state.pageIndex > 0) goToPage(state.pageIndex - 1);
    });
    els.nextPage.addEventListener("click", () => {
      if (!state.nextToken) return;
      state.pageTokens = state.pageTokens.slice(0, state.pageIndex + 1);
      state.pageTokens.push(state.nextToken);
      goToPage(state.pageIndex + 1);
    });

    els.cleanupForm.addEventListener("submit", (event) => {
      event.preventDefault();
      cleanup(true);
    });
    els.cleanupRun.addEventListener("click", () => cleanup(false));
    els.cleanupStaleAfter.addEventListener("input", () => {
      state.thresholdEdited = true;
      renderThresholdHint();
      if (state.dryRun && state.dryRun.staleAfterSeconds !== readThreshold()) {
        resetRunButton();
        setCleanupResult("info", "The threshold changed: run a dry run again before cleaning.");
      }
    });

    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) tick();
    });
    window.addEventListener("hashchange", () => {
      const view = readHash();
      if (JSON.stringify(view) !== JSON.stringify(state.view)) setView(view);
    });
    let resizeTimer = null;
    window.addEventListener("resize", () => {
      // The charts are drawn at the panel's width: redraw once the resizing settles.
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(() => {
        if (state.sweeps) renderSweepChart();
        if (state.stats) renderSnapshotCharts();
      }, 150);
    });
    setInterval(tick, 1000);
    setInterval(refreshRelativeTimes, RELATIVE_TIME_TICK_MS);
  }

  function start() {
    restorePreferences();
    wire();
    els.cleanupStaleAfter.value = String(state.staleAfterSeconds);
    renderThresholdHint();
    state.view = readHash();
    fillFilterForm(state.view);
    renderScope();
    renderPager(0);
    refreshAll();
  }

  start();
})();
