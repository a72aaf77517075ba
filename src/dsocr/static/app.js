// dsocr playground: pick a document, stream POST /v1/ocr, show boxes over the page and the result.
// A PDF of more than a few pages runs as a job (POST /v1/jobs), followed page by page; its id is
// kept in the URL (#job=…) and in sessionStorage, so a reload follows it again.
//
// Everything the model produced is untrusted. It reaches the DOM only as textContent, or as
// markdown rendered by marked and then sanitised by DOMPurify with a short allow-list (markdown
// tags plus the table tags the model emits); images may only be this page's own figure crops.
// The server also sends a Content-Security-Policy that forbids inline and remote scripts.
import { Marked } from "./vendor/marked.esm.js";

const OUTPUTS = "markdown,text,raw,blocks,crops,visualization";
const KEY_STORAGE = "dsocr.apiKey";
const JOB_STORAGE = "dsocr.job";
// A PDF with more pages than this, or whose pages cannot be counted here, runs as a job.
const STREAM_MAX_PAGES = 3;
// Larger PDFs are not read in the browser to count their pages: they run as jobs.
const COUNT_MAX_BYTES = 32 * 1024 * 1024;

// Same palette as dsocr.render.overlay.label_colour, so boxes drawn here match the server's PNG.
// A Map: labels come from the model, and a plain object would answer "constructor" or "__proto__"
// with Object.prototype's members. Model-controlled strings never index a plain object here.
const LABEL_COLOURS = new Map(Object.entries({
  title: [200, 30, 45], sub_title: [230, 100, 20], text: [30, 90, 200], image: [20, 140, 60],
  image_caption: [110, 150, 20], table: [130, 50, 180], table_caption: [170, 80, 150],
  table_footnote: [120, 90, 160], equation: [0, 130, 140], figure_title: [150, 110, 0],
  header: [90, 90, 90], footer: [90, 90, 90], footnote: [100, 70, 40],
}));
const FALLBACK_COLOURS = [
  [31, 119, 180], [214, 39, 40], [44, 160, 44], [148, 103, 189], [140, 86, 75],
  [227, 119, 194], [23, 150, 160], [188, 140, 0], [60, 60, 160], [160, 60, 60],
];

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

function crc32(text) {
  let crc = 0xffffffff;
  for (const byte of new TextEncoder().encode(text)) crc = CRC_TABLE[(crc ^ byte) & 0xff] ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

function labelColour(label) {
  const rgb = LABEL_COLOURS.get(label.trim().toLowerCase()) ?? FALLBACK_COLOURS[crc32(label) % FALLBACK_COLOURS.length];
  return `rgb(${rgb.join(",")})`;
}

// ---- safe markdown -------------------------------------------------------------------------------

const ALLOWED_TAGS = [
  "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "em", "strong", "del", "s", "sub", "sup",
  "blockquote", "ul", "ol", "li", "pre", "code", "a", "img",
  "table", "thead", "tbody", "tfoot", "tr", "th", "td", "caption", "colgroup", "col",
];
const ALLOWED_ATTR = ["href", "src", "alt", "title", "colspan", "rowspan", "align", "start"];
const CROP_LINK = /^images\/(\d+)\.png$/;
const markdownParser = new Marked({ gfm: true, async: false });

function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

// The model writes TeX as \( … \) and \[ … \]. Markdown would read "\[" as an escaped bracket and
// drop the backslash, so math is kept verbatim, delimiters included, as code (no TeX renderer here).
markdownParser.use({
  extensions: [
    {
      name: "tex",
      level: "inline",
      start: (src) => src.match(/\\[([]/)?.index,
      tokenizer(src) {
        const match = /^\\\(([\s\S]+?)\\\)|^\\\[([\s\S]+?)\\\]/.exec(src);
        return match ? { type: "tex", raw: match[0] } : undefined;
      },
      renderer: (token) => `<code>${escapeHtml(token.raw)}</code>`,
    },
  ],
});
let cropsForSanitiser = [];

function installSanitiserHooks() {
  window.DOMPurify.addHook("afterSanitizeAttributes", (node) => {
    if (node.tagName === "IMG") {
      // Only the figure crops of this page, never a URL the model wrote.
      const match = CROP_LINK.exec(node.getAttribute("src") ?? "");
      const crop = match ? cropsForSanitiser[Number(match[1])] : undefined;
      if (crop) {
        node.setAttribute("src", `data:image/png;base64,${crop}`);
        node.setAttribute("alt", node.getAttribute("alt") || `figure ${match[1]}`);
      } else {
        node.replaceWith(document.createTextNode(`[image ${node.getAttribute("src") ?? ""}]`));
      }
    } else if (node.tagName === "A") {
      node.setAttribute("rel", "noopener noreferrer nofollow");
      node.setAttribute("target", "_blank");
    }
  });
}

/** Markdown (untrusted) → a sanitised DocumentFragment. */
function renderMarkdown(markdown, crops) {
  cropsForSanitiser = crops ?? [];
  const html = markdownParser.parse(markdown ?? "");
  return window.DOMPurify.sanitize(html, {
    ALLOWED_TAGS,
    ALLOWED_ATTR,
    ALLOW_DATA_ATTR: false,
    RETURN_DOM_FRAGMENT: true,
  });
}

// ---- state ----------------------------------------------------------------------------------------

const $ = (id) => document.getElementById(id);
const els = {
  form: $("run-form"), drop: $("drop-zone"), file: $("file-input"), fileName: $("file-name"),
  url: $("url-input"), preset: $("preset"), targetField: $("target-field"), target: $("target"),
  mode: $("mode"), pages: $("pages"), run: $("run"), cancel: $("cancel"), key: $("api-key"),
  keyBox: $("key-box"), engine: $("engine-status"), status: $("status"), error: $("error"),
  pager: $("pager"), prev: $("prev-page"), next: $("next-page"), pageLabel: $("page-label"),
  placeholder: $("page-placeholder"), frame: $("page-frame"), image: $("page-image"), boxes: $("boxes"),
  pageError: $("page-error"), legend: $("legend"), copy: $("copy"),
  dlMd: $("dl-md"), dlJson: $("dl-json"), dlTxt: $("dl-txt"), dlPng: $("dl-png"),
  dlFiles: [...document.querySelectorAll("button.dl-file")],
  job: $("job"), jobSummary: $("job-summary"), jobBar: $("job-bar"), jobId: $("job-id"), jobPages: $("job-pages"),
  panels: {
    rendered: $("tab-rendered"), source: $("tab-source"), raw: $("tab-raw"), blocks: $("tab-blocks"),
    json: $("tab-json"),
  },
};

const state = {
  file: null, // the picked File
  previewUrl: null, // object URL of the picked image (not for PDFs)
  pageCount: null, // promise of the picked PDF's page count (null: not counted)
  run: null, // the current or last run, see startRun
  current: null, // page number shown
  tab: "rendered",
  selected: null, // block index kept highlighted after a click
};

function setBodyState(value) {
  document.body.dataset.state = value;
}

// ---- API key (sessionStorage: gone when the tab closes) --------------------------------------------

function apiKey() {
  return els.key.value.trim();
}

function authHeaders() {
  const key = apiKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

els.key.value = sessionStorage.getItem(KEY_STORAGE) ?? "";
els.key.addEventListener("change", () => {
  if (apiKey()) sessionStorage.setItem(KEY_STORAGE, apiKey());
  else sessionStorage.removeItem(KEY_STORAGE);
  checkServer();
  // A job kept in the URL that could not be followed without the key: follow it now.
  if (!state.run || state.run.ended) resumeStoredJob();
});

// ---- server status ---------------------------------------------------------------------------------

async function checkServer() {
  try {
    const response = await fetch("/health", { headers: authHeaders() });
    if (response.status === 401) {
      els.engine.textContent = "This server needs an API key: enter it under “API key”.";
      els.keyBox.open = true;
      return;
    }
    const body = await response.json();
    const engine = body.engine ?? {};
    const readiness = engine.ready ? "ready" : `not ready: ${engine.reason ?? "starting"}`;
    els.engine.textContent = `engine ${engine.name ?? engine.kind ?? "?"} · ${engine.model ?? ""} · ${readiness}`;
    if (Array.isArray(engine.modes) && engine.modes.length) {
      const previous = els.mode.value;
      els.mode.replaceChildren(...engine.modes.map((mode) => new Option(mode, mode)));
      els.mode.value = engine.modes.includes(previous) ? previous : engine.modes.at(-1);
    }
  } catch (error) {
    els.engine.textContent = `The server did not answer /health (${error.message}).`;
  }
}

// ---- picking a document -----------------------------------------------------------------------------

function isPdf(file) {
  return file.type === "application/pdf" || /\.pdf$/i.test(file.name);
}

function setFile(file) {
  state.file = file;
  if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
  state.previewUrl = file && !isPdf(file) ? URL.createObjectURL(file) : null;
  els.drop.classList.toggle("has-file", Boolean(file));
  els.fileName.textContent = file ? `${file.name} (${formatBytes(file.size)})` : "Drop an image or PDF here";
  if (file) els.url.value = "";
  if (file && state.previewUrl && !state.run) showPreview();
  const count = file && isPdf(file) ? countPdfPages(file) : null;
  state.pageCount = count;
  count?.then((pages) => {
    if (state.pageCount !== count) return; // another file was picked meanwhile
    const how = pages === null || pages > STREAM_MAX_PAGES ? ", runs as a job" : "";
    const counted = pages === null ? "" : `, ${pages === 1 ? "1 page" : `${pages} pages`}`;
    els.fileName.textContent = `${file.name} (${formatBytes(file.size)}${counted}${how})`;
  });
}

/**
 * A PDF's page count, read from its structure without a PDF library: each page is an object with
 * "/Type /Page". Null where that cannot tell: a file over COUNT_MAX_BYTES, or one that keeps its
 * objects in compressed object streams (/ObjStm), where the page objects are not visible.
 * Incremental updates can repeat a page object: the count errs high, towards a job.
 */
async function countPdfPages(file) {
  if (file.size > COUNT_MAX_BYTES) return null;
  try {
    // latin1 decodes one byte to one character, so the PDF's syntax survives.
    const text = new TextDecoder("latin1").decode(await file.arrayBuffer());
    if (text.includes("/ObjStm")) return null;
    return text.match(/\/Type\s*\/Page(?![A-Za-z0-9])/g)?.length || null;
  } catch {
    return null;
  }
}

function showPreview() {
  els.placeholder.hidden = true;
  els.frame.hidden = false;
  els.image.src = state.previewUrl;
  els.boxes.replaceChildren();
}

function formatBytes(size) {
  if (size < 1024) return `${size} B`;
  if (size < 1024 * 1024) return `${(size / 1024).toFixed(0)} KB`;
  return `${(size / 1024 / 1024).toFixed(1)} MB`;
}

els.drop.addEventListener("click", () => els.file.click());
els.drop.addEventListener("keydown", (event) => {
  if (event.key === "Enter" || event.key === " ") {
    event.preventDefault();
    els.file.click();
  }
});
els.file.addEventListener("change", () => setFile(els.file.files[0] ?? null));
els.drop.addEventListener("dragover", (event) => {
  event.preventDefault();
  els.drop.classList.add("dragging");
});
els.drop.addEventListener("dragleave", () => els.drop.classList.remove("dragging"));
els.drop.addEventListener("drop", (event) => {
  event.preventDefault();
  els.drop.classList.remove("dragging");
  const file = event.dataTransfer?.files?.[0];
  if (file) setFile(file);
});
document.addEventListener("paste", (event) => {
  if (event.target instanceof HTMLInputElement) return; // typing into a field
  const file = [...(event.clipboardData?.files ?? [])][0];
  if (file) {
    setFile(file);
    return;
  }
  const text = event.clipboardData?.getData("text")?.trim() ?? "";
  if (/^https?:\/\//i.test(text)) {
    els.url.value = text;
    setFile(null);
  }
});
els.url.addEventListener("input", () => {
  if (els.url.value.trim() && state.file) {
    setFile(null);
    els.file.value = "";
  }
});
els.preset.addEventListener("change", () => {
  els.targetField.hidden = els.preset.value !== "locate";
});

// ---- running a request ------------------------------------------------------------------------------

function buildRequest() {
  const common = { preset: els.preset.value, mode: els.mode.value };
  const pages = els.pages.value.trim();
  if (pages) common.pages = pages;
  if (els.preset.value === "locate") common.target = els.target.value.trim();
  const headers = { Accept: "text/event-stream", ...authHeaders() };
  if (state.file) {
    const file = state.file;
    const form = new FormData();
    form.append("file", file, file.name);
    for (const [name, value] of Object.entries(common)) form.append(name, value);
    form.append("outputs", OUTPUTS);
    form.append("stream", "true");
    return { headers, body: form, name: file.name, localImage: state.previewUrl, source: { file, common } };
  }
  const url = els.url.value.trim();
  if (!url) return null;
  headers["Content-Type"] = "application/json";
  const body = JSON.stringify({ image_url: url, ...common, outputs: OUTPUTS.split(","), stream: true });
  const name = decodeURIComponent(url.split(/[?#]/)[0].split("/").pop() || "document");
  return { headers, body, name, localImage: null, source: { url, common } };
}

/** The same document and options as a run, asked for as one file (POST /v1/ocr?format=…). */
function fileRequest(source) {
  if (source.file) {
    const form = new FormData();
    form.append("file", source.file, source.file.name);
    for (const [name, value] of Object.entries(source.common)) form.append(name, value);
    return { headers: authHeaders(), body: form };
  }
  const headers = { "Content-Type": "application/json", ...authHeaders() };
  return { headers, body: JSON.stringify({ image_url: source.url, ...source.common }) };
}

els.form.addEventListener("submit", (event) => {
  event.preventDefault();
  startRun();
});
els.cancel.addEventListener("click", () => {
  if (state.run?.jobId) cancelJob(state.run);
  else state.run?.controller.abort();
});

function newRun({ name, localImage = null, source = null, jobId = null }) {
  state.run?.controller.abort();
  const run = {
    controller: new AbortController(),
    name: name.replace(/\.[A-Za-z0-9]+$/, "") || "document",
    localImage,
    source, // what was sent, to ask for it again as a file (null for a job: its result has it)
    jobId, // set for a job
    job: null, // the job as the server last described it (POST, its events, GET)
    refreshing: false, // a GET of the job is under way
    notFound: false, // the server does not know the job (expired, deleted, another key's)
    lastFailure: null, // why the job's events last broke off
    fetchingFile: false,
    pages: new Map(), // page number → {page, requestId, blocks, result}
    done: null,
    error: null,
    ended: false,
    started: performance.now(),
  };
  state.run = run;
  state.current = null;
  state.selected = null;
  hideError();
  setBodyState("running");
  setRunning(true);
  render();
  return run;
}

async function startRun() {
  const request = buildRequest();
  hideError();
  if (!request) {
    showError("Pick or drop an image or PDF first, or paste its URL.");
    return;
  }
  if (els.preset.value === "locate" && !els.target.value.trim()) {
    showError("The locate prompt needs something to find: fill in “Find”.");
    els.target.focus();
    return;
  }
  const file = request.source.file;
  let jobless = false;
  if (file && isPdf(file)) {
    const pages = await state.pageCount;
    if (pages === null || pages > STREAM_MAX_PAGES) {
      if (await startJob(request)) return;
      jobless = true; // the server runs no jobs: the document goes through /v1/ocr as one request
    }
  }
  const run = newRun(request);
  forgetJob(); // a job this tab followed before is not what the page shows any more
  setStatus(jobless ? "This server runs no jobs: sending the document as one request…" : "Sending…");
  try {
    const response = await fetch("/v1/ocr", {
      method: "POST",
      headers: request.headers,
      body: request.body,
      signal: run.controller.signal,
    });
    if (!response.ok) {
      run.error = await errorFromResponse(response);
    } else {
      setStatus("Reading…");
      await readEvents(response, run);
    }
  } catch (error) {
    run.error = error.name === "AbortError" ? "Cancelled." : `The request failed: ${error.message}`;
  }
  endRun(run);
}

/** Shows how a run ended (unless a newer run replaced it). */
function endRun(run) {
  if (state.run !== run) return;
  run.ended = true;
  setRunning(false);
  if (run.error) {
    showError(run.error);
    setStatus("");
    setBodyState("error");
  } else if (run.done) {
    // A job's own times: it may have run while no page watched it.
    const job = run.job;
    const seconds = job?.finished_at && job?.started_at
      ? (job.finished_at - job.started_at).toFixed(1)
      : ((performance.now() - run.started) / 1000).toFixed(1);
    const failed = run.done.failed_pages?.length ? `, ${run.done.failed_pages.length} failed` : "";
    const pages = run.done.page_count === 1 ? "1 page" : `${run.done.page_count} pages`;
    setStatus(`Done: ${pages}${failed}, ${run.done.usage?.completion_tokens ?? 0} tokens, ${seconds} s.`);
    setBodyState("done");
  } else {
    showError("The stream ended before the server said it was done.");
    setBodyState("error");
  }
  render();
}

function setRunning(running) {
  els.run.disabled = running;
  els.cancel.hidden = !running;
}

// ---- jobs: long PDFs in the background ------------------------------------------------------------------

/** The job id in the URL (#job=…), else the one this tab kept; with the document's name if known. */
function storedJob() {
  let kept = null;
  try {
    kept = JSON.parse(sessionStorage.getItem(JOB_STORAGE) ?? "null");
  } catch {
    // not ours: ignored
  }
  const id = jobInUrl() ?? (typeof kept?.id === "string" ? kept.id : null);
  if (!id) return null;
  return { id, name: kept?.id === id && typeof kept.name === "string" ? kept.name : `job-${id.slice(0, 8)}` };
}

function jobInUrl() {
  return new URLSearchParams(location.hash.slice(1)).get("job");
}

function keepJob(id, name) {
  sessionStorage.setItem(JOB_STORAGE, JSON.stringify({ id, name }));
  history.replaceState(null, "", `#job=${encodeURIComponent(id)}`);
}

function forgetJob() {
  sessionStorage.removeItem(JOB_STORAGE);
  if (location.hash) history.replaceState(null, "", location.pathname + location.search);
}

function jobUrl(run, tail = "") {
  return `/v1/jobs/${encodeURIComponent(run.jobId)}${tail}`;
}

/** POST /v1/jobs, then follow the job. False when the server runs no jobs: stream instead. */
async function startJob(request) {
  const form = new FormData();
  const { file, common } = request.source;
  form.append("file", file, file.name);
  for (const [name, value] of Object.entries(common)) form.append(name, value);
  form.append("outputs", OUTPUTS);
  const run = newRun({ name: request.name });
  setStatus("Sending the document for a job…");
  try {
    const response = await fetch("/v1/jobs", {
      method: "POST",
      headers: authHeaders(),
      body: form,
      signal: run.controller.signal,
    });
    // 404: jobs are off (DSOCR_JOBS__ENABLED=false); 503: their folder cannot be used.
    if (response.status === 404 || response.status === 503) return false;
    if (!response.ok) {
      run.error = await errorFromResponse(response);
    } else {
      run.job = await response.json();
      run.jobId = run.job.id;
      keepJob(run.jobId, run.name);
    }
  } catch (error) {
    run.error = error.name === "AbortError" ? "Cancelled." : `The request failed: ${error.message}`;
  }
  if (run.jobId) await followJob(run);
  else endRun(run);
  return true;
}

/** Follows the job kept in the URL or in this tab, if any (a reload, a shared link). */
function resumeStoredJob() {
  const kept = storedJob();
  // Not the job already shown, unless following it ended in an error (a missing key, say).
  if (!kept || (kept.id === state.run?.jobId && !state.run.error)) return;
  const run = newRun({ name: kept.name, jobId: kept.id });
  keepJob(kept.id, run.name);
  followJob(run);
}

/**
 * Reads the job's events until it ends. The stream replays the pages already done, then goes on
 * live; if it breaks (a proxy's timeout, a restarted server) it is opened again.
 */
async function followJob(run) {
  setStatus(`Following job ${run.jobId}…`);
  let failures = 0;
  while (!run.done && !run.error && !run.controller.signal.aborted) {
    const seen = run.pages.size;
    try {
      const response = await fetch(jobUrl(run, "/events"), {
        headers: { Accept: "text/event-stream", ...authHeaders() },
        signal: run.controller.signal,
      });
      if (response.status === 404) {
        run.notFound = true;
        run.error = `Job ${run.jobId} was not found: it expired (finished jobs are kept for a limited time), ` +
          "was deleted, or was started with another API key.";
        forgetJob();
      } else if (!response.ok) {
        run.error = await errorFromResponse(response);
      } else {
        await readEvents(response, run);
      }
    } catch (error) {
      if (error.name === "AbortError") break;
      run.lastFailure = error.message;
    }
    if (run.done || run.error || run.controller.signal.aborted) break;
    failures = run.pages.size > seen ? 0 : failures + 1;
    if (failures >= 5) {
      run.error = `Lost the job's events (${run.lastFailure ?? "the stream ended"}). ` +
        "The job goes on: reload the page to follow it again.";
      break;
    }
    await new Promise((resolve) => setTimeout(resolve, 1000 * failures));
  }
  if (run.controller.signal.aborted && !run.error) run.error = "Cancelled.";
  endRun(run);
}

/** GET the job: its page total is known once it has opened the document. */
async function refreshJob(run) {
  if (run.refreshing) return;
  run.refreshing = true;
  try {
    const response = await fetch(jobUrl(run), { headers: authHeaders() });
    if (response.ok && state.run === run) {
      run.job = await response.json();
      scheduleRender();
    }
  } catch {
    // the events stream reports the job's fate; this was only for the page total
  } finally {
    run.refreshing = false;
  }
}

/** Cancel the job (its pages stop in the engine; a finished one keeps its result), stop following it, forget its id. */
async function cancelJob(run) {
  els.cancel.disabled = true;
  setStatus("Cancelling the job…");
  try {
    const response = await fetch(`${jobUrl(run)}/cancel`, { method: "POST", headers: authHeaders() });
    if (!response.ok) {
      showError(await errorFromResponse(response));
      return;
    }
    const job = await response.json();
    run.job = job;
    // A job that finished just before the click keeps its result: say so.
    run.error = job.status === "cancelled" ? "Cancelled." : `Job ${run.jobId} had already ended (${job.status}).`;
    forgetJob();
    run.controller.abort();
  } catch (error) {
    showError(`Cancelling failed: ${error.message}`);
  } finally {
    els.cancel.disabled = false;
  }
}

// A job link pasted into this tab's address bar.
window.addEventListener("hashchange", () => {
  if (jobInUrl()) resumeStoredJob();
});

/** Server-sent events from a fetch response (EventSource can neither POST nor send the API key). */
async function readEvents(response, run) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const chunk = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of chunk.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) handleEvent(run, event, JSON.parse(data.join("\n")));
    }
  }
}

function pageState(run, page) {
  if (!run.pages.has(page)) run.pages.set(page, { page, requestId: null, blocks: [], result: null });
  return run.pages.get(page);
}

const JOB_STATUS_TEXT = new Map([
  ["queued", "The job is queued: it starts when the server has room."],
  ["running", "The job is running: pages appear as they finish."],
]);

function handleEvent(run, event, data) {
  if (event === "job") {
    run.job = data;
    setStatus(JOB_STATUS_TEXT.get(data.status) ?? "");
    if (data.progress?.pages_total == null && data.status === "running") refreshJob(run);
  } else if (event === "page.start") {
    pageState(run, data.page).requestId = data.request_id;
    if (state.current === null) state.current = data.page;
    setStatus(`Reading page ${data.page}…`);
  } else if (event === "block") {
    pageState(run, data.page).blocks.push(data.block);
  } else if (event === "page.done") {
    const page = pageState(run, data.page);
    page.result = data;
    if (Array.isArray(data.blocks)) page.blocks = data.blocks;
    if (state.current === null) state.current = data.page;
    if (run.jobId && run.job?.progress?.pages_total == null) refreshJob(run);
  } else if (event === "error") {
    const code = data?.error?.code ?? data?.code;
    run.error = code === "job_cancelled" ? "Cancelled." : describeError(data);
    if (run.jobId && code === "job_cancelled") forgetJob();
  } else if (event === "done") {
    run.done = data;
  }
  scheduleRender();
}

async function errorFromResponse(response) {
  const text = await response.text();
  let body = null;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON (a proxy's page): show the status and the start of the text
  }
  let message = body ? describeError(body) : `${text.slice(0, 300) || response.statusText}`;
  message += ` (HTTP ${response.status})`;
  if (response.status === 401) {
    els.keyBox.open = true;
    message += "\nEnter a valid API key under “API key” (top right).";
  }
  const retry = response.headers.get("Retry-After");
  if (retry) message += `\nTry again in ${retry} s.`;
  return message;
}

/** The API's error envelope ({"error": {message, code, param}}) as one readable line. */
function describeError(body) {
  const error = body?.error ?? body ?? {};
  const message = typeof error.message === "string" ? error.message : JSON.stringify(body);
  const details = [error.code, error.param ?? error.field ? `field ${error.param ?? error.field}` : null]
    .filter(Boolean)
    .join(", ");
  return details ? `${message} [${details}]` : message;
}

function setStatus(text) {
  els.status.textContent = text;
}

function showError(text) {
  els.error.textContent = text;
  els.error.hidden = false;
}

function hideError() {
  els.error.hidden = true;
  els.error.textContent = "";
}

// ---- rendering ----------------------------------------------------------------------------------------

let renderQueued = false;
function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    render();
  });
}

function pageNumbers() {
  return state.run ? [...state.run.pages.keys()].sort((a, b) => a - b) : [];
}

function currentPage() {
  return state.run && state.current !== null ? state.run.pages.get(state.current) ?? null : null;
}

function render() {
  renderJob();
  renderPager();
  renderPageImage();
  renderBoxes();
  renderTabs();
  renderButtons();
}

/** A job's progress: pages done, failed and total, and one mark per page (a finished one opens it). */
function renderJob() {
  const run = state.run;
  els.job.hidden = !run?.jobId || run.notFound;
  if (els.job.hidden) return;
  const results = [...run.pages.values()].map((page) => page.result).filter(Boolean);
  const failed = results.filter((result) => result.error).length;
  const total = run.done?.page_count ?? run.job?.progress?.pages_total ?? null;
  const status = run.done ? "succeeded" : run.error ? (run.job?.status ?? "stopped") : run.job?.status ?? "starting";
  els.jobSummary.textContent =
    `${results.length - failed} of ${total ?? "?"} pages done` + (failed ? `, ${failed} failed` : "") + ` · ${status}`;
  els.jobBar.max = total || 1;
  els.jobBar.value = total ? results.length : 0;
  els.jobId.textContent = `job ${run.jobId}`;
  const marks = pageNumbers().map((number) => {
    const result = run.pages.get(number).result;
    const item = document.createElement("li");
    item.dataset.page = String(number);
    item.dataset.state = result?.error ? "failed" : "done";
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = String(number);
    button.title = result?.error ? `Page ${number} failed: ${describeError(result.error)}` : `Page ${number}`;
    if (number === state.current) button.setAttribute("aria-current", "page");
    item.append(button);
    return item;
  });
  // Pages still to come: their numbers are not in the job's answer (a page selection may skip some).
  for (let left = (total ?? 0) - results.length; left > 0; left--) {
    const item = document.createElement("li");
    item.dataset.state = "pending";
    item.title = "waiting";
    marks.push(item);
  }
  els.jobPages.replaceChildren(...marks);
}

els.jobPages.addEventListener("click", (event) => {
  const item = event.target.closest("li[data-page]");
  if (!item) return;
  state.current = Number(item.dataset.page);
  state.selected = null;
  render();
});

function renderPager() {
  const numbers = pageNumbers();
  const total = state.run?.done?.page_count ?? state.run?.job?.progress?.pages_total ?? numbers.length;
  els.pager.hidden = total <= 1;
  if (els.pager.hidden) return;
  const position = numbers.indexOf(state.current);
  els.pageLabel.textContent = `Page ${state.current} · ${position + 1} of ${total}`;
  els.prev.disabled = position <= 0;
  els.next.disabled = position < 0 || position >= numbers.length - 1;
}

function stepPage(delta) {
  const numbers = pageNumbers();
  const next = numbers[numbers.indexOf(state.current) + delta];
  if (next !== undefined) {
    state.current = next;
    state.selected = null;
    render();
  }
}
els.prev.addEventListener("click", () => stepPage(-1));
els.next.addEventListener("click", () => stepPage(1));

function renderPageImage() {
  const page = currentPage();
  const result = page?.result;
  // A local image is shown as is; a PDF page or a URL is shown as the server's drawing of it.
  let src = state.run?.localImage ?? null;
  if (!src && result?.visualization) src = `data:image/png;base64,${result.visualization}`;
  if (!state.run && state.previewUrl) src = state.previewUrl;
  els.frame.hidden = !src;
  els.placeholder.hidden = Boolean(src);
  if (!src) {
    els.placeholder.textContent = state.run
      ? page
        ? `Page ${page.page} is being read…`
        : state.run.job?.status === "queued"
          ? "The job is queued…"
          : "Waiting for the first page…"
      : "The page appears here with its layout boxes.";
  } else if (els.image.getAttribute("src") !== src) {
    els.image.src = src;
  }
  const error = result?.error;
  els.pageError.hidden = !error;
  els.pageError.textContent = error ? `Page ${result.page} failed: ${describeError(error)}` : "";
}

function renderBoxes() {
  const page = currentPage();
  const blocks = page?.blocks ?? [];
  const boxes = [];
  const labels = new Map();
  for (const block of blocks) {
    const colour = labelColour(block.label);
    // OCR-shaped output uses the recognised text as the label: no legend entry for those.
    if (block.label !== block.text) labels.set(block.label, colour);
    for (const [x1, y1, x2, y2] of block.boxes) {
      const box = document.createElement("div");
      box.className = "box";
      box.dataset.block = String(block.index);
      box.title = `${block.index}: ${block.label}`;
      // Percent of the displayed image: the model's 0–999 grid maps to the full width and height.
      box.style.left = `${(x1 / 999) * 100}%`;
      box.style.top = `${(y1 / 999) * 100}%`;
      box.style.width = `${(Math.max(0, x2 - x1) / 999) * 100}%`;
      box.style.height = `${(Math.max(0, y2 - y1) / 999) * 100}%`;
      box.style.setProperty("--c", colour);
      const tag = document.createElement("span");
      tag.className = "box-tag";
      tag.textContent = block.label;
      box.append(tag);
      boxes.push(box);
    }
  }
  els.boxes.replaceChildren(...boxes);
  els.legend.replaceChildren(
    ...[...labels].map(([label, colour]) => {
      const item = document.createElement("li");
      item.textContent = label;
      item.style.setProperty("--c", colour);
      return item;
    }),
  );
  applyHighlight(state.selected);
}

function renderTabs() {
  const page = currentPage();
  const result = page?.result;
  const blocks = page?.blocks ?? [];
  const crops = result?.crops ?? [];
  // While a page streams, its blocks' texts stand in for the page markdown.
  const markdown = result ? result.markdown ?? "" : blocks.map((block) => block.text).join("\n\n");
  els.panels.rendered.replaceChildren(renderMarkdown(markdown, crops));
  els.panels.source.textContent = markdown;
  els.panels.raw.textContent = result ? result.raw ?? "" : page ? "(raw output arrives with the page)" : "";
  els.panels.blocks.replaceChildren(...blocks.map((block) => blockItem(block, crops)));
  els.panels.json.textContent = page ? JSON.stringify(pageForDisplay(page), null, 2) : "";
  for (const [name, panel] of Object.entries(els.panels)) panel.hidden = name !== state.tab;
  for (const tab of document.querySelectorAll("[data-tab]")) {
    tab.setAttribute("aria-selected", String(tab.dataset.tab === state.tab));
  }
}

function blockItem(block, crops) {
  const item = document.createElement("li");
  item.dataset.block = String(block.index);
  item.style.setProperty("--c", labelColour(block.label));
  const label = document.createElement("div");
  label.className = "block-label";
  label.textContent = block.label === block.text ? `#${block.index}` : `#${block.index} ${block.label}`;
  const text = document.createElement("div");
  text.className = "block-text";
  // OCR-shaped blocks are plain lines; layout blocks hold markdown (headings, tables, TeX).
  if (block.label === block.text) text.textContent = block.text;
  else text.append(renderMarkdown(block.text, crops));
  item.append(label, text);
  // Only an integer index: crops["constructor"] would be Array's constructor, not a crop.
  const crop = Number.isInteger(block.crop_index) ? crops[block.crop_index] : undefined;
  if (typeof crop === "string") {
    const image = document.createElement("img");
    image.src = `data:image/png;base64,${crop}`;
    image.alt = `figure crop ${block.crop_index}`;
    item.append(image);
  }
  return item;
}

/** The page's JSON without the large base64 images (they are in the .json download). */
function pageForDisplay(page) {
  const result = page.result ?? { page: page.page, request_id: page.requestId, blocks: page.blocks };
  const shown = { ...result };
  if (shown.visualization) shown.visualization = `<PNG, ${shown.visualization.length} base64 chars>`;
  if (Array.isArray(shown.crops)) shown.crops = shown.crops.map((crop) => `<PNG, ${crop.length} base64 chars>`);
  return shown;
}

for (const tab of document.querySelectorAll("[data-tab]")) {
  tab.addEventListener("click", () => {
    state.tab = tab.dataset.tab;
    renderTabs();
    applyHighlight(state.selected);
  });
}

// ---- box ↔ block highlighting ----------------------------------------------------------------------------

function applyHighlight(index) {
  for (const element of document.querySelectorAll(".box.hl, .block-list li.hl")) element.classList.remove("hl");
  if (index === null || index === undefined) return;
  for (const element of document.querySelectorAll(`.box[data-block="${index}"], .block-list li[data-block="${index}"]`)) {
    element.classList.add("hl");
  }
}

function blockIndexOf(event) {
  const element = event.target.closest?.("[data-block]");
  return element ? Number(element.dataset.block) : null;
}

for (const container of [els.boxes, els.panels.blocks]) {
  container.addEventListener("mouseover", (event) => {
    const index = blockIndexOf(event);
    if (index !== null) applyHighlight(index);
  });
  container.addEventListener("mouseleave", () => applyHighlight(state.selected));
  container.addEventListener("click", (event) => {
    const index = blockIndexOf(event);
    state.selected = state.selected === index ? null : index;
    applyHighlight(state.selected);
    if (state.selected !== null && container === els.boxes) {
      // A tap on a box (phones have no hover) shows its block in the list.
      state.tab = "blocks";
      renderTabs();
      applyHighlight(state.selected);
      document.querySelector(`.block-list li[data-block="${index}"]`)?.scrollIntoView({ block: "nearest" });
    }
  });
}

// ---- copy and download ---------------------------------------------------------------------------------------

function renderButtons() {
  const page = currentPage();
  const done = Boolean(state.run?.done);
  els.copy.disabled = !page;
  els.dlMd.disabled = !done;
  els.dlJson.disabled = !done;
  els.dlTxt.disabled = !done;
  els.dlPng.disabled = !page?.result?.visualization;
  for (const button of els.dlFiles) {
    button.disabled = !done || state.run.fetchingFile;
    button.title = `${button.dataset.title} (${state.run?.jobId ? "from the job's result" : "the document is read again"})`;
  }
}

function currentTabText() {
  const page = currentPage();
  if (!page) return "";
  if (state.tab === "raw") return page.result?.raw ?? "";
  if (state.tab === "blocks") return JSON.stringify(page.blocks, null, 2);
  if (state.tab === "json") return els.panels.json.textContent;
  return els.panels.source.textContent;
}

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    // Clipboard API needs a secure context (https or localhost); fall back for plain http.
    const area = document.createElement("textarea");
    area.value = text;
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
}

els.copy.addEventListener("click", async () => {
  await copyText(currentTabText());
  els.copy.textContent = "Copied";
  setTimeout(() => (els.copy.textContent = "Copy"), 1200);
});

function download(name, blob) {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
}

/** The whole document in the shape of the non-streaming /v1/ocr response. */
function documentJson(run) {
  const pages = pageNumbers().map((number) => run.pages.get(number).result).filter(Boolean);
  return { ...run.done, pages };
}

els.dlMd.addEventListener("click", () => {
  download(`${state.run.name}.md`, new Blob([state.run.done.markdown ?? ""], { type: "text/markdown" }));
});
els.dlTxt.addEventListener("click", () => {
  download(`${state.run.name}.txt`, new Blob([state.run.done.text ?? ""], { type: "text/plain" }));
});
els.dlJson.addEventListener("click", () => {
  const text = JSON.stringify(documentJson(state.run), null, 2);
  download(`${state.run.name}.json`, new Blob([text], { type: "application/json" }));
});
// The server writes these formats (a searchable PDF needs the original document). A job's are made
// from its result; otherwise the document is sent again with ?format=, so the pages are read again.
const FILE_SUFFIXES = new Map([["pdf", ".pdf"], ["hocr", ".hocr"], ["alto", ".xml"], ["html", ".html"]]);

async function downloadFile(format) {
  const run = state.run;
  if (!run?.done || run.fetchingFile || !FILE_SUFFIXES.has(format)) return;
  run.fetchingFile = true;
  renderButtons();
  hideError();
  setStatus(`Preparing the ${format} file…`);
  try {
    const query = `?format=${encodeURIComponent(format)}`;
    let response;
    if (run.jobId) {
      response = await fetch(jobUrl(run, `/result${query}`), { headers: authHeaders() });
    } else {
      const request = fileRequest(run.source);
      response = await fetch(`/v1/ocr${query}`, { method: "POST", headers: request.headers, body: request.body });
    }
    if (!response.ok) {
      showError(await errorFromResponse(response));
      setStatus("");
    } else {
      download(`${run.name}${FILE_SUFFIXES.get(format)}`, await response.blob());
      setStatus(`Downloaded ${run.name}${FILE_SUFFIXES.get(format)}.`);
    }
  } catch (error) {
    showError(`The request failed: ${error.message}`);
    setStatus("");
  } finally {
    run.fetchingFile = false;
    if (state.run === run) renderButtons();
  }
}

for (const button of els.dlFiles) {
  button.addEventListener("click", () => downloadFile(button.dataset.format));
}

els.dlPng.addEventListener("click", () => {
  const page = currentPage();
  const bytes = Uint8Array.from(atob(page.result.visualization), (c) => c.charCodeAt(0));
  download(`${state.run.name}-p${page.page}-overlay.png`, new Blob([bytes], { type: "image/png" }));
});

// ---- start ----------------------------------------------------------------------------------------------------

installSanitiserHooks();
setBodyState("idle");
checkServer();
render();
resumeStoredJob();
