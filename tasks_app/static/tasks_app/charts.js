// The dashboard's two charts over the last hour, drawn with uPlot (a classic deferred script,
// window.uPlot): jobs finished per minute stacked by outcome, and the queue depth (jobs queued
// and running, sampled once a minute). Both redraw in place when GET /api/stats/ answers again,
// follow the card's width, and give each minute's own values in the legend under the cursor.

import { EMPTY } from "./common.js";

const HEIGHT = 220;
const minuteFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });

// Colours in the badges' hues; the dark theme (prefers-color-scheme) gets lighter axes.
function axisColours() {
  const dark = window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches;
  return dark ? { text: "#9198a1", grid: "#30363d" } : { text: "#59636e", grid: "#eaeef2" };
}

const toSeconds = (iso) => Math.floor(new Date(iso).getTime() / 1000);

/** One uPlot chart in `el`, created on the first draw, resized with its element. */
class MinuteChart {
  constructor(el) {
    this.el = el;
    this.plot = null;
    this.points = [];
  }

  draw(points) {
    const uPlot = window.uPlot;
    if (!uPlot || !this.el) return;
    this.points = points;
    const data = this.data(points);
    if (this.plot) {
      this.plot.setData(data);
      return;
    }
    const colours = axisColours();
    this.plot = new uPlot({
      width: Math.max(this.el.clientWidth, 200),
      height: HEIGHT,
      legend: { show: true, live: true },
      cursor: { drag: { x: false, y: false }, points: { show: false } },
      // Half a minute of room on each side, so the first and last bars are whole.
      scales: { x: { time: true, range: (u, min, max) => [min - 30, max + 30] }, y: { range: (u, min, max) => [0, Math.max(4, Math.ceil((max || 0) * 1.15))] } },
      axes: [
        { stroke: colours.text, grid: { show: false }, ticks: { stroke: colours.grid } },
        { stroke: colours.text, grid: { stroke: colours.grid }, ticks: { show: false }, size: 40,
          values: (u, splits) => splits.map((v) => (Number.isInteger(v) ? v : "")) },
      ],
      series: [
        { label: "Minute", value: (u, v) => (v == null ? EMPTY : minuteFormat.format(new Date(v * 1000))) },
        ...this.series(),
      ],
    }, data, this.el);
    new ResizeObserver(() => {
      const next = Math.max(this.el.clientWidth, 200);
      if (this.plot && Math.abs(next - this.plot.width) > 1) this.plot.setSize({ width: next, height: HEIGHT });
    }).observe(this.el);
  }

  /** The legend's value for series `key` at the cursor's minute. */
  valueAt(idx, key) {
    const point = idx == null ? null : this.points[idx];
    return !point || point[key] === null || point[key] === undefined ? EMPTY : String(point[key]);
  }
}

// The outcomes stacked in the chart, bottom first, in the badges' colours.
const OUTCOMES = [
  { status: "succeeded", label: "Succeeded", stroke: "#1a7f37", fill: "rgba(26, 127, 55, 0.55)" },
  { status: "failed", label: "Failed", stroke: "#cf222e", fill: "rgba(207, 34, 46, 0.55)" },
  { status: "cancelled", label: "Cancelled", stroke: "#8c959f", fill: "rgba(140, 149, 159, 0.5)" },
];

/** Jobs finished per minute, a bar per minute stacked by outcome (legend top of the stack first). */
export class FinishedChart extends MinuteChart {
  /**
   * [x, ...one series per outcome, top of the stack first]: each series is the sum of its outcome
   * and those below it, so drawing them in that order shows the stack. An empty minute is null,
   * not 0: a bar of height 0 would still draw its outline along the axis.
   */
  data(points) {
    const stacked = OUTCOMES.map((_, level) => points.map((point) => {
      const sum = OUTCOMES.slice(0, level + 1).reduce((total, o) => total + (point[o.status] || 0), 0);
      return sum > 0 ? sum : null;
    }));
    return [points.map((point) => toSeconds(point.minute)), ...stacked.reverse()];
  }

  series() {
    const bars = window.uPlot.paths.bars({ size: [0.8, 24], align: 0 });
    return [...OUTCOMES].reverse().map((outcome) => ({
      label: outcome.label, stroke: outcome.stroke, fill: outcome.fill, width: 1, paths: bars,
      points: { show: false },
      // The stack's sums are drawn; the legend shows the minute's own count of this outcome.
      value: (u, v, seriesIdx, idx) => this.valueAt(idx, outcome.status),
    }));
  }
}

const DEPTH = [
  { key: "queued", label: "Queued", stroke: "#0969da", fill: "rgba(9, 105, 218, 0.12)" },
  { key: "running", label: "Running", stroke: "#bf8700", fill: null },
];

/** Jobs queued and running, one sample a minute (a gap where no sweep sampled). */
export class DepthChart extends MinuteChart {
  data(points) {
    return [points.map((point) => toSeconds(point.minute)), ...DEPTH.map((d) => points.map((point) => point[d.key]))];
  }

  series() {
    // Points as well as lines: a sample between two unsampled minutes has no line to draw.
    return DEPTH.map((d) => ({
      label: d.label, stroke: d.stroke, fill: d.fill, width: 2, points: { show: true, size: 5, fill: d.stroke },
      value: (u, v, seriesIdx, idx) => this.valueAt(idx, d.key),
    }));
  }
}
