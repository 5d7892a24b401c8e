// Charts of the traffic page, drawn with the vendored Chart.js: requests over time as stacked bars (one colour per
// cluster or model) and the paper's Figure 9, how each category is routed, as stacked horizontal bars of shares.
// Each chart reads its data from a <script type="application/json"> the server wrote.
(function () {
  "use strict";
  if (typeof Chart === "undefined") return;
  Chart.defaults.font.family = 'system-ui, -apple-system, "Segoe UI", Roboto, sans-serif';
  Chart.defaults.color = "#1d2330";
  const charts = (window.trafficCharts = window.trafficCharts || {});

  function readData(canvas) {
    const source = document.getElementById(canvas.dataset.source);
    return source ? JSON.parse(source.textContent) : null;
  }

  // The same colour as the cluster has on the snapshot's map (static/routing/charts.js).
  function clusterColour(index) {
    const hue = Math.round((index * 137.508) % 360);
    const light = 38 + (index % 3) * 9;
    return "hsl(" + hue + ", 70%, " + light + "%)";
  }

  function colourOf(series) {
    return series.cluster === undefined ? series.colour : clusterColour(series.cluster);
  }

  const legend = { position: "bottom", labels: { boxWidth: 12, boxHeight: 12 } };

  function timeChart(canvas, data) {
    return new Chart(canvas, {
      type: "bar",
      data: {
        labels: data.labels,
        datasets: data.series.map(function (s) {
          return { label: s.label, data: s.counts, backgroundColor: colourOf(s), borderWidth: 0 };
        }),
      },
      options: {
        animation: false, responsive: true, maintainAspectRatio: false,
        interaction: { mode: "index", intersect: false },
        plugins: {
          legend: legend,
          title: { display: true, text: data.title, font: { size: 14, weight: "600" } },
          tooltip: { filter: function (item) { return item.raw > 0; } },
        },
        scales: {
          x: { stacked: true, title: { display: true, text: data.x_title }, ticks: { autoSkip: true, maxRotation: 0 } },
          y: { stacked: true, beginAtZero: true, title: { display: true, text: data.y_title }, ticks: { precision: 0 } },
        },
      },
    });
  }

  // Writes each segment's share inside it, in white or black for contrast, when the segment is wide enough.
  const segmentValues = {
    id: "segmentValues",
    afterDatasetsDraw(chart) {
      const ctx = chart.ctx;
      ctx.save();
      ctx.font = "11px " + Chart.defaults.font.family;
      ctx.textAlign = "center";
      ctx.textBaseline = "middle";
      chart.data.datasets.forEach(function (dataset, d) {
        const meta = chart.getDatasetMeta(d);
        if (meta.hidden) return;
        meta.data.forEach(function (bar, i) {
          const value = dataset.data[i];
          const text = Math.round(value) + "%";
          const width = Math.abs(bar.x - bar.base);
          if (!value || width < ctx.measureText(text).width + 6) return;
          ctx.fillStyle = dark(dataset.backgroundColor) ? "#fff" : "#111";
          ctx.fillText(text, (bar.x + bar.base) / 2, bar.y);
        });
      });
      ctx.restore();
    },
  };

  function dark(colour) {
    const m = /^#([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})$/i.exec(colour || "");
    if (!m) return true;
    const r = parseInt(m[1], 16), g = parseInt(m[2], 16), b = parseInt(m[3], 16);
    return 0.299 * r + 0.587 * g + 0.114 * b < 150;
  }

  function categoryChart(canvas, data) {
    return new Chart(canvas, {
      type: "bar",
      data: {
        labels: data.labels,
        datasets: data.series.map(function (s) {
          return { label: s.label, data: s.values, backgroundColor: s.colour, borderWidth: 0 };
        }),
      },
      plugins: [segmentValues],
      options: {
        animation: false, responsive: true, maintainAspectRatio: false, indexAxis: "y",
        plugins: {
          legend: { position: "top", labels: legend.labels },
          title: { display: true, text: data.title, font: { size: 14, weight: "600" } },
          tooltip: { callbacks: { label: function (item) { return item.dataset.label + ": " + item.raw.toFixed(1) + "%"; } } },
        },
        scales: {
          x: { stacked: true, min: 0, max: 100, title: { display: true, text: "share of the category's requests (%)" } },
          y: { stacked: true },
        },
      },
    });
  }

  document.querySelectorAll("canvas[data-traffic]").forEach(function (canvas) {
    const data = readData(canvas);
    if (!data) return;
    charts[canvas.id] = canvas.dataset.traffic === "category" ? categoryChart(canvas, data) : timeChart(canvas, data);
  });
})();
