// PhaseScope dashboard: runs inside gr.HTML's js_on_load (element, props, watch are given), after
// `const THEME = {...}` (assets/theme.json's palette, prepended by viz/dashboard.py).
// Messages arrive as JSON in props.value: {kind: "full"} redraws every chart with Plotly.react
// (with lazy: true, a long prefill's first message, drawn while it runs, only the timeline; the
// others with the first step),
// {kind: "extend"} appends new steps' columns to each chart's data, so zoom survives and only the
// new points travel. An extend that does not start where the charts end (a message lost or out of
// order) is not applied: the charts wait for the run's final full redraw rather than draw a gap.
// The element's data-steps attribute says how many steps the charts hold (the browser tests read it).
//
// Drawing is paced by what it costs: appending data is cheap and happens per message, but each
// chart is redrawn at most once per pass, and the next pass waits three times as long as the last
// one took. On a busy machine (the model and the browser on the same cores) the page then spends at
// most about a quarter of a core on drawing, never queues redraws behind each other, and stays
// responsive (Stop must answer at once), while the data shown is never more than a pass behind.
// Only the charts on screen are redrawn: one scrolled away (or in a closed tab) takes its data
// as it comes and is drawn once when it comes into view.
const P = window.Plotly;
// The first token's time: the server sends its parts; the page measures from the click (or Enter
// in the prompt) to the moment the first token's update has been drawn.
const TTFT_COLOURS = [THEME.others, THEME.waiting, THEME.prefill, THEME.decode, THEME.done];
let clickAt = null;
document.addEventListener("click", (e) => { if (e.target.closest && e.target.closest("#ps-run")) clickAt = performance.now(); }, true);
document.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && e.target.closest && e.target.closest("textarea")) clickAt = performance.now();
}, true);

function showTtft(parts, total) {
  const bar = element.querySelector("[data-ttft-bar]");
  if (!bar) return;
  const entries = Object.entries(parts);
  const server = entries.reduce((sum, [, ms]) => sum + ms, 0);
  if (total !== null && total > server) entries.push(["Gradio's queue, network and drawing (in your browser)", total - server]);
  const whole = entries.reduce((sum, [, ms]) => sum + ms, 0) || 1;
  const esc = (t) => String(t).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c]));
  bar.innerHTML = `<div class="ps-ttft-bar">${entries.map(([name, ms], i) =>
    `<div title="${esc(name)}: ${ms.toFixed(0)} ms" style="width:${(100 * ms / whole).toFixed(2)}%;background:${TTFT_COLOURS[i % 5]}"></div>`).join("")}</div>`
    + `<div class="ps-ttft-legend">${entries.map(([name, ms], i) =>
      `<span style="background:${TTFT_COLOURS[i % 5]}"></span>${esc(name)} ${ms.toFixed(0)} ms`).join("")}`
    + ` · <b>${total !== null ? `${total.toFixed(0)} ms in all, from your click` : `${server.toFixed(0)} ms on the server`}</b></div>`;
  element.dataset.ttft = String(Math.round(total !== null ? total : server));
}
const config = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["select2d", "lasso2d"] };
const divs = {};
element.querySelectorAll("[data-chart]").forEach((div) => { divs[div.dataset.chart] = div; });
const MIN_GAP_MS = 50;        // at most 20 passes a second
const COST_FACTOR = 3;        // wait 3x the last pass's drawing time before the next
let lastSeq = -1;
let have = 0;                 // steps the charts hold (after the last applied message)
let dirty = new Set();
const stale = new Set();      // charts holding data not drawn yet (off screen, or a lazy first message)
const visible = new Set();
let timer = null;
let earliest = 0;             // performance.now() before which the next pass may not start
let revision = 0;

function themed(layout) {
  const dark = document.body.classList.contains("dark") || document.documentElement.classList.contains("dark")
    || !!document.querySelector(".gradio-container.dark, .dark .gradio-container");
  const ink = dark ? THEME.ink_dark : THEME.ink;
  const grid = dark ? THEME.grid_dark : THEME.grid;
  layout.font = Object.assign({}, layout.font, { color: ink });
  for (const axis of ["xaxis", "yaxis"]) {
    layout[axis] = Object.assign({ gridcolor: grid, zerolinecolor: grid }, layout[axis]);
  }
  return layout;
}

function append(trace, attr, values) {
  if (Array.isArray(trace[attr])) {
    for (const v of values) trace[attr].push(v);
  } else {
    trace[attr] = Array.from(trace[attr] || []).concat(values);
  }
}

// The extend message's columns, restyle and layout go straight into the chart's data and layout;
// the chart is redrawn later, once, by draw().
function merge(gd, chart) {
  for (const group of chart.extend) {
    group.indices.forEach((index, k) => {
      if (!gd.data[index]) return;      // a series this chart was not drawn with: the final redraw has it
      for (const [attr, cols] of Object.entries(group.update)) append(gd.data[index], attr, cols[k]);
    });
  }
  for (const [attr, values] of Object.entries(chart.restyle || {})) {
    values.forEach((value, index) => { gd.data[index][attr] = value; });
  }
  Object.assign(gd.layout, chart.layout || {});
}

if ("IntersectionObserver" in window) {
  const observer = new IntersectionObserver((entries) => {
    for (const entry of entries) {
      const id = entry.target.dataset.chart;
      if (!entry.isIntersecting) {
        visible.delete(id);
        continue;
      }
      visible.add(id);
      if (stale.has(id)) {
        dirty.add(id);
        schedule();
      }
    }
  }, { rootMargin: "200px" });
  Object.values(divs).forEach((div) => observer.observe(div));
} else {
  Object.keys(divs).forEach((id) => visible.add(id));
}

function draw() {
  timer = null;
  const started = performance.now();
  const charts = dirty;
  dirty = new Set();
  revision += 1;
  for (const id of charts) {
    if (!visible.has(id)) {
      stale.add(id);
      continue;
    }
    stale.delete(id);
    const gd = divs[id];
    gd.classList.remove("ps-stale");
    gd.layout.datarevision = revision;
    P.react(gd, gd.data, gd.layout, config);
  }
  const now = performance.now();
  earliest = now + Math.max(MIN_GAP_MS, COST_FACTOR * (now - started));
}

function schedule() {
  if (timer === null) timer = setTimeout(draw, Math.max(0, earliest - performance.now()));
}

// A whole redraw (the first token's, a run's last) comes after the frame that paints what the same
// update brought to the rest of the page: drawing every chart takes hundreds of ms on a small
// machine, and the token's text should not wait for it. Paced passes wait for it.
function drawAfterPaint(ids) {
  timer = 0;                  // not null: no paced pass is scheduled meanwhile
  requestAnimationFrame(() => {
    timer = setTimeout(() => {
      revision += 1;
      for (const id of ids) {
        const gd = divs[id];
        gd.layout.datarevision = revision;
        P.react(gd, gd.data, gd.layout, config);
        gd.classList.remove("ps-stale");
        dirty.delete(id);       // steps merged meanwhile are drawn with it
      }
      timer = null;
      if (dirty.size) schedule();
    }, 0);
  });
}

function timeFirstToken(parts) {
  const clicked = clickAt;
  clickAt = null;
  // The first task after the next frame: the update's text has been painted, which is when the
  // student sees the token (the charts are drawn after it, drawAfterPaint).
  requestAnimationFrame(() => setTimeout(() => showTtft(parts, clicked !== null ? performance.now() - clicked : null), 0));
}

function apply(msg) {
  if (msg.seq === lastSeq) return;
  lastSeq = msg.seq;
  // The update that brings a run's first token (a full redraw when nothing was drawn during its
  // prefill, else an extend) carries the server's share of its time.
  if (msg.ttft_parts && (msg.kind === "full" || msg.start === have)) timeFirstToken(msg.ttft_parts);
  if (msg.kind === "full") {
    if (timer !== null) clearTimeout(timer);
    timer = null;
    dirty = new Set();
    stale.clear();
    const whole = [];
    for (const [id, fig] of Object.entries(msg.figures)) {
      const gd = divs[id];
      if (!gd) continue;
      if (msg.template) fig.layout.template = msg.template;     // sent once for every chart
      gd.data = fig.data;
      gd.layout = themed(fig.layout);
      if (msg.lazy && id !== "timeline") {
        // A run's first message, while its prefill runs: only the timeline (where the pause grows)
        // is drawn now; the others, dimmed meanwhile, with the first step or when they come into view.
        stale.add(id);
        gd.classList.add("ps-stale");
      } else {
        whole.push(id);
      }
    }
    drawAfterPaint(whole);
  } else if (msg.kind === "extend") {
    if (msg.start !== have) return;
    for (const [id, chart] of Object.entries(msg.charts)) {
      const gd = divs[id];
      if (!gd || !gd.data) continue;
      merge(gd, chart);
      dirty.add(id);
    }
    schedule();
  }
  have = msg.steps;
  element.dataset.steps = String(msg.steps);
}

function receive() {
  if (!props.value) return;
  try {
    apply(JSON.parse(props.value));
  } catch (err) {
    console.error("PhaseScope dashboard:", err);
  }
}

watch("value", receive);
receive();
