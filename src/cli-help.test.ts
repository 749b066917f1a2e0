import { describe, expect, it } from "vitest";
import { COMMANDS, closest, commandHelp, editDistance, unknownSettingWarnings, usage } from "./cli-help.js";
import { SETTING_NAMES } from "./config/config.js";

describe("cli-help", () => {
  it("cli-help - a misspelled setting is named with the closest real one; a far-off name is just reported", () => {
    expect(editDistance("RESONANCE_HTTP_PROT", "RESONANCE_HTTP_PORT")).toBe(2);
    const warnings = unknownSettingWarnings(
      ["RESONANCE_HTTP_PROT", "RESONANCE_LOG_LEVLE", "RESONANCE_WHATEVER_ELSE_ENTIRELY", "RESONANCE_HTTP_PORT", "RESONANCE_TEST_DATABASE_URL", "PATH"],
      SETTING_NAMES,
    );
    expect(warnings).toEqual([
      "RESONANCE_HTTP_PROT is not a setting and is ignored; did you mean RESONANCE_HTTP_PORT?",
      "RESONANCE_LOG_LEVLE is not a setting and is ignored; did you mean RESONANCE_LOG_LEVEL?",
      'RESONANCE_WHATEVER_ELSE_ENTIRELY is not a setting and is ignored (README: "Settings" lists them)',
    ]);
  });

  it("cli-help - every command has a usage line and is listed; unknown commands get a suggestion only when close", () => {
    const text = usage("1.2.3");
    for (const c of COMMANDS) {
      expect(text).toContain(`  ${c.name} `);
      expect(commandHelp(c)).toMatch(new RegExp(`^usage: resonance ${c.name}`));
      expect(c.options.help).toMatchObject({ type: "boolean", short: "h" });
    }
    expect(closest("gatewy", COMMANDS.map((c) => c.name))).toBe("gateway");
    expect(closest("frobnicate", COMMANDS.map((c) => c.name))).toBeUndefined();
  });
});
