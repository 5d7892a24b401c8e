// Evaluation run page: follow the run's progress through the API every 2 s while it is pending or running
// (or cancelled with requests still in flight), then reload to show the final state.
// The numbers are formatted exactly as the server renders them (evaluation/templatetags/evaluation_format.py).
(function () {
  "use strict";
  const POLL_MS = 2000;
  const panel = document.getElementById("run-progress");
  if (!panel || panel.dataset.active !== "1") return;

  function wholePercent(fraction) { return Math.round(fraction * 100) + "%"; }
  function percent(numerator, denominator) {
    if (!denominator) return "–";
    const tenths = Math.round((numerator * 1000) / denominator);
    return Math.floor(tenths / 10) + "." + (tenths % 10) + "%";
  }
  function rate(perSecond) { return perSecond === null ? "–" : (Math.round(perSecond * 10) / 10).toFixed(1) + "/s"; }
  function duration(seconds) {
    if (seconds === null) return "–";
    const total = Math.round(seconds);
    if (total < 60) return total + " s";
    if (total < 3600) return Math.floor(total / 60) + " min " + (total % 60) + " s";
    return Math.floor(total / 3600) + " h " + Math.floor((total % 3600) / 60) + " min";
  }
  function setText(root, selector, text) {
    const el = root.querySelector(selector);
    if (el && el.textContent !== text) el.textContent = text;
  }

  function show(run) {
    const p = run.progress;
    const pct = wholePercent(p.fraction);
    const bar = document.getElementById("run-progress-bar");
    bar.style.width = pct;
    bar.parentElement.setAttribute("aria-valuenow", String(Math.round(p.fraction * 100)));
    setText(document, "#progress-text",
      (p.done + p.failed) + " of " + p.total + " samples (" + pct + ") · " + p.done + " done · " + p.failed +
      " failed · " + p.cached + " cached · " + p.remaining + " remaining · " + rate(p.rate_per_s) +
      " · ETA " + duration(p.eta_s));
    const status = document.getElementById("run-status");
    status.textContent = run.status;
    status.className = "badge " + run.status;
    setText(document, "#run-message", run.message || "");
    p.models.forEach(function (m) {
      const row = panel.querySelector('tr[data-model-id="' + m.model_id + '"]');
      if (!row) return;
      ["done", "failed", "cached", "graded", "correct"].forEach(function (col) {
        setText(row, '[data-col="' + col + '"]', String(m[col]));
      });
      setText(row, '[data-col="accuracy"]', percent(m.correct, m.graded));
      setText(row, '[data-col="tokens"]', m.prompt_tokens + " / " + m.completion_tokens);
    });
    // A cancelled run is followed until its lanes have saved the requests that were in flight.
    return run.status === "pending" || run.status === "running" ||
      (run.status === "cancelled" && (p.batches.running || 0) > 0);
  }

  function poll() {
    fetch(panel.dataset.statusUrl, { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.json(); })
      .then(function (run) {
        // Once the run ends, reload so the page shows the final state and the actions that now apply.
        if (show(run)) { setTimeout(poll, POLL_MS); } else { window.location.reload(); }
      })
      .catch(function () { setTimeout(poll, POLL_MS); });
  }

  if (panel.dataset.poll === "api") {
    setTimeout(poll, POLL_MS);
  } else {
    // The API needs a login; visitors get the page itself again.
    setTimeout(function () { window.location.reload(); }, POLL_MS);
  }
})();
