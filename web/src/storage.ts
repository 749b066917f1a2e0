/*
 * What the page keeps in the browser: the signed-in session (token and profile, never the
 * password), the inbox cursor per user, and the colour theme. Signing out removes all of it
 * but the theme, which is the device's, not the user's.
 */

export interface SavedSession {
  readonly token: string;
  readonly user: { readonly username: string; readonly nickname: string };
}

const SESSION_KEY = "resonance.session";
const THEME_KEY = "resonance.theme";

/** The saved session, or undefined (none, or unreadable). */
export function loadSaved(): SavedSession | undefined {
  try {
    const v = JSON.parse(localStorage.getItem(SESSION_KEY) ?? "null") as SavedSession | null;
    return v && typeof v.token === "string" && typeof v.user?.username === "string" ? v : undefined;
  } catch {
    return undefined;
  }
}

export function saveSession(s: SavedSession): void {
  localStorage.setItem(SESSION_KEY, JSON.stringify(s));
}

/** Removes everything this page stored for the user (local and session storage, caches). */
export function clearLocal(): void {
  const theme = localStorage.getItem(THEME_KEY);
  localStorage.clear();
  sessionStorage.clear();
  if (theme) localStorage.setItem(THEME_KEY, theme);
}

export type Theme = "light" | "dark";

/** The theme chosen with the toggle, or undefined to follow the system (`prefers-color-scheme`). */
export function loadTheme(): Theme | undefined {
  const v = localStorage.getItem(THEME_KEY);
  return v === "light" || v === "dark" ? v : undefined;
}

export function saveTheme(t: Theme): void {
  localStorage.setItem(THEME_KEY, t);
}
