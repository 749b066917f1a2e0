/**
 * The lean load client: runs in its own process (forked by bench/load.ts, so its CPU is measured
 * apart) and drives sender/receiver pairs over raw WebSockets. No SDK on the hot path: each chat
 * frame is a pre-encoded template with the message number patched in (bench/wire.ts); acks and
 * pushes are read field by field.
 *
 * Protocol with the parent (IPC): parent → {type:"plan"} → child connects and primes every pair
 * → {type:"ready"} → parent {type:"go"} → child posts {type:"measure-start"} after the warm-up
 * and {type:"measure-end"} after the measured interval → (with `hold`, it keeps offering until
 * {type:"stop"}) → waits for the acks in flight and the deliveries → {type:"result"}.
 */
import { resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { WebSocket } from "ws";
import { Samples, summarize, type LatencySummary } from "./stats.js";
import { ChatTemplate, readFrame } from "./wire.js";

export interface PairPlan {
  /** WebSocket URLs, token included. */
  readonly senderWs: string;
  readonly receiverWs: string;
  readonly sessionId: string;
  /** The receiver's username, when known (used to look lost messages up in its inbox). */
  readonly receiver?: string;
}

export interface ClientPlan {
  readonly pairs: readonly PairPlan[];
  /** Most unacked chats per sender. */
  readonly window: number;
  /** Offered msg/s in total (open loop, spread evenly over the senders); 0 = closed loop. */
  readonly rate: number;
  readonly warmupMs: number;
  readonly measureMs: number;
  /** Keep offering after the measured interval until the parent sends "stop". */
  readonly hold: boolean;
  /** How long to wait for the acks still in flight once offering stopped. */
  readonly drainMs: number;
  /**
   * After that, wait for the pushes of acked messages until none has arrived for `graceMs`
   * (a backlog still draining keeps the wait going), at most `graceCapMs` in all.
   */
  readonly graceMs: number;
  readonly graceCapMs: number;
  readonly contentBytes: number;
}

export interface ClientResult {
  readonly measuredSeconds: number;
  /** Chats sent during the measured interval. */
  readonly sent: number;
  /** Open loop: sends due during the measured interval that found the sender's window full (or its socket closed). */
  readonly notOffered: number;
  /** Open loop: sends that went out more than 10 ms after their due time (the client was late). */
  readonly lateSends: number;
  /** Committed acks received during the measured interval. */
  readonly acked: number;
  readonly ackedPerSec: number;
  /** First pushes (per message) received during the measured interval. */
  readonly delivered: number;
  readonly deliveredPerSec: number;
  /** Error acks received during the measured interval, by `error_code`. */
  readonly errors: Record<string, number>;
  /** Of the chats sent during the measured interval: send → ack and send → push, in ms. */
  readonly ackMs: LatencySummary;
  readonly pushMs: LatencySummary;
  /** Whole run after priming (warm-up, measured interval, hold, drain). */
  readonly totals: {
    readonly sent: number;
    readonly ackedOk: number;
    readonly ackErrors: Record<string, number>;
    /** Sent, never answered (connection closed or drain time ran out). */
    readonly unacked: number;
    readonly delivered: number;
    /** Pushes of a message already delivered. */
    readonly duplicatePushes: number;
    /** Acked with success but no push arrived before the grace period ran out (checked through pushes only). */
    readonly lost: number;
    /** Pushed although the ack was an error or never came. */
    readonly deliveredWithoutOkAck: number;
  };
  /** Close codes of the client's sockets that closed during the run. */
  readonly closes: Record<string, number>;
  /** The lost messages (up to 200,000): msg_id from the ack and pair index, side by side. */
  readonly lostMessages: { readonly msgIds: readonly number[]; readonly pairs: readonly number[] };
  readonly primeMs: number;
  /** How long the client waited for pushes after the acks were in. */
  readonly graceWaitedMs: number;
}

type ToChild = { type: "plan"; plan: ClientPlan } | { type: "go" } | { type: "stop" };
export type FromChild =
  | { type: "ready"; primeMs: number }
  | { type: "measure-start" }
  | { type: "measure-end" }
  | { type: "result"; result: ClientResult }
  | { type: "failed"; error: string };

const ACKED_OK = 1;
const ACK_ERROR = 2;
const DELIVERED = 4;
const LATE_MS = 10;
/** A sender waits this long after an error ack before its next chat (closed loop), so a fast refusal is not a spin. */
const ERROR_PAUSE_MS = 10;

class Pair {
  readonly index: number;
  readonly template: ChatTemplate;
  sender!: WebSocket;
  receiver!: WebSocket;
  inflight = 0;
  open = false;

  constructor(index: number, template: ChatTemplate) {
    this.index = index;
    this.template = template;
  }
}

/** Per-message state in growable typed arrays, indexed by message number. */
class Ledger {
  sentAt = new Float64Array(1 << 16);
  msgId = new Float64Array(1 << 16);
  pairOf = new Int32Array(1 << 16);
  flags = new Uint8Array(1 << 16);
  next = 0;

  allocate(pair: number, now: number): number {
    const n = this.next++;
    if (n === this.flags.length) {
      const grow = <T extends Float64Array | Int32Array | Uint8Array>(a: T): T => {
        const b = new (a.constructor as new (n: number) => T)(a.length * 2);
        b.set(a);
        return b;
      };
      this.sentAt = grow(this.sentAt);
      this.msgId = grow(this.msgId);
      this.pairOf = grow(this.pairOf);
      this.flags = grow(this.flags);
    }
    this.sentAt[n] = now;
    this.pairOf[n] = pair;
    return n;
  }
}

const inc = (m: Record<string, number>, k: string): void => void (m[k] = (m[k] ?? 0) + 1);

/** Runs one plan: connect, prime, then on "go" the load; resolves with the result. */
class LoadRun {
  readonly #plan: ClientPlan;
  readonly #post: (m: FromChild) => void;
  readonly #pairs: Pair[];
  readonly #ledger = new Ledger();
  #phase: "setup" | "warmup" | "measure" | "hold" | "stopped" = "setup";
  /** Message numbers from `#firstRun` on are the load (lower ones primed the pairs). */
  #firstRun = 0;
  #measureFrom = Infinity;
  #measureTo = Infinity;
  #measureStartedAt = 0;
  #measureEndedAt = 0;
  #inflight = 0;
  #pendingDelivery = 0;
  #lastPushAt = 0;
  #graceWaitedMs = 0;
  readonly #waiters = new Set<() => void>();
  #stopRequested: (() => void) | undefined;
  readonly #ackLatency = new Samples();
  readonly #pushLatency = new Samples();
  readonly #w = { sent: 0, notOffered: 0, lateSends: 0, acked: 0, delivered: 0, errors: {} as Record<string, number> };
  readonly #t = { sent: 0, ackedOk: 0, ackErrors: {} as Record<string, number>, delivered: 0, duplicatePushes: 0 };
  readonly #closes: Record<string, number> = {};

  constructor(plan: ClientPlan, post: (m: FromChild) => void) {
    this.#plan = plan;
    this.#post = post;
    this.#pairs = plan.pairs.map((p, i) => new Pair(i, new ChatTemplate(p.sessionId, plan.contentBytes)));
  }

  async connect(): Promise<void> {
    // A few upgrades at a time: a burst of hundreds would measure the upgrade storm, not the load.
    const queue = [...this.#pairs];
    const worker = async (): Promise<void> => {
      for (let p = queue.shift(); p; p = queue.shift()) {
        const plan = this.#plan.pairs[p.index]!;
        p.receiver = await this.#open(plan.receiverWs, p, "receiver");
        p.sender = await this.#open(plan.senderWs, p, "sender");
        p.open = true;
      }
    };
    await Promise.all(Array.from({ length: Math.min(16, queue.length) }, worker));
  }

  #open(url: string, pair: Pair, role: "sender" | "receiver"): Promise<WebSocket> {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url, { perMessageDeflate: false, handshakeTimeout: 15_000 });
      ws.binaryType = "nodebuffer";
      ws.once("open", () => {
        ws.off("error", reject);
        ws.on("error", () => {}); // the close that follows is what counts
        resolve(ws);
      });
      ws.once("error", reject);
      ws.on("message", (data: Buffer) => this.#onFrame(pair, role, data));
      ws.on("close", (code) => {
        if (this.#phase !== "stopped") inc(this.#closes, `${role}:${code}`);
        if (role === "sender") pair.open = false;
        this.#notify();
      });
    });
  }

  /** Sends one priming chat per pair until each pair has seen one pushed (its routes are in place). */
  async prime(timeoutMs: number): Promise<number> {
    const started = performance.now();
    const deadline = started + timeoutMs;
    await Promise.all(
      this.#pairs.map(async (p) => {
        for (;;) {
          const n = this.#send(p);
          const until = Math.min(deadline, performance.now() + 1000);
          while (!(this.#ledger.flags[n]! & DELIVERED) && performance.now() < until) await this.#waitChange(until);
          if (this.#ledger.flags[n]! & DELIVERED) return;
          if (performance.now() >= deadline) throw new Error(`pair ${p.index}: no push arrived within ${timeoutMs} ms of priming`);
        }
      }),
    );
    this.#firstRun = this.#ledger.next;
    return Math.round(performance.now() - started);
  }

  /** Resolves at the next ack, push or close, or at `until` (performance.now() time). */
  #waitChange(until: number): Promise<void> {
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(t);
        this.#waiters.delete(done);
        resolve();
      };
      const t = setTimeout(done, Math.max(0, until - performance.now()));
      this.#waiters.add(done);
    });
  }

  #notify(): void {
    if (this.#waiters.size > 0) for (const w of [...this.#waiters]) w();
  }

  #send(p: Pair): number {
    const now = performance.now();
    const n = this.#ledger.allocate(p.index, now);
    p.inflight++;
    this.#inflight++;
    if (n >= this.#firstRun && this.#phase !== "setup") {
      this.#t.sent++;
      if (this.#phase === "measure") this.#w.sent++;
    }
    p.sender.send(p.template.frame(n));
    return n;
  }

  #onFrame(p: Pair, role: "sender" | "receiver", data: Buffer): void {
    let f;
    try {
      f = readFrame(data);
    } catch {
      return; // not a WsPacket: nothing the load can use
    }
    if (f.kind === "ack") this.#onAck(p, f.id, f.code, f.msgId);
    // The sender's own connection gets a copy of its message too (pushes go to every member's
    // connections): only the receiver's copy counts as delivered.
    else if (f.kind === "push" && role === "receiver") this.#onPush(f.id);
  }

  #onAck(p: Pair, n: number, code: string, msgId: number): void {
    const l = this.#ledger;
    if (n < 0 || n >= l.next || l.pairOf[n] !== p.index || l.flags[n]! & (ACKED_OK | ACK_ERROR)) return;
    const now = performance.now();
    p.inflight--;
    this.#inflight--;
    const load = n >= this.#firstRun && this.#phase !== "setup";
    if (code === "") {
      l.flags[n]! |= ACKED_OK;
      l.msgId[n] = msgId;
      if (load) {
        this.#t.ackedOk++;
        if (!(l.flags[n]! & DELIVERED)) this.#pendingDelivery++;
        if (this.#phase === "measure") this.#w.acked++;
      }
    } else {
      l.flags[n]! |= ACK_ERROR;
      if (load) {
        inc(this.#t.ackErrors, code);
        if (this.#phase === "measure") inc(this.#w.errors, code);
      }
    }
    if (n >= this.#measureFrom && n < this.#measureTo) this.#ackLatency.push(now - l.sentAt[n]!);
    if (this.#plan.rate === 0 && this.#offering() && p.open) {
      if (code === "") this.#send(p);
      else setTimeout(() => this.#offering() && p.open && this.#send(p), ERROR_PAUSE_MS);
    }
    this.#notify();
  }

  #onPush(n: number): void {
    const l = this.#ledger;
    if (n < 0 || n >= l.next) return;
    if (l.flags[n]! & DELIVERED) {
      if (n >= this.#firstRun) this.#t.duplicatePushes++;
      return;
    }
    const now = performance.now();
    this.#lastPushAt = now;
    l.flags[n]! |= DELIVERED;
    if (n >= this.#firstRun && this.#phase !== "setup") {
      this.#t.delivered++;
      if (l.flags[n]! & ACKED_OK) this.#pendingDelivery--;
      if (this.#phase === "measure") this.#w.delivered++;
    }
    if (n >= this.#measureFrom && n < this.#measureTo) this.#pushLatency.push(now - l.sentAt[n]!);
    this.#notify();
  }

  #offering(): boolean {
    return this.#phase === "warmup" || this.#phase === "measure" || this.#phase === "hold";
  }

  /** Warm-up, measured interval, optional hold; then drain and grace. Resolves with the result. */
  async run(): Promise<ClientResult> {
    const plan = this.#plan;
    this.#phase = "warmup";
    const t0 = performance.now();
    const stopOffering = new Promise<void>((resolve) => {
      setTimeout(() => {
        this.#phase = "measure";
        this.#measureFrom = this.#ledger.next;
        this.#measureStartedAt = performance.now();
        this.#post({ type: "measure-start" });
        setTimeout(() => {
          this.#measureTo = this.#ledger.next;
          this.#measureEndedAt = performance.now();
          this.#post({ type: "measure-end" });
          if (plan.hold) {
            this.#phase = "hold";
            this.#stopRequested = resolve;
          } else resolve();
        }, plan.measureMs);
      }, plan.warmupMs);
    });
    if (plan.rate > 0) this.#openLoop(t0);
    else for (const p of this.#pairs) for (let i = 0; i < plan.window && p.open; i++) this.#send(p);
    await stopOffering;
    this.#phase = "stopped";
    // Acks still in flight, then the pushes of what was acked; both bounded.
    const drainUntil = performance.now() + plan.drainMs;
    while (this.#inflight > 0 && this.#pairs.some((p) => p.open && p.inflight > 0) && performance.now() < drainUntil) await this.#waitChange(drainUntil);
    const graceStarted = performance.now();
    const cap = graceStarted + plan.graceCapMs;
    for (;;) {
      const until = Math.min(cap, Math.max(graceStarted, this.#lastPushAt) + plan.graceMs);
      if (this.#pendingDelivery === 0 || performance.now() >= until) break;
      await this.#waitChange(until);
    }
    this.#graceWaitedMs = Math.round(performance.now() - graceStarted);
    return this.#result();
  }

  /** "stop" from the parent (hold mode). */
  stop(): void {
    this.#stopRequested?.();
  }

  /** Due times t0 + j/rate, sender j mod S: evenly spread and paced by a timer, never queued. */
  #openLoop(t0: number): void {
    const interval = 1000 / this.#plan.rate;
    const pairs = this.#pairs;
    let j = 0;
    const tick = (): void => {
      if (!this.#offering()) return;
      const now = performance.now();
      for (let due = t0 + j * interval; due <= now; due = t0 + ++j * interval) {
        const p = pairs[j % pairs.length]!;
        const measured = this.#phase === "measure";
        if (!p.open || p.inflight >= this.#plan.window) {
          if (measured) this.#w.notOffered++;
          continue;
        }
        if (now - due > LATE_MS && measured) this.#w.lateSends++;
        this.#send(p);
      }
      setTimeout(tick, Math.max(0, t0 + j * interval - performance.now()));
    };
    tick();
  }

  #result(): ClientResult {
    const l = this.#ledger;
    const seconds = Math.max(1e-9, (this.#measureEndedAt - this.#measureStartedAt) / 1000);
    let unacked = 0;
    let withoutOk = 0;
    const lostMessages = { msgIds: [] as number[], pairs: [] as number[] };
    for (let n = this.#firstRun; n < l.next; n++) {
      const f = l.flags[n]!;
      if (!(f & (ACKED_OK | ACK_ERROR))) unacked++;
      if (f & DELIVERED && !(f & ACKED_OK)) withoutOk++;
      if (f & ACKED_OK && !(f & DELIVERED) && lostMessages.msgIds.length < 200_000) {
        lostMessages.msgIds.push(l.msgId[n]!);
        lostMessages.pairs.push(l.pairOf[n]!);
      }
    }
    return {
      measuredSeconds: Math.round(seconds * 1000) / 1000,
      sent: this.#w.sent,
      notOffered: this.#w.notOffered,
      lateSends: this.#w.lateSends,
      acked: this.#w.acked,
      ackedPerSec: Math.round(this.#w.acked / seconds),
      delivered: this.#w.delivered,
      deliveredPerSec: Math.round(this.#w.delivered / seconds),
      errors: this.#w.errors,
      ackMs: summarize(this.#ackLatency),
      pushMs: summarize(this.#pushLatency),
      totals: {
        sent: this.#t.sent,
        ackedOk: this.#t.ackedOk,
        ackErrors: this.#t.ackErrors,
        unacked,
        delivered: this.#t.delivered,
        duplicatePushes: this.#t.duplicatePushes,
        lost: this.#pendingDelivery,
        deliveredWithoutOkAck: withoutOk,
      },
      closes: this.#closes,
      lostMessages,
      primeMs: 0,
      graceWaitedMs: this.#graceWaitedMs,
    };
  }

  close(): void {
    for (const p of this.#pairs) {
      p.sender?.terminate();
      p.receiver?.terminate();
    }
  }
}

/** The child's main: follows the parent's IPC messages; exits when done. */
function main(): void {
  const post = (m: FromChild): void => void process.send!(m);
  let run: LoadRun | undefined;
  let primeMs = 0;
  const fail = (err: unknown): void => {
    post({ type: "failed", error: (err as Error).stack ?? String(err) });
    run?.close();
    process.disconnect?.();
  };
  process.on("message", (m: ToChild) => {
    if (m.type === "plan") {
      run = new LoadRun(m.plan, post);
      const r = run;
      r.connect()
        .then(() => r.prime(30_000))
        .then((ms) => {
          primeMs = ms;
          post({ type: "ready", primeMs: ms });
        }, fail);
    } else if (m.type === "go" && run) {
      const r = run;
      r.run().then((result) => {
        post({ type: "result", result: { ...result, primeMs } });
        r.close();
        process.disconnect?.();
      }, fail);
    } else if (m.type === "stop") {
      run?.stop();
    }
  });
  process.on("disconnect", () => {
    run?.close();
    process.exit(0);
  });
}

// Only when run as the forked entry point (importing this file, e.g. from a test, runs nothing).
if (process.send && process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) main();
