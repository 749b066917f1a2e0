import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";

/**
 * Every Prometheus metric of a process, in one registry (no global state: two processes'
 * worth of services in one test process do not collide). Gauges with collect callbacks are
 * added by their owners through `gauge()`.
 */
export class Metrics {
  readonly registry = new Registry();
  readonly wsConnections = new Gauge({ name: "resonance_ws_connections", help: "Open WebSocket connections", registers: [this.registry] });
  readonly wsClosed = new Counter({
    name: "resonance_ws_closed_total",
    help: "WebSocket connections closed, by close code and reason",
    labelNames: ["code", "reason"],
    registers: [this.registry],
  });
  readonly wsLimited = new Counter({
    name: "resonance_ws_limited_total",
    help: "WebSocket connections refused or closed by a limit (connections-per-user, connections-per-address, send-buffer, chat-rate)",
    labelNames: ["limit"],
    registers: [this.registry],
  });
  readonly messagesIn = new Counter({ name: "resonance_messages_in_total", help: "Chat messages received from clients", registers: [this.registry] });
  readonly messagesOut = new Counter({ name: "resonance_messages_out_total", help: "Messages pushed to clients", registers: [this.registry] });
  readonly ackLatency = new Histogram({
    name: "resonance_ack_latency_seconds",
    help: "Chat message receipt to ack",
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    registers: [this.registry],
  });
  readonly chatBatches = new Counter({
    name: "resonance_chat_batches_total",
    help: "SendMessages calls from a gateway to logic, by outcome (ok, moved to another instance, failed)",
    labelNames: ["outcome"],
    registers: [this.registry],
  });
  readonly chatsShed = new Counter({
    name: "resonance_chats_shed_total",
    help: "Chats answered resource_exhausted at once, by reason (window: the connection's unacked window is full; queue: the gateway's queue towards logic is full)",
    labelNames: ["reason"],
    registers: [this.registry],
  });
  readonly badInput = new Counter({ name: "resonance_bad_input_total", help: "Rejected malformed input", labelNames: ["kind"], registers: [this.registry] });
  readonly messagesCommitted = new Counter({ name: "resonance_messages_committed_total", help: "Messages committed by logic", registers: [this.registry] });
  readonly outboxPublished = new Counter({ name: "resonance_outbox_published_total", help: "Outbox events published", registers: [this.registry] });
  readonly eventsHandled = new Counter({
    name: "resonance_events_handled_total",
    help: "Queue events handled by task, by outcome",
    labelNames: ["outcome"],
    registers: [this.registry],
  });
  readonly pushes = new Counter({ name: "resonance_pushes_total", help: "Push RPCs from task to gateways, by outcome", labelNames: ["outcome"], registers: [this.registry] });
  readonly inboxRows = new Counter({ name: "resonance_inbox_rows_total", help: "Inbox rows written or found written by task (one per member of a small session's message)", registers: [this.registry] });
  readonly routeLookups = new Counter({ name: "resonance_route_lookups_total", help: "Users whose routes task looked up", registers: [this.registry] });
  readonly largeEvents = new Counter({ name: "resonance_large_events_total", help: "Events of large sessions: no inbox rows, pushed once per gateway", registers: [this.registry] });
  readonly internalRefused = new Counter({
    name: "resonance_internal_calls_refused_total",
    help: "Internal gRPC calls refused for a missing or wrong shared secret",
    registers: [this.registry],
  });
  readonly logins = new Counter({
    name: "resonance_logins_total",
    help: "Login attempts by outcome (ok, wrong, backoff, shed)",
    labelNames: ["outcome"],
    registers: [this.registry],
  });

  constructor() {
    collectDefaultMetrics({ register: this.registry });
  }

  /** A gauge whose value is read when scraped. */
  gauge(name: string, help: string, read: () => number | Promise<number>): void {
    new Gauge({
      name,
      help,
      registers: [this.registry],
      async collect() {
        try {
          this.set(await read());
        } catch {
          // A scrape while a dependency is down reports the last value.
        }
      },
    });
  }
}

/** WebSocket close codes that keep their own label value; any other code is counted as "other". */
const KNOWN_CLOSE_CODES = new Set([1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 4429]);

/**
 * The `code` label of a WebSocket close: the standard codes and ours by number, anything a client
 * made up as "other", so a client cannot create label values (and time series) at will.
 */
export function closeCodeLabel(code: number): string {
  return KNOWN_CLOSE_CODES.has(code) ? String(code) : "other";
}
