import { mkdtemp, readFile, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { clusterSecrets } from "./cluster.js";

let dir: string | undefined;
afterEach(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
  dir = undefined;
});

describe("cluster", () => {
  it("cluster - secrets are made once, kept with mode 600 and reused; the environment wins", async () => {
    dir = await mkdtemp(join(tmpdir(), "resonance-secrets-"));
    const file = join(dir, "data", "cluster.env");
    const first = await clusterSecrets(file, {});
    expect(first.RESONANCE_TOKEN_SECRET).toMatch(/^[0-9a-f]{64}$/);
    expect(first.RESONANCE_INTERNAL_SECRET).toMatch(/^[0-9a-f]{64}$/);
    expect(first.RESONANCE_TOKEN_SECRET).not.toBe(first.RESONANCE_INTERNAL_SECRET);
    expect((await stat(file)).mode & 0o777).toBe(0o600);
    const text = await readFile(file, "utf8");
    expect(await clusterSecrets(file, {})).toEqual(first);
    expect(await readFile(file, "utf8")).toBe(text);
    const given = "x".repeat(40);
    expect(await clusterSecrets(file, { RESONANCE_TOKEN_SECRET: given })).toEqual({ ...first, RESONANCE_TOKEN_SECRET: given });
  });
});
