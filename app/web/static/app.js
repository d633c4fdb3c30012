// runbot dashboard: a little plain JS, no build step.
// - relative times stay fresh, with the absolute time (yours and UTC) on hover;
// - the current run's log is tailed through the API while the engine works;
// - a detail page reloads when its environment or silo changes (status, run, expiry);
// - destructive forms ask first.
"use strict";

function humanize(target, now) {
  const delta = Math.round((target - now) / 1000);
  let rest = Math.abs(delta);
  if (rest === 0) return "now";
  const units = [["d", 86400], ["h", 3600], ["m", 60], ["s", 1]];
  const parts = [];
  for (const [unit, size] of units) {
    const count = Math.floor(rest / size);
    rest -= count * size;
    parts.push([count, unit]);
  }
  const first = parts.findIndex(([count]) => count > 0);
  const text = parts.slice(first, first + 2).filter(([c]) => c).map(([c, u]) => c + u).join(" ");
  return delta > 0 ? "in " + text : text + " ago";
}

function refreshTimes() {
  const now = Date.now();
  for (const el of document.querySelectorAll("time[data-rel]")) {
    const when = Date.parse(el.getAttribute("datetime"));
    if (Number.isNaN(when)) continue;
    el.textContent = humanize(when, now);
    if (!el.dataset.local) {
      el.title = new Date(when).toLocaleString() + " (" + el.title + ")";
      el.dataset.local = "1";
    }
  }
}

async function getJSON(url) {
  const response = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
  if (!response.ok) throw new Error(url + ": " + response.status);
  return response.json();
}

function tailLog() {
  const pre = document.getElementById("live-log");
  if (!pre || pre.dataset.finished === "true") return;
  let cursor = Number(pre.dataset.cursor || 0);
  const run = pre.dataset.run;
  pre.scrollTop = pre.scrollHeight;
  const tick = async () => {
    try {
      const data = await getJSON(`/api/runs/${run}/log?after=${cursor}`);
      if (data.text) {
        const atBottom = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 40;
        pre.append(document.createTextNode(data.text));
        if (atBottom) pre.scrollTop = pre.scrollHeight;
      }
      cursor = data.cursor;
      pre.dataset.cursor = String(cursor);
      if (data.finished) {
        pre.dataset.finished = "true";
        const note = document.getElementById("tailing");
        if (note) note.remove();
        return;
      }
    } catch (err) { /* a blip: try again */ }
    setTimeout(tick, 1000);
  };
  setTimeout(tick, 700);
}

function watchTarget() {
  const el = document.querySelector("[data-watch]");
  if (!el) return;
  const kind = el.dataset.watch;
  const url = kind === "environment" ? `/api/environments/${el.dataset.id}` : `/api/silos/${el.dataset.id}`;
  const tick = async () => {
    try {
      const data = await getJSON(url);
      let changed = data.status !== el.dataset.status;
      if (kind === "environment") {
        changed = changed || String(data.last_run_id || "") !== el.dataset.run
          || (data.expires_at ? Date.parse(data.expires_at) : "") !== (el.dataset.expires ? Date.parse(el.dataset.expires) : "");
      } else {
        const runs = await getJSON(`/api/silos/${el.dataset.id}/runs?per_page=1`);
        changed = changed || String(runs.items.length ? runs.items[0].id : "") !== el.dataset.run;
      }
      if (changed) { window.location.reload(); return; }
      if (data.status === "destroyed") return;
    } catch (err) { /* keep watching */ }
    setTimeout(tick, 1500);
  };
  setTimeout(tick, 1500);
}

function oldLogs() {
  for (const details of document.querySelectorAll("details.old-log")) {
    details.addEventListener("toggle", async () => {
      if (!details.open || details.dataset.loaded) return;
      const pre = details.querySelector("pre");
      try {
        const data = await getJSON(`/api/runs/${details.dataset.run}/log`);
        pre.textContent = data.text || "(empty)";
        details.dataset.loaded = "1";
      } catch (err) { pre.textContent = "could not load the log"; }
    });
  }
}

function confirmForms() {
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }
}

document.addEventListener("DOMContentLoaded", () => {
  refreshTimes();
  setInterval(refreshTimes, 15000);
  tailLog();
  watchTarget();
  oldLogs();
  confirmForms();
});
