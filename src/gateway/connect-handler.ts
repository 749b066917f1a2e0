import type http from "node:http";
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
 * connect-es answers a binary body it cannot parse with `internal` (HTTP 500), as if the server
 * had failed. It is the client's mistake: rewrite that one answer to `invalid_argument` (400).
 */
async function clientErrorForBadProtobuf(res: UniversalServerResponse, onRewrite: () => void): Promise<UniversalServerResponse> {
  if (res.status !== 500 || !res.body) return res;
  const chunks: Uint8Array[] = [];
  for await (const c of res.body) chunks.push(c);
  const bytes = Buffer.concat(chunks);
  let parsed: { code?: unknown; message?: unknown } | undefined;
  try {
    parsed = JSON.parse(bytes.toString("utf8")) as { code?: unknown; message?: unknown };
  } catch {
    // Not a JSON error body (e.g. compressed): leave it as it is.
  }
  const replay = (body: Uint8Array, status: number): UniversalServerResponse => {
    const header = new Headers(res.header);
    header.set("content-length", String(body.byteLength));
    return { ...res, status, header, body: (async function* () { yield body; })() };
  };
  if (parsed?.code === "internal" && typeof parsed.message === "string" && parsed.message.startsWith("parse binary")) {
    onRewrite();
    const body = Buffer.from(JSON.stringify({ code: "invalid_argument", message: "malformed protobuf request body" }));
    return replay(body, 400);
  }
  return replay(bytes, res.status);
}

/**
 * The public Connect API as a Node request listener: the same as connect-node's adapter
 * (gzip/brotli, JSON and binary), plus: bodies over {@link MAX_REQUEST_BYTES} are refused, a
 * malformed protobuf body is a 400 (not a 500), a request the adapter cannot even read (no Host
 * header) is a 400 (not an exception), and unknown paths get a JSON 404.
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
    let uReq: ReturnType<typeof universalRequestFromNodeRequest>;
    try {
      uReq = universalRequestFromNodeRequest(req, res, undefined, undefined);
    } catch {
      opts.onBadInput?.("unreadable-request");
      return jsonError(res, 400, "invalid_argument", "malformed request");
    }
    handler(uReq)
      .then((uRes) => clientErrorForBadProtobuf(uRes, () => opts.onBadInput?.("malformed-protobuf")))
      .then((uRes) => universalResponseToNodeResponse(uRes, res))
      .catch((reason: unknown) => {
        // The client went away mid-answer, or the answer could not be written: nothing to tell.
        if (ConnectError.from(reason).code !== Code.Aborted) opts.log.debug({ err: reason, method: handler.method.name }, "answer not delivered");
        if (!res.writableEnded) res.destroy();
      });
  };
}
