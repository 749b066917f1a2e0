import { fileURLToPath } from "node:url";
import { defineConfig } from "vite";

// The web client: built into dist/web, which the gateway serves on its public port.
// `npm run dev:web` serves it from source and proxies the API and /ws to a running gateway
// (RESONANCE_GATEWAY, default http://127.0.0.1:8080), so the page stays same-origin.
const gateway = process.env.RESONANCE_GATEWAY ?? "http://127.0.0.1:8080";

export default defineConfig({
  root: fileURLToPath(new URL(".", import.meta.url)),
  base: "/",
  oxc: { jsx: { runtime: "automatic", importSource: "preact" } },
  build: {
    outDir: fileURLToPath(new URL("../dist/web", import.meta.url)),
    emptyOutDir: true,
    sourcemap: false,
    target: "es2022",
    assetsInlineLimit: 0,
    reportCompressedSize: false,
  },
  server: {
    host: "127.0.0.1",
    proxy: {
      "^/resonance\\.": { target: gateway, changeOrigin: true },
      "/ws": { target: gateway, ws: true, changeOrigin: true },
    },
  },
});
