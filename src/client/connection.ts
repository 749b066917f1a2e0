import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { WsPacketSchema, type Goaway, type WsPacket } from "../gen/resonance/gateway/v1/gateway_pb.js";
import { ResonanceError } from "./errors.js";
import type { ClientPlatform, PlatformSocket, SocketEnd, Timer } from "./platform.js";

/** How a socket that was open ended. */
export interface CloseInfo {
  readonly code: number;
  readonly reason: string;
  /** From the `close` event: true when the close handshake completed (never for 1006). */
  readonly wasClean: boolean;
  /** The last `Goaway` received on this socket, if any (it precedes a 1001 close). */
  readonly goaway: Goaway | undefined;
}

export interface GatewaySocketOptions {
  /** Client heartbeat: a `pulse` packet this often. */
  readonly pulseIntervalMs: number;
  /** A socket with no frame, ping or pong for this long is terminated (→ 1006). */
  readonly deadAfterMs: number;
  readonly handshakeTimeoutMs: number;
  /** Every decoded packet, in arrival order. */
  readonly onPacket: (packet: WsPacket) => void;
  /** Exactly once, when a socket that opened is closed (by either side or the network). */
  readonly onClose: (info: CloseInfo) => void;
  /** A frame from the server that is not a binary WsPacket (dropped). */
  readonly onBadFrame?: (err: Error) => void;
}

const PULSE = toBinary(WsPacketSchema, create(WsPacketSchema, { payload: { case: "pulse", value: {} } }));

/**
 * One WebSocket to a gateway speaking WsPacket frames: heartbeat, dead-peer detection, and a
 * single close report. It never reconnects; the client decides that.
 */
export class GatewaySocket {
  readonly #platform: ClientPlatform;
  readonly #opts: GatewaySocketOptions;
  #ws!: PlatformSocket;
  #timer: Timer | undefined;
  #lastSeen = Date.now();
  #lastPulse = Date.now();
  #goaway: Goaway | undefined;
  readonly #closed: Promise<CloseInfo>;
  #reportClose!: (info: CloseInfo) => void;

  private constructor(platform: ClientPlatform, opts: GatewaySocketOptions) {
    this.#platform = platform;
    this.#opts = opts;
    this.#closed = new Promise<CloseInfo>((resolve) => (this.#reportClose = resolve));
  }

  /**
   * Opens `url`. Resolves once the upgrade succeeded. Rejects with a ResonanceError:
   * `unauthenticated` for a 401 upgrade answer (log in again), `unavailable` for anything else
   * (503 while draining, refused connection, handshake timeout, or a 401 that the platform
   * cannot see: see `ClientPlatform.seesUpgradeStatus`) — retry elsewhere.
   */
  static open(platform: ClientPlatform, url: string, opts: GatewaySocketOptions): Promise<GatewaySocket> {
    const socket = new GatewaySocket(platform, opts);
    let opened = false;
    return new Promise<GatewaySocket>((resolve, reject) => {
      socket.#ws = platform.openSocket(url, opts.handshakeTimeoutMs, {
        open: () => {
          opened = true;
          socket.#start();
          resolve(socket);
        },
        frame: (data) => socket.#onFrame(data),
        alive: () => void (socket.#lastSeen = Date.now()),
        end: (e) => {
          if (!opened) return reject(upgradeError(url, e));
          socket.#stopTimer();
          const info: CloseInfo = { code: e.code, reason: e.reason, wasClean: e.wasClean, goaway: socket.#goaway };
          socket.#reportClose(info);
          opts.onClose(info);
        },
      });
    });
  }

  /** True while frames can be sent. */
  get isOpen(): boolean {
    return this.#ws.isOpen;
  }

  /** Resolves with the close report once the socket has closed. Never rejects. */
  get closed(): Promise<CloseInfo> {
    return this.#closed;
  }

  /** Sends one encoded WsPacket. False (nothing sent) unless the socket is open. */
  sendFrame(frame: Uint8Array): boolean {
    if (!this.isOpen) return false;
    this.#ws.send(frame);
    return true;
  }

  /** Encodes and sends one packet; see `sendFrame`. */
  send(packet: WsPacket): boolean {
    return this.sendFrame(toBinary(WsPacketSchema, packet));
  }

  /**
   * Starts the close handshake and resolves when the socket is closed; a peer that does not
   * answer within `timeoutMs` is cut off (1006). Idempotent. Never rejects.
   */
  async close(code = 1000, reason = "", timeoutMs = 2_000): Promise<CloseInfo> {
    this.#stopTimer();
    this.#ws.close(code, reason);
    const timer = setTimeout(() => this.#ws.terminate(), timeoutMs);
    try {
      return await this.#closed;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Cuts the connection without a close handshake (the peer sees 1006). */
  terminate(): void {
    this.#ws.terminate();
  }

  #onFrame(data: Uint8Array | undefined): void {
    this.#lastSeen = Date.now();
    if (!data) return this.#opts.onBadFrame?.(new Error("text frame from server dropped"));
    let packet: WsPacket;
    try {
      packet = fromBinary(WsPacketSchema, data);
    } catch (err) {
      return this.#opts.onBadFrame?.(new Error("undecodable frame from server dropped", { cause: err }));
    }
    if (packet.payload.case === "goaway") this.#goaway = packet.payload.value;
    this.#opts.onPacket(packet);
  }

  #start(): void {
    const tick = Math.max(10, Math.min(this.#opts.pulseIntervalMs, this.#opts.deadAfterMs / 3));
    this.#timer = setInterval(() => this.#heartbeat(), tick);
    this.#platform.detach(this.#timer);
  }

  #heartbeat(): void {
    const now = Date.now();
    if (now - this.#lastSeen > this.#opts.deadAfterMs) {
      this.#ws.terminate();
      return;
    }
    if (now - this.#lastPulse >= this.#opts.pulseIntervalMs) {
      this.#lastPulse = now;
      this.sendFrame(PULSE);
    }
  }

  #stopTimer(): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
  }
}

function upgradeError(url: string, e: SocketEnd): ResonanceError {
  const where = `WebSocket ${url.replace(/token=[^&]*/, "token=…")}`;
  const why = e.upgradeStatus ? `upgrade answered ${e.upgradeStatus}` : (e.error?.message ?? `closed ${e.code}`);
  const code = e.upgradeStatus === 401 ? "unauthenticated" : "unavailable";
  return new ResonanceError(code, `${where}: ${why}`, { cause: e.error });
}
