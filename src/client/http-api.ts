import { createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { AuthService, SessionService } from "../gen/resonance/gateway/v1/gateway_pb.js";
import type { ClientPlatform } from "./platform.js";

/** Typed Connect clients for the gateway's public HTTP API. */
export interface ResonanceApi {
  /** The gateway base URL these clients talk to, e.g. `http://127.0.0.1:8080`. */
  readonly baseUrl: string;
  readonly auth: Client<typeof AuthService>;
  readonly session: Client<typeof SessionService>;
}

export interface ApiOptions {
  /**
   * Bearer token sent as `Authorization: Bearer <token>` on every call. A function is read on
   * each call, so a long-lived client can swap tokens (re-login) without new transports.
   */
  readonly token?: string | (() => string | undefined);
  /** `application/proto` instead of `application/json`. Default false. */
  readonly binary?: boolean;
  /** Deadline for each call unless the call sets its own. Default 10 s. */
  readonly timeoutMs?: number;
  /** Run around every call, after the one that adds the token. */
  readonly interceptors?: Interceptor[];
}

/**
 * Typed clients for resonance.gateway.v1.AuthService and SessionService over the Connect
 * protocol, on the platform's transport. Does no I/O until a method is called.
 */
export function buildApi(platform: ClientPlatform, baseUrl: string, opts: ApiOptions = {}): ResonanceApi {
  const token = opts.token;
  const bearer: Interceptor = (next) => async (req) => {
    const value = typeof token === "function" ? token() : token;
    if (value) req.header.set("Authorization", `Bearer ${value}`);
    return next(req);
  };
  const transport = platform.createTransport({
    baseUrl,
    useBinaryFormat: opts.binary ?? false,
    interceptors: [bearer, ...(opts.interceptors ?? [])],
    defaultTimeoutMs: opts.timeoutMs ?? 10_000,
  });
  return {
    baseUrl,
    auth: createClient(AuthService, transport),
    session: createClient(SessionService, transport),
  };
}

/**
 * The WebSocket URL of a gateway: `http://h:p[/prefix]` → `ws://h:p[/prefix]/ws?token=...`
 * (`https` → `wss`).
 */
export function wsUrlOf(baseUrl: string, token: string): string {
  const url = new URL(baseUrl);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  url.pathname = `${url.pathname.replace(/\/+$/, "")}/ws`;
  url.search = new URLSearchParams({ token }).toString();
  url.hash = "";
  return url.toString();
}
