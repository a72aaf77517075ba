// Browser tests of the playground's jobs: a long PDF runs as a job, followed page by page, and a
// reload follows it again. playwright-core driving Debian's chromium.
//
// Run by tests/web/test_playground_jobs.py, which starts the server and passes:
//   DSOCR_URL     a dsocr server with an API key, jobs one page at a time, a fake engine that takes
//                 a while per page, fails landscape pages and answers "free" with hostile markup
//   DSOCR_KEY     its API key
//   DSOCR_URL_JOBS_OFF, DSOCR_URL_JOBS_BROKEN   servers without jobs (turned off; folder unusable)
//   DSOCR_PDF_3   a three-page PDF (streams through /v1/ocr)
//   DSOCR_PDF_4   a four-page PDF whose page 3 is landscape (a job; page 3 fails)
//   DSOCR_PDF_6   a six-page PDF (a job)
//   CHROMIUM      the browser binary (default /usr/bin/chromium)
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { after, before, test } from "node:test";
import { launchChromium } from "./chromium.mjs";

const env = (name) => {
  const value = process.env[name];
  assert.ok(value, `${name} must be set (run through tests/web/test_playground_jobs.py)`);
  return value;
};
const URL_ = env("DSOCR_URL");
const KEY = env("DSOCR_KEY");
const URL_JOBS_OFF = env("DSOCR_URL_JOBS_OFF");
const URL_JOBS_BROKEN = env("DSOCR_URL_JOBS_BROKEN");
const PDF_3 = env("DSOCR_PDF_3");
const PDF_4 = env("DSOCR_PDF_4");
const PDF_6 = env("DSOCR_PDF_6");
const TIMEOUT_MS = 120_000;

let browser;

before(async () => {
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
});

/** A page in a new context, with the requests it makes ("METHOD /path?query") and its errors. */
async function openPage(context, url = URL_) {
  const page = await context.newPage();
  const requests = [];
  const problems = [];
  page.on("request", (request) => {
    const address = new URL(request.url());
    if (address.pathname.startsWith("/v1/")) requests.push(`${request.method()} ${address.pathname}${address.search}`);
  });
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  await page.goto(url);
  return { page, requests, problems };
}

async function enterKey(page, key) {
  if (!(await page.locator("#key-box").evaluate((box) => box.open))) await page.click("#key-box summary");
  await page.fill("#api-key", key);
  await page.press("#api-key", "Tab");
}

async function waitForEnd(page) {
  await page.waitForFunction(() => ["done", "error"].includes(document.body.dataset.state), null, {
    timeout: TIMEOUT_MS,
  });
  return page.evaluate(() => document.body.dataset.state);
}

async function pickFile(page, path, label) {
  await page.setInputFiles("#file-input", path);
  // The page count is read in the browser; the file line says whether the PDF runs as a job.
  await page.waitForFunction((text) => document.getElementById("file-name").textContent.includes(text), label);
}

function jobIdInUrl(page) {
  return new URLSearchParams(new URL(page.url()).hash.slice(1)).get("job");
}

async function keptJob(page) {
  return page.evaluate(() => JSON.parse(sessionStorage.getItem("dsocr.job") ?? "null"));
}

async function marks(page) {
  return page.locator("#job-pages li").evaluateAll((items) => items.map((li) => `${li.dataset.page ?? "-"}:${li.dataset.state}`));
}

async function api(path, init = {}) {
  const response = await fetch(`${URL_}${path}`, { ...init, headers: { Authorization: `Bearer ${KEY}` } });
  assert.equal(response.status, 200, await response.clone().text());
  return response.json();
}

test("three pages stream; four run as a job with progress per page, every page, downloads from its result", async () => {
  const context = await browser.newContext({ acceptDownloads: true });
  const { page, requests, problems } = await openPage(context);
  await enterKey(page, KEY);

  await pickFile(page, PDF_3, "3 pages)");
  await page.click("#run");
  assert.equal(await waitForEnd(page), "done", await page.textContent("#error"));
  assert.deepEqual(requests.filter((r) => r.startsWith("POST")), ["POST /v1/ocr"]);
  assert.ok(await page.isHidden("#job"));
  assert.equal(jobIdInUrl(page), null);

  await pickFile(page, PDF_4, "4 pages, runs as a job)");
  await page.click("#run");
  // A finished page is shown, with its mark, while the job still runs.
  await page.waitForSelector('#job-pages li[data-state="done"]', { timeout: TIMEOUT_MS });
  assert.equal(await page.evaluate(() => document.body.dataset.state), "running");
  assert.match(await page.textContent("#job-summary"), /^\d of 4 pages done/);
  assert.match(await page.textContent("#page-label"), /^Page 1 · 1 of 4/);
  assert.ok((await page.locator("#tab-rendered").textContent()).length > 0);
  const jobId = jobIdInUrl(page);
  assert.ok(jobId, page.url());
  assert.deepEqual(await keptJob(page), { id: jobId, name: "four" });
  assert.ok(requests.includes(`POST /v1/jobs`));
  assert.ok(requests.includes(`GET /v1/jobs/${jobId}/events`));

  assert.equal(await waitForEnd(page), "done", await page.textContent("#error"));
  assert.equal(await page.textContent("#job-summary"), "3 of 4 pages done, 1 failed · succeeded");
  assert.deepEqual(await marks(page), ["1:done", "2:done", "3:failed", "4:done"]);
  assert.match(await page.textContent("#status"), /^Done: 4 pages, 1 failed/);

  // Each page as the job's result has it, reached from its mark.
  const result = await api(`/v1/jobs/${jobId}/result`);
  await page.click('[data-tab="source"]');
  for (const number of [1, 2, 3, 4]) {
    await page.click(`#job-pages li[data-page="${number}"] button`);
    assert.match(await page.textContent("#page-label"), new RegExp(`^Page ${number} · ${number} of 4`));
    assert.equal(await page.getAttribute(`#job-pages li[data-page="${number}"] button`, "aria-current"), "page");
    const expected = result.pages[number - 1];
    assert.equal(await page.textContent("#tab-source"), expected.markdown ?? "");
    assert.equal(await page.isVisible("#page-error"), number === 3);
    if (number === 3) assert.match(await page.textContent("#page-error"), /^Page 3 failed: .*landscape/);
  }

  // Files come from the job's result: the document is not read again.
  const [hocr] = await Promise.all([
    page.waitForEvent("download", { timeout: TIMEOUT_MS }),
    page.click('button.dl-file[data-format="hocr"]'),
  ]);
  assert.equal(hocr.suggestedFilename(), "four.hocr");
  assert.match(readFileSync(await hocr.path(), "utf8"), /class="ocr_page"/);
  assert.ok(requests.includes(`GET /v1/jobs/${jobId}/result?format=hocr`));
  assert.deepEqual(requests.filter((r) => r.startsWith("POST")), ["POST /v1/ocr", "POST /v1/jobs"]);
  const [json] = await Promise.all([page.waitForEvent("download"), page.click("#dl-json")]);
  assert.deepEqual(JSON.parse(readFileSync(await json.path(), "utf8")).pages.map((p) => p.page), [1, 2, 3, 4]);

  // A reload shows the finished job again, from the URL.
  await page.reload();
  assert.equal(await waitForEnd(page), "done", await page.textContent("#error"));
  assert.deepEqual(await marks(page), ["1:done", "2:done", "3:failed", "4:done"]);
  assert.equal(jobIdInUrl(page), jobId);
  assert.deepEqual(requests.filter((r) => r.startsWith("POST")), ["POST /v1/ocr", "POST /v1/jobs"]);
  assert.deepEqual(problems, []);
  await context.close();
});

test("a reload mid-job follows the same job to its end; a new tab with the link follows it once given the key", async () => {
  const context = await browser.newContext();
  const { page, requests, problems } = await openPage(context);
  await enterKey(page, KEY);
  await pickFile(page, PDF_6, "6 pages, runs as a job)");
  await page.click("#run");
  await page.waitForSelector('#job-pages li[data-state="done"]', { timeout: TIMEOUT_MS });
  const jobId = jobIdInUrl(page);

  await page.reload();
  assert.equal(jobIdInUrl(page), jobId);
  // Following again mid-job: the pages done are replayed, the rest still to come.
  await page.waitForSelector('#job-pages li[data-state="done"]', { timeout: TIMEOUT_MS });
  assert.ok((await page.locator('#job-pages li[data-state="pending"]').count()) > 0, "the reload came after the job ended");
  assert.equal(await page.evaluate(() => document.body.dataset.state), "running");
  assert.equal(await waitForEnd(page), "done", await page.textContent("#error"));
  assert.deepEqual(await marks(page), [1, 2, 3, 4, 5, 6].map((n) => `${n}:done`));
  assert.equal(await page.textContent("#job-summary"), "6 of 6 pages done · succeeded");
  assert.equal(requests.filter((r) => r === "POST /v1/jobs").length, 1, "the reload started no new job");
  await page.click("#next-page");
  assert.match(await page.textContent("#page-label"), /^Page 2 · 2 of 6/);

  // Another tab has no key (sessionStorage is per tab): the job id in the link waits for one.
  const other = await openPage(context, page.url());
  assert.equal(await waitForEnd(other.page), "error");
  assert.match(await other.page.textContent("#error"), /HTTP 401/);
  assert.equal(jobIdInUrl(other.page), jobId, "the id stays for when the key is given");
  await enterKey(other.page, KEY);
  await other.page.waitForFunction(() => document.body.dataset.state === "done", null, { timeout: TIMEOUT_MS });
  assert.deepEqual(await marks(other.page), [1, 2, 3, 4, 5, 6].map((n) => `${n}:done`));
  assert.deepEqual([...problems, ...other.problems], []);
  await context.close();
});

test("Cancel cancels the job on the server and forgets it", async () => {
  const context = await browser.newContext();
  const { page, requests } = await openPage(context);
  await enterKey(page, KEY);
  await pickFile(page, PDF_6, "runs as a job)");
  await page.click("#run");
  await page.waitForSelector('#job-pages li[data-state="done"]', { timeout: TIMEOUT_MS });
  const jobId = jobIdInUrl(page);
  await page.click("#cancel");
  assert.equal(await waitForEnd(page), "error");
  assert.equal(await page.textContent("#error"), "Cancelled.");
  assert.ok(requests.includes(`POST /v1/jobs/${jobId}/cancel`));
  assert.equal((await api(`/v1/jobs/${jobId}`)).status, "cancelled");
  assert.match(await page.textContent("#job-summary"), / · cancelled$/);
  assert.ok(await page.isHidden("#cancel"));
  assert.ok(await page.isEnabled("#run"));
  assert.equal(jobIdInUrl(page), null);
  assert.equal(await keptJob(page), null);
  // Nothing to follow after a reload.
  await page.reload();
  assert.equal(await page.evaluate(() => document.body.dataset.state), "idle");
  assert.ok(await page.isHidden("#error"));
  await context.close();
});

test("a job id the server does not know shows a clear message and is forgotten", async () => {
  const context = await browser.newContext();
  const { page } = await openPage(context, `${URL_}/#job=no-such-job`);
  assert.equal(await waitForEnd(page), "error");
  assert.match(await page.textContent("#error"), /API key/);
  await enterKey(page, KEY);
  await page.waitForFunction(() => /was not found/.test(document.getElementById("error").textContent));
  assert.match(await page.textContent("#error"), /^Job no-such-job was not found: it expired/);
  assert.equal(jobIdInUrl(page), null);
  assert.equal(await keptJob(page), null);
  assert.ok(await page.isHidden("#job"));
  assert.ok(await page.isEnabled("#run"));
  await context.close();
});

test("a job's pages are sanitised as streamed ones are: model output never runs", async () => {
  const context = await browser.newContext();
  const { page } = await openPage(context);
  await enterKey(page, KEY);
  await pickFile(page, PDF_6, "runs as a job)");
  await page.selectOption("#preset", "free");
  await page.fill("#pages", "1-4");
  await page.click("#run");
  assert.equal(await waitForEnd(page), "done", await page.textContent("#error"));
  assert.equal(await page.textContent("#job-summary"), "4 of 4 pages done · succeeded");
  assert.equal(await page.evaluate(() => window.__pwned), undefined);
  const html = (await page.innerHTML("#tab-rendered")).toLowerCase();
  for (const bad of ["<script", "onerror", "onclick", "javascript:", "style="]) assert.ok(!html.includes(bad), `${bad} in ${html}`);
  assert.equal(await page.textContent("#tab-rendered table td"), "cell");
  await context.close();
});

test("on a server without jobs a long PDF is read in one request", async () => {
  for (const url of [URL_JOBS_OFF, URL_JOBS_BROKEN]) {
    const context = await browser.newContext();
    const { page, requests } = await openPage(context, url);
    await pickFile(page, PDF_4, "runs as a job)");
    await page.click("#run");
    assert.equal(await waitForEnd(page), "done", await page.textContent("#error"));
    assert.deepEqual(requests.filter((r) => r.startsWith("POST")), ["POST /v1/jobs", "POST /v1/ocr"], url);
    assert.match(await page.textContent("#status"), /^Done: 4 pages,/);
    assert.ok(await page.isHidden("#job"));
    assert.equal(jobIdInUrl(page), null);
    await context.close();
  }
});
