// Snapshot pages: follow every snapshot that is still building through GET /api/v1/snapshots/<id> every 2 s
// (visitors who are not logged in get the page again instead, as the API needs a login), and reload the
// page once a build has finished so that its results appear.
(function () {
  "use strict";
  const POLL_MS = 2000;
  const FINISHED = ["done", "failed"];
  const LABELS = { evaluating: "waiting for evaluations" };  // as RouterSnapshot.Status labels them
  const panels = document.querySelectorAll("[data-snapshot-progress]");
  if (!panels.length) return;

  function setText(el, text) { if (el && el.textContent !== text) el.textContent = text; }

  function show(panel, snapshot) {
    const done = snapshot.progress_done || 0, total = snapshot.progress_total || 0;
    const bar = panel.querySelector('[data-role="bar"]');
    bar.style.width = (total ? Math.round((100 * done) / total) : 0) + "%";
    bar.parentElement.setAttribute("aria-valuenow", String(done));
    bar.parentElement.setAttribute("aria-valuemax", String(total));
    setText(panel.querySelector('[data-role="progress-text"]'),
      (snapshot.stage || LABELS[snapshot.status] || snapshot.status) + (total ? ": " + done + " of " + total : ""));
    setText(panel.querySelector('[data-role="message"]'), snapshot.message || "");
    const scope = panel.closest("tr") || document;
    const badge = scope.querySelector('[data-role="status"]');
    if (badge) { setText(badge, LABELS[snapshot.status] || snapshot.status); badge.className = "badge " + snapshot.status; }
  }

  function follow(panel) {
    fetch(panel.dataset.statusUrl, { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.json(); })
      .then(function (snapshot) {
        show(panel, snapshot);
        if (FINISHED.indexOf(snapshot.status) >= 0) { window.location.reload(); } else { setTimeout(function () { follow(panel); }, POLL_MS); }
      })
      .catch(function () { setTimeout(function () { follow(panel); }, POLL_MS * 2); });
  }

  if (panels[0].dataset.poll === "api") {
    panels.forEach(function (panel) { setTimeout(function () { follow(panel); }, POLL_MS); });
  } else {
    setTimeout(function () { window.location.reload(); }, POLL_MS);
  }
})();
