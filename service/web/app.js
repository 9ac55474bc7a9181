// cordt1 web page: plain JavaScript on the HTTP API, no build step, nothing from a CDN.
// Every value from the API is put on the page with textContent (never as HTML).
"use strict";

const REFRESH_MS = 5000;
let me = null;
let selectedJob = null;
let timer = null;

const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function when(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleString() : "—";
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  if (seconds < 120) return `${seconds.toFixed(1)} s`;
  return `${(seconds / 60).toFixed(1)} min`;
}

async function api(path, options = {}) {
  const response = await fetch(path, { credentials: "same-origin", ...options });
  if (response.status === 401) {
    showLogin();
    throw new Error("not logged in");
  }
  const body = response.status === 204 ? null : await response.json();
  if (!response.ok) throw new Error(body && body.detail ? body.detail : response.statusText);
  return body;
}

function say(text, isError = false) {
  const box = $("message");
  box.textContent = text;
  box.className = isError ? "message error" : "message";
}

function showLogin() {
  me = null;
  if (timer) clearInterval(timer);
  timer = null;
  $("app").hidden = true;
  $("logout").hidden = true;
  $("who").textContent = "";
  $("login").hidden = false;
}

function showApp(user) {
  me = user;
  document.body.className = user.role;
  $("who").textContent = `${user.name} (${user.role})`;
  $("logout").hidden = false;
  $("login").hidden = true;
  $("app").hidden = false;
  refresh();
  if (!timer) timer = setInterval(refresh, REFRESH_MS);
}

function stateBadge(state) {
  return el("span", state, `state state-${state}`);
}

function renderControl(control) {
  for (const part of ["intake", "processing"]) {
    const info = control[part];
    const text = $(`${part}-state`);
    text.textContent = info.paused ? `paused by ${info.by} since ${when(info.since)}` : "running";
    text.className = info.paused ? "paused" : "";
    const button = $(`${part}-toggle`);
    button.textContent = info.paused ? `Resume ${part}` : `Pause ${part}`;
    button.dataset.action = info.paused ? "resume" : "pause";
  }
}

function renderQueue(queue) {
  $("counts").textContent = Object.entries(queue.counts)
    .map(([state, n]) => `${state}: ${n}`)
    .join(" · ");
  $("workers").textContent = queue.workers_alive.length
    ? `${queue.workers_alive.length} worker(s) alive`
    : "no worker alive";
  $("workers").className = queue.workers_alive.length ? "" : "paused";
  const purged = queue.retention;
  $("retention").textContent = purged.last_purge_at
    ? `Last purge ${when(purged.last_purge_at)}: ${megabytes(purged.last_purge_bytes)} freed ` +
      `(${megabytes(purged.purged_bytes_total)}, ${purged.purged_exams_total} exam(s) in all)`
    : "No purge yet";
  renderControl(queue.control);
}

function megabytes(bytes) {
  return `${((bytes || 0) / 1048576).toFixed(1)} MB`;
}

function renderJobs(list) {
  const body = $("jobs").querySelector("tbody");
  body.replaceChildren();
  for (const job of list.jobs) {
    const row = el("tr", null, "job");
    row.dataset.jobId = job.id;
    row.append(el("td", `#${job.id}`));
    const state = el("td");
    state.append(stateBadge(job.state));
    row.append(state);
    row.append(el("td", job.patient_key || "—", "uid"));
    row.append(el("td", job.study_uid, "uid"));
    row.append(el("td", when(job.created_at)));
    row.append(el("td", duration(job.duration_s)));
    row.append(el("td", job.error, job.state === "failed" ? "error" : ""));
    const actions = el("td");
    if (me && me.role === "operator") {
      const offered = [];
      if (["failed", "cancelled"].includes(job.state)) offered.push(["Retry", "retry"]);
      if (["queued", "running", "sending"].includes(job.state)) offered.push(["Cancel", "cancel"]);
      if (job.state === "done") offered.push(["Re-send", "resend"]);
      for (const [label, action] of offered) {
        const button = el("button", label, `operator ${action}`);
        button.addEventListener("click", (event) => {
          event.stopPropagation();
          actOnJob(job.id, action);
        });
        actions.append(button);
      }
    }
    row.append(actions);
    row.addEventListener("click", () => showJob(job.id));
    body.append(row);
  }
  $("jobs-total").textContent = `${list.jobs.length} of ${list.total} job(s) shown`;
}

function renderExams(data) {
  const body = $("exams").querySelector("tbody");
  body.replaceChildren();
  for (const exam of data.exams) {
    const row = el("tr");
    row.append(el("td", exam.study_uid, "uid"), el("td", exam.calling_ae),
      el("td", exam.n_series), el("td", exam.n_instances), el("td", when(exam.last_received_at)));
    body.append(row);
  }
}

function renderDestinations(list) {
  const body = $("destinations").querySelector("tbody");
  body.replaceChildren();
  for (const dest of list) {
    const row = el("tr");
    row.append(el("td", dest.destination, "uid"), el("td", dest.state),
      el("td", when(dest.last_sent_at)),
      el("td", dest.last_failure ? `${when(dest.last_failure_at)}: ${dest.last_failure}` : "—"));
    body.append(row);
  }
}

async function showJob(jobId) {
  selectedJob = jobId;
  const job = await api(`/api/jobs/${jobId}`);
  $("detail").hidden = false;
  $("detail-title").textContent = `Job #${job.id}`;
  const facts = $("detail-facts");
  facts.replaceChildren();
  const timings = Object.entries(job.timings_s).map(([k, v]) => `${k} ${v.toFixed(1)} s`);
  const pairs = [
    ["State", job.state],
    ["Patient key", job.patient_key || "—"],
    ["Study UID", job.study_uid],
    ["Series", job.series_uids.length],
    ["Started because", job.reason],
    ["Waited in queue", duration(job.queue_wait_s)],
    ["Stage timings", timings.length ? timings.join(", ") : "—"],
    ["QC", job.qc_reasons.length ? job.qc_reasons.join("; ") : job.qc_verdict || "—"],
    ["Attempts", job.attempts],
    ["Failure reason", job.error || "—"],
    ["Delivered", Object.entries(job.sent).map(([d, ok]) => `${d}: ${ok ? "yes" : "no"}`)
      .join(", ") || "—"],
    ["DICOM results", job.dicom_outputs.length],
  ];
  for (const [name, value] of pairs) facts.append(el("dt", name), el("dd", value));
  const pdf = $("detail-pdf");
  pdf.replaceChildren();
  const figures = $("detail-figures");
  figures.replaceChildren();
  for (const file of job.files) {
    if (file.media_type === "application/pdf") {
      const link = el("a", `Open the PDF report (${file.name})`);
      link.href = file.url;
      link.target = "_blank";
      link.rel = "noopener";
      pdf.append(link);
    } else {
      const img = el("img");
      img.src = file.url;
      img.alt = `report figure ${file.name}`;
      figures.append(img);
    }
  }
  if (!job.files.length) pdf.textContent = "No rendered report (yet).";
  const events = $("detail-events");
  events.replaceChildren();
  for (const line of job.events) events.append(el("li", `${when(line.time)} ${line.kind}: ${line.message}`));
}

const ACTION_WORDS = { retry: "queued again", cancel: "cancelled", resend: "results queued to be sent again" };

async function actOnJob(jobId, action) {
  let reason = "from the web page";
  if (action !== "retry") {
    reason = window.prompt(`Why ${action} job #${jobId}? (kept in the audit trail)`, "");
    if (!reason) return;
  }
  try {
    await api(`/api/jobs/${jobId}/${action}`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ reason }),
    });
    say(`Job #${jobId} ${ACTION_WORDS[action]}.`);
  } catch (error) {
    say(`${action} of job #${jobId} refused: ${error.message}`, true);
  }
  refresh();
}

async function toggle(part) {
  const action = $(`${part}-toggle`).dataset.action;
  try {
    const control = await api(`/api/control/${part}/${action}`, { method: "POST" });
    renderControl(control);
    say(`${part} ${action}d.`);
  } catch (error) {
    say(error.message, true);
  }
}

async function refresh() {
  if (!me) return;
  try {
    const state = $("state-filter").value;
    const query = state ? `?state=${encodeURIComponent(state)}&limit=100` : "?limit=100";
    const [queue, jobs, exams, destinations] = await Promise.all([
      api("/api/queue"), api(`/api/jobs${query}`), api("/api/exams?limit=20"),
      api("/api/destinations"),
    ]);
    renderQueue(queue);
    renderJobs(jobs);
    renderExams(exams);
    renderDestinations(destinations);
    if (selectedJob !== null) await showJob(selectedJob);
    $("refreshed").textContent = new Date().toLocaleTimeString();
  } catch (error) {
    if (me) say(`Refresh failed: ${error.message}`, true);
  }
}

document.addEventListener("DOMContentLoaded", async () => {
  $("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    $("login-error").textContent = "";
    try {
      const user = await api("/api/login", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ name: $("login-name").value, password: $("login-password").value }),
      });
      $("login-password").value = "";
      showApp(user);
    } catch (error) {
      $("login-error").textContent = "Wrong name or password.";
      $("login").hidden = false;
    }
  });
  $("logout").addEventListener("click", async () => {
    await fetch("/api/logout", { method: "POST", credentials: "same-origin" });
    showLogin();
  });
  $("intake-toggle").addEventListener("click", () => toggle("intake"));
  $("processing-toggle").addEventListener("click", () => toggle("processing"));
  $("state-filter").addEventListener("change", refresh);
  try {
    showApp(await api("/api/me"));
  } catch (error) {
    showLogin();
  }
});
