import { createHash } from "node:crypto";
import { readdir, readFile } from "node:fs/promises";
import type http from "node:http";
import { join, relative, sep } from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";
import type { Logger } from "../observability/log.js";

/** Where `npm run build:web` (run by `npm install`) writes the web client. */
export const WEB_BUILD_DIR = fileURLToPath(new URL("../../dist/web/", import.meta.url));

/**
 * The page may load and connect only to its own origin. `connect-src 'self'` also allows the
 * same-origin `ws:`/`wss:` socket (CSP Level 3, Chromium, Firefox and Safari alike).
 */
export const CONTENT_SECURITY_POLICY = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "connect-src 'self'",
  "object-src 'none'",
  "base-uri 'none'",
  "form-action 'self'",
  "frame-ancestors 'none'",
].join("; ");

const TYPES: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".svg": "image/svg+xml",
  ".png": "image/png",
  ".ico": "image/x-icon",
  ".json": "application/json",
  ".webmanifest": "application/manifest+json",
  ".txt": "text/plain; charset=utf-8",
};
const COMPRESSIBLE = new Set([".html", ".js", ".css", ".svg", ".json", ".webmanifest", ".txt"]);

interface Entry {
  readonly type: string;
  readonly etag: string;
  readonly cacheControl: string;
  readonly identity: Buffer;
  readonly gzip: Buffer | undefined;
  readonly br: Buffer | undefined;
}

/**
 * The built web client, held in memory (it is ~200 KB) with the gzip and brotli variants the
 * build wrote beside each file (`.gz`, `.br`; a file without them is gzipped here, quickly,
 * and has no brotli variant). Answers GET/HEAD for `/` and the files of the build: hashed files under
 * `/assets/` are cached for a year (their name changes with their content), everything else,
 * the page first, is revalidated on every load (`no-cache` + ETag). Source maps are never
 * served.
 */
export class StaticSite {
  readonly #files: ReadonlyMap<string, Entry>;

  private constructor(files: ReadonlyMap<string, Entry>) {
    this.#files = files;
  }

  /** Number of files served. */
  get size(): number {
    return this.#files.size;
  }

  /**
   * Reads every file of `dir` (recursively). A missing or empty dir gives a site that answers
   * every page with a 404 that says how to build it (and a warning in the log). Never rejects
   * for a missing dir.
   */
  static async load(dir: string, log: Logger): Promise<StaticSite> {
    const files = new Map<string, Entry>();
    let names: string[] = [];
    try {
      names = (await readdir(dir, { recursive: true, withFileTypes: true })).filter((d) => d.isFile()).map((d) => join(d.parentPath, d.name));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
    }
    const present = new Set(names);
    const variant = async (file: string): Promise<Buffer | undefined> => (present.has(file) ? readFile(file) : undefined);
    for (const file of names) {
      const path = `/${relative(dir, file).split(sep).join("/")}`;
      const ext = path.slice(path.lastIndexOf("."));
      if (ext === ".map" || ext === ".br" || ext === ".gz") continue;
      const body = await readFile(file);
      const compress = COMPRESSIBLE.has(ext) && body.length > 256;
      files.set(path, {
        type: TYPES[ext] ?? "application/octet-stream",
        etag: `"${createHash("sha256").update(body).digest("base64url").slice(0, 22)}"`,
        cacheControl: path.startsWith("/assets/") ? "public, max-age=31536000, immutable" : "no-cache",
        identity: body,
        gzip: compress ? ((await variant(`${file}.gz`)) ?? gzipSync(body, { level: 6 })) : undefined,
        br: compress ? await variant(`${file}.br`) : undefined,
      });
    }
    if (!files.has("/index.html")) log.warn({ dir }, "the web client is not built (run `npm run build:web`); GET / answers 404");
    return new StaticSite(files);
  }

  /** Whether this request is for the site: GET or HEAD of a path outside the API. */
  static wants(req: http.IncomingMessage): boolean {
    if (req.method !== "GET" && req.method !== "HEAD") return false;
    const path = (req.url ?? "/").split("?")[0]!;
    return !path.startsWith("/resonance.") && path !== "/ws";
  }

  /** Answers the request (see `wants`) from memory; 404 for paths that are not in the build. */
  serve(req: http.IncomingMessage, res: http.ServerResponse): void {
    let path = (req.url ?? "/").split("?")[0]!;
    if (path === "/") path = "/index.html";
    const entry = this.#files.get(path);
    if (!entry) {
      const text = this.#files.has("/index.html") ? "Not Found\n" : "The web client is not built: run `npm run build:web`, then restart.\n";
      res.writeHead(404, { "content-type": "text/plain; charset=utf-8", "cache-control": "no-cache", "x-content-type-options": "nosniff" });
      return void res.end(req.method === "HEAD" ? undefined : text);
    }
    const headers: http.OutgoingHttpHeaders = {
      "content-type": entry.type,
      "cache-control": entry.cacheControl,
      etag: entry.etag,
      vary: "accept-encoding",
      "x-content-type-options": "nosniff",
    };
    if (entry.type.startsWith("text/html")) {
      headers["content-security-policy"] = CONTENT_SECURITY_POLICY;
      headers["referrer-policy"] = "no-referrer";
    }
    if (req.headers["if-none-match"] === entry.etag) {
      res.writeHead(304, headers);
      return void res.end();
    }
    const accept = String(req.headers["accept-encoding"] ?? "");
    let body = entry.identity;
    if (entry.br && /\bbr\b/.test(accept)) {
      body = entry.br;
      headers["content-encoding"] = "br";
    } else if (entry.gzip && /\bgzip\b/.test(accept)) {
      body = entry.gzip;
      headers["content-encoding"] = "gzip";
    }
    headers["content-length"] = body.length;
    res.writeHead(200, headers);
    res.end(req.method === "HEAD" ? undefined : body);
  }
}
