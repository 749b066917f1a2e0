import type { Logger } from "../../observability/log.js";
import { EtcdRegistry } from "./etcd.js";
import { MemoryRegistry, type MemoryRegistryHub } from "./memory.js";
import type { Registry } from "./types.js";

export type { Registration, Registry, RegistryEntry, RegistryWatch, ServiceKind } from "./types.js";
export { EtcdRegistry, type EtcdRegistryOptions } from "./etcd.js";
export { MemoryRegistry, MemoryRegistryHub, type MemoryRegistryOptions } from "./memory.js";

/** Default key prefix: a logic instance `abc` lives at `/resonance/services/logic/abc`. */
export const DEFAULT_REGISTRY_PREFIX = "/resonance/services/";
/** Default lease TTL: a crashed instance disappears from the registry within this many seconds. */
export const DEFAULT_LEASE_TTL_SEC = 10;

export interface RegistryOptions {
  /** etcd endpoints (`http://host:2379`); empty selects the in-memory registry. */
  readonly endpoints: readonly string[];
  /** Instance name, for logs. */
  readonly name: string;
  /** Lease TTL in whole seconds, at least 1 (default {@link DEFAULT_LEASE_TTL_SEC}); etcd only. */
  readonly leaseTtlSec?: number | undefined;
  readonly log: Logger;
  /** Key prefix (default {@link DEFAULT_REGISTRY_PREFIX}); tests use a unique one per run. */
  readonly prefix?: string | undefined;
  /**
   * In-memory registry only: the store shared with other in-memory registries of this process.
   * Omitted → a private store (one registry serves every service of an `all` process).
   */
  readonly hub?: MemoryRegistryHub | undefined;
}

/**
 * Picks the registry: etcd when `endpoints` is non-empty, else in memory. Does no I/O: `start()`
 * connects (and rejects clearly if etcd is unreachable), `close()` is idempotent.
 */
export function createRegistry(opts: RegistryOptions): Registry {
  const prefix = opts.prefix ?? DEFAULT_REGISTRY_PREFIX;
  if (opts.endpoints.length === 0) return new MemoryRegistry({ log: opts.log, prefix, hub: opts.hub });
  const leaseTtlSec = opts.leaseTtlSec ?? DEFAULT_LEASE_TTL_SEC;
  if (!Number.isInteger(leaseTtlSec) || leaseTtlSec < 1) throw new RangeError(`registry: leaseTtlSec must be an integer >= 1, got ${leaseTtlSec}`);
  return new EtcdRegistry({ endpoints: opts.endpoints, name: opts.name, leaseTtlSec, log: opts.log, prefix });
}
