import type { SeenMessagesOptions } from "./dedup.js";

/** Where the inbox cursor survives between runs (per user). Both methods may be sync or async. */
export interface CursorStore {
  load(username: string): Promise<bigint | undefined> | bigint | undefined;
  save(username: string, cursor: bigint): Promise<void> | void;
}

export interface ResonanceClientOptions {
  /** Gateway base URLs (`http://127.0.0.1:8080`); reconnects go round-robin over them. */
  readonly urls: readonly string[];
  readonly username: string;
  /** Logs in with it (and again whenever the token expires). Either this or `token`. */
  readonly password?: string;
  /**
   * Starts from this token instead of logging in (a page that must not keep the password).
   * When the server refuses it, the client calls `onAuthExpired` listeners and closes.
   */
  readonly token?: string;
  /** Register when login answers not_found/unauthenticated (logging in if someone registered first). */
  readonly register?: boolean;
  /** Nickname used when registering (default: the username, server-side). */
  readonly nickname?: string;
  /** Backoff without a hint: full jitter over base·2^n capped at max (200 ms, 10 s); `rateLimitedMs` (2 s) is the base after a 4429. */
  readonly reconnect?: { readonly baseMs?: number; readonly maxMs?: number; readonly rateLimitedMs?: number };
  readonly cursorStore?: CursorStore;
  /** What `start()` does with inbox messages older than the start: "emit" them (default) or "skip" (mark seen silently). */
  readonly backlog?: "emit" | "skip";
  /** Client heartbeat interval (default 30 s). */
  readonly pulseIntervalMs?: number;
  /** A connection silent this long is dropped and re-established (default 75 s). */
  readonly deadAfterMs?: number;
  readonly handshakeTimeoutMs?: number;
  /** `start()` gives up (rejects, client closed) when not connected within this (default 30 s). */
  readonly startTimeoutMs?: number;
  /** Binary protobuf for the HTTP API instead of JSON. */
  readonly binary?: boolean;
  /** Frames above this are refused locally with invalid_argument (default 64 KiB, the gateway's default limit). */
  readonly maxFrameBytes?: number;
  /** PullInboxDelta page size (default 500, the server's maximum). */
  readonly deltaPageSize?: number;
  /** Pull the delta in the background after this many pushes, keeping the cursor near (default 1000; 0 = never). */
  readonly refreshCursorEvery?: number;
  readonly dedup?: SeenMessagesOptions;
}

export interface SendInput {
  readonly sessionId: string;
  readonly content: string;
  /** Default "text". */
  readonly type?: string;
  readonly toUsername?: string;
}

/** `history`: caught up by seq from a large session (no inbox rows; see SyncSessions). */
export type MessageSource = "push" | "delta" | "history";

export interface ClientStats {
  acked: number;
  pushesReceived: number;
  /** Inbox events received by PullInboxDelta (duplicates included). */
  deltaReceived: number;
  /** Messages of large sessions fetched by seq while catching up (duplicates included). */
  historyReceived: number;
  /** Messages not emitted because already seen (push/delta overlap, redeliveries). */
  duplicatesDropped: number;
  /** Successful reconnects (connected and caught up again after a close). */
  reconnects: number;
  /** Close codes of sockets that had opened (failed upgrades are not closes). */
  closeCodes: Record<number, number>;
  cleanCloses: number;
  uncleanCloses: number;
  /** Sends rejected with a non-retryable error (including local refusals and 1003/1009 culprits). */
  nonRetryableErrors: number;
  /** Per reconnect: ms from the close to connected and caught up again. */
  reconnectDelaysMs: number[];
  goaways: number;
}
