/**
 * The ceiling: a bare `ws` relay in its own process (forked by bench/load.ts). It speaks just
 * enough of the gateway's WebSocket protocol for the load client: `GET /ws?token=<username>`
 * (the token IS the username, nothing is checked), each chat frame is decoded, acked at once
 * (msg_id from a counter) and pushed to the other member of its `single:<a>:<b>` session. No
 * storage, no queue, no RPC: what is left is WebSocket framing and protobuf, the floor of any
 * gateway's cost. Posts {type:"listening", port} to the parent; exits when the parent goes.
 */
import { resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { WebSocketServer, type WebSocket } from "ws";
import { WsPacketSchema } from "../src/gen/resonance/gateway/v1/gateway_pb.js";

/** The other member of a `single:<a>:<b>` session, or undefined. */
export function otherMember(sessionId: string, me: string): string | undefined {
  const parts = sessionId.split(":");
  if (parts.length !== 3 || parts[0] !== "single") return undefined;
  return parts[1] === me ? parts[2] : parts[2] === me ? parts[1] : undefined;
}

function main(): void {
  const users = new Map<string, Set<WebSocket>>();
  let nextMsgId = 1n;
  const wss = new WebSocketServer({ host: "127.0.0.1", port: 0, path: "/ws", perMessageDeflate: false });
  wss.on("connection", (ws, req) => {
    const username = new URL(req.url ?? "/", "http://x").searchParams.get("token") ?? "";
    let set = users.get(username);
    if (!set) users.set(username, (set = new Set()));
    set.add(ws);
    ws.on("close", () => set.delete(ws));
    ws.on("message", (data: Buffer) => {
      let packet;
      try {
        packet = fromBinary(WsPacketSchema, data);
      } catch {
        return void ws.close(1003, "undecodable frame");
      }
      if (packet.payload.case !== "chat") return;
      const chat = packet.payload.value;
      const msgId = nextMsgId++;
      const ack = create(WsPacketSchema, { seq: packet.seq, payload: { case: "ack", value: { refSeq: packet.seq, msgId, sessionId: chat.sessionId } } });
      ws.send(toBinary(WsPacketSchema, ack));
      const to = otherMember(chat.sessionId, username);
      const targets = to === undefined ? undefined : users.get(to);
      if (!targets || targets.size === 0) return;
      const push = create(WsPacketSchema, {
        payload: { case: "push", value: { msgId, sessionId: chat.sessionId, fromUsername: username, content: chat.content, type: chat.type } },
      });
      const frame = toBinary(WsPacketSchema, push);
      for (const t of targets) t.send(frame);
    });
  });
  wss.on("listening", () => process.send!({ type: "listening", port: (wss.address() as { port: number }).port }));
  process.on("disconnect", () => process.exit(0));
}

// Only when run as the forked entry point (importing this file, e.g. from a test, runs nothing).
if (process.send && process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) main();
