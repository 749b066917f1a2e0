import { render } from "preact";
import { App } from "./app.js";
import { loadTheme } from "./storage.js";
import { Store } from "./store.js";
import { StoreContext } from "./use-store.js";
import "./styles.css";

// The theme chosen with the toggle wins over the system's; without one, CSS follows the system.
const theme = loadTheme();
if (theme) document.documentElement.dataset.theme = theme;

const store = new Store();
window.addEventListener("online", () => store.setOnline(true));
window.addEventListener("offline", () => store.setOnline(false));
document.addEventListener("visibilitychange", () => store.markReadIfVisible());
store.resume();

render(
  <StoreContext.Provider value={store}>
    <App />
  </StoreContext.Provider>,
  document.getElementById("app")!,
);
