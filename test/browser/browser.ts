import { existsSync } from "node:fs";
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium, type Browser, type BrowserContext, type BrowserContextOptions, type Page } from "playwright-core";

/** Debian's Chromium (`.ci/run` installs it with apt; `npx playwright install` cannot download here). */
export const CHROMIUM = process.env.RESONANCE_CHROMIUM ?? "/usr/bin/chromium";

/** Where the browser tests save their screenshots (CI prints this path). */
export const SCREENSHOT_DIR = process.env.RESONANCE_SCREENSHOT_DIR ?? fileURLToPath(new URL("../../dist/screenshots/", import.meta.url));

/** Why the browser tests cannot run here, or undefined when they can. */
export function browserMissing(): string | undefined {
  return existsSync(CHROMIUM) ? undefined : `no Chromium at ${CHROMIUM} (apt-get install -y chromium)`;
}

/** Headless Chromium with the flags that work on these machines. */
export function launch(): Promise<Browser> {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
}

/**
 * A page in a fresh context (its own storage: one person) that records console errors,
 * uncaught page errors and failed requests, so that `errors` can be asserted empty.
 */
export class TestPage {
  readonly context: BrowserContext;
  readonly page: Page;
  readonly errors: string[] = [];

  private constructor(context: BrowserContext, page: Page) {
    this.context = context;
    this.page = page;
  }

  static async open(browser: Browser, url: string, opts: BrowserContextOptions = {}): Promise<TestPage> {
    const context = await browser.newContext({ viewport: { width: 1100, height: 720 }, ...opts });
    const page = await context.newPage();
    const p = new TestPage(context, page);
    page.on("console", (m) => {
      if (m.type() === "error" && !p.#expected(m.text())) p.errors.push(`console: ${m.text()}`);
    });
    page.on("pageerror", (e) => p.errors.push(`page error: ${e.message}`));
    await page.goto(url);
    return p;
  }

  #allowed: RegExp[] = [];

  /**
   * Console errors matching `pattern` are expected from now on (the browser itself logs a
   * failed WebSocket or fetch while the server is down; the page cannot silence that).
   */
  allow(pattern: RegExp): void {
    this.#allowed.push(pattern);
  }

  #expected(text: string): boolean {
    return this.#allowed.some((r) => r.test(text));
  }

  async screenshot(name: string): Promise<string> {
    await mkdir(SCREENSHOT_DIR, { recursive: true });
    const path = join(SCREENSHOT_DIR, `${name}.png`);
    await this.page.screenshot({ path });
    return path;
  }

  async close(): Promise<void> {
    await this.context.close();
  }
}

/** Registers `username` through the page's form (the page ends on the chat screen). */
export async function register(p: TestPage, username: string, nickname: string, password = `pw-${username}-1`): Promise<void> {
  const page = p.page;
  await page.getByRole("button", { name: "Create an account" }).click();
  await page.getByLabel("Username").fill(username);
  await page.getByLabel("Nickname").fill(nickname);
  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Create account" }).click();
  await page.getByRole("navigation", { name: "Chats" }).waitFor();
}

/** The session button in the list, found by the chat's name. */
export function sessionButton(p: TestPage, name: string) {
  return p.page.locator(".session", { has: p.page.locator(".session-name", { hasText: name }) });
}
