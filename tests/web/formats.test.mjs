// Browser tests of the file formats: the playground's download buttons, and the HTML output in chromium.
//
// Run by tests/web/test_formats_browser.py, which starts the server and passes:
//   DSOCR_URL   a dsocr server with a fake engine (its "free" preset answers with hostile markup)
//   DSOCR_PDF   a two-page PDF
//   DSOCR_TMP   a temporary folder
//   CHROMIUM    the browser binary (default /usr/bin/chromium)
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { after, before, test } from "node:test";
import { launchChromium } from "./chromium.mjs";

const env = (name) => {
  const value = process.env[name];
  assert.ok(value, `${name} must be set (run through tests/web/test_formats_browser.py)`);
  return value;
};
const URL_ = env("DSOCR_URL");
const PDF = env("DSOCR_PDF");
const TMP = env("DSOCR_TMP");

let browser;

before(async () => {
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
});

test("the playground downloads a searchable PDF, hOCR, ALTO and HTML of the document", async () => {
  const context = await browser.newContext({ acceptDownloads: true });
  const page = await context.newPage();
  const problems = [];
  page.on("pageerror", (error) => problems.push(error.message));
  await page.goto(URL_);
  await page.setInputFiles("#file-input", PDF);
  for (const button of await page.locator("button.dl-file").all()) assert.ok(await button.isDisabled());
  await page.click("#run");
  await page.waitForFunction(() => ["done", "error"].includes(document.body.dataset.state), null, { timeout: 60_000 });
  assert.equal(await page.evaluate(() => document.body.dataset.state), "done", await page.textContent("#error"));

  const expected = {
    pdf: ["two-pages.pdf", (b) => b.subarray(0, 5).toString() === "%PDF-"],
    hocr: ["two-pages.hocr", (b) => (b.toString().match(/class="ocr_page"/g) ?? []).length === 2],
    alto: ["two-pages.xml", (b) => b.toString().includes("http://www.loc.gov/standards/alto/ns-v4#")],
    html: ["two-pages.html", (b) => (b.toString().match(/<section class="page"/g) ?? []).length === 2],
  };
  for (const [format, [name, check]] of Object.entries(expected)) {
    const [download] = await Promise.all([
      page.waitForEvent("download", { timeout: 60_000 }),
      page.click(`button.dl-file[data-format="${format}"]`),
    ]);
    assert.equal(download.suggestedFilename(), name);
    const bytes = readFileSync(await download.path());
    assert.ok(check(bytes), `${format}: ${bytes.subarray(0, 200).toString()}`);
  }
  // The searchable PDF holds both pages' text.
  const pdf = readFileSync(await (await Promise.all([
    page.waitForEvent("download"), page.click('button.dl-file[data-format="pdf"]'),
  ]))[0].path());
  assert.ok(pdf.length > 1000);
  assert.deepEqual(problems, []);
  await context.close();
});

test("the HTML of a page full of script-bearing markup runs nothing in chromium", async () => {
  const form = new FormData();
  form.append("file", new Blob([readFileSync(PDF)], { type: "application/pdf" }), "hostile.pdf");
  form.append("preset", "free");
  form.append("pages", "1");
  const response = await fetch(`${URL_}/v1/ocr?format=html`, { method: "POST", body: form });
  assert.equal(response.status, 200, await response.clone().text());
  assert.match(response.headers.get("content-type"), /^text\/html/);
  const html = await response.text();
  const file = join(TMP, "hostile.html");
  writeFileSync(file, html);

  const context = await browser.newContext();
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (error) => errors.push(error.message));
  await page.goto(pathToFileURL(file).href);
  // Give any handler a chance to fire: load, a click on every link and cell.
  await page.waitForLoadState("load");
  for (const element of await page.locator("a, td, img").all()) await element.click({ force: true, noWaitAfter: true }).catch(() => {});
  await page.waitForTimeout(300);
  assert.equal(await page.evaluate(() => window.__pwned), undefined);
  // No script, frame or SVG element; no handler, style or script URL in any attribute. (The
  // hostile text may still be read as text: "[click](javascript:…)" is shown, not linked.)
  assert.equal(await page.locator("script, iframe, svg, object, embed").count(), 0);
  const attributes = await page.evaluate(() =>
    [...document.querySelectorAll("body *")].flatMap((element) =>
      [...element.attributes].map((attribute) => `${element.tagName}.${attribute.name}=${attribute.value}`)),
  );
  for (const attribute of attributes) {
    assert.doesNotMatch(attribute, /^\w+\.(on\w+|style)=/i, attribute);
    assert.doesNotMatch(attribute, /=\s*(javascript|data:text|vbscript):?/i, attribute);
  }
  assert.equal(await page.textContent("td"), "cell", "the table survives with its text");
  assert.equal((await page.textContent("h1")).trim(), "Title", "the heading survives");
  await context.close();
});
