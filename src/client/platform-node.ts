import { createConnectTransport } from "@connectrpc/connect-node";
import { WebSocket } from "ws";
import type { ClientPlatform, PlatformSocket, SocketEvents } from "./platform.js";

/** The SDK on Node: `ws` for the socket (it reports refused upgrades' status), connect-node over HTTP/1.1. */
export const nodePlatform: ClientPlatform = {
  seesUpgradeStatus: true,
  createTransport: (o) =>
    createConnectTransport({
      baseUrl: o.baseUrl,
      httpVersion: "1.1",
      useBinaryFormat: o.useBinaryFormat,
      interceptors: o.interceptors,
      defaultTimeoutMs: o.defaultTimeoutMs,
    }),
  openSocket: openNodeSocket,
  detach: (timer) => void timer.unref(),
};

function openNodeSocket(url: string, handshakeTimeoutMs: number, events: SocketEvents): PlatformSocket {
  const ws = new WebSocket(url, { perMessageDeflate: false, handshakeTimeout: handshakeTimeoutMs });
  ws.binaryType = "nodebuffer";
  let status: number | undefined;
  let failure: Error | undefined;
  let opened = false;
  ws.on("unexpected-response", (_req, res) => {
    status = res.statusCode;
    res.resume();
    ws.terminate();
  });
  ws.on("error", (err) => (failure ??= err));
  ws.on("open", () => {
    opened = true;
    events.open();
  });
  ws.on("ping", () => events.alive());
  ws.on("pong", () => events.alive());
  ws.on("message", (data, isBinary) => {
    if (!isBinary) return events.frame(undefined);
    events.frame(Array.isArray(data) ? Buffer.concat(data) : data instanceof ArrayBuffer ? new Uint8Array(data) : data);
  });
  // `wasClean` exists only on the WHATWG-style close event, not on `.on("close")`.
  ws.addEventListener("close", (e) =>
    events.end({ code: e.code, reason: e.reason, wasClean: e.wasClean, upgradeStatus: opened ? undefined : status, error: failure }),
  );
  return {
    get isOpen() {
      return ws.readyState === WebSocket.OPEN;
    },
    send: (frame) => ws.send(frame, { binary: true }),
    close: (code, reason) => {
      if (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING) ws.close(code, reason);
    },
    terminate: () => ws.terminate(),
  };
}
