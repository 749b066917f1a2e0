// The Resonance client SDK for browsers: the page's WebSocket and fetch, no Node modules, no
// terminal chat. The web client (web/) imports only this file.
import { ClientCore } from "./client-core.js";
import { buildApi, type ApiOptions, type ResonanceApi } from "./http-api.js";
import { browserPlatform } from "./platform-browser.js";
import type { ResonanceClientOptions } from "./types.js";

export { wsUrlOf, type ApiOptions, type ResonanceApi } from "./http-api.js";
export type { ClientStats, CursorStore, MessageSource, ResonanceClientOptions, SendInput } from "./types.js";
export type { CloseInfo } from "./connection.js";
export { ResonanceError, codeName, isRetryable, isRetryableCode } from "./errors.js";
export { randomId } from "./platform.js";

/** The client SDK in a browser; see ClientCore for the contract. Does no I/O. */
export class ResonanceClient extends ClientCore {
  constructor(opts: ResonanceClientOptions) {
    super(opts, browserPlatform);
  }
}

/** Typed clients for the public HTTP API over the browser's fetch. Does no I/O until called. */
export function createApi(baseUrl: string, opts: ApiOptions = {}): ResonanceApi {
  return buildApi(browserPlatform, baseUrl, opts);
}
