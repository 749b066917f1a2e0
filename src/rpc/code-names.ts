import { Code } from "@connectrpc/connect";

/**
 * Connect code names, snake_case, as they travel in `Ack.error_code` and Connect error JSON
 * ("unavailable", "permission_denied", ...). Derived from the `Code` enum so the two never drift.
 */
const CODE_NAMES: ReadonlyMap<Code, string> = new Map(
  Object.entries(Code)
    .filter((e): e is [string, Code] => typeof e[1] === "number")
    .map(([name, code]) => [code, name.replace(/([a-z])([A-Z])/g, "$1_$2").toLowerCase()]),
);

/** The snake_case name of a Connect code (`Code.ResourceExhausted` → "resource_exhausted"). */
export function codeName(code: Code): string {
  return CODE_NAMES.get(code) ?? "unknown";
}
