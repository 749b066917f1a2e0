// The Resonance client SDK for Node: typed HTTP API, the reconnecting WebSocket client, the
// terminal chat. Browsers use browser.ts (same client, browser WebSocket and fetch).
export { createApi, wsUrlOf, type ApiOptions, type ResonanceApi } from "./api.js";
export { ResonanceClient } from "./client.js";
export type { ClientStats, CursorStore, MessageSource, ResonanceClientOptions, SendInput } from "./types.js";
export type { CloseInfo } from "./connection.js";
export type { ClientPlatform } from "./platform.js";
export { SeenMessages, type MessageKey, type SeenMessagesOptions } from "./dedup.js";
export { ResonanceError, codeName, isRetryable, isRetryableCode } from "./errors.js";
export { runChat, formatMessage, type ChatOptions } from "./chat-cli.js";
