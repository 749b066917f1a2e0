import http from "node:http";
import type { AddressInfo } from "node:net";
import type { Logger } from "./log.js";
import type { Metrics } from "./metrics.js";

/**
 * `/healthz` (alive), `/readyz` (serving; 503 from the first moment of shutdown) and `/metrics`.
 */
export class HealthServer {
  readonly #server: http.Server;
  readonly #host: string;
  readonly #port: number;
  readonly #log: Logger;
  #ready = false;
  readonly #checks: Array<() => string | undefined> = [];
  #closing: Promise<void> | undefined;

  constructor(opts: { host: string; port: number; metrics: Metrics; log: Logger }) {
    this.#host = opts.host;
    this.#port = opts.port;
    this.#log = opts.log;
    this.#server = http.createServer((req, res) => {
      const path = (req.url ?? "/").split("?")[0];
      if (path === "/healthz") return void res.writeHead(200, { "content-type": "text/plain" }).end("ok\n");
      if (path === "/readyz") {
        const why = this.#ready ? this.#notReady() : undefined;
        res.writeHead(this.#ready && !why ? 200 : 503, { "content-type": "text/plain" });
        return void res.end(!this.#ready ? "not ready\n" : why ? `not ready: ${why}\n` : "ready\n");
      }
      if (path === "/metrics") {
        opts.metrics.registry.metrics().then(
          (body) => res.writeHead(200, { "content-type": opts.metrics.registry.contentType }).end(body),
          () => res.writeHead(500).end(),
        );
        return;
      }
      res.writeHead(404).end();
    });
    this.#server.keepAliveTimeout = 5_000;
  }

  get port(): number {
    return (this.#server.address() as AddressInfo | null)?.port ?? this.#port;
  }

  async start(): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      this.#server.once("error", reject);
      this.#server.listen(this.#port, this.#host, () => {
        this.#server.off("error", reject);
        resolve();
      });
    });
    this.#log.info({ port: this.port }, "health and metrics listening");
  }

  setReady(ready: boolean): void {
    this.#ready = ready;
  }

  /** Adds a condition of readiness: `check` returns why the process cannot serve now, or undefined. */
  addCheck(check: () => string | undefined): void {
    this.#checks.push(check);
  }

  #notReady(): string | undefined {
    for (const check of this.#checks) {
      const why = check();
      if (why) return why;
    }
    return undefined;
  }

  close(): Promise<void> {
    this.#closing ??= new Promise<void>((resolve) => {
      if (!this.#server.listening) return resolve();
      this.#server.close(() => resolve());
      this.#server.closeAllConnections();
    });
    return this.#closing;
  }
}
