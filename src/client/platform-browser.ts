import { createConnectTransport } from "@connectrpc/connect-web";
import type { ClientPlatform, PlatformSocket, SocketEnd, SocketEvents } from "./platform.js";

/**
 * The SDK in a browser: the page's `WebSocket` and `fetch`. A browser hides the status of a
 * refused upgrade (the socket just closes with 1006), so `upgradeStatus` stays undefined and the
 * client checks its token over HTTP when it needs to know.
 */
export const browserPlatform: ClientPlatform = {
  seesUpgradeStatus: false,
  createTransport: (o) =>
    createConnectTransport({
      baseUrl: o.baseUrl,
      useBinaryFormat: o.useBinaryFormat,
      interceptors: o.interceptors,
      defaultTimeoutMs: o.defaultTimeoutMs,
    }),
  openSocket: openBrowserSocket,
  detach: () => {},
};

function openBrowserSocket(url: string, handshakeTimeoutMs: number, events: SocketEvents): PlatformSocket {
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  let ended = false;
  const end = (info: SocketEnd): void => {
    if (ended) return;
    ended = true;
    clearTimeout(handshake);
    events.end(info);
  };
  const drop = (reason: string): void => {
    ws.onopen = ws.onmessage = ws.onclose = null;
    ws.close();
    end({ code: 1006, reason, wasClean: false, upgradeStatus: undefined, error: undefined });
  };
  const handshake = setTimeout(() => drop("handshake timeout"), handshakeTimeoutMs);
  ws.onopen = () => {
    clearTimeout(handshake);
    events.open();
  };
  ws.onmessage = (e: MessageEvent) => events.frame(e.data instanceof ArrayBuffer ? new Uint8Array(e.data) : undefined);
  ws.onclose = (e) => end({ code: e.code, reason: e.reason, wasClean: e.wasClean, upgradeStatus: undefined, error: undefined });
  return {
    get isOpen() {
      return ws.readyState === WebSocket.OPEN;
    },
    send: (frame) => ws.send(frame),
    close: (code, reason) => {
      if (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING) ws.close(code, reason);
    },
    // A browser cannot cut a socket without the close handshake; it stops listening instead.
    terminate: () => drop("terminated"),
  };
}
