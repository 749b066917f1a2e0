import { readFile } from "node:fs/promises";
import { describe, expect, it } from "vitest";
import { parseOptions, USAGE } from "./options.js";

describe("bench options", () => {
  it("has defaults for a standalone closed-loop run with the ceiling", () => {
    expect(parseOptions([])).toMatchObject({
      deploy: "standalone",
      urls: undefined,
      pairs: 50,
      window: 16,
      rate: 0,
      seconds: 10,
      warmup: 3,
      ceiling: true,
      sigtermAfter: false,
      restart: [],
    });
  });

  it("reads a cluster open-loop overload run", () => {
    const o = parseOptions(["--deploy", "cluster", "--gateways", "2", "--logics", "2", "--tasks", "1", "--rate", "3000", "--no-ceiling", "--sigterm-after", "--json", "/tmp/x.json"]);
    expect(o).toMatchObject({ deploy: "cluster", gateways: 2, logics: 2, tasks: 1, rate: 3000, ceiling: false, sigtermAfter: true, json: "/tmp/x.json", servers: "own" });
  });

  it("splits --urls and --restart", () => {
    const o = parseOptions(["--urls", "http://127.0.0.1:8080, http://127.0.0.1:8081", "--restart", "gateway,logic"]);
    expect(o.urls).toEqual(["http://127.0.0.1:8080", "http://127.0.0.1:8081"]);
    expect(o.restart).toEqual(["gateway", "logic"]);
  });

  it("refuses bad or unbounded input with a one-line message naming the option", () => {
    expect(() => parseOptions(["--deploy", "k8s"])).toThrow(/^--deploy/);
    expect(() => parseOptions(["--pairs", "0"])).toThrow(/^--pairs/);
    expect(() => parseOptions(["--pairs", "100000"])).toThrow(/^--pairs/);
    expect(() => parseOptions(["--seconds", "3600"])).toThrow(/^--seconds/);
    expect(() => parseOptions(["--rate", "fast"])).toThrow(/^--rate/);
    expect(() => parseOptions(["--restart", "gateway,db"])).toThrow(/^--restart/);
    expect(() => parseOptions(["--urls", "localhost:8080"])).toThrow(/^--urls/);
    expect(() => parseOptions(["--urls", "http://127.0.0.1:1", "--sigterm-after"])).toThrow(/--sigterm-after/);
    expect(() => parseOptions(["--frobnicate"])).toThrow(/frobnicate/);
  });

  it("documents every option and names its entry point (test/quickstart.test.ts looks for it)", () => {
    for (const flag of ["--deploy", "--gateways", "--logics", "--tasks", "--servers", "--urls", "--pairs", "--window", "--rate", "--seconds", "--warmup", "--grace", "--content-bytes", "--no-ceiling", "--sigterm-after", "--restart", "--json", "--cpu-prof"]) {
      expect(USAGE).toContain(flag);
    }
    expect(USAGE).toContain("bench/load.ts");
  });
});

describe("bench options - the README's benchmark commands", () => {
  it("are all valid (the end-to-end tests in load.test.ts run the standalone and cluster ones)", async () => {
    const readme = await readFile(new URL("../README.md", import.meta.url), "utf8");
    const commands = readme
      .split("\n")
      .filter((l) => l.startsWith("npm run bench -- "))
      .map((l) => l.replace(/#.*$/, "").trim());
    expect(commands.length).toBeGreaterThanOrEqual(5);
    for (const c of commands) expect(() => parseOptions(c.split(/\s+/).slice(4)), c).not.toThrow();
  });
});
