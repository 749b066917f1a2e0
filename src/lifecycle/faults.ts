import type { Logger } from "../observability/log.js";

/**
 * Fault injection for tests (RESONANCE_FAULTS, off by default): a named point waits the given
 * milliseconds, or forever for "hang". Names: `phase.<phase-name>` (before a shutdown phase),
 * `after.<phase-name>` (after it, before the next), `start.<component>` (before the app opens
 * health, registry, storage, routes, queue, logic, task or gateway), `start.failed` (after a
 * failed start closed what it had opened), `logic.<Method>` (Login, Register, SendMessage, SendMessages),
 * `task.before-ack`; `process.unhandled-rejection` and `process.uncaught-exception` are read by
 * the app. Every point logs "fault injected" with its name when reached, so a test can wait for it.
 */
export class Faults {
  readonly #faults: ReadonlyMap<string, number | "hang">;
  readonly #log: Logger;

  constructor(faults: ReadonlyMap<string, number | "hang">, log: Logger) {
    this.#faults = faults;
    this.#log = log;
  }

  /** Resolves after the configured delay for `name` (at once when none is set); never rejects. */
  async at(name: string): Promise<void> {
    const f = this.#faults.get(name);
    if (f === undefined) return;
    // Tests wait for this line to know the faulty point was reached.
    this.#log.info({ fault: name, delay: f }, "fault injected");
    if (f === "hang") return new Promise<void>(() => {});
    await new Promise((r) => setTimeout(r, f));
  }
}
