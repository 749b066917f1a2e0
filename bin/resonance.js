#!/usr/bin/env node
// The `resonance` command. It runs src/ compiled to JavaScript (see compile.js: compiled once per
// source version, cached under node_modules/.cache), or, where compiling is not possible, the
// TypeScript sources through tsx, so the package always works straight from a clone.
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { compiledEntry } from "./compile.js";

const entry = await compiledEntry(join(dirname(fileURLToPath(import.meta.url)), ".."), "cli.ts");
if (entry) {
  await import(entry);
} else {
  const { register } = await import("tsx/esm/api");
  register();
  await import("../src/cli.ts");
}
