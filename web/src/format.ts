/** "14:05" in the reader's locale. */
export function timeOf(unixSeconds: number): string {
  return new Date(unixSeconds * 1000).toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
}

/** The calendar day of a timestamp, as a key ("2026-11-29" in local time). */
export function dayKey(unixSeconds: number): string {
  const d = new Date(unixSeconds * 1000);
  return `${d.getFullYear()}-${d.getMonth() + 1}-${d.getDate()}`;
}

/** "Today", "Yesterday", or the date ("Friday, 27 November 2026"). */
export function dayLabel(unixSeconds: number, now = Date.now()): string {
  const key = dayKey(unixSeconds);
  const today = Math.floor(now / 1000);
  if (key === dayKey(today)) return "Today";
  if (key === dayKey(today - 86_400)) return "Yesterday";
  return new Date(unixSeconds * 1000).toLocaleDateString(undefined, { weekday: "long", day: "numeric", month: "long", year: "numeric" });
}

/** A short time for the session list: "14:05" today, "Mon" this week, else "27/11/2026". */
export function shortWhen(unixSeconds: number, now = Date.now()): string {
  if (unixSeconds === 0) return "";
  const age = now / 1000 - unixSeconds;
  if (dayKey(unixSeconds) === dayKey(Math.floor(now / 1000))) return timeOf(unixSeconds);
  const d = new Date(unixSeconds * 1000);
  if (age < 6 * 86_400) return d.toLocaleDateString(undefined, { weekday: "short" });
  return d.toLocaleDateString();
}

/** Up to two initials for an avatar. */
export function initials(name: string): string {
  const parts = name.trim().split(/\s+/).filter(Boolean);
  const s = parts.length > 1 ? parts[0]![0]! + parts[1]![0]! : (parts[0] ?? "?").slice(0, 2);
  return s.toUpperCase();
}

/** A stable hue (0-359) for a name, so each chat's avatar keeps its colour. */
export function hueOf(name: string): number {
  let h = 0;
  for (let i = 0; i < name.length; i++) h = (h * 31 + name.charCodeAt(i)) >>> 0;
  return h % 360;
}
