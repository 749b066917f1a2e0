/**
 * The load client's frames, kept cheap: a chat frame is encoded once per session with protobuf-es
 * and only the message number is patched into its bytes (as fixed-width digits, in both the `seq`
 * and the start of `content`); incoming frames are read with protobuf-es's low-level
 * BinaryReader, taking just the fields the benchmark needs. Pure: no I/O.
 */
import { create, toBinary } from "@bufbuild/protobuf";
import { BinaryReader, WireType } from "@bufbuild/protobuf/wire";
import { WsPacketSchema } from "../src/gen/resonance/gateway/v1/gateway_pb.js";

/** Width of the message number in `seq` and `content` (enough for 10^10 messages). */
export const ID_DIGITS = 10;

const ZERO = 0x30;
const NINE = 0x39;

/** Writes `value` as `width` decimal digits (zero-padded) at `offset`. Throws when it does not fit. */
export function writeDigits(buf: Uint8Array, offset: number, value: number, width: number): void {
  if (!Number.isInteger(value) || value < 0 || value >= 10 ** width) throw new RangeError(`writeDigits: ${value} does not fit ${width} digits`);
  let v = value;
  for (let i = offset + width - 1; i >= offset; i--) {
    buf[i] = ZERO + (v % 10);
    v = Math.floor(v / 10);
  }
}

/** Reads `width` decimal digits at `offset`; -1 when the bytes are not all digits or run out. */
export function readDigits(buf: Uint8Array, offset: number, width: number): number {
  if (offset < 0 || offset + width > buf.length) return -1;
  let v = 0;
  for (let i = offset; i < offset + width; i++) {
    const c = buf[i]!;
    if (c < ZERO || c > NINE) return -1;
    v = v * 10 + (c - ZERO);
  }
  return v;
}

function indexOfBytes(haystack: Uint8Array, needle: Uint8Array): number {
  return Buffer.from(haystack.buffer, haystack.byteOffset, haystack.byteLength).indexOf(needle);
}

/** One session's chat frame, encoded once; `frame(n)` patches message number n into a copy. */
export class ChatTemplate {
  readonly #bytes: Buffer;
  readonly #seqAt: number;
  readonly #contentAt: number;

  /**
   * @param sessionId the chat's session.
   * @param contentBytes the content length (at least ID_DIGITS; the rest is padding).
   */
  constructor(sessionId: string, contentBytes: number) {
    const seqMark = "S".repeat(ID_DIGITS);
    const contentMark = "C".repeat(ID_DIGITS);
    const content = contentMark + "x".repeat(Math.max(0, contentBytes - ID_DIGITS));
    const packet = create(WsPacketSchema, { seq: seqMark, payload: { case: "chat", value: { sessionId, content, type: "text" } } });
    this.#bytes = Buffer.from(toBinary(WsPacketSchema, packet));
    this.#seqAt = indexOfBytes(this.#bytes, Buffer.from(seqMark));
    this.#contentAt = indexOfBytes(this.#bytes, Buffer.from(contentMark));
    if (this.#seqAt < 0 || this.#contentAt < 0) throw new Error("ChatTemplate: markers not found in the encoded frame");
  }

  /** A new buffer holding the frame for message number `n` (the template itself is never handed out). */
  frame(n: number): Buffer {
    const b = Buffer.allocUnsafe(this.#bytes.length);
    this.#bytes.copy(b);
    writeDigits(b, this.#seqAt, n, ID_DIGITS);
    writeDigits(b, this.#contentAt, n, ID_DIGITS);
    return b;
  }
}

/** What the client needs from a server frame. `id` is the message number, -1 when not ours. */
export type Incoming =
  | { readonly kind: "ack"; readonly id: number; readonly code: string; readonly msgId: number }
  | { readonly kind: "push"; readonly id: number }
  | { readonly kind: "goaway" }
  | { readonly kind: "other" };

const OTHER: Incoming = { kind: "other" };
const GOAWAY: Incoming = { kind: "goaway" };

// WsPacket field numbers (proto/resonance/gateway/v1): push 12, ack 13, goaway 14.
const F_PUSH = 12;
const F_ACK = 13;
const F_GOAWAY = 14;

/**
 * Reads a server frame (a WsPacket). An ack's `code` is "" when the chat was committed, else its
 * `error_code` (or "error" when only `error` is set). Throws on bytes that are not protobuf.
 */
export function readFrame(bytes: Uint8Array): Incoming {
  const r = new BinaryReader(bytes);
  while (r.pos < r.len) {
    const [no, wt] = r.tag();
    if (no === F_ACK && wt === WireType.LengthDelimited) return readAck(r.bytes());
    if (no === F_PUSH && wt === WireType.LengthDelimited) return readPush(r.bytes());
    if (no === F_GOAWAY) return GOAWAY;
    r.skip(wt, no);
  }
  return OTHER;
}

function readAck(bytes: Uint8Array): Incoming {
  const r = new BinaryReader(bytes);
  let id = -1;
  let msgId = 0;
  let error = false;
  let code = "";
  while (r.pos < r.len) {
    const [no, wt] = r.tag();
    if (no === 1 && wt === WireType.LengthDelimited) {
      const ref = r.bytes();
      id = ref.length === ID_DIGITS ? readDigits(ref, 0, ID_DIGITS) : -1;
    } else if (no === 2 && wt === WireType.Varint) {
      msgId = Number(r.uint64());
    } else if (no === 5 && wt === WireType.LengthDelimited) {
      error = r.bytes().length > 0 || error;
    } else if (no === 6 && wt === WireType.LengthDelimited) {
      code = r.string();
    } else {
      r.skip(wt, no);
    }
  }
  return { kind: "ack", id, code: code || (error ? "error" : ""), msgId };
}

function readPush(bytes: Uint8Array): Incoming {
  const r = new BinaryReader(bytes);
  while (r.pos < r.len) {
    const [no, wt] = r.tag();
    if (no === 6 && wt === WireType.LengthDelimited) {
      const content = r.bytes();
      return { kind: "push", id: content.length >= ID_DIGITS ? readDigits(content, 0, ID_DIGITS) : -1 };
    }
    r.skip(wt, no);
  }
  return { kind: "push", id: -1 };
}
