// optpilot dashboard: plain JS, no build step, no external URL. Every figure comes from the JSON
// API, called with the API key kept in sessionStorage (Authorization: Bearer).
"use strict";

(() => {
  const KEY_STORAGE = "optpilot.apiKey";
  const ACTIVE = ["queued", "running"];
  const FAMILIES = ["linear", "mlp", "cnn", "rnn", "transformer", "gnn", "other"];
  const TASK_TYPES = ["classification", "regression", "language_modeling", "generation",
    "reinforcement_learning", "other"];
  const authMeta = document.querySelector('meta[name="optpilot-auth"]');
  const authRequired = authMeta !== null && authMeta.content === "required";
  const view = document.getElementById("view");
  const banner = document.getElementById("banner");
  let routeToken = 0;
  let reportUrl = null;
  let catalogs = null;

  // -- helpers -------------------------------------------------------------------------------

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "text") el.textContent = value;
      else if (name === "on") for (const [ev, fn] of Object.entries(value)) el.addEventListener(ev, fn);
      else if (name === "class") el.className = value;
      else if (value === true) el.setAttribute(name, "");
      else el.setAttribute(name, String(value));
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  function fmt(value, digits = 4) {
    if (typeof value !== "number" || !Number.isFinite(value)) return "—";
    if (value === 0) return "0";
    const a = Math.abs(value);
    if (a >= 1e-3 && a < 1e6) return String(Number(value.toPrecision(digits)));
    return value.toExponential(digits - 1).replace(/\.?0+e/, "e").replace("e+", "e");
  }

  function count(value) {
    return typeof value === "number" && Number.isFinite(value) ? value.toLocaleString("en-US") : "—";
  }

  function when(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? "—" : d.toLocaleString();
  }

  function hps(values) {
    return Object.entries(values || {}).map(([k, v]) => `${k}=${typeof v === "number" ? fmt(v) : v}`)
      .join(", ");
  }

  function badge(status) { return h("span", { class: `badge ${status}`, text: status }); }

  function progressBar(p) {
    const pct = p.total ? Math.min(100, (100 * p.finished) / p.total) : 0;
    return h("span", {},
      h("span", { class: "progress", title: `${p.finished} of ${p.total} finished` },
        h("span", { style: `width:${pct.toFixed(1)}%` })),
      h("span", { class: "progress-text", text: `${p.finished}/${p.total}` }));
  }

  function showBanner(message, isError) {
    banner.hidden = !message;
    banner.className = isError ? "banner error" : "banner";
    banner.textContent = message || "";
  }

  // -- API -----------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, title, detail, errors) {
      super(detail ? `${title}: ${detail}` : title);
      this.status = status;
      this.errors = errors || [];
    }
  }

  function getKey() { return sessionStorage.getItem(KEY_STORAGE) || ""; }

  async function api(path, options = {}) {
    const accept = options.accept || "application/json";
    const headers = { Accept: `${accept}, application/problem+json` };
    const key = getKey();
    if (key) headers.Authorization = `Bearer ${key}`;
    const init = { method: options.method || "GET", headers, cache: "no-store" };
    if (options.body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(options.body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (err) {
      throw new ApiError(0, "The server could not be reached", String(err));
    }
    if (!response.ok) {
      let problem = {};
      try { problem = await response.json(); } catch (err) { problem = {}; }
      const error = new ApiError(response.status, problem.title || response.statusText,
        problem.detail, problem.errors);
      if (response.status === 401) {
        showBanner("The server refused the API key (401): enter a valid key above.", true);
      }
      throw error;
    }
    return accept === "application/json" ? response.json() : response.text();
  }

  function needsKey() {
    if (authRequired && !getKey()) {
      showBanner("This server needs an API key: enter it above (it stays in this tab only).");
      view.replaceChildren(h("p", { class: "muted", text: "Waiting for an API key." }));
      return true;
    }
    return false;
  }

  function errorBox(err) {
    const box = h("div", { class: "card error" }, h("b", { text: err.message || String(err) }));
    if (err.errors && err.errors.length) {
      box.append(h("ul", {}, err.errors.map((e) => h("li", { text: `${e.field}: ${e.msg}` }))));
    }
    return box;
  }

  async function loadCatalogs() {
    if (catalogs === null) {
      const [opts, wls] = await Promise.all([api("/v1/optimizers"), api("/v1/workloads")]);
      catalogs = { optimizers: opts.items.map((o) => o.name), workloads: wls.items };
    }
    return catalogs;
  }

  // Repeats fn every interval (fn returns the next delay in ms, or null to stop) until the
  // route changes.
  function poll(fn) {
    const token = routeToken;
    const tick = async () => {
      if (token !== routeToken) return;
      let delay = null;
      try { delay = await fn(); } catch (err) { delay = 5000; }
      if (delay !== null && token === routeToken) setTimeout(tick, delay);
    };
    tick();
  }

  // -- key box -------------------------------------------------------------------------------

  function setupKeyBox() {
    const input = document.getElementById("api-key");
    const state = document.getElementById("key-state");
    const refresh = () => {
      state.textContent = getKey() ? "key set" : (authRequired ? "key needed" : "auth off");
    };
    document.getElementById("key-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const value = input.value.trim();
      if (value) sessionStorage.setItem(KEY_STORAGE, value);
      input.value = "";
      catalogs = null;
      showBanner("");
      refresh();
      route();
    });
    document.getElementById("key-clear").addEventListener("click", () => {
      sessionStorage.removeItem(KEY_STORAGE);
      catalogs = null;
      refresh();
      route();
    });
    refresh();
  }

  // -- jobs ----------------------------------------------------------------------------------

  function showJobs() {
    const status = h("select", { id: "job-status-filter" },
      h("option", { value: "", text: "any status" }),
      ["queued", "running", "completed", "failed", "cancelled"].map(
        (s) => h("option", { value: s, text: s })));
    const tableBox = h("div", { id: "jobs-table" }, h("p", { class: "muted", text: "Loading…" }));
    const updated = h("span", { class: "muted" });
    const launchBox = h("div", { class: "card" });
    view.replaceChildren(h("h1", { text: "Tuning jobs" }), launchBox,
      h("div", { class: "row" }, h("label", {}, "Show ", status), updated), tableBox);
    renderLaunch(launchBox);
    let again = null;
    status.addEventListener("change", () => { if (again) again(); });
    poll(async () => {
      again = null;
      const query = status.value ? `&status=${encodeURIComponent(status.value)}` : "";
      let page;
      try {
        page = await api(`/v1/jobs?limit=100${query}`);
      } catch (err) {
        tableBox.replaceChildren(errorBox(err));
        return err.status === 401 ? null : 5000;
      }
      tableBox.replaceChildren(jobsTable(page));
      updated.textContent = `${page.total} job(s), updated ${new Date().toLocaleTimeString()}`;
      return page.items.some((j) => ACTIVE.includes(j.status)) ? 2000 : 10000;
    });
  }

  function jobsTable(page) {
    if (!page.items.length) return h("p", { class: "muted", text: "No job yet." });
    return h("table", { id: "jobs" },
      h("thead", {}, h("tr", {}, ["job", "status", "workload", "progress", "completed / pruned / failed",
        "best", "created"].map((c) => h("th", { text: c })))),
      h("tbody", {}, page.items.map((job) => {
        const p = job.progress;
        return h("tr", { "data-job": job.id },
          h("td", {}, h("a", { href: `#/jobs/${encodeURIComponent(job.id)}`, text: job.id.slice(0, 12) })),
          h("td", {}, badge(job.status)),
          h("td", { text: job.workload || "(client)" }),
          h("td", {}, progressBar(p)),
          h("td", { class: "num", text: `${p.completed} / ${p.pruned} / ${p.failed}` }),
          h("td", { text: job.best ? `${fmt(job.best.value)} (${job.best.optimizer})` : "—" }),
          h("td", { text: when(job.created_at) }));
      })));
  }

  async function renderLaunch(box) {
    let cat;
    try { cat = await loadCatalogs(); } catch (err) { box.replaceChildren(errorBox(err)); return; }
    const workload = h("select", { name: "workload" },
      cat.workloads.map((w) => h("option", { value: w.name, text: `${w.name} (${w.metric})` })));
    const trials = h("input", { name: "n_trials", type: "number", min: 1, max: 10000, value: 20 });
    const seed = h("input", { name: "seed", type: "number", min: 0, placeholder: "random" });
    const namespace = h("input", { name: "namespace", placeholder: "default" });
    const useHistory = h("input", { type: "checkbox", name: "use_history", checked: true });
    const message = h("span", { class: "muted" });
    const form = h("form", { id: "launch-form" },
      h("div", { class: "form-grid" },
        h("label", {}, "workload", workload), h("label", {}, "trials", trials),
        h("label", {}, "seed", seed), h("label", {}, "namespace", namespace),
        h("label", { class: "check" }, useHistory, "learn from past jobs"),
        h("div", {}, h("button", { type: "submit", text: "Launch job" }))), message);
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const body = { workload: workload.value, n_trials: Number(trials.value) };
      if (seed.value !== "") body.seed = Number(seed.value);
      Object.assign(body, historyFields(namespace.value, useHistory.checked));
      try {
        const job = await api("/v1/jobs", { method: "POST", body });
        location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
      } catch (err) {
        message.replaceChildren(errorBox(err));
      }
    });
    box.replaceChildren(h("b", { text: "Launch a tuning job on a workload" }), form);
  }

  // -- one job -------------------------------------------------------------------------------

  function showJob(jobId) {
    const head = h("div", { class: "card", id: "job-head" }, h("p", { class: "muted", text: "Loading…" }));
    const frame = h("iframe", { class: "report-frame", id: "report", title: "job report",
      sandbox: "allow-same-origin" });
    const download = h("a", { id: "report-download", download: `optpilot-report-${jobId}.html`,
      text: "Download report" });  // href (a blob: URL) once the report is loaded
    const refreshBtn = h("button", { type: "button", class: "secondary", text: "Refresh report" });
    const reportState = h("span", { class: "muted" });
    view.replaceChildren(
      h("p", {}, h("a", { href: "#/jobs", text: "← all jobs" })),
      head,
      h("div", { class: "row" }, refreshBtn, download, reportState),
      frame);
    frame.addEventListener("load", () => {
      try {
        const doc = frame.contentDocument;
        if (doc && doc.documentElement) {
          frame.style.height = `${doc.documentElement.scrollHeight + 24}px`;
        }
      } catch (err) { /* a cross-origin frame keeps its default height */ }
    });
    let lastFinished = -1;
    let lastStatus = null;
    let lastReport = 0;
    const loadReport = async () => {
      reportState.textContent = "building report…";
      try {
        const html = await api(`/v1/jobs/${encodeURIComponent(jobId)}/report`, { accept: "text/html" });
        frame.srcdoc = html;
        if (reportUrl) URL.revokeObjectURL(reportUrl);
        reportUrl = URL.createObjectURL(new Blob([html], { type: "text/html" }));
        download.href = reportUrl;
        reportState.textContent = `report updated ${new Date().toLocaleTimeString()}`;
      } catch (err) {
        reportState.textContent = err.message;
      }
      lastReport = Date.now();
    };
    refreshBtn.addEventListener("click", loadReport);
    poll(async () => {
      let job;
      try {
        job = await api(`/v1/jobs/${encodeURIComponent(jobId)}`);
      } catch (err) {
        head.replaceChildren(errorBox(err));
        return err.status === 401 || err.status === 404 ? null : 5000;
      }
      renderJobHead(head, job);
      const active = ACTIVE.includes(job.status);
      const changed = job.status !== lastStatus || job.progress.finished !== lastFinished;
      if (lastStatus === null || (changed && (!active || Date.now() - lastReport > 10000))) {
        lastStatus = job.status;
        lastFinished = job.progress.finished;
        await loadReport();
      }
      return active ? 2000 : null;
    });
  }

  function renderJobHead(head, job) {
    const p = job.progress;
    const parts = [
      h("h1", {}, `Job ${job.id} `, badge(job.status)),
      h("div", { class: "row" },
        h("span", {}, progressBar(p)),
        h("span", { text: `${p.completed} completed, ${p.pruned} pruned, ${p.failed} failed, ` +
          `${p.running} running${p.retried ? `, ${p.retried} retried` : ""}` }),
        h("span", { text: `workload ${job.workload || "(client-evaluated)"}` }),
        h("span", { text: `namespace ${job.namespace}` +
          (job.use_history ? ", learns from its history" : ", history off") }),
        h("span", { text: job.best ? `best ${fmt(job.best.value)} with ${job.best.optimizer} ` +
          `(${hps(job.best.hyperparameters)})` : "no completed trial yet" })),
    ];
    if (job.error) parts.push(h("p", { class: "error", text: job.error }));
    if (ACTIVE.includes(job.status)) {
      const cancel = h("button", { type: "button", class: "secondary", text: "Cancel job" });
      cancel.addEventListener("click", async () => {
        cancel.disabled = true;
        try { await api(`/v1/jobs/${encodeURIComponent(job.id)}/cancel`, { method: "POST" }); }
        catch (err) { head.append(errorBox(err)); }
      });
      parts.push(h("div", { class: "actions" }, cancel));
    }
    head.replaceChildren(...parts);
  }

  // -- results -------------------------------------------------------------------------------

  const RESULT_FILTERS = ["model_family", "task_type", "optimizer", "workload", "min_parameters",
    "max_parameters"];

  async function showResults(query) {
    const token = routeToken;
    view.replaceChildren(h("h1", { text: "Results" }), h("p", { class: "muted", text: "Loading…" }));
    let cat;
    try { cat = await loadCatalogs(); } catch (err) { view.replaceChildren(errorBox(err)); return; }
    if (token !== routeToken) return;
    const select = (name, options, label) => h("label", {}, label,
      h("select", { name }, h("option", { value: "", text: "any" }),
        options.map((o) => h("option", { value: o, text: o, selected: query.get(name) === o }))));
    const sizeInput = (name, label) => h("label", {}, label,
      h("input", { name, type: "text", inputmode: "numeric", placeholder: "e.g. 1e6",
        value: query.get(name) || "" }));
    const form = h("form", { id: "results-form", class: "card" },
      h("div", { class: "form-grid" },
        select("model_family", FAMILIES, "model family"),
        select("task_type", TASK_TYPES, "task type"),
        select("optimizer", cat.optimizers, "winning optimizer"),
        select("workload", cat.workloads.map((w) => w.name), "workload"),
        sizeInput("min_parameters", "min parameters"),
        sizeInput("max_parameters", "max parameters")),
      h("div", { class: "actions" }, h("button", { type: "submit", text: "Apply filters" }),
        h("a", { href: "#/results", text: "clear" })));
    const out = h("div", { id: "results-out" });
    view.replaceChildren(h("h1", { text: "Results" }), form, out);
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const params = new URLSearchParams();
      for (const name of RESULT_FILTERS) {
        const raw = form.elements[name].value.trim();
        if (!raw) continue;
        params.set(name, name.endsWith("_parameters") ? String(Math.round(Number(raw))) : raw);
      }
      const target = `#/results${params.toString() ? `?${params}` : ""}`;
      if (location.hash === target) route(); else location.hash = target;
    });
    const filters = new URLSearchParams();
    for (const name of RESULT_FILTERS) if (query.get(name)) filters.set(name, query.get(name));
    const offset = Number(query.get("offset") || 0);
    try {
      const [summary, page] = await Promise.all([
        api(`/v1/results/summary?${filters}`),
        api(`/v1/results?${filters}&limit=20&offset=${offset}`)]);
      out.replaceChildren(summaryCard(summary), resultsTable(page, filters));
    } catch (err) {
      out.replaceChildren(errorBox(err));
    }
  }

  function summaryCard(summary) {
    const card = h("div", { class: "card", id: "results-summary" },
      h("b", { text: `Which optimizer won: ${summary.decided} of ${summary.total} result(s) decided` }));
    if (summary.optimizers.length) {
      card.append(h("table", {},
        h("thead", {}, h("tr", {}, ["optimizer", "wins", "share", "median best", "metric"].map(
          (c) => h("th", { text: c })))),
        h("tbody", {}, summary.optimizers.map((o) => h("tr", {},
          h("td", { text: o.optimizer }), h("td", { class: "num", text: o.wins }),
          h("td", { class: "num", text: `${Math.round(100 * (o.share || 0))}%` }),
          h("td", { class: "num", text: fmt(o.median_best_value) }),
          h("td", { text: o.metric || "—" }))))));
    }
    if (typeof summary.prior_agreement === "number") {
      card.append(h("p", { class: "muted",
        text: `The prior's top choice won ${Math.round(100 * summary.prior_agreement)}% of them.` }));
    }
    return card;
  }

  function resultsTable(page, filters) {
    if (!page.items.length) return h("p", { class: "muted", text: "No result matches." });
    const table = h("table", { id: "results" },
      h("thead", {}, h("tr", {}, ["job", "workload", "family", "task", "parameters", "best",
        "optimizer", "prior's top", "trials", "created"].map((c) => h("th", { text: c })))),
      h("tbody", {}, page.items.map((r) => h("tr", {},
        h("td", {}, h("a", { href: `#/jobs/${encodeURIComponent(r.job_id)}`, text: r.job_id.slice(0, 12) })),
        h("td", { text: r.workload || "(client)" }),
        h("td", { text: r.model_family }), h("td", { text: r.task_type }),
        h("td", { class: "num", text: count(r.num_parameters) }),
        h("td", { class: "num", text: `${fmt(r.best_value)} ${r.metric}` }),
        h("td", { text: r.best_optimizer || "—" }),
        h("td", { text: r.prior_top ? `${r.prior_top}${r.prior_top === r.best_optimizer ? " ✓" : ""}` : "—" }),
        h("td", { class: "num", text: r.trials_used }),
        h("td", { text: when(r.created_at) })))));
    const pager = h("div", { class: "pager" },
      h("span", { class: "muted", text: `${page.offset + 1}–${page.offset + page.items.length} of ${page.total}` }));
    const link = (offset, text) => {
      const params = new URLSearchParams(filters);
      params.set("offset", String(offset));
      return h("a", { href: `#/results?${params}`, text });
    };
    if (page.offset > 0) pager.append(link(Math.max(0, page.offset - page.limit), "← newer"));
    if (page.offset + page.items.length < page.total) pager.append(link(page.offset + page.limit, "older →"));
    return h("div", {}, table, pager);
  }

  // -- insights ------------------------------------------------------------------------------

  function share(row) {
    return typeof row.top_pick_won === "number" ?
      `${Math.round(100 * row.top_pick_won)}% of ${row.decided}` : "—";
  }

  function lrRatio(row) {
    return typeof row.median_lr_ratio === "number" ? `×${fmt(row.median_lr_ratio, 3)} (${row.lr_jobs})` : "—";
  }

  async function showInsights(query) {
    const namespace = query.get("namespace") || "default";
    const form = h("form", { id: "insights-form", class: "card" },
      h("div", { class: "form-grid" },
        h("label", {}, "namespace", h("input", { name: "namespace", type: "text", value: namespace,
          spellcheck: "false", placeholder: "default" }))),
      h("div", { class: "actions" }, h("button", { type: "submit", text: "Show" })));
    const out = h("div", { id: "insights-out" }, h("p", { class: "muted", text: "Loading…" }));
    view.replaceChildren(h("h1", { text: "Where the rules were wrong" }),
      h("p", { class: "muted", text: "Each rule of the prior against the namespace's finished " +
        "jobs: how often the optimizer it favours won, and how far the tuned lr lay from the " +
        "rules' lr. The rules that disagree most with the history come first." }), form, out);
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const value = form.elements.namespace.value.trim();
      const target = `#/insights${value ? `?namespace=${encodeURIComponent(value)}` : ""}`;
      if (location.hash === target) route(); else location.hash = target;
    });
    const token = routeToken;
    let data;
    try {
      data = await api(`/v1/insights/rules?namespace=${encodeURIComponent(namespace)}`);
    } catch (err) {
      if (token === routeToken) out.replaceChildren(errorBox(err));
      return;
    }
    if (token === routeToken) out.replaceChildren(...insightsView(data).filter(Boolean));
  }

  function insightsView(data) {
    const ignored = data.ignored ? ` (${data.ignored} more with fewer than ` +
      `${data.min_completed_trials} completed trials not counted)` : "";
    const summary = h("div", { class: "card", id: "insights-summary" },
      h("b", { text: `${data.jobs} finished job(s) in namespace ${data.namespace}${ignored}` }));
    if (!data.jobs) {
      summary.append(h("p", { class: "muted", text: "No finished job to learn from yet." }));
      return [summary];
    }
    summary.append(h("p", { text: `The rules' top-1 won ${share(data.prior)} job(s); tuned lr / ` +
      `the rules' lr: median ${lrRatio(data.prior)}.` }));
    const fired = data.rules.filter((r) => r.jobs > 0);
    const table = h("table", { id: "insights" },
      h("thead", {}, h("tr", {}, ["rule", "top pick", "jobs", "top pick won", "pick ran",
        "median lr ratio (jobs)", "examples"].map((c) => h("th", { text: c })))),
      h("tbody", {}, fired.map((r) => h("tr", { "data-rule": r.rule },
        h("td", { text: r.rule }), h("td", { text: r.top_pick || "—" }),
        h("td", { class: "num", text: r.jobs }), h("td", { class: "num", text: share(r) }),
        h("td", { class: "num", text: r.top_pick_tried === null ? "—" : r.top_pick_tried }),
        h("td", { class: "num", text: lrRatio(r) }),
        h("td", {}, r.examples.map((id) => h("code", { text: `${id} ` })))))));
    const silent = data.rules.filter((r) => r.jobs === 0).map((r) => r.rule);
    return [summary, table, silent.length ?
      h("p", { class: "muted", id: "insights-silent", text: `Never fired: ${silent.join(", ")}.` }) : null];
  }

  // -- recommend -----------------------------------------------------------------------------

  function showRecommend() {
    const field = (label, input) => h("label", {}, label, input);
    const form = h("form", { id: "recommend-form", class: "card" },
      h("div", { class: "form-grid" },
        field("model family", h("select", { name: "model_family", required: true },
          FAMILIES.map((f) => h("option", { value: f, text: f, selected: f === "transformer" })))),
        field("task type", h("select", { name: "task_type" },
          TASK_TYPES.map((t) => h("option", { value: t, text: t })))),
        field("parameters", h("input", { name: "num_parameters", required: true, placeholder: "e.g. 1.2e8" })),
        field("layers", h("input", { name: "num_layers", placeholder: "optional" })),
        field("dataset size", h("input", { name: "dataset_size", placeholder: "optional" })),
        field("batch size", h("input", { name: "batch_size", placeholder: "optional" })),
        field("devices", h("input", { name: "num_devices", value: "1" })),
        field("memory per device (GB)", h("input", { name: "memory_budget_gb", placeholder: "optional" })),
        field("precision", h("select", { name: "precision" },
          ["fp32", "bf16", "fp16"].map((p) => h("option", { value: p, text: p })))),
        field("how many", h("input", { name: "top_k", type: "number", min: 1, max: 20, value: 3 })),
        h("label", { class: "check" }, h("input", { type: "checkbox", name: "sparse_features" }),
          "sparse features"),
        h("label", { class: "check" }, h("input", { type: "checkbox", name: "fine_tuning" }),
          "fine-tuning"),
        field("namespace", h("input", { name: "namespace", placeholder: "default" })),
        h("label", { class: "check" }, h("input", { type: "checkbox", name: "use_history",
          checked: true }), "learn from past jobs")),
      h("div", { class: "actions" }, h("button", { type: "submit", id: "recommend-submit", text: "Recommend" })));
    const out = h("div", { id: "recommendation" });
    view.replaceChildren(h("h1", { text: "Which optimizer?" }),
      h("p", { class: "muted", text: "Describe the model and the task; the service ranks the " +
        "optimizers and says why (the same prior a tuning job starts from)." }), form, out);
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const task = {};
      const els = form.elements;
      task.model_family = els.model_family.value;
      task.task_type = els.task_type.value;
      task.precision = els.precision.value;
      for (const name of ["num_parameters", "num_layers", "dataset_size", "batch_size", "num_devices"]) {
        const raw = els[name].value.trim().replace(/_/g, "");
        if (raw) task[name] = Number(raw);
      }
      if (els.memory_budget_gb.value.trim()) task.memory_budget_gb = Number(els.memory_budget_gb.value);
      task.sparse_features = els.sparse_features.checked;
      task.fine_tuning = els.fine_tuning.checked;
      const button = document.getElementById("recommend-submit");
      button.disabled = true;
      out.replaceChildren(h("p", { class: "muted", text: "Asking…" }));
      try {
        const rec = await api("/v1/recommendations", { method: "POST",
          body: { task, top_k: Number(els.top_k.value || 3),
            ...historyFields(els.namespace.value, els.use_history.checked) } });
        out.replaceChildren(candidates(rec));
      } catch (err) {
        out.replaceChildren(errorBox(err));
      } finally {
        button.disabled = false;
      }
    });
  }

  function historyFields(namespace, useHistory) {
    const fields = { use_history: useHistory };
    if (namespace.trim()) fields.namespace = namespace.trim();
    return fields;
  }

  function evidenceLine(e) {
    const where = e.source === "job" ? `job ${e.job_id}` : e.citation;
    return `${e.source} (similarity ${fmt(e.similarity, 2)}): ${e.label}: ${e.optimizer}` +
      (e.lr != null ? ` lr ${fmt(e.lr)}` : "") + ` — ${e.outcome}; ${where}`;
  }

  function candidates(rec) {
    return h("div", {},
      h("h2", { text: `Ranked candidates (recommendation ${rec.id.slice(0, 12)})` }),
      h("div", { class: "candidates" }, rec.candidates.map((c, i) => {
        const mem = c.memory || {};
        const fits = mem.fits === true ? "fits the memory budget" :
          mem.fits === false ? "does NOT fit the memory budget" : "no memory budget given";
        return h("div", { class: "card candidate", "data-optimizer": c.optimizer },
          h("h3", {}, h("span", { class: "rank", text: `#${i + 1}` }), c.optimizer,
            h("span", { class: "muted", text: `  score ${fmt(c.score, 3)}` })),
          h("div", { class: "scorebar" }, h("span", { style: `width:${Math.round(100 * (c.score || 0))}%` })),
          h("table", {},
            h("thead", {}, h("tr", {}, ["hyperparameter", "default", "low", "high", "scale"].map(
              (col) => h("th", { text: col })))),
            h("tbody", {}, Object.entries(c.hyperparameters).map(([name, p]) => h("tr", {},
              h("td", { text: name }), h("td", { class: "num", text: fmt(p.default) }),
              h("td", { class: "num", text: fmt(p.low) }), h("td", { class: "num", text: fmt(p.high) }),
              h("td", { text: (p.log ? "log" : "linear") + (p.complement ? " of 1−x" : "") }))))),
          h("p", { class: "muted", text: `optimizer state ${fmt((mem.state_bytes || 0) / 1e9, 3)} GB; ${fits}` }),
          h("ul", { class: "rationale" }, c.rationale.map((line) => h("li", { text: line }))),
          (c.evidence || []).length ? h("ul", { class: "evidence muted" },
            c.evidence.map((e) => h("li", { text: evidenceLine(e) }))) : null,
          h("p", { class: "muted", text: `references: ${c.references.join("; ")}` }),
          h("code", { text: `optimizers.create("${c.optimizer}", model.parameters(), ` +
            Object.entries(c.hyperparameters).map(([k, p]) => `${k}=${fmt(p.default)}`).join(", ") + ")" }));
      })));
  }

  // -- router --------------------------------------------------------------------------------

  function route() {
    routeToken += 1;
    const hash = location.hash || "#/jobs";
    const [path, queryText] = hash.slice(1).split("?");
    const parts = path.split("/").filter(Boolean);
    const section = parts[0] || "jobs";
    for (const a of document.querySelectorAll("nav a")) {
      a.classList.toggle("active", a.dataset.nav === section);
    }
    if (needsKey()) return;
    if (section === "recommend") showRecommend();
    else if (section === "results") showResults(new URLSearchParams(queryText || ""));
    else if (section === "insights") showInsights(new URLSearchParams(queryText || ""));
    else if (section === "jobs" && parts[1]) showJob(decodeURIComponent(parts[1]));
    else showJobs();
  }

  setupKeyBox();
  window.addEventListener("hashchange", route);
  route();
})();
