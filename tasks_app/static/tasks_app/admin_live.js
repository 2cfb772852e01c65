/**
 * admin_live.js: the job admin updates itself, through the same JobStream as the dashboard.
 *
 * Change list: status badges and progress bars of the rows on the page move as jobs change; a
 * new job appears at the top when the page can tell it matches the filters (none, status, type),
 * else a "N new jobs, show" button announces it (a click reloads with the current filters).
 * Change form: the job's badge and progress move, and a note offers a reload when a change
 * reaches a field shown only on a full render.
 */
import { formatTime, h, liveIndicator, statusLabel } from "./common.js";
import { JobStream } from "./live.js";

function updateRow(job) {
  let touched = false;
  for (const badge of document.querySelectorAll(`[data-job-id="${job.id}"][data-field="status"]`)) {
    badge.className = `lr-badge lr-badge-${job.status}`;
    const cancelling = job.status === "running" && job.cancel_requested_at ? " · cancelling" : "";
    badge.textContent = statusLabel(job.status) + cancelling;
    touched = true;
  }
  for (const bar of document.querySelectorAll(`[data-job-id="${job.id}"][data-field="progress"]`)) {
    bar.value = job.progress;
    bar.title = `${job.progress}%`;
    bar.textContent = `${job.progress}%`;
    touched = true;
  }
  return touched;
}

/** The connection state, shown at the top of the admin's content by common.js's indicator. */
function stateIndicator(anchor) {
  const indicator = h(
    "span",
    { class: "lr-live-state", dataset: { testid: "live-state" }, role: "status", hidden: true },
    h("span", { class: "live-dot", "aria-hidden": "true" }),
    h("span", { class: "live-label" }),
  );
  anchor.prepend(indicator);
  return liveIndicator(indicator);
}

// Filters this page can judge a new job against by itself; any other parameter means "ask".
const JUDGEABLE = new Set(["status__exact", "type", "o", "p"]);

function matchesFilters(job) {
  const params = new URLSearchParams(window.location.search);
  for (const key of params.keys()) if (!JUDGEABLE.has(key)) return false;
  if ((params.get("p") || "0") !== "0") return false; // only the first page shows the newest
  const status = params.get("status__exact");
  const type = params.get("type");
  return (!status || status === job.status) && (!type || type === job.type);
}

function newRow(job) {
  // Same columns as JobAdmin.list_display, so it sits with the server-rendered rows.
  const box = h("input", { type: "checkbox", name: "_selected_action", value: job.id, class: "action-select" });
  const link = h("a", { href: `${window.location.pathname}${job.id}/change/` },
    h("code", { title: job.id }, job.id.slice(0, 8)));
  const badge = h("span", { dataset: { jobId: job.id, field: "status" } });
  const bar = h("progress", { class: "lr-progress", max: 100, dataset: { jobId: job.id, field: "progress" } });
  const row = h("tr", { dataset: { liveRow: job.id } },
    h("td", { class: "action-checkbox" }, box),
    h("th", { class: "field-short_id" }, link),
    h("td", { class: "field-type" }, job.type),
    h("td", { class: "field-owner" }, job.owner),
    h("td", { class: "field-status_badge" }, badge),
    h("td", { class: "field-progress_bar" }, bar),
    h("td", { class: "field-attempts" }, String(job.attempts)),
    h("td", { class: "field-priority" }, String(job.priority)),
    h("td", { class: "field-created_at" }, formatTime(job.created_at, { full: true })),
    h("td", { class: "field-duration" }, "—"),
  );
  return row;
}

function changeList(root) {
  const seen = new Set([...document.querySelectorAll("[data-job-id]")].map((el) => el.dataset.jobId));
  const fresh = new Set();
  const button = h("button", { type: "button", class: "lr-new-jobs", dataset: { testid: "new-jobs" }, hidden: true });
  button.addEventListener("click", () => window.location.reload());
  root.prepend(button);
  const stream = new JobStream({
    onState: stateIndicator(root),
    onSnapshot(jobs) { jobs.forEach(updateRow); },
    onJob(job, event) {
      if (updateRow(job) || seen.has(job.id)) return;
      if (event !== "created" || fresh.has(job.id)) return;
      const body = document.querySelector("#result_list tbody");
      if (body && matchesFilters(job)) {
        seen.add(job.id);
        body.prepend(newRow(job));
        updateRow(job);
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

function changeForm(root, jobId) {
  const note = h("p", { class: "lr-new-jobs", dataset: { testid: "job-changed" }, hidden: true });
  root.prepend(note);
  const stream = new JobStream({
    onState: stateIndicator(root),
    onSnapshot(jobs) { jobs.forEach(updateRow); },
    onJob(job, event) {
      updateRow(job);
      if (event !== "progress") {
        note.replaceChildren(
          `Version ${job.version}: ${job.status}. `,
          h("a", { href: window.location.pathname }, "reload"),
          " for every field.",
        );
        note.hidden = false;
      }
    },
  });
  stream.subscribe({ job: jobId });
  stream.connect();
}

const root = document.querySelector("#content-main") || document.body;
const form = document.querySelector("[data-live-job]");
if (form) changeForm(root, form.dataset.liveJob);
else changeList(root);

// A job page button that asks first (Cancel): nothing is sent unless the person says yes.
for (const form of document.querySelectorAll("form[data-confirm]")) {
  form.addEventListener("submit", (event) => {
    if (!window.confirm(form.dataset.confirm)) event.preventDefault();
  });
}
