// Dataset upload: send the file with a byte-level progress bar, then follow the import job until it ends.
(function () {
  "use strict";
  const bar = document.getElementById("progress-bar");
  const text = document.getElementById("progress-text");
  const errors = document.getElementById("progress-errors");

  function show(job) {
    const total = job.total_lines || 0;
    const pct = job.status === "done" || job.status === "failed" ? 100
      : total ? Math.min(99, Math.round((100 * job.processed_lines) / total)) : 5;
    bar.style.width = pct + "%";
    const state = document.getElementById("import-state");
    if (state) { state.textContent = job.status; state.className = "badge " + job.status; }
    if (job.status === "done") {
      text.textContent = "Imported: " + job.message;
    } else if (job.status === "failed") {
      text.textContent = "Nothing was imported: " + job.message;
      errors.innerHTML = "";
      (job.errors || []).forEach(function (e) {
        const li = document.createElement("li");
        li.textContent = (e.line ? "line " + e.line : "file") + (e.field ? ", " + e.field : "") + ": " + e.message;
        errors.appendChild(li);
      });
    } else {
      text.textContent = job.status + (total ? ": line " + job.processed_lines + " of " + total : "…");
    }
    return job.status === "done" || job.status === "failed";
  }

  function follow(statusUrl, onDone) {
    fetch(statusUrl, { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then(function (r) { return r.json(); })
      .then(function (job) { if (show(job)) { if (onDone) onDone(job); } else { setTimeout(function () { follow(statusUrl, onDone); }, 500); } })
      .catch(function () { setTimeout(function () { follow(statusUrl, onDone); }, 1000); });
  }

  const form = document.getElementById("upload-form");
  if (form) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      const panel = document.getElementById("upload-progress");
      panel.hidden = false;
      errors.innerHTML = "";
      const xhr = new XMLHttpRequest();
      xhr.open("POST", window.location.pathname);
      xhr.setRequestHeader("Accept", "application/json");
      xhr.upload.addEventListener("progress", function (e) {
        if (e.lengthComputable) {
          bar.style.width = Math.round((50 * e.loaded) / e.total) + "%";
          text.textContent = "Uploading… " + Math.round((100 * e.loaded) / e.total) + "%";
        }
      });
      xhr.onload = function () {
        let body = {};
        try { body = JSON.parse(xhr.responseText); } catch (err) { body = {}; }
        if (xhr.status === 202) {
          text.textContent = "Uploaded; validating…";
          follow(body.status_url, function (job) {
            const done = document.getElementById("progress-done");
            done.hidden = false;
            document.getElementById("progress-link").href = body.url;
            document.getElementById("progress-link").textContent = job.status === "done" ? "See the import" : "See the problems";
          });
        } else {
          bar.style.width = "100%";
          const fields = (body.error && body.error.fields) || {};
          const messages = [];
          Object.keys(fields).forEach(function (k) { fields[k].forEach(function (m) { messages.push(m.message || m); }); });
          text.textContent = "Nothing was imported: " + (messages.join(" ") || "the upload failed (HTTP " + xhr.status + ")");
        }
      };
      xhr.onerror = function () { text.textContent = "The upload failed: the server could not be reached."; };
      xhr.send(new FormData(form));
    });
  }

  const status = document.getElementById("import-status");
  if (status && status.dataset.finished === "0") {
    follow(status.dataset.statusUrl, function () { window.location.reload(); });
  }
})();
