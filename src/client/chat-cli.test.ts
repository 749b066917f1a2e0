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

const count = (text: string, re: RegExp): number => text.match(new RegExp(re.source, "g"))?.length ?? 0;

describe("chat-cli", () => {
  it("chat-cli - registers, shows history and new messages once, sends lines, tags other chats, /quit ends", async () => {
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
    expect(out.text()).toContain("alice in Resonance Room");

    input.write("hello there\n");
    await out.until(/\[\d\d:\d\d:\d\d\] alice: hello there\n/);
    backend.commit("bob", { sessionId: "0", content: "welcome" }, "b-2");
    await out.until(/\] bob: welcome\n/);
    backend.sessions.set("group:7", new Set(["alice", "bob"]));
    backend.commit("bob", { sessionId: "group:7", content: "elsewhere" }, "b-3");
    await out.until(/\(group:7\) bob: elsewhere\s+\[\/open group:7\]/);

    input.write("/quit\n");
    await done;
    // Our own line comes back as a push too: printed once all the same.
    expect(count(out.text(), /alice: hello there/)).toBe(1);
    expect(count(out.text(), /bob: welcome/)).toBe(1);
    expect(gateway.sockets()).toHaveLength(0);
  });

  it("chat-cli - commands are not sent: /help, an unknown one; // sends a line that starts with /", async () => {
    const backend = new FakeBackend();
    gateway = await FakeGateway.start(backend);
    const input = new PassThrough();
    const output = new PassThrough();
    const out = screen(output);
    const done = runChat({ url: gateway.url, user: "alice", password: "pw-alice", input, output });
    await out.until(/alice in Resonance Room/);
    input.write("/help\n/bogus\n//slash\n");
    await out.until(/alice: \/slash\n/);
    expect(out.text()).toContain("/open @user");
    expect(out.text()).toContain("unknown command /bogus");
    input.end();
    await done;
    expect(gateway.chats.map((c) => c.chat.content)).toEqual(["/slash"]);
  });

  it("chat-cli - /open @bob switches to the one-to-one chat; lines go there; end of input ends the chat", async () => {
    const backend = new FakeBackend();
    backend.users.set("bob", "pw");
    gateway = await FakeGateway.start(backend);
    const input = new PassThrough();
    const output = new PassThrough();
    const out = screen(output);
    const done = runChat({ url: gateway.url, user: "alice", password: "pw", input, output });
    await out.until(/alice in Resonance Room/);
    input.write("/open @bob\npsst\n");
    await out.until(/alice: psst\n/);
    expect(out.text()).toMatch(/alice in single:alice:bob/);
    input.end();
    await done;
    expect(gateway.chats.map((c) => c.chat)).toMatchObject([{ sessionId: "single:alice:bob", toUsername: "bob", content: "psst" }]);
    expect(out.text()).not.toContain("as the password");
  });

  it("chat-cli - --session @bob starts in the one-to-one chat", async () => {
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
    expect(gateway.chats.map((c) => c.chat)).toMatchObject([{ sessionId: "single:alice:bob", content: "psst" }]);
  });

  it("chat-cli - a server that does not answer: says cannot reach <url>, retrying, and keeps trying until stopped", async () => {
    const silent = await FakeGateway.start(new FakeBackend());
    const url = silent.url;
    await silent.close(); // Nothing listens there any more.
    const output = new PassThrough();
    const out = screen(output);
    const stop = new AbortController();
    const done = runChat({ url, user: "alice", password: "pw-alice", input: new PassThrough(), output, signal: stop.signal, retryMs: 50 });
    await out.until(new RegExp(`cannot reach ${url}, retrying`));
    stop.abort();
    await done;
    expect(count(out.text(), /cannot reach/)).toBe(1);
  });

  it("chat-cli - the connection lost mid-chat: says so, and that the server cannot be reached", async () => {
    gateway = await FakeGateway.start(new FakeBackend());
    const output = new PassThrough();
    const out = screen(output);
    const stop = new AbortController();
    const done = runChat({ url: gateway.url, user: "alice", password: "pw-alice", input: new PassThrough(), output, signal: stop.signal, retryMs: 50 });
    await out.until(/alice in Resonance Room/);
    await gateway.close();
    gateway = undefined;
    await out.until(/connection lost; reconnecting\n[\s\S]*cannot reach http:\/\/127\.0\.0\.1:\d+, retrying/);
    stop.abort();
    await done;
  });

  it("chat-cli - on a terminal: raw-mode editing takes a line longer than 4 KiB whole; a message arriving mid-typing prints above the prompt", async () => {
    const backend = new FakeBackend();
    backend.users.set("bob", "pw");
    gateway = await FakeGateway.start(backend);
    const raw: boolean[] = [];
    const input = Object.assign(new PassThrough(), { isTTY: true, setRawMode: (on: boolean) => raw.push(on) });
    const output = Object.assign(new PassThrough(), { isTTY: true, columns: 100 });
    const out = screen(output);
    const done = runChat({ url: gateway.url, user: "alice", password: "pw", input, output });
    await out.until(/alice in Resonance Room[^]*> $/);
    expect(raw[0]).toBe(true);
    input.write("half typed");
    backend.commit("bob", { sessionId: "0", content: "interrupting" }, "b-1");
    // The line is cleared, the message printed, then the prompt drawn again with what was typed.
    const esc = "\\u001b\\[[\\d;]*[A-Za-z]";
    await out.until(new RegExp(`${esc}${esc}\\[[\\d:]+\\] bob: interrupting\\n(${esc})*> half typed`));
    const long = "x".repeat(5_000);
    input.write(`\x15${long}\r`); // Ctrl-U clears what was typed.
    await out.until(new RegExp(`alice: ${long}`));
    input.write("\x04"); // Ctrl-D on an empty line ends the chat.
    await done;
    expect(gateway.chats.map((c) => c.chat.content)).toEqual([long]);
    expect(raw.at(-1)).toBe(false);
  });
});
