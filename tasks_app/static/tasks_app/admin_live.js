/**
 * admin_live.js: the job admin updates itself, through the same JobStream as the dashboard.
 *
 * Change list: status badges and progress bars of the rows on the page move as jobs change; a
 * new job appears at the top when the page can tell it matches the filters (none, status, type),
 * else a "N new jobs, show" button announces it (a click reloads with the current filters). Change form: the job's badge and progress move, and a note
 * offers a reload when a change reaches a field shown only on a full render.
 */
import { JobStream } from "./live.js";

const LABELS = {
  scheduled: "Scheduled", queued: "Queued", running: "Running",
  succeeded: "Succeeded", failed: "Failed", cancelled: "Cancelled",
};

function updateRow(job) {
  let touched = false;
  for (const badge of document.querySelectorAll(`[data-job-id="${job.id}"][data-field="status"]`)) {
    badge.className = `lr-badge lr-badge-${job.status}`;
    const cancelling = job.status === "running" && job.cancel_requested_at ? " · cancelling" : "";
    badge.textContent = (LABELS[job.status] || job.status) + cancelling;
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

function stateIndicator(anchor) {
  const indicator = document.createElement("span");
  indicator.className = "lr-live-state";
  indicator.dataset.testid = "live-state";
  anchor.prepend(indicator);
  return (state) => {
    indicator.dataset.state = state;
    indicator.textContent = { live: "● Live", connecting: "Connecting…", reconnecting: "Reconnecting…", offline: "Offline" }[state] || state;
  };
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

function cell(tag, className, content) {
  const el = document.createElement(tag);
  el.className = className;
  if (content instanceof Node) el.append(content); else el.textContent = content;
  return el;
}

function newRow(job) {
  // Same columns as JobAdmin.list_display, so it sits with the server-rendered rows.
  const row = document.createElement("tr");
  const box = document.createElement("input");
  Object.assign(box, { type: "checkbox", name: "_selected_action", value: job.id, className: "action-select" });
  const link = document.createElement("a");
  link.href = `${window.location.pathname}${job.id}/change/`;
  const code = document.createElement("code");
  code.title = job.id;
  code.textContent = job.id.slice(0, 8);
  link.append(code);
  const badge = document.createElement("span");
  Object.assign(badge.dataset, { jobId: job.id, field: "status" });
  const bar = document.createElement("progress");
  bar.className = "lr-progress";
  bar.max = 100;
  Object.assign(bar.dataset, { jobId: job.id, field: "progress" });
  row.append(
    cell("td", "action-checkbox", box), cell("th", "field-short_id", link), cell("td", "field-type", job.type),
    cell("td", "field-owner", job.owner), cell("td", "field-status_badge", badge), cell("td", "field-progress_bar", bar),
    cell("td", "field-attempts", String(job.attempts)), cell("td", "field-priority", String(job.priority)),
    cell("td", "field-created_at", new Date(job.created_at).toLocaleString()), cell("td", "field-duration", "—"),
  );
  row.dataset.liveRow = job.id;
  return row;
}

function changeList(root) {
  const seen = new Set([...document.querySelectorAll("[data-job-id]")].map((el) => el.dataset.jobId));
  const fresh = new Set();
  const button = document.createElement("button");
  button.type = "button";
  button.className = "lr-new-jobs";
  button.dataset.testid = "new-jobs";
  button.hidden = true;
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
  const note = document.createElement("p");
  note.className = "lr-new-jobs";
  note.dataset.testid = "job-changed";
  note.hidden = true;
  root.prepend(note);
  const stream = new JobStream({
    onState: stateIndicator(root),
    onSnapshot(jobs) { jobs.forEach(updateRow); },
    onJob(job, event) {
      updateRow(job);
      if (event !== "progress") {
        note.innerHTML = "";
        const link = document.createElement("a");
        link.href = window.location.pathname;
        link.textContent = "reload";
        note.append(`Version ${job.version}: ${job.status}. `, link, " for every field.");
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
