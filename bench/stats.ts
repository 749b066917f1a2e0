/**
 * Latency samples and percentiles for the load benchmark. Pure: no I/O, no clock.
 */

/** A growable list of float samples backed by a Float64Array (no per-sample allocation). */
export class Samples {
  #data: Float64Array;
  #length = 0;

  constructor(initialCapacity = 4096) {
    this.#data = new Float64Array(Math.max(16, initialCapacity));
  }

  get length(): number {
    return this.#length;
  }

  push(value: number): void {
    if (this.#length === this.#data.length) {
      const bigger = new Float64Array(this.#data.length * 2);
      bigger.set(this.#data);
      this.#data = bigger;
    }
    this.#data[this.#length++] = value;
  }

  /** A sorted copy of the samples (ascending). */
  sorted(): Float64Array {
    return this.#data.slice(0, this.#length).sort();
  }
}

/**
 * The nearest-rank percentile `p` (0 < p ≤ 100) of an ascending array: the smallest sample such
 * that at least p% of the samples are ≤ it. NaN for an empty array.
 */
export function percentile(sortedAsc: ArrayLike<number>, p: number): number {
  const n = sortedAsc.length;
  if (n === 0) return NaN;
  if (!(p > 0 && p <= 100)) throw new RangeError(`percentile: p must be in (0, 100], got ${p}`);
  // The epsilon keeps float noise (99.9 / 100 * 1000 = 999.0000000000001) from moving up a rank.
  const rank = Math.ceil((p * n) / 100 - 1e-9);
  return sortedAsc[Math.min(n, Math.max(1, rank)) - 1]!;
}

export interface LatencySummary {
  readonly count: number;
  readonly p50: number | null;
  readonly p99: number | null;
  readonly p999: number | null;
  readonly max: number | null;
}

const round3 = (x: number): number | null => (Number.isFinite(x) ? Math.round(x * 1000) / 1000 : null);

/** p50/p99/p99.9/max of the samples (milliseconds in, milliseconds out, rounded to µs); nulls when empty. */
export function summarize(samples: Samples): LatencySummary {
  const s = samples.sorted();
  return {
    count: s.length,
    p50: round3(percentile(s, 50)),
    p99: round3(percentile(s, 99)),
    p999: round3(percentile(s, 99.9)),
    max: round3(s.length ? s[s.length - 1]! : NaN),
  };
}
