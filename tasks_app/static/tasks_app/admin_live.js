/**
 * admin_live.js: the job admin follows its jobs live, through the same JobStream as the dashboard.
 *
 * The server marks every value that changes over a job's life with `data-job-id` and
 * `data-field` (tasks_app/admin/cells.py); `showJob` writes each one from the job's representation
 * with common.js's formatting (formatTime, jobDuration), on load as on every message, so a value
 * rendered by the server and one written here read the same.
 *
 * Change list: rows move as their jobs change. A new job appears at the top when the page can
 * tell it matches the filters (none, status, type; first page, default order), as a copy of a
 * rendered row filled in by `showJob`, and the counts ("N results", "N jobs") grow with it; else a
 * "N new jobs, show" button announces it (a click reloads with the current filters).
 * Change form: every field follows the job. The few no message carries (dispatch, worker, lease,
 * the history and the webhook deliveries) are re-read from this page itself after a change; the
 * Cancel / Retry / Re-run buttons follow the status.
 */
import {
  EMPTY, formatTime, h, isEmpty, jobDuration, liveIndicator, localizeTimes, prettyJson, setText, statusLabel, throttle,
} from "./common.js";
import { JobStream } from "./live.js";

const jobForm = document.querySelector("[data-live-job]");
// Times: the time alone for today in the list (as on the dashboard), date and time on a job's page.
const TIME_OPTIONS = { full: Boolean(jobForm) };
// The header admin_live.js sends when it re-reads a job page (JobAdmin.change_view).
const LIVE_REFRESH_HEADER = "X-Live-Refresh";

/** What Job.__str__ says: "sleep 1a2b3c4d (running)". */
function jobName(job) {
  return `${job.type} ${job.id.slice(0, 8)} (${job.status})`;
}

function showTime(el, iso) {
  const time = el.querySelector("time");
  if (time && time.getAttribute("datetime") === iso) return;
  el.replaceChildren(iso ? h("time", { datetime: iso, title: iso }, formatTime(iso, TIME_OPTIONS)) : EMPTY);
}

function showPre(el, text) {
  const pre = el.querySelector("pre");
  if (text === null) {
    if (pre || el.textContent !== EMPTY) el.replaceChildren(EMPTY);
  } else if (pre) {
    setText(pre, text);
  } else {
    el.replaceChildren(h("pre", { class: "lr-json" }, text));
  }
}

// How each marked value is written from the job's representation; any other field the
// representation has is written as plain text.
const FIELDS = {
  status(el, job) {
    el.className = `lr-badge lr-badge-${job.status}`;
    const cancelling = job.status === "running" && job.cancel_requested_at ? " · cancelling" : "";
    setText(el, statusLabel(job.status) + cancelling);
    el.closest("tr")?.querySelector("input.action-select")
      ?.setAttribute("aria-label", `Select this object for an action - ${jobName(job)}`);
  },
  progress(el, job) {
    if (Number(el.value) !== job.progress) el.value = job.progress;
    setText(el, `${job.progress}%`);
    const box = el.closest(".lr-progress");
    if (!box) return;
    box.className = `lr-progress lr-progress-${job.status}`;
    setText(box.querySelector(".lr-pct"), `${job.progress}%`);
  },
  progress_message(el, job) { setText(el, job.progress_message); },
  attempts(el, job) { setText(el, `${job.attempts} of ${job.max_attempts}`); },
  duration(el, job) {
    el.dataset.started = job.started_at || "";
    el.dataset.finished = job.finished_at || "";
    showDuration(el);
  },
  result(el, job) { showPre(el, isEmpty(job.result) ? null : prettyJson(job.result)); },
  error(el, job) { showPre(el, isEmpty(job.error) ? null : prettyJson(job.error)); },
  traceback(el, job) { showPre(el, job.traceback || null); },
};
for (const field of ["created_at", "started_at", "finished_at", "cancel_requested_at", "run_at"]) {
  FIELDS[field] = (el, job) => showTime(el, job[field]);
}

function showText(el, job) {
  const value = job[el.dataset.field];
  setText(el, isEmpty(value) ? EMPTY : value);
}

/** A duration cell from its data attributes, as cells.duration_value renders it: common.js's
 * jobDuration, with "running" free to wrap to a line of its own and the time kept whole. */
function showDuration(el) {
  const { started, finished } = el.dataset;
  const text = jobDuration({ started_at: started || null, finished_at: finished || null });
  if (el.textContent === text) return;
  if (text.startsWith("running ")) {
    const time = el.querySelector(".lr-nowrap");
    if (time) setText(time, text.slice("running ".length));
    else el.replaceChildren("running ", h("span", { class: "lr-nowrap" }, text.slice("running ".length)));
  } else {
    el.replaceChildren(text);
  }
}

/** Write every marked value of `job` on the page; true if the page shows the job at all. */
function showJob(job) {
  let shown = false;
  for (const el of document.querySelectorAll(`[data-job-id="${job.id}"][data-field]`)) {
    const field = el.dataset.field;
    const show = FIELDS[field] || (field in job ? showText : null);
    if (show) show(el, job);
    shown = true;
  }
  return shown;
}

/** Durations from their data attributes: all of them once, then every second the running ones
 * (so "running 12 s" counts up without a message). */
function showDurations({ runningOnly = false } = {}) {
  for (const el of document.querySelectorAll('[data-job-id][data-field="duration"]')) {
    if (!runningOnly || (el.dataset.started && !el.dataset.finished)) showDuration(el);
  }
}

/** The connection state, at the right of the page's title (common.js's indicator). */
function stateIndicator() {
  const indicator = h(
    "span",
    { class: "lr-live-state", dataset: { testid: "live-state" }, role: "status", hidden: true },
    h("span", { class: "live-dot", "aria-hidden": "true" }),
    h("span", { class: "live-label" }),
  );
  const title = document.querySelector("#content > h1");
  if (title) title.before(indicator);
  else document.querySelector("#content")?.prepend(indicator);
  return liveIndicator(indicator);
}

// --- the change list ------------------------------------------------------------------------

// Filters this page can judge a new job against by itself; any other parameter (a search, a
// date, an owner, another order) means "announce it".
const JUDGEABLE = new Set(["status__exact", "type", "p"]);

function matchesFilters(job) {
  const params = new URLSearchParams(window.location.search);
  for (const key of params.keys()) if (!JUDGEABLE.has(key)) return false;
  if ((params.get("p") || "1") !== "1") return false; // only the first page shows the newest
  const status = params.get("status__exact");
  const type = params.get("type");
  return (!status || status === job.status) && (!type || type === job.type);
}

/** A row for `job`: a copy of a rendered row (so it has the same columns and markup), with the
 * job's id and plain values; `showJob` then writes the live values. */
function newRow(template, job) {
  const row = template.cloneNode(true);
  const box = row.querySelector("input.action-select");
  const oldId = box ? box.value : template.querySelector("[data-job-id]").dataset.jobId;
  row.classList.remove("selected");
  row.dataset.liveRow = job.id;
  if (box) {
    box.value = job.id;
    box.checked = false;
  }
  for (const link of row.querySelectorAll("a[href]")) {
    link.setAttribute("href", link.getAttribute("href").replace(oldId, job.id));
  }
  for (const code of row.querySelectorAll("code[title]")) {
    code.title = job.id;
    code.textContent = job.id.slice(0, 8);
  }
  for (const el of row.querySelectorAll("[data-job-id]")) el.dataset.jobId = job.id;
  // The cells of plain model fields (type, owner, priority) are named after them: "field-type".
  for (const cell of row.cells) {
    const name = [...cell.classList].find((cls) => cls.startsWith("field-"))?.slice("field-".length);
    const value = name in job ? job[name] : undefined;
    if (value !== undefined && typeof value !== "object" && !cell.querySelector("[data-field]")) setText(cell, value);
  }
  return row;
}

/** One more job in the list: "7 results" by the search box, "7 jobs" under the table, and the
 * actions' "0 of 7 selected". */
function countOneMore() {
  const more = (node, pattern, word) => {
    node.textContent = node.textContent.replace(pattern, (_, count) => `${Number(count) + 1} ${word}`);
  };
  const results = document.querySelector("#changelist-search .quiet");
  if (results?.firstChild?.nodeType === Node.TEXT_NODE) more(results.firstChild, /(\d+) results?\b/, "results");
  for (const node of document.querySelector("#changelist .paginator")?.childNodes ?? []) {
    if (node.nodeType === Node.TEXT_NODE) more(node, /(\d+) jobs?\b/, "jobs");
  }
  const counter = document.querySelector(".action-counter[data-actions-icnt]");
  if (counter) {
    const total = Number(counter.dataset.actionsIcnt) + 1;
    counter.dataset.actionsIcnt = String(total);
    counter.textContent = counter.textContent.replace(/of \d+/, `of ${total}`);
  }
}

/** Each cell's column name, for the list of cards on a phone (admin.css). Rows added later are
 * copies of these, labels included. */
function labelCells() {
  const names = [...document.querySelectorAll("#result_list thead th")].map((th) => th.textContent.trim());
  for (const row of document.querySelectorAll("#result_list tbody tr")) {
    [...row.cells].forEach((cell, index) => {
      if (names[index] && cell.tagName === "TD") cell.dataset.label = names[index];
    });
  }
}

function changeList(root) {
  const body = document.querySelector("#result_list tbody");
  labelCells();
  const seen = new Set([...document.querySelectorAll("[data-job-id]")].map((el) => el.dataset.jobId));
  const fresh = new Set();
  const button = h("button", { type: "button", class: "lr-new-jobs", dataset: { testid: "new-jobs" }, hidden: true });
  button.addEventListener("click", () => window.location.reload());
  root.prepend(button);
  const stream = new JobStream({
    onState: stateIndicator(),
    onSnapshot(jobs) { jobs.forEach(showJob); },
    onJob(job, event) {
      if (showJob(job) || seen.has(job.id)) return;
      if (event !== "created" || fresh.has(job.id)) return;
      const template = body?.querySelector("tr");
      if (template && matchesFilters(job)) {
        seen.add(job.id);
        body.prepend(newRow(template, job));
        showJob(job);
        countOneMore();
        return;
      }
      fresh.add(job.id);
      button.textContent = `${fresh.size} new job${fresh.size === 1 ? "" : "s"}, show`;
      button.hidden = false;
    },
  });
  stream.subscribe({ scope: "all" });
  stream.connect();
}

// --- the change form ------------------------------------------------------------------------

const NAME_STATUS = /\((scheduled|queued|running|succeeded|failed|cancelled)\)/;

/** The job's name in the page's title, heading and breadcrumbs ends in its status. */
function renameJob(job) {
  const rename = (text) => text.replace(NAME_STATUS, `(${job.status})`);
  document.title = rename(document.title);
  for (const el of document.querySelectorAll("#content > h2, .breadcrumbs")) {
    const node = el.lastChild;
    if (node?.nodeType === Node.TEXT_NODE) node.textContent = rename(node.textContent);
  }
}

/** The page's buttons for the job's status, from every button the user may press (#lr-job-buttons). */
function showButtons(job) {
  const every = document.getElementById("lr-job-buttons");
  if (!every) return;
  const tools = every.parentElement;
  const wanted = [...every.content.children].filter((li) => li.dataset.statuses.split(" ").includes(job.status));
  const shown = [...tools.querySelectorAll(":scope > li[data-action]")];
  if (wanted.map((li) => li.dataset.action).join() === shown.map((li) => li.dataset.action).join()) return;
  shown.forEach((li) => li.remove());
  tools.prepend(...wanted.map((li) => document.importNode(li, true)));
}

function changeForm(jobId) {
  let current = null;
  // The version the fields no message carries were rendered at.
  const versionOf = (doc) => Number(doc.querySelector(`[data-job-id="${jobId}"][data-field="version"]`)?.textContent);
  let pageVersion = versionOf(document);

  async function rereadPage() {
    let doc;
    try {
      const response = await fetch(window.location.href, {
        credentials: "same-origin",
        headers: { [LIVE_REFRESH_HEADER]: "1" },
      });
      if (!response.ok) return;
      doc = new DOMParser().parseFromString(await response.text(), "text/html");
    } catch {
      return; // the next change tries again
    }
    for (const el of document.querySelectorAll(`[data-job-id="${jobId}"][data-field]`)) {
      const field = el.dataset.field;
      if (FIELDS[field] || (current && field in current)) continue; // the messages keep these
      const fresh = doc.querySelector(`[data-job-id="${jobId}"][data-field="${field}"]`);
      if (fresh) el.replaceChildren(...[...fresh.childNodes].map((node) => document.importNode(node, true)));
    }
    for (const group of document.querySelectorAll(".inline-group[id]")) {
      const fresh = doc.getElementById(group.id);
      if (fresh) group.replaceWith(document.importNode(fresh, true));
    }
    localizeTimes(document.querySelector("#content"), TIME_OPTIONS);
    pageVersion = Math.max(pageVersion || 0, versionOf(doc) || 0);
  }
  const reread = throttle(rereadPage, 1000);

  function follow(job, event) {
    if (job.id !== jobId) return;
    current = job;
    showJob(job);
    renameJob(job);
    showButtons(job);
    // A progress tick changes nothing else; any other change may have reached those fields.
    if (event !== "progress" && !(job.version <= pageVersion)) reread();
  }
  const stream = new JobStream({
    onState: stateIndicator(),
    onSnapshot(jobs) { for (const job of jobs) follow(job, "snapshot"); },
    onJob: follow,
  });
  stream.subscribe({ job: jobId });
  stream.connect();
}

// --- both -----------------------------------------------------------------------------------

localizeTimes(document.querySelector("#content") || document, TIME_OPTIONS);
showDurations();
setInterval(() => showDurations({ runningOnly: true }), 1000);

if (jobForm) changeForm(jobForm.dataset.liveJob);
else changeList(document.querySelector("#content-main") || document.body);

// A job page button that asks first (Cancel): nothing is sent unless the person says yes. On the
// document, as the buttons come and go with the job's status.
document.addEventListener("submit", (event) => {
  const form = event.target.closest("form[data-confirm]");
  if (form && !window.confirm(form.dataset.confirm)) event.preventDefault();
});
