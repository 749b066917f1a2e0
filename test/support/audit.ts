import type { ResonanceClient } from "../../src/client/index.js";
import type { TestCluster } from "./cluster.js";

/** A message the server acknowledged to its sender. */
export interface AckedMessage {
  readonly msgId: bigint;
  readonly content: string;
}

/** What one client received, counted per msg_id before and after the SDK's deduplication. */
interface Received {
  readonly raw: Map<bigint, number>;
  readonly emitted: Map<bigint, number>;
  readonly seqs: Map<bigint, bigint>;
}

/** Per client: what is wrong with what it received, and how many duplicates it was sent. */
export interface ClientFindings {
  readonly username: string;
  /** Acked messages the client never received (before dedup). */
  readonly neverReceived: string[];
  /** Acked messages `onMessage` did not report exactly once: msg_id → times reported. */
  readonly notExactlyOnce: Record<string, number>;
  /** Messages `onMessage` reported that never arrived raw (the SDK made them up). */
  readonly emittedNotReceived: string[];
  /** Raw arrivals beyond the first, summed over all messages (what dedup had to drop). */
  readonly duplicatesBeforeDedup: number;
  /** What the SDK says it dropped; must equal `duplicatesBeforeDedup`. */
  readonly duplicatesDropped: number;
  /** Seq ids missing from 1..max of what the client received for the session. */
  readonly seqGaps: string[];
}

/**
 * Records what SDK clients receive, through the raw hook (every push and delta event, before
 * deduplication) and `onMessage` (after it), so "exactly once" is checked on what came over
 * the wire and not only on what the SDK chose to show.
 */
export class DeliveryAudit {
  readonly #clients = new Map<ResonanceClient, Received>();
  readonly #sessionId: string;

  constructor(sessionId: string) {
    this.#sessionId = sessionId;
  }

  /** Starts recording a client; call before `start()` so its first delta pull is seen. */
  track(client: ResonanceClient): void {
    const r: Received = { raw: new Map(), emitted: new Map(), seqs: new Map() };
    this.#clients.set(client, r);
    client.onRawMessage((m) => r.raw.set(m.msgId, (r.raw.get(m.msgId) ?? 0) + 1));
    client.onMessage((m) => {
      r.emitted.set(m.msgId, (r.emitted.get(m.msgId) ?? 0) + 1);
      if (m.sessionId === this.#sessionId) r.seqs.set(m.msgId, m.seqId);
    });
  }

  /** How many of `acked` each client has had reported by `onMessage`, in tracking order. */
  missing(acked: readonly AckedMessage[]): number[] {
    return [...this.#clients.values()].map((r) => acked.filter((a) => !r.emitted.has(a.msgId)).length);
  }

  /** What each client got wrong (empty lists when nothing), plus its duplicate counts. */
  findings(acked: readonly AckedMessage[]): ClientFindings[] {
    return [...this.#clients].map(([client, r]) => {
      const notExactlyOnce: Record<string, number> = {};
      for (const a of acked) {
        const n = r.emitted.get(a.msgId) ?? 0;
        if (n !== 1) notExactlyOnce[a.msgId.toString()] = n;
      }
      for (const [id, n] of r.emitted) if (n !== 1) notExactlyOnce[id.toString()] = n;
      let duplicatesBeforeDedup = 0;
      for (const n of r.raw.values()) duplicatesBeforeDedup += n - 1;
      const seqs = new Set(r.seqs.values());
      const max = [...seqs].reduce((m, s) => (s > m ? s : m), 0n);
      const seqGaps: string[] = [];
      for (let s = 1n; s <= max; s++) if (!seqs.has(s)) seqGaps.push(s.toString());
      return {
        username: client.username,
        neverReceived: acked.filter((a) => !r.raw.has(a.msgId)).map((a) => a.msgId.toString()),
        notExactlyOnce,
        emittedNotReceived: [...r.emitted.keys()].filter((id) => !r.raw.has(id)).map(String),
        duplicatesBeforeDedup,
        duplicatesDropped: client.stats().duplicatesDropped,
        seqGaps,
      };
    });
  }
}

/** What the server's rows say about one session's messages. */
export interface ServerFindings {
  /** Number of messages in the session (system message included). */
  readonly messages: number;
  /** Seq ids missing from 1..max(seq_id), or duplicated. */
  readonly seqProblems: string[];
  /** Acked msg_ids with no message row. */
  readonly ackedMissing: string[];
  /** Acked contents stored more than once (a resend committed twice under another id). */
  readonly contentTwice: string[];
  /** Per member: session messages absent from their inbox. */
  readonly inboxMissing: Record<string, number>;
  /** (owner, msg_id) pairs present more than once, counted without relying on any unique key. */
  readonly inboxDuplicates: Array<{ owner: string; msgId: string; n: number }>;
  /** Outbox rows not yet published. */
  readonly outboxLeft: number;
}

/** Reads a session's messages, every member's inbox rows and the outbox of a cluster's database. */
export async function auditServer(cluster: TestCluster, sessionId: string, members: readonly string[], acked: readonly AckedMessage[]): Promise<ServerFindings> {
  const rows = await cluster.sql<{ id: string; seq_id: string; content: string }>("select id, seq_id, content from messages where session_id = $1 order by seq_id", [sessionId]);
  const seqs = rows.map((r) => BigInt(r.seq_id));
  const seqProblems: string[] = [];
  for (const [i, s] of seqs.entries()) if (s !== BigInt(i + 1)) seqProblems.push(`position ${i + 1} has seq ${s}`);
  const ids = new Set(rows.map((r) => r.id));
  const byContent = new Map<string, number>();
  for (const r of rows) byContent.set(r.content, (byContent.get(r.content) ?? 0) + 1);
  const inbox = await cluster.sql<{ owner: string; msg_id: string; n: string }>(
    "select owner, msg_id, count(*) as n from inbox where session_id = $1 group by owner, msg_id",
    [sessionId],
  );
  const inboxMissing: Record<string, number> = {};
  for (const m of members) {
    const have = new Set(inbox.filter((r) => r.owner === m).map((r) => r.msg_id));
    const missing = rows.filter((r) => !have.has(r.id)).length;
    if (missing > 0) inboxMissing[m] = missing;
  }
  const outbox = await cluster.sql<{ n: string }>("select count(*) as n from outbox where published_at is null");
  return {
    messages: rows.length,
    seqProblems,
    ackedMissing: acked.filter((a) => !ids.has(a.msgId.toString())).map((a) => a.msgId.toString()),
    contentTwice: acked.filter((a) => (byContent.get(a.content) ?? 0) > 1).map((a) => a.content),
    inboxMissing,
    inboxDuplicates: inbox.filter((r) => Number(r.n) > 1).map((r) => ({ owner: r.owner, msgId: r.msg_id, n: Number(r.n) })),
    outboxLeft: Number(outbox[0]!.n),
  };
}
