/**
 * The route table: which gateways hold connections of which users (presence).
 * Entries expire unless refreshed, so a gateway that died leaves no route forever.
 */
export interface RouteTable {
  start(): Promise<void>;
  /** Marks users online on a gateway (and refreshes their expiry). */
  online(gatewayId: string, usernames: readonly string[]): Promise<void>;
  /** Removes the routes of users to a gateway. */
  offline(gatewayId: string, usernames: readonly string[]): Promise<void>;
  /** One round trip: every given user's gateways (users with none are absent from the map). */
  lookup(usernames: readonly string[]): Promise<Map<string, string[]>>;
  close(): Promise<void>;
}
