import type { Logger } from "../../observability/log.js";
import type { BatchHandler, BatchOptions, DeliveredEvent } from "./types.js";

/** A delivered event that knows whether it has been settled (acked, nak'd or dead-lettered). */
export interface SettleableEvent extends DeliveredEvent {
  settled(): boolean;
}

/** The batch settings after checking: both limits are positive integers. */
export interface BatchLimits {
  readonly maxBatch: number;
  readonly inFlight: number;
}

/** Checks `opts`; throws a RangeError naming the bad setting. */
export function batchLimits(opts: BatchOptions): BatchLimits {
  const inFlight = opts.inFlight ?? 1;
  if (!Number.isInteger(opts.maxBatch) || opts.maxBatch < 1) throw new RangeError(`queue: invalid maxBatch ${opts.maxBatch}`);
  if (!Number.isInteger(inFlight) || inFlight < 1) throw new RangeError(`queue: invalid inFlight ${inFlight}`);
  return { maxBatch: opts.maxBatch, inFlight };
}

/** The per-event handler of `consume()` as a batch handler (its batches hold one event). */
export function oneByOne(handler: (event: DeliveredEvent) => Promise<void>): BatchHandler {
  return (events) => handler(events[0]!);
}

/**
 * Runs `handler` on `events`, then naks each event it left unsettled, whether it threw or
 * returned: the events it did settle keep their fate, so one bad event never drags its batch
 * back. Never rejects.
 */
export async function runBatch(handler: BatchHandler, events: readonly SettleableEvent[], log: Logger): Promise<void> {
  let failure: unknown;
  try {
    await handler(events);
  } catch (err) {
    failure = err;
  }
  const left = events.filter((e) => !e.settled());
  if (left.length === 0) {
    if (failure !== undefined) log.warn({ err: failure, events: events.length }, "batch handler failed after settling its events");
    return;
  }
  const ids = left.slice(0, 10).map((e) => e.id);
  if (failure !== undefined) log.warn({ err: failure, naked: left.length, ids }, "batch handler failed; its unsettled events nak'd");
  else log.warn({ naked: left.length, ids }, "batch handler returned without settling every event; nak'd");
  for (const e of left) e.nak();
}
