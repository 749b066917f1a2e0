import { create } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { PushMessageSchema, type PushMessage } from "../gen/resonance/gateway/v1/gateway_pb.js";
import { createLogger } from "../observability/log.js";
import { LargeSessions } from "./large-sessions.js";

const log = createLogger("test", "large-sessions", "silent");
const msg = (sessionId: string, seqId: bigint, type = "text") => create(PushMessageSchema, { sessionId, seqId, type, content: `m${seqId}` });

/** A fake logic: the memberships it knows, and the calls it got. */
function fakeLogic(memberships: Array<{ username: string; sessionId: string }>) {
  const calls: Array<{ usernames: string[]; sessionId?: string | undefined }> = [];
  let gate: Promise<void> = Promise.resolve();
  return {
    calls,
    memberships,
    hold(p: Promise<void>) {
      gate = p;
    },
    ask: async (usernames: string[], sessionId?: string) => {
      calls.push({ usernames, sessionId });
      await gate;
      return memberships.filter((m) => usernames.includes(m.username) && (sessionId === undefined || m.sessionId === sessionId));
    },
  };
}

describe("gateway large sessions", () => {
  it("learns on connect, asks once for a session new here, keeps pushes in order meanwhile, asks again on a system message", async () => {
    const logic = fakeLogic([
      { username: "ann", sessionId: "0" },
      { username: "ben", sessionId: "0" },
    ]);
    const connected = new Set(["ann", "ben", "cy"]);
    const large = new LargeSessions(logic.ask, () => connected, (u) => connected.has(u), log);
    const got: Array<[string[], bigint]> = [];
    const deliver = (users: string[], m: PushMessage) => void got.push([[...users].sort(), m.seqId]);

    await large.learn("ann");
    expect(logic.calls).toEqual([{ usernames: ["ann"], sessionId: undefined }]);

    // The room is not complete here yet: the first push asks for every user; a second waits behind it.
    let open!: () => void;
    logic.hold(new Promise((r) => (open = r)));
    const p1 = large.push(msg("0", 1n), deliver);
    const p2 = large.push(msg("0", 2n), deliver);
    expect(got).toEqual([]);
    open();
    await Promise.all([p1, p2]);
    expect(got).toEqual([
      [["ann", "ben"], 1n],
      [["ann", "ben"], 2n],
    ]);
    expect(logic.calls.length).toBe(2);
    expect(logic.calls[1]!.sessionId).toBe("0");

    // Known now: no more calls. Ben left: he is pruned, not pushed to.
    connected.delete("ben");
    await large.push(msg("0", 3n), deliver);
    expect(got.at(-1)).toEqual([["ann"], 3n]);
    expect(logic.calls.length).toBe(2);

    // A membership change (system message): cy joined; the gateway asks again.
    logic.memberships.push({ username: "cy", sessionId: "0" });
    await large.push(msg("0", 4n, "system"), deliver);
    expect(got.at(-1)).toEqual([["ann", "cy"], 4n]);
    expect(logic.calls.length).toBe(3);
  });

  it("a failed ask delivers to the members known so far and asks again at the next push", async () => {
    let fail = true;
    const connected = new Set(["ann", "ben"]);
    const calls: string[] = [];
    const large = new LargeSessions(
      async (usernames, sessionId) => {
        calls.push(sessionId ?? "connect");
        if (fail && sessionId) throw new Error("logic down");
        return usernames.map((username) => ({ username, sessionId: "g" }));
      },
      () => connected,
      (u) => connected.has(u),
      log,
    );
    await large.learn("ann");
    const got: string[][] = [];
    await large.push(msg("g", 1n), (users) => void got.push(users));
    fail = false;
    await large.push(msg("g", 2n), (users) => void got.push([...users].sort()));
    expect(got).toEqual([["ann"], ["ann", "ben"]]);
    expect(calls).toEqual(["connect", "g", "g"]);
  });
});
