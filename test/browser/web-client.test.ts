/// <reference lib="dom" />
/// <reference lib="dom.iterable" />
// Callbacks given to page.evaluate run in the page: they are typed against the DOM.
import { spawn, spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import type { Browser } from "playwright-core";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { ResonanceClient } from "../../src/client/index.js";
import { TestCluster } from "../support/cluster.js";
import { eventually, freePort, type ServiceProcess } from "../support/processes.js";
import { browserMissing, launch, register, SCREENSHOT_DIR, sessionButton, TestPage } from "./browser.js";

/*
 * The web client in Debian's Chromium against the real server (`resonance all` as a process,
 * serving the page from this checkout's build). Every test fails on a browser console error.
 */

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const missing = browserMissing();
if (missing && process.env.CI === "true") throw new Error(`browser tests: ${missing} (CI=true: they must run)`);
if (missing) console.warn(`skipping the browser tests: ${missing}`);

const TIMEOUT = 20_000;
/** What the browser itself logs (not the page) while the server is down. */
const SERVER_DOWN = /WebSocket connection to .* failed|Failed to load resource|ERR_CONNECTION_REFUSED|ERR_EMPTY_RESPONSE/;

describe.skipIf(missing !== undefined)("web client", () => {
  let cluster: TestCluster;
  let browser: Browser;
  let url: string;
  const pages: TestPage[] = [];
  let n = 0;

  /** A new person's page; `register` names it and signs up. */
  async function person(name: string, opts: Parameters<typeof TestPage.open>[2] = {}): Promise<{ p: TestPage; username: string }> {
    const p = await TestPage.open(browser, url, opts);
    pages.push(p);
    const username = `${name}${++n}${Date.now() % 10_000}`;
    await register(p, username, name[0]!.toUpperCase() + name.slice(1));
    return { p, username };
  }

  beforeAll(async () => {
    // The page the gateway serves is this checkout's build of web/.
    const build = spawnSync("npm", ["run", "build:web"], { cwd: ROOT, encoding: "utf8" });
    if (build.status !== 0) throw new Error(`npm run build:web failed\n${build.stdout}\n${build.stderr}`);
    cluster = await TestCluster.start({ mode: "standalone", env: { RESONANCE_MAX_CONTENT_CHARS: "500", RESONANCE_WS_DRAIN_WINDOW: "500ms" } });
    url = `${cluster.urls[0]}/`;
    browser = await launch();
    console.log(`browser test screenshots: ${SCREENSHOT_DIR}`);
  });

  afterEach(async () => {
    const errors = pages.flatMap((p) => p.errors);
    for (const p of pages.splice(0)) await p.close();
    expect(errors, "browser console errors").toEqual([]);
  });

  afterAll(async () => {
    await browser?.close();
    await cluster?.destroy();
  });

  it("web - the gateway serves the page (no-cache, CSP 'self') and its hashed assets (cached a year), no source maps", async () => {
    const page = await fetch(url, { headers: { "accept-encoding": "gzip" } });
    expect(page.status).toBe(200);
    expect(page.headers.get("cache-control")).toBe("no-cache");
    expect(page.headers.get("content-security-policy")).toContain("default-src 'self'");
    expect(page.headers.get("content-security-policy")).not.toContain("unsafe");
    const html = await page.text();
    const assets = [...html.matchAll(/(?:src|href)="(\/assets\/[^"]+)"/g)].map((m) => m[1]!);
    expect(assets.length).toBeGreaterThanOrEqual(2);
    for (const a of assets) {
      const r = await fetch(new URL(a, url));
      expect(r.status, a).toBe(200);
      expect(r.headers.get("cache-control")).toBe("public, max-age=31536000, immutable");
      expect(await r.text()).not.toContain("sourceMappingURL");
      expect((await fetch(new URL(`${a}.map`, url))).status).toBe(404);
    }
    const again = await fetch(url, { headers: { "if-none-match": page.headers.get("etag")! } });
    expect(again.status).toBe(304);
    expect((await fetch(new URL("/nope", url))).status).toBe(404);
  });

  it("web - register with a nickname, clear errors, sign out clears everything local, sign in again", async () => {
    const { p, username } = await person("alice");
    const page = p.page;
    await page.getByText("Alice", { exact: true }).waitFor();
    await sessionButton(p, "Resonance Room").waitFor();
    await p.screenshot("session-list");
    expect(await page.evaluate(() => Object.keys(localStorage))).toContain("resonance.session");
    expect(await page.evaluate(() => JSON.stringify(localStorage))).not.toContain(`pw-${username}`);

    const token = await page.evaluate(() => (JSON.parse(localStorage.getItem("resonance.session")!) as { token: string }).token);
    const sessionList = (): Promise<Response> =>
      fetch(new URL("/resonance.gateway.v1.SessionService/GetSessionList", url), {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
        body: "{}",
      });
    expect((await sessionList()).status).toBe(200);
    await page.getByRole("button", { name: "Sign out" }).click();
    await page.getByRole("button", { name: "Sign in", exact: true }).waitFor();
    expect(await page.evaluate(() => Object.keys(localStorage).filter((k) => k !== "resonance.theme"))).toEqual([]);
    await expect.poll(async () => (await sessionList()).status, { timeout: TIMEOUT }).toBe(401); // Revoked, not just forgotten.
    expect(await page.getByRole("status").count()).toBe(0); // No "session expired" notice after signing out.

    p.allow(/status of 401/); // The browser logs the refused login itself.
    await page.getByLabel("Username").fill(username);
    await page.getByLabel("Password").fill("wrong-password");
    await page.getByRole("button", { name: "Sign in", exact: true }).click();
    await expect.poll(() => page.getByRole("alert").textContent(), { timeout: TIMEOUT }).toBe("Wrong username or password.");

    p.allow(/status of 409/);
    await page.getByRole("button", { name: "Create an account" }).click();
    await page.getByLabel("Username").fill(username);
    await page.getByLabel("Password").fill("another-password");
    await page.getByRole("button", { name: "Create account" }).click();
    await expect.poll(() => page.getByRole("alert").textContent(), { timeout: TIMEOUT }).toBe("That username is taken.");
    await p.screenshot("sign-in-error");

    await page.getByRole("button", { name: "Sign in", exact: true }).click();
    await page.getByLabel("Password").fill(`pw-${username}-1`);
    await page.getByRole("button", { name: "Sign in", exact: true }).click();
    await sessionButton(p, "Resonance Room").waitFor();
  });

  it("web - a token revoked elsewhere sends the page back to sign-in, saying why", async () => {
    const { p } = await person("alice");
    const page = p.page;
    await sessionButton(p, "Resonance Room").waitFor();
    const token = await page.evaluate(() => (JSON.parse(localStorage.getItem("resonance.session")!) as { token: string }).token);
    p.allow(/status of 401/);
    const r = await fetch(new URL("/resonance.gateway.v1.AuthService/Logout", url), {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
      body: "{}",
    });
    expect(r.status).toBe(200);
    await page.getByRole("status").filter({ hasText: "Your session has expired" }).waitFor({ timeout: TIMEOUT });
    await page.getByRole("button", { name: "Sign in", exact: true }).waitFor();
    expect(await page.evaluate(() => localStorage.getItem("resonance.session"))).toBeNull();
  });

  it("web - two people chat both ways live; quick sends keep their order; unread badge, then read", async () => {
    const { p: a } = await person("alice");
    const { p: b } = await person("bob");
    await sessionButton(a, "Resonance Room").click();
    const box = a.page.getByRole("textbox", { name: "Message" });
    const words = ["one", "two", "three", "four", "five"].map((w) => `${w}-${n}`);
    for (const w of words) {
      await box.fill(w);
      await box.press("Enter");
    }
    await expect.poll(() => a.page.locator('.msg.mine[data-status="sent"] .msg-text').allTextContents(), { timeout: TIMEOUT }).toEqual(words);

    // Bob has no chat open: the room gets a badge and a preview.
    const room = sessionButton(b, "Resonance Room");
    await expect.poll(() => room.locator(".session-preview").textContent(), { timeout: TIMEOUT }).toContain(words[4]);
    const badge = Number(await room.locator(".badge").textContent());
    expect(badge).toBeGreaterThanOrEqual(words.length);
    await b.screenshot("unread-badge");
    await room.click();
    await expect.poll(() => b.page.locator(".msg:not(.mine) .msg-text").allTextContents(), { timeout: TIMEOUT }).toEqual(expect.arrayContaining(words));
    await expect.poll(() => room.locator(".badge").count(), { timeout: TIMEOUT }).toBe(0);
    // Consecutive messages of one sender are grouped under one name.
    expect(await b.page.locator(".msg:not(.mine):not(.grouped) .msg-from").count()).toBeLessThan(words.length);
    await b.page.locator(".day", { hasText: "Today" }).first().waitFor();

    const reply = `hi alice ${n}`;
    await b.page.getByRole("textbox", { name: "Message" }).fill(reply);
    await b.page.getByRole("textbox", { name: "Message" }).press("Enter");
    await a.page.locator(".msg:not(.mine) .msg-text", { hasText: reply }).waitFor({ timeout: TIMEOUT });
    await a.screenshot("chat");
    // Each message exactly once on both sides.
    for (const w of [...words, reply]) {
      expect(await a.page.locator(".msg-text", { hasText: new RegExp(`^${w}$`) }).count()).toBe(1);
      expect(await b.page.locator(".msg-text", { hasText: new RegExp(`^${w}$`) }).count()).toBe(1);
    }
  });

  it("web - new chat: a one-to-one found by search, and a named group with members", async () => {
    const { p: a } = await person("alice");
    const { p: b, username: bob } = await person("bob");
    const { username: carol } = await person("carol");
    const page = a.page;

    await page.getByRole("button", { name: "New chat" }).click();
    const dialog = page.getByRole("dialog", { name: "New chat" });
    await dialog.getByLabel("Find a person").fill(bob);
    await dialog.getByRole("button", { name: new RegExp(`@${bob}`) }).click();
    await dialog.waitFor({ state: "detached" });
    const title = page.locator(".chat-title");
    await expect.poll(() => title.textContent(), { timeout: TIMEOUT }).not.toBe("Resonance Room");
    await page.getByRole("textbox", { name: "Message" }).fill("just us");
    await page.getByRole("textbox", { name: "Message" }).press("Enter");
    await b.page.locator(".session-preview", { hasText: "just us" }).waitFor({ timeout: TIMEOUT });

    await page.getByRole("button", { name: "New chat" }).click();
    await dialog.getByText("Group").click();
    await dialog.getByLabel("Group name").fill("Project Nova");
    for (const u of [bob, carol]) {
      await dialog.getByLabel("Add members").fill(u);
      await dialog.getByRole("button", { name: new RegExp(`@${u}`) }).click();
    }
    await expect.poll(() => dialog.getByRole("list", { name: "Members" }).locator("li").count()).toBe(2);
    await a.screenshot("new-group");
    await dialog.getByRole("button", { name: "Create group" }).click();
    await expect.poll(() => title.textContent(), { timeout: TIMEOUT }).toBe("Project Nova");
    await page.getByRole("textbox", { name: "Message" }).fill("welcome to the group");
    await page.getByRole("textbox", { name: "Message" }).press("Enter");
    await sessionButton(b, "Project Nova").waitFor({ timeout: TIMEOUT });
    await sessionButton(b, "Project Nova").click();
    await b.page.locator(".msg-text", { hasText: "welcome to the group" }).waitFor({ timeout: TIMEOUT });
  });

  it("web - older history loads on scroll up without a jump; a 'new messages' pill while reading older ones", async () => {
    const { p: a, username: alice } = await person("alice");
    // Carol writes 75 messages from the SDK into a group with Alice.
    const carol = new ResonanceClient({ urls: [cluster.urls[0]!], username: `carol${Date.now() % 100_000}`, password: "pw-carol-1", register: true });
    await carol.start();
    try {
      const { sessionId } = await carol.api.session.createSession({ members: [alice], name: "Long talk", type: 2 });
      for (let i = 1; i <= 75; i++) await carol.send({ sessionId, content: `line ${i}` });
      await sessionButton(a, "Long talk").waitFor({ timeout: TIMEOUT });
      await sessionButton(a, "Long talk").click();
      const log = a.page.getByRole("log", { name: "Messages" });
      await log.locator(".msg-text", { hasText: /^line 75$/ }).waitFor({ timeout: TIMEOUT });
      expect(await log.locator(".msg").count()).toBeLessThan(75); // One page, not everything.

      // Scroll to the top: the previous page is prepended and what was on screen stays put.
      // Where the oldest loaded message sits from the log's top once scrolled up, and where it is after the load.
      const anchorText = (await log.locator(".msg .msg-text").first().textContent())!;
      const anchor = log.locator(".msg-text", { hasText: new RegExp(`^${anchorText}$`) });
      const offset = (): Promise<number> => anchor.evaluate((el) => el.getBoundingClientRect().top - el.closest(".log")!.getBoundingClientRect().top);
      const count = await log.locator(".msg").count();
      const before = await log.evaluate((el) => {
        el.scrollTop = 0;
        const m = [...el.querySelectorAll(".msg-text")][0]!;
        return m.getBoundingClientRect().top - el.getBoundingClientRect().top;
      });
      await expect.poll(() => log.locator(".msg").count(), { timeout: TIMEOUT }).toBeGreaterThan(count);
      expect(Math.abs((await offset()) - before)).toBeLessThan(4);
      await log.evaluate((el) => (el.scrollTop = 0));
      await log.locator(".msg-text", { hasText: /^line 1$/ }).waitFor({ timeout: TIMEOUT });
      await a.page.getByText("This is the beginning of the chat.").waitFor();
      await a.screenshot("history");

      // Reading old messages: a new one does not pull the view down, a pill offers it.
      await carol.send({ sessionId, content: "something new" });
      const pill = a.page.getByRole("button", { name: "New messages ↓" });
      await pill.waitFor({ timeout: TIMEOUT });
      await pill.click();
      await pill.waitFor({ state: "detached", timeout: TIMEOUT });
      await expect.poll(() => log.evaluate((el) => el.scrollHeight - el.scrollTop - el.clientHeight), { timeout: TIMEOUT }).toBeLessThan(48);
    } finally {
      await carol.close();
    }
  });

  it("web - a send the server refuses shows why, with a Retry that sends the same message again (one entry, never two)", async () => {
    const { p: a } = await person("alice");
    await sessionButton(a, "Resonance Room").click();
    const box = a.page.getByRole("textbox", { name: "Message" });
    await box.fill("x".repeat(600)); // Over RESONANCE_MAX_CONTENT_CHARS=500 set for this server.
    await box.press("Enter");
    const failed = a.page.locator('.msg[data-status="failed"]');
    await failed.waitFor({ timeout: TIMEOUT });
    expect(await failed.getByRole("alert").textContent()).toMatch(/Not sent: .+ Retry/);
    await failed.getByRole("button", { name: "Retry" }).click();
    await expect.poll(() => failed.count(), { timeout: TIMEOUT }).toBe(1);
    await failed.getByRole("button", { name: "Retry" }).waitFor({ timeout: TIMEOUT });
    expect(await a.page.locator(".msg").count()).toBe(1 + (await a.page.locator(".msg:not(.mine)").count()));
  });

  it("web - a gateway restart while a message is typed and sent: banner with Retry now, reconnects, delivered exactly once", async () => {
    const { p: a } = await person("alice");
    const { p: b } = await person("bob");
    for (const p of [a, b]) await sessionButton(p, "Resonance Room").click();
    const old = cluster.gateways[cluster.gateways.length - 1]!;
    for (const p of [a, b]) p.allow(SERVER_DOWN);

    old.kill("SIGTERM");
    expect((await old.exited).code).toBe(0);
    const banner = a.page.getByRole("status").filter({ hasText: /Reconnecting in \d+ s|Connecting/ });
    await banner.waitFor({ timeout: TIMEOUT });
    const text = `sent while the server was down ${n}`;
    await a.page.getByRole("textbox", { name: "Message" }).fill(text);
    await a.page.getByRole("textbox", { name: "Message" }).press("Enter");
    await a.page.locator('.msg[data-status="pending"]', { hasText: text }).waitFor();
    await a.page.getByRole("button", { name: "Retry now" }).waitFor({ timeout: TIMEOUT });
    await a.screenshot("reconnecting");

    const again: ServiceProcess = await cluster.startProcess("all", {
      RESONANCE_DATA_DIR: cluster.dataDir!,
      RESONANCE_HTTP_PORT: old.env.RESONANCE_HTTP_PORT!,
      RESONANCE_PUSH_PORT: old.env.RESONANCE_PUSH_PORT!,
      RESONANCE_LOGIC_PORT: old.env.RESONANCE_LOGIC_PORT!,
      RESONANCE_METRICS_PORT: old.env.RESONANCE_METRICS_PORT!,
    });
    expect(again.env.RESONANCE_HTTP_PORT).toBe(old.env.RESONANCE_HTTP_PORT);
    // Retry now skips the backoff; the page would also get there by itself.
    await a.page.getByRole("button", { name: "Retry now" }).click({ timeout: 2_000 }).catch(() => {});
    await a.page.locator('.msg[data-status="sent"]', { hasText: text }).waitFor({ timeout: 30_000 });
    await b.page.locator(".msg-text", { hasText: text }).waitFor({ timeout: 30_000 });
    for (const p of [a, b]) {
      await p.page.locator(".banner").waitFor({ state: "detached", timeout: 30_000 });
      expect(await p.page.locator(".msg-text", { hasText: text }).count()).toBe(1);
    }
    // What Bob sends now reaches Alice live: both are connected again.
    await b.page.getByRole("textbox", { name: "Message" }).fill(`back ${n}`);
    await b.page.getByRole("textbox", { name: "Message" }).press("Enter");
    await a.page.locator(".msg-text", { hasText: `back ${n}` }).waitFor({ timeout: TIMEOUT });
  });

  it("web - offline: the banner says so; back online, it goes and sending works", async () => {
    const { p } = await person("alice");
    await sessionButton(p, "Resonance Room").click();
    p.allow(SERVER_DOWN);
    p.allow(/ERR_INTERNET_DISCONNECTED/);
    await p.context.setOffline(true);
    const banner = p.page.getByRole("status").filter({ hasText: "You are offline" });
    await banner.waitFor({ timeout: TIMEOUT });
    await p.page.getByRole("button", { name: "Retry now" }).waitFor();
    await p.context.setOffline(false);
    await p.page.locator(".banner").waitFor({ state: "detached", timeout: TIMEOUT });
    await p.page.getByRole("textbox", { name: "Message" }).fill(`online again ${n}`);
    await p.page.getByRole("textbox", { name: "Message" }).press("Enter");
    await p.page.locator('.msg[data-status="sent"]', { hasText: `online again ${n}` }).waitFor({ timeout: TIMEOUT });
  });

  it("web - keyboard: Enter sends, Shift+Enter breaks the line, Ctrl+K jumps, Alt+arrows move, Esc closes; dialogs trap focus", async () => {
    const { p: a, username: alice } = await person("alice");
    const { username: bob } = await person("bob");
    const page = a.page;
    // A second chat to move between.
    await page.getByRole("button", { name: "New chat" }).click();
    const dialog = page.getByRole("dialog", { name: "New chat" });
    await dialog.getByLabel("Find a person").fill(bob);
    await dialog.getByRole("button", { name: new RegExp(`@${bob}`) }).click();
    await dialog.waitFor({ state: "detached" });
    const title = page.locator(".chat-title");
    const direct = (await title.textContent())!;
    expect(direct).not.toBe("Resonance Room");

    const box = page.getByRole("textbox", { name: "Message" });
    await box.click();
    await page.keyboard.type("first line");
    await page.keyboard.press("Shift+Enter");
    await page.keyboard.type("second line");
    await page.keyboard.press("Enter");
    await page.locator(".msg-text", { hasText: "first line\nsecond line" }).waitFor({ timeout: TIMEOUT });
    expect(await box.inputValue()).toBe("");

    // Alt+↓ / Alt+↑ move through the list in its order.
    const names = await page.locator(".session-name").allTextContents();
    const at = names.indexOf(direct);
    await page.keyboard.press(at === 0 ? "Alt+ArrowDown" : "Alt+ArrowUp");
    await expect.poll(() => title.textContent()).toBe(names[at === 0 ? 1 : at - 1]);
    await page.keyboard.press(at === 0 ? "Alt+ArrowUp" : "Alt+ArrowDown");
    await expect.poll(() => title.textContent()).toBe(direct);

    // Ctrl+K opens the switcher with focus in it; Tab stays inside; Enter opens the match.
    await page.keyboard.press("Control+k");
    const jump = page.getByRole("dialog", { name: "Jump to a chat" });
    await jump.waitFor();
    expect(await page.evaluate(() => document.activeElement?.getAttribute("name"))).toBe("jump");
    for (let i = 0; i < 6; i++) {
      await page.keyboard.press("Tab");
      expect(await page.evaluate(() => document.activeElement?.closest("dialog") !== null)).toBe(true);
    }
    await page.keyboard.press("Shift+Tab");
    expect(await page.evaluate(() => document.activeElement?.closest("dialog") !== null)).toBe(true);
    await page.getByLabel("Chat name").fill("Resonance");
    await page.keyboard.press("Enter");
    await jump.waitFor({ state: "detached" });
    await expect.poll(() => title.textContent()).toBe("Resonance Room");

    // Esc closes a dialog.
    await page.keyboard.press("Control+k");
    await jump.waitFor();
    await page.keyboard.press("Escape");
    await jump.waitFor({ state: "detached" });

    // Accessible names: the log, the labelled controls.
    await page.getByRole("log", { name: "Messages" }).waitFor();
    for (const name of ["New chat", "Sign out", "Send"]) await page.getByRole("button", { name, exact: true }).waitFor();
    expect(alice).toBeTruthy();
  });

  it("web - at phone width (390 px) the list and the chat are two screens with a back button", async () => {
    const { p } = await person("alice", { viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
    const page = p.page;
    const list = page.getByRole("navigation", { name: "Chats" });
    await list.waitFor();
    expect(await page.locator(".chat").isVisible()).toBe(false);
    await p.screenshot("phone-list");
    await sessionButton(p, "Resonance Room").click();
    await page.getByRole("textbox", { name: "Message" }).waitFor();
    expect(await list.isVisible()).toBe(false);
    await page.getByRole("textbox", { name: "Message" }).fill("from my phone");
    await page.getByRole("button", { name: "Send", exact: true }).click();
    await page.locator('.msg[data-status="sent"]', { hasText: "from my phone" }).waitFor({ timeout: TIMEOUT });
    const width = await page.evaluate(() => document.documentElement.scrollWidth);
    expect(width).toBeLessThanOrEqual(390); // Nothing overflows sideways.
    await p.screenshot("phone-chat");
    await page.getByRole("button", { name: "Back to chats" }).click();
    await list.waitFor();
    expect(await page.locator(".chat").isVisible()).toBe(false);
  });

  it("web - dev mode (npm run dev:web) serves the page from source and proxies the API and /ws to a running gateway", async () => {
    const port = await freePort();
    const dev = spawn("npm", ["run", "dev:web", "--", "--port", String(port), "--strictPort"], {
      cwd: ROOT,
      env: { ...process.env, RESONANCE_GATEWAY: cluster.urls[0]! },
      stdio: ["ignore", "pipe", "pipe"],
      detached: true, // Its own process group: npm, sh and vite are stopped together.
    });
    let output = "";
    dev.stdout.on("data", (c: Buffer) => (output += c.toString()));
    dev.stderr.on("data", (c: Buffer) => (output += c.toString()));
    const devUrl = `http://127.0.0.1:${port}`;
    try {
      const html = await eventually(async () => (await fetch(devUrl)).text(), 60_000, `the dev server (${output})`);
      expect(html).toContain("/src/main.tsx");
      // The Node SDK through the dev server: the HTTP API and the WebSocket both reach the gateway.
      const dana = new ResonanceClient({ urls: [devUrl], username: `dana${Date.now() % 100_000}`, password: "pw-dana-1", register: true });
      try {
        await dana.start();
        expect((await dana.send({ sessionId: "0", content: "through the dev proxy" })).seqId).toBeGreaterThan(0n);
      } finally {
        await dana.close();
      }
      // And the page itself, from source.
      const p = await TestPage.open(browser, `${devUrl}/`);
      pages.push(p);
      await register(p, `erin${Date.now() % 100_000}`, "Erin");
      await sessionButton(p, "Resonance Room").waitFor({ timeout: TIMEOUT });
    } finally {
      process.kill(-dev.pid!, "SIGTERM");
    }
  });

  it("web - dark mode follows prefers-color-scheme, and the toggle switches it (and is kept)", async () => {
    const { p } = await person("alice", { colorScheme: "dark" });
    const page = p.page;
    const background = (): Promise<string> => page.evaluate(() => getComputedStyle(document.body).backgroundColor);
    const luminance = (rgb: string): number => {
      const [r, g, bl] = rgb.match(/\d+/g)!.map(Number);
      return 0.2126 * r! + 0.7152 * g! + 0.0722 * bl!;
    };
    expect(luminance(await background())).toBeLessThan(60);
    await sessionButton(p, "Resonance Room").click();
    await p.screenshot("dark-chat");
    await page.getByRole("button", { name: "Switch to light mode" }).click();
    await expect.poll(async () => luminance(await background())).toBeGreaterThan(200);
    await page.reload();
    await page.getByRole("navigation", { name: "Chats" }).waitFor();
    expect(luminance(await background())).toBeGreaterThan(200);
    await page.getByRole("button", { name: "Switch to dark mode" }).click();
    await expect.poll(async () => luminance(await background())).toBeLessThan(60);
  });
});
