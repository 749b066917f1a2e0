import type { Logger } from "../../observability/log.js";
import type { Registration, Registry, RegistryEntry, RegistryWatch, ServiceKind } from "./types.js";

/**
 * The shared store behind in-memory registries: what etcd is for the etcd registry. Registries
 * given the same hub see each other's entries (e.g. several services in one process, or tests);
 * a registry created without one gets a private hub. Keys are `${prefix}${service}/${id}`, so
 * registries with different prefixes on one hub stay apart.
 */
export class MemoryRegistryHub {
  readonly #entries = new Map<string, { entry: RegistryEntry; owner: object }>();
  readonly #listeners = new Set<{ readonly prefix: string; readonly fn: () => void }>();

  /** Stores `entry` at `key` on behalf of `owner` (a later put by anyone replaces it, as in etcd). */
  put(key: string, entry: RegistryEntry, owner: object): void {
    this.#entries.set(key, { entry: Object.freeze({ ...entry }), owner });
    this.#changed(key);
  }

  /** Rewrites `key` only if `owner` still holds it; returns whether it did. */
  update(key: string, entry: RegistryEntry, owner: object): boolean {
    if (this.#entries.get(key)?.owner !== owner) return false;
    this.put(key, entry, owner);
    return true;
  }

  /** Deletes `key` only if `owner` still holds it (like revoking a lease that no longer owns the key). */
  delete(key: string, owner: object): void {
    if (this.#entries.get(key)?.owner !== owner) return;
    this.#entries.delete(key);
    this.#changed(key);
  }

  /** Entries whose key starts with `prefix`, sorted by id. */
  list(prefix: string): RegistryEntry[] {
    const out: RegistryEntry[] = [];
    for (const [key, { entry }] of this.#entries) if (key.startsWith(prefix)) out.push(entry);
    return sortEntries(out);
  }

  /** Calls `fn` (synchronously) after every change under `prefix`; returns the unsubscribe function. */
  subscribe(prefix: string, fn: () => void): () => void {
    const listener = { prefix, fn };
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  #changed(key: string): void {
    for (const l of [...this.#listeners]) if (key.startsWith(l.prefix)) l.fn();
  }
}

export interface MemoryRegistryOptions {
  readonly log: Logger;
  /** Key prefix, as for etcd. */
  readonly prefix: string;
  /** Store shared with other registries; a private one when omitted. */
  readonly hub?: MemoryRegistryHub | undefined;
}

/**
 * The registry in process memory, for standalone mode: the same semantics as the etcd registry
 * (register, setDraining on the same entry, deregister removes at once, watches see every
 * change with the full list) without leases: the entries live as long as the process or until
 * deregistered. `lost` never resolves. Watch listeners are called synchronously after a change.
 */
export class MemoryRegistry implements Registry {
  readonly kind = "memory" as const;
  /** Nothing can be lost in memory: never resolves. */
  readonly lost: Promise<Error> = new Promise<Error>(() => undefined);
  readonly #log: Logger;
  readonly #prefix: string;
  readonly #hub: MemoryRegistryHub;
  readonly #registrations = new Set<Registration>();
  readonly #watches = new Set<RegistryWatch>();
  #started = false;
  #closing: Promise<void> | undefined;

  constructor(opts: MemoryRegistryOptions) {
    this.#log = opts.log;
    this.#prefix = opts.prefix;
    this.#hub = opts.hub ?? new MemoryRegistryHub();
  }

  /** Nothing to connect; rejects only after close(). Idempotent. */
  async start(): Promise<void> {
    if (this.#closing) throw new Error("registry: start() after close()");
    this.#started = true;
  }

  /** Stores the entry; watchers of its service see it before this resolves. */
  async register(entry: RegistryEntry): Promise<Registration> {
    this.#requireOpen();
    const key = `${this.#prefix}${entry.service}/${entry.id}`;
    const hub = this.#hub;
    const registrations = this.#registrations;
    let current: RegistryEntry = entry;
    let gone = false;
    const registration: Registration = {
      async setDraining() {
        if (gone) return;
        current = { ...current, state: "draining" };
        hub.update(key, current, registration);
      },
      async deregister() {
        if (gone) return;
        gone = true;
        registrations.delete(registration);
        hub.delete(key, registration);
      },
    };
    hub.put(key, entry, registration);
    registrations.add(registration);
    this.#log.debug({ key }, "registered (memory)");
    return registration;
  }

  /** Resolves at once with the current entries; `onChange` gets the full list after each later change. */
  async watch(service: ServiceKind, onChange?: (entries: RegistryEntry[]) => void): Promise<RegistryWatch> {
    this.#requireOpen();
    const prefix = `${this.#prefix}${service}/`;
    const hub = this.#hub;
    const log = this.#log;
    const watches = this.#watches;
    let entries = hub.list(prefix);
    const unsubscribe = hub.subscribe(prefix, () => {
      entries = hub.list(prefix);
      if (!onChange) return;
      try {
        onChange([...entries]);
      } catch (err) {
        log.error({ err: err instanceof Error ? err.message : String(err) }, "registry watch listener threw");
      }
    });
    const watch: RegistryWatch = {
      entries: () => [...entries],
      async close() {
        unsubscribe();
        watches.delete(watch);
      },
    };
    watches.add(watch);
    return watch;
  }

  /** Closes watches and removes this registry's remaining entries. Idempotent; never rejects. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      await Promise.all([...this.#watches].map((w) => w.close()));
      await Promise.all([...this.#registrations].map((r) => r.deregister()));
    })();
    return this.#closing;
  }

  #requireOpen(): void {
    if (this.#closing) throw new Error("registry: closed");
    if (!this.#started) throw new Error("registry: not started (call start() first)");
  }
}

/** Entries sorted by id, so every reader sees the same order. */
export function sortEntries(entries: Iterable<RegistryEntry>): RegistryEntry[] {
  return [...entries].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
}
