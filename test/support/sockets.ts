import { existsSync } from "node:fs";
import { readFile, readdir, readlink } from "node:fs/promises";
import { Socket } from "node:net";

/** Whether this system shows a process's sockets and files under /proc (Linux). */
export const PROC_AVAILABLE = existsSync("/proc/self/fd") && existsSync("/proc/self/net/tcp");

/** One TCP socket held by a process. */
export interface ProcessSocket {
  readonly localPort: number;
  readonly remotePort: number;
  /** The kernel's state name: LISTEN, ESTABLISHED, CLOSE_WAIT, ... */
  readonly state: string;
}

const STATES: Record<string, string> = {
  "01": "ESTABLISHED",
  "02": "SYN_SENT",
  "03": "SYN_RECV",
  "04": "FIN_WAIT1",
  "05": "FIN_WAIT2",
  "06": "TIME_WAIT",
  "07": "CLOSE",
  "08": "CLOSE_WAIT",
  "09": "LAST_ACK",
  "0A": "LISTEN",
  "0B": "CLOSING",
};

/**
 * The TCP sockets (IPv4 and IPv6, listening or connected) that a live process holds open, read
 * from Linux's /proc: its file descriptors name socket inodes, /proc/<pid>/net/tcp{,6} map them
 * to ports. This sees the process's own side, so it also catches a connection the server has no
 * name for (etcd) and a half-closed one the peer already dropped (CLOSE_WAIT). Rejects when the
 * process is gone (the caller then cannot tell anything).
 */
export async function tcpSocketsOf(pid: number): Promise<ProcessSocket[]> {
  const inodes = new Set<string>();
  for (const fd of await readdir(`/proc/${pid}/fd`)) {
    const target = await readlink(`/proc/${pid}/fd/${fd}`).catch(() => "");
    const m = /^socket:\[(\d+)\]$/.exec(target);
    if (m) inodes.add(m[1]!);
  }
  const sockets: ProcessSocket[] = [];
  for (const table of ["tcp", "tcp6"]) {
    const text = await readFile(`/proc/${pid}/net/${table}`, "utf8").catch(() => "");
    for (const line of text.split("\n").slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f.length < 10 || !inodes.has(f[9]!)) continue;
      sockets.push({ localPort: portOf(f[1]!), remotePort: portOf(f[2]!), state: STATES[f[3]!] ?? f[3]! });
    }
  }
  return sockets;
}

function portOf(address: string): number {
  return Number.parseInt(address.slice(address.lastIndexOf(":") + 1), 16);
}

/** Whether something accepts TCP connections on 127.0.0.1:port right now. */
export async function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = new Socket();
    const done = (ok: boolean) => {
      s.destroy();
      resolve(ok);
    };
    s.setTimeout(2_000, () => done(false));
    s.once("connect", () => done(true));
    s.once("error", () => done(false));
    s.connect(port, "127.0.0.1");
  });
}

/** The files under `dir` that a live process holds open (from /proc/<pid>/fd). */
export async function filesUnder(pid: number, dir: string): Promise<string[]> {
  const files: string[] = [];
  for (const fd of await readdir(`/proc/${pid}/fd`)) {
    const target = await readlink(`/proc/${pid}/fd/${fd}`).catch(() => "");
    if (target.startsWith(dir)) files.push(target);
  }
  return files;
}
