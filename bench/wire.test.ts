import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { WsPacketSchema, type WsPacket } from "../src/gen/resonance/gateway/v1/gateway_pb.js";
import { otherMember } from "./relay.js";
import { ChatTemplate, ID_DIGITS, readDigits, readFrame, writeDigits } from "./wire.js";

const encode = (p: Parameters<typeof create<typeof WsPacketSchema>>[1]): Uint8Array => toBinary(WsPacketSchema, create(WsPacketSchema, p));

describe("bench wire - digits", () => {
  it("writes and reads fixed-width decimal numbers", () => {
    const b = new Uint8Array(12).fill(0x78);
    writeDigits(b, 1, 4207, ID_DIGITS);
    expect(Buffer.from(b).toString("latin1")).toBe("x0000004207x");
    expect(readDigits(b, 1, ID_DIGITS)).toBe(4207);
    writeDigits(b, 1, 9_999_999_999, ID_DIGITS);
    expect(readDigits(b, 1, ID_DIGITS)).toBe(9_999_999_999);
  });

  it("refuses numbers that do not fit and reads non-digits or short input as -1", () => {
    expect(() => writeDigits(new Uint8Array(3), 0, 1000, 3)).toThrow(RangeError);
    expect(() => writeDigits(new Uint8Array(3), 0, -1, 3)).toThrow(RangeError);
    expect(readDigits(Buffer.from("12a4"), 0, 4)).toBe(-1);
    expect(readDigits(Buffer.from("123"), 0, 4)).toBe(-1);
  });
});

describe("bench wire - chat template", () => {
  it("produces, for each message number, exactly the frame protobuf-es would encode", () => {
    const t = new ChatTemplate("single:alice:bob", 24);
    for (const n of [0, 7, 1_234_567]) {
      const digits = String(n).padStart(ID_DIGITS, "0");
      const expected = encode({ seq: digits, payload: { case: "chat", value: { sessionId: "single:alice:bob", content: digits + "x".repeat(14), type: "text" } } });
      expect(new Uint8Array(t.frame(n))).toEqual(expected);
    }
  });

  it("hands out a fresh buffer each time (a frame still queued in ws is never rewritten)", () => {
    const t = new ChatTemplate("s", 10);
    const a = t.frame(1);
    const b = t.frame(2);
    const pa = fromBinary(WsPacketSchema, a);
    expect(pa.seq).toBe("0000000001");
    expect(fromBinary(WsPacketSchema, b).seq).toBe("0000000002");
    expect(a).not.toBe(b);
  });
});

describe("bench wire - reading server frames", () => {
  it("reads a committed ack: message number from ref_seq, msg_id, empty code", () => {
    const f = readFrame(encode({ seq: "0000000042", payload: { case: "ack", value: { refSeq: "0000000042", msgId: 991n, seqId: 5n, sessionId: "s" } } }));
    expect(f).toEqual({ kind: "ack", id: 42, code: "", msgId: 991 });
  });

  it("reads an error ack's code, and 'error' when an old server sends only the text", () => {
    const coded = readFrame(encode({ payload: { case: "ack", value: { refSeq: "0000000003", error: "slow down", errorCode: "resource_exhausted" } } }));
    expect(coded).toMatchObject({ kind: "ack", id: 3, code: "resource_exhausted" });
    const textOnly = readFrame(encode({ payload: { case: "ack", value: { refSeq: "0000000003", error: "boom" } } }));
    expect(textOnly).toMatchObject({ code: "error" });
  });

  it("reads an ack for a seq that is not one of ours as id -1", () => {
    expect(readFrame(encode({ payload: { case: "ack", value: { refSeq: "a-uuid-seq" } } }))).toMatchObject({ kind: "ack", id: -1 });
  });

  it("reads a push's message number from the start of its content (other content: -1)", () => {
    const push = (content: string): Uint8Array =>
      encode({ payload: { case: "push", value: { msgId: 1n, seqId: 2n, sessionId: "s", fromUsername: "a", content, type: "text", timestamp: 3n } } });
    expect(readFrame(push("0000000099xxxxxx"))).toEqual({ kind: "push", id: 99 });
    expect(readFrame(push("alice created the chat"))).toEqual({ kind: "push", id: -1 });
    expect(readFrame(push(""))).toEqual({ kind: "push", id: -1 });
  });

  it("recognizes goaway and passes pulses as other", () => {
    expect(readFrame(encode({ payload: { case: "goaway", value: { reconnectAfterMs: 10n, reason: "bye" } } }))).toEqual({ kind: "goaway" });
    expect(readFrame(encode({ payload: { case: "pulse", value: {} } }))).toEqual({ kind: "other" });
  });

  it("throws on bytes that are not protobuf (the client drops such frames)", () => {
    expect(() => readFrame(Uint8Array.from([0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]))).toThrow();
  });

  it("agrees with the relay: a frame the relay builds reads back the same message number", () => {
    const chat = fromBinary(WsPacketSchema, new ChatTemplate("single:r1:s1", 16).frame(77)) as WsPacket & { payload: { case: "chat" } };
    expect(otherMember(chat.payload.value.sessionId, "s1")).toBe("r1");
    expect(otherMember("single:r1:s1", "r1")).toBe("s1");
    expect(otherMember("single:r1:s1", "x")).toBeUndefined();
    expect(otherMember("group:1", "r1")).toBeUndefined();
    const push = encode({ payload: { case: "push", value: { content: chat.payload.value.content } } });
    expect(readFrame(push)).toEqual({ kind: "push", id: 77 });
  });
});
