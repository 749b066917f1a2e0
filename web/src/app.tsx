import { useEffect, useState } from "preact/hooks";
import { AuthScreen } from "./auth.js";
import { ConnectionBanner } from "./banner.js";
import { ChatPane } from "./chat.js";
import { JumpDialog, NewChatDialog } from "./dialogs.js";
import { SessionList } from "./sessions.js";
import { loadTheme, saveTheme, type Theme } from "./storage.js";
import { useStore } from "./use-store.js";

const systemDark = (): boolean => window.matchMedia("(prefers-color-scheme: dark)").matches;

/** The login screen, or the chat screens (list + chat side by side; two screens on a phone). */
export function App() {
  const [state] = useStore();
  return state.me ? <Main /> : <AuthScreen />;
}

function Main() {
  const [state, store] = useStore();
  const [dialog, setDialog] = useState<"new" | "jump" | undefined>(undefined);
  const [theme, setTheme] = useState<Theme | undefined>(loadTheme());
  const dark = theme ? theme === "dark" : systemDark();

  useEffect(() => {
    if (theme) document.documentElement.dataset.theme = theme;
  }, [theme]);

  // Global shortcuts: Ctrl/Cmd+K jumps to a chat, Alt+↑/↓ moves between chats.
  useEffect(() => {
    const onKey = (e: KeyboardEvent): void => {
      if ((e.ctrlKey || e.metaKey) && e.key.toLowerCase() === "k") {
        e.preventDefault();
        setDialog("jump");
      } else if (e.altKey && (e.key === "ArrowUp" || e.key === "ArrowDown") && !dialog) {
        e.preventDefault();
        const list = store.state.sessions;
        if (list.length === 0) return;
        const i = list.findIndex((s) => s.id === store.state.activeId);
        const next = i < 0 ? 0 : Math.min(list.length - 1, Math.max(0, i + (e.key === "ArrowUp" ? -1 : 1)));
        store.open(list[next]!.id);
      }
    };
    window.addEventListener("keydown", onKey);
    return () => window.removeEventListener("keydown", onKey);
  }, [store, dialog]);

  const me = state.me!;
  return (
    <div class={`shell${state.activeId ? " has-chat" : ""}`}>
      <ConnectionBanner />
      <div class="panes">
        <aside class="sidebar" aria-label="Your chats">
          <header class="side-head">
            <div class="me">
              <strong>{me.nickname}</strong>
              <span class="hint">@{me.username}</span>
            </div>
            <button
              type="button"
              class="icon-button"
              aria-label={dark ? "Switch to light mode" : "Switch to dark mode"}
              aria-pressed={dark}
              onClick={() => {
                const t: Theme = dark ? "light" : "dark";
                saveTheme(t);
                setTheme(t);
              }}
            >
              {dark ? "☀" : "☾"}
            </button>
            <button type="button" class="icon-button" aria-label="Sign out" title="Sign out" onClick={() => void store.logout()}>
              ⎋
            </button>
          </header>
          <div class="side-actions">
            <button type="button" class="primary wide" onClick={() => setDialog("new")}>
              New chat
            </button>
            <button type="button" class="ghost" aria-label="Jump to a chat (Ctrl+K)" title="Ctrl+K" onClick={() => setDialog("jump")}>
              ⌘K
            </button>
          </div>
          <SessionList />
        </aside>
        <ChatPane />
      </div>
      {dialog === "new" && <NewChatDialog onClose={() => setDialog(undefined)} />}
      {dialog === "jump" && <JumpDialog onClose={() => setDialog(undefined)} />}
    </div>
  );
}
