import { Code, ConnectError } from "@connectrpc/connect";

/**
 * Checks of client-supplied values, shared by every logic method (and meant for the chat path
 * too). Each check throws `invalid_argument` with a short message that names the field and never
 * echoes the value, so an error is always small whatever the input; each returns the value to
 * use. Checks run before any database work.
 */

/** C0 controls (NUL included), DEL and C1 controls: never valid in a name, an id or a query. */
// eslint-disable-next-line no-control-regex -- matching control characters is the point
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;
/** The same, except tab, line feed and carriage return, which message text may hold. */
// eslint-disable-next-line no-control-regex -- matching control characters is the point
const CONTROL_IN_TEXT = /[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f]/;
/**
 * Bidirectional formatting characters (marks, embeddings, overrides, isolates): in a name they
 * can make one user's name display as another's.
 */
const BIDI = /[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/;
/** Half of a surrogate pair on its own: not a character; it cannot be stored or sent as UTF-8. */
const LONE_SURROGATE = /\p{Cs}/u;

const USERNAME = /^[A-Za-z0-9_.-]{2,32}$/;
/** Session ids are `0`, `single:<a>:<b>` and `group:<n>`; anything else is simply not found. */
const SESSION_ID = /^[\x21-\x7e]{1,128}$/;
const MESSAGE_TYPE = /^[a-z][a-z0-9_.-]{0,31}$/;

/** Longest nickname and group name, in UTF-16 units. */
export const MAX_NAME_CHARS = 64;
/** Longest search query. */
export const MAX_QUERY_CHARS = 64;
/** Longest password (Register and Login alike, checked before any hashing). */
export const MAX_PASSWORD_CHARS = 256;
export const MIN_PASSWORD_CHARS = 6;

/** Throws `invalid_argument` with `message` (which must not contain unbounded input). */
export function invalid(message: string): never {
  throw new ConnectError(message, Code.InvalidArgument);
}

/** True when `value` is a username (2-32 letters, digits, `_`, `.`, `-`). */
export function isUsername(value: string): boolean {
  return USERNAME.test(value);
}

/** Throws unless `value` is a username (2-32 letters, digits, `_`, `.`, `-`); returns it. */
export function checkUsername(value: string, field = "username"): string {
  if (!USERNAME.test(value)) invalid(`${field}: 2-32 letters, digits, '_', '.' or '-'`);
  return value;
}

/** Throws unless `value` is 1-128 printable ASCII characters without spaces; returns it. */
export function checkSessionId(value: string, field = "session_id"): string {
  if (value.length === 0) invalid(`${field} is required`);
  if (!SESSION_ID.test(value)) invalid(`${field}: 1-128 printable ASCII characters`);
  return value;
}

/**
 * A display name (nickname, group name): trimmed; throws when it is longer than `max`, or holds
 * control or bidirectional formatting characters or a lone surrogate. Returns the trimmed value
 * (possibly empty: the caller picks the default).
 */
export function checkName(value: string, field: string, max = MAX_NAME_CHARS): string {
  const v = value.trim();
  if (v.length > max) invalid(`${field}: at most ${max} characters`);
  if (CONTROL.test(v) || LONE_SURROGATE.test(v)) invalid(`${field}: control characters are not allowed`);
  if (BIDI.test(v)) invalid(`${field}: bidirectional formatting characters are not allowed`);
  return v;
}

/** A search query: trimmed, at most {@link MAX_QUERY_CHARS}, no control characters. */
export function checkQuery(value: string, field = "query"): string {
  const v = value.trim();
  if (v.length > MAX_QUERY_CHARS) invalid(`${field}: at most ${MAX_QUERY_CHARS} characters`);
  if (CONTROL.test(v) || LONE_SURROGATE.test(v)) invalid(`${field}: control characters are not allowed`);
  return v;
}

/**
 * Message text: 1 to `max` characters; tab and line breaks allowed, other control characters
 * (NUL included) and lone surrogates refused. Returns it unchanged.
 */
export function checkContent(value: string, max: number, field = "content"): string {
  if (value.length === 0) invalid(`${field} is empty`);
  if (value.length > max) invalid(`${field}: at most ${max} characters`);
  if (CONTROL_IN_TEXT.test(value) || LONE_SURROGATE.test(value)) invalid(`${field}: control characters are not allowed`);
  return value;
}

/**
 * A chat message type: empty means `text`; otherwise a lowercase word (letters, digits, `_`,
 * `.`, `-`, at most 32). `system` is the server's own and refused. Returns the type to store.
 */
export function normalizeMessageType(value: string, field = "type"): string {
  if (value === "") return "text";
  if (!MESSAGE_TYPE.test(value)) invalid(`${field}: a lowercase word of at most 32 characters`);
  if (value === "system") invalid(`${field}: "system" is reserved`);
  return value;
}

/** Throws unless `value` is between {@link MIN_PASSWORD_CHARS} and {@link MAX_PASSWORD_CHARS} long. */
export function checkPassword(value: string, field = "password"): string {
  if (value.length < MIN_PASSWORD_CHARS || value.length > MAX_PASSWORD_CHARS) {
    invalid(`${field}: ${MIN_PASSWORD_CHARS}-${MAX_PASSWORD_CHARS} characters`);
  }
  return value;
}

/** Throws unless `value` is 0 or more. */
export function checkNotNegative(value: bigint, field: string): bigint {
  if (value < 0n) invalid(`${field} must not be negative`);
  return value;
}

/** A page size: 0 means `dflt`, over `max` is `max`, negative is refused. */
export function clampLimit(limit: bigint, dflt: number, max: number, field = "limit"): number {
  checkNotNegative(limit, field);
  if (limit === 0n) return dflt;
  return limit > BigInt(max) ? max : Number(limit);
}

/**
 * A list of names for a message, bounded: the first `shown` and how many more
 * (`a, b, c and 7 more`). Each name must already be bounded in length.
 */
export function listSome(names: readonly string[], shown = 5): string {
  const head = names.slice(0, shown).join(", ");
  return names.length > shown ? `${head} and ${names.length - shown} more` : head;
}
