import { ClientCore } from "./client-core.js";
import { nodePlatform } from "./platform-node.js";
import type { ResonanceClientOptions } from "./types.js";

/** The client SDK on Node (`ws`, connect-node); see ClientCore for the contract. Does no I/O. */
export class ResonanceClient extends ClientCore {
  constructor(opts: ResonanceClientOptions) {
    super(opts, nodePlatform);
  }
}
