/**
 * Takes the next call's items from the front of `queue`: in order, at most `maxCount` items and
 * `maxBytes` of their `bytes` — always at least one, however big. The caller sends them together.
 */
export function takeBatch<T extends { readonly bytes: number }>(queue: T[], maxCount: number, maxBytes: number): T[] {
  let bytes = 0;
  let n = 0;
  while (n < queue.length && n < maxCount) {
    const next = queue[n]!.bytes;
    if (n > 0 && bytes + next > maxBytes) break;
    bytes += next;
    n++;
  }
  return queue.splice(0, n);
}
