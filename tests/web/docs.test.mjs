// /docs in a real browser (playwright-core driving Debian's chromium), with nothing but the dsocr
// server reachable: Swagger UI must render from the files the package ships, under the page's
// content security policy, after the browser's login prompt is answered with the API key.
//
// Run by tests/web/test_docs_browser.py, which starts the server and passes it in:
//   DSOCR_URL   a dsocr server with API keys set
//   DSOCR_KEY   one of its keys
//   CHROMIUM    the browser binary (default /usr/bin/chromium)
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { launchChromium } from "./chromium.mjs";

const env = (name) => {
  const value = process.env[name];
  assert.ok(value, `${name} must be set (run through tests/web/test_docs_browser.py)`);
  return value;
};
const URL_ = env("DSOCR_URL");
const KEY = env("DSOCR_KEY");
const ORIGIN = new URL(URL_).origin;

let browser;

before(async () => {
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
});

async function openDocs(httpCredentials) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 1000 }, httpCredentials });
  const elsewhere = [];
  // Offline but for this server: any other request is recorded and refused.
  await context.route("**/*", (route) => {
    const url = route.request().url();
    if (new URL(url).origin === ORIGIN) return route.continue();
    elsewhere.push(url);
    return route.abort();
  });
  const page = await context.newPage();
  const problems = [];
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  page.on("console", (message) => {
    if (message.type() === "error") problems.push(`console error: ${message.text()}`);
  });
  const response = await page.goto(`${URL_}/docs`);
  return { context, page, problems, elsewhere, status: response.status() };
}

test("the docs render offline from shipped assets once the key is given", async () => {
  const { context, page, problems, elsewhere, status } = await openDocs({ username: "", password: KEY });
  try {
    assert.equal(status, 200);
    await page.waitForSelector(".swagger-ui .info .title", { timeout: 30_000 });
    assert.match(await page.textContent(".swagger-ui .info .title"), /dsocr/);
    const operations = await page.locator(".opblock").count();
    assert.ok(operations >= 5, `only ${operations} operations shown`);
    assert.ok(await page.locator(".opblock-summary-path", { hasText: "/v1/ocr" }).count() >= 1);

    // "Try it out" on GET /v1/models: the browser resends the key it logged in with.
    const models = page.locator(".opblock-get", {
      // Exact: /v1/models/{model_id} is listed too.
      has: page.locator(".opblock-summary-path", { hasText: /^\/v1\/models$/ }),
    });
    await models.locator(".opblock-summary").click();
    await models.locator("button.try-out__btn").click();
    await models.locator("button.execute").click();
    const code = models.locator(".live-responses-table tbody .response-col_status").first();
    await code.waitFor({ timeout: 30_000 });
    assert.equal((await code.textContent()).trim(), "200");

    assert.deepEqual(elsewhere, [], "the page reached beyond this server");
    assert.deepEqual(problems, [], "the page logged errors (a blocked script or style shows here)");
  } finally {
    await context.close();
  }
});

test("without the key the browser is asked for one", async () => {
  // Playwright answers a login prompt with httpCredentials; without them it cancels the prompt.
  const context = await browser.newContext();
  try {
    const page = await context.newPage();
    await assert.rejects(page.goto(`${URL_}/docs`), /ERR_INVALID_AUTH_CREDENTIALS/);
  } finally {
    await context.close();
  }
});
