import { useEffect, useState } from "preact/hooks";
import { ResonanceError } from "../../src/client/browser.js";
import { Dialog } from "./dialog.js";
import { describeError } from "./store.js";
import { useStore } from "./use-store.js";

interface User {
  readonly username: string;
  readonly nickname: string;
}

/** Finds users as the query is typed (debounced). */
function useUserSearch(query: string): { users: User[]; error: string | undefined; searching: boolean } {
  const [, store] = useStore();
  const [users, setUsers] = useState<User[]>([]);
  const [error, setError] = useState<string | undefined>(undefined);
  const [searching, setSearching] = useState(false);
  useEffect(() => {
    const q = query.trim();
    if (q === "") {
      setUsers([]);
      return;
    }
    let current = true;
    setSearching(true);
    const timer = setTimeout(() => {
      store.searchUsers(q).then(
        (found) => {
          if (!current) return;
          setUsers(found);
          setError(undefined);
          setSearching(false);
        },
        (err: unknown) => {
          if (!current) return;
          setError(describeError(ResonanceError.from(err)));
          setSearching(false);
        },
      );
    }, 200);
    return () => {
      current = false;
      clearTimeout(timer);
    };
  }, [query, store]);
  return { users, error, searching };
}

/** New chat: one-to-one (search a user) or a group (a name and members). */
export function NewChatDialog({ onClose }: { onClose: () => void }) {
  const [, store] = useStore();
  const [kind, setKind] = useState<"single" | "group">("single");
  const [query, setQuery] = useState("");
  const [name, setName] = useState("");
  const [members, setMembers] = useState<User[]>([]);
  const [error, setError] = useState<string | undefined>(undefined);
  const [busy, setBusy] = useState(false);
  const search = useUserSearch(query);

  const run = async (action: () => Promise<void>): Promise<void> => {
    setBusy(true);
    setError(undefined);
    try {
      await action();
      onClose();
    } catch (err) {
      setError(describeError(ResonanceError.from(err)));
      setBusy(false);
    }
  };

  const pick = (u: User): void => {
    if (kind === "single") return void run(() => store.startChat(u.username));
    if (!members.some((m) => m.username === u.username)) setMembers([...members, u]);
    setQuery("");
  };

  return (
    <Dialog title="New chat" onClose={onClose}>
      <div class="tabs" role="radiogroup" aria-label="Kind of chat">
        <label class={kind === "single" ? "on" : ""}>
          <input type="radio" name="kind" checked={kind === "single"} onChange={() => setKind("single")} /> Direct message
        </label>
        <label class={kind === "group" ? "on" : ""}>
          <input type="radio" name="kind" checked={kind === "group"} onChange={() => setKind("group")} /> Group
        </label>
      </div>
      <form
        class="dialog-form"
        onSubmit={(e) => {
          e.preventDefault();
          if (kind === "group") {
            if (name.trim() === "") return setError("Give the group a name.");
            if (members.length === 0) return setError("Add at least one member.");
            void run(() => store.createGroup(name.trim(), members.map((m) => m.username)));
          } else if (search.users[0]) {
            pick(search.users[0]);
          }
        }}
      >
        {kind === "group" && (
          <label>
            Group name
            <input name="group-name" value={name} maxLength={64} onInput={(e) => setName(e.currentTarget.value)} />
          </label>
        )}
        {kind === "group" && members.length > 0 && (
          <ul class="chips" aria-label="Members">
            {members.map((m) => (
              <li key={m.username}>
                {m.nickname || m.username}
                <button type="button" class="chip-x" aria-label={`Remove ${m.username}`} onClick={() => setMembers(members.filter((x) => x !== m))}>
                  ✕
                </button>
              </li>
            ))}
          </ul>
        )}
        <label>
          {kind === "group" ? "Add members" : "Find a person"}
          <input name="user-search" type="search" autoFocus autoComplete="off" placeholder="Username or nickname" value={query} onInput={(e) => setQuery(e.currentTarget.value)} />
        </label>
        <ul class="results" aria-label="Users found" aria-busy={search.searching}>
          {search.users.map((u) => (
            <li key={u.username}>
              <button type="button" class="result" disabled={busy} onClick={() => pick(u)}>
                <strong>{u.nickname || u.username}</strong> <span class="hint">@{u.username}</span>
              </button>
            </li>
          ))}
          {query.trim() !== "" && !search.searching && search.users.length === 0 && !search.error && <li class="hint">No one found.</li>}
        </ul>
        {(error ?? search.error) && (
          <p class="error" role="alert">
            {error ?? search.error}
          </p>
        )}
        {kind === "group" && (
          <button type="submit" class="primary" disabled={busy}>
            Create group
          </button>
        )}
      </form>
    </Dialog>
  );
}

/** Ctrl/Cmd+K: type part of a chat's name, Enter opens the first match. */
export function JumpDialog({ onClose }: { onClose: () => void }) {
  const [state, store] = useStore();
  const [query, setQuery] = useState("");
  const q = query.trim().toLowerCase();
  const matches = state.sessions.filter((s) => s.name.toLowerCase().includes(q)).slice(0, 8);
  const open = (id: string): void => {
    store.open(id);
    onClose();
  };
  return (
    <Dialog title="Jump to a chat" onClose={onClose}>
      <form
        class="dialog-form"
        onSubmit={(e) => {
          e.preventDefault();
          if (matches[0]) open(matches[0].id);
        }}
      >
        <label>
          Chat name
          <input name="jump" type="search" autoFocus autoComplete="off" value={query} onInput={(e) => setQuery(e.currentTarget.value)} />
        </label>
        <ul class="results" aria-label="Matching chats">
          {matches.map((s) => (
            <li key={s.id}>
              <button type="button" class="result" onClick={() => open(s.id)}>
                {s.name}
                {s.unread > 0 && <span class="badge">{s.unread}</span>}
              </button>
            </li>
          ))}
        </ul>
      </form>
    </Dialog>
  );
}
