/*
 * Connection Manager dashboard charts: hand-drawn SVG, no library.
 *
 * Three pictures of the platform, each a pure function of an API answer:
 *   - sweepChart: active connections and cleaned rows per sweep (GET /stats/history);
 *   - idleChart: the idle-time distribution of live connections (GET /stats `idle`);
 *   - topUsersChart: the users holding the most connections (GET /stats `topUsers`).
 * Each chart is an <svg role="img"> named by its <title> and summarised by its <desc>, so a
 * screen reader hears the numbers; every mark carries a <title> (the hover tooltip) and
 * data-* attributes with the value it draws. Text reaches the DOM only through textContent:
 * user ids come from WebSocket clients.
 */
"use strict";

window.ConnectionManagerCharts = (() => {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const numberFormat = new Intl.NumberFormat();
  let uid = 0;

  function svg(tag, attrs = {}, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value !== undefined && value !== null) node.setAttribute(key, String(value));
    }
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  function html(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  /** The <svg> shell: role img, named by its title and described by its desc. */
  function frame(width, height, name, summary, testid) {
    const id = `chart-${++uid}`;
    const root = svg("svg", {
      viewBox: `0 0 ${width} ${height}`,
      role: "img",
      class: "chart-svg",
      "aria-labelledby": `${id}-title ${id}-desc`,
      "data-testid": testid,
    });
    root.append(svg("title", { id: `${id}-title` }, name), svg("desc", { id: `${id}-desc` }, summary));
    return root;
  }

  /**
   * The drawing width: the container's own, so text is drawn at its CSS size instead of
   * being scaled with the panel (the dashboard redraws on resize).
   */
  function widthOf(container, fallback) {
    const style = getComputedStyle(container);
    const inner = container.clientWidth - parseFloat(style.paddingLeft || "0") - parseFloat(style.paddingRight || "0");
    return inner > 120 ? Math.floor(inner) : fallback;
  }

  /** An empty state in place of a chart: a headline and what will fill it. */
  function empty(container, testid, headline, hint) {
    const box = html("div", "chart-empty");
    box.setAttribute("data-testid", testid);
    box.append(html("strong", "", headline), html("span", "", hint));
    container.replaceChildren(box);
  }

  /** 0, then a round step so that about `count` ticks cover `max` (1, 2, 5 × 10^n). */
  function niceTicks(max, count = 3) {
    if (!(max > 0)) return [0, 1];
    const rough = max / count;
    const power = 10 ** Math.floor(Math.log10(rough));
    // Counts are whole: a step below 1 would print 0.5 connections.
    const step = Math.max(1, [1, 2, 5, 10].map((m) => m * power).find((s) => s >= rough) || rough);
    const ticks = [];
    for (let v = 0; v < max + step; v += step) {
      ticks.push(Math.round(v * 1e6) / 1e6);
      if (v >= max) break;
    }
    return ticks.length > 1 ? ticks : [0, step];
  }

  function plural(n, word) {
    return `${numberFormat.format(n)} ${word}${n === 1 ? "" : "s"}`;
  }

  function parseTime(iso) {
    const ms = typeof iso === "string" ? Date.parse(iso) : NaN;
    return Number.isFinite(ms) ? ms : null;
  }

  /** Labels as fine as the span needs: seconds for a burst of manual runs, days for 48 h. */
  function timeLabeler(spanMs) {
    const options =
      spanMs < 3600_000
        ? { hour: "2-digit", minute: "2-digit", second: "2-digit" }
        : spanMs < 20 * 3600_000
          ? { hour: "2-digit", minute: "2-digit" }
          : { weekday: "short", hour: "2-digit", minute: "2-digit" };
    const format = new Intl.DateTimeFormat(undefined, options);
    return (ms) => format.format(new Date(ms));
  }

  const fullTime = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

  function yAxis(root, { left, right, top, height, max, ticks }) {
    const y = (v) => top + height - (v / max) * height;
    for (const tick of ticks) {
      root.append(
        svg("line", { x1: left, x2: right, y1: y(tick), y2: y(tick), class: tick === 0 ? "axis-base" : "grid-line" }),
        svg("text", { x: left - 6, y: y(tick) + 3.5, class: "tick-label", "text-anchor": "end" }, numberFormat.format(tick)),
      );
    }
    return y;
  }

  // ---------------------------------------------------------------------------------
  // Sweeps: two panes sharing one column per sweep

  /**
   * Active connections (a line, top pane) and rows cleaned (bars, bottom pane), one column
   * per sweep. Columns are evenly spaced rather than placed on a clock: the scheduled sweeps
   * are hourly anyway, and manual runs seconds apart stay readable instead of piling up.
   */
  function sweepChart(container, sweeps, { hours = 48 } = {}) {
    const rows = (Array.isArray(sweeps) ? sweeps : []).filter((s) => parseTime(s && s.at) !== null);
    if (!rows.length) {
      empty(
        container,
        "sweeps-empty",
        "No sweeps yet",
        `Each cleanup (the hourly schedule or a manual run) records one point; none in the last ${hours} h.`,
      );
      return;
    }
    const W = widthOf(container, 640);
    const H = 200;
    const left = 44;
    const right = W - 10;
    const top = 10;
    const activeH = 96;
    const gap = 24;
    const cleanedTop = top + activeH + gap;
    const cleanedH = 44;
    const axisY = cleanedTop + cleanedH;
    const plotW = right - left;
    const slot = plotW / rows.length;
    const cx = (i) => left + (i + 0.5) * slot;

    const actives = rows.map((s) => (Number.isFinite(s.activeConnections) ? s.activeConnections : null));
    const cleaned = rows.map((s) => Number(s.cleaned) || 0);
    const known = actives.filter((v) => v !== null);
    const activeTicks = niceTicks(Math.max(1, ...known));
    const cleanedTicks = niceTicks(Math.max(1, ...cleaned), 2);
    const totalCleaned = cleaned.reduce((a, b) => a + b, 0);
    const times = rows.map((s) => parseTime(s.at));
    const label = timeLabeler(times[times.length - 1] - times[0]);
    const latest = known.length ? known[known.length - 1] : null;

    const summary =
      `${plural(rows.length, "sweep")} from ${fullTime.format(new Date(times[0]))} to ` +
      `${fullTime.format(new Date(times[times.length - 1]))}. ` +
      (known.length
        ? `Active connections between ${numberFormat.format(Math.min(...known))} and ` +
          `${numberFormat.format(Math.max(...known))}, ${numberFormat.format(latest)} at the latest sweep. `
        : "") +
      `${plural(totalCleaned, "connection")} cleaned in all.`;
    const root = frame(W, H, `Active connections and connections cleaned per sweep, last ${hours} h`, summary, "sweep-chart");

    const yActive = yAxis(root, { left, right, top, height: activeH, max: activeTicks[activeTicks.length - 1], ticks: activeTicks });
    const yCleaned = yAxis(root, {
      left, right, top: cleanedTop, height: cleanedH, max: cleanedTicks[cleanedTicks.length - 1], ticks: cleanedTicks,
    });
    root.append(
      svg("text", { x: left, y: top + 1, class: "pane-label", "dominant-baseline": "hanging", dx: 6 }, "active"),
      svg("text", { x: left, y: cleanedTop - 7, class: "pane-label", dx: 6 }, "cleaned"),
    );

    // The active line, broken where a sweep had no snapshot (activeConnections null).
    const segments = [];
    let current = [];
    actives.forEach((v, i) => {
      if (v === null) {
        if (current.length) segments.push(current);
        current = [];
      } else {
        current.push([cx(i), yActive(v)]);
      }
    });
    if (current.length) segments.push(current);
    const base = top + activeH;
    for (const points of segments) {
      const line = points.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" ");
      if (points.length > 1) {
        root.append(
          svg("polygon", {
            points: `${points[0][0].toFixed(1)},${base} ${line} ${points[points.length - 1][0].toFixed(1)},${base}`,
            class: "active-area",
          }),
          svg("polyline", { points: line, class: "active-line" }),
        );
      }
    }

    const barW = Math.max(1.5, Math.min(28, slot * 0.6));
    const dotR = rows.length > 96 ? 0 : rows.length > 48 ? 2 : 3.5;
    rows.forEach((sweep, i) => {
      const group = svg("g", {
        class: "sweep",
        "data-testid": "sweep-point",
        "data-at": sweep.at,
        "data-active": actives[i] === null ? "" : actives[i],
        "data-cleaned": cleaned[i],
      });
      const parts = [
        actives[i] === null ? "no snapshot" : `${numberFormat.format(actives[i])} active`,
        `${numberFormat.format(cleaned[i])} cleaned`,
      ];
      const causes = ["gone", "lifetime", "evicted"].filter((k) => Number(sweep[k]) > 0).map((k) => `${sweep[k]} ${k}`);
      group.append(
        svg("title", {}, `${fullTime.format(new Date(times[i]))}: ${parts.join(", ")}` +
          (causes.length ? ` (${causes.join(", ")})` : "") +
          (Number.isFinite(sweep.durationMs) ? `; took ${numberFormat.format(sweep.durationMs)} ms` : "")),
        // The whole column answers the hover, not only the thin marks.
        svg("rect", { x: cx(i) - slot / 2, y: top, width: slot, height: axisY - top, class: "hover-target" }),
      );
      if (cleaned[i] > 0) {
        const y = yCleaned(cleaned[i]);
        group.append(svg("rect", { x: cx(i) - barW / 2, y, width: barW, height: axisY - y, rx: Math.min(2, barW / 3), class: "cleaned-bar" }));
      }
      if (actives[i] !== null && (dotR || segments.every((s) => s.length < 2))) {
        group.append(svg("circle", { cx: cx(i), cy: yActive(actives[i]), r: dotR || 3, class: "active-dot" }));
      }
      root.append(group);
    });

    // Time labels: the first and last sweep, and one between when there is room.
    const marks = rows.length === 1 ? [0] : rows.length < 5 ? rows.map((_, i) => i) : [0, Math.floor((rows.length - 1) / 2), rows.length - 1];
    for (const i of marks) {
      const anchor = rows.length === 1 ? "middle" : i === 0 ? "start" : i === rows.length - 1 ? "end" : "middle";
      const x = anchor === "start" ? Math.max(left, cx(i) - slot / 2) : anchor === "end" ? Math.min(right, cx(i) + slot / 2) : cx(i);
      root.append(svg("text", { x, y: axisY + 15, class: "tick-label", "text-anchor": anchor }, label(times[i])));
    }
    container.replaceChildren(root);
  }

  // ---------------------------------------------------------------------------------
  // Idle-time distribution: one column per bin

  /** Columns per idle bin; bins at or beyond the stale threshold are drawn as a warning. */
  function idleChart(container, stats, { onSelect } = {}) {
    const bins = stats && Array.isArray(stats.idle) ? stats.idle : [];
    if (!stats || !stats.asOf || !bins.length) {
      empty(container, "idle-empty", "No snapshot yet", "Each sweep counts the live connections by idle time.");
      return;
    }
    const total = bins.reduce((a, b) => a + (Number(b.count) || 0), 0);
    if (!total) {
      empty(container, "idle-empty", "No live connections", "at the last snapshot");
      return;
    }
    const staleAfter = Number(stats.staleAfterSeconds) || Infinity;
    const W = widthOf(container, 360);
    const H = 200;
    const left = 34;
    const right = W - 6;
    const top = 16;
    const height = 146;
    const axisY = top + height;
    const slot = (right - left) / bins.length;
    const ticks = niceTicks(Math.max(...bins.map((b) => Number(b.count) || 0)));
    const max = ticks[ticks.length - 1];
    const summary =
      `${plural(total, "live connection")} by time since their last activity: ` +
      bins.map((b) => `${b.label}: ${numberFormat.format(b.count)}`).join("; ") + ".";
    const root = frame(W, H, "Idle time of live connections", summary, "idle-chart");
    const y = yAxis(root, { left, right, top, height, max, ticks });

    bins.forEach((bin, i) => {
      const count = Number(bin.count) || 0;
      const x = left + i * slot + slot * 0.14;
      const w = slot * 0.72;
      const stale = Number(bin.fromSeconds) >= staleAfter;
      const share = Math.round((count / total) * 100);
      const group = svg("g", {
        class: `idle-bin${stale ? " is-stale" : ""}${onSelect ? " is-clickable" : ""}`,
        "data-testid": "idle-bar",
        "data-label": bin.label,
        "data-from": bin.fromSeconds,
        "data-count": count,
      });
      group.append(
        svg("title", {}, `${bin.label} idle: ${plural(count, "connection")} (${share} %)` +
          (stale ? ", stale" : "") + (onSelect ? ". Click to list them and longer." : "")),
        svg("rect", { x: left + i * slot, y: top, width: slot, height, class: "hover-target" }),
        svg("rect", { x, y: y(count), width: w, height: Math.max(0, axisY - y(count)), rx: 3, class: "idle-bar" }),
        svg("text", { x: x + w / 2, y: y(count) - 5, class: "value-label", "text-anchor": "middle" }, numberFormat.format(count)),
        binLabel(String(bin.label), x + w / 2, axisY + 14),
      );
      if (onSelect) group.addEventListener("click", () => onSelect(bin));
      root.append(group);
    });
    container.replaceChildren(root);
  }

  /** "5-15 min" on two lines ("5-15" over "min"): six bins side by side leave no room for one. */
  function binLabel(text, x, y) {
    const cut = text.lastIndexOf(" ");
    const node = svg("text", { x, y, class: "tick-label", "text-anchor": "middle" });
    if (cut <= 0) {
      node.textContent = text;
      return node;
    }
    node.append(svg("tspan", { x, dy: 0 }, text.slice(0, cut)), svg("tspan", { x, dy: 12 }, text.slice(cut + 1)));
    return node;
  }

  // ---------------------------------------------------------------------------------
  // Heaviest users: one horizontal bar each

  function topUsersChart(container, stats, { onSelect } = {}) {
    const users = stats && Array.isArray(stats.topUsers) ? stats.topUsers.filter((u) => u && u.userId !== undefined) : [];
    if (!stats || !stats.asOf) {
      empty(container, "top-users-empty", "No snapshot yet", "Each sweep finds the users with the most connections.");
      return;
    }
    if (!users.length) {
      empty(container, "top-users-empty", "No live connections", "at the last snapshot");
      return;
    }
    const W = widthOf(container, 360);
    const rowH = 18;
    const top = 4;
    const labelW = 104;
    const left = labelW + 6;
    const right = W - 34;
    const H = top * 2 + users.length * rowH;
    const max = Math.max(1, ...users.map((u) => Number(u.connections) || 0));
    const summary =
      `The ${plural(users.length, "user")} with the most live connections: ` +
      users.map((u) => `${u.userId}: ${numberFormat.format(u.connections)}`).join("; ") + ".";
    const root = frame(W, H, "Users with the most live connections", summary, "top-users-chart");

    users.forEach((user, i) => {
      const count = Number(user.connections) || 0;
      const y = top + i * rowH;
      const id = String(user.userId);
      const shown = id.length > 15 ? id.slice(0, 14) + "…" : id;
      const w = Math.max(2, ((right - left) * count) / max);
      const group = svg("g", {
        class: `top-user${onSelect ? " is-clickable" : ""}`,
        "data-testid": "top-user-bar",
        "data-user-id": id,
        "data-count": count,
      });
      group.append(
        svg("title", {}, `${id}: ${plural(count, "live connection")}` + (onSelect ? ". Click to list them." : "")),
        svg("rect", { x: 0, y, width: W, height: rowH, class: "hover-target" }),
        svg("text", { x: 2, y: y + rowH / 2 + 4, class: "row-label" }, shown),
        svg("rect", { x: left, y: y + 4, width: w, height: rowH - 8, rx: 3, class: "user-bar" }),
        svg("text", { x: left + w + 6, y: y + rowH / 2 + 4, class: "value-label" }, numberFormat.format(count)),
      );
      if (onSelect) group.addEventListener("click", () => onSelect(user));
      root.append(group);
    });
    container.replaceChildren(root);
  }

  return { sweepChart, idleChart, topUsersChart, niceTicks };
})();
