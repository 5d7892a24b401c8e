// Charts of the routing pages (snapshots, map, playground, traffic), drawn with the vendored Chart.js
// (static/routing/vendor). Every chart reads its data from a <script type="application/json"> the server wrote,
// and writes its numbers and names on the canvas itself (values over the bars, cluster numbers at the centroids),
// so nothing needs a hover to be read. A canvas's data-chart says which chart it is (bar when it says none).
(function () {
  "use strict";
  if (typeof Chart === "undefined") return;
  Chart.defaults.font.family = 'system-ui, -apple-system, "Segoe UI", Roboto, sans-serif';
  Chart.defaults.color = "#1d2330";
  const charts = (window.routingCharts = window.routingCharts || {});
  // Above this many bars there is no room for their values (the table below the chart has them), as on the heatmap.
  const MAX_LABELLED = 64;

  function readData(canvas) {
    const source = document.getElementById(canvas.dataset.source);
    return source ? JSON.parse(source.textContent) : null;
  }

  // A cluster's colour on the map and its swatch in the table beside it: hues spread by the golden angle.
  function clusterColour(index, alpha) {
    const hue = Math.round((index * 137.508) % 360);
    const light = 38 + (index % 3) * 9;
    return "hsla(" + hue + ", 70%, " + light + "%, " + (alpha === undefined ? 1 : alpha) + ")";
  }

  function fixed(value, digits) { return value === null || value === undefined ? "–" : Number(value).toFixed(digits); }

  // Writes each bar's value at its end: above a vertical bar (turned on its side when the bar is narrower than
  // the text), right of a horizontal one.
  const barValues = {
    id: "barValues",
    afterDatasetsDraw(chart, args, options) {
      const ctx = chart.ctx;
      const meta = chart.getDatasetMeta(0);
      const values = chart.data.datasets[0].data;
      const horizontal = chart.options.indexAxis === "y";
      if (!options.show) return;
      ctx.save();
      ctx.font = "11px " + Chart.defaults.font.family;
      ctx.fillStyle = "#1d2330";
      meta.data.forEach(function (bar, i) {
        const text = fixed(values[i], options.digits);
        if (horizontal) {
          ctx.textAlign = "left";
          ctx.textBaseline = "middle";
          ctx.fillText(text, bar.x + 4, bar.y);
        } else if (bar.width >= ctx.measureText(text).width + 2) {
          ctx.textAlign = "center";
          ctx.textBaseline = "bottom";
          ctx.fillText(text, bar.x, bar.y - 2);
        } else {
          ctx.save();
          ctx.translate(bar.x, bar.y - 3);
          ctx.rotate(-Math.PI / 2);
          ctx.textAlign = "left";
          ctx.textBaseline = "middle";
          ctx.fillText(text, 0, 0);
          ctx.restore();
        }
      });
      ctx.restore();
    },
  };

  function barChart(canvas, data) {
    const highlight = new Set((data.highlight || []).map(String));
    const colours = data.labels.map(function (label) { return highlight.has(String(label)) ? "#e8590c" : "#3b5bdb"; });
    const many = data.labels.length > MAX_LABELLED;
    const categories = {
      title: { display: Boolean(data.x_title), text: data.x_title || "" },
      ticks: { autoSkip: many, maxRotation: 0, font: { size: data.labels.length > 32 ? 10 : 12 } },
    };
    const values = { min: 0, max: data.y_max, title: { display: Boolean(data.y_title), text: data.y_title || "" } };
    return new Chart(canvas, {
      type: "bar",
      data: { labels: data.labels, datasets: [{ label: data.title, data: data.values, backgroundColor: colours }] },
      plugins: [barValues],
      options: {
        animation: false, responsive: true, maintainAspectRatio: false,
        indexAxis: data.horizontal ? "y" : "x",
        layout: { padding: data.horizontal ? { right: 40 } : { top: 4 } },
        onClick: function (event, elements) {
          if (data.links && elements.length) window.location.href = data.links[elements[0].index];
        },
        onHover: function (event, elements) {
          if (data.links) event.native.target.style.cursor = elements.length ? "pointer" : "default";
        },
        plugins: {
          legend: { display: false },
          // The room under the title is for the values written over the tallest bars.
          title: { display: true, text: data.title, font: { size: 14, weight: "600" }, padding: { top: 4, bottom: data.horizontal || data.note ? 6 : 34 } },
          subtitle: { display: Boolean(data.note), text: data.note || "", padding: { bottom: data.horizontal ? 8 : 34 } },
          barValues: { digits: data.digits, show: !many },
        },
        scales: data.horizontal ? { x: values, y: categories } : { x: categories, y: values },
      },
    });
  }

  // Writes each cluster's number at its centroid, on a white halo so that it stays readable over the points.
  const centroidLabels = {
    id: "centroidLabels",
    afterDatasetsDraw(chart, args, options) {
      const ctx = chart.ctx;
      const x = chart.scales.x, y = chart.scales.y;
      ctx.save();
      ctx.font = "bold 12px " + Chart.defaults.font.family;
      ctx.textAlign = "center";
      ctx.textBaseline = "middle";
      ctx.lineWidth = 3;
      ctx.strokeStyle = "rgba(255,255,255,0.9)";
      options.centroids.forEach(function (c) {
        const px = x.getPixelForValue(c[0]), py = y.getPixelForValue(c[1]);
        ctx.fillStyle = clusterColour(c[2]);
        ctx.strokeText(String(c[2]), px, py);
        ctx.fillStyle = "#111";
        ctx.fillText(String(c[2]), px, py);
      });
      ctx.restore();
    },
  };

  function mapChart(canvas, data) {
    const byCluster = new Map();
    data.centroids.forEach(function (c) { byCluster.set(c[2], []); });
    data.points.forEach(function (p) {
      if (!byCluster.has(p[2])) byCluster.set(p[2], []);
      byCluster.get(p[2]).push({ x: p[0], y: p[1] });
    });
    const radius = data.points.length > 2000 ? 1.6 : 2.6;
    const datasets = Array.from(byCluster.entries()).map(function (entry) {
      return {
        label: "cluster " + entry[0], cluster: entry[0], data: entry[1], pointRadius: radius, pointHoverRadius: radius + 2,
        backgroundColor: clusterColour(entry[0], 0.65), borderWidth: 0,
      };
    });
    return new Chart(canvas, {
      type: "scatter",
      data: { datasets: datasets },
      plugins: [centroidLabels],
      options: {
        animation: false, responsive: true, maintainAspectRatio: false,
        onClick: function (event, elements) {
          if (data.cluster_url && elements.length) {
            const cluster = datasets[elements[0].datasetIndex].cluster;
            window.location.href = data.cluster_url.replace("{index}", String(cluster));
          }
        },
        plugins: { legend: { display: false }, centroidLabels: { centroids: data.centroids } },
        scales: {
          x: { title: { display: true, text: "first principal component" } },
          y: { title: { display: true, text: "second principal component" } },
        },
      },
    });
  }

  // The traffic page: requests over time as stacked bars, and how each category is routed.
  function colourOf(series) {
    return series.cluster === undefined ? series.colour : clusterColour(series.cluster);
  }

  const legend = { position: "bottom", labels: { boxWidth: 12, boxHeight: 12 } };

  // Stacked bars, one dataset per series (a cluster, a model or a route), each series' values under ``key``.
  function stackedBars(canvas, data, key, options, plugins) {
    return new Chart(canvas, {
      type: "bar",
      data: {
        labels: data.labels,
        datasets: data.series.map(function (s) {
          return { label: s.label, data: s[key], backgroundColor: colourOf(s), borderWidth: 0 };
        }),
      },
      plugins: plugins || [],
      options: Object.assign({ animation: false, responsive: true, maintainAspectRatio: false }, options),
    });
  }

  // Requests over time, one colour per cluster or model.
  function timeChart(canvas, data) {
    return stackedBars(canvas, data, "counts", {
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

  // The paper's Figure 9: how each category is routed, as shares of its requests.
  function categoryChart(canvas, data) {
    return stackedBars(canvas, data, "values", {
      indexAxis: "y",
      plugins: {
        legend: { position: "top", labels: legend.labels },
        title: { display: true, text: data.title, font: { size: 14, weight: "600" } },
        tooltip: { callbacks: { label: function (item) { return item.dataset.label + ": " + item.raw.toFixed(1) + "%"; } } },
      },
      scales: {
        x: { stacked: true, min: 0, max: 100, title: { display: true, text: "share of the category's requests (%)" } },
        y: { stacked: true },
      },
    }, [segmentValues]);
  }

  document.querySelectorAll("[data-cluster-colour]").forEach(function (el) {
    el.style.background = clusterColour(Number(el.dataset.clusterColour));
  });
  document.querySelectorAll("canvas[data-chart]").forEach(function (canvas) {
    const data = readData(canvas);
    if (!data) return;
    const kinds = { map: mapChart, time: timeChart, category: categoryChart };
    charts[canvas.id] = (kinds[canvas.dataset.chart] || barChart)(canvas, data);
  });
})();
