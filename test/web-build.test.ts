import { mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";
import { build } from "vite";
import { afterAll, describe, expect, it } from "vitest";

/*
 * The web client's build: what a first page load costs (budget: 100 KB gzip of JS + CSS), no
 * source maps, and a browser SDK that pulls in nothing of Node.
 */

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const BUDGET_BYTES = 100 * 1024;
const gz = (b: Buffer | string): number => gzipSync(b, { level: 9 }).length;

describe("web build", () => {
  const dirs: string[] = [];
  afterAll(async () => {
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });

  it("web build - the first load (page + the JS and CSS it references) is within 100 KB gzip, with no source maps", async () => {
    const out = await mkdtemp(join(tmpdir(), "resonance-web-"));
    dirs.push(out);
    await build({ configFile: join(ROOT, "web/vite.config.ts"), logLevel: "warn", build: { outDir: out, emptyOutDir: true } });
    const files = await readdir(out, { recursive: true });
    expect(files.filter((f) => f.endsWith(".map"))).toEqual([]);

    const html = await readFile(join(out, "index.html"), "utf8");
    const referenced = [...html.matchAll(/<(?:script[^>]*\ssrc|link[^>]*\shref)="\/(assets\/[^"]+\.(?:js|css))"/g)].map((m) => m[1]!);
    expect(referenced.some((f) => f.endsWith(".js"))).toBe(true);
    expect(referenced.some((f) => f.endsWith(".css"))).toBe(true);
    // Everything the page needs is in those files: no other script or stylesheet, nothing from elsewhere.
    expect(html).not.toMatch(/(?:src|href)="(?:https?:)?\/\//);
    expect(html).not.toMatch(/<script(?![^>]*\ssrc=)[^>]*>/); // No inline script: the CSP forbids it.
    let js = 0;
    let css = 0;
    for (const f of referenced) {
      const body = await readFile(join(out, f));
      expect(body.toString("utf8")).not.toContain("sourceMappingURL");
      if (f.endsWith(".js")) js += gz(body);
      else css += gz(body);
    }
    const page = gz(html);
    console.log(`web build: first load ${((js + css + page) / 1024).toFixed(1)} KB gzip (JS ${(js / 1024).toFixed(1)}, CSS ${(css / 1024).toFixed(1)}, page ${(page / 1024).toFixed(1)})`);
    expect(js + css).toBeLessThanOrEqual(BUDGET_BYTES);
  });

  it("web build - the browser SDK entry bundles without any Node module", async () => {
    const out = await mkdtemp(join(tmpdir(), "resonance-sdk-"));
    dirs.push(out);
    await build({
      configFile: false,
      logLevel: "warn",
      build: {
        outDir: out,
        emptyOutDir: true,
        minify: true,
        // iife: Vite leaves lib-mode ES output unminified, which would not measure what a page ships.
        lib: { entry: join(ROOT, "src/client/browser.ts"), formats: ["iife"], name: "ResonanceSdk", fileName: () => "sdk.js" },
      },
    });
    const code = await readFile(join(out, "sdk.js"), "utf8");
    // Vite swaps a Node built-in it meets in browser code for an empty "browser external" stub.
    expect(code).not.toContain("__vite-browser-external");
    expect(code).not.toMatch(/["']node:|require\(["']ws["']\)/);
    expect(code).not.toContain(".unref(");
    console.log(`web build: browser SDK bundle ${(code.length / 1024).toFixed(1)} KB minified, ${(gz(code) / 1024).toFixed(1)} KB gzip`);
  });
});
