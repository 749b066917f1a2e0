import type http from "node:http";
import { brotliDecompressSync, gunzipSync } from "node:zlib";
import { Code, ConnectError, createConnectRouter, type ConnectRouter, type Interceptor } from "@connectrpc/connect";
import type { UniversalServerResponse } from "@connectrpc/connect/protocol";
import {
  compressionBrotli,
  compressionGzip,
  universalRequestFromNodeRequest,
  universalResponseToNodeResponse,
} from "@connectrpc/connect-node";
import type { Logger } from "../observability/log.js";

/**
 * Largest public API request body (after decompression). Far above any valid request (a
 * 500-member CreateSession is ~20 KiB) and well under what logic accepts (1 MiB), so a request
 * the gateway forwards can never be refused by logic for its size.
 */
export const MAX_REQUEST_BYTES = 256 * 1024;

/** Longest error message a client gets; longer ones are cut. */
export const MAX_ERROR_CHARS = 256;

export interface ConnectHandlerOptions {
  readonly routes: (router: ConnectRouter) => void;
  readonly interceptors: Interceptor[];
  readonly log: Logger;
  /** Called for each request that is a client error caught here (metrics). */
  readonly onBadInput?: (kind: string) => void;
}

function jsonError(res: http.ServerResponse, status: number, code: string, message: string): void {
  if (res.headersSent) return void res.destroy();
  res.writeHead(status, { "content-type": "application/json" });
  res.end(JSON.stringify({ code, message }));
}

/** Cuts a ConnectError's message to {@link MAX_ERROR_CHARS}; returns it unchanged when short. */
export function boundError(err: ConnectError): ConnectError {
  if (err.rawMessage.length <= MAX_ERROR_CHARS) return err;
  return new ConnectError(`${err.rawMessage.slice(0, MAX_ERROR_CHARS)}…`, err.code, err.metadata);
}

/**
 * What connect-es itself answers for a request it could not read, made into a client error:
 * a binary body it cannot parse or a compressed body it cannot inflate come back as `internal`
 * (HTTP 500), as if the server had failed; and its messages may quote the input at any length
 * (a JSON value it could not decode). Rewrites those answers; others pass unchanged.
 */
async function clientErrors(res: UniversalServerResponse, onRewrite: (kind: string) => void): Promise<UniversalServerResponse> {
  if (res.status < 400 || !res.body) return res;
  const chunks: Uint8Array[] = [];
  for await (const c of res.body) chunks.push(c);
  const bytes = Buffer.concat(chunks);
  // A long error body is compressed like any answer (the client accepts it): read it plain.
  const encoding = res.header?.get("content-encoding");
  let parsed: { code?: unknown; message?: unknown } | undefined;
  try {
    const plain = encoding === "gzip" ? gunzipSync(bytes) : encoding === "br" ? brotliDecompressSync(bytes) : bytes;
    parsed = JSON.parse(plain.toString("utf8")) as { code?: unknown; message?: unknown };
  } catch {
    // Not a JSON error body: leave it as it is.
  }
  const replay = (body: Uint8Array, status: number): UniversalServerResponse => {
    const header = new Headers(res.header);
    header.delete("content-encoding");
    header.set("content-length", String(body.byteLength));
    header.set("content-type", "application/json");
    return { ...res, status, header, body: (async function* () { yield body; })() };
  };
  const message = typeof parsed?.message === "string" ? parsed.message : undefined;
  if (parsed?.code === "internal" && message !== undefined) {
    const unreadable = message.startsWith("parse binary") ? "malformed protobuf request body" : message === "decompression failed" ? "the request body does not inflate with its content-encoding" : undefined;
    if (unreadable) {
      onRewrite(message.startsWith("parse") ? "malformed-protobuf" : "bad-compression");
      return replay(Buffer.from(JSON.stringify({ code: "invalid_argument", message: unreadable })), 400);
    }
  }
  if (message !== undefined && message.length > MAX_ERROR_CHARS) {
    return replay(Buffer.from(JSON.stringify({ ...parsed, message: `${message.slice(0, MAX_ERROR_CHARS)}…` })), res.status);
  }
  return { ...res, body: (async function* () { yield bytes; })() };
}

/** Request encodings connect-es inflates; an empty header or `identity` means none. */
const ENCODINGS = new Set(["gzip", "br"]);

/**
 * The public Connect API as a Node request listener: the same as connect-node's adapter
 * (gzip/brotli, JSON and binary), plus: bodies over {@link MAX_REQUEST_BYTES} are refused; a
 * malformed protobuf or compressed body is a 400 and an unknown content-encoding a 415 (not a
 * 5xx); error messages are cut to {@link MAX_ERROR_CHARS}; a request the adapter cannot even read
 * (no Host header) is a 400 (not an exception); unknown paths get a JSON 404.
 */
export function connectHandler(opts: ConnectHandlerOptions): (req: http.IncomingMessage, res: http.ServerResponse) => void {
  const router = createConnectRouter({
    interceptors: opts.interceptors,
    readMaxBytes: MAX_REQUEST_BYTES,
    acceptCompression: [compressionGzip, compressionBrotli],
  });
  opts.routes(router);
  const handlers = new Map(router.handlers.map((h) => [h.requestPath, h]));
  return (req, res) => {
    const handler = handlers.get((req.url ?? "").split("?", 1)[0]!);
    if (!handler) return jsonError(res, 404, "not_found", "no such method");
    // An encoding nobody supports is the client's mistake (connect-es says 501, a server error).
    const encoding = req.headers["content-encoding"]?.trim().toLowerCase();
    if (encoding === "" || encoding === "identity") delete req.headers["content-encoding"];
    else if (encoding !== undefined && !ENCODINGS.has(encoding)) {
      opts.onBadInput?.("bad-compression");
      return jsonError(res, 415, "invalid_argument", "unsupported content-encoding: use gzip, br or none");
    }
    let uReq: ReturnType<typeof universalRequestFromNodeRequest>;
    try {
      uReq = universalRequestFromNodeRequest(req, res, undefined, undefined);
    } catch {
      opts.onBadInput?.("unreadable-request");
      return jsonError(res, 400, "invalid_argument", "malformed request");
    }
    handler(uReq)
      .then((uRes) => clientErrors(uRes, (kind) => opts.onBadInput?.(kind)))
      .then((uRes) => universalResponseToNodeResponse(uRes, res))
      .catch((reason: unknown) => {
        // The client went away mid-answer, or the answer could not be written: nothing to tell.
        if (ConnectError.from(reason).code !== Code.Aborted) opts.log.debug({ err: reason, method: handler.method.name }, "answer not delivered");
        if (!res.writableEnded) res.destroy();
      });
  };
}
