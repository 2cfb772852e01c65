// The dashboard: the jobs table kept live over the WebSocket, counters and the finished-per-minute
// chart (GET /api/stats/), filters, and the submit form.

import { JobStream } from "./live.js";
import { JobForm } from "./jobform.js";
import { DepthChart, FinishedChart } from "./charts.js";
import {
  ACTIVE, EMPTY, TERMINAL, UUID_RE, announce, api, errorLine, formatTime, h, jobDuration, liveIndicator, localizeTimes, readConfig, setText,
  statusLabel, throttle,
} from "./common.js";

const config = readConfig("dashboard-config");
const urls = config.urls;
const isStaff = Boolean(config.isStaff);
const MAX_JOBS = 500;   // jobs kept in memory
const MAX_ROWS = 100;   // rows shown

const jobPageUrl = (id) => urls.jobPage.replace("00000000-0000-0000-0000-000000000000", id);
const tbody = document.querySelector("[data-jobs-body]");
const emptyNote = document.querySelector("[data-empty]");
const filterForm = document.querySelector("[data-filters]");
const filters = { ...config.filters };

// --- the jobs, by id, newest version only ---------------------------------------------------

const jobs = new Map();

function upsert(job) {
  const current = jobs.get(job.id);
  if (current && current.version >= job.version) return false;
  jobs.set(job.id, job);
  return true;
}

function trim() {
  if (jobs.size <= MAX_JOBS) return;
  const oldest = [...jobs.values()].sort(byNewest).slice(MAX_JOBS);
  for (const job of oldest) if (!ACTIVE.has(job.status)) jobs.delete(job.id);
}

function byNewest(a, b) {
  return a.created_at < b.created_at ? 1 : a.created_at > b.created_at ? -1 : (a.id < b.id ? 1 : -1);
}

function matches(job) {
  if (filters.status && job.status !== filters.status) return false;
  if (filters.type && job.type !== filters.type) return false;
  const q = (filters.q || "").trim().toLowerCase().replace(/-/g, "");
  if (q && !job.id.replace(/-/g, "").startsWith(q)) return false;
  return true;
}

// --- the table ------------------------------------------------------------------------------

function buildRow(job) {
  const short = job.id.slice(0, 8);
  const progress = h("progress", { max: 100, value: job.progress, "data-testid": "job-progress", "aria-label": `Progress of job ${short}` });
  const cells = [
    h("td", { "data-label": "Job" }, h("a", { class: "job-link", href: jobPageUrl(job.id), title: job.id }, h("code", {}, short))),
    h("td", { "data-label": "Type", "data-col": "type" }),
    h("td", { "data-label": "Status" }, h("span", { class: "badge", "data-testid": "job-status" })),
    h("td", { "data-label": "Progress", class: "progress-cell" },
      h("div", { class: "wait-note", "data-testid": "job-wait", hidden: true }),
      h("div", { class: "progress-line" }, progress, h("span", { class: "pct" })),
      h("div", { class: "progress-message", "data-testid": "job-progress-message" }),
      h("div", { class: "row-error", "data-testid": "job-error", hidden: true })),
    h("td", { "data-label": "Attempts", "data-col": "attempts" }),
    h("td", { "data-label": "Duration", "data-col": "duration" }),
  ];
  if (isStaff) cells.push(h("td", { "data-label": "Owner", "data-col": "owner" }));
  cells.push(h("td", { "data-label": "Created", "data-col": "created" }, h("time", { datetime: job.created_at })));
  const row = h("tr", { "data-job-id": job.id, "data-testid": "job-row" }, ...cells);
  updateRow(row, job);
  return row;
}

function updateRow(row, job) {
  row.dataset.status = job.status;
  row.dataset.version = job.version;
  const badge = row.querySelector(".badge");
  badge.dataset.status = job.status;
  setText(badge, statusLabel(job.status));
  const progress = row.querySelector("progress");
  if (Number(progress.value) !== job.progress) progress.value = job.progress;
  progress.textContent = `${job.progress}%`;
  setText(row.querySelector(".pct"), `${job.progress}%`);
  setText(row.querySelector(".progress-message"), job.progress_message);
  showWait(row, job);
  const error = row.querySelector(".row-error");
  setText(error, errorLine(job));
  error.hidden = !job.error;
  setText(row.querySelector("[data-col=attempts]"), `${job.attempts} of ${job.max_attempts}`);
  const duration = row.querySelector("[data-col=duration]");
  duration.dataset.started = job.started_at || "";
  duration.dataset.finished = job.finished_at || "";
  setText(duration, jobDuration(job));
  const type = row.querySelector("[data-col=type]") || row.cells[1];
  setText(type, job.type);
  const owner = row.querySelector("[data-col=owner]");
  if (owner) setText(owner, job.owner);
  const time = row.querySelector("[data-col=created] time");
  if (time) {
    setText(time, formatTime(job.created_at));
    time.title = job.created_at;
  }
}

// Why a queued job of each type waits (GET /api/stats/ `waits`, refreshed with the counts).
let waits = (config.stats || {}).waits || {};

/** A job that has not started shows why instead of an empty bar: its queue's state, or when it runs. */
function showWait(row, job) {
  const waiting = job.status === "queued" || job.status === "scheduled";
  row.querySelector(".progress-line").hidden = waiting;
  const note = row.querySelector(".wait-note");
  note.hidden = !waiting;
  if (job.status === "scheduled") {
    const time = note.querySelector("time");
    if (!time || time.getAttribute("datetime") !== job.run_at) {
      note.replaceChildren("Runs at ", job.run_at ? h("time", { datetime: job.run_at, title: job.run_at }) : EMPTY);
    }
    const shown = note.querySelector("time");
    if (shown) setText(shown, formatTime(job.run_at));
  } else if (waiting) {
    setText(note, waits[job.type] || "Waiting for a worker to take it.");
  }
}

const rows = new Map(); // job id -> <tr>, adopted from the server's markup on load
for (const node of [...tbody.childNodes]) if (node.nodeType !== Node.ELEMENT_NODE) node.remove();
for (const row of tbody.querySelectorAll("tr[data-job-id]")) rows.set(row.dataset.jobId, row);
localizeTimes(tbody);

/** The duration cells from their data attributes: the server's markup, and every second the
 * running ones (so "running 12 s" counts up without a message). */
function refreshDurations() {
  for (const cell of tbody.querySelectorAll("[data-col=duration]")) {
    const { started, finished } = cell.dataset;
    setText(cell, jobDuration({ started_at: started || null, finished_at: finished || null }));
  }
}
refreshDurations();
setInterval(() => {
  if (tbody.querySelector('tr[data-status="running"]')) refreshDurations();
}, 1000);

let renderQueued = false;
function render() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    renderNow();
  });
}

function renderNow() {
  const wanted = [...jobs.values()].filter(matches).sort(byNewest).slice(0, MAX_ROWS);
  const keep = new Set(wanted.map((job) => job.id));
  for (const [id, row] of rows) {
    if (!keep.has(id)) {
      row.remove();
      rows.delete(id);
    }
  }
  let previous = null;
  for (const job of wanted) {
    let row = rows.get(job.id);
    if (!row) {
      row = buildRow(job);
      rows.set(job.id, row);
    } else if (row.dataset.version !== String(job.version)) {
      updateRow(row, job);
    }
    const expectedPosition = previous ? previous.nextSibling : tbody.firstChild;
    if (row !== expectedPosition) {
      if (previous) previous.after(row);
      else tbody.prepend(row);
    }
    previous = row;
  }
  emptyNote.hidden = wanted.length > 0;
  if (!wanted.length) {
    emptyNote.textContent = filters.status || filters.type || filters.q
      ? "No jobs match these filters." : "No jobs yet. Submit one with the form above.";
  }
}

// --- counters and chart ---------------------------------------------------------------------

const counterEls = new Map();
for (const el of document.querySelectorAll("[data-count-for]")) counterEls.set(el.dataset.countFor, el);
const finishedTotal = document.querySelector("[data-finished-total]");
const finishedChart = new FinishedChart(document.querySelector("[data-chart]"));
const depthChart = new DepthChart(document.querySelector("[data-depth-chart]"));
const throughputEl = document.querySelector("[data-throughput]");
const depthNowEl = document.querySelector("[data-depth-now]");

function showStats(stats) {
  const byStatus = stats.by_status || {};
  let total = 0;
  for (const [status, count] of Object.entries(byStatus)) {
    total += count;
    const el = counterEls.get(status);
    if (el) setText(el, count.toLocaleString());
  }
  const all = counterEls.get("");
  if (all) setText(all, total.toLocaleString());
  const series = stats.finished_per_minute || [];
  const finished = series.reduce((sum, point) => sum + point.count, 0);
  setText(finishedTotal, finished.toLocaleString());
  // Throughput over the minutes that had any work, so an idle hour does not dilute a busy spell.
  const busyMinutes = series.filter((point) => point.count > 0).length;
  setText(throughputEl, busyMinutes ? (finished / busyMinutes).toFixed(1) : "0");
  finishedChart.draw(series);
  if (stats.waits) {
    waits = stats.waits;
    for (const job of jobs.values()) {
      const row = rows.get(job.id);
      if (row && job.status === "queued") showWait(row, job);
    }
  }
  const depth = stats.queue_depth_per_minute || [];
  depthChart.draw(depth);
  const last = [...depth].reverse().find((point) => point.queued !== null);
  if (depthNowEl) setText(depthNowEl, last ? `${last.queued} queued, ${last.running} running` : "no sample yet");
}

async function loadStats() {
  try {
    const result = await api(urls.stats);
    if (result.ok && result.data) showStats(result.data);
  } catch {
    // offline: the next refresh tries again
  }
}

// Live events that change the counts refresh them, at most every 2 s; and every 30 s anyway
// (for the finished-per-minute window moving on).
const requestStats = throttle(loadStats, 2000);
setInterval(requestStats, 30000);

// --- filters ------------------------------------------------------------------------------

function filtersToUrl() {
  const params = new URLSearchParams();
  for (const key of ["status", "type", "q"]) if (filters[key]) params.set(key, filters[key]);
  const query = params.toString();
  history.replaceState(null, "", query ? `?${query}` : location.pathname);
  for (const el of document.querySelectorAll(".counter")) {
    if (el.dataset.status === filters.status) el.setAttribute("aria-current", "true");
    else el.removeAttribute("aria-current");
  }
}

let listRequest = 0;
/** Load the newest jobs matching the status and type filters (beyond what the snapshot holds). */
async function loadList() {
  const params = new URLSearchParams({ page_size: "50" });
  if (filters.status) params.set("status", filters.status);
  if (filters.type) params.set("type", filters.type);
  const mine = ++listRequest;
  try {
    const result = await api(`${urls.jobs}?${params}`);
    if (mine !== listRequest || !result.ok || !result.data) return;
    for (const job of result.data.results || []) {
      stream.note(job);
      upsert(job);
    }
    trim();
    render();
  } catch {
    // offline
  }
}

function applyFilters({ reload = true } = {}) {
  const form = new FormData(filterForm);
  const changed = form.get("status") !== filters.status || form.get("type") !== filters.type;
  filters.status = form.get("status") || "";
  filters.type = form.get("type") || "";
  filters.q = (form.get("q") || "").trim();
  filtersToUrl();
  render();
  if (reload && changed) loadList();
}

filterForm.addEventListener("change", (event) => {
  if (event.target.name !== "q") applyFilters();
});
filterForm.addEventListener("input", (event) => {
  if (event.target.name === "q") applyFilters({ reload: false });
});
filterForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const q = filterForm.elements.q.value.trim();
  if (UUID_RE.test(q)) {
    location.assign(jobPageUrl(q.toLowerCase().replace(/^(.{8})-?(.{4})-?(.{4})-?(.{4})-?(.{12})$/, "$1-$2-$3-$4-$5")));
    return;
  }
  applyFilters();
});
for (const counter of document.querySelectorAll(".counter")) {
  counter.addEventListener("click", (event) => {
    event.preventDefault();
    filterForm.elements.status.value = counter.dataset.status;
    applyFilters();
  });
}

// --- live -------------------------------------------------------------------------------------

const COUNT_EVENTS = new Set(["created", "status", "resync"]);
let flashIds = new Set();
let snapshots = 0;

const stream = new JobStream({
  url: urls.websocket,
  jobUrl: (id) => `${urls.jobs}${id}/`,
  onState: liveIndicator(),
  onJob(job, event) {
    const before = jobs.get(job.id);
    if (upsert(job)) {
      if (event === "created" || event === "status") flashIds.add(job.id);
      // Screen readers hear a shown job end (its badge changes silently with the rest of the row).
      if (before && before.status !== job.status && TERMINAL.has(job.status) && rows.has(job.id)) {
        announce(`${job.type} job ${job.id.slice(0, 8)} ${job.status}.`);
      }
      trim();
      render();
      requestAnimationFrame(flash);
    }
    if (COUNT_EVENTS.has(event)) requestStats();
  },
  onSnapshot(snapshot) {
    const inSnapshot = new Set();
    for (const job of snapshot) {
      inSnapshot.add(job.id);
      upsert(job);
    }
    // Jobs shown but not in the snapshot (older ones) may have changed while we were away.
    for (const job of jobs.values()) {
      if (!inSnapshot.has(job.id) && ACTIVE.has(job.status)) stream.refresh(job.id);
    }
    trim();
    render();
    // The page came with fresh counts; after a reconnect they may be stale.
    if (snapshots++ > 0) requestStats();
  },
  onError(message) {
    console.warn("live updates:", message.code, message.message);
  },
});

function flash() {
  for (const id of flashIds) {
    const row = rows.get(id);
    if (!row) continue;
    row.classList.remove("flash");
    void row.offsetWidth; // restart the animation
    row.classList.add("flash");
  }
  flashIds = new Set();
}

for (const job of config.jobs || []) {
  upsert(job);
  stream.note(job);
}
stream.subscribe({ scope: config.scope || (isStaff ? "all" : "mine") });
stream.connect();

// The chart library is a classic deferred script: it has run by the time this module runs.
showStats(config.stats || {});
if (filters.status || filters.type) loadList();

// --- submit form ----------------------------------------------------------------------------

const form = new JobForm(document.querySelector("[data-job-form]"), {
  typesUrl: urls.jobTypes,
  jobsUrl: urls.jobs,
  onCreated(job) {
    if (stream.note(job) || !jobs.has(job.id)) {
      upsert(job);
      flashIds.add(job.id);
      render();
      requestAnimationFrame(flash);
    }
    requestStats();
    return jobPageUrl(job.id);
  },
});
form.load();

// Expose for debugging from the console.
window.longrun = { stream, jobs };
