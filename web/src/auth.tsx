import { useState } from "preact/hooks";
import { ResonanceError } from "../../src/client/browser.js";
import { describeError } from "./store.js";
import { useStore } from "./use-store.js";

/** Sign in, or create an account (username, nickname, password). */
export function AuthScreen() {
  const [state, store] = useStore();
  const [mode, setMode] = useState<"login" | "register">("login");
  const [username, setUsername] = useState("");
  const [nickname, setNickname] = useState("");
  const [password, setPassword] = useState("");
  const [error, setError] = useState<string | undefined>(undefined);
  const [busy, setBusy] = useState(false);
  const registering = mode === "register";

  const submit = async (e: Event): Promise<void> => {
    e.preventDefault();
    if (busy) return;
    setError(undefined);
    // The server's rules (and their messages) are the only ones: nothing is checked twice here.
    if (username.trim() === "" || password === "") return setError("Enter a username and a password.");
    setBusy(true);
    try {
      await store.login(username.trim(), password, registering ? { nickname: nickname.trim() } : undefined);
    } catch (err) {
      const e = ResonanceError.from(err);
      setError(e.code === "invalid_argument" ? e.message : describeError(e));
      setBusy(false);
    }
  };

  return (
    <main class="auth">
      <form class="auth-card" onSubmit={submit} aria-labelledby="auth-title" noValidate>
        <div class="brand" aria-hidden="true">
          <img src="/favicon.svg" alt="" width={40} height={40} />
        </div>
        <h1 id="auth-title">{registering ? "Create your account" : "Sign in to Resonance"}</h1>
        {state.notice && !error && (
          <p class="notice" role="status">
            {state.notice}
          </p>
        )}
        <label>
          Username
          <input name="username" autoComplete="username" autoCapitalize="none" spellcheck={false} required value={username} onInput={(e) => setUsername(e.currentTarget.value)} />
        </label>
        {registering && (
          <label>
            <span>
              Nickname <span class="hint">(shown to others)</span>
            </span>
            <input name="nickname" autoComplete="nickname" value={nickname} placeholder={username} onInput={(e) => setNickname(e.currentTarget.value)} />
          </label>
        )}
        <label>
          Password
          <input
            name="password"
            type="password"
            autoComplete={registering ? "new-password" : "current-password"}
            required
            value={password}
            onInput={(e) => setPassword(e.currentTarget.value)}
          />
        </label>
        {error && (
          <p class="error" role="alert">
            {error}
          </p>
        )}
        <button type="submit" class="primary" disabled={busy}>
          {busy ? "Please wait…" : registering ? "Create account" : "Sign in"}
        </button>
        <p class="switch">
          {registering ? "Already have an account?" : "New here?"}{" "}
          <button
            type="button"
            class="link"
            onClick={() => {
              setMode(registering ? "login" : "register");
              setError(undefined);
            }}
          >
            {registering ? "Sign in" : "Create an account"}
          </button>
        </p>
      </form>
    </main>
  );
}
