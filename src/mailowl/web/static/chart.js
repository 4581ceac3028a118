// Verdicts over time: the page carries the numbers (data-chart); without JavaScript the totals show instead.
(function () {
  "use strict";
  var box = document.getElementById("chart");
  if (!box || typeof uPlot === "undefined") { return; }
  var data = JSON.parse(box.getAttribute("data-chart"));
  var colours = { bad: "#c62828", failed: "#f9a825", good: "#2e7d32", ignored: "#90a4ae", unknown: "#546e7a",
                  pending: "#ffca28" };
  var names = Object.keys(data.series);
  var series = [{}];
  var columns = [data.x];
  names.forEach(function (name) {
    series.push({ label: name, stroke: colours[name], width: 2, points: { show: true, size: 5 } });
    columns.push(data.series[name]);
  });
  var width = Math.max(320, box.clientWidth - 10);
  var plot = new uPlot({ width: width, height: 240, series: series, scales: { x: { time: true } },
                         axes: [{}, { label: "jobs" }] }, columns, box);
  box.setAttribute("data-drawn", String(names.length));
  window.addEventListener("resize", function () { plot.setSize({ width: Math.max(320, box.clientWidth - 10), height: 240 }); });
})();
