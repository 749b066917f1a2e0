import { createContext } from "preact";
import { useContext, useEffect, useState } from "preact/hooks";
import type { State, Store } from "./store.js";

export const StoreContext = createContext<Store | undefined>(undefined);

/** The store and its current state; the component re-renders on every change. */
export function useStore(): [State, Store] {
  const store = useContext(StoreContext);
  if (!store) throw new Error("useStore outside StoreContext");
  const [, setVersion] = useState(0);
  useEffect(() => store.subscribe(() => setVersion((v) => v + 1)), [store]);
  return [store.state, store];
}
