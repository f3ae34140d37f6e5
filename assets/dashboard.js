// PhaseScope dashboard: runs inside gr.HTML's js_on_load (element, props, watch are given).
// Messages arrive as JSON in props.value: {kind: "full"} redraws every chart with Plotly.react,
// {kind: "extend"} appends new steps with Plotly.extendTraces, so zoom survives and only the
// new points travel.
const P = window.Plotly;
const config = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["select2d", "lasso2d"] };
const divs = {};
element.querySelectorAll("[data-chart]").forEach((div) => { divs[div.dataset.chart] = div; });
let lastSeq = -1;

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

function apply(msg) {
  if (msg.seq === lastSeq) return;
  lastSeq = msg.seq;
  if (msg.kind === "full") {
    for (const [id, fig] of Object.entries(msg.figures)) {
      if (divs[id]) P.react(divs[id], fig.data, themed(fig.layout), config);
    }
  } else if (msg.kind === "extend") {
    for (const [id, chart] of Object.entries(msg.charts)) {
      const gd = divs[id];
      if (!gd || !gd.data) continue;
      for (const group of chart.extend) {
        const any = Object.values(group.update).some((cols) => cols.some((col) => col.length > 0));
        if (any) P.extendTraces(gd, group.update, group.indices);
      }
      if (chart.restyle) P.restyle(gd, chart.restyle);
      if (chart.layout) P.relayout(gd, chart.layout);
    }
  }
  element.dataset.steps = String(msg.steps);
  element.dataset.seq = String(msg.seq);
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
