// Helpers shared by the pages: REST calls with the session's CSRF token, formatting, and the
// connection-state indicator in the top bar. No page-specific code here.

export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
export const ACTIVE = new Set(["scheduled", "queued", "running"]);
// What an empty value shows, on every page (the server's templates use the same sign).
export const EMPTY = "—";
export const UUID_RE = /^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$/i;

/** The value of a cookie, or "". */
export function cookie(name) {
  for (const part of document.cookie ? document.cookie.split(";") : []) {
    const [key, ...rest] = part.trim().split("=");
    if (key === name) return decodeURIComponent(rest.join("="));
  }
  return "";
}

/**
 * Call the REST API with the session (same-origin credentials and the CSRF token on writes).
 * Resolves to {ok, status, data} (data: the parsed JSON body, or null); rejects only when the
 * request could not be made at all (network down).
 */
export async function api(url, { method = "GET", body, headers = {}, signal } = {}) {
  const init = { method, credentials: "same-origin", headers: { Accept: "application/json", ...headers }, signal };
  if (method !== "GET" && method !== "HEAD") init.headers["X-CSRFToken"] = cookie("csrftoken");
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(url, init);
  let data = null;
  const text = await response.text();
  if (text) {
    try { data = JSON.parse(text); } catch { data = null; }
  }
  return { ok: response.ok, status: response.status, data };
}

/** A short sentence for a failed API answer (RFC 9457 problem details when present). */
export function problemText(result) {
  if (result && result.data && typeof result.data.detail === "string") return result.data.detail;
  if (result && result.status === 429) return "Too many requests; try again in a moment.";
  if (result && result.status >= 500) return "The server had a problem; try again.";
  return `Request failed (${result ? result.status : "no answer"}).`;
}

export function readConfig(id) {
  const el = document.getElementById(id);
  return el ? JSON.parse(el.textContent) : {};
}

export function statusLabel(status) {
  return status ? status.charAt(0).toUpperCase() + status.slice(1) : "";
}

const timeFormat = new Intl.DateTimeFormat(undefined, {
  year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit",
});
const clockFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });

/** A timestamp in the reader's time zone: the time alone for today, else date and time. */
export function formatTime(iso, { full = false } = {}) {
  if (!iso) return EMPTY;
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return String(iso);
  const today = new Date();
  if (!full && date.toDateString() === today.toDateString()) return clockFormat.format(date);
  return timeFormat.format(date);
}

/** How long from `startIso` to `endIso` (or to now while it runs): "850 ms", "12 s", "3 min 5 s", "2 h 4 min". */
export function formatDuration(startIso, endIso = null) {
  if (!startIso) return EMPTY;
  const ms = (endIso ? new Date(endIso) : new Date()) - new Date(startIso);
  if (!Number.isFinite(ms) || ms < 0) return EMPTY;
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const seconds = Math.round(ms / 1000);
  if (seconds < 60) return `${seconds} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${seconds % 60} s`;
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

/** What a job's duration cell says: how long it ran, "running 12 s" while it does, "—" before. */
export function jobDuration(job) {
  if (!job.started_at) return EMPTY;
  return job.finished_at ? formatDuration(job.started_at, job.finished_at) : `running ${formatDuration(job.started_at)}`;
}

/** A failed job's error in one line ("ValueError: boom"); "" otherwise. */
export function errorLine(job) {
  return job.error ? `${job.error.type}: ${job.error.message}` : "";
}

/**
 * JSON as the admin's pretty_json writes it (Python's json.dumps with indent=2, sort_keys):
 * keys sorted at every level, two spaces per level.
 */
export function prettyJson(value, indent = "") {
  const inner = `${indent}  `;
  if (Array.isArray(value)) {
    if (!value.length) return "[]";
    return `[\n${value.map((item) => inner + prettyJson(item, inner)).join(",\n")}\n${indent}]`;
  }
  if (value && typeof value === "object") {
    const keys = Object.keys(value).sort();
    if (!keys.length) return "{}";
    const members = keys.map((key) => `${inner}${JSON.stringify(key)}: ${prettyJson(value[key], inner)}`);
    return `{\n${members.join(",\n")}\n${indent}}`;
  }
  return JSON.stringify(value);
}

/** Nothing to show: null, "", [] or {}. */
export function isEmpty(value) {
  if (value === null || value === undefined || value === "") return true;
  if (Array.isArray(value)) return value.length === 0;
  return typeof value === "object" && Object.keys(value).length === 0;
}

export function clockTime(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? "" : clockFormat.format(date);
}

/** Format every <time datetime> under `root` in the reader's time zone. */
export function localizeTimes(root = document, options = {}) {
  for (const el of root.querySelectorAll("time[datetime]")) {
    el.textContent = formatTime(el.getAttribute("datetime"), options);
    el.title = el.getAttribute("datetime");
  }
}

/** Create an element: h("span", {class: "x", dataset: {a: 1}}, "text", child). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key === "text") el.textContent = value;
    else if (key in el && typeof value !== "string") el[key] = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

/** Set text only when it changed (keeps selections and avoids needless layout). */
export function setText(el, text) {
  const value = String(text ?? "");
  if (el && el.textContent !== value) el.textContent = value;
}

const STATE_LABELS = { connecting: "Connecting…", live: "Live", reconnecting: "Reconnecting…", offline: "Offline" };

/**
 * Show a JobStream's state in the top bar's indicator ([data-live-indicator]). Returns the
 * function to pass as the stream's onState.
 */
export function liveIndicator(el = document.querySelector("[data-live-indicator]")) {
  return (state) => {
    serverGone(state === "reconnecting" || state === "offline");
    if (!el) return;
    el.hidden = false;
    el.dataset.state = state;
    setText(el.querySelector(".live-label"), STATE_LABELS[state] || state);
    el.title = state === "live" ? "Receiving live updates" : state === "offline"
      ? "Not connected; the page is not updating" : "Trying to reconnect; the page may be out of date";
  };
}

// What the page's actions are while the server is out of reach: every button, field and form of
// the page (not the top bar's), disabled; those that were disabled already are left as they were.
const ACTIONS = "main button, main input, main select, main textarea, main fieldset";

/**
 * While the live connection is down (`gone`), say so in a banner at the top of the page and
 * pause the page's actions; when it is back, take the banner away and give them back.
 */
export function serverGone(gone) {
  let banner = document.querySelector("[data-connection-banner]");
  if (gone && !banner) {
    banner = h("div", { class: "connection-banner", role: "alert", dataset: { connectionBanner: "", testid: "connection-banner" } },
      h("strong", {}, "The server cannot be reached. "),
      "This page is not updating and its actions are paused; it reconnects by itself.");
    document.querySelector("main")?.prepend(banner);
  }
  if (banner) banner.hidden = !gone;
  document.body.dataset.connection = gone ? "down" : "up";
  for (const control of document.querySelectorAll(ACTIONS)) {
    if (gone && !control.disabled) {
      control.disabled = true;
      control.dataset.pausedOffline = "";
    } else if (!gone && "pausedOffline" in control.dataset) {
      control.disabled = false;
      delete control.dataset.pausedOffline;
    }
  }
}

/** Say `text` to screen readers, politely (a visually hidden live region, made on first use). */
export function announce(text) {
  let region = document.querySelector("[data-announcer]");
  if (!region) {
    region = h("div", { class: "visually-hidden", role: "status", "aria-live": "polite", dataset: { announcer: "", testid: "announcer" } });
    document.body.append(region);
  }
  region.textContent = text;
}

/** Call `fn` at most once every `ms`, always eventually after the last request. */
export function throttle(fn, ms) {
  let last = 0;
  let timer = null;
  return function request() {
    if (timer) return;
    const wait = Math.max(0, last + ms - Date.now());
    timer = setTimeout(() => {
      timer = null;
      last = Date.now();
      fn();
    }, wait);
  };
}
