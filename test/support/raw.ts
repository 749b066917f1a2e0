import { create, fromBinary, toBinary, type MessageInitShape } from "@bufbuild/protobuf";
import WebSocket from "ws";
import { WsPacketSchema, type WsPacket } from "../../src/gen/resonance/gateway/v1/gateway_pb.js";

/** Raw Connect JSON call with fetch: returns status and parsed body (for error-shape tests). */
export async function postJson(baseUrl: string, path: string, body: unknown, token?: string): Promise<{ status: number; body: Record<string, unknown> }> {
  const res = await fetch(`${baseUrl}/${path}`, {
    method: "POST",
    headers: {
      "content-type": "application/json",
      "connect-protocol-version": "1",
      ...(token ? { authorization: `Bearer ${token}` } : {}),
    },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
  const text = await res.text();
  let parsed: Record<string, unknown> = {};
  try {
    parsed = text ? (JSON.parse(text) as Record<string, unknown>) : {};
  } catch {
    parsed = { raw: text };
  }
  return { status: res.status, body: parsed };
}

/** A bare WebSocket speaking WsPacket frames, recording what it receives. */
export class RawSocket {
  readonly ws: WebSocket;
  readonly packets: WsPacket[] = [];
  /** When each server ping arrived (performance.now()). */
  readonly pings: number[] = [];
  readonly opened: Promise<void>;
  readonly closed: Promise<{ code: number; reason: string; wasClean: boolean }>;
  #waiters: Array<{ pred: (p: WsPacket) => boolean; resolve: (p: WsPacket) => void }> = [];

  constructor(baseUrl: string, token: string, opts: { autoPong?: boolean } = {}) {
    this.ws = new WebSocket(`${baseUrl.replace(/^http/, "ws")}/ws?token=${encodeURIComponent(token)}`, { autoPong: opts.autoPong ?? true });
    this.ws.binaryType = "nodebuffer";
    this.opened = new Promise((resolve, reject) => {
      this.ws.once("open", () => resolve());
      this.ws.once("unexpected-response", (_req, res) => reject(new Error(`upgrade refused: ${res.statusCode}`)));
      this.ws.once("error", reject);
    });
    this.closed = new Promise((resolve) =>
      this.ws.addEventListener("close", (e) => resolve({ code: e.code, reason: e.reason, wasClean: e.wasClean })),
    );
    this.ws.on("ping", () => this.pings.push(performance.now()));
    this.ws.on("message", (data: Buffer) => {
      const p = fromBinary(WsPacketSchema, data);
      this.packets.push(p);
      for (const w of [...this.#waiters]) {
        if (w.pred(p)) {
          this.#waiters.splice(this.#waiters.indexOf(w), 1);
          w.resolve(p);
        }
      }
    });
  }

  send(packet: MessageInitShape<typeof WsPacketSchema>): void {
    this.ws.send(toBinary(WsPacketSchema, create(WsPacketSchema, packet)));
  }

  /** Resolves with the first packet (received before or after the call) matching `pred`. */
  next(pred: (p: WsPacket) => boolean, timeoutMs = 10_000): Promise<WsPacket> {
    const seen = this.packets.find(pred);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error("no matching packet in time")), timeoutMs);
      this.#waiters.push({ pred, resolve: (p) => (clearTimeout(t), resolve(p)) });
    });
  }

  ackFor(seq: string, timeoutMs?: number) {
    return this.next((p) => p.payload.case === "ack" && p.payload.value.refSeq === seq, timeoutMs).then((p) => {
      if (p.payload.case !== "ack") throw new Error("unreachable");
      return p.payload.value;
    });
  }

  close(): void {
    this.ws.close(1000);
  }
}
