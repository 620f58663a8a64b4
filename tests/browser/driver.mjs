// Drives headless Chromium for tests/tests/console.rs: one JSON command per line on stdin,
// one JSON reply per line on stdout. Every console error, page error, failed request and
// HTTP error response since the last `errors` command is collected.
import { createInterface } from "node:readline";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const [baseURL, token] = process.argv.slice(2);
const userDataDir = mkdtempSync(join(tmpdir(), "sigil-chromium-"));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  baseURL,
  extraHTTPHeaders: token ? { Authorization: "Bearer " + token } : {},
  viewport: { width: 1280, height: 900 },
});
const page = context.pages()[0] ?? await context.newPage();
let errors = [];
page.on("console", (m) => { if (m.type() === "error") errors.push("console: " + m.text()); });
page.on("pageerror", (e) => errors.push("pageerror: " + e.message));
page.on("requestfailed", (r) => errors.push("requestfailed: " + r.url() + " " + (r.failure()?.errorText ?? "")));
page.on("response", (r) => { if (r.status() >= 400) errors.push("HTTP " + r.status() + ": " + r.url()); });

const commands = {
  async goto({ path }) {
    const response = await page.goto(path, { waitUntil: "load" });
    await page.waitForTimeout(300); // the live script's first poll
    return { status: response.status(), html: await page.content() };
  },
  async fill({ selector, value }) { await page.fill(selector, value); return {}; },
  async submit({ selector }) {
    await Promise.all([page.waitForNavigation({ waitUntil: "load" }), page.click(selector)]);
    return { url: page.url(), html: await page.content() };
  },
  // Milliseconds until `selector` contains `text`, or an error after `timeout_ms`.
  async wait_text({ selector, text, timeout_ms }) {
    const start = Date.now();
    await page.waitForFunction(([s, t]) => {
      const el = document.querySelector(s);
      return el !== null && el.textContent.includes(t);
    }, [selector, text], { timeout: timeout_ms, polling: 20 });
    return { ms: Date.now() - start };
  },
  async text({ selector }) { return { text: await page.textContent(selector) }; },
  async html() { return { html: await page.content() }; },
  async screenshot({ path }) { await page.screenshot({ path, fullPage: true }); return {}; },
  async errors() { const e = errors; errors = []; return { errors: e }; },
  async quit() { await context.close(); process.exit(0); },
};

for await (const line of createInterface({ input: process.stdin })) {
  let reply;
  try {
    const command = JSON.parse(line);
    reply = { ok: true, ...(await commands[command.cmd](command)) };
  } catch (e) {
    reply = { ok: false, error: String(e && e.message || e) };
  }
  process.stdout.write(JSON.stringify(reply) + "\n");
}
await context.close();
