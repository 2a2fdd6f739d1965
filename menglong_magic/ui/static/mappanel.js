// The live map panel: one anywidget model per map. All HTML comes from the kernel, already escaped
// (menglong_magic/ui/mapview.py). Stats, progress and the last rows are traits; failures arrive as appended
// messages ({type: "failures", html: [...]}) so an update costs the same at item 10 and item 100,000.
function render({ model, el }) {
  const root = document.createElement("div");
  root.className = "mm-panel mm-map mm-live";
  const title = document.createElement("div");
  title.className = "mm-map-title";
  const stats = document.createElement("div");
  const row = document.createElement("div");
  row.className = "mm-progress-row";
  const track = document.createElement("div");
  track.className = "mm-progress";
  const fill = document.createElement("div");
  fill.className = "mm-progress-fill";
  track.appendChild(fill);
  const stop = document.createElement("button");
  stop.className = "mm-stop";
  stop.type = "button";
  stop.textContent = "■ Stop";
  row.append(track, stop);
  const rows = document.createElement("div");
  const failures = document.createElement("details");
  const failuresSummary = document.createElement("summary");
  const failuresList = document.createElement("div");
  failures.append(failuresSummary, failuresList);
  failures.hidden = true;
  root.append(title, stats, row, rows, failures);
  el.appendChild(root);
  let failed = 0;

  function update() {
    title.textContent = model.get("title");
    stats.innerHTML = model.get("stats");
    rows.innerHTML = model.get("rows");
    const p = model.get("progress") || {};
    const pct = p.total ? Math.min(100, (100 * (p.done || 0)) / p.total) : 0;
    fill.style.width = pct + "%";
    fill.style.background = p.failed ? "#bf8700" : "#1f6feb";
    const state = model.get("stop");
    stop.hidden = state === "hidden";
    stop.disabled = state !== "enabled";
  }
  stop.addEventListener("click", () => {
    if (stop.disabled) return;
    stop.disabled = true;
    stop.textContent = "Stopping…"; // as the run panel says it
    model.send({ type: "stop" });
  });
  function onMessage(msg) {
    if (!msg || msg.type !== "failures") return;
    for (const html of msg.html) {
      const item = document.createElement("div");
      item.innerHTML = html;
      failuresList.appendChild(item.firstChild || item);
      failed += 1;
    }
    failures.hidden = false;
    failuresSummary.textContent = failed + " failed";
  }
  model.on("change", update);
  model.on("msg:custom", onMessage);
  update();
  return () => {
    model.off("change", update);
    model.off("msg:custom", onMessage);
  };
}
export default { render };
