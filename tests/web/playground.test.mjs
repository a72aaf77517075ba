// Browser tests of the dsocr playground: playwright-core driving Debian's chromium.
//
// Run by tests/web/test_playground.py, which starts the servers and passes them in:
//   DSOCR_CPU_URL    a dsocr server with the CPU engine (a real OCR engine on a real page)
//   DSOCR_FAKE_URL   a server whose fake engine streams slowly, emits hostile markup and needs a key
//   DSOCR_FAKE_KEY   that server's API key
//   DSOCR_SAMPLE     the document uploaded to the CPU server (examples/sample-page.png)
//   DSOCR_PDF        a three-page PDF (uploaded to the fake server)
//   DSOCR_SHOTS      where the screenshots go (a temporary folder; docs/img with DSOCR_UPDATE_SCREENSHOTS=1)
//   CHROMIUM         the browser binary (default /usr/bin/chromium)
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { basename, join } from "node:path";
import { after, before, test } from "node:test";
import { launchChromium } from "./chromium.mjs";

const env = (name) => {
  const value = process.env[name];
  assert.ok(value, `${name} must be set (run through tests/web/test_playground.py)`);
  return value;
};
const CPU_URL = env("DSOCR_CPU_URL");
const FAKE_URL = env("DSOCR_FAKE_URL");
const FAKE_KEY = env("DSOCR_FAKE_KEY");
const SAMPLE = env("DSOCR_SAMPLE");
const PDF = env("DSOCR_PDF");
const SHOTS = env("DSOCR_SHOTS");
const RESULT_TIMEOUT_MS = 120_000;

let browser;

before(async () => {
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
});

async function openPage(url, viewport = { width: 1280, height: 1000 }) {
  const context = await browser.newContext({ viewport, deviceScaleFactor: 1 });
  const page = await context.newPage();
  const problems = [];
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  page.on("console", (message) => {
    if (message.type() === "error") problems.push(`console error: ${message.text()}`);
  });
  await page.goto(url);
  return { context, page, problems };
}

async function waitForEnd(page) {
  await page.waitForFunction(() => ["done", "error"].includes(document.body.dataset.state), null, {
    timeout: RESULT_TIMEOUT_MS,
  });
  return page.evaluate(() => document.body.dataset.state);
}

/** Types the key as a user does: open the "API key" box, type, leave the field. */
async function enterKey(page, key) {
  if (!(await page.locator("#key-box").evaluate((box) => box.open))) await page.click("#key-box summary");
  await page.fill("#api-key", key);
  await page.press("#api-key", "Tab");
}

/** The same document through the API directly (no stream), as the playground's reference. */
async function apiResult(baseUrl, path, fields, headers = {}) {
  const form = new FormData();
  form.append("file", new Blob([readFileSync(path)], { type: "image/png" }), basename(path));
  for (const [name, value] of Object.entries(fields)) form.append(name, value);
  const response = await fetch(`${baseUrl}/v1/ocr`, { method: "POST", body: form, headers });
  assert.equal(response.status, 200, await response.clone().text());
  return response.json();
}

test("a real page through the CPU engine: markdown and boxes match the API, screenshots", async () => {
  const { context, page, problems } = await openPage(CPU_URL);
  await page.waitForFunction(() => /engine/.test(document.getElementById("engine-status").textContent));
  await page.setInputFiles("#file-input", SAMPLE);
  await page.selectOption("#preset", "document");
  await page.click("#run");
  assert.equal(await waitForEnd(page), "done", await page.textContent("#error"));

  const expected = await apiResult(CPU_URL, SAMPLE, { preset: "document", outputs: "markdown,blocks" });
  const [apiPage] = expected.pages;
  assert.ok(apiPage.blocks.length > 0, "the CPU engine finds blocks on the sample page");
  const expectedBoxes = apiPage.blocks.reduce((sum, block) => sum + block.boxes.length, 0);

  await page.click('[data-tab="source"]');
  assert.equal(await page.textContent("#tab-source"), apiPage.markdown);
  assert.equal(await page.locator("#boxes .box").count(), expectedBoxes);

  // The rendered markdown: every markdown heading became a heading element with its text.
  await page.click('[data-tab="rendered"]');
  const headings = apiPage.markdown.split("\n").filter((line) => /^#{1,6} /.test(line));
  assert.ok(headings.length > 0);
  const rendered = await page.locator("#tab-rendered :is(h1,h2,h3,h4,h5,h6)").allTextContents();
  assert.deepEqual(rendered, headings.map((line) => line.replace(/^#+ /, "").trim()));

  // Boxes sit where the API's 0–999 grid puts them on the displayed image.
  const image = await page.locator("#page-image").boundingBox();
  const first = await page.locator("#boxes .box").first().boundingBox();
  const [x1, y1] = apiPage.blocks[0].boxes[0];
  assert.ok(Math.abs(first.x - (image.x + (x1 / 999) * image.width)) <= 2, "left edge of box 0");
  assert.ok(Math.abs(first.y - (image.y + (y1 / 999) * image.height)) <= 2, "top edge of box 0");

  // Hovering a box highlights its block in the list, and the other way round.
  await page.click('[data-tab="blocks"]');
  const lastIndex = apiPage.blocks.at(-1).index;
  await page.hover(`#boxes .box[data-block="${lastIndex}"]`);
  assert.deepEqual(await page.locator(".block-list li.hl").evaluateAll((items) => items.map((li) => li.dataset.block)), [
    String(lastIndex),
  ]);
  await page.hover(`.block-list li[data-block="${apiPage.blocks[0].index}"]`);
  assert.equal(await page.locator(`#boxes .box.hl`).count(), apiPage.blocks[0].boxes.length);

  // Downloads carry the API's markdown.
  const [markdownDownload] = await Promise.all([page.waitForEvent("download"), page.click("#dl-md")]);
  assert.equal(markdownDownload.suggestedFilename(), "sample-page.md");
  assert.equal(readFileSync(await markdownDownload.path(), "utf8"), expected.markdown);
  const [pngDownload] = await Promise.all([page.waitForEvent("download"), page.click("#dl-png")]);
  assert.deepEqual([...readFileSync(await pngDownload.path()).subarray(1, 4)], [0x50, 0x4e, 0x47]);

  // The README's screenshot: rendered markdown, with the title's box hovered to show its tag.
  await page.click('[data-tab="rendered"]');
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.hover(`#boxes .box[data-block="${apiPage.blocks[0].index}"]`);
  await page.screenshot({ path: join(SHOTS, "playground.png") });
  await page.mouse.move(0, 0);

  // Phone width: the layout stacks, nothing is wider than the screen, boxes follow the smaller image.
  await page.setViewportSize({ width: 390, height: 844 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `page is ${overflow}px wider than a 390px screen`);
  const small = await page.locator("#page-image").boundingBox();
  assert.ok(small.width < image.width, "the image shrank with the screen");
  const moved = await page.locator("#boxes .box").first().boundingBox();
  assert.ok(Math.abs(moved.x - (small.x + (x1 / 999) * small.width)) <= 2, "left edge of box 0 on a phone");
  assert.ok(Math.abs(moved.y - (small.y + (y1 / 999) * small.height)) <= 2, "top edge of box 0 on a phone");
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: join(SHOTS, "playground-phone.png") });
  assert.deepEqual(problems, []);
  await context.close();
});

test("blocks appear while the page is still being read", async () => {
  const { context, page } = await openPage(FAKE_URL);
  await enterKey(page, FAKE_KEY);
  await page.setInputFiles("#file-input", SAMPLE);
  await page.click("#run");
  // The fake engine spreads its output over seconds: a box shows before the run is done.
  await page.waitForSelector("#boxes .box", { timeout: RESULT_TIMEOUT_MS });
  assert.equal(await page.evaluate(() => document.body.dataset.state), "running");
  assert.equal(await waitForEnd(page), "done");

  // The finished page: the figure crop inline (as data, never a URL the model wrote), TeX verbatim,
  // the model's HTML table as a table.
  const crop = await page.getAttribute("#tab-rendered img", "src");
  assert.match(crop, /^data:image\/png;base64,iVBOR/);
  assert.ok((await page.locator("#tab-rendered code").allTextContents()).some((t) => /^\\\[.*\\\]$/.test(t)));
  assert.ok((await page.locator("#tab-rendered table td").count()) > 0);
  await context.close();
});

test("API errors are shown as readable messages, and the key is kept only in this tab", async () => {
  const { context, page } = await openPage(FAKE_URL);
  await page.setInputFiles("#file-input", SAMPLE);
  await page.click("#run");
  assert.equal(await waitForEnd(page), "error");
  const message = await page.textContent("#error");
  assert.match(message, /unauthorized/i);
  assert.match(message, /HTTP 401/);
  assert.match(message, /API key/);

  // A locate prompt without a target is caught before sending.
  await enterKey(page, FAKE_KEY);
  await page.selectOption("#preset", "locate");
  await page.click("#run");
  assert.match(await page.textContent("#error"), /needs something to find/);

  // A typed API error (unsupported file type) shows the server's message and field.
  await page.selectOption("#preset", "document");
  await page.setInputFiles("#file-input", { name: "notes.txt", mimeType: "text/plain", buffer: Buffer.from("hello") });
  await page.click("#run");
  assert.equal(await waitForEnd(page), "error");
  assert.match(await page.textContent("#error"), /HTTP 4\d\d/);
  assert.match(await page.textContent("#error"), /\[[a-z_]+, field file\]/);

  // A URL the server refuses to fetch (loopback: the SSRF guard) names the field.
  await page.fill("#url-input", "http://127.0.0.1:9/page.png");
  assert.equal(await page.inputValue("#file-input"), "", "a URL replaces the picked file");
  await page.click("#run");
  assert.equal(await waitForEnd(page), "error");
  assert.match(await page.textContent("#error"), /field image_url\]/);

  assert.equal(await page.evaluate(() => sessionStorage.getItem("dsocr.apiKey")), FAKE_KEY);
  assert.equal(await page.evaluate(() => localStorage.length), 0);
  // A new tab (new session) starts without the key.
  const second = await context.newPage();
  await second.goto(FAKE_URL);
  assert.equal(await second.inputValue("#api-key"), "");
  await context.close();
});

test("model output is never executed: scripts, handlers and javascript: links are stripped", async () => {
  const { context, page, problems } = await openPage(FAKE_URL);
  await enterKey(page, FAKE_KEY);
  await page.setInputFiles("#file-input", SAMPLE);
  await page.selectOption("#preset", "free");
  await page.click("#run");
  assert.equal(await waitForEnd(page), "done", await page.textContent("#error"));
  assert.equal(await page.evaluate(() => window.__pwned), undefined);
  const html = await page.innerHTML("#tab-rendered");
  for (const bad of ["<script", "onerror", "onclick", "javascript:", "<iframe", "style="]) {
    assert.ok(!html.toLowerCase().includes(bad), `rendered markdown contains ${bad}: ${html}`);
  }
  // The whitelisted table tags survive, with their text.
  assert.equal(await page.textContent("#tab-rendered table td"), "cell");
  // The raw view shows the hostile text literally.
  await page.click('[data-tab="raw"]');
  assert.match(await page.textContent("#tab-raw"), /<script>window.__pwned=2<\/script>/);
  assert.deepEqual(problems.filter((p) => !p.includes("Content Security Policy")), []);
  await context.close();
});

test("a dropped PDF: pages are navigable, each shows its own boxes, the JSON download has every page", async () => {
  const { context, page, problems } = await openPage(FAKE_URL);
  await enterKey(page, FAKE_KEY);
  // Dropped onto the drop zone, as from a file manager.
  const dataTransfer = await page.evaluateHandle(
    ([name, base64]) => {
      const transfer = new DataTransfer();
      const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
      transfer.items.add(new File([bytes], name, { type: "application/pdf" }));
      return transfer;
    },
    [basename(PDF), readFileSync(PDF).toString("base64")],
  );
  await page.dispatchEvent("#drop-zone", "drop", { dataTransfer });
  assert.match(await page.textContent("#file-name"), new RegExp(basename(PDF).replace(".", "\\.")));
  await page.click("#run");
  assert.equal(await waitForEnd(page), "done", await page.textContent("#error"));
  const [download] = await Promise.all([page.waitForEvent("download"), page.click("#dl-json")]);
  const document = JSON.parse(readFileSync(await download.path(), "utf8"));
  assert.deepEqual(document.pages.map((p) => p.page), [1, 2, 3]);
  assert.equal(document.page_count, 3);

  for (const number of [1, 2, 3]) {
    assert.match(await page.textContent("#page-label"), new RegExp(`${number} of 3`));
    const expected = document.pages[number - 1];
    const boxes = expected.blocks.reduce((sum, block) => sum + block.boxes.length, 0);
    assert.equal(await page.locator("#boxes .box").count(), boxes);
    // A PDF page is shown as the server's rendering of it.
    assert.equal(await page.getAttribute("#page-image", "src"), `data:image/png;base64,${expected.visualization}`);
    await page.click('[data-tab="source"]');
    assert.equal(await page.textContent("#tab-source"), expected.markdown);
    if (number < 3) await page.click("#next-page");
  }
  assert.ok(await page.isDisabled("#next-page"));
  await page.click("#prev-page");
  assert.match(await page.textContent("#page-label"), /2 of 3/);
  assert.deepEqual(problems, []);
  await context.close();
});

test("Cancel stops a running request", async () => {
  const { context, page } = await openPage(FAKE_URL);
  await enterKey(page, FAKE_KEY);
  await page.setInputFiles("#file-input", SAMPLE);
  await page.click("#run");
  await page.waitForSelector("#boxes .box", { timeout: RESULT_TIMEOUT_MS });
  await page.click("#cancel");
  assert.equal(await waitForEnd(page), "error");
  assert.equal(await page.textContent("#error"), "Cancelled.");
  assert.ok(await page.isHidden("#cancel"));
  assert.ok(await page.isEnabled("#run"));
  await context.close();
});

test("labels and lines named like Object.prototype members are drawn, listed and downloadable", async () => {
  const { context, page, problems } = await openPage(FAKE_URL);
  await enterKey(page, FAKE_KEY);
  await page.setInputFiles("#file-input", SAMPLE);
  const names = ["constructor", "__proto__", "toString", "hasOwnProperty"];
  // ocr: each line's text is its label; describe: layout blocks with those labels and a legend.
  for (const [preset, legend] of [["ocr", []], ["describe", names]]) {
    await page.selectOption("#preset", preset);
    await page.click("#run");
    assert.equal(await waitForEnd(page), "done", await page.textContent("#error"));
    assert.deepEqual(await page.locator("#boxes .box-tag").allTextContents(), names, preset);
    for (const colour of await page.locator("#boxes .box").evaluateAll((boxes) => boxes.map((b) => b.style.getPropertyValue("--c")))) {
      assert.match(colour, /^rgb\(\d+,\d+,\d+\)$/);
    }
    assert.deepEqual(await page.locator("#legend li").allTextContents(), legend, preset);
    await page.click('[data-tab="blocks"]');
    assert.equal(await page.locator("#tab-blocks li").count(), names.length);
    const [download] = await Promise.all([page.waitForEvent("download"), page.click("#dl-json")]);
    const document = JSON.parse(readFileSync(await download.path(), "utf8"));
    assert.deepEqual(document.pages[0].blocks.map((block) => block.label), names);
  }
  assert.deepEqual(problems, []);
  await context.close();
});
