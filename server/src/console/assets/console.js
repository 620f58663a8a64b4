// Sigil web console: the live parts only (the entries page's refresh, the activity charts).
// Served by the console itself; no inline script, no other origin.
"use strict";

(function () {
  const live = document.body.dataset.live;

  async function getJson(path) {
    const response = await fetch(path, { credentials: "same-origin", cache: "no-store" });
    if (!response.ok) throw new Error(path + ": HTTP " + response.status);
    return response.json();
  }

  // Entries: reload the rows when the datastore's entry revision moves.
  function entries() {
    const rows = document.getElementById("entry-rows");
    if (!rows) return;
    let revision = null;
    let busy = false;
    async function poll() {
      if (busy) return;
      busy = true;
      try {
        const latest = (await getJson("/api/revision")).revision;
        if (revision !== null && latest !== revision) {
          const response = await fetch("/entries/rows" + window.location.search, { credentials: "same-origin", cache: "no-store" });
          if (response.ok) {
            // Server-rendered, escaped HTML from our own origin.
            rows.innerHTML = await response.text();
            const total = document.getElementById("entry-total");
            const count = response.headers.get("x-entry-total");
            if (total && count !== null) total.textContent = count;
          }
        }
        revision = latest;
      } catch (e) {
        console.warn("entries refresh:", e.message);
      } finally {
        busy = false;
      }
    }
    poll();
    setInterval(poll, 250);
  }

  // Activity: one polyline per chart, scaled to its own maximum.
  function activity() {
    const charts = Array.from(document.querySelectorAll("figure.chart"));
    function draw(samples) {
      for (const chart of charts) {
        const field = chart.dataset.field;
        const values = samples.map((s) => (s[field] === null ? 0 : s[field]));
        const max = Math.max(1, ...values);
        const n = Math.max(values.length - 1, 1);
        const points = values.map((v, i) => (i / n * 300).toFixed(1) + "," + (100 - v / max * 95).toFixed(1));
        chart.querySelector("polyline").setAttribute("points", points.join(" "));
        const last = samples.length ? samples[samples.length - 1][field] : null;
        chart.querySelector("output").textContent = last === null ? "—" : (Math.round(last * 100) / 100).toString();
      }
    }
    async function poll() {
      try {
        draw(await getJson("/api/samples"));
      } catch (e) {
        console.warn("activity refresh:", e.message);
      }
    }
    poll();
    setInterval(poll, 1000);
  }

  if (live === "entries") entries();
  if (live === "activity") activity();
})();
