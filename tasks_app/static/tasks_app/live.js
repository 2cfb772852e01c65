/**
 * live.js: live job updates over the WebSocket `/ws/jobs/`, for any page (no page code here).
 *
 *   import { JobStream } from "./live.js";
 *
 *   const stream = new JobStream({
 *     url: "/ws/jobs/",                 // absolute, or relative to the page (ws: or wss: is chosen)
 *     onJob(job, event, message) {},    // a newer version of a job; event is the server's
 *                                       // "created" | "status" | "progress" | "log" | "cancel_requested",
 *                                       // or "resync" when the job was re-read over REST; message is
 *                                       // the server's whole message (it may carry the history
 *                                       // `entry` the change recorded), null for a resync
 *     onSnapshot(jobs, spec) {},        // after each (re)subscribe: the current jobs for `spec`
 *                                       // (newest first, at most 50); resync the page from them
 *     onSchedules(schedules) {},        // after each (re)subscribe to { scope: "schedules" }: all of them
 *     onSchedule(schedule, event) {},   // a schedule changed or fired; event is "created" | "updated" |
 *                                       // "paused" | "resumed" | "fired" | "deleted"
 *     onState(state) {},                // "connecting" | "live" | "reconnecting" | "offline"
 *     onError(message) {},              // {type: "error", code, message} from the server
 *   });
 *   stream.subscribe({ scope: "mine" });  // or { scope: "all" } (staff), { job: "<uuid>" }, or
 *                                         // { scope: "schedules" } (mine, or all for staff)
 *   stream.connect();
 *   stream.unsubscribe({ scope: "mine" });
 *   stream.close();                       // for good: no reconnect
 *
 * Also: `stream.state`; `stream.note(job)` tells the stream about a job read elsewhere (REST) so
 * later messages are compared with it, and returns true if it is newer than what was known;
 * `stream.version(id)`; `stream.refresh(id)` re-reads a job over REST and passes it to onJob
 * ("resync") if it is newer.
 *
 * The contract (server side: tasks_app/consumers.py):
 * - client -> server: {"action": "subscribe" | "unsubscribe", "job": id} or {..., "scope": "mine" | "all"};
 * - server -> client: {"type": "snapshot", "jobs": [...]} after each subscribe, then
 *   {"type": "job", "event": ..., "version": n, "job": <REST representation>}, and
 *   {"type": "error", "code", "message"}; for schedules {"type": "snapshot", "scope": "schedules",
 *   "schedules": [...]} then {"type": "schedule", "event": ..., "schedule": {...}}.
 * - Delivery is at-most-once. The stream keeps the last version of each job, drops a message
 *   whose version is not newer, and when a version skips (known v, message v+2 or more) it
 *   re-reads the job with GET /api/jobs/{id}/ (its `links.self`).
 * - The socket reconnects by itself with exponential backoff and jitter (1 s doubling to 30 s),
 *   and re-sends every subscription on each (re)connect; the snapshots resync the page.
 */

const DEFAULT_JOB_URL = (id) => `/api/jobs/${encodeURIComponent(id)}/`;

function specKey(spec) {
  if (spec && spec.job) return `job:${String(spec.job).toLowerCase()}`;
  if (spec && spec.scope) return `scope:${spec.scope}`;
  throw new TypeError('A subscription is {job: "<id>"} or {scope: "mine" | "all"}.');
}

function normalize(spec) {
  return spec.job ? { job: String(spec.job).toLowerCase() } : { scope: spec.scope };
}

export class JobStream {
  constructor({
    url = "/ws/jobs/",
    onJob = () => {},
    onSnapshot = () => {},
    onSchedules = () => {},
    onSchedule = () => {},
    onState = () => {},
    onError = () => {},
    jobUrl = DEFAULT_JOB_URL,
    minDelay = 1000,
    maxDelay = 30000,
  } = {}) {
    this.url = url;
    this.onJob = onJob;
    this.onSnapshot = onSnapshot;
    this.onSchedules = onSchedules;
    this.onSchedule = onSchedule;
    this.onState = onState;
    this.onError = onError;
    this.jobUrl = jobUrl;
    this.minDelay = minDelay;
    this.maxDelay = maxDelay;
    this._subs = new Map();      // key -> spec, in subscription order
    this._pending = [];          // specs sent, waiting for their snapshot (for servers that don't echo them)
    this._versions = new Map();  // job id -> last version seen
    this._links = new Map();     // job id -> REST URL of the job
    this._refreshing = new Map(); // job id -> promise of a REST re-read in flight
    this._socket = null;
    this._timer = null;
    this._attempt = 0;
    this._wanted = false;
    this._state = "offline";
    this._onOnline = () => this._wakeUp();
    this._onVisible = () => { if (document.visibilityState === "visible") this._wakeUp(); };
  }

  get state() { return this._state; }

  /** The last version seen of a job, or undefined. */
  version(id) { return this._versions.get(String(id)); }

  /** Record a job read elsewhere; true if it is newer than what the stream had. */
  note(job) {
    if (!job || !job.id) return false;
    const id = String(job.id);
    if (job.links && job.links.self) this._links.set(id, job.links.self);
    const known = this._versions.get(id);
    if (known !== undefined && job.version <= known) return false;
    this._versions.set(id, job.version);
    return true;
  }

  subscribe(spec) {
    const key = specKey(spec);
    if (!this._subs.has(key)) {
      const normal = normalize(spec);
      this._subs.set(key, normal);
      this._send("subscribe", normal);
    }
    return this;
  }

  unsubscribe(spec) {
    const key = specKey(spec);
    const normal = this._subs.get(key);
    if (normal) {
      this._subs.delete(key);
      this._send("unsubscribe", normal);
    }
    return this;
  }

  connect() {
    this._wanted = true;
    if (typeof window !== "undefined") {
      window.addEventListener("online", this._onOnline);
      document.addEventListener("visibilitychange", this._onVisible);
    }
    if (!this._socket && !this._timer) this._open(this._attempt === 0 ? "connecting" : "reconnecting");
    return this;
  }

  close() {
    this._wanted = false;
    clearTimeout(this._timer);
    this._timer = null;
    if (typeof window !== "undefined") {
      window.removeEventListener("online", this._onOnline);
      document.removeEventListener("visibilitychange", this._onVisible);
    }
    const socket = this._socket;
    this._socket = null;
    if (socket) {
      socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
      try { socket.close(1000, "closed by the page"); } catch { /* already closed */ }
    }
    this._setState("offline");
  }

  /** Re-read a job over REST and pass it on if it is newer. Concurrent calls share one request. */
  refresh(id) {
    id = String(id);
    if (this._refreshing.has(id)) return this._refreshing.get(id);
    const url = this._links.get(id) || this.jobUrl(id);
    const done = fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then((response) => (response.ok ? response.json() : null))
      .then((job) => {
        if (job && job.id && this.note(job)) this.onJob(job, "resync", null);
        return job;
      })
      .catch(() => null)
      .finally(() => this._refreshing.delete(id));
    this._refreshing.set(id, done);
    return done;
  }

  // --- internals ---------------------------------------------------------------------------

  _socketUrl() {
    const base = typeof location !== "undefined" ? location.href : "http://localhost/";
    const url = new URL(this.url, base);
    if (url.protocol === "http:") url.protocol = "ws:";
    else if (url.protocol === "https:") url.protocol = "wss:";
    return url.href;
  }

  _setState(state) {
    if (state === this._state) return;
    this._state = state;
    try { this.onState(state); } catch (error) { console.error(error); }
  }

  _open(state) {
    this._timer = null;
    if (!this._wanted) return;
    if (typeof navigator !== "undefined" && navigator.onLine === false) {
      this._setState("offline"); // the "online" event brings it back
      return;
    }
    this._setState(state);
    let socket;
    try {
      socket = new WebSocket(this._socketUrl());
    } catch (error) {
      console.error(error);
      this._scheduleReconnect();
      return;
    }
    this._socket = socket;
    this._pending = [];
    socket.onopen = () => {
      this._setState("live");
      for (const spec of this._subs.values()) this._send("subscribe", spec);
    };
    socket.onmessage = (event) => this._receive(event.data);
    socket.onerror = () => {}; // a close event always follows
    socket.onclose = () => {
      if (this._socket !== socket) return;
      this._socket = null;
      this._scheduleReconnect();
    };
  }

  _scheduleReconnect() {
    if (!this._wanted) return;
    // 1 s, 2 s, 4 s ... up to 30 s, each drawn at random from its upper half (jitter), so a
    // restarted server is not hit by every page at the same instant.
    const ceiling = Math.min(this.maxDelay, this.minDelay * 2 ** this._attempt);
    const delay = ceiling / 2 + Math.random() * (ceiling / 2);
    this._attempt += 1;
    const offline = typeof navigator !== "undefined" && navigator.onLine === false;
    this._setState(offline ? "offline" : "reconnecting");
    clearTimeout(this._timer);
    this._timer = setTimeout(() => this._open("reconnecting"), delay);
  }

  _wakeUp() {
    // Back online, or the tab is visible again: don't sit out the rest of a long backoff.
    if (this._wanted && !this._socket && this._timer) {
      clearTimeout(this._timer);
      this._open("reconnecting");
    } else if (this._wanted && !this._socket && !this._timer) {
      this._open("reconnecting");
    }
  }

  _send(action, spec) {
    const socket = this._socket;
    if (!socket || socket.readyState !== 1) return; // sent on (re)connect instead
    socket.send(JSON.stringify({ action, ...spec }));
    if (action === "subscribe") this._pending.push(spec);
  }

  _receive(raw) {
    let message;
    try { message = JSON.parse(raw); } catch { return; }
    if (!message || typeof message !== "object") return;
    this._attempt = 0; // the connection works: the next outage starts again at 1 s
    try {
      if (message.type === "snapshot") this._snapshot(message);
      else if (message.type === "job") this._job(message);
      else if (message.type === "schedule" && message.schedule) this.onSchedule(message.schedule, message.event);
      else if (message.type === "error") this.onError(message);
    } catch (error) {
      console.error(error); // a page's handler failed; keep the stream going
    }
  }

  _snapshot(message) {
    let spec = null;
    if (message.job) spec = { job: String(message.job).toLowerCase() };
    else if (message.scope) spec = { scope: message.scope };
    if (spec) {
      const key = specKey(spec);
      const index = this._pending.findIndex((pending) => specKey(pending) === key);
      if (index >= 0) this._pending.splice(index, 1);
    } else {
      spec = this._pending.shift() || null;
    }
    if (spec && !this._subs.has(specKey(spec))) return; // unsubscribed meanwhile
    if (message.scope === "schedules") {
      this.onSchedules(Array.isArray(message.schedules) ? message.schedules : []);
      return;
    }
    const jobs = Array.isArray(message.jobs) ? message.jobs : [];
    for (const job of jobs) this.note(job);
    this.onSnapshot(jobs, spec);
  }

  _job(message) {
    const job = message.job;
    if (!job || !job.id) return;
    const id = String(job.id);
    const version = Number.isInteger(message.version) ? message.version : job.version;
    const known = this._versions.get(id);
    if (known !== undefined && version <= known) return; // a repeat, or older than what we have
    this._versions.set(id, version);
    if (job.links && job.links.self) this._links.set(id, job.links.self);
    this.onJob(job, message.event, message);
    // A skipped version means a lost message: re-read the job so nothing in between is missed.
    if (known !== undefined && version > known + 1) this.refresh(id);
  }
}
