/**
 * Private nats-server (JetStream), redis-server and etcd for one benchmark run, on free loopback
 * ports with their data in a temporary directory, so that their CPU in the report is this run's
 * alone (the machine's shared servers also serve whoever else is running tests).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdir, rm } from "node:fs/promises";
import { connect } from "node:net";
import { join } from "node:path";
import { freePort } from "../test/support/processes.js";

export interface ServerProcess {
  readonly name: "nats-server" | "redis-server" | "etcd";
  readonly pid: number;
}

export interface OwnServers {
  readonly natsUrl: string;
  readonly redisUrl: string;
  readonly etcdEndpoints: string;
  readonly processes: readonly ServerProcess[];
  /** SIGTERM, wait for the exits (SIGKILL after 5 s), remove the data. Never rejects. */
  stop(): Promise<void>;
}

/** Resolves when 127.0.0.1:port accepts a connection; rejects after `timeoutMs` or when `proc` exits. */
async function waitForPort(port: number, proc: ChildProcess, name: string, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (proc.exitCode !== null || proc.signalCode !== null) throw new Error(`${name} exited (${proc.exitCode ?? proc.signalCode}) before listening`);
    const open = await new Promise<boolean>((resolve) => {
      const s = connect({ host: "127.0.0.1", port }, () => (s.destroy(), resolve(true)));
      s.once("error", () => resolve(false));
    });
    if (open) return;
    if (Date.now() > deadline) throw new Error(`${name} did not listen on ${port} within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function stopProcess(p: ChildProcess): Promise<void> {
  if (p.exitCode !== null || p.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const t = setTimeout(() => p.kill("SIGKILL"), 5_000);
    p.once("exit", () => (clearTimeout(t), resolve()));
    p.kill("SIGTERM");
  });
}

/** Starts the three servers under `dir` (created; removed by stop()). Rejects, after cleaning up, if one fails. */
export async function startOwnServers(dir: string): Promise<OwnServers> {
  await mkdir(dir, { recursive: true });
  const [nats, redis, etcdClient, etcdPeer] = [await freePort(), await freePort(), await freePort(), await freePort()];
  const procs: Array<{ name: ServerProcess["name"]; proc: ChildProcess; port: number }> = [];
  const start = (name: ServerProcess["name"], cmd: string, args: string[], port: number): void => {
    const proc = spawn(cmd, args, { stdio: "ignore", cwd: dir });
    proc.on("error", () => {}); // a missing binary shows as an exit before listening
    procs.push({ name, proc, port });
  };
  start("nats-server", "nats-server", ["-a", "127.0.0.1", "-p", String(nats), "-js", "-sd", join(dir, "nats")], nats);
  start("redis-server", "redis-server", ["--bind", "127.0.0.1", "--port", String(redis), "--save", "", "--appendonly", "no", "--dir", dir], redis);
  const etcdUrl = `http://127.0.0.1:${etcdClient}`;
  const peerUrl = `http://127.0.0.1:${etcdPeer}`;
  start(
    "etcd",
    "etcd",
    [
      "--name", "bench",
      "--data-dir", join(dir, "etcd"),
      "--listen-client-urls", etcdUrl,
      "--advertise-client-urls", etcdUrl,
      "--listen-peer-urls", peerUrl,
      "--initial-advertise-peer-urls", peerUrl,
      "--initial-cluster", `bench=${peerUrl}`,
    ],
    etcdClient,
  );
  const stop = async (): Promise<void> => {
    await Promise.all(procs.map((p) => stopProcess(p.proc)));
    await rm(dir, { recursive: true, force: true }).catch(() => {});
  };
  try {
    await Promise.all(procs.map((p) => waitForPort(p.port, p.proc, p.name)));
  } catch (err) {
    await stop();
    throw err;
  }
  return {
    natsUrl: `nats://127.0.0.1:${nats}`,
    redisUrl: `redis://127.0.0.1:${redis}`,
    etcdEndpoints: etcdUrl,
    processes: procs.map((p) => ({ name: p.name, pid: p.proc.pid! })),
    stop,
  };
}
