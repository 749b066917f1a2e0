import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { brotliCompress, constants, gzip } from "node:zlib";
import { defineConfig, type Plugin } from "vite";

// The web client: built into dist/web, which the gateway serves on its public port.
// `npm run dev:web` serves it from source and proxies the API and /ws to a running gateway
// (RESONANCE_GATEWAY, default http://127.0.0.1:8080), so the page stays same-origin.
const gateway = process.env.RESONANCE_GATEWAY ?? "http://127.0.0.1:8080";

/**
 * Writes `<file>.br` and `<file>.gz` beside each text file of the build, so the gateway serves
 * compressed files without compressing them when it starts (brotli at its best level is slow).
 */
function precompress(): Plugin {
  const br = promisify(brotliCompress);
  const gz = promisify(gzip);
  return {
    name: "resonance-precompress",
    apply: "build",
    async writeBundle(options, bundle) {
      const dir = options.dir!;
      const names = Object.keys(bundle).filter((f) => /\.(?:html|js|css|svg|json)$/.test(f));
      await Promise.all(
        names.map(async (name) => {
          const body = await readFile(join(dir, name));
          await writeFile(join(dir, `${name}.br`), await br(body, { params: { [constants.BROTLI_PARAM_QUALITY]: 11 } }));
          await writeFile(join(dir, `${name}.gz`), await gz(body, { level: 9 }));
        }),
      );
    },
  };
}

export default defineConfig({
  plugins: [precompress()],
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
