// The Schedules page: every schedule with when it runs next and how its last runs went (a strip
// of outcomes, each a link to its job), Pause / Resume / Run now through the REST API, all kept
// live over the WebSocket (scope "schedules" for the schedules, the jobs scope for the strips'
// statuses); and the form for a new schedule, which previews its next fire times as one types.

import { JobStream } from "./live.js";
import { JobForm } from "./jobform.js";
import {
  EMPTY, announce, api, formatTime, h, liveIndicator, problemText, readConfig, setText, statusLabel, throttle,
} from "./common.js";

const config = readConfig("schedules-config");
const urls = config.urls;
const body = document.querySelector("[data-schedules-body]");
const emptyNote = document.querySelector("[data-schedules-empty]");
const actionError = document.querySelector("[data-action-error]");
const schedules = new Map(); // id -> representation
const jobPageUrl = (id) => urls.jobPage.replace("00000000-0000-0000-0000-000000000000", id);

function mayChange(schedule) {
  return config.changesEvery || schedule.owner === config.username;
}

// --- the table --------------------------------------------------------------------------------

function stateOf(schedule) {
  if (schedule.enabled && !schedule.next_fire_at) return { status: "cancelled", label: "Ended", note: "Past its end_at: no slot is left." };
  if (schedule.enabled) return { status: "succeeded", label: "Active" };
  return schedule.disabled_reason
    ? { status: "failed", label: "Disabled", note: schedule.disabled_reason }
    : { status: "cancelled", label: "Paused" };
}

/** The last runs, oldest left: one square per job, coloured by its status, each a link to it. */
function strip(schedule) {
  const jobs = [...schedule.recent_jobs].reverse();
  if (!jobs.length) return h("span", { class: "muted" }, "Not run yet");
  return h("ol", { class: "strip", "aria-label": `Last ${jobs.length} runs, oldest first` },
    ...jobs.map((job) => {
      const when = formatTime(job.scheduled_for || job.created_at, { full: true });
      const text = `${statusLabel(job.status)}, ${job.scheduled_for ? `slot ${when}` : `run now ${when}`}`;
      return h("li", {},
        h("a", { href: jobPageUrl(job.id), class: "strip-run", title: text, "aria-label": text,
          dataset: { status: job.status, jobId: job.id, testid: "strip-run" } }));
    }));
}

function actionButton(schedule, action, label) {
  const button = h("button", { type: "button", class: "button small-button", dataset: { action, testid: `schedule-${action}` } }, label);
  button.addEventListener("click", () => act(schedule.id, action, button));
  return button;
}

function row(schedule) {
  const state = stateOf(schedule);
  const newest = schedule.recent_jobs[0];
  const next = schedule.next_fire_at
    ? h("time", { datetime: schedule.next_fire_at, title: schedule.next_fire_times.map((t) => formatTime(t, { full: true })).join("\n") },
      formatTime(schedule.next_fire_at, { full: true }))
    : EMPTY;
  const actions = mayChange(schedule)
    ? [schedule.enabled ? actionButton(schedule, "pause", "Pause") : actionButton(schedule, "resume", "Resume"),
      actionButton(schedule, "run", "Run now")]
    : [h("span", { class: "muted small" }, "View only")];
  return h("tr", { id: `schedule-${schedule.id}`, dataset: { scheduleId: schedule.id, version: schedule.version, testid: "schedule-row" } },
    h("td", { "data-label": "Schedule" },
      h("strong", {}, schedule.name),
      h("div", { class: "muted small" }, schedule.type, schedule.managed ? " · declared in code" : "",
        config.changesEvery && schedule.owner !== config.username ? ` · ${schedule.owner}` : "")),
    h("td", { "data-label": "When", dataset: { testid: "schedule-when" } }, schedule.description),
    h("td", { "data-label": "Next run", dataset: { testid: "schedule-next" } }, next),
    h("td", { "data-label": "Last runs" },
      newest ? h("a", { href: jobPageUrl(newest.id), class: "badge", dataset: { status: newest.status, testid: "schedule-last" } },
        statusLabel(newest.status)) : null,
      strip(schedule)),
    h("td", { "data-label": "State" },
      h("span", { class: "badge", dataset: { status: state.status, testid: "schedule-state" } }, state.label),
      state.note ? h("div", { class: state.status === "failed" ? "row-error" : "muted small" }, state.note) : null),
    h("td", { "data-label": "Actions", class: "row-actions" }, ...actions),
  );
}

function render() {
  const ordered = [...schedules.values()].sort((a, b) => a.name.localeCompare(b.name) || a.id.localeCompare(b.id));
  const existing = new Map([...body.querySelectorAll("tr[data-schedule-id]")].map((tr) => [tr.dataset.scheduleId, tr]));
  const rows = ordered.map((schedule) => {
    const current = existing.get(schedule.id);
    // Keep a row whose schedule did not change: its buttons may have the focus.
    return current && current.dataset.version === String(schedule.version) && !current.dataset.stale ? current : row(schedule);
  });
  const same = rows.length === body.children.length && rows.every((tr, i) => body.children[i] === tr);
  if (!same) body.replaceChildren(...rows);
  emptyNote.hidden = schedules.size > 0;
}

function put(schedule) {
  const known = schedules.get(schedule.id);
  if (known && known.version > schedule.version) return;
  schedules.set(schedule.id, schedule);
}

// --- actions ----------------------------------------------------------------------------------

async function act(id, action, button) {
  actionError.hidden = true;
  button.disabled = true;
  let result = null;
  try {
    result = await api(`${urls.schedules}${id}/${action}/`, { method: "POST" });
  } catch {
    result = null;
  }
  button.disabled = false;
  if (!result || !result.ok) {
    actionError.textContent = result ? problemText(result) : "Could not reach the server; try again.";
    actionError.hidden = false;
    return;
  }
  if (action === "run") {
    announce(`Run now: job ${result.data.id.slice(0, 8)} submitted.`);
    return; // the firing arrives as the schedule's next live message
  }
  put(result.data);
  render();
  body.querySelector(`tr[data-schedule-id="${id}"] button[data-action]`)?.focus();
}

// --- live -------------------------------------------------------------------------------------

const stream = new JobStream({
  url: urls.websocket,
  onState: liveIndicator(),
  onSchedules(list) {
    schedules.clear();
    for (const schedule of list) put(schedule);
    render();
  },
  onSchedule(schedule, event) {
    if (event === "deleted") schedules.delete(schedule.id);
    else put(schedule);
    if (event === "fired") announce(`Schedule ${schedule.name} fired.`);
    render();
  },
  onJob(job) {
    // A run in a strip moved on (queued -> running -> succeeded): recolour its square and badge.
    const schedule = job.schedule && schedules.get(job.schedule);
    const run = schedule && schedule.recent_jobs.find((recent) => recent.id === job.id);
    if (!run || run.status === job.status) return;
    run.status = job.status;
    const tr = body.querySelector(`tr[data-schedule-id="${schedule.id}"]`);
    if (tr) tr.dataset.stale = "1";
    render();
  },
});

for (const schedule of config.schedules || []) put(schedule);
render();
stream.subscribe({ scope: "schedules" });
stream.subscribe({ scope: config.changesEvery ? "all" : "mine" });
stream.connect();

// --- the form ---------------------------------------------------------------------------------

class ScheduleForm extends JobForm {
  constructor(form, options) {
    super(form, options);
    this.timing = form.querySelectorAll("input[name=timing]");
    this.preview = form.querySelector("[data-preview]");
    this.previewText = form.querySelector("[data-preview-description]");
    this.previewTimes = form.querySelector("[data-preview-times]");
    for (const radio of this.timing) radio.addEventListener("change", () => this.showTiming());
    const refresh = throttle(() => this.refreshPreview(), 400);
    for (const name of ["cron", "interval", "timezone"]) form.elements[name].addEventListener("input", refresh);
    const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
    if (zone) form.elements.timezone.value = zone; // the reader's own zone to begin with
    this.showTiming();
  }

  get byCron() {
    return this.form.elements.timing.value === "cron";
  }

  showTiming() {
    for (const el of this.form.querySelectorAll("[data-timing]")) el.hidden = el.dataset.timing !== (this.byCron ? "cron" : "interval");
    this.refreshPreview();
  }

  timingValues() {
    const values = { timezone: this.form.elements.timezone.value.trim() };
    if (this.byCron) values.cron = this.form.elements.cron.value.trim();
    else values.interval = this.form.elements.interval.value.trim();
    return values;
  }

  async refreshPreview() {
    const asked = new URLSearchParams(this.timingValues()).toString();
    this.previewAsked = asked;
    let result = null;
    try {
      result = await api(`${urls.preview}?${asked}`);
    } catch {
      return;
    }
    if (this.previewAsked !== asked) return; // a newer question is on its way
    for (const field of ["cron", "interval", "timezone"]) {
      const slot = this.form.querySelector(`[data-error-for="${field}"]`);
      slot.hidden = true;
      slot.textContent = "";
      this.form.elements[field].removeAttribute("aria-invalid");
    }
    if (result.ok) {
      setText(this.previewText, `${result.data.description}. Next:`);
      this.previewTimes.replaceChildren(...result.data.next_fire_times.map((time) =>
        h("li", {}, h("time", { datetime: time }, formatTime(time, { full: true })))));
    } else {
      setText(this.previewText, "");
      this.previewTimes.replaceChildren();
      const errors = (result.data && result.data.errors) || [];
      for (const error of errors) {
        const slot = this.form.querySelector(`[data-error-for="${CSS.escape(error.field)}"]`);
        if (!slot) continue;
        slot.hidden = false;
        slot.textContent = error.message;
        this.form.elements[error.field]?.setAttribute("aria-invalid", "true");
      }
    }
  }

  collect() {
    const job = super.collect();
    if (!job) return null;
    const body = { ...job, name: this.form.elements.name.value.trim(), ...this.timingValues() };
    if (!this.byCron) body.interval = body.interval === "" ? null : Number(body.interval);
    body.overlap = this.form.elements.overlap.value;
    body.catchup = this.form.elements.catchup.value;
    return body;
  }
}

const form = new ScheduleForm(document.querySelector("[data-schedule-form]"), {
  typesUrl: urls.jobTypes,
  jobsUrl: urls.schedules,
  doneText: "Created",
  onCreated(schedule) {
    put(schedule);
    render();
    return `#schedule-${schedule.id}`;
  },
});
form.load();

window.longrun = { stream, schedules };
