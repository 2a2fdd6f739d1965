// The live run panel: one anywidget model per run. All HTML comes from the kernel, already escaped
// (menglong_magic/ui/state.py); this module only places it and sends the Stop and Approve / Deny clicks back.

// How long a click may go unanswered before the panel says the front end is holding it.
const NO_ANSWER_MS = 4000;
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
  // Calls the kernel asks about whose card is not shown (an older, summarised iteration): controls land here.
  const orphans = document.createElement("div");
  orphans.className = "mm-approvals-orphans";
  root.append(header, row, body, orphans);
  el.appendChild(root);

  const blocks = new Map(); // key -> {node, html}
  // Approve / Deny controls, one per call the kernel asks about (the "approvals" trait). Built once and moved
  // into the card's .mm-approval-slot after each re-render, so a half-typed reason survives other updates.
  const controls = new Map(); // call_id -> {node, reason, timer}

  function makeControls(callId, text) {
    const node = document.createElement("div");
    node.className = "mm-approval";
    const label = document.createElement("span");
    label.className = "mm-approval-label";
    label.textContent = text || callId;
    const approve = document.createElement("button");
    approve.type = "button";
    approve.className = "mm-approve";
    approve.textContent = "Approve";
    const deny = document.createElement("button");
    deny.type = "button";
    deny.className = "mm-deny";
    deny.textContent = "Deny";
    const reason = document.createElement("input");
    reason.type = "text";
    reason.className = "mm-reason";
    reason.placeholder = "reason (optional, sent with Deny)";
    reason.maxLength = 1000;
    const note = document.createElement("div");
    note.className = "mm-approval-note";
    note.hidden = true;
    node.append(label, approve, deny, reason, note);
    const entry = { node, reason, timer: null };
    function answer(approved) {
      if (approve.disabled) return;
      approve.disabled = deny.disabled = reason.disabled = true;
      note.hidden = false;
      note.textContent = approved ? "approving…" : "denying…";
      model.send({ type: "approval", call_id: callId, approved, reason: approved ? "" : reason.value });
      entry.timer = setTimeout(() => {
        // Still listed by the kernel: the click has not reached it.
        if (!controls.has(callId)) return;
        note.classList.add("mm-approval-stuck");
        note.textContent =
          "The kernel has not received this answer yet: this front end delivers widget messages to a running " +
          "cell only when the cell ends (JupyterLab ≥ 4.4 with ipykernel ≥ 7 delivers them at once). " +
          "Interrupt the cell and run it with --bg to approve from the panel, or pass approve= to the agent.";
      }, NO_ANSWER_MS);
    }
    approve.addEventListener("click", () => answer(true));
    deny.addEventListener("click", () => answer(false));
    reason.addEventListener("keydown", (e) => {
      if (e.key === "Enter") {
        e.preventDefault();
        answer(false);
      }
      e.stopPropagation(); // keep notebook shortcuts out of the reason box
    });
    return entry;
  }

  function placeControls() {
    const active = document.activeElement;
    const typing = active && active.classList && active.classList.contains("mm-reason") && root.contains(active);
    const range = typing ? [active.selectionStart, active.selectionEnd] : null;
    const placed = new Set();
    for (const slot of body.querySelectorAll(".mm-approval-slot")) {
      const entry = controls.get(slot.dataset.callId);
      if (!entry) continue;
      placed.add(slot.dataset.callId);
      if (entry.node.parentNode !== slot) slot.replaceChildren(entry.node);
    }
    for (const [id, entry] of controls) {
      if (!placed.has(id) && entry.node.parentNode !== orphans) orphans.appendChild(entry.node);
    }
    if (typing && active.isConnected && document.activeElement !== active) {
      active.focus();
      if (range) active.setSelectionRange(range[0], range[1]);
    }
  }

  function setApprovals() {
    const listed = model.get("approvals") || [];
    const pending = new Set(listed.map(([id]) => id));
    for (const [id, entry] of controls) {
      if (!pending.has(id)) {
        clearTimeout(entry.timer);
        entry.node.remove();
        controls.delete(id);
      }
    }
    for (const [id, text] of listed) {
      if (!controls.has(id)) controls.set(id, makeControls(id, text));
    }
    placeControls();
  }

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
    placeControls();
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
  setApprovals();
  model.on("change:header", setHeader);
  model.on("change:progress", setProgress);
  model.on("change:stop", setStop);
  model.on("change:blocks", setBody);
  model.on("change:approvals", setApprovals);
  return () => {
    model.off("change:approvals", setApprovals);
    for (const entry of controls.values()) clearTimeout(entry.timer);
    model.off("change:header", setHeader);
    model.off("change:progress", setProgress);
    model.off("change:stop", setStop);
    model.off("change:blocks", setBody);
  };
}

export default { render };
