import { Fragment } from "preact";
import { useEffect, useLayoutEffect, useRef, useState } from "preact/hooks";
import { dayKey, dayLabel, hueOf, initials, timeOf } from "./format.js";
import type { Chat, Message, Session } from "./store.js";
import { useStore } from "./use-store.js";

/** Pixels from the bottom within which the reader counts as "at the newest message". */
const AT_BOTTOM_PX = 48;
/** Pixels from the top at which the previous page of history is requested. */
const LOAD_OLDER_PX = 160;
/** Consecutive messages of one sender closer than this are grouped under one name. */
const GROUP_SECONDS = 5 * 60;

/** The open chat: header, the message log, the composer. */
export function ChatPane() {
  const [state, store] = useStore();
  const id = state.activeId;
  const session = state.sessions.find((s) => s.id === id);
  if (!id) {
    return (
      <section class="chat chat-empty" aria-label="No chat open">
        <p>Select a chat, or start a new one.</p>
      </section>
    );
  }
  const chat = state.chats[id];
  return (
    <section class="chat" aria-label={`Chat: ${session?.name ?? id}`}>
      <header class="chat-head">
        <button type="button" class="icon-button back" aria-label="Back to chats" onClick={() => store.open(undefined)}>
          ←
        </button>
        <span class={`avatar small hue-${hueOf(session?.name ?? id) % 8}`} aria-hidden="true">
          {session && (session.type === 2 || session.id === "0") ? "#" : initials(session?.name ?? id)}
        </span>
        <h2 class="chat-title">{session?.name ?? id}</h2>
      </header>
      <MessageLog key={id} sessionId={id} chat={chat} session={session} me={state.me?.username ?? ""} />
      <Composer key={`c-${id}`} onSend={(text) => store.send(id, text)} />
    </section>
  );
}

interface LogProps {
  readonly sessionId: string;
  readonly chat: Chat | undefined;
  readonly session: Session | undefined;
  readonly me: string;
}

function MessageLog({ sessionId, chat, me }: LogProps) {
  const [, store] = useStore();
  const ref = useRef<HTMLDivElement>(null);
  const atBottom = useRef(true);
  const last = useRef<{ firstKey: string | undefined; lastKey: string | undefined; height: number }>({ firstKey: undefined, lastKey: undefined, height: 0 });
  const [unseen, setUnseen] = useState(0);
  const messages = chat?.messages ?? [];

  // Keeps the view steady: older pages are prepended without a jump; new messages scroll into
  // view only when the reader is at the bottom (else the "new messages" pill counts them).
  useLayoutEffect(() => {
    const el = ref.current;
    if (!el) return;
    const firstKey = messages[0]?.key;
    const lastKey = messages[messages.length - 1]?.key;
    const prev = last.current;
    const lastMine = messages[messages.length - 1]?.from === me && messages[messages.length - 1]?.status !== "sent";
    if (prev.height > 0 && firstKey !== prev.firstKey && lastKey === prev.lastKey) {
      el.scrollTop += el.scrollHeight - prev.height; // Older messages above: stay on what was read.
    } else if (lastKey !== prev.lastKey) {
      if (atBottom.current || prev.lastKey === undefined || lastMine) {
        el.scrollTop = el.scrollHeight;
        atBottom.current = true;
      } else {
        setUnseen((n) => n + 1);
      }
    }
    last.current = { firstKey, lastKey, height: el.scrollHeight };
    // A first page that does not fill the screen: fetch the one before it as well.
    if (chat?.loaded && chat.hasOlder && !chat.loadingOlder && el.scrollHeight <= el.clientHeight) void store.loadOlder(sessionId);
  }, [messages, chat?.loaded, chat?.hasOlder, chat?.loadingOlder]);

  useEffect(() => {
    const onVisible = (): void => {
      if (atBottom.current) store.markReadIfVisible();
    };
    document.addEventListener("visibilitychange", onVisible);
    return () => document.removeEventListener("visibilitychange", onVisible);
  }, [store]);

  const onScroll = (): void => {
    // A scroll event can still arrive after the view was closed (Esc, another chat).
    const el = ref.current;
    if (!el) return;
    atBottom.current = el.scrollHeight - el.scrollTop - el.clientHeight < AT_BOTTOM_PX;
    if (atBottom.current && unseen > 0) setUnseen(0);
    if (el.scrollTop < LOAD_OLDER_PX && chat?.hasOlder && !chat.loadingOlder) void store.loadOlder(sessionId);
  };

  const toBottom = (): void => {
    const el = ref.current;
    if (!el) return;
    el.scrollTo({ top: el.scrollHeight, behavior: "smooth" });
    setUnseen(0);
  };

  return (
    <div class="log-wrap">
      {chat?.loadingOlder && (
        <p class="loading-older" role="status">
          Loading older messages…
        </p>
      )}
      <div ref={ref} class="log" role="log" aria-label="Messages" aria-live="polite" tabIndex={0} onScroll={onScroll}>
        {chat?.loaded && !chat.hasOlder && <p class="log-note">This is the beginning of the chat.</p>}
        {messages.map((m, i) => {
          const prev = messages[i - 1];
          const newDay = !prev || dayKey(prev.timestamp) !== dayKey(m.timestamp);
          const grouped =
            !newDay && prev !== undefined && prev.from === m.from && prev.type !== "system" && m.type !== "system" && m.timestamp - prev.timestamp < GROUP_SECONDS;
          return (
            <Fragment key={m.key}>
              {newDay && (
                <div class="day" role="separator">
                  <span>{dayLabel(m.timestamp)}</span>
                </div>
              )}
              <MessageItem message={m} mine={m.from === me} grouped={grouped} onRetry={() => m.clientSeq && store.retry(sessionId, m.clientSeq)} />
            </Fragment>
          );
        })}
      </div>
      {unseen > 0 && (
        <button type="button" class="pill" onClick={toBottom}>
          New messages ↓
        </button>
      )}
    </div>
  );
}

function MessageItem({ message: m, mine, grouped, onRetry }: { message: Message; mine: boolean; grouped: boolean; onRetry: () => void }) {
  if (m.type === "system") {
    return (
      <p class="system" data-seq={m.seqId.toString()}>
        {m.content}
      </p>
    );
  }
  return (
    <article class={`msg${mine ? " mine" : ""}${grouped ? " grouped" : ""} ${m.status}`} data-seq={m.seqId.toString()} data-status={m.status}>
      {!grouped && !mine && <header class="msg-from">{m.from}</header>}
      <div class="bubble">
        <p class="msg-text">{m.content}</p>
        <footer class="msg-meta">
          <time dateTime={new Date(m.timestamp * 1000).toISOString()}>{timeOf(m.timestamp)}</time>
          {mine && m.status === "pending" && <span class="status">Sending…</span>}
          {mine && m.status === "sent" && (
            <span class="status" aria-label="Sent">
              ✓
            </span>
          )}
        </footer>
      </div>
      {m.status === "failed" && (
        <p class="failed" role="alert">
          Not sent: {m.error}{" "}
          <button type="button" class="link" onClick={onRetry}>
            Retry
          </button>
        </p>
      )}
    </article>
  );
}

function Composer({ onSend }: { onSend: (text: string) => void }) {
  const [text, setText] = useState("");
  const ref = useRef<HTMLTextAreaElement>(null);
  useEffect(() => {
    if (window.matchMedia("(min-width: 641px)").matches) ref.current?.focus();
  }, []);
  const send = (): void => {
    if (text.trim() === "") return;
    onSend(text);
    setText("");
  };
  return (
    <form
      class="composer"
      onSubmit={(e) => {
        e.preventDefault();
        send();
      }}
    >
      <textarea
        ref={ref}
        rows={1}
        aria-label="Message"
        placeholder="Write a message"
        value={text}
        onInput={(e) => setText(e.currentTarget.value)}
        onKeyDown={(e) => {
          if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
            e.preventDefault();
            send();
          }
        }}
      />
      <button type="submit" class="primary" disabled={text.trim() === ""}>
        Send
      </button>
    </form>
  );
}
