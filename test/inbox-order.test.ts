import pg from "pg";
import { afterAll, beforeAll, expect, it } from "vitest";
import { INBOX_INSERT } from "../src/task/inbox.js";
import { TestCluster } from "./support/cluster.js";
import { eventually } from "./support/processes.js";
import { describeWith, requireServices } from "./support/services.js";

const services = await requireServices(["postgres", "redis", "nats", "etcd"]);

describeWith(services, "inbox order (PostgreSQL)", () => {
  let cluster: TestCluster;

  beforeAll(async () => {
    cluster = await TestCluster.start({ mode: "cluster", gateways: 0, logics: 0, tasks: 0 });
    await cluster.sql(`insert into users (username, nickname, password_hash) values ('x', 'x', '-'), ('y', 'y', '-')`);
    await cluster.sql(`insert into sessions (id, name, type) values ('s1', 's1', 2), ('s2', 's2', 2)`);
    await cluster.sql(`insert into session_members (session_id, username) values ('s1', 'x'), ('s1', 'y'), ('s2', 'x')`);
  });
  afterAll(() => cluster?.destroy());

  it("inbox - for one owner, a later event's rows wait for the earlier one's commit and get higher ids", async () => {
    const a = new pg.Client({ connectionString: cluster.databaseUrl });
    const b = new pg.Client({ connectionString: cluster.databaseUrl });
    await a.connect();
    await b.connect();
    try {
      await a.query("begin");
      await a.query(INBOX_INSERT, [["s1"], ["1"], ["101"], 1024]); // x's row drawn, not committed
      let bDone = false;
      const second = b.query(INBOX_INSERT, [["s2"], ["1"], ["102"], 1024]).then(() => (bDone = true));
      // b must be waiting on x's lock, not finished with an id that could be read before a's.
      await eventually(async () => {
        const waiting = await cluster.sql<{ n: string }>("select count(*) as n from pg_locks where locktype = 'advisory' and not granted");
        return waiting[0]!.n === "1";
      }, 5_000, "the second write to wait for the first");
      expect(bDone).toBe(false);
      await a.query("commit");
      await second;
      const rows = await cluster.sql<{ id: string; msg_id: string }>("select id, msg_id from inbox where owner = 'x' order by id");
      expect(rows.map((r) => r.msg_id)).toEqual(["101", "102"]);
      // A redelivery of the first event inserts nothing.
      await b.query(INBOX_INSERT, [["s1"], ["1"], ["101"], 1024]);
      expect(await cluster.sql("select 1 from inbox where msg_id = 101")).toHaveLength(2);
    } finally {
      await a.end();
      await b.end();
    }
  });
});
