/* tpw-exporter's live page: polls /api/v1/history and draws it with uPlot. Plain JavaScript, no build step.
 *
 * The first answer holds the whole window (15 minutes); each later one only the points after the tick the
 * page already has (?since=TICK&run=RUN), which are appended (a point whose step got a newer tick replaces
 * the page's last one) and the window trimmed. The body's data-tick is the tick the numbers on the page
 * come from: every [data-value] is that tick's exact value, as /api/v1/snapshot gives it for the same tick.
 */
(function () {
  "use strict";

  var BOUND_COLORS = {
    compute: "#1a9850",
    memory: "#3366cc",
    latency: "#e6780b",
    idle: "#7f93ad",
    mixed: "#b8a000",
  };
  var BOUND_HELP = {
    compute: "tensor or FP pipes busy",
    memory: "DRAM bandwidth busy, tensor pipes not",
    latency: "busy, but the SMs are not: launch- or sync-bound",
    idle: "nothing running",
    mixed: "none dominates (e.g. near the ridge point)",
  };
  var COLORS = {
    utilization: "#d62728",
    sm_active: "#1f77b4",
    tensor: "#2ca02c",
    dram: "#9467bd",
    power: "#ff7f0e",
    power_limit: "#8c564b",
    tokens_per_second: "#1f77b4",
    tokens_per_joule: "#2ca02c",
    running: "#17becf",
    waiting: "#d62728",
  };
  var AXIS_SIZE = 64;
  var CHART_HEIGHT = 150;
  var TIMELINE_HEIGHT = 48;

  var state = {
    run: null,
    tick: 0,
    step: 1,
    capacity: 900,
    slots: [],
    times: [],
    gpus: new Map(),
    endpoints: new Map(),
    findings: [],
    payload: null,
  };
  var charts = {};
  var timer = null;
  var inflight = null;

  // -- formatting -------------------------------------------------------------------------------------

  function percent(v) {
    return v == null ? "\u2013" : Math.round(v * 100) + " %";
  }
  function watts(v) {
    return v == null ? "\u2013" : Math.round(v).toLocaleString("en-US") + " W";
  }
  function rate(v) {
    if (v == null) return "\u2013";
    return v >= 100 ? Math.round(v).toLocaleString("en-US") : v.toFixed(1);
  }
  function perJoule(v) {
    return v == null ? "\u2013" : v.toPrecision(3);
  }
  function count(v) {
    return v == null ? "\u2013" : Math.round(v).toLocaleString("en-US");
  }
  function clock(t) {
    return new Date(t * 1000).toLocaleTimeString([], { hour12: false });
  }
  function duration(seconds) {
    if (seconds < 120) return Math.round(seconds) + " s";
    return Math.round(seconds / 60) + " min";
  }

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) {
      if (key === "text") node.textContent = attrs[key];
      else if (key === "className") node.className = attrs[key];
      else node.setAttribute(key, attrs[key]);
    });
    (children || []).forEach(function (child) {
      if (child != null) node.appendChild(child);
    });
    return node;
  }

  // -- merging answers ----------------------------------------------------------------------------------

  function entityMap(items, key) {
    var map = new Map();
    items.forEach(function (item) {
      map.set(item[key], item);
    });
    return map;
  }

  function merge(payload) {
    var incremental = !payload.full && payload.run === state.run;
    state.step = payload.step_seconds;
    state.capacity = Math.round(payload.window_seconds / payload.step_seconds);
    var gpus = entityMap(payload.gpus, "gpu");
    var endpoints = entityMap(payload.endpoints, "endpoint");
    if (!incremental) {
      state.slots = payload.slots.slice();
      state.times = payload.times.slice();
      state.gpus = gpus;
      state.endpoints = endpoints;
    } else if (payload.slots.length) {
      var keep = state.slots.findIndex(function (s) {
        return s >= payload.slots[0];
      });
      if (keep < 0) keep = state.slots.length;
      state.slots = state.slots.slice(0, keep).concat(payload.slots);
      state.times = state.times.slice(0, keep).concat(payload.times);
      state.gpus = mergeEntities(state.gpus, gpus, keep, payload.slots.length);
      state.endpoints = mergeEntities(state.endpoints, endpoints, keep, payload.slots.length);
      var oldest = state.slots[state.slots.length - 1] - state.capacity + 1;
      var drop = state.slots.findIndex(function (s) {
        return s >= oldest;
      });
      if (drop > 0) {
        state.slots = state.slots.slice(drop);
        state.times = state.times.slice(drop);
        [state.gpus, state.endpoints].forEach(function (map) {
          map.forEach(function (item) {
            Object.keys(item.series).forEach(function (name) {
              item.series[name] = item.series[name].slice(drop);
            });
          });
        });
      }
    } else {
      state.gpus = mergeEntities(state.gpus, gpus, state.slots.length, 0);
      state.endpoints = mergeEntities(state.endpoints, endpoints, state.slots.length, 0);
    }
    state.run = payload.run;
    state.tick = payload.tick;
    state.findings = payload.findings;
    state.payload = payload;
  }

  function mergeEntities(previous, current, keep, added) {
    var out = new Map();
    current.forEach(function (item, key) {
      var before = previous.get(key);
      var series = {};
      Object.keys(item.series).forEach(function (name) {
        var old = before && before.series[name] ? before.series[name].slice(0, keep) : [];
        while (old.length < keep) old.unshift(null);
        series[name] = old.concat(item.series[name].slice(item.series[name].length - added));
      });
      out.set(key, Object.assign({}, item, { series: series }));
    });
    return out;
  }

  // -- charts -------------------------------------------------------------------------------------------

  function percentAxis() {
    return {
      scale: "%",
      size: AXIS_SIZE,
      values: function (u, splits) {
        return splits.map(function (v) {
          return Math.round(v * 100) + "%";
        });
      },
    };
  }

  function line(label, key, scale, extra) {
    return Object.assign(
      { label: label, stroke: COLORS[key], width: 1.6, scale: scale, spanGaps: false, points: { show: false } },
      extra || {}
    );
  }

  function makeChart(id, container, options, data) {
    var width = Math.max(240, container.clientWidth);
    var opts = Object.assign(
      {
        width: width,
        height: CHART_HEIGHT,
        cursor: { sync: { key: "tpw" } },
        legend: { live: false },
        padding: [8, 16, 0, 0],
        scales: { x: { time: true } },
      },
      options
    );
    var u = new uPlot(opts, data, container);
    container.setAttribute("data-chart", id);
    charts[id] = u;
    return u;
  }

  function timelineChart(id, container, data) {
    return makeChart(
      id,
      container,
      {
        height: TIMELINE_HEIGHT,
        legend: { show: false },
        scales: { x: { time: true }, state: { auto: false, range: [0, 1] } },
        series: [{}, { label: "bound", scale: "state", paths: function () { return null; }, points: { show: false } }],
        axes: [
          { show: false },
          { scale: "state", size: AXIS_SIZE, values: function () { return []; }, grid: { show: false }, ticks: { show: false } },
        ],
        hooks: { draw: [drawTimeline] },
      },
      data
    );
  }

  function drawTimeline(u) {
    var xs = u.data[0];
    var codes = u.data[1];
    var states = (state.payload && state.payload.bound_states) || [];
    var ctx = u.ctx;
    var box = u.bbox;
    ctx.save();
    ctx.beginPath();
    ctx.rect(box.left, box.top, box.width, box.height);
    ctx.clip();
    for (var i = 0; i < xs.length; i++) {
      var code = codes[i];
      if (code == null) continue;
      var x0 = u.valToPos(i > 0 ? (xs[i - 1] + xs[i]) / 2 : xs[i] - state.step / 2, "x", true);
      var x1 = u.valToPos(i + 1 < xs.length ? (xs[i] + xs[i + 1]) / 2 : xs[i] + state.step / 2, "x", true);
      ctx.fillStyle = BOUND_COLORS[states[code]] || "#888";
      ctx.fillRect(Math.floor(x0), box.top, Math.max(1, Math.ceil(x1) - Math.floor(x0)), box.height);
    }
    ctx.restore();
  }

  function activityChart(id, container, data) {
    return makeChart(
      id,
      container,
      {
        scales: { x: { time: true }, "%": { auto: false, range: [0, 1] } },
        series: [
          {},
          line("utilization (NVML: a kernel ran)", "utilization", "%", { width: 2.2, value: pct }),
          line("SM active", "sm_active", "%", { value: pct }),
          line("tensor active", "tensor", "%", { value: pct }),
          line("DRAM bandwidth", "dram", "%", { value: pct }),
        ],
        axes: [{}, percentAxis()],
      },
      data
    );
  }

  function pct(u, v) {
    return percent(v);
  }

  function powerChart(id, container, data) {
    return makeChart(
      id,
      container,
      {
        scales: { x: { time: true }, W: { range: function (u, min, max) { return [0, Math.max(100, (max || 0) * 1.1)]; } } },
        series: [
          {},
          line("power", "power", "W", { value: function (u, v) { return watts(v); } }),
          line("power limit", "power_limit", "W", { dash: [6, 4], value: function (u, v) { return watts(v); } }),
        ],
        axes: [{}, { scale: "W", size: AXIS_SIZE, values: function (u, s) { return s.map(function (v) { return v + " W"; }); } }],
      },
      data
    );
  }

  function throughputChart(id, container, data, unit) {
    var zero = function (u, min, max) {
      return [0, Math.max(1, (max || 0) * 1.1)];
    };
    return makeChart(
      id,
      container,
      {
        scales: { x: { time: true }, rate: { range: zero }, perj: { range: zero } },
        series: [
          {},
          line(unit + "/s", "tokens_per_second", "rate", { value: function (u, v) { return rate(v); } }),
          line(unit + " per joule", "tokens_per_joule", "perj", { value: function (u, v) { return perJoule(v); } }),
        ],
        axes: [
          {},
          { scale: "rate", size: AXIS_SIZE, stroke: COLORS.tokens_per_second },
          { scale: "perj", side: 1, size: AXIS_SIZE, grid: { show: false }, stroke: COLORS.tokens_per_joule },
        ],
      },
      data
    );
  }

  function requestsChart(id, container, data) {
    return makeChart(
      id,
      container,
      {
        scales: { x: { time: true }, n: { range: function (u, min, max) { return [0, Math.max(4, (max || 0) * 1.1)]; } } },
        series: [
          {},
          line("running", "running", "n", { value: function (u, v) { return count(v); } }),
          line("waiting", "waiting", "n", { value: function (u, v) { return count(v); } }),
        ],
        axes: [{}, { scale: "n", size: AXIS_SIZE }],
      },
      data
    );
  }

  // -- cards ----------------------------------------------------------------------------------------------

  function stat(label, field, title) {
    return el("div", { className: "stat", title: title || label }, [
      el("span", { className: "label", text: label }),
      el("span", { className: "value", "data-field": field, "data-value": "", text: "\u2013" }),
    ]);
  }

  function setStat(card, field, value, text) {
    var node = card.querySelector('[data-field="' + field + '"]');
    if (!node) return;
    node.setAttribute("data-value", value == null ? "" : String(value));
    node.textContent = text;
  }

  function gpuCard(gpu) {
    var id = "gpu" + gpu.gpu;
    var card = el("article", { className: "card", "data-gpu": gpu.gpu, id: id }, [
      el("h3", {}, [el("span", { text: "GPU " + gpu.gpu }), el("span", { className: "sub", "data-role": "subtitle" })]),
      el("div", { className: "stats" }, [
        el("div", { className: "stat", title: "roofline bound over the derive window" }, [
          el("span", { className: "label", text: "bound" }),
          el("span", { className: "value chip", "data-field": "bound", "data-value": "", text: "\u2013" }),
        ]),
        stat("utilization", "utilization", "NVML: share of time a kernel ran; not how busy the SMs were"),
        stat("SM active", "sm_active"),
        stat("tensor", "tensor"),
        stat("DRAM", "dram", "DRAM bandwidth used, of the peak"),
        stat("power", "power"),
      ]),
      el("div", { className: "chart-title", text: "bound, last " + duration(state.capacity * state.step) }),
      el("div", { className: "chart timeline", "data-kind": "timeline" }),
      el("div", { className: "chart-title", text: "busy (NVML utilization) vs work done (SM, tensor, DRAM)" }),
      el("div", { className: "chart", "data-kind": "activity" }),
      el("div", { className: "chart-title", text: "power" }),
      el("div", { className: "chart", "data-kind": "power" }),
    ]);
    document.getElementById("gpus").appendChild(card);
    var data = gpuData(gpu);
    timelineChart(id + "-bound", card.querySelector('[data-kind="timeline"]'), data.bound);
    activityChart(id + "-activity", card.querySelector('[data-kind="activity"]'), data.activity);
    powerChart(id + "-power", card.querySelector('[data-kind="power"]'), data.power);
    return card;
  }

  function gpuData(gpu) {
    var s = gpu.series;
    return {
      bound: [state.times, s.bound],
      activity: [state.times, s.utilization, s.sm_active, s.tensor, s.dram],
      power: [state.times, s.power, s.power_limit],
    };
  }

  function updateGpu(gpu) {
    var id = "gpu" + gpu.gpu;
    var card = document.getElementById(id) || gpuCard(gpu);
    var c = gpu.current;
    var subtitle = [gpu.name];
    if (gpu.endpoints && gpu.endpoints.length) subtitle.push("serves " + gpu.endpoints.join(", "));
    if (!gpu.present) subtitle.push("not read at this tick");
    card.querySelector('[data-role="subtitle"]').textContent = subtitle.join(" \u00b7 ");
    var chip = card.querySelector('[data-field="bound"]');
    chip.setAttribute("data-value", c.bound || "");
    chip.textContent = c.bound || "no evidence";
    chip.style.background = BOUND_COLORS[c.bound] || "transparent";
    chip.title = c.bound ? BOUND_HELP[c.bound] : "no GPM evidence yet";
    ["utilization", "sm_active", "tensor", "dram"].forEach(function (f) {
      setStat(card, f, c[f], percent(c[f]));
    });
    var power = watts(c.power) + (c.power_limit != null ? " / " + watts(c.power_limit) : "");
    setStat(card, "power", c.power, power);
    var data = gpuData(gpu);
    charts[id + "-bound"].setData(data.bound);
    charts[id + "-activity"].setData(data.activity);
    charts[id + "-power"].setData(data.power);
  }

  function endpointCard(endpoint, key) {
    var unit = endpoint.unit === "tokens" ? "tokens" : endpoint.unit;
    var card = el("article", { className: "card", "data-endpoint": endpoint.endpoint, id: key }, [
      el("h3", {}, [el("span", { text: endpoint.endpoint }), el("span", { className: "sub", "data-role": "subtitle" })]),
      el("div", { className: "stats" }, [
        stat(unit + "/s", "tokens_per_second", unit + " per second over the derive window"),
        stat(unit + "/J", "tokens_per_joule", unit + " per joule of the endpoint's GPUs, over the derive window"),
        stat("running", "running", "requests in the running batch"),
        stat("waiting", "waiting", "requests queued"),
      ]),
      el("div", { className: "chart-title", text: "throughput and " + unit + " per joule" }),
      el("div", { className: "chart", "data-kind": "throughput" }),
      el("div", { className: "chart-title", text: "requests running and waiting" }),
      el("div", { className: "chart", "data-kind": "requests" }),
    ]);
    document.getElementById("endpoints").appendChild(card);
    var data = endpointData(endpoint);
    throughputChart(key + "-throughput", card.querySelector('[data-kind="throughput"]'), data.throughput, unit);
    requestsChart(key + "-requests", card.querySelector('[data-kind="requests"]'), data.requests);
    return card;
  }

  function endpointData(endpoint) {
    var s = endpoint.series;
    return {
      throughput: [state.times, s.tokens_per_second, s.tokens_per_joule],
      requests: [state.times, s.running, s.waiting],
    };
  }

  function updateEndpoint(endpoint, index) {
    var key = "endpoint" + index;
    var card = document.getElementById(key);
    if (card && card.getAttribute("data-endpoint") !== endpoint.endpoint) {
      removeCard(card);
      card = null;
    }
    card = card || endpointCard(endpoint, key);
    var c = endpoint.current;
    var subtitle = [endpoint.engine];
    if (endpoint.models && endpoint.models.length) subtitle.push(endpoint.models.join(", "));
    if (endpoint.gpus && endpoint.gpus.length) subtitle.push("GPUs " + endpoint.gpus.join(", "));
    subtitle.push(c.up ? "up" : "DOWN");
    card.querySelector('[data-role="subtitle"]').textContent = subtitle.join(" \u00b7 ");
    card.classList.toggle("down", !c.up);
    setStat(card, "tokens_per_second", c.tokens_per_second, rate(c.tokens_per_second));
    setStat(card, "tokens_per_joule", c.tokens_per_joule, perJoule(c.tokens_per_joule));
    setStat(card, "running", c.running, count(c.running));
    setStat(card, "waiting", c.waiting, count(c.waiting));
    var data = endpointData(endpoint);
    charts[key + "-throughput"].setData(data.throughput);
    charts[key + "-requests"].setData(data.requests);
  }

  function removeCard(card) {
    card.querySelectorAll("[data-chart]").forEach(function (node) {
      var id = node.getAttribute("data-chart");
      if (charts[id]) charts[id].destroy();
      delete charts[id];
    });
    card.remove();
  }

  // -- findings -------------------------------------------------------------------------------------------

  function findingItem(f) {
    var where = [];
    if (f.endpoint) where.push("endpoint " + f.endpoint);
    if (f.gpus && f.gpus.length) where.push((f.gpus.length === 1 ? "GPU " : "GPUs ") + f.gpus.join(", "));
    where.push(f.ongoing ? "since " + clock(f.start) + ", ongoing" : clock(f.start) + " to " + clock(f.end));
    var lines = el(
      "ul",
      {},
      f.summary.map(function (text) {
        return el("li", { text: text });
      })
    );
    return el(
      "li",
      { className: "finding sev-" + f.severity, "data-pattern": f.pattern, "data-ongoing": String(f.ongoing) },
      [
        el("h3", {}, [el("span", { className: "severity", text: f.severity }), el("span", { text: " " + f.title })]),
        el("p", { className: "where", text: where.join(" \u00b7 ") }),
        lines,
        el("p", { className: "next" }, [el("strong", { text: "Next: " }), el("span", { text: f.next_check })]),
        f.runbook
          ? el("p", {}, [el("a", { href: f.runbook, rel: "noreferrer", text: "runbook " + f.alert })])
          : null,
      ]
    );
  }

  function renderFindings() {
    var active = state.findings.filter(function (f) {
      return f.ongoing;
    });
    var earlier = state.findings.filter(function (f) {
      return !f.ongoing;
    });
    var list = document.getElementById("findings");
    list.replaceChildren.apply(list, active.map(findingItem));
    document.getElementById("no-findings").hidden = active.length > 0;
    var older = document.getElementById("earlier-findings");
    older.replaceChildren.apply(older, earlier.map(findingItem));
    document.getElementById("earlier-count").textContent = String(earlier.length);
    document.getElementById("earlier").hidden = earlier.length === 0;
    document.body.setAttribute("data-findings", String(active.length));
  }

  // -- the page -------------------------------------------------------------------------------------------

  function legend() {
    var node = document.getElementById("bound-legend");
    var states = (state.payload && state.payload.bound_states) || [];
    node.replaceChildren.apply(
      node,
      states.map(function (name) {
        var chip = el("span", { className: "chip", title: BOUND_HELP[name] || "", text: name });
        chip.style.background = BOUND_COLORS[name];
        return chip;
      })
    );
  }

  function render() {
    var p = state.payload;
    if (!document.getElementById("bound-legend").childElementCount) legend();
    var gpus = Array.from(state.gpus.values());
    document.querySelectorAll("#gpus > [data-gpu]").forEach(function (card) {
      if (!state.gpus.has(card.getAttribute("data-gpu"))) removeCard(card);
    });
    gpus.forEach(updateGpu);
    document.getElementById("no-gpus").hidden = gpus.length > 0;
    var endpoints = Array.from(state.endpoints.values());
    document.querySelectorAll("#endpoints > [data-endpoint]").forEach(function (card, i) {
      if (i >= endpoints.length) removeCard(card);
    });
    endpoints.forEach(updateEndpoint);
    document.getElementById("no-endpoints").hidden = endpoints.length > 0;
    renderFindings();
    var mode = document.getElementById("mode");
    if (p.simulated_scenario) {
      mode.replaceChildren(el("strong", { text: "Simulated node" }), document.createTextNode(" (scenario " + p.simulated_scenario + "): not real GPUs."));
    }
    document.body.setAttribute("data-scenario", p.simulated_scenario || "");
    var left = [];
    if (p.left_out.gpus) left.push(p.left_out.gpus + " GPUs");
    if (p.left_out.endpoints) left.push(p.left_out.endpoints + " endpoints");
    var last = state.times.length ? clock(state.times[state.times.length - 1]) : "\u2013";
    setStatus(
      "live",
      "Tick " + p.tick + " at " + last + " \u00b7 a point every " + p.step_seconds + " s over the last " +
        duration(state.capacity * state.step) + " \u00b7 findings from tick " + p.findings_tick +
        " (episodes of at least " + duration(p.min_duration_seconds) + ")" +
        (left.length ? " \u00b7 not kept: " + left.join(", ") : "")
    );
    document.body.setAttribute("data-tick", String(p.tick));
  }

  function setStatus(kind, text) {
    document.body.setAttribute("data-state", kind);
    var node = document.getElementById("status");
    node.textContent = text;
    node.className = "status " + kind;
  }

  function schedule(ms) {
    clearTimeout(timer);
    timer = setTimeout(refresh, ms);
  }

  function refresh() {
    if (inflight) return inflight;
    clearTimeout(timer);
    var url = "/api/v1/history";
    if (state.run) url += "?since=" + state.tick + "&run=" + state.run;
    inflight = fetch(url, { cache: "no-store", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (!response.ok) {
          throw new Error(
            response.status === 503
              ? "the collector process is down (503)"
              : response.status === 401
                ? "not authorized (401): reload the page to sign in again"
                : "HTTP " + response.status
          );
        }
        return response.json();
      })
      .then(function (payload) {
        merge(payload);
        render();
        schedule(Math.max(1000, state.step * 1000));
      })
      .catch(function (error) {
        setStatus("error", "No update: " + error.message + "; retrying in 5 s.");
        schedule(5000);
      })
      .finally(function () {
        inflight = null;
      });
    return inflight;
  }

  function resize() {
    Object.keys(charts).forEach(function (id) {
      var u = charts[id];
      var container = document.querySelector('[data-chart="' + id + '"]');
      if (container) u.setSize({ width: Math.max(240, container.clientWidth), height: u.height });
    });
  }

  var resizeTimer = null;
  window.addEventListener("resize", function () {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(resize, 150);
  });
  document.addEventListener("visibilitychange", function () {
    if (document.hidden) clearTimeout(timer);
    else refresh();
  });

  window.tpwLive = { refresh: refresh, charts: charts, state: state };
  refresh();
})();
