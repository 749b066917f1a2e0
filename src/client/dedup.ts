/** What identifies a message for deduplication. */
export interface MessageKey {
  readonly msgId: bigint;
  readonly seqId: bigint;
  readonly sessionId: string;
}

export interface SeenMessagesOptions {
  /** Disjoint seq ranges kept per session before the two lowest are merged. Default 1024. */
  readonly maxRangesPerSession?: number;
  /** msg_ids remembered (LRU) for messages without a seq_id. Default 100 000. */
  readonly maxIds?: number;
}

/**
 * Remembers which messages were already delivered, in memory bounded by the number of gaps,
 * not by the number of messages.
 *
 * A message is `(session_id, seq_id)` — unique on the server exactly like `msg_id`, and seq ids
 * are gap-free per session, so what a client has seen of a session collapses into a few
 * inclusive ranges (usually one: `[first seen, newest]`). Messages arriving out of order
 * (a push before the delta that precedes it) just add a range that later merges. When a
 * session has more than `maxRangesPerSession` ranges, the two lowest are merged: a message
 * that old still missing afterwards would be taken for a duplicate, a deliberate trade for
 * bounded memory. Messages with `seq_id` 0 fall back to an LRU of `msg_id`s.
 */
export class SeenMessages {
  readonly #maxRanges: number;
  readonly #maxIds: number;
  /** Per session: sorted, disjoint, non-adjacent inclusive ranges `[lo, hi]`. */
  readonly #ranges = new Map<string, Array<[bigint, bigint]>>();
  /** Insertion-ordered, so the first entry is the least recently added. */
  readonly #ids = new Set<bigint>();

  constructor(opts: SeenMessagesOptions = {}) {
    this.#maxRanges = Math.max(2, opts.maxRangesPerSession ?? 1024);
    this.#maxIds = Math.max(1, opts.maxIds ?? 100_000);
  }

  /** Records the message; true if it had not been seen before (deliver it), false for a duplicate. */
  add(key: MessageKey): boolean {
    if (key.seqId > 0n) return this.#addSeq(key.sessionId, key.seqId);
    if (key.msgId === 0n) return true; // Nothing to recognise it by: deliver rather than drop.
    if (this.#ids.has(key.msgId)) return false;
    this.#ids.add(key.msgId);
    if (this.#ids.size > this.#maxIds) this.#ids.delete(this.#ids.values().next().value as bigint);
    return true;
  }

  /** Whether the message was seen, without recording it. */
  has(key: MessageKey): boolean {
    if (key.seqId > 0n) {
      const ranges = this.#ranges.get(key.sessionId);
      if (!ranges) return false;
      const i = lastAtOrBelow(ranges, key.seqId);
      return i >= 0 && ranges[i]![1] >= key.seqId;
    }
    return this.#ids.has(key.msgId);
  }

  /** Number of ranges held for a session (for tests and diagnostics). */
  rangeCount(sessionId: string): number {
    return this.#ranges.get(sessionId)?.length ?? 0;
  }

  #addSeq(sessionId: string, seq: bigint): boolean {
    const ranges = this.#ranges.get(sessionId);
    if (!ranges) {
      this.#ranges.set(sessionId, [[seq, seq]]);
      return true;
    }
    const i = lastAtOrBelow(ranges, seq);
    const before = i >= 0 ? ranges[i] : undefined;
    if (before && before[1] >= seq) return false;
    const after = ranges[i + 1];
    const joinsBefore = before !== undefined && before[1] + 1n === seq;
    const joinsAfter = after !== undefined && after[0] - 1n === seq;
    if (joinsBefore && joinsAfter) {
      before[1] = after[1];
      ranges.splice(i + 1, 1);
    } else if (joinsBefore) {
      before[1] = seq;
    } else if (joinsAfter) {
      after[0] = seq;
    } else {
      ranges.splice(i + 1, 0, [seq, seq]);
      if (ranges.length > this.#maxRanges) {
        ranges[0]![1] = ranges[1]![1];
        ranges.splice(1, 1);
      }
    }
    return true;
  }
}

/** Index of the last range whose `lo` is ≤ seq, or -1. */
function lastAtOrBelow(ranges: ReadonlyArray<readonly [bigint, bigint]>, seq: bigint): number {
  let lo = 0;
  let hi = ranges.length - 1;
  let found = -1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (ranges[mid]![0] <= seq) {
      found = mid;
      lo = mid + 1;
    } else {
      hi = mid - 1;
    }
  }
  return found;
}
