import { pino, type Logger } from "pino";

export type { Logger };

/** JSON logs on stdout, every line tagged with the service and instance. Tokens and passwords are redacted. */
export function createLogger(service: string, instance: string, level: string): Logger {
  return pino({
    level,
    base: { service, instance },
    redact: { paths: ["password", "token", "accessToken", "*.password", "*.token", "*.accessToken", "secret"], censor: "[redacted]" },
    timestamp: pino.stdTimeFunctions.isoTime,
  });
}
