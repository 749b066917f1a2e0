import { create, toBinary, ScalarType, type DescField, type DescMessage, type DescService } from "@bufbuild/protobuf";
import fc from "fast-check";
import WebSocket from "ws";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AuthService, SessionService, WsPacketSchema, type WsPacket } from "../src/gen/resonance/gateway/v1/gateway_pb.js";
import { fromBinary } from "@bufbuild/protobuf";
import { createApi } from "../src/client/api.js";
import { TestCluster } from "./support/cluster.js";
import { eventually } from "./support/processes.js";

/**
 * The abuse suite: property-based fuzzing (fast-check) of every public Connect method's body,
 * of raw HTTP requests, and of WebSocket frames, against a real server. Whatever arrives, the
 * answer is a 4xx or an error ack with a short message naming a known code; never a 5xx, an
 * `internal` ack, an abnormal close or a crash. Bounded: a fixed number of cases per property
 * (over 10,000 in all) sent a few at a time; it prints what it sent and how long it took.
 */

// Fixed seed by default, so a failure reproduces; RESONANCE_ABUSE_SEED explores others.
const SEED = Number(process.env.RESONANCE_ABUSE_SEED ?? 20_261_129);
const CASES = { connectBodies: 3_000, rawHttp: 2_000, wsPackets: 3_000, wsRawFrames: 2_000 };
const PARALLEL = 16;
const MAX_MESSAGE_CHARS = 600;
/** Codes a client may be answered with; `internal`, `unknown` and `data_loss` would be our failure. */
const CLIENT_CODES = new Set([
  "canceled", "invalid_argument", "deadline_exceeded", "not_found", "already_exists", "permission_denied",
  "resource_exhausted", "failed_precondition", "aborted", "out_of_range", "unimplemented", "unavailable", "unauthenticated",
]);

// ---- arbitraries --------------------------------------------------------------------------------

const tricky = fc.constantFrom(
  "", " ", "\u0000", "a\u0000b", "\u202e", "\ud800", "\udfff", "0", "single:alice:bob", "single:fuzz:fuzz", "group:1", "group:-1",
  "group:99999999999999999999", "%", "_", "\\", "' or 1=1 --", "${x}", "../../etc/passwd", "ALICE", "alice", "fuzz", "system", "text",
  "\r\n", "\t", "🎉", "null", "undefined", "NaN", "-1", "9223372036854775808",
);
const controlHeavy = fc.string({ unit: fc.constantFrom("\u0000", "\u0001", "\u001f", "\u007f", "\u0085", "\u202e", "\u2066", "\ud800", "\udc00", "a", "Z", "é", "😀", ":", "%", " "), maxLength: 80 });
/** Strings a client might send by mistake or on purpose; `max` bounds the long ones. */
const nasty = (max: number) =>
  fc.oneof(
    { weight: 3, arbitrary: tricky },
    { weight: 3, arbitrary: fc.string({ unit: "grapheme", maxLength: 40 }) },
    { weight: 2, arbitrary: fc.string({ unit: "binary", maxLength: 40 }) },
    { weight: 3, arbitrary: controlHeavy },
    { weight: 1, arbitrary: fc.nat({ max }).map((n) => "x".repeat(n)) },
  );
const int64 = fc.oneof(fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }), fc.constantFrom(0n, 1n, -1n, 2n ** 63n - 1n, -(2n ** 63n)));
const int32 = fc.oneof(fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }), fc.constantFrom(0, 1, 2, 3, -1));

/** A value of the field's own type (for binary bodies, which must encode). */
function typedValue(f: DescField): fc.Arbitrary<unknown> {
  const scalar = (t: ScalarType): fc.Arbitrary<unknown> => {
    switch (t) {
      case ScalarType.STRING:
        return nasty(20_000);
      case ScalarType.INT64:
      case ScalarType.SINT64:
      case ScalarType.SFIXED64:
        return int64;
      case ScalarType.INT32:
      case ScalarType.SINT32:
      case ScalarType.SFIXED32:
        return int32;
      case ScalarType.BOOL:
        return fc.boolean();
      default:
        return fc.constant(undefined);
    }
  };
  if (f.fieldKind === "scalar") return scalar(f.scalar);
  if (f.fieldKind === "list" && f.listKind === "scalar") {
    return fc.oneof({ weight: 5, arbitrary: fc.array(scalar(f.scalar), { maxLength: 20 }) }, { weight: 1, arbitrary: fc.array(tricky, { minLength: 400, maxLength: 1_500 }) });
  }
  return fc.constant(undefined);
}

/** A JSON value for the field: usually of its type, sometimes of any other. */
function jsonValue(f: DescField): fc.Arbitrary<unknown> {
  const wrong = fc.oneof(fc.constant(null), fc.boolean(), fc.double(), fc.integer(), nasty(5_000), fc.array(fc.integer(), { maxLength: 3 }), fc.object({ maxDepth: 1 }));
  const right = typedValue(f).map((v) => (typeof v === "bigint" ? v.toString() : Array.isArray(v) ? v.map((x: unknown) => (typeof x === "bigint" ? x.toString() : x)) : v));
  return fc.oneof({ weight: 4, arbitrary: right }, { weight: 1, arbitrary: wrong });
}

/** Field values keyed by local name (binary) or JSON name (JSON), each field present or not. */
function fieldsOf(msg: DescMessage, value: (f: DescField) => fc.Arbitrary<unknown>, json: boolean): fc.Arbitrary<Record<string, unknown>> {
  const shape: Record<string, fc.Arbitrary<unknown>> = {};
  for (const f of msg.fields) shape[json ? f.jsonName : f.localName] = value(f);
  return fc.record(shape, { requiredKeys: [] });
}

interface Target {
  readonly service: DescService;
  readonly method: DescService["methods"][number];
  readonly path: string;
}
const targets: Target[] = [AuthService, SessionService].flatMap((service) =>
  service.methods.map((method) => ({ service, method, path: `${service.typeName}/${method.name}` })),
);

/** Which token a request carries. The main user's token never goes to Logout/LogoutAll (they would revoke it). */
type Auth = "main" | "none" | "garbage" | "throwaway";
const authFor = (t: Target): fc.Arbitrary<Auth> =>
  t.service === SessionService ? fc.constantFrom<Auth>("main", "main", "main", "none", "garbage") : fc.constantFrom<Auth>("none", "garbage", "throwaway");

interface HttpCase {
  readonly path: string;
  readonly contentType: string;
  readonly body: Uint8Array | string;
  readonly auth: Auth;
  readonly headers?: Record<string, string>;
}

const connectBody: fc.Arbitrary<HttpCase> = fc
  .constantFrom(...targets)
  .chain((t) =>
    fc.oneof(
      fc.record({ fields: fieldsOf(t.method.input, jsonValue, true), extra: fc.dictionary(fc.string({ maxLength: 8 }), fc.jsonValue({ maxDepth: 1 }), { maxKeys: 2 }), auth: authFor(t) }).map(
        ({ fields, extra, auth }): HttpCase => ({ path: t.path, contentType: "application/json", body: JSON.stringify({ ...extra, ...fields }), auth }),
      ),
      fc.record({ fields: fieldsOf(t.method.input, typedValue, false), auth: authFor(t) }).map(
        ({ fields, auth }): HttpCase => ({ path: t.path, contentType: "application/proto", body: toBinary(t.method.input, create(t.method.input, fields)), auth }),
      ),
    ),
  );

const rawPath = fc.oneof(
  { weight: 5, arbitrary: fc.constantFrom(...targets.map((t) => t.path)) },
  { weight: 1, arbitrary: fc.constantFrom("resonance.gateway.v1.PushService/Push", "nope", "resonance.gateway.v1.AuthService/") },
);
const rawHttp: fc.Arbitrary<HttpCase> = rawPath.chain((path) => fc.record({
  path: fc.constant(path),
  auth: path.includes("SessionService") ? fc.constantFrom<Auth>("main", "none", "garbage") : fc.constantFrom<Auth>("none", "garbage", "throwaway"),
  contentType: fc.constantFrom("application/json", "application/proto", "application/json; charset=utf-8", "text/plain", "", "application/connect+proto", "application/grpc"),
  body: fc.oneof(
    fc.uint8Array({ maxLength: 2_000 }),
    fc.string({ unit: "binary", maxLength: 300 }),
    fc.json({ maxDepth: 3 }),
    fc.constantFrom("{", "[]", "null", '{"username":', '{"members":[' + '"a",'.repeat(100)),
  ),
  headers: fc.dictionary(
    fc.constantFrom("connect-protocol-version", "content-encoding", "connect-timeout-ms", "connect-content-encoding", "accept-encoding"),
    fc.constantFrom("1", "2", "gzip", "br", "identity", "zstd", "-5", "99999999999999", "abc", ""),
    { maxKeys: 3 },
  ),
}));

/** A WsPacket a client could build: any payload, hostile strings within one frame's limit. */
const wsPacket = (ownGroup: string): fc.Arbitrary<{ packet: WsPacket; answered: "ack" | "pulse" | "none" }> => {
  const seq = fc.oneof({ weight: 6, arbitrary: fc.uuid() }, { weight: 1, arbitrary: fc.constantFrom("", "x".repeat(129), "x".repeat(5_000)) }, { weight: 2, arbitrary: nasty(500) });
  const chat = fc.record({
    sessionId: fc.oneof({ weight: 2, arbitrary: fc.constant(ownGroup) }, { weight: 3, arbitrary: nasty(9_000) }),
    fromUsername: fc.oneof(fc.constant(""), nasty(100)),
    toUsername: fc.oneof({ weight: 4, arbitrary: fc.constant("") }, { weight: 1, arbitrary: nasty(100) }),
    content: fc.oneof(fc.string({ maxLength: 200 }), nasty(9_000)),
    type: fc.oneof(fc.constantFrom("", "text", "image", "system"), nasty(50)),
    timestamp: int64,
  });
  return fc.oneof(
    { weight: 8, arbitrary: fc.record({ seq, chat }).map(({ seq: s, chat: c }) => ({ packet: create(WsPacketSchema, { seq: s, payload: { case: "chat", value: c } }), answered: "ack" as const })) },
    { weight: 1, arbitrary: seq.map((s) => ({ packet: create(WsPacketSchema, { seq: s, payload: { case: "pulse", value: {} } }), answered: "pulse" as const })) },
    { weight: 1, arbitrary: seq.map((s) => ({ packet: create(WsPacketSchema, { seq: s, payload: { case: "ack", value: { refSeq: s, msgId: 5n } } }), answered: "none" as const })) },
    { weight: 1, arbitrary: seq.map((s) => ({ packet: create(WsPacketSchema, { seq: s, payload: { case: "push", value: { content: "forged", sessionId: "0" } } }), answered: "ack" as const })) },
    { weight: 1, arbitrary: seq.map((s) => ({ packet: create(WsPacketSchema, { seq: s, payload: { case: "goaway", value: { reason: "client says bye" } } }), answered: "ack" as const })) },
    { weight: 1, arbitrary: seq.map((s) => ({ packet: create(WsPacketSchema, { seq: s }), answered: "ack" as const })) },
  );
};

/** A raw frame: random bytes, a valid chat with bytes flipped, text, or one over the size limit. */
const rawFrame = (valid: Uint8Array): fc.Arbitrary<{ data: Uint8Array | string; binary: boolean }> =>
  fc.oneof(
    { weight: 4, arbitrary: fc.uint8Array({ maxLength: 400 }).map((data) => ({ data, binary: true })) },
    {
      weight: 4,
      arbitrary: fc.array(fc.tuple(fc.nat(valid.length - 1), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 6 }).map((flips) => {
        const data = Uint8Array.from(valid);
        for (const [i, b] of flips) data[i] = b;
        return { data, binary: true };
      }),
    },
    { weight: 1, arbitrary: fc.string({ maxLength: 100 }).map((data) => ({ data, binary: false })) },
    { weight: 1, arbitrary: fc.integer({ min: 64 * 1024 + 1, max: 80 * 1024 }).map((n) => ({ data: new Uint8Array(n).fill(0x0a), binary: true })) },
  );

// ---- oracles ------------------------------------------------------------------------------------

/** Checks one HTTP answer; resolves with a description of what is wrong, or undefined. */
async function judgeHttp(res: Response): Promise<string | undefined> {
  const text = await res.text();
  if (res.status >= 500) return `HTTP ${res.status}: ${text.slice(0, 300)}`;
  if (res.status === 200) return undefined;
  if (!text) return [404, 405, 415].includes(res.status) ? undefined : `HTTP ${res.status} without a body`;
  let err: { code?: unknown; message?: unknown };
  try {
    err = JSON.parse(text) as typeof err;
  } catch {
    return `HTTP ${res.status} with a body that is not JSON: ${text.slice(0, 200)}`;
  }
  if (typeof err.code !== "string" || !CLIENT_CODES.has(err.code)) return `HTTP ${res.status} with code ${String(err.code)}`;
  if (typeof err.message === "string" && err.message.length > MAX_MESSAGE_CHARS) return `HTTP ${res.status}: a ${err.message.length}-character message`;
  return undefined;
}

/** Checks an ack; a description of what is wrong, or undefined. */
function judgeAck(p: WsPacket): string | undefined {
  if (p.payload.case !== "ack") return undefined;
  const a = p.payload.value;
  if (a.error === "") return a.errorCode ? `committed ack with error_code ${a.errorCode}` : undefined;
  if (!CLIENT_CODES.has(a.errorCode)) return `ack error_code "${a.errorCode}": ${a.error.slice(0, 200)}`;
  if (a.error.length > MAX_MESSAGE_CHARS) return `ack error of ${a.error.length} characters`;
  return undefined;
}

/** Runs `fn` over `items`, `parallel` at a time. */
async function pool<T>(items: readonly T[], parallel: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(parallel, items.length) }, async () => {
    while (next < items.length) await fn(items[next++]!);
  }));
}

// ---- the suite ----------------------------------------------------------------------------------

describe("abuse suite (standalone)", () => {
  let cluster: TestCluster;
  let url: string;
  const tokens: Record<Auth, string> = { main: "", none: "", garbage: "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.forged", throwaway: "" };
  let ownGroup = "";
  const figures: Record<string, { cases: number; ms: number; findings: number }> = {};
  const findings: string[] = [];

  beforeAll(async () => {
    cluster = await TestCluster.start({
      mode: "standalone",
      // The limits that would otherwise answer most cases with resource_exhausted are lifted, so the cases reach the handlers.
      env: { RESONANCE_CHAT_RATE: "1000000", RESONANCE_CHAT_BURST: "1000000", RESONANCE_AUTH_RATE: "1000000", RESONANCE_AUTH_BURST: "1000000" },
    });
    url = cluster.urls[0]!;
    const anon = createApi(url, { binary: true });
    tokens.main = (await anon.auth.register({ username: "fuzz", password: "fuzz-pass-1" })).accessToken;
    tokens.throwaway = (await anon.auth.register({ username: "throwaway", password: "throwaway-pass" })).accessToken;
    // A group of one: valid chats commit there without fanning out to every fuzzed account.
    ownGroup = (await createApi(url, { binary: true, token: tokens.main }).session.createSession({ members: [], name: "fuzz", type: 2 })).sessionId;
  });
  afterAll(async () => {
    const total = Object.values(figures).reduce((n, f) => n + f.cases, 0);
    const ms = Object.values(figures).reduce((n, f) => n + f.ms, 0);
    console.log(`abuse suite: ${total} cases in ${(ms / 1000).toFixed(1)} s (seed ${SEED})`, figures);
    await cluster?.destroy();
  });

  async function send(c: HttpCase): Promise<void> {
    const headers: Record<string, string> = { "connect-protocol-version": "1", ...(c.headers ?? {}) };
    if (c.contentType) headers["content-type"] = c.contentType;
    if (tokens[c.auth]) headers.authorization = `Bearer ${tokens[c.auth]}`;
    let res: Response;
    try {
      res = await fetch(`${url}/${c.path}`, { method: "POST", headers, body: typeof c.body === "string" ? c.body : Buffer.from(c.body), signal: AbortSignal.timeout(20_000) });
    } catch (err) {
      findings.push(`${c.path}: no answer (${(err as Error).message})`);
      return;
    }
    const wrong = await judgeHttp(res);
    if (wrong) findings.push(`${c.path} [${c.contentType}] ${typeof c.body === "string" ? c.body.slice(0, 120) : `${c.body.byteLength} bytes`}: ${wrong}`);
  }

  async function httpProperty(name: keyof typeof CASES, arb: fc.Arbitrary<HttpCase>): Promise<void> {
    const started = Date.now();
    const before = findings.length;
    const cases = fc.sample(arb, { numRuns: CASES[name], seed: SEED });
    await pool(cases, PARALLEL, send);
    figures[name] = { cases: cases.length, ms: Date.now() - started, findings: findings.length - before };
  }

  it("abuse - every public Connect method, fuzzed bodies (JSON and binary): never a 5xx, always a known code and a short message", { timeout: 180_000 }, async () => {
    await httpProperty("connectBodies", connectBody);
    expect(findings).toEqual([]);
  });

  it("abuse - raw HTTP requests (random bytes, bad content types and encodings, unknown paths): never a 5xx", { timeout: 180_000 }, async () => {
    await httpProperty("rawHttp", rawHttp);
    expect(findings).toEqual([]);
  });

  it("abuse - WebSocket packets of every kind with hostile fields: each answered, no internal ack, the socket stays open", { timeout: 180_000 }, async () => {
    const started = Date.now();
    const ws = new WebSocket(`${url.replace("http", "ws")}/ws?token=${tokens.main}`);
    ws.binaryType = "nodebuffer";
    const answers: WsPacket[] = [];
    let closed: number | undefined;
    // Acks and pulses answer our packets; pushes (of the chats that committed) are not answers.
    ws.on("message", (d: Buffer) => {
      const p = fromBinary(WsPacketSchema, d);
      if (p.payload.case === "ack" || p.payload.case === "pulse") answers.push(p);
    });
    ws.on("close", (code) => (closed = code));
    await new Promise<void>((resolve, reject) => ws.once("open", resolve).once("error", reject));
    const before = findings.length;
    let sent = 0;
    let expected = 0;
    const batch = 50;
    await fc.assert(
      fc.asyncProperty(fc.array(wsPacket(ownGroup), { minLength: batch, maxLength: batch }), async (packets) => {
        for (const { packet, answered } of packets) {
          ws.send(toBinary(WsPacketSchema, packet));
          if (answered !== "none") expected++;
        }
        sent += packets.length;
        await eventually(() => answers.length >= expected || closed !== undefined, 30_000, `answers to ${expected} packets`);
        const wrong = answers.map(judgeAck).filter((x) => x !== undefined);
        if (wrong.length > 0 || closed !== undefined) {
          findings.push(...wrong, ...(closed !== undefined ? [`socket closed with ${closed}`] : []));
          return false;
        }
        return true;
      }),
      { numRuns: CASES.wsPackets / batch, seed: SEED, endOnFailure: true },
    );
    ws.close(1000);
    figures.wsPackets = { cases: sent, ms: Date.now() - started, findings: findings.length - before };
    expect(findings).toEqual([]);
    expect(answers.length).toBe(expected);
  });

  it("abuse - raw WebSocket frames (random bytes, flipped bytes, text, oversized): a clear close (1003/1009) or an answer, never 1006/1011", { timeout: 180_000 }, async () => {
    const started = Date.now();
    const before = findings.length;
    const valid = toBinary(WsPacketSchema, create(WsPacketSchema, { seq: "s-1", payload: { case: "chat", value: { sessionId: ownGroup, content: "hello there" } } }));
    const frames = fc.sample(rawFrame(valid), { numRuns: CASES.wsRawFrames, seed: SEED });
    const pulse = toBinary(WsPacketSchema, create(WsPacketSchema, { payload: { case: "pulse", value: {} } }));
    const closes = new Map<number, number>();
    // Each worker keeps a socket until a frame makes the server close it, then opens another.
    await pool(Array.from({ length: 8 }, (_, w) => w), 8, async (w) => {
      let ws: WebSocket | undefined;
      let inbox: WsPacket[] = [];
      let closed: Promise<number> | undefined;
      for (let i = w; i < frames.length; i += 8) {
        if (!ws || ws.readyState !== ws.OPEN) {
          ws = new WebSocket(`${url.replace("http", "ws")}/ws?token=${tokens.main}`);
          ws.binaryType = "nodebuffer";
          const socket = ws;
          inbox = [];
          const mine = inbox;
          socket.on("message", (d: Buffer) => mine.push(fromBinary(WsPacketSchema, d)));
          closed = new Promise((r) => socket.on("close", (code) => r(code)));
          await new Promise<void>((resolve, reject) => socket.once("open", resolve).once("error", reject));
        }
        const f = frames[i]!;
        const socket = ws;
        const pulses = inbox.filter((p) => p.payload.case === "pulse").length;
        socket.send(f.data, { binary: f.binary });
        socket.send(pulse);
        // The server answers the pulse once it has handled the frame, or closes the socket.
        const outcome = await Promise.race([
          closed!.then((code) => ({ code })),
          eventually(() => inbox.filter((p) => p.payload.case === "pulse").length > pulses, 20_000, "the pulse answer").then(() => ({ code: 0 })),
        ]);
        if (outcome.code !== 0) {
          closes.set(outcome.code, (closes.get(outcome.code) ?? 0) + 1);
          if (![1003, 1009].includes(outcome.code)) findings.push(`raw frame ${Buffer.from(f.data).toString("hex").slice(0, 80)}: close ${outcome.code}`);
        }
        for (const wrong of inbox.map(judgeAck).filter((x) => x !== undefined)) findings.push(`raw frame: ${wrong}`);
        inbox.length = 0;
      }
      ws?.close(1000);
    });
    figures.wsRawFrames = { cases: frames.length, ms: Date.now() - started, findings: findings.length - before };
    console.log("abuse suite: raw frame closes by code", Object.fromEntries(closes));
    expect(findings).toEqual([]);
  });

  it("abuse - after all of it the server is healthy, logged no error, and still serves", async () => {
    const health = await fetch(`http://127.0.0.1:${cluster.gateways[0]!.env.RESONANCE_METRICS_PORT}/readyz`);
    expect(health.status).toBe(200);
    const errors = cluster.gateways[0]!.logs().filter((l) => Number(l.level) >= 50);
    expect(errors.map((l) => l.msg)).toEqual([]);
    expect((await createApi(url, { binary: true, token: tokens.main }).session.getSessionList({})).sessions.length).toBeGreaterThan(0);
    const total = Object.values(figures).reduce((n, f) => n + f.cases, 0);
    expect(total).toBeGreaterThanOrEqual(10_000);
  });
});
