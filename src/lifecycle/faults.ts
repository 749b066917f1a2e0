import type { Logger } from "../observability/log.js";

/**
 * Fault injection for tests (RESONANCE_FAULTS, off by default): a named point waits the given
 * milliseconds, or forever for "hang". Names: `phase.<phase-name>`, `logic.<Method>` (Login,
 * Register, SendMessage), `task.before-ack`; `process.unhandled-rejection` is read by the app.
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
