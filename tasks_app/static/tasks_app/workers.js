// The Workers and queues page: the server renders the first view; this asks GET /api/workers/
// and GET /api/queues/ again every few seconds and redraws both tables.
import { EMPTY, api, formatTime, h, localizeTimes, readConfig, statusLabel } from "./common.js";

const config = readConfig("workers-config");
const workersBody = document.querySelector("[data-workers]");
const queuesBody = document.querySelector("[data-queues]");

function renderWorkers(workers) {
  if (!workers.length) {
    workersBody.replaceChildren(h("tr", { dataset: { empty: "" } },
      h("td", { colspan: "8", class: "muted", text: "No worker has reported itself yet." })));
    return;
  }
  workersBody.replaceChildren(...workers.map((worker) => h("tr", { dataset: { worker: worker.name } },
    h("td", { text: worker.name }),
    h("td", {}, h("span", { class: "badge", dataset: { workerState: worker.state }, text: statusLabel(worker.state) })),
    h("td", { text: worker.host }),
    h("td", { text: worker.pid }),
    h("td", { text: worker.queues.join(", ") }),
    h("td", { text: worker.concurrency }),
    h("td", { text: worker.running.length }),
    h("td", {}, h("time", { datetime: worker.last_seen_at, title: worker.last_seen_at, text: formatTime(worker.last_seen_at) })),
  )));
}

function renderQueues(queues) {
  queuesBody.replaceChildren(...queues.map((queue) => h("tr", { dataset: { queue: queue.queue } },
    h("td", {}, h("code", { text: queue.queue })),
    h("td", { text: queue.job_types.join(", ") || EMPTY }),
    h("td", { dataset: { queued: "" }, text: queue.queued }),
    h("td", { text: queue.scheduled }),
    h("td", { text: queue.running }),
    h("td", { dataset: { oldest: "" }, text: queue.oldest_queued_seconds === null ? EMPTY : `${Math.round(queue.oldest_queued_seconds)} s` }),
    h("td", { text: queue.finished_last_hour }),
    h("td", { dataset: { consumers: "" } },
      queue.consumers ? String(queue.consumers) : h("span", { class: "badge", dataset: { status: "failed" }, text: "none" })))));
}

async function refresh() {
  try {
    const [workers, queues] = await Promise.all([api(config.urls.workers), api(config.urls.queues)]);
    if (workers.ok && Array.isArray(workers.data)) renderWorkers(workers.data);
    if (queues.ok && Array.isArray(queues.data)) renderQueues(queues.data);
  } catch {
    // Network down: keep what is shown; the next tick tries again.
  }
}

localizeTimes();
setInterval(refresh, config.refreshSeconds * 1000);
