import { useEffect, useState } from "preact/hooks";
import { useStore } from "./use-store.js";

/** Connecting / reconnecting in N s (with "Retry now") / offline; nothing while online. */
export function ConnectionBanner() {
  const [state, store] = useStore();
  const c = state.connection;
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    if (c.state !== "waiting") return;
    const timer = setInterval(() => setNow(Date.now()), 250);
    return () => clearInterval(timer);
  }, [c]);
  if (c.state === "online") return null;
  let text: string;
  if (c.state === "offline") text = "You are offline. Messages will be sent when the connection is back.";
  else if (c.state === "waiting" && c.retryAt > now) text = `Connection lost. Reconnecting in ${Math.ceil((c.retryAt - now) / 1000)} s…`;
  else text = "Connecting…";
  return (
    <div class={`banner banner-${c.state}`} role="status" aria-live="polite">
      <span>{text}</span>
      {c.state !== "connecting" && (
        <button type="button" class="banner-retry" onClick={() => store.retryNow()}>
          Retry now
        </button>
      )}
    </div>
  );
}
