// The job page: every field of the job kept live over the WebSocket, its log (the job's events:
// the history entry a live message carries when no message was missed before it, else fetched
// with ?after=<last seq>), the attempts worked out from that log, the outcome, and the Cancel /
// Retry buttons, which call the REST API.

import { JobStream } from "./live.js";
import {
  ACTIVE, EMPTY, api, clockTime, formatDuration, formatTime, h, isEmpty, jobDuration, liveIndicator, localizeTimes,
  problemText, readConfig, setText, statusLabel,
} from "./common.js";

const config = readConfig("job-config");
let job = config.job;
let lastSeq = 0;

const page = document.querySelector("[data-job-page]");
const badge = page.querySelector("[data-status-badge]");
const progressCard = page.querySelector(".progress-card");
const progressLine = page.querySelector("[data-progress-line]");
const progress = progressCard.querySelector("progress");
const pct = page.querySelector("[data-pct]");
const progressMessage = page.querySelector("[data-progress-message]");
const log = page.querySelector("[data-log]");
const attemptsTable = page.querySelector("[data-attempts]");
const attemptsBody = page.querySelector("[data-attempts-body]");
const attemptsEmpty = page.querySelector("[data-attempts-empty]");
const metadataRow = page.querySelector('[data-row="metadata"]');
// Every history entry shown, in seq order: the log and the attempts are drawn from it.
const history = [];
const cancelButton = page.querySelector("[data-action=cancel]");
const retryButton = page.querySelector("[data-action=retry]");
const actionError = page.querySelector("[data-action-error]");
const actionStatus = page.querySelector("[data-action-status]");
const outcome = {
  pending: page.querySelector("[data-outcome-pending]"),
  result: page.querySelector("[data-outcome-result]"),
  error: page.querySelector("[data-outcome-error]"),
  errorType: page.querySelector("[data-error-type]"),
  errorMessage: page.querySelector("[data-error-message]"),
  tracebackBox: page.querySelector("[data-traceback-box]"),
};
// Staff who may only view jobs (Django's view_job permission) get no Cancel / Retry.
const canChange = page.dataset.canChange === "true";
const waitReason = page.querySelector("[data-wait-reason]");
let busy = false;
let awaitingCancel = false; // a cancel was requested here and the job has not stopped yet
// The status the job had when the action note ("Queued again…") was written: the note is about
// that moment, and goes once the job has moved on to an end.
let noteStatus = null;

// --- rendering ------------------------------------------------------------------------------

/** One field of the page, by its data-format (the server renders the same formats first). */
function renderField(el, key) {
  const format = el.dataset.format || "text";
  const value = job[key];
  if (format === "duration") {
    setText(el, jobDuration(job));
  } else if (format === "attempts") {
    setText(el, `${job.attempts} of ${job.max_attempts}`);
  } else if (el.tagName === "PRE") {
    setText(el, format === "json" ? (isEmpty(value) ? EMPTY : JSON.stringify(value, null, 2)) : value ?? "");
  } else if (isEmpty(value)) {
    if (el.children.length || el.textContent !== EMPTY) el.textContent = EMPTY;
  } else if (format === "time") {
    let time = el.querySelector("time");
    if (!time) el.replaceChildren((time = h("time")));
    time.setAttribute("datetime", value);
    time.title = value;
    setText(time, formatTime(value, { full: true }));
  } else if (format === "list") {
    setText(el, value.join(", "));
  } else {
    setText(el, value);
  }
}

// What the progress card says once a job ended without finishing: the bar stays at what it
// reached, coloured by the outcome; a job that reported nothing shows a sentence instead of an
// empty bar.
const STOPPED_EARLY = { failed: "Failed before reporting any progress.", cancelled: "Cancelled before reporting any progress." };

function renderProgress() {
  // Not started: the wait reason above says why; an empty bar would say nothing.
  progressCard.hidden = (job.status === "queued" || job.status === "scheduled") && job.progress === 0;
  progressCard.dataset.status = job.status;
  if (Number(progress.value) !== job.progress) progress.value = job.progress;
  const stoppedEarly = job.progress === 0 && STOPPED_EARLY[job.status];
  progressLine.hidden = Boolean(stoppedEarly);
  setText(pct, job.status === "failed" || job.status === "cancelled" ? `stopped at ${job.progress}%` : `${job.progress}%`);
  setText(progressMessage, job.progress_message || stoppedEarly || "");
}

/** The attempts of the job from its history, as `timeline.job_attempts` reads it on the server. */
function attemptsOf(events) {
  const attempts = [];
  let current = null;
  for (const event of events) {
    if (event.kind !== "status" && event.kind !== "retry") continue;
    if (event.status === "running") {
      current = {
        number: attempts.length + 1, worker: (event.data || {}).worker || "", started_at: event.created_at,
        ended_at: null, outcome: "running", outcome_label: "Running", error: "",
      };
      attempts.push(current);
    } else if (current) {
      const error = (event.data || {}).error;
      Object.assign(current, {
        ended_at: event.created_at, outcome: event.status, outcome_label: ATTEMPT_OUTCOMES[event.status] || statusLabel(event.status),
        error: error ? `${error.type || "Error"}: ${error.message || ""}` : "",
      });
      current = null;
    }
  }
  return attempts;
}

const ATTEMPT_OUTCOMES = {
  succeeded: "Succeeded", failed: "Failed", cancelled: "Cancelled", scheduled: "Failed, retried", queued: "Taken back",
};

function attemptRow(attempt) {
  return h("tr", { dataset: { testid: "attempt-row", outcome: attempt.outcome } },
    h("td", {}, String(attempt.number)),
    h("td", {}, h("code", {}, attempt.worker || EMPTY)),
    h("td", {}, h("time", { datetime: attempt.started_at, title: attempt.started_at }, formatTime(attempt.started_at))),
    h("td", { dataset: { duration: "", started: attempt.started_at, finished: attempt.ended_at || "" } },
      formatDuration(attempt.started_at, attempt.ended_at)),
    h("td", {}, h("span", { class: "badge", dataset: { status: attempt.outcome } }, attempt.outcome_label),
      attempt.error ? h("div", { class: "row-error" }, attempt.error) : null),
  );
}

function renderAttempts() {
  const attempts = attemptsOf(history);
  const rows = attempts.map(attemptRow);
  const key = rows.map((row) => row.outerHTML).join("");
  if (key !== attemptsKey) {
    attemptsKey = key;
    attemptsBody.replaceChildren(...rows);
  }
  attemptsTable.hidden = attempts.length === 0;
  attemptsEmpty.hidden = attempts.length > 0;
}
let attemptsKey = "";

/** Durations that grow while something runs: the job's and its open attempt's. */
function tick() {
  for (const cell of page.querySelectorAll("[data-duration]")) {
    setText(cell, formatDuration(cell.dataset.started, cell.dataset.finished || null));
  }
  for (const el of page.querySelectorAll('[data-format="duration"]')) setText(el, jobDuration(job));
}

function render() {
  page.dataset.status = job.status;
  page.dataset.version = job.version;
  badge.dataset.status = job.status;
  setText(badge, statusLabel(job.status));
  renderProgress();
  for (const el of page.querySelectorAll("[data-field]")) renderField(el, el.dataset.field);
  for (const row of page.querySelectorAll("[data-row][data-optional]")) row.hidden = isEmpty(job[row.dataset.row]);
  metadataRow.hidden = isEmpty(job.metadata);

  const hasResult = job.result !== null && job.result !== undefined;
  outcome.result.hidden = !hasResult;
  outcome.error.hidden = !job.error;
  outcome.pending.hidden = hasResult || Boolean(job.error);
  if (job.status === "cancelled" && !job.error) {
    outcome.pending.hidden = false;
    setText(outcome.pending, "Cancelled before it finished.");
  } else if (!hasResult && !job.error) {
    setText(outcome.pending, ACTIVE.has(job.status) ? "No outcome yet." : "No result.");
  }
  if (job.error) {
    setText(outcome.errorType, job.error.type);
    setText(outcome.errorMessage, job.error.message);
  }
  const hadTraceback = !outcome.tracebackBox.hidden;
  outcome.tracebackBox.hidden = !job.traceback;
  if (job.traceback && !hadTraceback) outcome.tracebackBox.open = true;

  // Why it waits is worked out by the server when the page loads; once it runs, it no longer applies.
  if (waitReason && !(job.status === "queued" || job.status === "scheduled")) waitReason.hidden = true;
  const active = ACTIVE.has(job.status);
  cancelButton.hidden = !canChange || !active;
  const cancelling = active && Boolean(job.cancel_requested_at);
  cancelButton.disabled = busy || cancelling;
  setText(cancelButton, cancelling ? "Cancel requested" : "Cancel");
  if (awaitingCancel && !active) {
    awaitingCancel = false;
    // Cancelled: the badge and the outcome say so. Otherwise say why the cancel did not land.
    note(job.status === "cancelled" ? "" : `It ${job.status} before the cancel reached it.`);
  } else if (noteStatus && job.status !== noteStatus && !active) {
    note("");
  }
  retryButton.hidden = !canChange || !(job.status === "failed" || job.status === "cancelled");
  retryButton.disabled = busy;
  document.title = `${statusLabel(job.status)} · ${job.type} ${job.id.slice(0, 8)} · Longrun`;
}

function apply(next) {
  if (!next || next.id !== job.id || next.version <= job.version) return false;
  job = next;
  render();
  return true;
}

// --- the log --------------------------------------------------------------------------------

function eventItem(event) {
  return h("li", { "data-seq": event.seq, "data-kind": event.kind },
    h("time", { datetime: event.created_at, title: event.created_at }, clockTime(event.created_at)),
    h("span", { class: "log-kind", "data-status": event.status }, event.kind.replace("_", " ")),
    h("span", { class: "log-message" }, event.message || statusLabel(event.status)),
  );
}

const shownSeqs = new Set();

/** Add events to the log in seq order (answers and live entries may cross), each once. */
function appendEvents(events) {
  const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 24;
  for (const event of events) {
    if (shownSeqs.has(event.seq)) continue;
    shownSeqs.add(event.seq);
    const item = eventItem(event);
    if (event.seq > lastSeq) {
      log.append(item);
      history.push(event);
      lastSeq = event.seq;
    } else {
      const next = [...log.children].find((li) => Number(li.dataset.seq) > event.seq);
      log.insertBefore(item, next || null);
      history.splice(history.findIndex((other) => other.seq > event.seq), 0, event);
    }
  }
  if (atBottom) log.scrollTop = log.scrollHeight;
  renderAttempts();
}

let fetching = false;
let fetchAgain = false;

/** Fetch the events after the last one shown; one request at a time, repeated if asked meanwhile. */
async function fetchEvents() {
  if (fetching) {
    fetchAgain = true;
    return;
  }
  fetching = true;
  try {
    do {
      fetchAgain = false;
      const result = await api(`${job.links.events}?after=${lastSeq}`);
      if (result.ok && Array.isArray(result.data)) appendEvents(result.data);
    } while (fetchAgain);
  } catch {
    // offline: the next live message or the resync on reconnect fetches again
  } finally {
    fetching = false;
  }
}

// --- actions --------------------------------------------------------------------------------

function note(text) {
  setText(actionStatus, text);
  noteStatus = text ? job.status : null;
}

async function act(kind, button) {
  if (busy) return;
  if (kind === "cancel" && !window.confirm(`Cancel this ${job.type} job? A running job stops at its next check.`)) {
    return;
  }
  busy = true;
  actionError.hidden = true;
  actionError.textContent = "";
  note(kind === "cancel" ? "Cancelling…" : "Retrying…");
  render();
  let result = null;
  try {
    result = await api(job.links[kind], { method: "POST" });
  } catch {
    result = null;
  }
  busy = false;
  if (result && result.ok && result.data) {
    stream.note(result.data);
    apply(result.data);
    if (kind === "retry") note("Queued again as a new attempt.");
    else if (result.data.status === "cancelled") note(""); // the badge and the outcome say so
    else {
      awaitingCancel = true;
      note("Cancel requested: the job stops at its next check.");
    }
    fetchEvents();
  } else {
    note("");
    actionError.textContent = result ? problemText(result) : "Could not reach the server; try again.";
    actionError.hidden = false;
    if (result && result.status === 409) stream.refresh(job.id); // our view of it was stale
  }
  render();
  button.focus();
}

cancelButton.addEventListener("click", () => act("cancel", cancelButton));
retryButton.addEventListener("click", () => act("retry", retryButton));

// --- live -------------------------------------------------------------------------------------

const stream = new JobStream({
  url: config.urls.websocket,
  jobUrl: () => job.links.self,
  onState: liveIndicator(),
  onJob(next, event, message) {
    if (next.id !== job.id) return;
    // The message right after the version we have: nothing was missed, so its history entry (if
    // the change recorded one; progress ticks don't) is all that is new. Otherwise ask the API.
    const contiguous = next.version === job.version + 1;
    apply(next);
    if (contiguous && message && message.entry) appendEvents([message.entry]);
    else if (!(contiguous && event === "progress")) fetchEvents();
  },
  onSnapshot(jobs) {
    const current = jobs.find((item) => item.id === job.id);
    if (current) apply(current);
    fetchEvents(); // catch up on anything missed while disconnected
  },
  onError(message) {
    if (message.code === "not_found") {
      actionError.textContent = "This job is no longer visible to you.";
      actionError.hidden = false;
    } else {
      console.warn("live updates:", message.code, message.message);
    }
  },
});

// Re-render the server's log with the same markup (local times).
log.replaceChildren();
appendEvents(config.events || []);
log.scrollTop = log.scrollHeight;
localizeTimes(page.querySelector("[data-testid=job-summary]"));
render();
setInterval(() => { if (job.status === "running") tick(); }, 1000);
stream.note(job);
stream.subscribe({ job: job.id });
stream.connect();

window.longrun = { stream, get job() { return job; } };
