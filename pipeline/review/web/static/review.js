// FashionNet review page: plain JavaScript, no build step, no third-party code.
// Every URL is relative to the page, so the app works under any prefix (e.g. /fashionnet-review/).
// Key presses become tasks on one serial queue: a decision's request finishes before the next key is
// applied, so fast typing never applies a key to the wrong item. body[data-queue] counts queued tasks.
"use strict";

(() => {
  const HEADERS = { "X-Requested-With": "fashionnet-review" };
  const SORTS = ["queue", "confidence", "disagreement"];
  const ADVANCING = new Set(["accept", "reject", "skip"]);
  const state = {
    batch: null, sort: "queue", pendingFirst: false, pageSize: 24,
    attributes: {}, attrNames: [], items: [], index: 0, attr: 0,
    history: [], counts: null, batches: [], gridPage: null, gridCells: new Map(),
  };
  const $ = (id) => document.getElementById(id);

  // -- helpers ------------------------------------------------------------------------------------
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "className") node.className = value;
      else if (name === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  let chain = Promise.resolve();
  let queued = 0;
  function enqueue(task) {
    queued += 1;
    document.body.dataset.queue = String(queued);
    chain = chain.then(task).catch((error) => flash(error.message, true)).finally(() => {
      queued -= 1;
      document.body.dataset.queue = String(queued);
    });
    return chain;
  }

  async function api(path, options = {}) {
    const init = { method: options.method || "GET", credentials: "same-origin", headers: { ...HEADERS } };
    if (options.body !== undefined) {
      init.body = JSON.stringify(options.body);
      init.headers["Content-Type"] = "application/json";
    }
    const response = await fetch(path, init);
    if (response.status === 401) {
      window.location.href = "login";
      throw new Error("your session ended: log in again");
    }
    const data = response.status === 204 ? null : await response.json().catch(() => null);
    if (!response.ok) {
      const detail = data && data.detail;
      throw new Error(typeof detail === "string" ? detail : (detail ? JSON.stringify(detail) : response.statusText));
    }
    return data;
  }

  const batchPath = (suffix) => `api/batches/${encodeURIComponent(state.batch)}/${suffix}`;
  const imageUrl = (itemId) => batchPath(`images/${encodeURIComponent(itemId)}`);
  const current = () => state.items[state.index] || null;
  const page = () => Math.floor(state.index / state.pageSize);
  const pageCount = () => Math.max(1, Math.ceil(state.items.length / state.pageSize));
  const pageItems = () => state.items.slice(page() * state.pageSize, (page() + 1) * state.pageSize);

  function flash(message, isError = false) {
    const box = $("flash");
    box.textContent = message;
    box.classList.toggle("error", isError);
  }

  function statusText(item) {
    if (item.status === "pending" && item.last_decision === "skip") return "skipped";
    return item.status;
  }

  // -- loading ------------------------------------------------------------------------------------
  async function loadBatches() {
    const data = await api("api/batches");
    state.batches = data.batches;
    const select = $("batch");
    select.replaceChildren(...state.batches.map((b) =>
      el("option", { value: b.batch_id }, `${b.batch_id} (${b.pending} pending of ${b.items})`)));
    const wanted = new URLSearchParams(window.location.search).get("batch");
    const known = state.batches.map((b) => b.batch_id);
    const firstPending = state.batches.find((b) => b.pending > 0);
    state.batch = known.includes(wanted) ? wanted : (firstPending || state.batches[0] || {}).batch_id || null;
    select.value = state.batch || "";
  }

  async function loadItems(keepItemId = null) {
    if (!state.batch) {
      $("grid").replaceChildren(el("p", { className: "empty" }, "No batch has a review queue yet."));
      return;
    }
    const query = `sort=${state.sort}&pending_first=${state.pendingFirst}`;
    const data = await api(batchPath(`items?${query}`));
    state.attributes = data.attributes;
    state.attrNames = Object.keys(data.attributes);
    state.attr = Math.min(state.attr, Math.max(0, state.attrNames.length - 1));
    state.items = data.items;
    state.counts = data.counts;
    const kept = keepItemId ? state.items.findIndex((item) => item.item_id === keepItemId) : -1;
    state.index = kept >= 0 ? kept : 0;
    state.gridPage = null;
    const params = new URLSearchParams({ batch: state.batch, sort: state.sort });
    if (state.pendingFirst) params.set("pending", "1");
    window.history.replaceState(null, "", `?${params}`);
    render();
    if ($("log-panel").open) await loadLog();
  }

  async function loadLog() {
    if (!state.batch) return;
    const data = await api(batchPath("log?limit=200"));
    $("log").tBodies[0].replaceChildren(...data.decisions.map((d) => el("tr", {},
      el("td", {}, d.decided_at.replace("T", " ").slice(0, 19)), el("td", {}, d.reviewer), el("td", {}, d.item_id),
      el("td", {}, d.decision), el("td", {}, d.attribute || ""), el("td", {}, d.old_label || ""),
      el("td", {}, d.new_label || ""), el("td", {}, d.reason || ""))));
  }

  function applyUpdate(data) {
    const changed = new Map(data.items.map((item) => [item.item_id, item]));
    state.items = state.items.map((item) => changed.get(item.item_id) || item);
    state.counts = data.counts;
  }

  // -- rendering ----------------------------------------------------------------------------------
  function render() {
    renderCounts();
    renderPager();
    renderGrid();
    renderPreview();
  }

  function renderCounts() {
    const c = state.counts;
    $("counts").textContent = c ? `${c.items} items · ${c.pending} pending · ${c.accept} accepted · ${c.reject} rejected` : "";
    const option = Array.from($("batch").options).find((o) => o.value === state.batch);
    if (c && option) option.textContent = `${state.batch} (${c.pending} pending of ${c.items})`;
  }

  function renderPager() {
    const first = page() * state.pageSize + 1;
    const last = Math.min(state.items.length, (page() + 1) * state.pageSize);
    $("pager").textContent = state.items.length
      ? `Page ${page() + 1} of ${pageCount()} · items ${first}-${last} · selected ${state.index + 1}`
      : "This batch is empty.";
  }

  function cell(item, position) {
    const node = el("div", { className: "cell", dataset: { itemId: item.item_id }, title: item.title || item.item_id },
      el("img", { src: imageUrl(item.item_id), alt: item.title || item.item_id, loading: "lazy" }),
      el("span", { className: "badge" }),
      el("span", { className: "position" }, String(position + 1)),
      item.members.length ? el("span", { className: "members" }, `+${item.members.length}`) : null);
    node.addEventListener("click", () => enqueue(() => select(position)));
    return node;
  }

  function renderGrid() {
    const grid = $("grid");
    const key = `${state.batch}|${state.sort}|${state.pendingFirst}|${state.pageSize}|${page()}`;
    if (state.gridPage !== key) {
      state.gridPage = key;
      state.gridCells = new Map();
      const start = page() * state.pageSize;
      grid.replaceChildren(...pageItems().map((item, n) => {
        const node = cell(item, start + n);
        state.gridCells.set(item.item_id, node);
        return node;
      }));
    }
    const selected = current();
    for (const item of pageItems()) {
      const node = state.gridCells.get(item.item_id);
      if (!node) continue;
      const text = statusText(item);
      node.dataset.status = text;
      node.className = `cell status-${text}` + (selected && item.item_id === selected.item_id ? " selected" : "");
      node.querySelector(".badge").textContent = text;
    }
    const active = grid.querySelector(".cell.selected");
    if (active) active.scrollIntoView({ block: "nearest" });
  }

  function figure(itemId, caption, className) {
    return el("figure", { className },
      el("img", { src: imageUrl(itemId), alt: caption }), el("figcaption", {}, caption));
  }

  function labelText(label) {
    return label && label.label ? label.label : "—";
  }

  function renderPreview() {
    const item = current();
    if (!item) {
      $("preview").replaceChildren();
      $("details").replaceChildren();
      return;
    }
    const members = item.members.map((m) =>
      figure(m.item_id, `dropped ${m.item_id} · ${m.kind} · distance ${m.distance}`, "member"));
    const side = members.length ? members
      : [el("p", { className: "note" }, "No duplicates were dropped for this item.")];
    $("preview").replaceChildren(el("div", { className: "cluster", dataset: { itemId: item.item_id } },
      figure(item.item_id, `${item.item_id} · ${statusText(item)}`, "main"),
      el("div", { className: "members", "aria-label": "duplicate cluster" }, side)));

    const link = /^https?:\/\//.test(item.product_url || "")
      ? el("a", { href: item.product_url, target: "_blank", rel: "noopener noreferrer" }, "shop page") : null;
    const rows = state.attrNames.map((name, n) => {
      const prediction = item.predictions[name];
      const disagrees = item.disagreements.includes(name);
      return el("tr", { className: (n === state.attr ? "selected" : "") + (disagrees ? " disagrees" : ""),
        dataset: { attribute: name } },
      el("th", {}, name),
      el("td", { className: "current" }, labelText(item.labels[name]),
        el("small", {}, item.labels[name] && item.labels[name].source ? ` ${item.labels[name].source}` : "")),
      el("td", {}, labelText(item.weak[name])),
      el("td", {}, prediction ? `${prediction.label} (${(prediction.confidence * 100).toFixed(0)}%)` : "—"));
    });
    const attribute = state.attrNames[state.attr];
    const classes = (state.attributes[attribute] || []).map((label, n) => el("span", {
      className: "class" + (item.labels[attribute] && item.labels[attribute].label === label ? " chosen" : ""),
    }, el("kbd", {}, String(n + 1)), ` ${label}`));
    $("details").replaceChildren(
      el("h2", {}, item.title || item.item_id),
      el("p", { className: "meta" }, `${item.retailer || ""} · ${item.width}×${item.height} · ${item.item_id} · `,
        el("span", { className: `status status-${statusText(item)}` }, statusText(item)), " ", link),
      el("table", { className: "attrs" },
        el("thead", {}, el("tr", {}, el("th", {}, "attribute"), el("th", {}, "label now"), el("th", {}, "weak label"),
          el("th", {}, "model"))),
        el("tbody", {}, rows)),
      el("p", { className: "classes" }, el("strong", {}, `${attribute}: `), classes, " ",
        el("span", { className: "class" }, el("kbd", {}, "0"), " clear")));
  }

  // -- actions ------------------------------------------------------------------------------------
  function select(position) {
    if (!state.items.length) return;
    state.index = Math.max(0, Math.min(state.items.length - 1, position));
    render();
  }

  async function send(decisions) {
    const data = await api(batchPath("decisions"), { method: "POST", body: { decisions } });
    applyUpdate(data);
    return data;
  }

  async function decide(kind) {
    const item = current();
    if (!item) return;
    await send([{ item_id: item.item_id, decision: kind }]);
    state.history.push([item.item_id]);
    flash(`${kind} ${item.item_id}`);
    if (ADVANCING.has(kind) && state.index < state.items.length - 1) state.index += 1;
    render();
    if ($("log-panel").open) await loadLog();
  }

  async function relabel(number) {
    const item = current();
    const attribute = state.attrNames[state.attr];
    if (!item || !attribute) return;
    const classes = state.attributes[attribute];
    if (number > classes.length) {
      flash(`${attribute} has only ${classes.length} classes`, true);
      return;
    }
    const label = number === 0 ? null : classes[number - 1];
    await send([{ item_id: item.item_id, decision: "relabel", attribute, new_label: label }]);
    state.history.push([item.item_id]);
    flash(`${item.item_id}: ${attribute} = ${label === null ? "(cleared)" : label}`);
    render();
    if ($("log-panel").open) await loadLog();
  }

  async function undo() {
    let itemIds = state.history.pop();
    if (!itemIds) {
      const item = current();
      if (!item || !item.last_decision) {
        flash("nothing to undo", true);
        return;
      }
      itemIds = [item.item_id];
    }
    await send(itemIds.map((id) => ({ item_id: id, decision: "undo" })));
    const position = state.items.findIndex((item) => item.item_id === itemIds[0]);
    if (position >= 0) state.index = position;
    flash(`undone: ${itemIds.join(", ")}`);
    render();
    if ($("log-panel").open) await loadLog();
  }

  async function acceptPage() {
    const ids = pageItems().map((item) => item.item_id);
    if (!ids.length) return;
    const data = await api(batchPath("accept-page"), { method: "POST", body: { item_ids: ids } });
    applyUpdate(data);
    if (data.accepted.length) state.history.push(data.accepted);
    flash(data.accepted.length ? `accepted this page's ${data.accepted.length} pending: ${data.accepted.join(", ")}`
      : "nothing pending on this page");
    render();
    if ($("log-panel").open) await loadLog();
  }

  function cycleAttribute(delta) {
    const n = state.attrNames.length;
    if (!n) return;
    state.attr = (state.attr + delta + n) % n;
    renderPreview();
  }

  function movePage(delta) {
    const target = (page() + delta) * state.pageSize;
    if (target < 0 || target >= state.items.length) return;
    select(target);
  }

  async function resort(sort, pendingFirst) {
    state.sort = sort;
    state.pendingFirst = pendingFirst;
    $("sort").value = sort;
    $("pending-first").checked = pendingFirst;
    const item = current();
    await loadItems(item ? item.item_id : null);
  }

  function keyAction(event) {
    const key = event.key;
    if (/^[0-9]$/.test(key)) return () => relabel(Number(key));
    switch (key) {
      case "a": return () => decide("accept");
      case "A": return acceptPage;
      case "r": return () => decide("reject");
      case "s": return () => decide("skip");
      case "u": return undo;
      case "j": case "ArrowRight": return () => select(state.index + 1);
      case "k": case "ArrowLeft": return () => select(state.index - 1);
      case "]": return () => movePage(1);
      case "[": return () => movePage(-1);
      case "Tab": return () => cycleAttribute(event.shiftKey ? -1 : 1);
      case "ArrowDown": return () => cycleAttribute(1);
      case "ArrowUp": return () => cycleAttribute(-1);
      case "o": return () => resort(SORTS[(SORTS.indexOf(state.sort) + 1) % SORTS.length], state.pendingFirst);
      case "p": return () => resort(state.sort, !state.pendingFirst);
      default: return null;
    }
  }

  function onKey(event) {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const target = event.target;
    if (target && ["INPUT", "SELECT", "TEXTAREA", "BUTTON"].includes(target.tagName)) {
      if (event.key === "Escape") target.blur();
      return;
    }
    const action = keyAction(event);
    if (!action) return;
    event.preventDefault();
    enqueue(action);
  }

  // -- start --------------------------------------------------------------------------------------
  function bindControls() {
    document.addEventListener("keydown", onKey);
    const blurAfter = (handler) => (event) => { event.target.blur(); enqueue(handler); };
    $("batch").addEventListener("change", blurAfter(async () => {
      state.batch = $("batch").value;
      state.history = [];
      await loadItems();
    }));
    $("sort").addEventListener("change", blurAfter(() => resort($("sort").value, state.pendingFirst)));
    $("pending-first").addEventListener("change", blurAfter(() => resort(state.sort, $("pending-first").checked)));
    $("page-size").addEventListener("change", blurAfter(async () => {
      state.pageSize = Number($("page-size").value);
      render();
    }));
    $("log-panel").addEventListener("toggle", () => { if ($("log-panel").open) enqueue(loadLog); });
    $("logout").addEventListener("click", () => enqueue(async () => {
      await api("logout", { method: "POST" });
      window.location.href = "login";
    }));
  }

  async function start() {
    const params = new URLSearchParams(window.location.search);
    if (SORTS.includes(params.get("sort"))) state.sort = params.get("sort");
    state.pendingFirst = params.get("pending") === "1";
    $("sort").value = state.sort;
    $("pending-first").checked = state.pendingFirst;
    state.pageSize = Number($("page-size").value);
    bindControls();
    const me = await api("api/me");
    $("who").textContent = `reviewer: ${me.reviewer}`;
    await loadBatches();
    await loadItems();
    document.body.dataset.ready = "1";
  }

  document.addEventListener("DOMContentLoaded", () => enqueue(start));
})();
