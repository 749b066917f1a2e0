import { PassThrough } from "node:stream";
import { afterEach, describe, expect, it } from "vitest";
import { runChat } from "./chat-cli.js";
import { FakeBackend, FakeGateway } from "./fake-gateway.js";

let gateway: FakeGateway | undefined;

afterEach(async () => {
  await gateway?.close();
  gateway = undefined;
});

/** Accumulates what the chat prints; `until(re)` resolves once the output matches. */
function screen(output: PassThrough): { text: () => string; until: (re: RegExp) => Promise<void> } {
  let text = "";
  const waiters = new Set<() => void>();
  output.on("data", (chunk: Buffer) => {
    text += chunk.toString();
    for (const w of waiters) w();
  });
  return {
    text: () => text,
    until: (re) =>
      new Promise<void>((resolve) => {
        const check = (): void => {
          if (!re.test(text)) return;
          waiters.delete(check);
          resolve();
        };
        waiters.add(check);
        check();
      }),
  };
}

describe("chat-cli", () => {
  it("chat-cli - registers, shows history and new messages, sends lines, /quit ends", async () => {
    const backend = new FakeBackend();
    backend.users.set("bob", "pw");
    gateway = await FakeGateway.start(backend);
    backend.commit("bob", { sessionId: "0", content: "earlier" }, "b-1");
    const input = new PassThrough();
    const output = new PassThrough();
    const out = screen(output);
    const done = runChat({ url: gateway.url, user: "alice", input, output });

    await out.until(/\] bob: earlier\n/);
    expect(out.text()).toContain('using "resonance-alice" as the password');
    expect(out.text()).toContain("registered new user alice");

    input.write("hello there\n");
    await out.until(/\[\d\d:\d\d:\d\d\] alice: hello there\n/);
    backend.commit("bob", { sessionId: "0", content: "welcome" }, "b-2");
    await out.until(/\] bob: welcome\n/);
    backend.sessions.set("group:7", new Set(["alice", "bob"]));
    backend.commit("bob", { sessionId: "group:7", content: "elsewhere" }, "b-3");
    await out.until(/\(new message in group:7 from bob\)/);

    input.write("/quit\n");
    await done;
    expect(out.text().match(/alice: hello there/g)).toHaveLength(1);
    expect(out.text()).not.toContain("elsewhere");
    expect(gateway.sockets()).toHaveLength(0);
  });

  it("chat-cli - @bob opens the single chat; end of input ends the chat", async () => {
    const backend = new FakeBackend();
    backend.users.set("bob", "pw");
    gateway = await FakeGateway.start(backend);
    const input = new PassThrough();
    const output = new PassThrough();
    const out = screen(output);
    const done = runChat({ url: gateway.url, user: "alice", password: "pw", session: "@bob", input, output });
    await out.until(/in single:alice:bob/);
    input.end("psst\n");
    await done;
    expect(gateway.chats.map((c) => c.chat)).toMatchObject([{ sessionId: "single:alice:bob", toUsername: "bob", content: "psst" }]);
    expect(out.text()).not.toContain("as the password");
  });
});
