import http from "node:http";
import type { AddressInfo } from "node:net";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { brotliCompressSync, brotliDecompressSync, gunzipSync } from "node:zlib";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CONTENT_SECURITY_POLICY, StaticSite } from "./static.js";

const log = pino({ level: "silent" });

/** Serves `site` like the gateway does (only the requests it wants; anything else 418). */
async function serve(site: StaticSite): Promise<{ url: string; close: () => Promise<void> }> {
  const server = http.createServer((req, res) => (StaticSite.wants(req) ? site.serve(req, res) : void res.writeHead(418).end()));
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () => new Promise((r) => server.close(() => r())),
  };
}

/** A raw GET (fetch would decompress and hide the encoding). */
function get(url: string, headers: Record<string, string> = {}, method = "GET"): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: Buffer }> {
  return new Promise((resolve, reject) => {
    http
      .request(url, { method, headers }, (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks) }));
      })
      .on("error", reject)
      .end();
  });
}

describe("static site", () => {
  let dir: string;
  let built: { url: string; close: () => Promise<void> };
  const js = `console.log(${JSON.stringify("x".repeat(2000))});`;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "resonance-static-"));
    await mkdir(join(dir, "assets"));
    await writeFile(join(dir, "index.html"), `<!doctype html><title>t</title><script type="module" src="/assets/app-abc123.js"></script>${" ".repeat(300)}`);
    await writeFile(join(dir, "assets", "app-abc123.js"), js);
    await writeFile(join(dir, "assets", "app-abc123.js.map"), "{}");
    await writeFile(join(dir, "assets", "app-abc123.js.br"), brotliCompressSync(js)); // As the build writes it.
    await writeFile(join(dir, "favicon.svg"), "<svg/>");
    built = await serve(await StaticSite.load(dir, log));
  });
  afterAll(async () => {
    await built?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it("static - the page: no-cache, the CSP, an ETag answered with 304", async () => {
    const r = await get(`${built.url}/`);
    expect(r.status).toBe(200);
    expect(r.headers["content-type"]).toBe("text/html; charset=utf-8");
    expect(r.headers["cache-control"]).toBe("no-cache");
    expect(r.headers["content-security-policy"]).toBe(CONTENT_SECURITY_POLICY);
    expect(r.body.toString()).toContain("/assets/app-abc123.js");
    const again = await get(`${built.url}/`, { "if-none-match": r.headers.etag! });
    expect(again.status).toBe(304);
    expect(again.body.length).toBe(0);
  });

  it("static - hashed assets are immutable for a year, served compressed as the client accepts", async () => {
    const br = await get(`${built.url}/assets/app-abc123.js`, { "accept-encoding": "gzip, deflate, br" });
    expect(br.headers["cache-control"]).toBe("public, max-age=31536000, immutable");
    expect(br.headers["content-encoding"]).toBe("br");
    expect(brotliDecompressSync(br.body).toString()).toBe(js);
    const gz = await get(`${built.url}/assets/app-abc123.js`, { "accept-encoding": "gzip" });
    expect(gz.headers["content-encoding"]).toBe("gzip");
    expect(gunzipSync(gz.body).toString()).toBe(js);
    const plain = await get(`${built.url}/assets/app-abc123.js`);
    expect(plain.headers["content-encoding"]).toBeUndefined();
    expect(plain.body.toString()).toBe(js);
    const head = await get(`${built.url}/assets/app-abc123.js`, {}, "HEAD");
    expect(head.status).toBe(200);
    expect(Number(head.headers["content-length"])).toBe(js.length);
    expect((await get(`${built.url}/favicon.svg`)).headers["cache-control"]).toBe("no-cache");
    // The page has no .br beside it: gzip, made at load, is what it gets.
    const page = await get(`${built.url}/`, { "accept-encoding": "br, gzip" });
    expect(page.headers["content-encoding"]).toBe("gzip");
    expect(gunzipSync(page.body).toString()).toContain("<!doctype html>");
  });

  it("static - no source maps, 404 for unknown paths, and the API paths are left alone", async () => {
    expect((await get(`${built.url}/assets/app-abc123.js.map`)).status).toBe(404);
    expect((await get(`${built.url}/assets/app-abc123.js.br`)).status).toBe(404);
    expect((await get(`${built.url}/nope`)).status).toBe(404);
    expect((await get(`${built.url}/resonance.gateway.v1.AuthService/Login`)).status).toBe(418);
    expect((await get(`${built.url}/ws`)).status).toBe(418);
  });

  it("static - without a build, the page says how to make one", async () => {
    const empty = await serve(await StaticSite.load(join(dir, "missing"), log));
    try {
      const r = await get(`${empty.url}/`);
      expect(r.status).toBe(404);
      expect(r.body.toString()).toContain("npm run build:web");
    } finally {
      await empty.close();
    }
  });
});
