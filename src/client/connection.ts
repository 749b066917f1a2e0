import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { WebSocket } from "ws";
import { WsPacketSchema, type Goaway, type WsPacket } from "../gen/resonance/gateway/v1/gateway_pb.js";
import { ResonanceError } from "./errors.js";

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
  readonly #ws: WebSocket;
  readonly #opts: GatewaySocketOptions;
  #timer: NodeJS.Timeout | undefined;
  #lastSeen = Date.now();
  #lastPulse = Date.now();
  #goaway: Goaway | undefined;
  #closed: Promise<CloseInfo>;

  private constructor(ws: WebSocket, opts: GatewaySocketOptions, closed: Promise<CloseInfo>) {
    this.#ws = ws;
    this.#opts = opts;
    this.#closed = closed;
  }

  /**
   * Opens `url`. Resolves once the upgrade succeeded. Rejects with a ResonanceError:
   * `unauthenticated` for a 401 upgrade answer (log in again), `unavailable` for anything else
   * (503 while draining, refused connection, handshake timeout) — retry elsewhere.
   */
  static open(url: string, opts: GatewaySocketOptions): Promise<GatewaySocket> {
    const ws = new WebSocket(url, { perMessageDeflate: false, handshakeTimeout: opts.handshakeTimeoutMs });
    ws.binaryType = "nodebuffer";
    let status = 0;
    let failure: Error | undefined;
    let socket: GatewaySocket | undefined;
    let reportClose: (info: CloseInfo) => void = () => {};
    const closed = new Promise<CloseInfo>((resolve) => (reportClose = resolve));
    return new Promise<GatewaySocket>((resolve, reject) => {
      ws.on("unexpected-response", (_req, res) => {
        status = res.statusCode ?? 0;
        res.resume();
        ws.terminate();
      });
      ws.on("error", (err) => (failure ??= err));
      ws.addEventListener("close", (e) => {
        if (!socket) {
          const code = status === 401 ? "unauthenticated" : "unavailable";
          const why = status ? `upgrade answered ${status}` : (failure?.message ?? `closed ${e.code}`);
          reject(new ResonanceError(code, `WebSocket ${url.replace(/token=[^&]*/, "token=…")}: ${why}`, { cause: failure }));
          return;
        }
        socket.#stopTimer();
        const info: CloseInfo = { code: e.code, reason: e.reason, wasClean: e.wasClean, goaway: socket.#goaway };
        reportClose(info);
        opts.onClose(info);
      });
      ws.on("open", () => {
        socket = new GatewaySocket(ws, opts, closed);
        socket.#start();
        resolve(socket);
      });
    });
  }

  /** True while frames can be sent. */
  get isOpen(): boolean {
    return this.#ws.readyState === WebSocket.OPEN;
  }

  /** Resolves with the close report once the socket has closed. Never rejects. */
  get closed(): Promise<CloseInfo> {
    return this.#closed;
  }

  /** Sends one encoded WsPacket. False (nothing sent) unless the socket is open. */
  sendFrame(frame: Uint8Array): boolean {
    if (!this.isOpen) return false;
    this.#ws.send(frame, { binary: true });
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
    if (this.#ws.readyState === WebSocket.OPEN) this.#ws.close(code, reason);
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

  #start(): void {
    const seen = (): void => void (this.#lastSeen = Date.now());
    this.#ws.on("ping", seen);
    this.#ws.on("pong", seen);
    this.#ws.on("message", (data, isBinary) => {
      seen();
      if (!isBinary) return this.#opts.onBadFrame?.(new Error("text frame from server dropped"));
      let packet: WsPacket;
      try {
        packet = fromBinary(WsPacketSchema, toBytes(data));
      } catch (err) {
        return this.#opts.onBadFrame?.(new Error("undecodable frame from server dropped", { cause: err }));
      }
      if (packet.payload.case === "goaway") this.#goaway = packet.payload.value;
      this.#opts.onPacket(packet);
    });
    const tick = Math.max(10, Math.min(this.#opts.pulseIntervalMs, this.#opts.deadAfterMs / 3));
    this.#timer = setInterval(() => this.#heartbeat(), tick);
    this.#timer.unref();
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

function toBytes(data: WebSocket.RawData): Uint8Array {
  if (Array.isArray(data)) return Buffer.concat(data);
  return data instanceof ArrayBuffer ? new Uint8Array(data) : data;
}
