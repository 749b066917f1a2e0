export type ServiceKind = "gateway" | "logic" | "task";

export interface RegistryEntry {
  readonly service: ServiceKind;
  readonly id: string;
  /** host:port of the gRPC endpoint (empty for task). */
  readonly address: string;
  /** "serving" or "draining" (no new work should be sent; existing streams keep flowing). */
  readonly state: "serving" | "draining";
}

export interface Registration {
  setDraining(): Promise<void>;
  /** Removes the entry at once (revokes the lease). Idempotent. */
  deregister(): Promise<void>;
}

export interface RegistryWatch {
  /** Current entries (kept up to date by the watch). */
  entries(): RegistryEntry[];
  close(): Promise<void>;
}

/** Service registry: etcd (leases + prefix watch) or in memory. */
export interface Registry {
  start(): Promise<void>;
  register(entry: RegistryEntry): Promise<Registration>;
  /** Watches one service kind; `onChange` gets the full list after every change. Resolves after the initial list. */
  watch(service: ServiceKind, onChange?: (entries: RegistryEntry[]) => void): Promise<RegistryWatch>;
  /** Resolves if the registry is lost for good (e.g. lease could not be kept); never rejects. */
  readonly lost: Promise<Error>;
  close(): Promise<void>;
}
