// The Workers page: the server renders the first view; this asks GET /api/workers/ again every
// few seconds and redraws both tables (queues' live workers are counted from the same answer).
import { api, formatTime, h, localizeTimes, readConfig, statusLabel } from "./common.js";

const config = readConfig("workers-config");
const workersBody = document.querySelector("[data-workers]");
const queuesBody = document.querySelector("[data-queues]");
const requiredQueues = [...queuesBody.querySelectorAll("[data-queue]")].map((row) => row.dataset.queue);

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

function renderQueues(workers) {
  const counts = new Map(requiredQueues.map((queue) => [queue, 0]));
  for (const worker of workers) {
    if (worker.state !== "online") continue;
    for (const queue of worker.queues) counts.set(queue, (counts.get(queue) || 0) + 1);
  }
  queuesBody.replaceChildren(...[...counts.entries()].sort().map(([queue, count]) =>
    h("tr", { dataset: { queue } },
      h("td", {}, h("code", { text: queue })),
      h("td", { dataset: { consumers: "" } },
        count ? String(count) : h("span", { class: "badge", dataset: { status: "failed" }, text: "none" })))));
}

async function refresh() {
  try {
    const result = await api(config.urls.workers);
    if (result.ok && Array.isArray(result.data)) {
      renderWorkers(result.data);
      renderQueues(result.data);
    }
  } catch {
    // Network down: keep what is shown; the next tick tries again.
  }
}

localizeTimes();
setInterval(refresh, config.refreshSeconds * 1000);
