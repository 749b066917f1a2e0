import { Code, ConnectError } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { KdfQueue } from "./auth.js";
import { checkContent, checkName, checkPassword, checkQuery, checkSessionId, checkUsername, clampLimit, listSome, normalizeMessageType } from "./validate.js";

/** The ConnectError a check throws (fails the test when it does not throw). */
function refusal(fn: () => unknown): ConnectError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ConnectError);
    return err as ConnectError;
  }
  throw new Error("expected the check to refuse");
}

const NUL = "\u0000";
const RLO = "\u202e";

describe("validate", () => {
  it("validate - control characters (NUL included) are invalid_argument in names, ids and queries", () => {
    for (const bad of [`a${NUL}b`, "tab\there", "bell\u0007", "del\u007f", "c1\u0085", "lone\ud800"]) {
      expect(refusal(() => checkName(bad, "nickname")).code).toBe(Code.InvalidArgument);
      expect(refusal(() => checkQuery(bad)).code).toBe(Code.InvalidArgument);
      expect(refusal(() => checkSessionId(bad)).code).toBe(Code.InvalidArgument);
      expect(refusal(() => checkUsername(bad)).code).toBe(Code.InvalidArgument);
    }
    expect(checkName("  Zoë 🎉  ", "nickname")).toBe("Zoë 🎉");
    expect(checkQuery(" ali ")).toBe("ali");
    expect(checkSessionId("single:alice:bob")).toBe("single:alice:bob");
  });

  it("validate - names refuse bidirectional overrides and isolates, which can disguise one user as another", () => {
    for (const c of [RLO, "\u202a", "\u2066", "\u2069", "\u200f", "\u061c"]) {
      expect(refusal(() => checkName(`admin${c}nimda`, "nickname")).rawMessage).toMatch(/bidirectional/);
    }
    // Right-to-left text itself is fine.
    expect(checkName("שלום", "name")).toBe("שלום");
  });

  it("validate - message text keeps line breaks and tabs, refuses NUL and other controls", () => {
    expect(checkContent("line 1\nline 2\r\n\tindented", 100)).toContain("\t");
    expect(refusal(() => checkContent(`x${NUL}`, 100)).code).toBe(Code.InvalidArgument);
    expect(refusal(() => checkContent("\u001b[31mred", 100)).code).toBe(Code.InvalidArgument);
    expect(refusal(() => checkContent("", 100)).rawMessage).toBe("content is empty");
    expect(refusal(() => checkContent("x".repeat(101), 100)).rawMessage).toBe("content: at most 100 characters");
  });

  it("validate - errors are short and never echo the value", () => {
    const huge = "A".repeat(65_300) + NUL;
    for (const fn of [() => checkSessionId(huge), () => checkName(huge, "name"), () => checkQuery(huge), () => checkUsername(huge), () => checkContent(huge, 8000)]) {
      const err = refusal(fn);
      expect(err.rawMessage.length).toBeLessThan(100);
      expect(err.rawMessage).not.toContain("AAAA");
    }
    expect(listSome(Array.from({ length: 7000 }, (_, i) => `user${i}`))).toBe("user0, user1, user2, user3, user4 and 6995 more");
    expect(listSome(["a", "b"])).toBe("a, b");
  });

  it("validate - message types are normalised or refused", () => {
    expect(normalizeMessageType("")).toBe("text");
    expect(normalizeMessageType("image")).toBe("image");
    for (const bad of ["system", "Text", "x".repeat(33), `t${NUL}`, "a b", "<script>"]) {
      expect(refusal(() => normalizeMessageType(bad)).code).toBe(Code.InvalidArgument);
    }
  });

  it("validate - passwords 6-256 characters, limits clamped, negatives refused", () => {
    expect(refusal(() => checkPassword("12345")).code).toBe(Code.InvalidArgument);
    expect(refusal(() => checkPassword("x".repeat(257))).code).toBe(Code.InvalidArgument);
    expect(checkPassword("x".repeat(256))).toHaveLength(256);
    expect(clampLimit(0n, 20, 100)).toBe(20);
    expect(clampLimit(2n ** 62n, 20, 100)).toBe(100);
    expect(refusal(() => clampLimit(-1n, 20, 100)).code).toBe(Code.InvalidArgument);
  });
});

describe("kdf queue", () => {
  it("kdf - runs at most `concurrency` at once, queues up to its bound, sheds the rest with resource_exhausted", async () => {
    const q = new KdfQueue({ concurrency: 2, maxQueued: 3 });
    let running = 0;
    let peak = 0;
    const gates: Array<() => void> = [];
    const job = () =>
      q.run(async () => {
        peak = Math.max(peak, ++running);
        await new Promise<void>((r) => gates.push(r));
        running--;
        return "done";
      });
    const accepted = Array.from({ length: 5 }, job);
    const shed = await job().catch((e: ConnectError) => e);
    expect(shed).toBeInstanceOf(ConnectError);
    expect((shed as ConnectError).code).toBe(Code.ResourceExhausted);
    expect(q.queued).toBe(3);
    // Release the jobs one by one as they start: each accepted one finishes.
    let done = 0;
    while (done < 5) {
      await new Promise((r) => setImmediate(r));
      const g = gates.shift();
      if (g) {
        g();
        done++;
      }
    }
    expect(await Promise.all(accepted)).toEqual(["done", "done", "done", "done", "done"]);
    expect(peak).toBe(2);
    expect(q.queued).toBe(0);
    // Room again once drained.
    const again = job();
    await new Promise((r) => setImmediate(r));
    gates.shift()!();
    expect(await again).toBe("done");
  });
});
