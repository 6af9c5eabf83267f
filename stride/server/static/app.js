// Stride dashboard: small progressive enhancements. Every page works without this file.
"use strict";

function localTimes(root) {
  for (const el of root.querySelectorAll("time[datetime]")) {
    const date = new Date(el.getAttribute("datetime"));
    if (!isNaN(date)) el.textContent = date.toLocaleString();
  }
}

function bulkSelection() {
  const form = document.getElementById("bulk");
  if (!form) return;
  const all = document.getElementById("select-all");
  const count = document.getElementById("selected-count");
  const update = () => {
    const boxes = form.querySelectorAll("tbody input[name=ids]");
    const chosen = form.querySelectorAll("tbody input[name=ids]:checked").length;
    count.textContent = chosen + " selected";
    for (const button of form.querySelectorAll("[data-needs-selection]")) button.disabled = chosen === 0;
    if (all) all.checked = boxes.length > 0 && chosen === boxes.length;
  };
  form.addEventListener("change", (event) => {
    if (event.target === all) {
      for (const box of form.querySelectorAll("tbody input[name=ids]")) box.checked = all.checked;
    }
    update();
  });
  form.addEventListener("stride:rows", update);
  update();
}

// The stream says when the first page of runs changed; the rows are then fetched as
// server-rendered (escaped) HTML and swapped in, keeping the user's selection.
function liveRuns() {
  const body = document.getElementById("run-rows");
  if (!body || !body.dataset.stream || !window.EventSource) return;
  const state = document.getElementById("live-state");
  const source = new EventSource(body.dataset.stream, { withCredentials: true });
  let last = null;
  source.addEventListener("runs", async (message) => {
    if (last !== null && message.data !== last) await refresh(body);
    last = message.data;
  });
  source.addEventListener("open", () => { if (state) { state.hidden = false; state.textContent = "Live"; } });
  source.addEventListener("error", () => { if (state) state.textContent = "Reconnecting…"; });
}

async function refresh(body) {
  const url = new URL(body.dataset.fragment, window.location.href);
  url.searchParams.set("fragment", "rows");
  const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } });
  if (!response.ok) return;
  const chosen = new Set([...body.querySelectorAll("input[name=ids]:checked")].map((box) => box.value));
  const known = new Set([...body.querySelectorAll("tr[data-id]")].map((row) => row.dataset.id));
  body.innerHTML = await response.text();
  for (const row of body.querySelectorAll("tr[data-id]")) {
    if (!known.has(row.dataset.id)) row.classList.add("fresh");
    const box = row.querySelector("input[name=ids]");
    if (box && chosen.has(box.value)) box.checked = true;
  }
  localTimes(body);
  body.closest("form").dispatchEvent(new Event("stride:rows"));
}

// Empty filters are left out of the URL, so that it stays short and shareable.
function cleanFilters() {
  for (const form of document.querySelectorAll("form.filters")) {
    const fields = [...form.querySelectorAll("input, select")];
    form.addEventListener("submit", () => {
      for (const field of fields) if (!field.value) field.disabled = true;
    });
    window.addEventListener("pageshow", () => { for (const field of fields) field.disabled = false; });
  }
}

document.addEventListener("DOMContentLoaded", () => {
  localTimes(document);
  cleanFilters();
  bulkSelection();
  liveRuns();
});
