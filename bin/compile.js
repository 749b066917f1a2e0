// Compiles src/ to plain JavaScript once per source version, so that `resonance` runs without a
// TypeScript loader in the process. The loader (tsx) costs ~60 MiB of memory (its hooks run in a
// thread of their own) and a few hundred milliseconds per start; compiled files cost neither.
//
// The output is a cache, never committed: node_modules/.cache/resonance/cli-<hash>/, one file
// per source file, same layout as src/. <hash> covers every source file, tsconfig.json, the
// compiler version and this file's settings, so an edit to src/ makes the next start compile again (~0.1-0.3 s).
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

/** Bump when the compile settings below change: old caches then stop matching. */
const SETTINGS_VERSION = "1";
/** Compiled versions kept besides the current one (a process may still be running an older one). */
const KEEP = 4;

/** Every TypeScript file of src/ that a running process may import (tests excluded), sorted. */
function sources(srcDir) {
  const out = [];
  const walk = (dir) => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      const path = join(dir, entry.name);
      if (entry.isDirectory()) walk(path);
      else if (entry.name.endsWith(".ts") && !entry.name.endsWith(".test.ts") && !entry.name.endsWith(".d.ts")) out.push(path);
    }
  };
  walk(srcDir);
  return out.sort();
}

/**
 * Returns the path of the compiled `entry` (e.g. "cli.ts" → ".../cli-<hash>/cli.js") for the
 * current sources, compiling them first when that version is not in the cache yet. Returns
 * undefined when compiling is not possible here (no esbuild, read-only cache, a compile error):
 * the caller then runs the sources through tsx. Never throws.
 */
export async function compiledEntry(root, entry) {
  try {
    const srcDir = join(root, "src");
    const files = sources(srcDir);
    const esbuildPkg = JSON.parse(readFileSync(join(root, "node_modules", "esbuild", "package.json"), "utf8"));
    const tsconfig = readFileSync(join(root, "tsconfig.json"), "utf8");
    const hash = createHash("sha256").update(`${SETTINGS_VERSION}\0${esbuildPkg.version}\0${process.versions.node.split(".")[0]}\0${tsconfig}\0`);
    const contents = files.map((f) => readFileSync(f, "utf8"));
    files.forEach((f, i) => hash.update(`${relative(srcDir, f)}\0${contents[i]}\0`));
    const cacheDir = join(root, "node_modules", ".cache", "resonance");
    const outDir = join(cacheDir, `cli-${hash.digest("hex").slice(0, 16)}`);
    const target = join(outDir, entry.replace(/\.ts$/, ".js"));
    if (existsSync(join(outDir, ".complete"))) return target;
    await build(JSON.parse(tsconfig), srcDir, files, contents, cacheDir, outDir);
    return target;
  } catch {
    return undefined;
  }
}

async function build(tsconfig, srcDir, files, contents, cacheDir, outDir) {
  const { transform } = await import("esbuild");
  // Built aside and renamed into place: processes starting at the same time never see half a tree.
  const tmp = `${outDir}.tmp-${process.pid}-${Date.now()}`;
  try {
    await Promise.all(
      files.map(async (file, i) => {
        const url = pathToFileURL(file).href;
        const r = await transform(contents[i], {
          loader: "ts",
          format: "esm",
          target: "node20",
          sourcefile: file,
          sourcemap: "external",
          tsconfigRaw: { compilerOptions: tsconfig.compilerOptions },
          // Paths computed from a module's own location keep pointing where the source is.
          define: {
            "import.meta.url": JSON.stringify(url),
            "import.meta.filename": JSON.stringify(file),
            "import.meta.dirname": JSON.stringify(dirname(file)),
          },
        });
        const out = join(tmp, relative(srcDir, file)).replace(/\.ts$/, ".js");
        mkdirSync(dirname(out), { recursive: true });
        const name = out.slice(dirname(out).length + 1);
        writeFileSync(out, `${r.code}//# sourceMappingURL=${name}.map\n`);
        writeFileSync(`${out}.map`, r.map);
      }),
    );
    writeFileSync(join(tmp, "package.json"), '{ "type": "module" }\n');
    writeFileSync(join(tmp, ".complete"), "");
    try {
      renameSync(tmp, outDir);
    } catch (err) {
      // Another process finished the same version first: use theirs.
      if (!existsSync(join(outDir, ".complete"))) throw err;
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  prune(cacheDir, outDir);
}

/** Removes compiled versions beyond the newest few, and leftovers of interrupted builds. */
function prune(cacheDir, current) {
  try {
    const old = readdirSync(cacheDir)
      .filter((n) => n.startsWith("cli-") && join(cacheDir, n) !== current)
      .map((n) => ({ path: join(cacheDir, n), mtime: statSync(join(cacheDir, n)).mtimeMs }))
      .sort((a, b) => b.mtime - a.mtime);
    const hourAgo = Date.now() - 3_600_000;
    for (const [i, d] of old.entries()) {
      if (i >= KEEP || (d.path.includes(".tmp-") && d.mtime < hourAgo)) rmSync(d.path, { recursive: true, force: true });
    }
  } catch {
    // Pruning is housekeeping only.
  }
}

// `node bin/compile.js` (npm's prepare step) compiles ahead of the first start.
if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const out = await compiledEntry(join(dirname(fileURLToPath(import.meta.url)), ".."), "cli.ts");
  if (!out) process.stderr.write("resonance: could not compile src/ (the CLI will run the sources through tsx)\n");
}
