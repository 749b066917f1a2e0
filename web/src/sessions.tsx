import { hueOf, initials, shortWhen } from "./format.js";
import type { Session } from "./store.js";
import { useStore } from "./use-store.js";

/** The chats, most recent activity first, with a preview and the unread badge. */
export function SessionList() {
  const [state, store] = useStore();
  if (!state.sessionsLoaded) {
    return (
      <p class="list-empty" role="status">
        Loading chats…
      </p>
    );
  }
  return (
    <nav class="sessions" aria-label="Chats">
      <ul>
        {state.sessions.map((s) => (
          <li key={s.id}>
            <SessionItem session={s} active={s.id === state.activeId} me={state.me?.username} onOpen={() => store.open(s.id)} />
          </li>
        ))}
      </ul>
    </nav>
  );
}

function SessionItem({ session: s, active, me, onOpen }: { session: Session; active: boolean; me: string | undefined; onOpen: () => void }) {
  const preview = s.preview
    ? s.preview.type === "system"
      ? s.preview.content
      : `${s.preview.from === me ? "You" : s.preview.from}: ${s.preview.content}`
    : "No messages yet";
  const label = `${s.name}${s.unread > 0 ? `, ${s.unread} unread` : ""}`;
  return (
    <button type="button" class={`session${active ? " active" : ""}`} aria-current={active ? "true" : undefined} aria-label={label} data-session={s.id} onClick={onOpen}>
      <span class={`avatar hue-${hueOf(s.name) % 8}`} aria-hidden="true">
        {s.type === 2 || s.id === "0" ? "#" : initials(s.name)}
      </span>
      <span class="session-main">
        <span class="session-top">
          <span class="session-name">{s.name}</span>
          <span class="session-when">{shortWhen(s.activity)}</span>
        </span>
        <span class="session-bottom">
          <span class="session-preview">{preview}</span>
          {s.unread > 0 && (
            <span class="badge" aria-hidden="true">
              {s.unread > 99 ? "99+" : s.unread}
            </span>
          )}
        </span>
      </span>
    </button>
  );
}
