// Charts of the console's pages (Chart.js, served from the package). Each page puts its data in
// the page itself: data-curves on the models page, a JSON script element on the experiments page.
(function () {
  const palette = ["#2f6fdf", "#d9822b", "#2e9d5b", "#a23fb0", "#c23b3b", "#5b6b84"];
  const curves = document.getElementById("curves");
  if (curves && window.Chart) {
    const data = JSON.parse(curves.dataset.curves || "{}");
    const versions = Object.keys(data).slice(0, 6);
    new Chart(curves, {
      type: "line",
      data: {
        datasets: versions.map((v, n) => ({
          label: v + " validation",
          data: data[v].map((e) => ({ x: e.epoch, y: e.metric })),
          borderColor: palette[n % palette.length],
        })),
      },
      options: { parsing: true, scales: { x: { type: "linear", title: { display: true, text: "epoch" } } } },
    });
  }
  const holder = document.getElementById("chart-data");
  if (holder && window.Chart) {
    const data = JSON.parse(holder.textContent);
    const ctr = data.click_through;
    const rates = document.getElementById("rates");
    new Chart(rates, {
      type: "bar",
      data: {
        labels: data.variants,
        datasets: [
          { label: "95 % interval", data: data.variants.map((v) => ctr[v].overall ? [ctr[v].overall[1], ctr[v].overall[2]] : null), backgroundColor: "#9bbcf2", order: 1 },
          { type: "line", showLine: false, pointRadius: 6, label: "click-through", data: data.variants.map((v) => (ctr[v].overall ? ctr[v].overall[0] : null)), borderColor: "#1d2433", backgroundColor: "#1d2433", order: 0 },
        ],
      },
      options: { indexAxis: "x", scales: { y: { beginAtZero: true } } },
    });
    new Chart(document.getElementById("daily"), {
      type: "line",
      data: {
        labels: data.days,
        datasets: data.variants.flatMap((v, n) => [
          { label: v, data: ctr[v].daily.map((e) => (e ? e[0] : null)), borderColor: palette[n % palette.length] },
          { label: v + " low", data: ctr[v].daily.map((e) => (e ? e[1] : null)), borderColor: palette[n % palette.length], borderDash: [4, 4], pointRadius: 0 },
          { label: v + " high", data: ctr[v].daily.map((e) => (e ? e[2] : null)), borderColor: palette[n % palette.length], borderDash: [4, 4], pointRadius: 0 },
        ]),
      },
      options: { scales: { y: { beginAtZero: true } } },
    });
  }
})();
