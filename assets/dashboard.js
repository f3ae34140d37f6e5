// PhaseScope dashboard: runs inside gr.HTML's js_on_load (element, props, watch are given).
// Messages arrive as JSON in props.value: {kind: "full"} redraws every chart with Plotly.react,
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
const P = window.Plotly;
const config = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["select2d", "lasso2d"] };
const divs = {};
element.querySelectorAll("[data-chart]").forEach((div) => { divs[div.dataset.chart] = div; });
const MIN_GAP_MS = 50;        // at most 20 passes a second
const COST_FACTOR = 3;        // wait 3x the last pass's drawing time before the next
let lastSeq = -1;
let have = 0;                 // steps the charts hold (after the last applied message)
let dirty = new Set();
let timer = null;
let earliest = 0;             // performance.now() before which the next pass may not start
let revision = 0;

function themed(layout) {
  const dark = document.body.classList.contains("dark") || document.documentElement.classList.contains("dark")
    || !!document.querySelector(".gradio-container.dark, .dark .gradio-container");
  const ink = dark ? "#e8eaed" : "#202124";
  const grid = dark ? "#3c4043" : "#e3e3e3";
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
      for (const [attr, cols] of Object.entries(group.update)) append(gd.data[index], attr, cols[k]);
    });
  }
  for (const [attr, values] of Object.entries(chart.restyle || {})) {
    values.forEach((value, index) => { gd.data[index][attr] = value; });
  }
  Object.assign(gd.layout, chart.layout || {});
}

function draw() {
  timer = null;
  const started = performance.now();
  const charts = dirty;
  dirty = new Set();
  revision += 1;
  for (const id of charts) {
    const gd = divs[id];
    gd.layout.datarevision = revision;
    P.react(gd, gd.data, gd.layout, config);
  }
  const now = performance.now();
  earliest = now + Math.max(MIN_GAP_MS, COST_FACTOR * (now - started));
}

function schedule() {
  if (timer === null) timer = setTimeout(draw, Math.max(0, earliest - performance.now()));
}

function apply(msg) {
  if (msg.seq === lastSeq) return;
  lastSeq = msg.seq;
  if (msg.kind === "full") {
    if (timer !== null) clearTimeout(timer);
    timer = null;
    dirty = new Set();
    for (const [id, fig] of Object.entries(msg.figures)) {
      if (divs[id]) P.react(divs[id], fig.data, themed(fig.layout), config);
    }
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
