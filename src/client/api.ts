import { buildApi, type ApiOptions, type ResonanceApi } from "./http-api.js";
import { nodePlatform } from "./platform-node.js";

export { wsUrlOf, type ApiOptions, type ResonanceApi } from "./http-api.js";

/**
 * Creates typed clients for resonance.gateway.v1.AuthService and SessionService over the
 * Connect protocol (HTTP/1.1, Node). Does no I/O until a method is called.
 */
export function createApi(baseUrl: string, opts: ApiOptions = {}): ResonanceApi {
  return buildApi(nodePlatform, baseUrl, opts);
}
