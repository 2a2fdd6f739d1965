// The live run panel: one anywidget model per run. All HTML comes from the kernel, already escaped
// (menglong_magic/viewmodel.py); this module only places it and sends the Stop click back.
function render({ model, el }) {
  const root = document.createElement("div");
  root.className = "mm-panel mm-live";
  const header = document.createElement("div");
  const row = document.createElement("div");
  row.className = "mm-progress-row";
  const track = document.createElement("div");
  track.className = "mm-progress";
  const fill = document.createElement("div");
  fill.className = "mm-progress-fill";
  track.appendChild(fill);
  const label = document.createElement("span");
  label.className = "mm-progress-label";
  const stop = document.createElement("button");
  stop.className = "mm-stop";
  stop.type = "button";
  stop.textContent = "■ Stop";
  row.append(track, label, stop);
  const body = document.createElement("div");
  body.className = "mm-body";
  root.append(header, row, body);
  el.appendChild(root);

  const blocks = new Map(); // key -> {node, html}

  function setHeader() {
    header.innerHTML = model.get("header");
  }
  function setProgress() {
    const p = model.get("progress") || {};
    const total = Math.max(p.total || 1, 1);
    fill.style.width = `${Math.round((100 * Math.min(p.done || 0, total)) / total)}%`;
    fill.dataset.status = p.status || "running";
    label.textContent = p.label || "";
  }
  function setStop() {
    const s = model.get("stop");
    stop.hidden = s === "hidden";
    stop.disabled = s !== "enabled";
    stop.textContent = s === "stopping" ? "Stopping…" : "■ Stop";
  }
  function setBody() {
    // Keyed blocks: only changed blocks are replaced, so a finished step the user opened stays open.
    const next = model.get("blocks") || [];
    const seen = new Set();
    let prev = null;
    for (const [key, html] of next) {
      seen.add(key);
      let entry = blocks.get(key);
      if (!entry) {
        const node = document.createElement("div");
        node.className = "mm-block";
        node.innerHTML = html;
        entry = { node, html };
        blocks.set(key, entry);
      } else if (entry.html !== html) {
        entry.node.innerHTML = html;
        entry.html = html;
      }
      const want = prev ? prev.nextSibling : body.firstChild;
      if (want !== entry.node) body.insertBefore(entry.node, want);
      prev = entry.node;
    }
    for (const [key, entry] of blocks) {
      if (!seen.has(key)) {
        entry.node.remove();
        blocks.delete(key);
      }
    }
  }
  stop.addEventListener("click", () => {
    if (stop.disabled) return;
    stop.disabled = true;
    stop.textContent = "Stopping…";
    model.send({ type: "stop" });
  });
  setHeader();
  setProgress();
  setStop();
  setBody();
  model.on("change:header", setHeader);
  model.on("change:progress", setProgress);
  model.on("change:stop", setStop);
  model.on("change:blocks", setBody);
  return () => {
    model.off("change:header", setHeader);
    model.off("change:progress", setProgress);
    model.off("change:stop", setStop);
    model.off("change:blocks", setBody);
  };
}

export default { render };
