import type { Etcd3, IKeyValue, Lease, Watcher } from "etcd3";
import type { Logger } from "../../observability/log.js";
import { sortEntries } from "./memory.js";
import type { Registration, Registry, RegistryEntry, RegistryWatch, ServiceKind } from "./types.js";

export interface EtcdRegistryOptions {
  readonly endpoints: readonly string[];
  /** Instance name, for logs. */
  readonly name: string;
  /** Lease TTL: a registration whose process died disappears after this long. */
  readonly leaseTtlSec: number;
  readonly log: Logger;
  /** Key prefix; an entry lives at `${prefix}${service}/${id}`. */
  readonly prefix: string;
}

/** `start()` gives up on an unreachable etcd after this long. */
const START_TIMEOUT_MS = 3_000;
/** Deadline of every unary etcd call (streams — keepalive, watch — have none). */
const CALL_TIMEOUT_MS = 5_000;
/** Delay before a failed watch is re-established. */
const WATCH_RETRY_MS = 1_000;

/**
 * The registry on etcd. Each registration owns a lease (kept alive by the client) and one key
 * `${prefix}${service}/${id}` holding the JSON entry; `setDraining()` rewrites it on the same lease,
 * `deregister()` revokes the lease so the key is deleted at once. A watch loads the service's
 * prefix and then follows it from the next revision, so no change between the two is missed.
 *
 * Lease loss (etcd unreachable for longer than the TTL, or etcd says the lease is gone): the
 * registration tries **once** to grant a new lease and re-put its entry; if that fails, `lost`
 * resolves and the owner is expected to shut down. A later loss gets its own single attempt.
 */
export class EtcdRegistry implements Registry {
  readonly kind = "etcd" as const;
  readonly lost: Promise<Error>;
  readonly #opts: EtcdRegistryOptions;
  readonly #log: Logger;
  readonly #registrations = new Set<EtcdRegistration>();
  readonly #watches = new Set<EtcdWatch>();
  #resolveLost!: (err: Error) => void;
  #isLost = false;
  #client: Etcd3 | undefined;
  #starting: Promise<void> | undefined;
  #closing: Promise<void> | undefined;

  /** Does no I/O: the client is created and checked in `start()`. */
  constructor(opts: EtcdRegistryOptions) {
    if (opts.endpoints.length === 0) throw new Error("registry: etcd needs at least one endpoint");
    this.#opts = opts;
    this.#log = opts.log;
    this.lost = new Promise((resolve) => {
      this.#resolveLost = resolve;
    });
  }

  /** Connects and checks etcd answers within a few seconds; rejects clearly if not. Idempotent. */
  start(): Promise<void> {
    this.#starting ??= this.#start();
    return this.#starting;
  }

  async #start(): Promise<void> {
    if (this.#closing) throw new Error("registry: start() after close()");
    const endpoints = this.#opts.endpoints.join(",");
    // Loaded here, not at import: a process without etcd never pays for the client (~0.3 s, 25 MiB).
    const { Etcd3 } = await import("etcd3");
    const client = new Etcd3({
      hosts: [...this.#opts.endpoints],
      dialTimeout: START_TIMEOUT_MS,
      defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + CALL_TIMEOUT_MS }),
    });
    try {
      await withTimeout(client.maintenance.status({ deadline: Date.now() + START_TIMEOUT_MS }), START_TIMEOUT_MS);
    } catch (err) {
      client.close();
      throw new Error(`registry: cannot reach etcd at ${endpoints}: ${errorMessage(err)}`, { cause: err });
    }
    this.#client = client;
    this.#log.info({ endpoints, prefix: this.#opts.prefix }, "registry connected to etcd");
  }

  /** Puts the entry on a new lease; resolves once etcd has it. Rejects if etcd refuses or is unreachable. */
  async register(entry: RegistryEntry): Promise<Registration> {
    const client = this.#requireClient();
    const reg = new EtcdRegistration(client, this.#keyOf(entry.service, entry.id), entry, {
      ttlSec: this.#opts.leaseTtlSec,
      log: this.#log,
      onGone: (r) => this.#registrations.delete(r),
      onLost: (err) => this.#declareLost(err),
    });
    await reg.open();
    this.#registrations.add(reg);
    return reg;
  }

  /** Loads the service's entries, then follows changes. Resolves after the initial list (which is not passed to `onChange`). */
  async watch(service: ServiceKind, onChange?: (entries: RegistryEntry[]) => void): Promise<RegistryWatch> {
    const client = this.#requireClient();
    const w = new EtcdWatch(client, `${this.#opts.prefix}${service}/`, this.#log, onChange, (x) => this.#watches.delete(x));
    await w.open();
    this.#watches.add(w);
    return w;
  }

  /** Closes watches, revokes the remaining registrations' leases, closes the client. Idempotent; never rejects. */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    await this.#starting?.catch(() => undefined);
    await Promise.all([...this.#watches].map((w) => w.close()));
    await Promise.all([...this.#registrations].map((r) => r.deregister()));
    this.#client?.close();
    this.#client = undefined;
  }

  #declareLost(err: Error): void {
    if (this.#isLost || this.#closing) return;
    this.#isLost = true;
    this.#log.error({ err: err.message }, "registry lost");
    this.#resolveLost(err);
  }

  #requireClient(): Etcd3 {
    if (this.#closing) throw new Error("registry: closed");
    if (!this.#client) throw new Error("registry: not started (call start() first)");
    return this.#client;
  }

  #keyOf(service: ServiceKind, id: string): string {
    return `${this.#opts.prefix}${service}/${id}`;
  }
}

interface RegistrationHooks {
  readonly ttlSec: number;
  readonly log: Logger;
  readonly onGone: (reg: EtcdRegistration) => void;
  readonly onLost: (err: Error) => void;
}

/** One entry on its own lease. */
class EtcdRegistration implements Registration {
  readonly #client: Etcd3;
  readonly #key: string;
  readonly #hooks: RegistrationHooks;
  #entry: RegistryEntry;
  /** The lease currently holding the key; undefined before open, while re-granting, and after deregister. */
  #lease: Lease | undefined;
  #regranting: Promise<void> | undefined;
  #deregistering: Promise<void> | undefined;

  constructor(client: Etcd3, key: string, entry: RegistryEntry, hooks: RegistrationHooks) {
    this.#client = client;
    this.#key = key;
    this.#entry = entry;
    this.#hooks = hooks;
  }

  async open(): Promise<void> {
    this.#lease = await this.#grantAndPut();
  }

  /** Rewrites the entry with state "draining" on the same lease. No-op after deregister; rejects if etcd fails. */
  async setDraining(): Promise<void> {
    if (this.#deregistering) return;
    this.#entry = { ...this.#entry, state: "draining" };
    // A re-grant in progress puts the current entry itself once it has a lease; wait for it.
    await this.#regranting;
    if (this.#lease && !this.#deregistering) await this.#lease.put(this.#key).value(JSON.stringify(this.#entry));
  }

  /**
   * Revokes the lease, which deletes the key at once. Idempotent; never rejects: if etcd cannot
   * be reached the keepalive has stopped anyway and the key expires within the lease TTL.
   */
  deregister(): Promise<void> {
    this.#deregistering ??= this.#deregister();
    return this.#deregistering;
  }

  async #deregister(): Promise<void> {
    this.#hooks.onGone(this);
    await this.#regranting;
    const lease = this.#lease;
    this.#lease = undefined;
    if (!lease) return;
    try {
      await lease.revoke();
    } catch (err) {
      this.#hooks.log.warn({ key: this.#key, err: errorMessage(err) }, "lease revoke failed; the entry expires with its ttl");
    }
  }

  async #grantAndPut(): Promise<Lease> {
    const lease = this.#client.lease(this.#hooks.ttlSec);
    lease.on("lost", (err) => this.#onLost(lease, err));
    try {
      await lease.grant();
      await lease.put(this.#key).value(JSON.stringify(this.#entry));
      return lease;
    } catch (err) {
      await lease.revoke().catch(() => undefined);
      throw new Error(`registry: cannot register ${this.#key}: ${errorMessage(err)}`, { cause: err });
    }
  }

  /** One attempt to get a new lease and re-put the entry; else the registry is lost. */
  #onLost(lease: Lease, err: Error): void {
    if (lease !== this.#lease || this.#deregistering) return; // a lease we already gave up, or a failed first grant
    this.#lease = undefined;
    this.#hooks.log.warn({ key: this.#key, err: err.message }, "registry lease lost; trying to re-register once");
    this.#regranting = this.#grantAndPut().then(
      (fresh) => {
        this.#regranting = undefined;
        if (this.#deregistering) {
          void fresh.revoke().catch(() => undefined);
          return;
        }
        this.#lease = fresh;
        this.#hooks.log.info({ key: this.#key }, "re-registered on a new lease");
      },
      (regrantErr: unknown) => {
        this.#regranting = undefined;
        if (this.#deregistering) return;
        this.#hooks.onLost(
          new Error(`registry: lease for ${this.#key} lost (${err.message}) and re-registering failed: ${errorMessage(regrantErr)}`, {
            cause: regrantErr,
          }),
        );
      },
    );
  }
}

/** A service's entries kept up to date by an etcd prefix watch. */
class EtcdWatch implements RegistryWatch {
  readonly #client: Etcd3;
  readonly #prefix: string;
  readonly #log: Logger;
  readonly #onChange: ((entries: RegistryEntry[]) => void) | undefined;
  readonly #onClosed: (w: EtcdWatch) => void;
  #entries = new Map<string, RegistryEntry>();
  #watcher: Watcher | undefined;
  #retry: NodeJS.Timeout | undefined;
  #closed = false;

  constructor(
    client: Etcd3,
    prefix: string,
    log: Logger,
    onChange: ((entries: RegistryEntry[]) => void) | undefined,
    onClosed: (w: EtcdWatch) => void,
  ) {
    this.#client = client;
    this.#prefix = prefix;
    this.#log = log.child({ watch: prefix });
    this.#onChange = onChange;
    this.#onClosed = onClosed;
  }

  /** Initial load + watch; rejects if etcd fails. */
  open(): Promise<void> {
    return this.#sync(false);
  }

  entries(): RegistryEntry[] {
    return sortEntries(this.#entries.values());
  }

  /** Cancels the etcd watcher. Idempotent; never rejects. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#retry);
    this.#onClosed(this);
    const watcher = this.#watcher;
    this.#watcher = undefined;
    await watcher?.cancel().catch(() => undefined);
  }

  /** Reads the prefix, then watches from the revision after the read. */
  async #sync(notify: boolean): Promise<void> {
    const res = await this.#client.getAll().prefix(this.#prefix).exec();
    const entries = new Map<string, RegistryEntry>();
    for (const kv of res.kvs) {
      const entry = this.#parse(kv);
      if (entry) entries.set(kv.key.toString(), entry);
    }
    if (this.#closed) return;
    const watcher = this.#client
      .watch()
      .prefix(this.#prefix)
      .startRevision(String(BigInt(res.header.revision) + 1n))
      .watcher();
    // Listeners go on before the stream can deliver anything.
    watcher.on("data", (data) => this.#apply(watcher, data.events));
    watcher.on("disconnected", (err) => this.#log.warn({ err: err.message }, "registry watch disconnected; resuming"));
    this.#entries = entries;
    this.#watcher = watcher;
    try {
      await new Promise<void>((resolve, reject) => {
        const onError = (err: Error): void => {
          watcher.off("connected", onConnected);
          reject(err);
        };
        const onConnected = (): void => {
          watcher.off("error", onError);
          watcher.on("error", (err) => this.#onError(watcher, err));
          resolve();
        };
        watcher.once("error", onError);
        watcher.once("connected", onConnected);
      });
    } catch (err) {
      this.#watcher = undefined;
      watcher.on("error", () => undefined); // an unheard 'error' event would throw
      await watcher.cancel().catch(() => undefined);
      throw err;
    }
    if (this.#closed) await watcher.cancel().catch(() => undefined);
    else if (notify) this.#notify();
  }

  #apply(watcher: Watcher, events: ReadonlyArray<{ type: string; kv: IKeyValue }>): void {
    if (watcher !== this.#watcher || this.#closed) return;
    for (const ev of events) {
      const key = ev.kv.key.toString();
      if (ev.type === "Delete") this.#entries.delete(key);
      else {
        const entry = this.#parse(ev.kv);
        if (entry) this.#entries.set(key, entry);
        else this.#entries.delete(key);
      }
    }
    if (events.length > 0) this.#notify();
  }

  /** etcd cancelled the watch (e.g. the revision was compacted): reload and watch again. */
  #onError(watcher: Watcher, err: Error): void {
    if (watcher !== this.#watcher || this.#closed) return;
    this.#log.warn({ err: err.message }, "registry watch failed; reloading");
    this.#watcher = undefined;
    void watcher.cancel().catch(() => undefined);
    const again = (): void => {
      this.#retry = undefined;
      if (this.#closed) return;
      this.#sync(true).catch((e: unknown) => {
        this.#log.warn({ err: errorMessage(e) }, "registry watch reload failed; retrying");
        if (!this.#closed) this.#retry = setTimeout(again, WATCH_RETRY_MS);
      });
    };
    again();
  }

  #notify(): void {
    if (!this.#onChange) return;
    try {
      this.#onChange(this.entries());
    } catch (err) {
      this.#log.error({ err: errorMessage(err) }, "registry watch listener threw");
    }
  }

  #parse(kv: IKeyValue): RegistryEntry | undefined {
    const entry = parseEntry(kv.value.toString());
    if (!entry) this.#log.warn({ key: kv.key.toString() }, "ignoring malformed registry entry");
    return entry;
  }
}

/** Parses a stored entry; undefined if it is not one. */
export function parseEntry(json: string): RegistryEntry | undefined {
  try {
    const v = JSON.parse(json) as Partial<Record<keyof RegistryEntry, unknown>>;
    const serviceOk = v.service === "gateway" || v.service === "logic" || v.service === "task";
    const stateOk = v.state === "serving" || v.state === "draining";
    if (!serviceOk || !stateOk || typeof v.id !== "string" || typeof v.address !== "string") return undefined;
    return Object.freeze({ service: v.service as ServiceKind, id: v.id, address: v.address, state: v.state as RegistryEntry["state"] });
  } catch {
    return undefined;
  }
}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
